-- The ledger: accounts and keys, the append-only events, and the projections derived from them.
-- Times are integer microseconds since the Unix epoch on both backends, so one code path
-- reads and hashes them identically.

CREATE TABLE accounts (
    account_id      TEXT PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    callback_secret TEXT NOT NULL,
    created_at_us   BIGINT NOT NULL
);

CREATE TABLE api_keys (
    key_id        TEXT PRIMARY KEY,
    account_id    TEXT NOT NULL REFERENCES accounts (account_id),
    scope         TEXT NOT NULL CHECK (scope IN ('customer', 'contributor')),
    key_hash      TEXT NOT NULL UNIQUE,
    created_at_us BIGINT NOT NULL,
    revoked_at_us BIGINT
);

-- One row: the last global position handed out and the last recorded_at. Every append
-- transaction updates it first, which serializes appends: a position becomes visible only
-- after every lower one has committed, so no reader of the global order can skip an event.
CREATE TABLE ledger_head (
    id               BIGINT PRIMARY KEY CHECK (id = 1),
    last_position    BIGINT NOT NULL,
    last_recorded_us BIGINT NOT NULL
);
INSERT INTO ledger_head (id, last_position, last_recorded_us) VALUES (1, 0, 0);

CREATE TABLE events (
    global_position  BIGINT PRIMARY KEY,
    event_id         TEXT NOT NULL UNIQUE,
    task_id          TEXT NOT NULL,
    account_id       TEXT NOT NULL,
    sequence         BIGINT NOT NULL,
    event_type       TEXT NOT NULL,
    event_version    BIGINT NOT NULL,
    payload          TEXT NOT NULL,
    recorded_at_us   BIGINT NOT NULL,
    actor_account_id TEXT NOT NULL,
    actor_key_id     TEXT,
    actor_scope      TEXT NOT NULL,
    request_id       TEXT,
    prev_hash        TEXT NOT NULL,
    hash             TEXT NOT NULL,
    UNIQUE (task_id, sequence)
);
CREATE INDEX events_by_account ON events (account_id, global_position);
CREATE INDEX events_by_time ON events (recorded_at_us);

CREATE FUNCTION taskledger_events_are_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'taskledger events are append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER events_no_update BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION taskledger_events_are_append_only();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION taskledger_events_are_append_only();

-- The task view (body: the API's task object, byte for byte) and the list index columns.
CREATE TABLE tasks (
    task_id                TEXT PRIMARY KEY,
    account_id             TEXT NOT NULL,
    version                BIGINT NOT NULL,
    body                   TEXT NOT NULL,
    task_type              TEXT NOT NULL,
    status                 TEXT NOT NULL,
    project                TEXT,
    batch                  TEXT,
    customer_review_status TEXT,
    unique_id              TEXT,
    created_at_us          BIGINT NOT NULL,
    updated_at_us          BIGINT NOT NULL,
    completed_at_us        BIGINT
);
CREATE INDEX tasks_newest ON tasks (account_id, created_at_us DESC, task_id DESC);
CREATE INDEX tasks_by_status ON tasks (account_id, status, created_at_us DESC, task_id DESC);
CREATE INDEX tasks_by_project ON tasks (account_id, project, created_at_us DESC, task_id DESC);
CREATE INDEX tasks_by_batch ON tasks (account_id, batch, created_at_us DESC, task_id DESC);
CREATE INDEX tasks_by_updated ON tasks (account_id, updated_at_us);
CREATE INDEX tasks_by_completed ON tasks (account_id, completed_at_us);

CREATE TABLE task_tags (
    task_id    TEXT NOT NULL,
    account_id TEXT NOT NULL,
    tag        TEXT NOT NULL,
    PRIMARY KEY (task_id, tag)
);
CREATE INDEX task_tags_by_tag ON task_tags (account_id, tag);

-- The unique_id reservation: the primary key is what makes a unique_id unique per account.
CREATE TABLE unique_ids (
    account_id TEXT NOT NULL,
    unique_id  TEXT NOT NULL,
    task_id    TEXT NOT NULL,
    PRIMARY KEY (account_id, unique_id)
);

CREATE TABLE idempotency_keys (
    idem_key      TEXT PRIMARY KEY,
    account_id    TEXT NOT NULL,
    fingerprint   TEXT NOT NULL,
    status_code   BIGINT,
    response_body TEXT,
    created_at_us BIGINT NOT NULL,
    expires_at_us BIGINT NOT NULL
);
CREATE INDEX idempotency_keys_by_expiry ON idempotency_keys (expires_at_us);
