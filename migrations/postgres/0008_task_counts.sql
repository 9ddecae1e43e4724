-- How many tasks each account has, in all ('all', value '') and per type, status, project,
-- batch and customer_review_status: the exact `total` of a list page in one indexed read.
-- Kept by the append transaction, rebuilt by replay (which fills the shadow and swaps it in
-- with the other projections).
CREATE TABLE task_counts (
    account_id TEXT NOT NULL,
    dimension  TEXT NOT NULL,
    value      TEXT NOT NULL,
    n          BIGINT NOT NULL,
    PRIMARY KEY (account_id, dimension, value)
);
CREATE TABLE task_counts_shadow (LIKE task_counts INCLUDING ALL);

INSERT INTO task_counts (account_id, dimension, value, n)
SELECT account_id, 'all', '', COUNT(*) FROM tasks GROUP BY account_id
UNION ALL SELECT account_id, 'type', task_type, COUNT(*) FROM tasks GROUP BY account_id, task_type
UNION ALL SELECT account_id, 'status', status, COUNT(*) FROM tasks GROUP BY account_id, status
UNION ALL SELECT account_id, 'project', project, COUNT(*) FROM tasks
    WHERE project IS NOT NULL GROUP BY account_id, project
UNION ALL SELECT account_id, 'batch', batch, COUNT(*) FROM tasks
    WHERE batch IS NOT NULL GROUP BY account_id, batch
UNION ALL SELECT account_id, 'review', customer_review_status, COUNT(*) FROM tasks
    WHERE customer_review_status IS NOT NULL GROUP BY account_id, customer_review_status;

-- A page filtered by type or customer_review_status reads its index in list order, as the
-- other filters already do.
CREATE INDEX tasks_by_type ON tasks (account_id, task_type, created_at_us DESC, task_id DESC);
CREATE INDEX tasks_by_review
    ON tasks (account_id, customer_review_status, created_at_us DESC, task_id DESC);
CREATE INDEX tasks_shadow_by_type
    ON tasks_shadow (account_id, task_type, created_at_us DESC, task_id DESC);
CREATE INDEX tasks_shadow_by_review
    ON tasks_shadow (account_id, customer_review_status, created_at_us DESC, task_id DESC);
