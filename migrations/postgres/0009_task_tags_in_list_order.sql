-- Each tag row carries its task's creation time, so a list filtered by a tag reads the tag's
-- tasks from an index in list order (newest first) and stops after the page, however many
-- tasks carry the tag.
ALTER TABLE task_tags ADD COLUMN created_at_us BIGINT NOT NULL DEFAULT 0;
ALTER TABLE task_tags_shadow ADD COLUMN created_at_us BIGINT NOT NULL DEFAULT 0;
UPDATE task_tags g SET created_at_us = t.created_at_us FROM tasks t WHERE t.task_id = g.task_id;
CREATE INDEX task_tags_newest ON task_tags (account_id, tag, created_at_us DESC, task_id DESC);
CREATE INDEX task_tags_shadow_newest
    ON task_tags_shadow (account_id, tag, created_at_us DESC, task_id DESC);
