-- A task's decision state at a sequence (the aggregate and its view, encoded by the ledger),
-- so a command on a long task folds only the events after it. Events never change, so a
-- snapshot is a fact about its sequence: written after a commit, never over a newer one,
-- and never a source of truth (deleting every row only makes commands read more history).
CREATE TABLE task_snapshots (
    task_id    TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    sequence   BIGINT NOT NULL,
    state      TEXT NOT NULL
);
