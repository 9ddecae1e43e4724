//! Idempotency-Key records: claimed before a request runs, answered in the command's own
//! transaction on success (see `AppendTx`), replayed to repeats until they expire.

use sqlx::Row;

use super::{Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub status_code: u16,
    pub body: String,
}

/// What a request carrying a key must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyState {
    /// The key is ours: run the request and record its answer.
    Claimed,
    /// The same request was answered before: send this again.
    Replay(IdempotencyRecord),
    /// The same request is running right now.
    InFlight,
    /// The key was used with another request or by another account.
    Mismatch,
}

impl Store {
    /// Claims `key` for a request of `account_id` with `fingerprint`. A claim that has had no
    /// answer for `lease_us` (its server died) is taken over.
    pub async fn claim_idempotency_key(
        &self,
        key: &str,
        account_id: &str,
        fingerprint: &str,
        now_us: i64,
        expires_at_us: i64,
        lease_us: i64,
    ) -> Result<IdempotencyState, StoreError> {
        for _ in 0..4 {
            let inserted = sqlx::query(
                "INSERT INTO idempotency_keys (idem_key, account_id, fingerprint, created_at_us, expires_at_us) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (idem_key) DO NOTHING",
            )
            .bind(key)
            .bind(account_id)
            .bind(fingerprint)
            .bind(now_us)
            .bind(expires_at_us)
            .execute(&self.pool)
            .await?;
            if inserted.rows_affected() == 1 {
                return Ok(IdempotencyState::Claimed);
            }
            let Some(row) = sqlx::query(
                "SELECT account_id, fingerprint, status_code, response_body, created_at_us, expires_at_us \
                 FROM idempotency_keys WHERE idem_key = $1",
            )
            .bind(key)
            .fetch_optional(&self.pool)
            .await?
            else {
                continue;
            };
            let expires: i64 = row.try_get(5)?;
            if expires <= now_us {
                sqlx::query(
                    "DELETE FROM idempotency_keys WHERE idem_key = $1 AND expires_at_us <= $2",
                )
                .bind(key)
                .bind(now_us)
                .execute(&self.pool)
                .await?;
                continue;
            }
            if row.try_get::<String, _>(0)? != account_id
                || row.try_get::<String, _>(1)? != fingerprint
            {
                return Ok(IdempotencyState::Mismatch);
            }
            if let Some(status) = row.try_get::<Option<i64>, _>(2)? {
                return Ok(IdempotencyState::Replay(IdempotencyRecord {
                    status_code: u16::try_from(status).unwrap_or(500),
                    body: row.try_get::<Option<String>, _>(3)?.unwrap_or_default(),
                }));
            }
            let claimed_at: i64 = row.try_get(4)?;
            if claimed_at + lease_us <= now_us {
                let taken = sqlx::query(
                    "UPDATE idempotency_keys SET created_at_us = $2 \
                     WHERE idem_key = $1 AND status_code IS NULL AND created_at_us = $3",
                )
                .bind(key)
                .bind(now_us)
                .bind(claimed_at)
                .execute(&self.pool)
                .await?;
                if taken.rows_affected() == 1 {
                    return Ok(IdempotencyState::Claimed);
                }
                continue;
            }
            return Ok(IdempotencyState::InFlight);
        }
        Ok(IdempotencyState::InFlight)
    }

    /// Records the answer of a claimed key, unless the command's transaction already did.
    pub async fn finish_idempotency_key(
        &self,
        key: &str,
        status_code: u16,
        body: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE idempotency_keys SET status_code = $2, response_body = $3 \
             WHERE idem_key = $1 AND status_code IS NULL",
        )
        .bind(key)
        .bind(i64::from(status_code))
        .bind(body)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Gives a claim up (the request failed on our side), so a retry runs it again.
    pub async fn release_idempotency_key(&self, key: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM idempotency_keys WHERE idem_key = $1 AND status_code IS NULL")
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
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
