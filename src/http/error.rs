use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::domain::PlatformError;
use crate::domain::TaskError;
use crate::ledger::LedgerError;
use crate::store::{PlatformWriteError, StoreError};

/// Every error the API answers, rendered as the reference's `{"status_code", "error"}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

/// Field order as in the reference's examples.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub(super) struct ErrorBody {
    /// The HTTP status code again.
    #[schema(example = 404)]
    status_code: u16,
    /// A human-readable message naming the offending field, parameter or task.
    #[schema(example = "Task with that ID not found.")]
    error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            status_code: self.status.as_u16(),
            error: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::Rejected(TaskError::Invalid(m)) => ApiError::bad_request(m),
            LedgerError::Rejected(e @ TaskError::NotFound) => {
                ApiError::new(StatusCode::NOT_FOUND, e.to_string())
            }
            LedgerError::Rejected(TaskError::Forbidden(m)) => {
                ApiError::new(StatusCode::FORBIDDEN, m)
            }
            LedgerError::Rejected(e @ TaskError::AlreadyExists) => {
                ApiError::new(StatusCode::CONFLICT, e.to_string())
            }
            e @ LedgerError::UniqueIdTaken { .. } => {
                ApiError::new(StatusCode::CONFLICT, e.to_string())
            }
            e @ LedgerError::EventTooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
            }
            e @ LedgerError::IdempotencyClaimLost => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string())
            }
            e @ LedgerError::Contended => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            LedgerError::Unavailable(cause) => {
                tracing::error!(%cause, "store unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The service is temporarily unavailable.",
                )
            }
            LedgerError::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error.")
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        LedgerError::from(e).into()
    }
}

impl From<PlatformWriteError> for ApiError {
    fn from(e: PlatformWriteError) -> Self {
        match e {
            PlatformWriteError::Refused(PlatformError::Invalid(m)) => ApiError::bad_request(m),
            PlatformWriteError::Refused(PlatformError::NotFound(m)) => {
                ApiError::new(StatusCode::NOT_FOUND, m)
            }
            PlatformWriteError::Refused(PlatformError::AlreadyExists(m)) => {
                ApiError::new(StatusCode::CONFLICT, m)
            }
            PlatformWriteError::Refused(PlatformError::TooLarge(m)) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, m)
            }
            PlatformWriteError::Store(e) => e.into(),
        }
    }
}

pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "Not found.")
}
