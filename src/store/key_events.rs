//! API keys as facts of the ledger: creating or revoking a key records an [`ApiKeyCreated`]
//! or [`ApiKeyRevoked`] event of the key's account, in the same append transaction as the
//! key row, so the ledger proves which keys could act when (see `taskledger_events::KeyEvent`
//! for how these events look).

use chrono::DateTime;
use taskledger_events::{
    canonical_json, Actor, ApiKeyCreated, ApiKeyRevoked, EventEnvelope, KeyEvent, Scope,
    SealedEvent, CURRENT_HASH_VERSION, GENESIS_HASH,
};
use uuid::Uuid;

use super::append::AppendTx;
use super::keys::random_hex;
use super::{sha256_hex, ApiKey, Store, StoreError};

/// One of an account's keys, as `GET /v1/keys` and `keys list` show it (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct KeyRecord {
    pub key_id: String,
    pub account_id: String,
    pub account_name: String,
    pub name: Option<String>,
    pub scope: String,
    pub created_at_us: i64,
    pub revoked_at_us: Option<i64>,
    /// 1 for a test-mode key, 0 for a live one.
    pub is_test: i64,
}

const KEY_COLUMNS: &str = "k.key_id, k.account_id, a.name AS account_name, k.name, k.scope, \
     k.created_at_us, k.revoked_at_us, k.is_test";

/// Seals one key event after the transaction's last event: the key's own stream, chained from
/// its previous event.
fn seal(
    tx: &AppendTx,
    account_id: &str,
    key_id: &str,
    event: &KeyEvent,
    last_sequence: i64,
    prev_hash: &str,
) -> Result<SealedEvent, StoreError> {
    let payload_json = canonical_json(&event.payload());
    let recorded_us = tx.next_recorded_us();
    let corrupt = |message: String| StoreError::Unencodable {
        task_id: key_id.to_string(),
        message,
    };
    let mut envelope = EventEnvelope {
        event_id: Uuid::now_v7(),
        event_type: event.event_type().to_string(),
        event_version: event.event_version(),
        task_id: key_id.to_string(),
        account_id: account_id.to_string(),
        sequence: last_sequence + 1,
        global_position: tx.next_position(),
        recorded_at: DateTime::from_timestamp_micros(recorded_us).expect("the clock is in range"),
        actor: Actor {
            account_id: account_id.to_string(),
            key_id: None,
            scope: Scope::System,
        },
        request_id: None,
        payload: serde_json::from_str(&payload_json).map_err(|e| corrupt(e.to_string()))?,
        prev_hash: prev_hash.to_string(),
        hash: String::new(),
        hash_version: CURRENT_HASH_VERSION,
        is_test: false,
    };
    envelope.hash = envelope
        .expected_hash_of(&payload_json)
        .map_err(|e| corrupt(e.to_string()))?;
    Ok(SealedEvent {
        envelope,
        payload_json,
    })
}

impl Store {
    /// Creates a key held by `name` for the account (created if missing), recording
    /// `ApiKeyCreated` in the ledger with it. Returns the key and its secret, never stored.
    pub async fn create_named_key(
        &self,
        account_name: &str,
        scope: Scope,
        name: Option<&str>,
    ) -> Result<(ApiKey, String), StoreError> {
        self.create_key_in_mode(account_name, scope, name, false)
            .await
    }

    /// Like [`Store::create_named_key`], for a live key or, with `is_test`, a test-mode key
    /// whose data is kept apart from the account's live data.
    pub async fn create_key_in_mode(
        &self,
        account_name: &str,
        scope: Scope,
        name: Option<&str>,
        is_test: bool,
    ) -> Result<(ApiKey, String), StoreError> {
        let account_id = self.ensure_account(account_name).await?;
        let secret = format!("tl_{}", random_hex(24));
        let key_id = format!("key_{}", random_hex(10));
        let mut tx = self.begin_append().await?;
        let event = KeyEvent::ApiKeyCreated(ApiKeyCreated {
            key_id: key_id.clone(),
            name: name.map(str::to_string),
            scope: scope.as_str().to_string(),
            is_test,
        });
        let sealed = seal(&tx, &account_id, &key_id, &event, 0, GENESIS_HASH)?;
        let created_at_us = sealed.envelope.recorded_at.timestamp_micros();
        sqlx::query(
            "INSERT INTO api_keys \
             (key_id, account_id, scope, key_hash, created_at_us, name, is_test) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&key_id)
        .bind(&account_id)
        .bind(scope.as_str())
        .bind(sha256_hex(secret.as_bytes()))
        .bind(created_at_us)
        .bind(name)
        .bind(i64::from(is_test))
        .execute(tx.conn())
        .await?;
        if !tx.record_sealed(&[sealed]).await? {
            tx.rollback().await?;
            return Err(StoreError::Corrupt {
                event_id: key_id,
                message: "the key's event slot is taken".into(),
            });
        }
        tx.commit().await?;
        Ok((
            ApiKey {
                key_id,
                account_name: account_name.to_string(),
                scope,
                created_at_us,
                revoked: false,
                is_test,
            },
            secret,
        ))
    }

    /// Records the facts of every key the ledger has no event of: keys created before keys
    /// were recorded. Each gets its `ApiKeyCreated` (and `ApiKeyRevoked` if it was revoked
    /// already), recorded now, in one transaction per key, so from this release on the ledger
    /// names every key that ever existed. Several processes may run it at once: a key's first
    /// event slot is taken once, and the loser's transaction is rolled back.
    pub(super) async fn record_unrecorded_keys(&self) -> Result<usize, StoreError> {
        let keys: Vec<KeyRecord> = sqlx::query_as(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys k JOIN accounts a ON a.account_id = k.account_id \
             WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.task_id = k.key_id) \
             ORDER BY k.created_at_us, k.key_id"
        ))
        .fetch_all(&self.pool)
        .await?;
        let mut recorded = 0;
        for key in keys {
            let mut tx = self.begin_append().await?;
            let mut facts = vec![KeyEvent::ApiKeyCreated(ApiKeyCreated {
                key_id: key.key_id.clone(),
                name: key.name.clone(),
                scope: key.scope.clone(),
                is_test: key.is_test != 0,
            })];
            if key.revoked_at_us.is_some() {
                facts.push(KeyEvent::ApiKeyRevoked(ApiKeyRevoked {
                    key_id: key.key_id.clone(),
                }));
            }
            // One at a time: each is sealed after the head the one before it moved.
            let mut prev_hash = GENESIS_HASH.to_string();
            let mut taken = false;
            for (i, fact) in facts.iter().enumerate() {
                let sealed = seal(
                    &tx,
                    &key.account_id,
                    &key.key_id,
                    fact,
                    i as i64,
                    &prev_hash,
                )?;
                prev_hash = sealed.envelope.hash.clone();
                if !tx.record_sealed(&[sealed]).await? {
                    taken = true;
                    break;
                }
            }
            if taken {
                tx.rollback().await?;
            } else {
                tx.commit().await?;
                recorded += 1;
            }
        }
        Ok(recorded)
    }

    /// Revokes an active key, recording `ApiKeyRevoked` in the ledger with it; `false` if no
    /// such active key.
    pub async fn revoke_recorded(&self, key_id: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin_append().await?;
        let account: Option<String> = sqlx::query_scalar(
            "SELECT account_id FROM api_keys WHERE key_id = $1 AND revoked_at_us IS NULL",
        )
        .bind(key_id)
        .fetch_optional(tx.conn())
        .await?;
        let Some(account_id) = account else {
            tx.rollback().await?;
            return Ok(false);
        };
        // A key created before keys were recorded has no creation event: its stream starts here.
        let last: Option<(i64, String)> = sqlx::query_as(
            "SELECT sequence, hash FROM events WHERE task_id = $1 ORDER BY sequence DESC LIMIT 1",
        )
        .bind(key_id)
        .fetch_optional(tx.conn())
        .await?;
        let (last_sequence, prev_hash) = last.unwrap_or((0, GENESIS_HASH.to_string()));
        let event = KeyEvent::ApiKeyRevoked(ApiKeyRevoked {
            key_id: key_id.to_string(),
        });
        let sealed = seal(&tx, &account_id, key_id, &event, last_sequence, &prev_hash)?;
        sqlx::query("UPDATE api_keys SET revoked_at_us = $2 WHERE key_id = $1")
            .bind(key_id)
            .bind(sealed.envelope.recorded_at.timestamp_micros())
            .execute(tx.conn())
            .await?;
        if !tx.record_sealed(&[sealed]).await? {
            tx.rollback().await?;
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    /// The account's keys, oldest first.
    pub async fn account_keys(&self, account_id: &str) -> Result<Vec<KeyRecord>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys k JOIN accounts a ON a.account_id = k.account_id \
             WHERE k.account_id = $1 ORDER BY k.created_at_us, k.key_id"
        ))
        .bind(account_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Every key, by account name then age (`keys list`).
    pub async fn all_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys k JOIN accounts a ON a.account_id = k.account_id \
             ORDER BY a.name, k.created_at_us, k.key_id"
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    /// An account's id from its name or its id.
    pub async fn find_account(&self, name_or_id: &str) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT account_id FROM accounts WHERE name = $1 OR account_id = $1 LIMIT 1",
        )
        .bind(name_or_id)
        .fetch_optional(&self.pool)
        .await?)
    }
}
