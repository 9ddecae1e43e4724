//! Builds the running service: store, ledger, HTTP server. Tests build it on port 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::body::Body;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;
use tower_http::timeout::TimeoutBody;

use crate::callbacks::Reactor;
use crate::config::{DatabaseSettings, ServeSettings, ServerLimits};
use crate::http::{self, AppState, HttpSettings};
use crate::ledger::{Ledger, LedgerSettings};
use crate::metrics::Metrics;
use crate::relay::Relay;
use crate::store::Store;

pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    store: Store,
    limits: ServerLimits,
    /// Held while serving a SQLite ledger: one process owns it (relay, callbacks, commits).
    _sqlite_owner: Option<std::fs::File>,
}

impl Application {
    /// Opens (and migrates) the store and binds the listener; nothing is served yet.
    pub async fn build(
        db: &DatabaseSettings,
        serve: &ServeSettings,
    ) -> anyhow::Result<Application> {
        serve.callbacks.check()?;
        let sqlite_owner = own_sqlite_ledger(&db.database_url)?;
        let store = Store::open(&db.database_url, db.db_connections)
            .await
            .with_context(|| format!("opening the ledger at {}", redact(&db.database_url)))?
            .with_max_record_bytes(serve.relay.kafka_message_max_bytes);
        store
            .ensure_trees()
            .await
            .context("building the accounts' Merkle trees")?;
        let signing_key_file = serve.audit.signing_key.path(&db.database_url);
        crate::audit::signing::SigningKeys::load_or_create(&signing_key_file)
            .context("preparing the ledger's signing key")?;
        let listener = TcpListener::bind(&serve.listen)
            .await
            .with_context(|| format!("binding {}", serve.listen))?;
        let metrics = Metrics::new();
        let ledger = Ledger::start(
            store.clone(),
            LedgerSettings {
                max_batch: serve.max_batch,
                max_event_bytes: serve.relay.kafka_message_max_bytes,
            },
            metrics.clone(),
        );
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
                tokio::spawn(
                    crate::audit::publish::DigestPublisher {
                        store: store.clone(),
                        brokers: brokers.clone(),
                        topic: serve.audit.kafka_digest_topic.clone(),
                        replication: serve.relay.kafka_replication,
                        interval: Duration::from_secs(serve.audit.digest_interval_secs),
                        key_file: signing_key_file.clone(),
                    }
                    .run(),
                );
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
        )
        .with_signing_key_file(signing_key_file)
        .with_rate_limit(serve.limits.rate_limit());
        Ok(Application {
            listener,
            router: http::router_with_timeout(
                state,
                Some(Duration::from_secs(serve.limits.request_timeout_secs)),
            ),
            store,
            limits: serve.limits.clone(),
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
    ///
    /// hyper is driven directly rather than through `axum::serve` because the protections
    /// against slow and numerous clients live there: a header-read deadline (which needs a
    /// timer), a deadline between the pieces of a request body, and a cap on connections.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr(), "taskledger listening");
        let Application {
            listener,
            router,
            store,
            limits,
            _sqlite_owner,
        } = self;
        let connections = Arc::new(Semaphore::new(limits.max_connections as usize));
        let (stop, stopping) = watch::channel(false);
        // Every connection task holds a clone of `open`; `closed()` resolves once all are gone.
        let (all_closed, open) = watch::channel(());
        tokio::pin!(shutdown);
        loop {
            // A permit before accepting: over the cap, connections wait in the kernel's
            // backlog instead of being accepted and starved.
            let permit = tokio::select! {
                permit = connections.clone().acquire_owned() => {
                    permit.expect("the connection semaphore is never closed")
                }
                () = &mut shutdown => break,
            };
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let connection =
                serve_connection(stream, router.clone(), limits.clone(), stopping.clone());
            let open = open.clone();
            tokio::spawn(async move {
                connection.await;
                drop(permit);
                drop(open);
            });
        }
        drop(listener);
        let _ = stop.send(true);
        drop(open);
        all_closed.closed().await;
        store.close().await;
        drop(_sqlite_owner);
        Ok(())
    }

    /// Serves until SIGTERM or Ctrl-C.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(shutdown_signal()).await
    }
}

/// Serves one connection until the client leaves, a deadline cuts it off, or a graceful stop
/// has let its in-flight request finish.
async fn serve_connection(
    stream: TcpStream,
    router: axum::Router,
    limits: ServerLimits,
    mut stopping: watch::Receiver<bool>,
) {
    let body_timeout = Duration::from_secs(limits.body_read_timeout_secs);
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let request = request.map(|body| Body::new(TimeoutBody::new(body_timeout, body)));
        router.clone().oneshot(request)
    });
    // HTTP/1 only: the clients of the reference API speak it, and hyper's header-read
    // deadline guards only HTTP/1; an auto-detecting server would wait without a deadline
    // for a silent client's first bytes, or hold an idle HTTP/2 connection forever.
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(limits.header_read_timeout_secs))
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let mut draining = false;
    loop {
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stopping.wait_for(|stop| *stop), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
        }
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
            .purge_idempotency_keys(crate::store::now_micros())
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
