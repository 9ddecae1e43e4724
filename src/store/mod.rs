//! The event store: PostgreSQL in production, SQLite embedded. Both speak through sqlx's Any
//! driver with the same SQL (integer times, text payloads), so every invariant is implemented
//! once; only the migrations (triggers) and connection set-up differ per backend.

mod append;
mod callbacks;
mod counts;
mod follow;
mod idempotency;
mod key_cache;
mod key_events;
mod keys;
mod lease;
mod list;
mod merkle;
mod platform;
mod projection;
mod read;
mod rebuild;
mod search;
mod snapshots;
mod sql;
mod stream;
mod verify;

pub use append::{AppendTx, CommandWrite, Committed, IdempotencyWrite, WriteError};
pub use callbacks::{Backlog, Delivery, DeliveryState, DueDelivery};
pub use follow::NextEvent;
pub use idempotency::{ClaimToken, Claimant, IdempotencyRecord, IdempotencyState};
pub use key_cache::KeyCache;
pub use key_events::KeyRecord;
pub use keys::{ApiKey, Principal};
pub use lease::Leadership;
pub use list::{ListPage, ListQuery};
pub use merkle::{ChangedLeaves, RecomputedTree, TreeHead};
pub use platform::{
    BatchQuery, BatchRecord, Placement, PlatformActor, PlatformCreate, PlatformWriteError,
    ProjectRecord, BATCH_STREAM_PREFIX,
};
pub use rebuild::{RebuildReport, REPLAY_LOCK};
pub use search::EventFilter;
pub use snapshots::TaskTail;
pub use stream::HistoryRange;
pub use verify::{VerifyFailure, VerifyReport, VERIFY_NAMED_MAX};

use std::str::FromStr;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions, Executor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database is unreachable or failed: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL {0:?}: use postgres://... or sqlite://...")]
    UnsupportedUrl(String),
    #[error("stored event {event_id} is corrupt: {message}")]
    Corrupt { event_id: String, message: String },
    /// A new event's payload does not parse back from its canonical text (nested deeper than
    /// the JSON parser allows): the edge's limits keep such input out.
    #[error("the events of task {task_id} cannot be encoded: {message}")]
    Unencodable { task_id: String, message: String },
    /// A stored key names no known scope: refused rather than guessed, since a guess could
    /// grant what the key never had.
    #[error("API key {key_id} has an unknown scope {scope:?}")]
    CorruptKey { key_id: String, scope: String },
    /// Another `replay` is rebuilding the projections: two would share the shadow tables.
    #[error("another replay is running on this database; wait for it to finish")]
    ReplayRunning,
    /// An account's stored Merkle tree cannot be read back (`replay` rebuilds it).
    #[error("the Merkle tree of account {account_id} is corrupt: {message}")]
    CorruptTree { account_id: String, message: String },
}

impl StoreError {
    /// The database cannot be reached or is refusing connections (as opposed to rejecting
    /// what was asked): the API answers 503 and a retry may succeed.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Database(
                sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::WorkerCrashed,
            ) => true,
            StoreError::Database(sqlx::Error::Database(e)) => {
                let code = e.code().unwrap_or_default();
                // PostgreSQL: connection exceptions (08), insufficient resources (53),
                // operator intervention such as a shutdown (57), and "not currently
                // accepting connections" (55000). SQLite: busy or locked past the timeout.
                code.starts_with("08")
                    || code.starts_with("53")
                    || code.starts_with("57")
                    || code == "55000"
                    || matches!(code.as_ref(), "5" | "6" | "261" | "517")
            }
            _ => false,
        }
    }
}

/// A handle on the ledger database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Whether appends maintain the accounts' Merkle trees: always, except in the benchmark
    /// that measures what the trees cost ([`Store::without_merkle_trees`]).
    merkle_trees: bool,
    /// The largest Kafka record a project or batch event may become
    /// ([`Store::with_max_record_bytes`]).
    max_record_bytes: usize,
    /// The ledger head (last position, its recorded_at) as this process last committed it:
    /// on PostgreSQL an append takes the head in its BEGIN statement while it is still so.
    head: std::sync::Arc<std::sync::Mutex<append::KnownHead>>,
    /// The accounts' Merkle tree heads as this process last wrote them (a guess the append
    /// checks, sparing it their read).
    frontiers: std::sync::Arc<std::sync::Mutex<merkle::KnownFrontiers>>,
    /// Events read to find where tasks stood before a relay batch ([`Store::task_state_events_read`]).
    task_state_reads: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// On PostgreSQL, a native pool (connected on first use) for what the Any driver
    /// cannot do: `COPY` into the shadow tables a replay fills.
    native: Option<sqlx::PgPool>,
}

static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

impl Store {
    /// Connects without migrating. `postgres://...` or `sqlite://path` (created if missing).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_string()));
        };
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rwc")
            }
            _ => url.to_string(),
        };
        let options = AnyConnectOptions::from_str(&url)?
            .log_statements(tracing::log::LevelFilter::Trace)
            .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1));
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers run beside the single writer; the busy timeout makes
                        // a second writer (replay, the CLI) wait instead of failing.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA busy_timeout = 30000").await?;
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        let native = match backend {
            Backend::Postgres => Some(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(2)
                    .connect_lazy(&url)?,
            ),
            Backend::Sqlite => None,
        };
        Ok(Store {
            pool,
            backend,
            merkle_trees: true,
            max_record_bytes: 1_000_000,
            head: Default::default(),
            frontiers: Default::default(),
            task_state_reads: Default::default(),
            native,
        })
    }

    /// Connects and brings the schema up to date (safe to run from several processes at once).
    pub async fn open(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        let store = Store::connect(url, max_connections).await?;
        store.migrate().await?;
        Ok(store)
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self.backend {
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&self.pool).await?,
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&self.pool).await?,
        }
        let recorded = self.record_unrecorded_keys().await?;
        if recorded > 0 {
            tracing::info!(
                recorded,
                "recorded the creation of keys made before keys were recorded"
            );
        }
        Ok(())
    }

    /// This store with appends that leave the Merkle trees alone: only for `taskledger bench`,
    /// to measure what the trees cost; a ledger written so fails `verify --digest`.
    pub fn without_merkle_trees(mut self) -> Store {
        self.merkle_trees = false;
        self
    }

    /// This store refusing a project or batch event whose record would exceed `bytes` (the
    /// relay's `KAFKA_MESSAGE_MAX_BYTES`): recorded, it could never be published, and the
    /// relay would stop for every account. Task commands are held to the same limit by the
    /// ledger.
    pub fn with_max_record_bytes(mut self, bytes: usize) -> Store {
        self.max_record_bytes = bytes;
        self
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// For `/readyz`: one round trip to the database.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        if let Some(native) = &self.native {
            native.close().await;
        }
        self.pool.close().await;
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Now, in the microseconds every stored time is kept in.
pub(crate) fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}
