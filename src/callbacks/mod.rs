//! The callback reactor: signed, retried webhook deliveries driven by the event log.
//!
//! A [`scheduler`] (one per ledger, under a lease) follows the global order from a durable
//! checkpoint and records a delivery for every event that warrants one (a task with a
//! `callback_url` completed, errored, or audited by the workforce), with the task as of that
//! event. [`dispatcher`]s (every process) claim due deliveries under a lease, a few per
//! account at a time, POST them ([`net`], [`signing`]), and either record the outcome as an
//! event or schedule the next attempt ([`retry`]). Nothing is held in memory only: a crash or
//! restart resumes from the tables, at least once, and every attempt of a delivery carries
//! the same `refonte-callback-id` so receivers can de-duplicate.
//!
//! No one task can stop the others: an event the scheduler cannot decode is logged and
//! counted, and a delivery it cannot store is recorded as failed for its task; either way the
//! checkpoint moves on.

pub mod dispatcher;
pub mod net;
pub mod retry;
pub mod scheduler;
pub mod signing;

use clap::Args;
use taskledger_events::{Actor, Scope};

use crate::domain::{TaskAction, TaskCommand, TaskId};
use crate::ledger::{CommandContext, Ledger, LedgerError};
use crate::metrics::Metrics;
use crate::store::Delivery;

pub use net::is_forbidden;
pub use retry::RetrySchedule;
pub use signing::signature;

/// Callback settings, from flags or the environment.
#[derive(Debug, Clone, Args)]
pub struct CallbackSettings {
    /// Attempts per delivery before it is recorded as failed.
    #[arg(long, env = "CALLBACK_MAX_ATTEMPTS", default_value_t = 20)]
    pub callback_max_attempts: u32,

    /// The first back-off, in milliseconds; later ones grow geometrically so that all the
    /// attempts span `CALLBACK_RETRY_SPAN_SECS`.
    #[arg(long, env = "CALLBACK_RETRY_BASE_MS", default_value_t = 10_000)]
    pub callback_retry_base_ms: u64,

    /// How long the whole retry schedule lasts, in seconds.
    #[arg(long, env = "CALLBACK_RETRY_SPAN_SECS", default_value_t = 24 * 60 * 60)]
    pub callback_retry_span_secs: u64,

    /// Time allowed for one attempt, in milliseconds: resolving the host, connecting, and the
    /// answer.
    #[arg(long, env = "CALLBACK_TIMEOUT_MS", default_value_t = 10_000)]
    pub callback_timeout_ms: u64,

    /// Allow callbacks to loopback, private and link-local addresses (tests, laptops).
    #[arg(long, env = "CALLBACK_ALLOW_PRIVATE_NETWORKS", default_value_t = false, action = clap::ArgAction::Set)]
    pub callback_allow_private_networks: bool,

    /// Deliveries attempted at once by this process.
    #[arg(long, env = "CALLBACK_CONCURRENCY", default_value_t = 16)]
    pub callback_concurrency: usize,

    /// Deliveries of one account attempted at once by this process. Keep it below
    /// `CALLBACK_CONCURRENCY`: the difference is what the other accounts keep when one
    /// account's receivers hang.
    #[arg(long, env = "CALLBACK_ACCOUNT_CONCURRENCY", default_value_t = 4)]
    pub callback_account_concurrency: usize,
}

impl CallbackSettings {
    /// Refuses settings the dispatcher's fairness cannot honour: one account allowed more
    /// attempts at once than the whole process would leave the other accounts nothing.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.callback_account_concurrency <= self.callback_concurrency,
            "CALLBACK_ACCOUNT_CONCURRENCY ({}) must not exceed CALLBACK_CONCURRENCY ({}): \
             one account's attempts are a share of the process's",
            self.callback_account_concurrency,
            self.callback_concurrency
        );
        Ok(())
    }
}

/// The scheduler and this process's dispatcher.
pub struct Reactor {
    scheduler: scheduler::Scheduler,
    dispatcher: dispatcher::Dispatcher,
}

impl Reactor {
    pub fn new(ledger: Ledger, settings: CallbackSettings, metrics: Metrics) -> Reactor {
        Reactor {
            scheduler: scheduler::Scheduler::new(ledger.clone(), metrics.clone()),
            dispatcher: dispatcher::Dispatcher::new(ledger, settings, metrics),
        }
    }

    /// Runs the scheduler and the dispatcher until the process ends.
    pub async fn run(self) {
        let scheduler = tokio::spawn(self.scheduler.run());
        self.dispatcher.run().await;
        scheduler.abort();
    }
}

/// How recording a delivery's outcome in its task's history went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recorded {
    /// The event was appended.
    Appended,
    /// It was there already (a repeat after a crash): nothing appended.
    Already,
    /// Not recorded, for now: the store is unavailable or the task contended. Try again.
    Later,
    /// Not recorded, and trying again will not help (logged at error level).
    Never,
}

/// Records a delivery's outcome as an event of its task, as the system.
async fn record(ledger: &Ledger, delivery: &Delivery, action: TaskAction) -> Recorded {
    // A batch's completion callback: its outcome stays in the delivery table (a batch's
    // stream records only what happens to the batch).
    if delivery
        .task_id
        .starts_with(crate::store::BATCH_STREAM_PREFIX)
    {
        return Recorded::Already;
    }
    let Some(task_id) = TaskId::parse(&delivery.task_id) else {
        tracing::error!(task_id = %delivery.task_id, delivery_id = %delivery.delivery_id, "a delivery names no valid task; its outcome cannot be recorded");
        return Recorded::Never;
    };
    let ctx = CommandContext {
        actor: Actor {
            account_id: delivery.account_id.clone(),
            key_id: None,
            scope: Scope::System,
        },
        request_id: Some(format!("callback-{}", delivery.delivery_id)),
    };
    match ledger
        .execute(
            &ctx,
            &task_id,
            TaskCommand::new(Scope::System, action),
            None,
        )
        .await
    {
        Ok(committed) if committed.envelopes.is_empty() => Recorded::Already,
        Ok(_) => Recorded::Appended,
        Err(e @ (LedgerError::Unavailable(..) | LedgerError::Contended)) => {
            tracing::warn!(error = %e, delivery_id = %delivery.delivery_id, "recording a callback outcome failed; it will be retried");
            Recorded::Later
        }
        Err(e) => {
            tracing::error!(error = %e, delivery_id = %delivery.delivery_id, "recording a callback outcome failed for good");
            Recorded::Never
        }
    }
}
