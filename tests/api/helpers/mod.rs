//! What the suites share: a database per test (`db`), a served app and its client (`app`),
//! the `taskledger` binary as a process (`process`), and waiting on state (`eventually`).
//! The Kafka broker lives in `kafka`.

pub mod app;
pub mod browser;
pub mod db;
pub mod kafka;
pub mod process;

use std::future::Future;
use std::time::Duration;

pub use app::{keyed, metric_value, spawn_app, spawn_app_with, task_body, Reply, TestApp, CREATE};
pub use db::{
    append_raw_event, assert_ledger_intact, categorization, context, pg_admin_url,
    projection_snapshot, tamper_with_event, TestDb, TestLedger,
};
pub use process::{free_port, ProcessClient, ServerProcess};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// Runs test bodies per backend: those listed under `both` as `postgres::name` and
/// `sqlite::name`, those under `sqlite` as `sqlite::name` only. A suite that only drives the
/// HTTP layer learns nothing more from a second database; one that touches SQL does.
macro_rules! backends {
    (both: [$($both:ident),* $(,)?], sqlite: [$($lite:ident),* $(,)?] $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $both() {
                    super::$both(crate::helpers::Backend::Postgres).await
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $both() {
                    super::$both(crate::helpers::Backend::Sqlite).await
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $lite() {
                    super::$lite(crate::helpers::Backend::Sqlite).await
                }
            )*
        }
    };
}
pub(crate) use backends;

/// Runs each test body on PostgreSQL and on SQLite, as `postgres::name` and `sqlite::name`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        crate::helpers::backends!(both: [$($name),*], sqlite: []);
    };
}
pub(crate) use on_both_backends;

/// Runs each test body on SQLite alone, as `sqlite::name`: for suites that exercise the
/// HTTP layer, whose SQL the both-backend suites already cover.
macro_rules! on_sqlite {
    ($($name:ident),* $(,)?) => {
        crate::helpers::backends!(both: [], sqlite: [$($name),*]);
    };
}
pub(crate) use on_sqlite;

/// A generous bound for [`eventually`]: long enough that a loaded CI machine never reaches
/// it when the system works, short enough that a hang fails instead of stalling the suite.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Polls `check` until it returns `Ok`, and gives back that value. A test waits on state
/// this way instead of sleeping: `timeout` is only an upper bound that turns a hang into a
/// failure naming `what` and the last observation; it is never what a test asserts.
pub async fn eventually<T, E: std::fmt::Debug>(
    timeout: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "gave up after {timeout:?} waiting for {what}; last seen: {last:?}"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// `Ok(())` when `holds`, else the observation to report: the usual body of an
/// [`eventually`] check.
pub fn ok_if<E>(holds: bool, observed: E) -> Result<(), E> {
    if holds {
        Ok(())
    } else {
        Err(observed)
    }
}

/// Runs `future` to its end, failing (naming `what`) if it hangs past `timeout`: for an
/// operation the test expects to finish, where finishing at all is the point.
pub async fn within<T>(timeout: Duration, what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(timeout, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what} did not finish within {timeout:?}"),
    }
}

/// A moment strictly between everything recorded before the call and everything recorded
/// after it, at the microsecond precision the ledger keeps: for `as_of` and time filters.
/// It waits for the clock to move past that moment instead of sleeping a fixed time.
pub async fn a_moment_between() -> chrono::DateTime<chrono::Utc> {
    let before = chrono::Utc::now().timestamp_micros();
    let moment = before + 1;
    eventually(PATIENCE, "the clock to move on", async || {
        let now = chrono::Utc::now().timestamp_micros();
        ok_if(now > moment, now)
    })
    .await;
    chrono::DateTime::from_timestamp_micros(moment).expect("a valid time")
}
