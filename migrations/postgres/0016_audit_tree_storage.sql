-- The Merkle trees' storage, made cheaper for the append path that writes it on every commit:
-- nodes are 32-byte values (SQLite: in a WITHOUT ROWID table, one b-tree entry a node), the
-- leaves keep their event's global position without an index (an inclusion proof finds an
-- event's leaf by searching the leaves, which are in global order), and merkle_heads keeps
-- only its key, so the row every append of an account rewrites is updated in place.
-- The trees are derived from the events: they are dropped here and, on a ledger that has
-- events, built again at the next start (or by `taskledger replay`).
DROP INDEX merkle_leaves_by_position;
DROP INDEX merkle_heads_by_position;
DROP TABLE merkle_nodes;
CREATE TABLE merkle_nodes (
    account_id      TEXT NOT NULL,
    level           BIGINT NOT NULL,
    idx             BIGINT NOT NULL,
    hash            BYTEA NOT NULL,
    global_position BIGINT,
    PRIMARY KEY (account_id, level, idx)
);
DELETE FROM merkle_heads;
UPDATE merkle_state SET complete = CASE WHEN EXISTS (SELECT 1 FROM events) THEN 0 ELSE 1 END;
