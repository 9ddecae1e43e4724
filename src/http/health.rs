//! Liveness and readiness.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Json;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use super::{ApiError, AppState, Routes};

/// The answer of the probes.
#[derive(Serialize, ToSchema)]
pub(super) struct ProbeStatus {
    #[schema(example = "ok")]
    status: &'static str,
}

pub(super) fn router() -> Routes {
    Routes::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

#[derive(OpenApi)]
#[openapi(paths(healthz, readyz))]
pub(super) struct Docs;

/// The process is up and serving.
#[utoipa::path(
    get,
    path = "/healthz",
    responses((status = 200, description = "Always `{\"status\": \"ok\"}`.", body = ProbeStatus))
)]
async fn healthz() -> Json<ProbeStatus> {
    Json(ProbeStatus { status: "ok" })
}

/// The process can reach its store.
#[utoipa::path(
    get,
    path = "/readyz",
    responses((status = 200, description = "`{\"status\": \"ready\"}`: the store answered.", body = ProbeStatus))
)]
async fn readyz(State(state): State<AppState>) -> Result<Json<ProbeStatus>, ApiError> {
    state.ledger.store().ping().await.map_err(|e| {
        tracing::warn!(error = %e, "readiness check failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "The ledger store is unreachable.",
        )
    })?;
    Ok(Json(ProbeStatus { status: "ready" }))
}
