-- The dispatcher picks the oldest due delivery of each account with pending work (a skip scan
-- over account_id, then one probe per account), so an account with a huge backlog, or one
-- already at its in-flight cap, costs one probe instead of a scan of its rows.
CREATE INDEX callback_deliveries_due_by_account
    ON callback_deliveries (state, account_id, next_attempt_at_us);
