-- Indexes for the query engine's default orders (issue 6): a filtered, sorted VM page reads
-- its rows in index order instead of sorting every match. (state, create_date, uuid) serves
-- `q=state=...` with the default order; (create_date, uuid) the unfiltered default order and
-- replaces the index on create_date alone.
CREATE INDEX vm_instance_state_create ON vm_instance (state, create_date, uuid);
CREATE INDEX vm_instance_create_uuid ON vm_instance (create_date, uuid);
DROP INDEX vm_instance_create
