-- The counts projection also counts, per account, the tasks carrying each tag (dimension
-- 'tag') and the tasks created in each creation-time bucket of ten levels ('created.K',
-- value created_at_us / 2^(20 + 4K) in decimal): an exact `total` for a tag or a creation-time
-- range from a bounded number of rows (see src/store/counts.rs). Existing ledgers are
-- counted here once; the append transaction keeps the counts and replay rebuilds them.
INSERT INTO task_counts (account_id, dimension, value, n)
SELECT account_id, 'tag', tag, COUNT(*) FROM task_tags GROUP BY account_id, tag
UNION ALL SELECT account_id, 'created.0', CAST(created_at_us / 1048576 AS TEXT), COUNT(*)
    FROM tasks GROUP BY account_id, CAST(created_at_us / 1048576 AS TEXT)
UNION ALL SELECT account_id, 'created.1', CAST(created_at_us / 16777216 AS TEXT), COUNT(*)
    FROM tasks GROUP BY account_id, CAST(created_at_us / 16777216 AS TEXT)
UNION ALL SELECT account_id, 'created.2', CAST(created_at_us / 268435456 AS TEXT), COUNT(*)
    FROM tasks GROUP BY account_id, CAST(created_at_us / 268435456 AS TEXT)
UNION ALL SELECT account_id, 'created.3', CAST(created_at_us / 4294967296 AS TEXT), COUNT(*)
    FROM tasks GROUP BY account_id, CAST(created_at_us / 4294967296 AS TEXT)
UNION ALL SELECT account_id, 'created.4', CAST(created_at_us / 68719476736 AS TEXT), COUNT(*)
    FROM tasks GROUP BY account_id, CAST(created_at_us / 68719476736 AS TEXT)
UNION ALL SELECT account_id, 'created.5', CAST(created_at_us / 1099511627776 AS TEXT), COUNT(*)
    FROM tasks GROUP BY account_id, CAST(created_at_us / 1099511627776 AS TEXT)
UNION ALL SELECT account_id, 'created.6', CAST(created_at_us / 17592186044416 AS TEXT), COUNT(*)
    FROM tasks GROUP BY account_id, CAST(created_at_us / 17592186044416 AS TEXT)
UNION ALL SELECT account_id, 'created.7', CAST(created_at_us / 281474976710656 AS TEXT), COUNT(*)
    FROM tasks GROUP BY account_id, CAST(created_at_us / 281474976710656 AS TEXT)
UNION ALL SELECT account_id, 'created.8', CAST(created_at_us / 4503599627370496 AS TEXT), COUNT(*)
    FROM tasks GROUP BY account_id, CAST(created_at_us / 4503599627370496 AS TEXT)
UNION ALL SELECT account_id, 'created.9', CAST(created_at_us / 72057594037927936 AS TEXT), COUNT(*)
    FROM tasks GROUP BY account_id, CAST(created_at_us / 72057594037927936 AS TEXT);
