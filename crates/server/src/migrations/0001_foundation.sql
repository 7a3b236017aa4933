-- Foundation: accounts, sessions, API jobs, resource ownership, global configs, zones.
CREATE TABLE account (
    uuid TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    password TEXT NOT NULL,
    type TEXT NOT NULL,
    description TEXT,
    create_date BIGINT NOT NULL,
    last_op_date BIGINT NOT NULL
);

CREATE TABLE session (
    uuid TEXT PRIMARY KEY,
    account_uuid TEXT NOT NULL,
    user_uuid TEXT NOT NULL,
    expired_date BIGINT NOT NULL,
    create_date BIGINT NOT NULL
);
CREATE INDEX session_account ON session (account_uuid);
CREATE INDEX session_expired ON session (expired_date);

CREATE TABLE api_job (
    uuid TEXT PRIMARY KEY,
    api TEXT NOT NULL,
    request TEXT NOT NULL,
    state TEXT NOT NULL,
    success BIGINT,
    result TEXT,
    schema_map TEXT,
    webhook TEXT,
    timeout_ms BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    mn_uuid TEXT NOT NULL,
    create_date BIGINT NOT NULL,
    finish_date BIGINT
);
CREATE INDEX api_job_state ON api_job (state, finish_date);

CREATE TABLE account_resource_ref (
    resource_uuid TEXT PRIMARY KEY,
    resource_type TEXT NOT NULL,
    account_uuid TEXT NOT NULL,
    create_date BIGINT NOT NULL
);
CREATE INDEX account_resource_ref_account ON account_resource_ref (account_uuid, resource_type);

CREATE TABLE global_config (
    category TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (category, name)
);

CREATE TABLE management_node (
    uuid TEXT PRIMARY KEY,
    host_name TEXT NOT NULL,
    port BIGINT NOT NULL,
    state TEXT NOT NULL,
    join_date BIGINT NOT NULL,
    heart_beat BIGINT NOT NULL
);

CREATE TABLE zone (
    uuid TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT,
    state TEXT NOT NULL,
    type TEXT NOT NULL,
    is_default BIGINT NOT NULL,
    create_date BIGINT NOT NULL,
    last_op_date BIGINT NOT NULL
);
CREATE INDEX zone_name ON zone (name);
CREATE INDEX zone_create ON zone (create_date);
