-- Projects and batches: views of their own event streams (ProjectCreated..., BatchCreated...),
-- written in the transaction that records the events and rebuilt by `replay`. A stream id
-- (`proj_...`, `batch_...`) is the events' `task_id`; `version` is its last sequence and
-- `last_hash` that event's hash, so the next event chains without reading the stream.
-- Names are unique per account and mode: a test key's project may share a live one's name.
CREATE TABLE projects (
    stream_id     TEXT PRIMARY KEY,
    account_id    TEXT NOT NULL,
    is_test       BIGINT NOT NULL CHECK (is_test IN (0, 1)),
    name          TEXT NOT NULL,
    task_type     TEXT NOT NULL,
    created_at_us BIGINT NOT NULL,
    version       BIGINT NOT NULL,
    last_hash     TEXT NOT NULL,
    -- The params' versions, oldest first, as `param_history` shows them (JSON array).
    param_history TEXT NOT NULL,
    UNIQUE (account_id, is_test, name)
);

CREATE TABLE batches (
    stream_id         TEXT PRIMARY KEY,
    account_id        TEXT NOT NULL,
    is_test           BIGINT NOT NULL CHECK (is_test IN (0, 1)),
    name              TEXT NOT NULL,
    project           TEXT NOT NULL,
    status            TEXT NOT NULL,
    callback          TEXT,
    metadata          TEXT NOT NULL,
    calibration_batch BIGINT NOT NULL,
    self_label_batch  BIGINT NOT NULL,
    created_at_us     BIGINT NOT NULL,
    version           BIGINT NOT NULL,
    last_hash         TEXT NOT NULL,
    UNIQUE (account_id, is_test, name)
);
CREATE INDEX batches_by_creation ON batches (account_id, is_test, created_at_us, stream_id);
-- The append path finds a task's batch by account and name (a task's view names its batch,
-- not its mode): one indexed lookup however many batches the account has.
CREATE INDEX batches_by_name ON batches (account_id, name);
