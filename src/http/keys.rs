//! `GET /v1/keys`: the caller's account's API keys and the people holding them.

use axum::http::StatusCode;
use axum::routing::get;
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use taskledger_events::Scope;
use utoipa::{OpenApi, ToSchema};

use super::extract::AccountRead;
use super::{ApiError, Routes};

pub(super) fn router() -> Routes {
    Routes::new().route("/v1/keys", get(list_keys))
}

#[derive(OpenApi)]
#[openapi(
    paths(list_keys),
    tags((name = "keys", description = "Who holds the account's API keys."))
)]
pub(super) struct Docs;

#[derive(Serialize, ToSchema)]
pub struct KeyOut {
    key_id: String,
    /// Who holds the key (`taskledger keys create --name`); null if not named.
    name: Option<String>,
    /// `customer` or `contributor`.
    scope: String,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    revoked_at: Option<String>,
    /// A test-mode key (`keys create --test`): it sees and makes test data only.
    is_test: bool,
}

#[derive(Serialize, ToSchema)]
pub struct KeysOut {
    keys: Vec<KeyOut>,
}

fn time(us: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(us)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The account's keys, oldest first: never a secret, never another account's.
#[utoipa::path(
    get,
    path = "/v1/keys",
    tag = "keys",
    description = "The caller's account's API keys with the names of the people holding \
                   them, revoked ones included (oldest first). Customer keys only. Each \
                   key's creation and revocation are also events of the account \
                   (`ApiKeyCreated`, `ApiKeyRevoked`) in `GET /v1/events`.",
    responses(
        (status = 200, description = "The account's keys.", body = KeysOut),
        (status = 403, description = "Not a customer key.", body = super::error::ErrorBody)
    )
)]
async fn list_keys(AccountRead { state, caller }: AccountRead) -> Result<Json<KeysOut>, ApiError> {
    if caller.principal.scope != Scope::Customer {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Only a customer key may list the account's keys.",
        ));
    }
    let keys = state
        .ledger
        .store()
        .account_keys(caller.account_id())
        .await?
        .into_iter()
        .map(|k| KeyOut {
            key_id: k.key_id,
            name: k.name,
            scope: k.scope,
            created_at: time(k.created_at_us),
            revoked_at: k.revoked_at_us.map(time),
            is_test: k.is_test != 0,
        })
        .collect();
    Ok(Json(KeysOut { keys }))
}
