//! Integration tests: the real HTTP server, real PostgreSQL, real SQLite files.
//! PostgreSQL must be running (`TASKLEDGER_TEST_PG_URL`, default
//! postgres://postgres@127.0.0.1:5432); a test that cannot reach it fails.

mod callbacks;
mod cli;
mod concurrency;
mod health;
mod helpers;
mod idempotency_api;
mod kafka;
mod list_api;
mod scale;
mod sdk;
mod store;
mod store_integrity;
mod tasks_api;
