-- VMs (upstream VmInstanceVO, VmNicVO, VmCdRomVO) and the saga journal.
-- Columns after internal_id are ours: what a VM holds (host capacity, primary-storage
-- capacity not yet handed to its volumes) so that giving it back is a compare-and-set.
CREATE TABLE vm_instance (
    uuid TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT,
    zone_uuid TEXT,
    cluster_uuid TEXT,
    image_uuid TEXT,
    host_uuid TEXT,
    last_host_uuid TEXT,
    instance_offering_uuid TEXT,
    root_volume_uuid TEXT,
    platform TEXT,
    architecture TEXT,
    default_l3_network_uuid TEXT,
    type TEXT NOT NULL,
    hypervisor_type TEXT,
    memory_size BIGINT NOT NULL,
    reserved_memory_size BIGINT,
    cpu_num BIGINT NOT NULL,
    cpu_speed BIGINT NOT NULL,
    allocator_strategy TEXT,
    state TEXT NOT NULL,
    internal_id BIGINT NOT NULL UNIQUE,
    guest_os_type TEXT,
    create_date BIGINT NOT NULL,
    last_op_date BIGINT NOT NULL,
    reserved_host_uuid TEXT,
    reserved_cpu BIGINT NOT NULL,
    reserved_memory BIGINT NOT NULL,
    reserved_ps_uuid TEXT,
    reserved_ps_size BIGINT NOT NULL,
    creation TEXT
);
CREATE INDEX vm_instance_host ON vm_instance (host_uuid);
CREATE INDEX vm_instance_cluster ON vm_instance (cluster_uuid);
CREATE INDEX vm_instance_zone ON vm_instance (zone_uuid);
CREATE INDEX vm_instance_state ON vm_instance (state);
CREATE INDEX vm_instance_name ON vm_instance (name);
CREATE INDEX vm_instance_create ON vm_instance (create_date);

-- upstream's VM internal id sequence: one row, taken with UPDATE ... RETURNING
CREATE TABLE vm_internal_id (id BIGINT PRIMARY KEY, next_value BIGINT NOT NULL);
INSERT INTO vm_internal_id (id, next_value) VALUES (1, 0);

CREATE TABLE vm_nic (
    uuid TEXT PRIMARY KEY,
    vm_instance_uuid TEXT NOT NULL,
    used_ip_uuid TEXT,
    l3_network_uuid TEXT,
    ip TEXT,
    mac TEXT NOT NULL UNIQUE,
    hypervisor_type TEXT,
    netmask TEXT,
    gateway TEXT,
    meta_data TEXT,
    ip_version BIGINT,
    driver_type TEXT,
    internal_name TEXT,
    device_id BIGINT NOT NULL,
    type TEXT NOT NULL,
    state TEXT NOT NULL,
    create_date BIGINT NOT NULL,
    last_op_date BIGINT NOT NULL
);
CREATE INDEX vm_nic_vm ON vm_nic (vm_instance_uuid);
CREATE INDEX vm_nic_l3 ON vm_nic (l3_network_uuid);
CREATE INDEX vm_nic_ip ON vm_nic (ip);

CREATE TABLE vm_cdrom (
    uuid TEXT PRIMARY KEY,
    vm_instance_uuid TEXT NOT NULL,
    device_id BIGINT NOT NULL,
    iso_uuid TEXT,
    iso_install_path TEXT,
    name TEXT NOT NULL,
    description TEXT,
    create_date BIGINT NOT NULL,
    last_op_date BIGINT NOT NULL
);
CREATE INDEX vm_cdrom_vm ON vm_cdrom (vm_instance_uuid);

-- Saga journal: one row per unfinished multi-step mutation. step = how many steps are done
-- (while running) or still to undo (while unwinding); data = the saga's context (all ids
-- fixed before the first step), written in the same transaction as each step's rows.
CREATE TABLE saga (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    job_uuid TEXT,
    resource_uuid TEXT,
    mn_uuid TEXT NOT NULL,
    step BIGINT NOT NULL,
    state TEXT NOT NULL,
    data TEXT NOT NULL,
    create_date BIGINT NOT NULL,
    last_op_date BIGINT NOT NULL
);
CREATE INDEX saga_job ON saga (job_uuid);
CREATE INDEX saga_mn ON saga (mn_uuid)
