-- Which host's disk holds each file on a LocalStorage primary storage (upstream
-- LocalStorageResourceRefVO): one row per volume or volume snapshot, written in the transaction
-- that makes the volume / snapshot row and deleted with it. resourceType is the upstream VO name
-- (VolumeVO, VolumeSnapshotVO). Starting a VM and making a VM from such files use it to run on
-- that host.
CREATE TABLE local_storage_resource_ref (
    resource_uuid TEXT PRIMARY KEY,
    primary_storage_uuid TEXT NOT NULL,
    host_uuid TEXT NOT NULL,
    size BIGINT NOT NULL,
    resource_type TEXT NOT NULL,
    create_date BIGINT NOT NULL,
    last_op_date BIGINT NOT NULL
);
CREATE INDEX local_storage_resource_ref_ps ON local_storage_resource_ref (primary_storage_uuid);
CREATE INDEX local_storage_resource_ref_host ON local_storage_resource_ref (host_uuid);
CREATE INDEX local_storage_resource_ref_create ON local_storage_resource_ref (create_date)
