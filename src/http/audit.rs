//! `/v1/ledger/...`: the account's signed digest, the ledger's public keys, and inclusion and
//! consistency proofs over the account's Merkle tree (RFC 6962 / RFC 9162).

use axum::http::StatusCode;
use axum::routing::get;
use axum::Json;
use serde::{Deserialize, Serialize};
use taskledger_events::SignedDigest;
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

use super::extract::{AccountRead, QueryParams};
use super::{ApiError, AppState, Routes};
use crate::audit::signing::{PublicKey, SigningKeys};
use crate::audit::tree::Plan;

pub(super) fn router() -> Routes {
    Routes::new()
        .route("/v1/ledger/digest", get(ledger_digest))
        .route("/v1/ledger/public-keys", get(ledger_public_keys))
        .route("/v1/ledger/proof/inclusion", get(inclusion_proof))
        .route("/v1/ledger/proof/consistency", get(consistency_proof))
}

#[derive(OpenApi)]
#[openapi(
    paths(ledger_digest, ledger_public_keys, inclusion_proof, consistency_proof),
    tags((name = "ledger", description = "Signed digests of the account's Merkle tree and \
          proofs against them: see the README's Auditing section."))
)]
pub(super) struct Docs;

/// The signing keys, read from their file each time (a rotation needs no restart).
fn signing_keys(state: &AppState) -> Result<SigningKeys, ApiError> {
    let Some(path) = state.signing_key_file.as_deref() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "This server has no signing key configured.",
        ));
    };
    SigningKeys::load(path).map_err(|e| {
        tracing::error!(error = %e, "the signing key cannot be read");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "The ledger's signing key cannot be read; the operator must restore it.",
        )
    })
}

/// The account's tree as it is now, signed with the ledger's current Ed25519 key.
#[utoipa::path(
    get,
    path = "/v1/ledger/digest",
    tag = "ledger",
    description = "A signed statement of the account's Merkle tree: its size (the account's \
                   events in global order, as `GET /v1/events` serves them), its RFC 6962 \
                   root, and when it was signed. `signature` is Ed25519 over the UTF-8 bytes \
                   of `signed_message`; check it with the key `key_id` from \
                   `GET /v1/ledger/public-keys`.",
    responses((status = 200, description = "The signed digest.", body = SignedDigest))
)]
async fn ledger_digest(
    AccountRead { state, caller }: AccountRead,
) -> Result<Json<SignedDigest>, ApiError> {
    let keys = signing_keys(&state)?;
    let digest = crate::audit::sign_digest(state.ledger.store(), &keys, &caller.ledger()).await?;
    Ok(Json(digest))
}

#[derive(Serialize, ToSchema)]
pub struct PublicKeysOut {
    keys: Vec<PublicKey>,
}

/// Every key the ledger signs or signed digests with.
#[utoipa::path(
    get,
    path = "/v1/ledger/public-keys",
    tag = "ledger",
    description = "The ledger's Ed25519 public keys, the current one (`retired_at` null) and \
                   every retired one, so that old digests keep verifying.",
    responses((status = 200, description = "The public keys, oldest first.", body = PublicKeysOut))
)]
async fn ledger_public_keys(
    AccountRead { state, .. }: AccountRead,
) -> Result<Json<PublicKeysOut>, ApiError> {
    Ok(Json(PublicKeysOut {
        keys: signing_keys(&state)?.public_keys(),
    }))
}

/// A tree size in a query: an integer >= 0.
#[derive(Debug, Clone, Copy)]
struct Size(u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse::<u64>()
            .ok()
            .filter(|n| *n <= i64::MAX as u64)
            .map(Size)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "must be a tree size (an integer >= 0); got {:?}",
                    s.chars().take(64).collect::<String>()
                ))
            })
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct InclusionParams {
    /// The event to prove.
    #[param(value_type = String, format = "uuid")]
    event_id: Uuid,
    /// The tree to prove it in; default: the current tree.
    #[param(value_type = Option<i64>, minimum = 1)]
    #[serde(default)]
    tree_size: Option<Size>,
}

#[derive(Serialize, ToSchema)]
pub struct InclusionProofOut {
    /// The event's leaf: its 0-based place among the account's events in global order.
    leaf_index: u64,
    tree_size: u64,
    /// Hex hashes, leaf to root, for RFC 9162 section 2.1.3.2.
    audit_path: Vec<String>,
}

fn current_size_check(size: u64, current: u64, what: &str) -> Result<(), ApiError> {
    if size > current {
        return Err(ApiError::bad_request(format!(
            "{what} ({size}) is larger than the account's tree ({current} events)."
        )));
    }
    Ok(())
}

/// The proof that an event is in the account's tree of a given size.
#[utoipa::path(
    get,
    path = "/v1/ledger/proof/inclusion",
    tag = "ledger",
    description = "The audit path of the event's leaf (`SHA-256(0x00 || event hash bytes)`) in \
                   the account's tree of `tree_size` leaves, which verifies against that \
                   tree's root with the algorithm of RFC 9162 section 2.1.3.2.",
    params(InclusionParams),
    responses(
        (status = 200, description = "The inclusion proof.", body = InclusionProofOut),
        (status = 404, description = "No such event in the account.", body = super::error::ErrorBody)
    )
)]
async fn inclusion_proof(
    AccountRead { state, caller }: AccountRead,
    QueryParams(query): QueryParams<InclusionParams>,
) -> Result<Json<InclusionProofOut>, ApiError> {
    let store = state.ledger.store();
    let ledger = caller.ledger();
    let account = ledger.as_str();
    let Some((leaf_index, _)) = store
        .leaf_of_event(account, &query.event_id.to_string())
        .await?
    else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "No event with that event_id in this account's tree.",
        ));
    };
    let current = store.tree_head(account).await?.tree_size;
    let tree_size = query.tree_size.map_or(current, |Size(n)| n);
    current_size_check(tree_size, current, "tree_size")?;
    let plan = Plan::inclusion(leaf_index, tree_size).map_err(|_| {
        ApiError::bad_request(format!(
            "tree_size ({tree_size}) must be larger than the event's leaf_index ({leaf_index})."
        ))
    })?;
    let path = store.tree_answer(account, &plan).await?;
    Ok(Json(InclusionProofOut {
        leaf_index,
        tree_size,
        audit_path: path.iter().map(hex::encode).collect(),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ConsistencyParams {
    /// The older tree's size (a digest's `tree_size`).
    #[param(value_type = i64, minimum = 0)]
    from: Size,
    /// The newer tree's size; at most the current one.
    #[param(value_type = i64, minimum = 0)]
    to: Size,
}

#[derive(Serialize, ToSchema)]
pub struct ConsistencyProofOut {
    from: u64,
    to: u64,
    /// Hex hashes for RFC 9162 section 2.1.4.2.
    proof: Vec<String>,
}

/// The proof that the account's tree of `from` leaves is a prefix of its tree of `to` leaves.
#[utoipa::path(
    get,
    path = "/v1/ledger/proof/consistency",
    tag = "ledger",
    description = "The consistency proof between the account's trees of `from` and `to` \
                   leaves: with both roots it verifies, by RFC 9162 section 2.1.4.2, that the \
                   ledger only appended to the account's events in between.",
    params(ConsistencyParams),
    responses((status = 200, description = "The consistency proof.", body = ConsistencyProofOut))
)]
async fn consistency_proof(
    AccountRead { state, caller }: AccountRead,
    QueryParams(query): QueryParams<ConsistencyParams>,
) -> Result<Json<ConsistencyProofOut>, ApiError> {
    let store = state.ledger.store();
    let ledger = caller.ledger();
    let account = ledger.as_str();
    let (Size(from), Size(to)) = (query.from, query.to);
    let current = store.tree_head(account).await?.tree_size;
    current_size_check(to, current, "to")?;
    let plan = Plan::consistency(from, to).map_err(|_| {
        ApiError::bad_request(format!("from ({from}) must not be larger than to ({to})."))
    })?;
    let proof = store.tree_answer(account, &plan).await?;
    Ok(Json(ConsistencyProofOut {
        from,
        to,
        proof: proof.iter().map(hex::encode).collect(),
    }))
}
