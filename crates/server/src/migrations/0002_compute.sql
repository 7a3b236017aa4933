-- Compute: clusters, hosts (with their CPU/memory capacity), global config metadata.
CREATE TABLE cluster (
    uuid TEXT PRIMARY KEY,
    zone_uuid TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT,
    state TEXT NOT NULL,
    hypervisor_type TEXT NOT NULL,
    type TEXT NOT NULL,
    architecture TEXT,
    create_date BIGINT NOT NULL,
    last_op_date BIGINT NOT NULL
);
CREATE INDEX cluster_zone ON cluster (zone_uuid);
CREATE INDEX cluster_create ON cluster (create_date);

-- One row per host. Capacity (upstream HostCapacityVO) lives in the same row so that an
-- allocation is one UPDATE ... WHERE available_* >= $x. total_cpu = cpu_num * the CPU
-- over-provisioning ratio, available_* = total - used by VMs.
-- KVM-only columns: username, password, ssh_port, os_*, simulator-only: cpu_capacity,
-- memory_capacity (what AddSimulatorHost was given).
CREATE TABLE host (
    uuid TEXT PRIMARY KEY,
    zone_uuid TEXT NOT NULL,
    cluster_uuid TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT,
    management_ip TEXT NOT NULL UNIQUE,
    hypervisor_type TEXT NOT NULL,
    state TEXT NOT NULL,
    status TEXT NOT NULL,
    total_cpu BIGINT NOT NULL,
    available_cpu BIGINT NOT NULL,
    cpu_sockets BIGINT NOT NULL,
    total_memory BIGINT NOT NULL,
    available_memory BIGINT NOT NULL,
    total_physical_memory BIGINT NOT NULL,
    available_physical_memory BIGINT NOT NULL,
    cpu_num BIGINT NOT NULL,
    architecture TEXT,
    cpu_model_name TEXT,
    hypervisor_version TEXT,
    accelerator TEXT,
    agent_version BIGINT,
    username TEXT,
    password TEXT,
    ssh_port BIGINT,
    os_distribution TEXT,
    os_release TEXT,
    os_version TEXT,
    cpu_capacity BIGINT,
    memory_capacity BIGINT,
    create_date BIGINT NOT NULL,
    last_op_date BIGINT NOT NULL
);
CREATE INDEX host_cluster ON host (cluster_uuid);
CREATE INDEX host_zone ON host (zone_uuid);
CREATE INDEX host_create ON host (create_date);

-- Global configs are queried by SQL: every known config has a row with its metadata
-- (seeded at start by resources::global_config::ensure).
ALTER TABLE global_config ADD COLUMN description TEXT;
ALTER TABLE global_config ADD COLUMN default_value TEXT
