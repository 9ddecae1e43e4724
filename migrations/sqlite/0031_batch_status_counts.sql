-- Batch status counts (`task_counts` dimension `batch_status`, value `<status>:<batch>`) for
-- the tasks recorded before they were kept: from here on the append path keeps them in the
-- same transaction as every task change, and `replay` rebuilds them.
INSERT INTO task_counts (account_id, dimension, value, n)
SELECT account_id, 'batch_status', status || ':' || batch, COUNT(*)
FROM tasks WHERE batch IS NOT NULL
GROUP BY account_id, status, batch;
