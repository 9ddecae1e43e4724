-- A counter that moves whenever a key is changed or removed (revoked, renamed, deleted), in
-- the same transaction: the serve process caches authentication and re-reads this one row
-- at most every 250 ms, dropping its cache when it moved, so a key revoked by the CLI (another
-- process) is refused within a second without a lookup per request.
CREATE TABLE key_changes (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT INTO key_changes (id, version) VALUES (1, 0);

CREATE TRIGGER api_keys_changed_by_update AFTER UPDATE ON api_keys
BEGIN
    UPDATE key_changes SET version = version + 1 WHERE id = 1;
END;

CREATE TRIGGER api_keys_changed_by_delete AFTER DELETE ON api_keys
BEGIN
    UPDATE key_changes SET version = version + 1 WHERE id = 1;
END;
