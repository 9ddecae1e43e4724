//! The auditor's ledger: each account's Merkle tree ([`tree`]), the signing keys kept off the
//! database ([`signing`]), signed digests, and their publication to Kafka ([`publish`]).

pub mod bench;
pub mod publish;
pub mod signing;
pub mod tree;
pub mod watch;

use std::path::PathBuf;

use chrono::{SecondsFormat, Utc};
use clap::Args;
use taskledger_events::{digest_message, SignedDigest, ED25519};

use crate::store::{Store, StoreError};
use signing::SigningKeys;

/// Where the signing key file is (for `serve`, `digest`, `verify --digest`, `signing-key`).
#[derive(Debug, Clone, Args, Default)]
pub struct SigningKeySettings {
    /// The Ed25519 signing key file, outside the database (created 0600 by `serve`).
    /// Default: beside the SQLite file, or ./taskledger.signing-key.json for PostgreSQL.
    #[arg(long, env = "TASKLEDGER_SIGNING_KEY_FILE", global = true)]
    pub signing_key_file: Option<PathBuf>,
}

impl SigningKeySettings {
    pub fn path(&self, database_url: &str) -> PathBuf {
        signing::key_path(self.signing_key_file.as_deref(), database_url)
    }
}

/// Digest publication, beside the event relay.
#[derive(Debug, Clone, Args)]
pub struct AuditSettings {
    #[command(flatten)]
    pub signing_key: SigningKeySettings,

    /// Topic the signed digests are published to (created if missing), with a relay.
    #[arg(long, env = "KAFKA_DIGEST_TOPIC", default_value = "taskledger.digests")]
    pub kafka_digest_topic: String,

    /// A digest of every account with new events is published at least this often.
    #[arg(long, env = "DIGEST_INTERVAL_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub digest_interval_secs: u64,
}

/// Signs the account's tree as it is now.
pub async fn sign_digest(
    store: &Store,
    keys: &SigningKeys,
    account_id: &str,
) -> Result<SignedDigest, StoreError> {
    let head = store.tree_head(account_id).await?;
    let signed_at = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
    let root_hash = hex::encode(head.root);
    let signed_message = digest_message(
        account_id,
        head.tree_size,
        &root_hash,
        head.last_global_position,
        &signed_at,
    );
    let (key_id, signature) = keys.sign(signed_message.as_bytes());
    Ok(SignedDigest {
        account_id: account_id.to_string(),
        tree_size: head.tree_size,
        root_hash,
        last_global_position: head.last_global_position,
        signed_at,
        key_id,
        algorithm: ED25519.to_string(),
        signed_message,
        signature,
    })
}
