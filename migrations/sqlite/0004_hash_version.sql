-- Which hash input each event's hash was computed over. Events recorded before this column
-- existed were all hashed with the first input, v1; new events record the version they use.
ALTER TABLE events ADD COLUMN hash_version BIGINT NOT NULL DEFAULT 1;
