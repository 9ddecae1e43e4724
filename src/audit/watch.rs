//! A third party's check of published digests, as `examples/digests.rs` runs it: each digest
//! of an account is checked against the ledger's published keys and against the previous
//! digest of the same account by a consistency proof, with `taskledger-events`' verifiers
//! only. It lives in the library so that its test runs it in-process against a real broker.

use std::collections::HashMap;

use serde::de::DeserializeOwned;
use taskledger_events::merkle::{parse_hash, parse_hashes, verify_consistency};
use taskledger_events::{parse_public_key, SignedDigest};

/// What one digest showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Signed by a published key; the first digest of the account seen.
    First { tree_size: u64 },
    /// Signed, and the tree only grew since the previous digest (or stayed the same).
    Extends { from: u64, to: u64 },
    /// Something does not hold: the log was rewritten or truncated, or the digest is forged.
    Broken(String),
    /// Another account's digest: its proofs need that account's key, so it is left alone.
    OtherAccount,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("the ledger's API failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("the ledger's API answered {status} to {path}: {body}")]
    Status {
        status: u16,
        path: String,
        body: String,
    },
}

/// Checks digests of one account, each against the one before.
pub struct DigestWatcher {
    client: reqwest::Client,
    base_url: String,
    api_key: String,
    /// The account the key belongs to, learnt from its first digest request.
    account_id: Option<String>,
    last: HashMap<String, SignedDigest>,
}

#[derive(serde::Deserialize)]
struct Keys {
    keys: Vec<crate::audit::signing::PublicKey>,
}

#[derive(serde::Deserialize)]
struct Consistency {
    proof: Vec<String>,
}

impl DigestWatcher {
    /// Reads the ledger at `base_url` (e.g. `http://127.0.0.1:8080`) with an API key of the
    /// account whose digests it checks.
    pub fn new(base_url: &str, api_key: &str) -> DigestWatcher {
        DigestWatcher {
            client: reqwest::Client::new(),
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key: api_key.to_string(),
            account_id: None,
            last: HashMap::new(),
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, WatchError> {
        let response = self
            .client
            .get(format!("{}{path}", self.base_url))
            .basic_auth(&self.api_key, Some(""))
            .send()
            .await?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(WatchError::Status {
                status,
                path: path.to_string(),
                body: response.text().await.unwrap_or_default(),
            });
        }
        Ok(response.json().await?)
    }

    /// Checks one digest (a record of the digest topic).
    pub async fn check(&mut self, digest: SignedDigest) -> Result<Verdict, WatchError> {
        if self.account_id.is_none() {
            let own: SignedDigest = self.get("/v1/ledger/digest").await?;
            self.account_id = Some(own.account_id);
        }
        if self.account_id.as_deref() != Some(digest.account_id.as_str()) {
            return Ok(Verdict::OtherAccount);
        }
        let keys: Keys = self.get("/v1/ledger/public-keys").await?;
        let Some(key) = keys.keys.iter().find(|k| k.key_id == digest.key_id) else {
            return Ok(Verdict::Broken(format!(
                "signed by {}, a key the ledger does not publish",
                digest.key_id
            )));
        };
        let verified = parse_public_key(&key.public_key).and_then(|pk| digest.verify(&pk));
        if let Err(e) = verified {
            return Ok(Verdict::Broken(e.to_string()));
        }
        let Ok(root) = parse_hash(&digest.root_hash) else {
            return Ok(Verdict::Broken("root_hash is not a hash".into()));
        };
        let Some(previous) = self.last.get(&digest.account_id).cloned() else {
            let tree_size = digest.tree_size;
            self.last.insert(digest.account_id.clone(), digest);
            return Ok(Verdict::First { tree_size });
        };
        let (from, to) = (previous.tree_size, digest.tree_size);
        if to < from {
            return Ok(Verdict::Broken(format!(
                "the tree shrank from {from} to {to} leaves: the log was truncated"
            )));
        }
        let previous_root = parse_hash(&previous.root_hash).unwrap_or_default();
        let answer: Consistency = self
            .get(&format!("/v1/ledger/proof/consistency?from={from}&to={to}"))
            .await?;
        let proof = match parse_hashes(&answer.proof) {
            Ok(p) => p,
            Err(e) => return Ok(Verdict::Broken(e.to_string())),
        };
        if let Err(e) = verify_consistency(from, to, &proof, &previous_root, &root) {
            return Ok(Verdict::Broken(format!(
                "the tree of {to} leaves does not extend the one of {from}: {e}"
            )));
        }
        self.last.insert(digest.account_id.clone(), digest);
        Ok(Verdict::Extends { from, to })
    }
}
