-- Tag patterns (upstream TagPatternVO, the "tag2" tags): a named, coloured tag that is put on
-- resources as a user tag whose tag_pattern_uuid names the pattern.
CREATE TABLE tag_pattern (
    uuid TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    description TEXT,
    color TEXT,
    type TEXT NOT NULL,
    create_date BIGINT NOT NULL,
    last_op_date BIGINT NOT NULL
);
CREATE INDEX tag_pattern_name ON tag_pattern (name);
CREATE INDEX tag_pattern_create ON tag_pattern (create_date);

-- A pattern is on a resource at most once per tag text (user tags without a pattern have a
-- NULL tag_pattern_uuid, which never conflicts).
CREATE UNIQUE INDEX user_tag_pattern_resource ON user_tag (tag_pattern_uuid, resource_uuid, tag);
