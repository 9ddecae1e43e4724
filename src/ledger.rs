//! The command path: load a task's history, let the aggregate decide, record the decision.
//!
//! Recording goes through one committer task per process that drains every decided command
//! waiting at that moment into a single transaction (group commit): under load one commit
//! carries many commands, so throughput is not capped at one fsync per command. A command
//! that lost a race on its task is decided again on fresh state, a bounded number of times.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use taskledger_events::{Actor, EventEnvelope, TaskEvent, GENESIS_HASH};
use taskledger_projections::{fold_all, TaskView};
use tokio::sync::{mpsc, oneshot, watch, Mutex};
use uuid::Uuid;

use crate::domain::{CreateTask, TaskAction, TaskCommand, TaskError, TaskId};
use crate::metrics::Metrics;
use crate::store::{
    CommandWrite, Committed, IdempotencyWrite, PlatformCreate, Store, StoreError, WriteError,
};

mod snapshot;

use snapshot::Current;
pub use snapshot::{view_of_snapshot, SNAPSHOT_EVERY};

/// How often a command is decided again after losing a race on its task.
const MAX_ATTEMPTS: usize = 16;

/// Commands on one task are decided one at a time within a process (striped locks), so
/// group commit never batches two decisions made on the same version; races with other
/// processes remain, and are retried.
const TASK_LOCK_STRIPES: usize = 1024;

/// Who asked, for the envelope of every event the command records.
#[derive(Debug, Clone)]
pub struct CommandContext {
    pub actor: Actor,
    pub request_id: Option<String>,
}

/// A cause kept for the logs; never shown to a client.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How the ledger records.
#[derive(Debug, Clone)]
pub struct LedgerSettings {
    /// The most commands one append transaction may carry (group commit).
    pub max_batch: usize,
    /// The largest record the event stream takes (`KAFKA_MESSAGE_MAX_BYTES`), checked whether
    /// or not a relay runs: an event that could never be published is never recorded.
    pub max_event_bytes: usize,
}

impl Default for LedgerSettings {
    fn default() -> Self {
        LedgerSettings {
            max_batch: 256,
            max_event_bytes: 1_000_000,
        }
    }
}

impl LedgerSettings {
    /// The defaults, with `max_batch` commands per transaction.
    pub fn with_max_batch(max_batch: usize) -> LedgerSettings {
        LedgerSettings {
            max_batch,
            ..LedgerSettings::default()
        }
    }
}

/// Context for an internal failure, with its cause as the source. The cause is also in the
/// text, so a log line that prints only this error still shows it.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct Failed {
    what: String,
    #[source]
    source: BoxError,
}

impl Failed {
    pub fn new(what: impl Into<String>, source: impl Into<BoxError>) -> Failed {
        Failed {
            what: what.into(),
            source: source.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Rejected(#[from] TaskError),
    #[error("The unique_id (\"{unique_id}\") is already used for a different task ({task_id}).")]
    UniqueIdTaken { unique_id: String, task_id: String },
    #[error("the task is being changed by too many concurrent requests; retry")]
    Contended,
    #[error(
        "The task's event would be {size} bytes, over the event stream's limit of {limit} \
         bytes (KAFKA_MESSAGE_MAX_BYTES); make the attachment, params or metadata smaller."
    )]
    EventTooLarge { size: usize, limit: usize },
    /// The request's `Idempotency-Key` claim was taken over by a retry (or already answered)
    /// before this command could record its answer: only the current holder may.
    #[error("A request with this Idempotency-Key is still being processed; retry shortly.")]
    IdempotencyClaimLost,
    #[error("the ledger store is unavailable")]
    Unavailable(#[source] BoxError),
    #[error("internal error")]
    Internal(#[source] BoxError),
}

impl From<StoreError> for LedgerError {
    fn from(e: StoreError) -> Self {
        if e.is_unavailable() {
            LedgerError::Unavailable(e.into())
        } else {
            LedgerError::Internal(e.into())
        }
    }
}

impl LedgerError {
    fn internal(what: impl Into<String>, source: impl Into<BoxError>) -> LedgerError {
        LedgerError::Internal(Failed::new(what, source).into())
    }
}

enum CommitFailure {
    Refused(WriteError),
    Store(LedgerError),
}

struct Job {
    write: CommandWrite,
    reply: oneshot::Sender<Result<Committed, CommitFailure>>,
}

#[derive(Clone)]
pub struct Ledger {
    store: Store,
    committer: mpsc::Sender<Job>,
    task_locks: Arc<Vec<Mutex<()>>>,
    metrics: Metrics,
    commits: watch::Sender<u64>,
    max_event_bytes: usize,
}

impl Ledger {
    /// Starts the committer; it stops when the last `Ledger` clone is dropped. Commands and
    /// appends are counted in `metrics`.
    pub fn start(store: Store, settings: LedgerSettings, metrics: Metrics) -> Ledger {
        let max_batch = settings.max_batch.max(1);
        let (tx, rx) = mpsc::channel(max_batch * 4);
        let (commits, _) = watch::channel(0u64);
        tokio::spawn(run_committer(
            store.clone(),
            rx,
            max_batch,
            metrics.clone(),
            commits.clone(),
        ));
        Ledger {
            store,
            committer: tx,
            task_locks: Arc::new((0..TASK_LOCK_STRIPES).map(|_| Mutex::new(())).collect()),
            metrics,
            commits,
            max_event_bytes: settings.max_event_bytes,
        }
    }

    /// Changes after every commit that appended events, so the readers of the global order in
    /// this process (relay, callback reactor) need not wait for their next poll.
    pub fn commits(&self) -> watch::Receiver<u64> {
        self.commits.subscribe()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Creates a task with a fresh id.
    pub async fn create(
        &self,
        ctx: &CommandContext,
        create: CreateTask,
        idempotency: Option<IdempotencyWrite>,
    ) -> Result<Committed, LedgerError> {
        self.create_placed(ctx, create, idempotency, Vec::new())
            .await
    }

    /// Creates a task with a fresh id, with the project and batch it names that do not exist
    /// yet, in one transaction.
    pub async fn create_placed(
        &self,
        ctx: &CommandContext,
        mut create: CreateTask,
        idempotency: Option<IdempotencyWrite>,
        placement: Vec<PlatformCreate>,
    ) -> Result<Committed, LedgerError> {
        // The ledger the command acts in decides the mode, so no route can forget it.
        create.is_test = taskledger_events::is_test_ledger(&ctx.actor.account_id);
        self.observed("create", async {
            let command = TaskCommand::new(ctx.actor.scope, TaskAction::Create(create));
            for _ in 0..MAX_ATTEMPTS {
                // A new id on every attempt: the only conflict a create can meet is an id clash.
                let task_id = TaskId::generate();
                match self
                    .attempt(
                        ctx,
                        &task_id,
                        command.clone(),
                        idempotency.clone(),
                        placement.clone(),
                    )
                    .await?
                {
                    Some(done) => return Ok(done),
                    None => continue,
                }
            }
            Err(LedgerError::Contended)
        })
        .await
    }

    /// Runs a command against an existing task of the caller's account.
    pub async fn execute(
        &self,
        ctx: &CommandContext,
        task_id: &TaskId,
        command: TaskCommand,
        idempotency: Option<IdempotencyWrite>,
    ) -> Result<Committed, LedgerError> {
        self.observed(command.action.name(), async {
            let stripe = {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                task_id.hash(&mut hasher);
                hasher.finish() as usize % TASK_LOCK_STRIPES
            };
            let _serialized = self.task_locks[stripe].lock().await;
            for attempt in 0..MAX_ATTEMPTS {
                if let Some(done) = self
                    .attempt(
                        ctx,
                        task_id,
                        command.clone(),
                        idempotency.clone(),
                        Vec::new(),
                    )
                    .await?
                {
                    return Ok(done);
                }
                // Another process won the race; back off a little, with jitter, before
                // re-deciding.
                let ceiling = 1u64 << attempt.min(6);
                let pause = rand::random_range(0..=ceiling);
                tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            }
            Err(LedgerError::Contended)
        })
        .await
    }

    /// Runs a command to its end and counts its outcome under the command's name.
    async fn observed(
        &self,
        name: &'static str,
        run: impl std::future::Future<Output = Result<Committed, LedgerError>>,
    ) -> Result<Committed, LedgerError> {
        let result = run.await;
        self.metrics.observe_command(name, command_outcome(&result));
        result
    }

    /// One decide-and-record round; `None` when the task moved on meanwhile.
    async fn attempt(
        &self,
        ctx: &CommandContext,
        task_id: &TaskId,
        command: TaskCommand,
        idempotency: Option<IdempotencyWrite>,
        placement: Vec<PlatformCreate>,
    ) -> Result<Option<Committed>, LedgerError> {
        let current = if command.is_create() {
            Current::default()
        } else {
            self.current(&ctx.actor.account_id, task_id).await?
        };
        let mut task = current.task.clone();
        let sink = EventSink::default();
        task.handle(command, &(), &sink).await?;
        let decided: Vec<TaskEvent> = sink.collect().await.into_iter().map(|e| e.0).collect();
        let size = largest_record(ctx, task_id, &decided);
        if size > self.max_event_bytes {
            return Err(LedgerError::EventTooLarge {
                size,
                limit: self.max_event_bytes,
            });
        }
        // The task-state record this command would publish must fit in one Kafka record too.
        let size = crate::task_state::record_size(&current.view, task_id.as_str(), &decided);
        if size > self.max_event_bytes {
            return Err(LedgerError::EventTooLarge {
                size,
                limit: self.max_event_bytes,
            });
        }
        let write = CommandWrite {
            account_id: ctx.actor.account_id.clone(),
            task_id: task_id.to_string(),
            actor: ctx.actor.clone(),
            request_id: ctx.request_id.clone(),
            expected_sequence: current.sequence,
            prev_hash: current.hash.clone(),
            prior_view: current.view.clone(),
            events: decided,
            idempotency,
            placement: placement
                .into_iter()
                .map(|create| create.by_task(task_id.as_str()))
                .collect(),
        };
        let result = self.submit(write).await;
        if let Ok(committed) = &result {
            self.keep_snapshot(&ctx.actor.account_id, task_id, current, committed)
                .await;
        }
        match result {
            Ok(committed) => Ok(Some(committed)),
            Err(CommitFailure::Refused(WriteError::Conflict)) => Ok(None),
            Err(CommitFailure::Refused(WriteError::UniqueIdTaken { unique_id, task_id })) => {
                Err(LedgerError::UniqueIdTaken { unique_id, task_id })
            }
            Err(CommitFailure::Refused(WriteError::Projection(e))) => Err(LedgerError::internal(
                format!("task {task_id} does not fold after the command"),
                e,
            )),
            Err(CommitFailure::Refused(
                e @ (WriteError::BatchClosed { .. } | WriteError::Placement(_)),
            )) => Err(LedgerError::Rejected(TaskError::Invalid(e.to_string()))),
            Err(CommitFailure::Refused(WriteError::IdempotencyClaimLost)) => {
                Err(LedgerError::IdempotencyClaimLost)
            }
            Err(CommitFailure::Store(e)) => Err(e),
        }
    }

    async fn submit(&self, write: CommandWrite) -> Result<Committed, CommitFailure> {
        let (reply, answer) = oneshot::channel();
        let stopped =
            || CommitFailure::Store(LedgerError::Unavailable("the committer stopped".into()));
        self.committer
            .send(Job { write, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// The task as it stood at `as_of`, rebuilt from its events; `None` if it did not exist.
    pub async fn task_as_of(
        &self,
        account_id: &str,
        task_id: &TaskId,
        as_of: DateTime<Utc>,
    ) -> Result<Option<TaskView>, LedgerError> {
        let history = self
            .store
            .task_events(account_id, task_id.as_str(), Some(as_of.timestamp_micros()))
            .await?;
        let events = decode_all(&history)?;
        fold_all(
            task_id.as_str(),
            history.iter().map(|e| e.recorded_at).zip(events.iter()),
        )
        .map_err(|e| LedgerError::internal(format!("task {task_id} does not fold"), e))
    }
}

fn decode_all(history: &[EventEnvelope]) -> Result<Vec<TaskEvent>, LedgerError> {
    history
        .iter()
        .map(|e| {
            e.event().map_err(|err| {
                LedgerError::internal(format!("event {} does not decode", e.event_id), err)
            })
        })
        .collect()
}

/// The size of the largest record the relay would publish for `events`: each one's envelope
/// JSON, with placeholders as long as the ids, positions and hashes the store will assign
/// (positions at their widest), plus the key and a margin for headers and framing.
fn largest_record(ctx: &CommandContext, task_id: &TaskId, events: &[TaskEvent]) -> usize {
    events
        .iter()
        .map(|event| {
            let envelope = EventEnvelope {
                event_id: Uuid::nil(),
                event_type: event.event_type().to_string(),
                event_version: event.event_version(),
                task_id: task_id.to_string(),
                account_id: ctx.actor.account_id.clone(),
                sequence: i64::MAX,
                global_position: i64::MAX,
                recorded_at: Utc::now(),
                actor: ctx.actor.clone(),
                request_id: ctx.request_id.clone(),
                payload: event.payload(),
                prev_hash: GENESIS_HASH.to_string(),
                hash: GENESIS_HASH.to_string(),
                hash_version: taskledger_events::CURRENT_HASH_VERSION,
                is_test: taskledger_events::is_test_ledger(&ctx.actor.account_id),
            };
            crate::kafka::record_size(&envelope)
        })
        .max()
        .unwrap_or(0)
}

/// The events a committed transaction appended, for the metrics.
fn appended(results: &[Result<Committed, WriteError>]) -> usize {
    results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|c| c.envelopes.len())
        .sum()
}

async fn run_committer(
    store: Store,
    mut jobs: mpsc::Receiver<Job>,
    max_batch: usize,
    metrics: Metrics,
    commits: watch::Sender<u64>,
) {
    let mut batch = Vec::with_capacity(max_batch);
    while jobs.recv_many(&mut batch, max_batch).await > 0 {
        let writes: Vec<CommandWrite> = batch.iter().map(|j| j.write.clone()).collect();
        // Observed per transaction attempted, so the one-by-one retries below count as
        // transactions of one: they are what the database actually saw.
        metrics.observe_batch(writes.len());
        match store.commit_batch(writes).await {
            Ok(results) => {
                let events = appended(&results);
                metrics.observe_events_appended(events);
                if events > 0 {
                    commits.send_modify(|n| *n += 1);
                }
                for (job, result) in batch.drain(..).zip(results) {
                    let _ = job.reply.send(result.map_err(CommitFailure::Refused));
                }
            }
            Err(e) if batch.len() == 1 => {
                tracing::error!(error = %e, "append transaction failed");
                let job = batch.pop().expect("one job");
                let _ = job.reply.send(Err(CommitFailure::Store(e.into())));
            }
            Err(e) if e.is_unavailable() => {
                // The connection failed, perhaps at COMMIT with the batch committed: running
                // its commands again could apply them twice. Each gets a 503; a retry with
                // its Idempotency-Key finds the answer if the batch did commit.
                tracing::error!(error = %e, size = batch.len(), "append transaction failed");
                let cause = Arc::new(e);
                for job in batch.drain(..) {
                    let _ = job
                        .reply
                        .send(Err(CommitFailure::Store(LedgerError::Unavailable(
                            Box::new(cause.clone()),
                        ))));
                }
            }
            Err(e) => {
                // One command may have broken the shared transaction: commit each alone so
                // only the guilty one fails.
                tracing::warn!(error = %e, size = batch.len(), "batch failed; retrying one by one");
                metrics.observe_append_fallback();
                for job in batch.drain(..) {
                    metrics.observe_batch(1);
                    let result = match store.commit_batch(vec![job.write.clone()]).await {
                        Ok(mut results) => {
                            let events = appended(&results);
                            metrics.observe_events_appended(events);
                            if events > 0 {
                                // The followers (relay, callbacks) need not wait for their poll.
                                commits.send_modify(|n| *n += 1);
                            }
                            results
                                .pop()
                                .expect("one result")
                                .map_err(CommitFailure::Refused)
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "append transaction failed");
                            Err(CommitFailure::Store(e.into()))
                        }
                    };
                    let _ = job.reply.send(result);
                }
            }
        }
    }
}

impl LedgerError {
    /// The metrics `outcome` label of a command that failed this way.
    pub fn outcome(&self) -> &'static str {
        match self {
            LedgerError::Rejected(_) | LedgerError::EventTooLarge { .. } => "rejected",
            LedgerError::UniqueIdTaken { .. } | LedgerError::IdempotencyClaimLost => "conflict",
            LedgerError::Contended | LedgerError::Unavailable(_) | LedgerError::Internal(_) => {
                "error"
            }
        }
    }
}

/// The metrics `outcome` label of a command's result: `noop` separates accepted commands that
/// changed nothing (the same metadata again, cancelling a canceled task) from those that
/// appended events.
fn command_outcome(result: &Result<Committed, LedgerError>) -> &'static str {
    match result {
        Ok(committed) if committed.envelopes.is_empty() => "noop",
        Ok(_) => "ok",
        Err(e) => e.outcome(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_failure_keeps_its_cause_as_the_source_not_in_the_text() {
        let e: LedgerError = StoreError::UnsupportedUrl("mysql://x".into()).into();
        assert!(matches!(e, LedgerError::Internal(_)), "{e:?}");
        assert_eq!(e.to_string(), "internal error");
        let source = std::error::Error::source(&e).expect("the cause is the source");
        assert!(source.to_string().contains("mysql://x"), "{source}");
    }

    #[test]
    fn an_internal_failure_with_context_chains_its_cause() {
        let e = LedgerError::internal("task t does not fold", "no TaskCreated first");
        let context = std::error::Error::source(&e).expect("the context");
        assert!(context.to_string().starts_with("task t does not fold"));
        let cause = context.source().expect("the cause");
        assert_eq!(cause.to_string(), "no TaskCreated first");
    }
}
