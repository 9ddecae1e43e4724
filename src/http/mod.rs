//! The HTTP facade. Each resource has its own module and `router()`; errors share one body.

mod error;
mod health;

pub use error::ApiError;

use axum::Router;

use crate::ledger::Ledger;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub ledger: Ledger,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(health::router())
        .fallback(error::not_found)
        .with_state(state)
}
