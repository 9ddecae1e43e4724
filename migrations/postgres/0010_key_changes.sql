-- A counter that moves whenever a key is changed or removed (revoked, renamed, deleted), in
-- the same transaction: each serve process caches authentication and re-reads this one row
-- at most every 250 ms, dropping its cache when it moved, so a revoked key is refused
-- everywhere within a second without a lookup per request.
CREATE TABLE key_changes (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO key_changes (id, version) VALUES (1, 0);

CREATE FUNCTION key_changes_bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE key_changes SET version = version + 1 WHERE id = 1;
    RETURN NULL;
END
$$;

CREATE TRIGGER api_keys_changed AFTER UPDATE OR DELETE ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION key_changes_bump();
