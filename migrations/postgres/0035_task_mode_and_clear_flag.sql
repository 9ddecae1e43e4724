-- Every task object shows clear_unique_id_on_error and is_test (issue 12), the task view's
-- last two fields. Tasks stored before that get both appended to their body, exactly as the
-- view serializes them: is_test is false (test mode is newer than every such task), and
-- clear_unique_id_on_error is what the task's TaskCreated recorded. In the canonical payload
-- the keys are sorted and the only ones before it hold strings (batch, callback_url), so its
-- first occurrence is the top-level field, never one nested in metadata or params.
UPDATE tasks SET body = substr(body, 1, length(body) - 1)
    || ',"clear_unique_id_on_error":'
    || CASE WHEN EXISTS (
           SELECT 1 FROM events e
           WHERE e.task_id = tasks.task_id AND e.sequence = 1
             AND strpos(e.payload, '"clear_unique_id_on_error":true') > 0
             AND strpos(e.payload, '"clear_unique_id_on_error":true')
                 = strpos(e.payload, '"clear_unique_id_on_error":'))
       THEN 'true' ELSE 'false' END
    || ',"is_test":false}';

-- Snapshots hold views without the two fields, which would decode as false: dropping them
-- only makes the next command on each task fold its history once.
DELETE FROM task_snapshots;
