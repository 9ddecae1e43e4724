//! Builds the running service: store, ledger, HTTP server. Tests build it on port 0.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::{DatabaseSettings, ServeSettings};
use crate::http::{self, AppState};
use crate::ledger::Ledger;
use crate::store::Store;

pub struct Application {
    listener: TcpListener,
    state: AppState,
}

impl Application {
    /// Opens (and migrates) the store and binds the listener; nothing is served yet.
    pub async fn build(
        db: &DatabaseSettings,
        serve: &ServeSettings,
    ) -> anyhow::Result<Application> {
        let store = Store::open(&db.database_url, db.db_connections)
            .await
            .with_context(|| format!("opening the ledger at {}", redact(&db.database_url)))?;
        let listener = TcpListener::bind(&serve.listen)
            .await
            .with_context(|| format!("binding {}", serve.listen))?;
        if serve.kafka_brokers.is_some() {
            tracing::warn!("KAFKA_BROKERS is set but the relay is not part of this build yet");
        }
        let ledger = Ledger::start(store, serve.max_batch);
        Ok(Application {
            listener,
            state: AppState { ledger },
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
        let router = http::router(self.state.clone());
        axum::serve(self.listener, router)
            .with_graceful_shutdown(shutdown)
            .await
            .context("serving HTTP")?;
        self.state.ledger.store().close().await;
        Ok(())
    }

    /// Serves until SIGTERM or Ctrl-C.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(shutdown_signal()).await
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
