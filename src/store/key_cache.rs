//! Authentication cached in memory, so a request does not look its key up in the database.
//!
//! A cached key is trusted only while the process has read the `key_changes` row within the
//! last [`FRESHNESS`]: every change to `api_keys` (a revocation from this process, another
//! `serve` or the CLI) moves that row in its own transaction, and the first request after
//! [`FRESHNESS`] re-reads it (one request at a time; the others wait for that read) and drops
//! the whole cache when it moved. So a revoked key is refused by every process within
//! [`FRESHNESS`] plus one read, and the database sees one small read per [`FRESHNESS`] per
//! process instead of one per request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::{Principal, Store, StoreError};

/// How long the process trusts its last read of `key_changes`.
pub const FRESHNESS: Duration = Duration::from_millis(250);

/// The longest a cached key is used, even when nothing changed: a safety net, not the
/// revocation path.
const ENTRY_LIFE: Duration = Duration::from_secs(30);

/// Keys kept at most; past it the cache starts again empty, so a flood of distinct valid
/// keys cannot grow the process.
const MAX_ENTRIES: usize = 10_000;

/// Unknown keys are never cached: a client sending random keys gets a lookup each, exactly as
/// without the cache, and cannot fill it.
#[derive(Debug)]
pub struct KeyCache {
    store: Store,
    started: Instant,
    /// Nanoseconds after `started` until which the last read of `key_changes` holds; 0 before
    /// the first read.
    fresh_until_ns: AtomicU64,
    /// Taken by the request that re-reads `key_changes`; the others wait on it.
    refresh: tokio::sync::Mutex<()>,
    state: Mutex<Cached>,
}

#[derive(Debug, Default)]
struct Cached {
    /// The `key_changes` version the entries were read under (None before the first read).
    version: Option<i64>,
    /// Moves each time the entries are dropped: a lookup that started under an older epoch
    /// may have read a key just revoked, and is not cached.
    epoch: u64,
    entries: HashMap<[u8; 32], (Principal, Instant)>,
}

impl KeyCache {
    pub fn new(store: Store) -> KeyCache {
        KeyCache {
            store,
            started: Instant::now(),
            fresh_until_ns: AtomicU64::new(0),
            refresh: tokio::sync::Mutex::new(()),
            state: Mutex::new(Cached::default()),
        }
    }

    /// The principal of an active key, or `None` for an unknown or revoked one: what
    /// [`Store::authenticate`] answers, from memory while no key changed.
    pub async fn authenticate(&self, secret: &str) -> Result<Option<Principal>, StoreError> {
        self.make_fresh().await?;
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let epoch = {
            let state = self.state.lock().expect("the key cache lock");
            if let Some((principal, at)) = state.entries.get(&digest) {
                if at.elapsed() < ENTRY_LIFE {
                    return Ok(Some(principal.clone()));
                }
            }
            state.epoch
        };
        let found = self.store.authenticate(secret).await?;
        if let Some(principal) = &found {
            let mut state = self.state.lock().expect("the key cache lock");
            if state.epoch == epoch {
                if state.entries.len() >= MAX_ENTRIES {
                    state.entries.clear();
                }
                state
                    .entries
                    .insert(digest, (principal.clone(), Instant::now()));
            }
        }
        Ok(found)
    }

    fn now_ns(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    /// Re-reads `key_changes` if the last read is older than [`FRESHNESS`], dropping the
    /// entries when a key changed since.
    async fn make_fresh(&self) -> Result<(), StoreError> {
        if self.now_ns() < self.fresh_until_ns.load(Ordering::Acquire) {
            return Ok(());
        }
        let _reading = self.refresh.lock().await;
        // Another request may have read it while this one waited.
        if self.now_ns() < self.fresh_until_ns.load(Ordering::Acquire) {
            return Ok(());
        }
        // Trusted from before the read was sent, never from when it answered.
        let asked_at = self.now_ns();
        let version = self.store.keys_version().await?;
        {
            let mut state = self.state.lock().expect("the key cache lock");
            if state.version != Some(version) {
                state.version = Some(version);
                state.epoch += 1;
                state.entries.clear();
            }
        }
        self.fresh_until_ns
            .store(asked_at + FRESHNESS.as_nanos() as u64, Ordering::Release);
        Ok(())
    }
}

impl Store {
    /// Moves on every change to `api_keys` (a trigger, in the changing transaction).
    pub async fn keys_version(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT version FROM key_changes WHERE id = 1")
                .fetch_one(&self.pool)
                .await?,
        )
    }
}
