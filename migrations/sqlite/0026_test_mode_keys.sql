-- Test-mode keys (`keys create --test`): 1 for a test key, 0 for a live one. What a test key
-- creates is test data, kept apart from the account's live data on every read. An integer
-- rather than a boolean so both backends read it alike through the Any driver.
ALTER TABLE api_keys ADD COLUMN is_test INTEGER NOT NULL DEFAULT 0 CHECK (is_test IN (0, 1));
