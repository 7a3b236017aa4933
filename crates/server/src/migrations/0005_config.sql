-- Configuration: instance and disk offerings, system and user tags, SSH key pairs.
CREATE TABLE instance_offering (
    uuid TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT,
    cpu_num BIGINT NOT NULL,
    cpu_speed BIGINT NOT NULL,
    memory_size BIGINT NOT NULL,
    reserved_memory_size BIGINT NOT NULL,
    type TEXT NOT NULL,
    allocator_strategy TEXT,
    sort_key BIGINT NOT NULL,
    state TEXT NOT NULL,
    create_date BIGINT NOT NULL,
    last_op_date BIGINT NOT NULL
);
CREATE INDEX instance_offering_create ON instance_offering (create_date);
CREATE INDEX instance_offering_name ON instance_offering (name);

CREATE TABLE disk_offering (
    uuid TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT,
    disk_size BIGINT NOT NULL,
    sort_key BIGINT NOT NULL,
    state TEXT NOT NULL,
    type TEXT NOT NULL,
    allocator_strategy TEXT,
    create_date BIGINT NOT NULL,
    last_op_date BIGINT NOT NULL
);
CREATE INDEX disk_offering_create ON disk_offering (create_date);
CREATE INDEX disk_offering_name ON disk_offering (name);

-- Tags. The query engine's __systemTag__/__userTag__ conditions read these tables
-- (resource_uuid, tag).
CREATE TABLE system_tag (
    uuid TEXT PRIMARY KEY,
    resource_uuid TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    tag TEXT NOT NULL,
    type TEXT NOT NULL,
    inherent BIGINT NOT NULL,
    create_date BIGINT NOT NULL,
    last_op_date BIGINT NOT NULL
);
CREATE INDEX system_tag_resource ON system_tag (resource_uuid);
CREATE INDEX system_tag_tag ON system_tag (tag);
CREATE INDEX system_tag_create ON system_tag (create_date);

CREATE TABLE user_tag (
    uuid TEXT PRIMARY KEY,
    resource_uuid TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    tag TEXT NOT NULL,
    type TEXT NOT NULL,
    tag_pattern_uuid TEXT,
    create_date BIGINT NOT NULL,
    last_op_date BIGINT NOT NULL
);
CREATE INDEX user_tag_resource ON user_tag (resource_uuid);
CREATE INDEX user_tag_tag ON user_tag (tag);
CREATE INDEX user_tag_create ON user_tag (create_date);

-- SSH key pairs and the resources (VMs) they are attached to.
CREATE TABLE ssh_key_pair (
    uuid TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT,
    public_key TEXT NOT NULL,
    create_date BIGINT NOT NULL,
    last_op_date BIGINT NOT NULL
);
CREATE INDEX ssh_key_pair_create ON ssh_key_pair (create_date);

CREATE TABLE ssh_key_pair_ref (
    ssh_key_pair_uuid TEXT NOT NULL,
    resource_uuid TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    create_date BIGINT NOT NULL,
    PRIMARY KEY (ssh_key_pair_uuid, resource_uuid)
);
CREATE INDEX ssh_key_pair_ref_resource ON ssh_key_pair_ref (resource_uuid)
