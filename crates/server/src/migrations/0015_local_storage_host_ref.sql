-- The capacity of each host's disk on a LocalStorage primary storage (upstream
-- LocalStorageHostRefVO): one row per (host, LocalStorage) when the host is in a cluster the
-- storage is attached to. Allocations on such a storage take from the row of the host that
-- holds the file, in the transaction that takes from the storage.
CREATE TABLE local_storage_host_ref (
    host_uuid TEXT NOT NULL,
    primary_storage_uuid TEXT NOT NULL,
    total_capacity BIGINT NOT NULL,
    available_capacity BIGINT NOT NULL,
    total_physical_capacity BIGINT NOT NULL,
    available_physical_capacity BIGINT NOT NULL,
    system_used_capacity BIGINT NOT NULL,
    create_date BIGINT NOT NULL,
    last_op_date BIGINT NOT NULL,
    PRIMARY KEY (host_uuid, primary_storage_uuid)
);
CREATE INDEX local_storage_host_ref_ps ON local_storage_host_ref (primary_storage_uuid);
-- rows for the hosts already there: the storage's disk figures, less what the volumes on
-- that host's disk hold
INSERT INTO local_storage_host_ref (host_uuid, primary_storage_uuid, total_capacity, available_capacity,
    total_physical_capacity, available_physical_capacity, system_used_capacity, create_date, last_op_date)
SELECT h.uuid, p.uuid, p.total_physical_capacity,
    p.available_physical_capacity - COALESCE((SELECT SUM(r.size) FROM local_storage_resource_ref r
        WHERE r.host_uuid = h.uuid AND r.primary_storage_uuid = p.uuid AND r.resource_type = 'VolumeVO'), 0),
    p.total_physical_capacity, p.available_physical_capacity, p.system_used_capacity, p.create_date, p.create_date
FROM host h JOIN primary_storage_cluster_ref c ON c.cluster_uuid = h.cluster_uuid
JOIN primary_storage p ON p.uuid = c.primary_storage_uuid WHERE p.type = 'LocalStorage'
;
-- a storage with hosts: its figures are the sum of its hosts'
UPDATE primary_storage SET
    total_capacity = (SELECT SUM(l.total_capacity) FROM local_storage_host_ref l WHERE l.primary_storage_uuid = primary_storage.uuid),
    available_capacity = (SELECT SUM(l.available_capacity) FROM local_storage_host_ref l WHERE l.primary_storage_uuid = primary_storage.uuid),
    total_physical_capacity = (SELECT SUM(l.total_physical_capacity) FROM local_storage_host_ref l WHERE l.primary_storage_uuid = primary_storage.uuid),
    available_physical_capacity = (SELECT SUM(l.available_physical_capacity) FROM local_storage_host_ref l WHERE l.primary_storage_uuid = primary_storage.uuid),
    system_used_capacity = (SELECT SUM(l.system_used_capacity) FROM local_storage_host_ref l WHERE l.primary_storage_uuid = primary_storage.uuid)
WHERE type = 'LocalStorage' AND EXISTS (SELECT 1 FROM local_storage_host_ref l WHERE l.primary_storage_uuid = primary_storage.uuid)
