-- The auditor's ledger (issue 10): who holds each key, indexes for searching the events, and
-- each account's RFC 6962 Merkle tree over its events in global order.

-- Who holds a key, as the operator named them (`keys create --name`); absent for older keys.
ALTER TABLE api_keys ADD COLUMN name TEXT;
CREATE INDEX api_keys_by_account ON api_keys (account_id, created_at_us);

-- GET /v1/events filters: each reads its own index in global order (a task's events are read
-- through the (task_id, sequence) index, a time range through events_by_time).
CREATE INDEX events_by_account_type ON events (account_id, event_type, global_position);
CREATE INDEX events_by_account_key ON events (account_id, actor_key_id, global_position);
CREATE INDEX events_by_account_scope ON events (account_id, actor_scope, global_position);
CREATE INDEX events_by_account_request ON events (account_id, request_id, global_position);

-- The complete subtrees of each account's tree: node (level, idx) is the root of the 2^level
-- leaves from idx * 2^level; a leaf (level 0) also names its event's global position. Written
-- by the append transaction, never changed after (a rebuild rewrites identical values).
CREATE TABLE merkle_nodes (
    account_id      TEXT NOT NULL,
    level           BIGINT NOT NULL,
    idx             BIGINT NOT NULL,
    hash            TEXT NOT NULL,
    global_position BIGINT,
    PRIMARY KEY (account_id, level, idx)
);
CREATE INDEX merkle_leaves_by_position ON merkle_nodes (account_id, global_position)
    WHERE global_position IS NOT NULL;

-- Each account's tree as of its last append: its size, the global position of its last leaf,
-- and its frontier (the hex roots of its complete subtrees, largest first, concatenated).
CREATE TABLE merkle_heads (
    account_id           TEXT PRIMARY KEY,
    tree_size            BIGINT NOT NULL,
    last_global_position BIGINT NOT NULL,
    frontier             TEXT NOT NULL
);
CREATE INDEX merkle_heads_by_position ON merkle_heads (last_global_position);

-- 1 once every event is in its account's tree. A ledger that already had events when this
-- migration ran gets its trees built at the next start (or by `taskledger replay`).
CREATE TABLE merkle_state (
    id       BIGINT PRIMARY KEY CHECK (id = 1),
    complete BIGINT NOT NULL
);
INSERT INTO merkle_state (id, complete)
SELECT 1, CASE WHEN EXISTS (SELECT 1 FROM events) THEN 0 ELSE 1 END;
