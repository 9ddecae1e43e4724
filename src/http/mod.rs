//! The HTTP facade. Each resource has its own module and `router()`; errors share one body.
//!
//! Every request gets an `x-request-id` (the client's, if usable, else a UUID v7) before any
//! handler or the idempotency layer reads it, a tracing span, and a place in the metrics.

mod audit;
mod batches;
mod console;
mod contract;
mod error;
mod events;
pub mod extract;
mod health;
mod idempotency;
mod keys;
mod list;
mod metrics;
pub mod openapi;
mod projects;
pub mod rate_limit;
mod request_id;
mod schemas;
mod task_bodies;
mod tasks;

pub use error::ApiError;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::{MethodRouter, Route};
use axum::Router;
use tower::{Layer, Service, ServiceBuilder};
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnRequest, DefaultOnResponse, TraceLayer};
use tower_http::LatencyUnit;
use tracing::Level;

use crate::ledger::Ledger;
use crate::metrics::{Metrics, UNMATCHED_ROUTE};
use crate::store::KeyCache;

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
    /// The registry `/metrics` exposes; the ledger's, so command counts show up in it.
    pub metrics: Metrics,
    /// The ledger's signing key file (digests); `None` answers 503 on the digest routes.
    pub signing_key_file: Option<Arc<std::path::PathBuf>>,
    /// Authentication from memory while no key changed (see [`KeyCache`]).
    pub keys: Arc<KeyCache>,
    /// Every key's token bucket; `None` when rate limiting is off.
    pub rate_limiter: Option<Arc<rate_limit::RateLimiter>>,
}

impl AppState {
    pub fn new(ledger: Ledger, settings: HttpSettings) -> AppState {
        AppState {
            metrics: ledger.metrics().clone(),
            keys: Arc::new(KeyCache::new(ledger.store().clone())),
            ledger,
            settings: Arc::new(settings),
            signing_key_file: None,
            rate_limiter: None,
        }
    }

    /// Limits each API key to `limit` (none when `None`), on the process's monotonic clock.
    pub fn with_rate_limit(mut self, limit: Option<rate_limit::RateLimit>) -> AppState {
        self.rate_limiter = limit.map(|limit| {
            Arc::new(rate_limit::RateLimiter::new(
                limit,
                Arc::new(rate_limit::MonotonicClock::default()),
            ))
        });
        self
    }

    /// Signs digests with the keys in this file.
    pub fn with_signing_key_file(mut self, path: std::path::PathBuf) -> AppState {
        self.signing_key_file = Some(Arc::new(path));
        self
    }
}

/// A router that remembers the path templates it was given: axum cannot list its routes,
/// and the OpenAPI test needs them to prove every served route is documented.
pub(crate) struct Routes {
    router: Router<AppState>,
    paths: Vec<&'static str>,
}

impl Routes {
    pub(crate) fn new() -> Routes {
        Routes {
            router: Router::new(),
            paths: Vec::new(),
        }
    }

    pub(crate) fn route(
        mut self,
        path: &'static str,
        method_router: MethodRouter<AppState>,
    ) -> Routes {
        self.router = self.router.route(path, method_router);
        self.paths.push(path);
        self
    }

    pub(crate) fn merge(mut self, other: Routes) -> Routes {
        self.router = self.router.merge(other.router);
        self.paths.extend(other.paths);
        self
    }

    /// [`Router::layer`], with its bounds.
    pub(crate) fn layer<L>(mut self, layer: L) -> Routes
    where
        L: Layer<Route> + Clone + Send + Sync + 'static,
        L::Service: Service<Request> + Clone + Send + Sync + 'static,
        <L::Service as Service<Request>>::Response: IntoResponse + 'static,
        <L::Service as Service<Request>>::Error: Into<Infallible> + 'static,
        <L::Service as Service<Request>>::Future: Send + 'static,
    {
        self.router = self.router.layer(layer);
        self
    }

    /// Every path template served, each once, sorted.
    #[cfg(test)]
    pub(crate) fn paths(&self) -> Vec<&'static str> {
        let mut paths = self.paths.clone();
        paths.sort_unstable();
        paths.dedup();
        paths
    }
}

/// Every route of the API, before the layers all of them share.
pub(crate) fn routes(state: &AppState) -> Routes {
    let commands = tasks::command_router().layer(middleware::from_fn_with_state(
        state.clone(),
        idempotency::layer,
    ));
    Routes::new()
        .merge(health::router())
        .merge(metrics::router())
        .merge(openapi::router())
        .merge(commands)
        .merge(tasks::read_router())
        .merge(list::router())
        .merge(events::router())
        .merge(audit::router())
        .merge(keys::router())
        .merge(projects::router())
        .merge(batches::router())
        .merge(schemas::router())
}

pub fn router(state: AppState) -> Router {
    router_with_timeout(state, None)
}

/// [`router`], answering 503 when a request takes longer than `request_timeout`.
pub fn router_with_timeout(state: AppState, request_timeout: Option<Duration>) -> Router {
    // `Router::layer` wraps each route (and the fallback) after routing, which is what lets
    // the span and the metrics see the matched path template. Outermost first: the id must
    // exist before the span records it and before `Caller` copies it into the events.
    let observe = ServiceBuilder::new()
        .layer(middleware::map_request(request_id::sanitize))
        .layer(SetRequestIdLayer::new(
            request_id::X_REQUEST_ID,
            request_id::MakeRequestUuidV7,
        ))
        .layer(PropagateRequestIdLayer::new(request_id::X_REQUEST_ID))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_request(DefaultOnRequest::new().level(Level::DEBUG))
                .on_response(
                    DefaultOnResponse::new()
                        .level(Level::INFO)
                        .latency_unit(LatencyUnit::Millis),
                ),
        )
        .layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::track,
        ))
        .layer(middleware::from_fn_with_state(
            RequestTimeout(request_timeout),
            enforce_request_timeout,
        ))
        .layer(middleware::from_fn_with_state(
            state.settings.max_body_bytes,
            refuse_declared_oversize,
        ));
    routes(&state)
        .router
        .merge(console::router())
        .fallback(error::not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            rate_limit::layer,
        ))
        .layer(DefaultBodyLimit::max(state.settings.max_body_bytes))
        .layer(observe)
        .with_state(state)
}

fn request_span(request: &Request) -> tracing::Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED_ROUTE, MatchedPath::as_str);
    let request_id = request
        .headers()
        .get(request_id::X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!(
        "request",
        method = %request.method(),
        route,
        path = request.uri().path(),
        request_id,
    )
}

#[derive(Clone, Copy)]
struct RequestTimeout(Option<Duration>);

/// Inside the metrics and the span, so a request cut off here is counted and logged.
async fn enforce_request_timeout(
    axum::extract::State(RequestTimeout(limit)): axum::extract::State<RequestTimeout>,
    request: Request,
    next: middleware::Next,
) -> axum::response::Response {
    let Some(limit) = limit else {
        return next.run(request).await;
    };
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(limit_secs = limit.as_secs(), "request timed out");
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "The request did not complete within {} s; retry it (with the same \
                     Idempotency-Key, if it changes anything).",
                    limit.as_secs()
                ),
            )
            .into_response()
        }
    }
}

/// A body whose declared length is over the limit is refused before a byte of it is read:
/// reading megabytes only to refuse them would cost every other request some CPU.
async fn refuse_declared_oversize(
    axum::extract::State(limit): axum::extract::State<usize>,
    request: Request,
    next: middleware::Next,
) -> axum::response::Response {
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            body_too_large(limit),
        )
        .into_response();
    }
    next.run(request).await
}

/// The one wording of the body-size refusal.
pub(crate) fn body_too_large(limit: usize) -> String {
    format!(
        "The request body is too large: the limit is {limit} bytes (TASKLEDGER_MAX_BODY_BYTES)."
    )
}
