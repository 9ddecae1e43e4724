-- Idempotency keys belong to an account: the same text sent by two accounts is two keys.
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys ADD PRIMARY KEY (account_id, idem_key);
-- The API key that claimed it: another key of the same account reusing it is refused.
ALTER TABLE idempotency_keys ADD COLUMN key_id TEXT;
-- The current claim. A claim taken over after its holder went quiet gets a new token, and
-- only the holder of the current token may record the answer (in the command's own
-- transaction), finish or release it: the previous holder is fenced off.
ALTER TABLE idempotency_keys ADD COLUMN claim_token TEXT;
