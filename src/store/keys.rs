//! Accounts and API keys. A key is shown once, at creation; only its SHA-256 is stored (the
//! key is 192 random bits, so a fast hash is enough to make a stolen table useless).

use rand::RngCore;
use taskledger_events::Scope;
use uuid::Uuid;

use super::{now_micros, sha256_hex, Store, StoreError};

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub account_id: String,
    pub account_name: String,
    pub key_id: String,
    pub scope: Scope,
    /// A test-mode key: it sees and makes test data only, never the account's live data.
    pub is_test: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub key_id: String,
    pub account_name: String,
    pub scope: Scope,
    pub created_at_us: i64,
    pub revoked: bool,
    pub is_test: bool,
}

/// A key with its account, as listed.
#[derive(sqlx::FromRow)]
struct KeyRow {
    key_id: String,
    name: String,
    scope: String,
    created_at_us: i64,
    revoked_at_us: Option<i64>,
    is_test: i64,
}

/// An active key with its account, as authenticated.
#[derive(sqlx::FromRow)]
struct PrincipalRow {
    key_id: String,
    scope: String,
    account_id: String,
    name: String,
    is_test: i64,
}

/// A stored scope; one that names no scope is an error, never a default.
fn stored_scope(key_id: &str, scope: &str) -> Result<Scope, StoreError> {
    Scope::parse(scope).map_err(|_| StoreError::CorruptKey {
        key_id: key_id.to_string(),
        scope: scope.to_string(),
    })
}

pub(super) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

impl Store {
    /// The account's id, creating the account (with a fresh callback secret) if needed.
    pub async fn ensure_account(&self, name: &str) -> Result<String, StoreError> {
        sqlx::query(
            "INSERT INTO accounts (account_id, name, callback_secret, created_at_us) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING",
        )
        .bind(Uuid::now_v7().to_string())
        .bind(name)
        .bind(random_hex(32))
        .bind(now_micros())
        .execute(&self.pool)
        .await?;
        Ok(
            sqlx::query_scalar("SELECT account_id FROM accounts WHERE name = $1")
                .bind(name)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Creates a key for the account (created if missing), recorded in the ledger like
    /// every key (see [`Store::create_named_key`]). Returns the key record and the secret key
    /// itself, which is never stored.
    pub async fn create_key(
        &self,
        account_name: &str,
        scope: Scope,
    ) -> Result<(ApiKey, String), StoreError> {
        self.create_named_key(account_name, scope, None).await
    }

    pub async fn list_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let rows: Vec<KeyRow> = sqlx::query_as(
            "SELECT k.key_id, a.name, k.scope, k.created_at_us, k.revoked_at_us, k.is_test \
             FROM api_keys k JOIN accounts a ON a.account_id = k.account_id \
             ORDER BY a.name, k.created_at_us",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(ApiKey {
                    scope: stored_scope(&r.key_id, &r.scope)?,
                    key_id: r.key_id,
                    account_name: r.name,
                    created_at_us: r.created_at_us,
                    revoked: r.revoked_at_us.is_some(),
                    is_test: r.is_test != 0,
                })
            })
            .collect()
    }

    /// Revokes a key, recorded in the ledger ([`Store::revoke_recorded`]); `false` if no
    /// such active key.
    pub async fn revoke_key(&self, key_id: &str) -> Result<bool, StoreError> {
        self.revoke_recorded(key_id).await
    }

    /// The principal of an active key, or `None` for an unknown or revoked one.
    pub async fn authenticate(&self, secret: &str) -> Result<Option<Principal>, StoreError> {
        let row: Option<PrincipalRow> = sqlx::query_as(
            "SELECT k.key_id, k.scope, a.account_id, a.name, k.is_test FROM api_keys k \
             JOIN accounts a ON a.account_id = k.account_id \
             WHERE k.key_hash = $1 AND k.revoked_at_us IS NULL",
        )
        .bind(sha256_hex(secret.as_bytes()))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(Principal {
                scope: stored_scope(&r.key_id, &r.scope)?,
                key_id: r.key_id,
                account_id: r.account_id,
                account_name: r.name,
                is_test: r.is_test != 0,
            })
        })
        .transpose()
    }
}
