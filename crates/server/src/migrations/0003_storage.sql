-- Storage: primary storage, backup storage, images, volumes, volume snapshots, task progress.
CREATE TABLE primary_storage (
    uuid TEXT PRIMARY KEY,
    zone_uuid TEXT NOT NULL,
    name TEXT NOT NULL,
    url TEXT NOT NULL,
    description TEXT,
    total_capacity BIGINT NOT NULL,
    available_capacity BIGINT NOT NULL,
    total_physical_capacity BIGINT NOT NULL,
    available_physical_capacity BIGINT NOT NULL,
    system_used_capacity BIGINT NOT NULL,
    type TEXT NOT NULL,
    state TEXT NOT NULL,
    status TEXT NOT NULL,
    mount_path TEXT,
    create_date BIGINT NOT NULL,
    last_op_date BIGINT NOT NULL
);
CREATE INDEX primary_storage_zone ON primary_storage (zone_uuid);
CREATE INDEX primary_storage_create ON primary_storage (create_date);

CREATE TABLE primary_storage_cluster_ref (
    primary_storage_uuid TEXT NOT NULL,
    cluster_uuid TEXT NOT NULL,
    create_date BIGINT NOT NULL,
    PRIMARY KEY (primary_storage_uuid, cluster_uuid)
);
CREATE INDEX primary_storage_cluster_ref_cluster ON primary_storage_cluster_ref (cluster_uuid);

CREATE TABLE backup_storage (
    uuid TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    url TEXT NOT NULL,
    description TEXT,
    total_capacity BIGINT NOT NULL,
    available_capacity BIGINT NOT NULL,
    type TEXT NOT NULL,
    state TEXT NOT NULL,
    status TEXT NOT NULL,
    hostname TEXT,
    username TEXT,
    password TEXT,
    ssh_port BIGINT,
    create_date BIGINT NOT NULL,
    last_op_date BIGINT NOT NULL
);
CREATE INDEX backup_storage_create ON backup_storage (create_date);
CREATE INDEX backup_storage_hostname ON backup_storage (hostname);

CREATE TABLE backup_storage_zone_ref (
    backup_storage_uuid TEXT NOT NULL,
    zone_uuid TEXT NOT NULL,
    create_date BIGINT NOT NULL,
    PRIMARY KEY (backup_storage_uuid, zone_uuid)
);
CREATE INDEX backup_storage_zone_ref_zone ON backup_storage_zone_ref (zone_uuid);

CREATE TABLE image (
    uuid TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT,
    state TEXT NOT NULL,
    status TEXT NOT NULL,
    size BIGINT,
    actual_size BIGINT,
    md5_sum TEXT,
    url TEXT NOT NULL,
    media_type TEXT NOT NULL,
    guest_os_type TEXT,
    type TEXT NOT NULL,
    platform TEXT,
    architecture TEXT,
    format TEXT NOT NULL,
    system BIGINT NOT NULL,
    virtio BIGINT NOT NULL,
    create_date BIGINT NOT NULL,
    last_op_date BIGINT NOT NULL
);
CREATE INDEX image_create ON image (create_date);
CREATE INDEX image_status ON image (status);

CREATE TABLE image_backup_storage_ref (
    id BIGINT NOT NULL,
    image_uuid TEXT NOT NULL,
    backup_storage_uuid TEXT NOT NULL,
    install_path TEXT,
    status TEXT NOT NULL,
    reserved_size BIGINT NOT NULL,
    export_md5_sum TEXT,
    export_url TEXT,
    create_date BIGINT NOT NULL,
    last_op_date BIGINT NOT NULL,
    PRIMARY KEY (image_uuid, backup_storage_uuid)
);
CREATE INDEX image_backup_storage_ref_bs ON image_backup_storage_ref (backup_storage_uuid);

CREATE TABLE task_progress (
    uuid TEXT PRIMARY KEY,
    api_id TEXT NOT NULL,
    task_name TEXT NOT NULL,
    type TEXT NOT NULL,
    content TEXT,
    time BIGINT NOT NULL
);
CREATE INDEX task_progress_api ON task_progress (api_id);

CREATE TABLE volume (
    uuid TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT,
    primary_storage_uuid TEXT,
    vm_instance_uuid TEXT,
    disk_offering_uuid TEXT,
    root_image_uuid TEXT,
    install_path TEXT,
    type TEXT NOT NULL,
    format TEXT,
    size BIGINT NOT NULL,
    actual_size BIGINT,
    device_id BIGINT,
    state TEXT NOT NULL,
    status TEXT NOT NULL,
    create_date BIGINT NOT NULL,
    last_op_date BIGINT NOT NULL,
    is_shareable BIGINT NOT NULL,
    volume_qos TEXT,
    last_detach_date BIGINT,
    last_vm_instance_uuid TEXT,
    last_attach_date BIGINT,
    protocol TEXT,
    reserved_size BIGINT NOT NULL
);
CREATE INDEX volume_ps ON volume (primary_storage_uuid);
CREATE INDEX volume_vm ON volume (vm_instance_uuid);
CREATE INDEX volume_create ON volume (create_date);

CREATE TABLE volume_snapshot (
    uuid TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT,
    type TEXT NOT NULL,
    volume_uuid TEXT,
    tree_uuid TEXT NOT NULL,
    parent_uuid TEXT,
    primary_storage_uuid TEXT,
    primary_storage_install_path TEXT,
    volume_type TEXT NOT NULL,
    format TEXT,
    latest BIGINT NOT NULL,
    size BIGINT NOT NULL,
    distance BIGINT NOT NULL,
    state TEXT NOT NULL,
    status TEXT NOT NULL,
    create_date BIGINT NOT NULL,
    last_op_date BIGINT NOT NULL,
    group_uuid TEXT
);
CREATE INDEX volume_snapshot_volume ON volume_snapshot (volume_uuid);
CREATE INDEX volume_snapshot_tree ON volume_snapshot (tree_uuid);
CREATE INDEX volume_snapshot_create ON volume_snapshot (create_date)
