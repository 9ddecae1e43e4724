-- Durable checkpoints of the readers that follow the global order (the Kafka relay, and the
-- callback reactor to come): the last position whose event was acknowledged downstream.
CREATE TABLE reader_checkpoints (
    reader        TEXT PRIMARY KEY,
    position      BIGINT NOT NULL,
    updated_at_us BIGINT NOT NULL
);
