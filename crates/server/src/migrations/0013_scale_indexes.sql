-- Indexes for the create path at scale (issue 6 `scale`). "Has this resource this tag?"
-- (resource_uuid, resource_type, tag) was planned on the index of `tag` alone: every VM has the
-- same `driver::virtio` tag, so each check walked every VM's tag row (1.2 ms per create at
-- 10,000 VMs). With both equalities in one index it is one B-tree search. The tag text stays
-- out of the index (user data tags can exceed PostgreSQL's B-tree entry size).
CREATE INDEX system_tag_resource_type ON system_tag (resource_uuid, resource_type);
CREATE INDEX user_tag_resource_type ON user_tag (resource_uuid, resource_type)
