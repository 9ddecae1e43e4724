-- Callback deliveries, scheduled from the event log (one per triggering event, keyed by its
-- event id) and attempted until a 2xx or the last attempt. A lease lets one process at a time
-- attempt a delivery; an expired lease (a dead process) lets another take it over.
CREATE TABLE callback_deliveries (
    delivery_id        TEXT PRIMARY KEY,
    account_id         TEXT NOT NULL,
    task_id            TEXT NOT NULL,
    for_sequence       BIGINT NOT NULL,
    url                TEXT NOT NULL,
    body               TEXT NOT NULL,
    state              TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts           BIGINT NOT NULL,
    next_attempt_at_us BIGINT NOT NULL,
    lease_until_us     BIGINT,
    last_error         TEXT,
    created_at_us      BIGINT NOT NULL,
    updated_at_us      BIGINT NOT NULL
);
CREATE INDEX callback_deliveries_due ON callback_deliveries (state, next_attempt_at_us);
