-- A task's snapshot before its newest one, kept beside it: the relay, whose batches may lag
-- the writers by a few events of a task, starts a task's state from the newest snapshot at or
-- before its batch instead of the task's whole history (commands keep using the newest).
ALTER TABLE task_snapshots ADD COLUMN previous_sequence BIGINT;
ALTER TABLE task_snapshots ADD COLUMN previous_state TEXT;
