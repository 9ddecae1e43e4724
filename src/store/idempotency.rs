//! Idempotency-Key records: claimed before a request runs, answered in the command's own
//! transaction on success (see `AppendTx`), replayed to repeats until they expire.
//!
//! A key belongs to an account (the same text from two accounts is two keys) and to the API
//! key that claimed it. Every claim carries a fresh token; a claim taken over after its holder
//! went quiet gets a new one, and each write of the answer (in the command's transaction, or
//! afterwards for refusals) and each release names the token it holds. A holder that was
//! taken over can therefore neither record an answer nor delete the new holder's claim, and
//! a release never deletes an answer, so a command whose COMMIT reply was lost is found by
//! its retry instead of being run twice.

use sqlx::AnyConnection;

use super::{IdempotencyWrite, Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub status_code: u16,
    pub body: String,
}

/// The holder of a claim: whatever it writes about the key names this token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToken(pub String);

impl ClaimToken {
    fn generate() -> ClaimToken {
        ClaimToken(uuid::Uuid::new_v4().to_string())
    }
}

/// Who claims a key: the account it belongs to and the API key that sent it.
#[derive(Debug, Clone, Copy)]
pub struct Claimant<'a> {
    pub account_id: &'a str,
    pub key_id: &'a str,
}

/// What a request carrying a key must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyState {
    /// The key is ours: run the request and record its answer under this token.
    Claimed(ClaimToken),
    /// The same request was answered before: send this again.
    Replay(IdempotencyRecord),
    /// The same request is running right now.
    InFlight,
    /// The key was used with another request.
    Mismatch,
    /// Another API key of the account used the key (the reference's "different user").
    OtherApiKey,
}

impl Store {
    /// Claims `key` for a request with `fingerprint`. A claim that has had no answer for
    /// `lease_us` (its server died, or it is very slow) is taken over under a new token.
    pub async fn claim_idempotency_key(
        &self,
        key: &str,
        claimant: Claimant<'_>,
        fingerprint: &str,
        now_us: i64,
        expires_at_us: i64,
        lease_us: i64,
    ) -> Result<IdempotencyState, StoreError> {
        for _ in 0..4 {
            let token = ClaimToken::generate();
            let inserted = sqlx::query(
                "INSERT INTO idempotency_keys (account_id, idem_key, key_id, claim_token, \
                 fingerprint, created_at_us, expires_at_us) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (account_id, idem_key) DO NOTHING",
            )
            .bind(claimant.account_id)
            .bind(key)
            .bind(claimant.key_id)
            .bind(&token.0)
            .bind(fingerprint)
            .bind(now_us)
            .bind(expires_at_us)
            .execute(&self.pool)
            .await?;
            if inserted.rows_affected() == 1 {
                return Ok(IdempotencyState::Claimed(token));
            }
            let Some(row) = sqlx::query_as::<_, KeyRow>(
                "SELECT key_id, fingerprint, status_code, response_body, created_at_us, \
                 expires_at_us FROM idempotency_keys WHERE account_id = $1 AND idem_key = $2",
            )
            .bind(claimant.account_id)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?
            else {
                continue;
            };
            if row.expires_at_us <= now_us {
                sqlx::query(
                    "DELETE FROM idempotency_keys \
                     WHERE account_id = $1 AND idem_key = $2 AND expires_at_us <= $3",
                )
                .bind(claimant.account_id)
                .bind(key)
                .bind(now_us)
                .execute(&self.pool)
                .await?;
                continue;
            }
            // Records written before keys were tied to an API key have none to compare.
            if row.key_id.is_some_and(|holder| holder != claimant.key_id) {
                return Ok(IdempotencyState::OtherApiKey);
            }
            if row.fingerprint != fingerprint {
                return Ok(IdempotencyState::Mismatch);
            }
            if let Some(status) = row.status_code {
                return Ok(IdempotencyState::Replay(IdempotencyRecord {
                    status_code: u16::try_from(status).unwrap_or(500),
                    body: row.response_body.unwrap_or_default(),
                }));
            }
            let claimed_at = row.created_at_us;
            if claimed_at + lease_us <= now_us {
                let taken = sqlx::query(
                    "UPDATE idempotency_keys SET created_at_us = $3, claim_token = $4 \
                     WHERE account_id = $1 AND idem_key = $2 AND status_code IS NULL \
                     AND created_at_us = $5",
                )
                .bind(claimant.account_id)
                .bind(key)
                .bind(now_us)
                .bind(&token.0)
                .bind(claimed_at)
                .execute(&self.pool)
                .await?;
                if taken.rows_affected() == 1 {
                    return Ok(IdempotencyState::Claimed(token));
                }
                continue;
            }
            return Ok(IdempotencyState::InFlight);
        }
        Ok(IdempotencyState::InFlight)
    }

    /// Records the answer of a claim, unless the command's transaction already did or the
    /// claim was taken over; `false` then.
    pub async fn finish_idempotency_key(
        &self,
        account_id: &str,
        key: &str,
        token: &ClaimToken,
        status_code: u16,
        body: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE idempotency_keys SET status_code = $4, response_body = $5 \
             WHERE account_id = $1 AND idem_key = $2 AND claim_token = $3 \
             AND status_code IS NULL",
        )
        .bind(account_id)
        .bind(key)
        .bind(&token.0)
        .bind(i64::from(status_code))
        .bind(body)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives a claim up (the request failed on our side), so a retry runs it again. An
    /// answer the command's transaction recorded stays (its COMMIT may have succeeded with
    /// the reply lost), and so does a claim taken over meanwhile.
    pub async fn release_idempotency_key(
        &self,
        account_id: &str,
        key: &str,
        token: &ClaimToken,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "DELETE FROM idempotency_keys WHERE account_id = $1 AND idem_key = $2 \
             AND claim_token = $3 AND status_code IS NULL",
        )
        .bind(account_id)
        .bind(key)
        .bind(&token.0)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Deletes expired records; returns how many.
    pub async fn purge_idempotency_keys(&self, now_us: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM idempotency_keys WHERE expires_at_us <= $1")
            .bind(now_us)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

/// Records a command's answer in the command's own transaction, if `idem` still holds the
/// current claim; `false` when it does not (taken over, or already answered), and the
/// command must then not commit.
pub(super) async fn record_answer(
    conn: &mut AnyConnection,
    idem: &IdempotencyWrite,
    account_id: &str,
    body: &str,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE idempotency_keys SET status_code = 200, response_body = $4 \
         WHERE account_id = $1 AND idem_key = $2 AND claim_token = $3 AND status_code IS NULL",
    )
    .bind(account_id)
    .bind(&idem.key)
    .bind(&idem.claim_token.0)
    .bind(body)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A stored key as the claim reads it.
#[derive(sqlx::FromRow)]
struct KeyRow {
    /// Absent on records written before keys were tied to an API key.
    key_id: Option<String>,
    fingerprint: String,
    status_code: Option<i64>,
    response_body: Option<String>,
    created_at_us: i64,
    expires_at_us: i64,
}
