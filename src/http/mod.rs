//! The HTTP facade. Each resource has its own module and `router()`; errors share one body.

mod error;
mod events;
pub mod extract;
mod health;
mod idempotency;
mod list;
mod tasks;

pub use error::ApiError;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::Router;

use crate::ledger::Ledger;

/// Limits and lifetimes of the HTTP layer.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub max_body_bytes: usize,
    pub idempotency_ttl: Duration,
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub ledger: Ledger,
    pub settings: Arc<HttpSettings>,
}

pub fn router(state: AppState) -> Router {
    let commands = tasks::command_router().layer(middleware::from_fn_with_state(
        state.clone(),
        idempotency::layer,
    ));
    Router::new()
        .merge(health::router())
        .merge(commands)
        .merge(tasks::read_router())
        .merge(list::router())
        .merge(events::router())
        .fallback(error::not_found)
        .layer(DefaultBodyLimit::max(state.settings.max_body_bytes))
        .with_state(state)
}
