-- Idempotency keys belong to an account: the same text sent by two accounts is two keys.
-- SQLite cannot change a primary key in place: the table is rebuilt.
-- key_id: the API key that claimed it; another key of the same account reusing it is refused.
-- claim_token: the current claim. A claim taken over after its holder went quiet gets a new
-- token, and only the holder of the current token may record the answer (in the command's
-- own transaction), finish or release it: the previous holder is fenced off.
CREATE TABLE idempotency_keys_by_account (
    account_id    TEXT NOT NULL,
    idem_key      TEXT NOT NULL,
    key_id        TEXT,
    claim_token   TEXT,
    fingerprint   TEXT NOT NULL,
    status_code   BIGINT,
    response_body TEXT,
    created_at_us BIGINT NOT NULL,
    expires_at_us BIGINT NOT NULL,
    PRIMARY KEY (account_id, idem_key)
);
INSERT INTO idempotency_keys_by_account
    (account_id, idem_key, fingerprint, status_code, response_body, created_at_us, expires_at_us)
SELECT account_id, idem_key, fingerprint, status_code, response_body, created_at_us, expires_at_us
FROM idempotency_keys;
DROP TABLE idempotency_keys;
ALTER TABLE idempotency_keys_by_account RENAME TO idempotency_keys;
CREATE INDEX idempotency_keys_by_expiry ON idempotency_keys (expires_at_us);
