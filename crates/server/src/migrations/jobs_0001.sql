-- The API job database (a SQLite file of its own beside the main one): the same table as
-- api_job of 0001_foundation.sql.
CREATE TABLE IF NOT EXISTS api_job (
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
CREATE INDEX IF NOT EXISTS api_job_state ON api_job (state, finish_date);
