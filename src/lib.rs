//! taskledger: an event-sourced ledger of data-labeling tasks.
//!
//! `domain` decides (the cqrs-es aggregate), `store` records (PostgreSQL or SQLite),
//! `ledger` ties the two together with group commit, `http` serves, `cli` operates.

pub mod audit;
pub mod bench;
pub mod callbacks;
pub mod cli;
pub mod cloudevents;
pub mod config;
pub mod consume;
pub mod domain;
pub mod follower;
pub mod http;
pub mod kafka;
pub mod ledger;
pub mod metrics;
pub mod relay;
pub mod scale_bench;
pub mod soak;
pub mod startup;
pub mod store;
pub mod task_state;
pub mod telemetry;
