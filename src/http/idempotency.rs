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
use crate::store::{Claimant, IdempotencyState, IdempotencyWrite};

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
        .map_err(|e| body_refusal(&e, state.settings.max_body_bytes))?;
    let target = parts
        .uri
        .path_and_query()
        .map_or("", |p| p.as_str())
        .to_string();
    let fingerprint = {
        let inline = bytes.len() <= super::extract::INLINE_PARSE_BYTES;
        let (method, body) = (parts.method.clone(), bytes.clone());
        let hash = move || request_fingerprint(method.as_str(), &target, &body);
        // Hashing megabytes is CPU work: keep it off the async workers, like body parsing.
        if inline {
            hash()
        } else {
            tokio::task::spawn_blocking(hash).await.map_err(|e| {
                tracing::error!(error = %e, "fingerprint task failed");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error.")
            })?
        }
    };

    let store = state.ledger.store();
    let now = crate::store::now_micros();
    let expires_at_us = now + state.settings.idempotency_ttl.as_micros() as i64;
    let account_id = caller.account_id().to_string();
    let claimant = Claimant {
        account_id: &account_id,
        key_id: &caller.principal.key_id,
    };
    let token = match store
        .claim_idempotency_key(&key, claimant, &fingerprint, now, expires_at_us, LEASE_US)
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
            return Err(ApiError::new(
                refusal_status(&parts),
                format!(
                    "The Idempotency-Key {key:?} was already used for a different request; \
                     use a new key for a new request."
                ),
            ));
        }
        IdempotencyState::OtherApiKey => {
            return Err(ApiError::new(
                refusal_status(&parts),
                format!(
                    "The Idempotency-Key {key:?} was already used by another API key of this \
                     account; use a new key for a new request."
                ),
            ));
        }
        IdempotencyState::Claimed(token) => token,
    };
    let mut claim = ReleaseOnDrop {
        store: store.clone(),
        account_id: account_id.clone(),
        key: key.clone(),
        token: Some(token.clone()),
    };
    parts.extensions.insert(IdempotencyWrite {
        key: key.clone(),
        claim_token: token.clone(),
    });
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let status = response.status();
    if status.is_server_error() {
        // Our failure, not the request's: let a retry run it again. The release leaves an
        // answer the command's transaction recorded (its COMMIT may have gone through with
        // the reply lost), so that retry replays it instead of running the command twice.
        store
            .release_idempotency_key(&account_id, &key, &token)
            .await?;
        claim.disarm();
        return Ok(response);
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        // "Still being processed" (this claim was taken over meanwhile): not an answer.
        let mut response = response;
        response
            .headers_mut()
            .entry(RETRY_AFTER)
            .or_insert_with(|| "1".parse().expect("a valid header"));
        claim.disarm();
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    let body = match to_bytes(body, usize::MAX).await {
        Ok(body) => body,
        Err(e) => {
            tracing::error!(error = %e, "reading an answer to record it failed");
            store
                .release_idempotency_key(&account_id, &key, &token)
                .await?;
            claim.disarm();
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal server error.",
            ));
        }
    };
    // Success answers were stored by the command's transaction; this records the rest.
    store
        .finish_idempotency_key(
            &account_id,
            &key,
            &token,
            status.as_u16(),
            &String::from_utf8_lossy(&body),
        )
        .await?;
    claim.disarm();
    Ok(Response::from_parts(parts, Body::from(body)))
}

/// Releases the claim when the request is dropped before it answers: the request deadline
/// fired, or the client went away. Without it a retry with the same key (which the 503 of the
/// deadline tells the client to send) would hear "still being processed" until the lease ran
/// out. Safe against the command still being in flight: its transaction records its answer
/// only while this claim holds, so once released it cannot commit; if it committed first,
/// the release leaves its answer for the retry to replay.
struct ReleaseOnDrop {
    store: crate::store::Store,
    account_id: String,
    key: String,
    token: Option<crate::store::ClaimToken>,
}

impl ReleaseOnDrop {
    /// The request answered; whatever it had to record is recorded.
    fn disarm(&mut self) {
        self.token = None;
    }
}

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        let Some(token) = self.token.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (store, account_id, key) = (
            self.store.clone(),
            std::mem::take(&mut self.account_id),
            std::mem::take(&mut self.key),
        );
        runtime.spawn(async move {
            if let Err(e) = store
                .release_idempotency_key(&account_id, &key, &token)
                .await
            {
                // The lease still runs out: the key is usable again after it.
                tracing::warn!(error = %e, "releasing the Idempotency-Key of a dropped request failed");
            }
        });
    }
}

/// The status of a refused key: 409, except on the endpoints the contract promises never
/// answer 409 (the reference SDK cannot parse one there), where it is 400.
fn refusal_status(parts: &axum::http::request::Parts) -> StatusCode {
    // The contract promises these endpoints never answer 409 (the reference SDK cannot parse
    // a 409 there), so the same refusal is a 400 on them.
    if never_answers_409(parts.method.as_str(), parts.uri.path()) {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::CONFLICT
    }
}

/// Why a request body could not be read: too large, or too slow (or cut off).
fn body_refusal(error: &axum::Error, limit: usize) -> ApiError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, super::body_too_large(limit));
        }
        if e.is::<tower_http::timeout::TimeoutError>() {
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "The request body was not received in time.",
            );
        }
        source = e.source();
    }
    ApiError::bad_request("The request body could not be read.")
}

/// What makes two requests "the same request" for an Idempotency-Key: method, path and
/// query, and body.
fn request_fingerprint(method: &str, target: &str, body: &[u8]) -> String {
    let mut input = Vec::with_capacity(body.len() + target.len() + 16);
    input.extend_from_slice(method.as_bytes());
    input.push(b'\n');
    input.extend_from_slice(target.as_bytes());
    input.push(b'\n');
    input.extend_from_slice(body);
    crate::store::sha256_hex(&input)
}
