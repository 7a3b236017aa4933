-- The agent work a host deletion leaves to do (upstream has no such table: its host
-- deletion stops the guests before the rows go). One row per deleted KVM host, written in the
-- deletion's transaction and deleted once the host's agent has done the work, so a crash of
-- the management node between the commit and the agent calls leaks nothing: pending rows are
-- run again at start and retried periodically. `work` is JSON: the VMs whose QEMU must end,
-- the network release command (taps, DHCP leases), the LocalStorage files to delete.
-- `claimed_by`/`claimed_at`: the management node running the row (several nodes may share a
-- PostgreSQL database; a claim older than a few minutes is taken over).
CREATE TABLE host_cleanup (
    uuid TEXT PRIMARY KEY,
    host_uuid TEXT NOT NULL,
    management_ip TEXT NOT NULL,
    token TEXT,
    work TEXT NOT NULL,
    create_date BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    last_error TEXT,
    last_op_date BIGINT NOT NULL,
    claimed_by TEXT,
    claimed_at BIGINT
);
CREATE INDEX host_cleanup_host ON host_cleanup (host_uuid)
