-- PostgreSQL's 0051 adds the function a lone command's single statement refuses itself with.
-- SQLite writes every command in a transaction and needs nothing: the numbering stays the same
-- on both backends.
SELECT 1;
