//! `GET /metrics` and the middleware that feeds its HTTP series.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use utoipa::OpenApi;

use super::{AppState, Routes};
use crate::metrics::{Metrics, UNMATCHED_ROUTE};

pub(super) fn router() -> Routes {
    Routes::new().route("/metrics", get(metrics))
}

#[derive(OpenApi)]
#[openapi(paths(metrics))]
pub(super) struct Docs;

/// Prometheus text exposition of this process's counters. Open like `/healthz`: scrapers
/// carry no API key, and nothing here is tenant data.
#[utoipa::path(
    get,
    path = "/metrics",
    responses((
        status = 200,
        description = "Prometheus text exposition format 0.0.4.",
        body = String,
        content_type = "text/plain; version=0.0.4; charset=utf-8"
    ))
)]
async fn metrics(State(state): State<AppState>) -> Response {
    let store = state.ledger.store();
    let up = matches!(
        tokio::time::timeout(STORE_PING_TIMEOUT, store.ping()).await,
        Ok(Ok(()))
    );
    let pool = store.pool();
    let (size, idle) = (i64::from(pool.size()), pool.num_idle() as i64);
    let max = i64::from(pool.options().get_max_connections());
    state.metrics.set_store(up, idle, size - idle, max);
    (
        [(CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        state.metrics.render(),
    )
        .into_response()
}

/// A scrape must answer even when the store does not: it then reports the store down.
const STORE_PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Counts and times every request under its route template. Installed with `Router::layer`,
/// so it runs after routing and sees [`MatchedPath`]; requests no route matched reach it
/// through the fallback without one and are labelled `unmatched`.
pub(super) async fn track(
    State(metrics): State<Metrics>,
    request: Request,
    next: Next,
) -> Response {
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| UNMATCHED_ROUTE.to_string(), |m| m.as_str().to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    metrics.observe_http(
        method,
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// Clients may send any method token; only the standard ones become label values.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}
