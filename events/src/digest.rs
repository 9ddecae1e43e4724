//! Signed digests: a statement, signed with the ledger's Ed25519 key, that an account's
//! Merkle tree had `tree_size` leaves and root `root_hash` at `signed_at`.
//!
//! The signature covers `signed_message`, an exact UTF-8 text built by [`digest_message`]:
//!
//! ```text
//! taskledger-digest-v1
//! account_id=<account id>
//! tree_size=<leaves>
//! root_hash=<64 hex digits>
//! last_global_position=<global position of the last leaf's event, 0 for none>
//! signed_at=<RFC 3339, microseconds, UTC>
//! ```
//!
//! [`SignedDigest::verify`] checks the signature and that the JSON fields say what the signed
//! text says, so a consumer may then trust the fields.

use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

/// The first line of every signed digest message of this format.
pub const DIGEST_MESSAGE_TAG: &str = "taskledger-digest-v1";

/// The only signature algorithm used.
pub const ED25519: &str = "ed25519";

/// `GET /v1/ledger/digest`, `taskledger digest` and each record of the digest topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SignedDigest {
    pub account_id: String,
    /// Leaves in the account's tree: its events in global order.
    pub tree_size: u64,
    /// Hex RFC 6962 root of the first `tree_size` events.
    pub root_hash: String,
    /// The global position of the account's last event in the tree (0 for an empty tree).
    pub last_global_position: i64,
    /// RFC 3339 with microseconds, UTC, exactly as in `signed_message`.
    pub signed_at: String,
    /// Which signing key signed (see `GET /v1/ledger/public-keys`).
    pub key_id: String,
    /// Always `ed25519`.
    pub algorithm: String,
    /// The exact UTF-8 text that was signed.
    pub signed_message: String,
    /// Hex Ed25519 signature (64 bytes) over `signed_message`.
    pub signature: String,
}

/// Why a digest did not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DigestError {
    /// The signature is malformed or not made by this key over this message.
    BadSignature(String),
    /// The public key is not 32 hex-encoded bytes of a valid Ed25519 key.
    BadPublicKey(String),
    /// The signed text does not say what the JSON fields say.
    FieldMismatch(&'static str),
    /// The algorithm is not `ed25519`.
    UnknownAlgorithm(String),
}

impl std::fmt::Display for DigestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DigestError::BadSignature(why) => write!(f, "the signature is not valid: {why}"),
            DigestError::BadPublicKey(why) => write!(f, "the public key is not usable: {why}"),
            DigestError::FieldMismatch(field) => {
                write!(f, "the signed message does not carry the digest's {field}")
            }
            DigestError::UnknownAlgorithm(a) => write!(f, "unknown signature algorithm {a:?}"),
        }
    }
}

impl std::error::Error for DigestError {}

/// The exact text a digest's signature covers.
pub fn digest_message(
    account_id: &str,
    tree_size: u64,
    root_hash: &str,
    last_global_position: i64,
    signed_at: &str,
) -> String {
    format!(
        "{DIGEST_MESSAGE_TAG}\naccount_id={account_id}\ntree_size={tree_size}\n\
         root_hash={root_hash}\nlast_global_position={last_global_position}\n\
         signed_at={signed_at}"
    )
}

/// Checks a hex Ed25519 `signature` over `message` with a 32-byte public key.
pub fn verify_signature(
    public_key: &[u8; 32],
    message: &[u8],
    signature_hex: &str,
) -> Result<(), DigestError> {
    let key = VerifyingKey::from_bytes(public_key)
        .map_err(|e| DigestError::BadPublicKey(e.to_string()))?;
    let bytes = hex::decode(signature_hex).map_err(|e| DigestError::BadSignature(e.to_string()))?;
    let bytes: [u8; 64] = bytes
        .try_into()
        .map_err(|_| DigestError::BadSignature("not 64 bytes".into()))?;
    key.verify_strict(message, &Signature::from_bytes(&bytes))
        .map_err(|e| DigestError::BadSignature(e.to_string()))
}

/// A hex public key (as `GET /v1/ledger/public-keys` lists it) to its 32 bytes.
pub fn parse_public_key(hex_text: &str) -> Result<[u8; 32], DigestError> {
    hex::decode(hex_text)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| DigestError::BadPublicKey(format!("{hex_text:?} is not 32 hex bytes")))
}

impl SignedDigest {
    /// Checks the signature with `public_key` and that `signed_message` is exactly the text of
    /// the digest's fields.
    pub fn verify(&self, public_key: &[u8; 32]) -> Result<(), DigestError> {
        if self.algorithm != ED25519 {
            return Err(DigestError::UnknownAlgorithm(self.algorithm.clone()));
        }
        verify_signature(public_key, self.signed_message.as_bytes(), &self.signature)?;
        let expected = digest_message(
            &self.account_id,
            self.tree_size,
            &self.root_hash,
            self.last_global_position,
            &self.signed_at,
        );
        if expected != self.signed_message {
            return Err(DigestError::FieldMismatch(first_difference(
                &expected,
                &self.signed_message,
            )));
        }
        Ok(())
    }
}

/// Which field of two digest messages differs first.
fn first_difference(a: &str, b: &str) -> &'static str {
    const FIELDS: [&str; 6] = [
        "format",
        "account_id",
        "tree_size",
        "root_hash",
        "last_global_position",
        "signed_at",
    ];
    let mut lines = a.lines().zip(b.lines());
    FIELDS
        .iter()
        .find(|_| lines.next().is_some_and(|(x, y)| x != y))
        .copied()
        .unwrap_or("format")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn signed(key: &SigningKey) -> SignedDigest {
        let signed_at = "2026-01-02T03:04:05.000006Z";
        let root = "ab".repeat(32);
        let message = digest_message("acme", 7, &root, 42, signed_at);
        SignedDigest {
            account_id: "acme".into(),
            tree_size: 7,
            root_hash: root,
            last_global_position: 42,
            signed_at: signed_at.into(),
            key_id: "k".into(),
            algorithm: ED25519.into(),
            signature: hex::encode(key.sign(message.as_bytes()).to_bytes()),
            signed_message: message,
        }
    }

    #[test]
    fn a_signed_digest_verifies_with_its_key_and_with_no_other() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let digest = signed(&key);
        digest.verify(key.verifying_key().as_bytes()).unwrap();
        let other = SigningKey::from_bytes(&[8u8; 32]);
        assert!(matches!(
            digest.verify(other.verifying_key().as_bytes()),
            Err(DigestError::BadSignature(_))
        ));
    }

    #[test]
    fn a_field_changed_after_signing_is_named() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let mut digest = signed(&key);
        digest.tree_size = 8;
        assert_eq!(
            digest.verify(key.verifying_key().as_bytes()),
            Err(DigestError::FieldMismatch("tree_size"))
        );
    }

    #[test]
    fn rfc_8032_test_vector_1_verifies() {
        // RFC 8032 section 7.1, TEST 1: the empty message.
        let public =
            parse_public_key("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
                .unwrap();
        let signature = "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155\
                         5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b";
        verify_signature(&public, b"", signature).unwrap();
        assert!(verify_signature(&public, b"x", signature).is_err());
    }
}
