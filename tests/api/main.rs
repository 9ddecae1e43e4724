//! Integration tests: the real HTTP server, real PostgreSQL, real SQLite files.
//! PostgreSQL must be running (`TASKLEDGER_TEST_PG_URL`, default
//! postgres://postgres@127.0.0.1:5432); a test that cannot reach it fails.

mod append_paths;
mod audit;
mod auth_cache;
mod batches;
mod bench_scale;
mod callback_isolation;
mod callbacks;
mod cli;
mod concurrency;
mod console;
mod delivery_queue;
mod deploy;
mod health;
mod helpers;
mod hostile_input;
mod idempotency_api;
mod idempotency_fencing;
mod kafka;
mod list_api;
mod long_tasks;
mod projects;
mod rate_limits;
mod relay_halts;
mod scale;
mod sdk;
mod server_limits;
mod soak;
mod store;
mod store_integrity;
mod stream;
mod tasks_api;
mod test_mode;
