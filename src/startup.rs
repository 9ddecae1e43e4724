//! Builds the running service: store, ledger, HTTP server. Tests build it on port 0.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::callbacks::Reactor;
use crate::config::{DatabaseSettings, ServeSettings};
use crate::http::{self, AppState, HttpSettings};
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::relay::Relay;
use crate::store::Store;

pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    store: Store,
    /// Held while serving a SQLite ledger: one process owns it (relay, callbacks, commits).
    _sqlite_owner: Option<std::fs::File>,
}

impl Application {
    /// Opens (and migrates) the store and binds the listener; nothing is served yet.
    pub async fn build(
        db: &DatabaseSettings,
        serve: &ServeSettings,
    ) -> anyhow::Result<Application> {
        let sqlite_owner = own_sqlite_ledger(&db.database_url)?;
        let store = Store::open(&db.database_url, db.db_connections)
            .await
            .with_context(|| format!("opening the ledger at {}", redact(&db.database_url)))?;
        let listener = TcpListener::bind(&serve.listen)
            .await
            .with_context(|| format!("binding {}", serve.listen))?;
        let metrics = Metrics::new();
        let ledger = Ledger::start_with_metrics(store.clone(), serve.max_batch, metrics.clone());
        match &serve.kafka_brokers {
            Some(brokers) => {
                let relay = Relay::new(
                    store.clone(),
                    brokers.clone(),
                    serve.relay.clone(),
                    metrics.clone(),
                    ledger.commits(),
                );
                tokio::spawn(relay.run());
            }
            None => tracing::info!("KAFKA_BROKERS is not set: the Kafka relay is off"),
        }
        tokio::spawn(Reactor::new(ledger.clone(), serve.callbacks.clone(), metrics.clone()).run());
        tokio::spawn(purge_idempotency_keys(store.clone()));
        let state = AppState::new(
            ledger,
            HttpSettings {
                max_body_bytes: serve.max_body_bytes,
                idempotency_ttl: Duration::from_secs(serve.idempotency_ttl_secs),
            },
        );
        Ok(Application {
            listener,
            router: http::router(state),
            store,
            _sqlite_owner: sqlite_owner,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr(), "taskledger listening");
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
            .context("serving HTTP")?;
        self.store.close().await;
        Ok(())
    }

    /// Serves until SIGTERM or Ctrl-C.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(shutdown_signal()).await
    }
}

/// A SQLite ledger is served by one process: its relay and callback reactor assume no other.
/// An exclusive lock on `<file>.serve-lock` (released when the process ends, however it ends)
/// turns a second `serve` into a clear error instead of two processes sharing the file.
fn own_sqlite_ledger(url: &str) -> anyhow::Result<Option<std::fs::File>> {
    let Some(rest) = url.strip_prefix("sqlite:") else {
        return Ok(None);
    };
    let path = rest.trim_start_matches("//");
    let path = path.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(None);
    }
    let lock_path = format!("{path}.serve-lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {lock_path}"))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another taskledger serve is already using the SQLite ledger {path}; \
             a SQLite ledger is served by one process (use PostgreSQL for several)"
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {lock_path}"))
        }
    }
}

/// Deletes expired Idempotency-Key records once a minute.
async fn purge_idempotency_keys(store: Store) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        match store
            .purge_idempotency_keys(chrono::Utc::now().timestamp_micros())
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "expired idempotency keys purged"),
            Err(e) => tracing::warn!(error = %e, "purging idempotency keys failed"),
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down: draining in-flight requests");
}

/// A database URL without its password, for logs and errors.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}
