//! The `Idempotency-Key` layer of the mutating routes.

use axum::body::{to_bytes, Body};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::contract::never_answers_409;
use super::extract::Caller;
use super::{ApiError, AppState};
use crate::store::{IdempotencyState, IdempotencyWrite};

/// How long a claim may go unanswered before another request may take it over.
const LEASE_US: i64 = 60_000_000;

pub async fn layer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match run(state, request, next).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn run(state: AppState, request: Request, next: Next) -> Result<Response, ApiError> {
    let Some(key) = request.headers().get("idempotency-key") else {
        return Ok(next.run(request).await);
    };
    let key = key
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .ok_or_else(|| {
            ApiError::bad_request("Idempotency-Key must be 1 to 255 visible ASCII characters")
        })?
        .to_string();
    let (mut parts, body) = request.into_parts();
    let caller = Caller::from_request_parts(&mut parts, &state).await?;
    let bytes = to_bytes(body, state.settings.max_body_bytes)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "The request body is too large.",
            )
        })?;
    let mut fingerprint = Vec::with_capacity(bytes.len() + 128);
    fingerprint.extend_from_slice(parts.method.as_str().as_bytes());
    fingerprint.push(b'\n');
    fingerprint.extend_from_slice(
        parts
            .uri
            .path_and_query()
            .map_or("", |p| p.as_str())
            .as_bytes(),
    );
    fingerprint.push(b'\n');
    fingerprint.extend_from_slice(&bytes);
    let fingerprint = crate::store::sha256_hex(&fingerprint);

    let store = state.ledger.store();
    let now = chrono::Utc::now().timestamp_micros();
    let expires_at_us = now + state.settings.idempotency_ttl.as_micros() as i64;
    match store
        .claim_idempotency_key(
            &key,
            caller.account_id(),
            &fingerprint,
            now,
            expires_at_us,
            LEASE_US,
        )
        .await?
    {
        IdempotencyState::Replay(record) => {
            let status = StatusCode::from_u16(record.status_code).unwrap_or(StatusCode::OK);
            return Ok((
                status,
                [
                    (CONTENT_TYPE, "application/json"),
                    (HeaderName::from_static("idempotent-replayed"), "true"),
                ],
                record.body,
            )
                .into_response());
        }
        IdempotencyState::InFlight => {
            let mut response = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "A request with this Idempotency-Key is still being processed; retry shortly.",
            )
            .into_response();
            response
                .headers_mut()
                .insert(RETRY_AFTER, "1".parse().expect("a valid header"));
            return Ok(response);
        }
        IdempotencyState::Mismatch => {
            // The contract promises these endpoints never answer 409 (the reference SDK
            // cannot parse a 409 there), so the same refusal is a 400 on them.
            let never_409 = never_answers_409(parts.method.as_str(), parts.uri.path());
            return Err(ApiError::new(
                if never_409 {
                    StatusCode::BAD_REQUEST
                } else {
                    StatusCode::CONFLICT
                },
                format!(
                    "The Idempotency-Key {key:?} was already used for a different request; \
                     use a new key for a new request."
                ),
            ));
        }
        IdempotencyState::Claimed => {}
    }
    parts.extensions.insert(IdempotencyWrite {
        key: key.clone(),
        fingerprint,
        expires_at_us,
    });
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let status = response.status();
    if status.is_server_error() {
        // Our failure, not the request's: let a retry run it again.
        store.release_idempotency_key(&key).await?;
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    let body = to_bytes(body, usize::MAX).await.map_err(|e| {
        // Our own response failed to buffer; the cause is for the log, not the client.
        tracing::error!(error = %e, "reading the response to record it failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error.")
    })?;
    // Success answers were stored by the command's transaction; this records the rest.
    store
        .finish_idempotency_key(&key, status.as_u16(), &String::from_utf8_lossy(&body))
        .await?;
    Ok(Response::from_parts(parts, Body::from(body)))
}
