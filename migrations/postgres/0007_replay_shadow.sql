-- The shadow projections an online replay builds beside the live ones and then swaps in by
-- renaming (the old projections become the shadow, emptied after the swap). They mirror the
-- live tables exactly, indexes included; an index added to a projection table later is added
-- to its shadow as well.
CREATE INDEX unique_ids_by_task ON unique_ids (task_id);
CREATE TABLE tasks_shadow (LIKE tasks INCLUDING ALL);
CREATE TABLE task_tags_shadow (LIKE task_tags INCLUDING ALL);
CREATE TABLE unique_ids_shadow (LIKE unique_ids INCLUDING ALL);
