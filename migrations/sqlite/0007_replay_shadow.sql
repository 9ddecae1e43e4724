-- The shadow projections an online replay builds beside the live ones and then swaps in by
-- renaming (the old projections become the shadow, emptied after the swap). They mirror the
-- live tables exactly, indexes included; an index added to a projection table later is added
-- to its shadow as well.
CREATE INDEX unique_ids_by_task ON unique_ids (task_id);

CREATE TABLE tasks_shadow (
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
CREATE INDEX tasks_shadow_newest ON tasks_shadow (account_id, created_at_us DESC, task_id DESC);
CREATE INDEX tasks_shadow_by_status ON tasks_shadow (account_id, status, created_at_us DESC, task_id DESC);
CREATE INDEX tasks_shadow_by_project ON tasks_shadow (account_id, project, created_at_us DESC, task_id DESC);
CREATE INDEX tasks_shadow_by_batch ON tasks_shadow (account_id, batch, created_at_us DESC, task_id DESC);
CREATE INDEX tasks_shadow_by_updated ON tasks_shadow (account_id, updated_at_us);
CREATE INDEX tasks_shadow_by_completed ON tasks_shadow (account_id, completed_at_us);

CREATE TABLE task_tags_shadow (
    task_id    TEXT NOT NULL,
    account_id TEXT NOT NULL,
    tag        TEXT NOT NULL,
    PRIMARY KEY (task_id, tag)
);
CREATE INDEX task_tags_shadow_by_tag ON task_tags_shadow (account_id, tag);

CREATE TABLE unique_ids_shadow (
    account_id TEXT NOT NULL,
    unique_id  TEXT NOT NULL,
    task_id    TEXT NOT NULL,
    PRIMARY KEY (account_id, unique_id)
);
CREATE INDEX unique_ids_shadow_by_task ON unique_ids_shadow (task_id);
