//! The ledger's Ed25519 signing keys, kept in a file outside the database: whoever can write
//! the ledger's tables cannot sign a digest of what they wrote.
//!
//! The file (JSON, mode 0600) holds every key the ledger ever signed with; the one without
//! `retired_at` signs, the retired ones stay published so old digests still verify. It is
//! read each time it is used, so `taskledger signing-key rotate` takes effect without a
//! restart.

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{SecondsFormat, Utc};
use ed25519_dalek::{Signer, SigningKey};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use taskledger_events::ED25519;

/// Where the key file is when `TASKLEDGER_SIGNING_KEY_FILE` is not set: beside the SQLite file
/// (`<name>.signing-key.json`), or in the working directory for PostgreSQL.
pub fn default_key_path(database_url: &str) -> PathBuf {
    const NAME: &str = "taskledger.signing-key.json";
    let Some(rest) = database_url.strip_prefix("sqlite:") else {
        return PathBuf::from(NAME);
    };
    let path = rest.trim_start_matches("//");
    let path = path.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return PathBuf::from(NAME);
    }
    let file = Path::new(path);
    let stem = file
        .file_stem()
        .map_or_else(|| "taskledger".into(), |s| s.to_string_lossy().into_owned());
    file.with_file_name(format!("{stem}.signing-key.json"))
}

/// The key file's path: the one configured, else [`default_key_path`].
pub fn key_path(configured: Option<&Path>, database_url: &str) -> PathBuf {
    configured.map_or_else(|| default_key_path(database_url), Path::to_path_buf)
}

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("the signing key file {path} cannot be read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the signing key file {path} cannot be written: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the signing key file {path} is not valid: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("there is no signing key file at {0}; `taskledger serve` creates it, or run `taskledger signing-key rotate`")]
    Missing(PathBuf),
}

/// One key of the file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredKey {
    key_id: String,
    algorithm: String,
    /// Hex, 32 bytes: the Ed25519 seed.
    secret_key: String,
    /// Hex, 32 bytes.
    public_key: String,
    created_at: String,
    retired_at: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct KeyFile {
    keys: Vec<StoredKey>,
}

/// A published key: what `GET /v1/ledger/public-keys` lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PublicKey {
    pub key_id: String,
    /// Always `ed25519`.
    pub algorithm: String,
    /// Hex, 32 bytes.
    pub public_key: String,
    pub created_at: String,
    /// When a newer key replaced it; digests it signed before still verify.
    pub retired_at: Option<String>,
}

/// The signing keys, as read from their file.
#[derive(Debug, Clone)]
pub struct SigningKeys {
    path: PathBuf,
    file: KeyFile,
}

fn now_text() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn new_key() -> StoredKey {
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    let key = SigningKey::from_bytes(&seed);
    let public = key.verifying_key().to_bytes();
    StoredKey {
        key_id: format!("sig_{}", &hex::encode(Sha256::digest(public))[..16]),
        algorithm: ED25519.to_string(),
        secret_key: hex::encode(seed),
        public_key: hex::encode(public),
        created_at: now_text(),
        retired_at: None,
    }
}

impl SigningKeys {
    /// Reads the key file.
    pub fn load(path: &Path) -> Result<SigningKeys, SigningError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SigningError::Missing(path.to_path_buf()))
            }
            Err(source) => {
                return Err(SigningError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let invalid = |message: String| SigningError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let file: KeyFile = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        for key in &file.keys {
            let seed = parse32(&key.secret_key)
                .ok_or_else(|| invalid(format!("{}: bad secret_key", key.key_id)))?;
            let public = SigningKey::from_bytes(&seed).verifying_key().to_bytes();
            if hex::encode(public) != key.public_key {
                return Err(invalid(format!(
                    "{}: public_key is not the secret key's",
                    key.key_id
                )));
            }
        }
        if file.keys.iter().filter(|k| k.retired_at.is_none()).count() != 1 {
            return Err(invalid(
                "exactly one key must be current (without retired_at)".into(),
            ));
        }
        Ok(SigningKeys {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Reads the key file, creating it with a fresh key (mode 0600) if there is none. Two
    /// processes starting at once end up with the same key: the file appears atomically, and
    /// the one that finds it there reads it.
    pub fn load_or_create(path: &Path) -> Result<SigningKeys, SigningError> {
        match SigningKeys::load(path) {
            Err(SigningError::Missing(_)) => {}
            other => return other,
        }
        let file = KeyFile {
            keys: vec![new_key()],
        };
        let temp = write_private_temp(path, &file)?;
        let linked = std::fs::hard_link(&temp, path);
        let _ = std::fs::remove_file(&temp);
        match linked {
            Ok(()) => tracing::info!(path = %path.display(), "created the ledger's signing key"),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(SigningError::Write {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
        SigningKeys::load(path)
    }

    /// Retires the current key and makes a new one current, in the file.
    pub fn rotate(path: &Path) -> Result<SigningKeys, SigningError> {
        let mut keys = SigningKeys::load_or_create(path)?;
        let now = now_text();
        for key in &mut keys.file.keys {
            if key.retired_at.is_none() {
                key.retired_at = Some(now.clone());
            }
        }
        keys.file.keys.push(new_key());
        let temp = write_private_temp(path, &keys.file)?;
        std::fs::rename(&temp, path).map_err(|source| SigningError::Write {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(keys)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn current(&self) -> &StoredKey {
        self.file
            .keys
            .iter()
            .find(|k| k.retired_at.is_none())
            .expect("load checks there is a current key")
    }

    /// The current key's id.
    pub fn current_key_id(&self) -> &str {
        &self.current().key_id
    }

    /// Signs with the current key: its id and the hex signature.
    pub fn sign(&self, message: &[u8]) -> (String, String) {
        let current = self.current();
        let seed = parse32(&current.secret_key).expect("load checks every key");
        let signature = SigningKey::from_bytes(&seed).sign(message);
        (current.key_id.clone(), hex::encode(signature.to_bytes()))
    }

    /// Every key, current and retired, oldest first, without secrets.
    pub fn public_keys(&self) -> Vec<PublicKey> {
        self.file
            .keys
            .iter()
            .map(|k| PublicKey {
                key_id: k.key_id.clone(),
                algorithm: k.algorithm.clone(),
                public_key: k.public_key.clone(),
                created_at: k.created_at.clone(),
                retired_at: k.retired_at.clone(),
            })
            .collect()
    }

    /// The public key with this id, current or retired.
    pub fn public_key(&self, key_id: &str) -> Option<[u8; 32]> {
        self.file
            .keys
            .iter()
            .find(|k| k.key_id == key_id)
            .and_then(|k| parse32(&k.public_key))
    }
}

fn parse32(text: &str) -> Option<[u8; 32]> {
    hex::decode(text).ok()?.try_into().ok()
}

/// Writes the file's content to a new temporary file beside `path`, readable by its owner only.
fn write_private_temp(path: &Path, file: &KeyFile) -> Result<PathBuf, SigningError> {
    let write_error = |source| SigningError::Write {
        path: path.to_path_buf(),
        source,
    };
    let name = path.file_name().map_or_else(
        || "signing-key".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    let temp = path.with_file_name(format!(".{name}.{}.tmp", uuid::Uuid::now_v7().simple()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut out = options.open(&temp).map_err(write_error)?;
    let text = serde_json::to_string_pretty(file).expect("the key file serializes");
    out.write_all(text.as_bytes()).map_err(write_error)?;
    out.sync_all().map_err(write_error)?;
    Ok(temp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_file_is_created_private_and_a_rotated_key_stays_published() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        let first = SigningKeys::load_or_create(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = SigningKeys::load_or_create(&path).unwrap();
        assert_eq!(again.current_key_id(), first.current_key_id());
        let rotated = SigningKeys::rotate(&path).unwrap();
        assert_ne!(rotated.current_key_id(), first.current_key_id());
        let published = rotated.public_keys();
        assert_eq!(published.len(), 2);
        assert!(published[0].retired_at.is_some() && published[1].retired_at.is_none());
        let (key_id, signature) = rotated.sign(b"hello");
        let public = rotated.public_key(&key_id).unwrap();
        taskledger_events::verify_signature(&public, b"hello", &signature).unwrap();
    }

    #[test]
    fn the_default_key_file_sits_beside_the_sqlite_file() {
        assert_eq!(
            default_key_path("sqlite:///var/lib/tl/ledger.db?mode=rwc"),
            PathBuf::from("/var/lib/tl/ledger.signing-key.json")
        );
        assert_eq!(
            default_key_path("sqlite://taskledger.db"),
            PathBuf::from("taskledger.signing-key.json")
        );
        assert_eq!(
            default_key_path("postgres://db/tl"),
            PathBuf::from("taskledger.signing-key.json")
        );
    }
}
