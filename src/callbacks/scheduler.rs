//! The scheduler: follows the global order and records one delivery per event that
//! warrants a callback.
//!
//! It never stops on one task's data. An event it cannot read or decode (or a task it cannot
//! rebuild) is logged at error level and counted in
//! `taskledger_callback_undecodable_events_total`; a delivery it cannot store (a URL the
//! database refuses, such as one holding NUL) is recorded for its task as `CallbackFailed`.
//! Either way the checkpoint moves on. Only a store that is unavailable makes it wait and
//! read the same events again (scheduling is idempotent).

use serde_json::{json, Value};
use taskledger_events::{AuditSource, EventEnvelope, TaskEvent};
use taskledger_projections::TaskView;

use super::{record, Recorded};
use crate::domain::TaskAction;
use crate::follower::Follower;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::store::{Delivery, Store, StoreError};
use crate::task_state::TaskStates;

const READER: &str = "callbacks";
const BATCH: i64 = 200;

/// Recorded in the task's history when its callback URL holds NUL, which no database column
/// can hold and no receiver can be reached at.
pub const URL_HOLDS_NUL: &str =
    "the callback_url cannot be delivered to: it contains a NUL character";

/// Recorded when storing the delivery failed for a reason retrying will not fix.
pub const CANNOT_SCHEDULE: &str =
    "the callback could not be scheduled: the ledger refused to store it";

pub struct Scheduler {
    follower: Follower,
    ledger: Ledger,
    metrics: Metrics,
}

impl Scheduler {
    pub fn new(ledger: Ledger, metrics: Metrics) -> Scheduler {
        Scheduler {
            follower: Follower::new(ledger.store().clone(), READER, ledger.commits()),
            ledger,
            metrics,
        }
    }

    fn store(&self) -> &Store {
        self.follower.store()
    }

    pub async fn run(mut self) {
        loop {
            let mut lease = self.follower.lead().await;
            while lease.still_held().await {
                match self.schedule_next().await {
                    Ok(0) => self.follower.idle().await,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "callback scheduler retrying");
                        self.follower.pause().await;
                    }
                }
            }
        }
    }

    /// Schedules the deliveries of the next events after the checkpoint; returns how many
    /// events it moved past.
    async fn schedule_next(&self) -> Result<usize, Unavailable> {
        let events = match self.follower.next_batch(BATCH).await {
            Ok(events) => events,
            // One row of the batch cannot even be read: go one event at a time to it.
            Err(StoreError::Corrupt { .. }) => return self.step_one().await,
            Err(e) => return Err(e.into()),
        };
        let Some(last) = events.last().map(|e| e.global_position) else {
            return Ok(0);
        };
        for envelope in &events {
            self.handle(envelope).await?;
        }
        self.follower.advance(last).await?;
        Ok(events.len())
    }

    /// Handles the next event alone; an event too corrupt to read is logged, counted, and
    /// stepped over.
    async fn step_one(&self) -> Result<usize, Unavailable> {
        let checkpoint = self.follower.checkpoint().await?;
        match self.store().events_after(checkpoint, 1, None).await {
            Ok(events) => {
                for envelope in &events {
                    self.handle(envelope).await?;
                    self.follower.advance(envelope.global_position).await?;
                }
                Ok(events.len())
            }
            Err(StoreError::Corrupt { event_id, message }) => {
                let Some(next) = self.store().next_event_after(checkpoint).await? else {
                    return Ok(0);
                };
                let position = next.global_position;
                tracing::error!(
                    %event_id,
                    global_position = position,
                    error = %message,
                    "the callback scheduler cannot read an event; no callback is scheduled for it"
                );
                self.metrics.observe_callback_undecodable_event();
                self.follower.advance(position).await?;
                Ok(1)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn handle(&self, envelope: &EventEnvelope) -> Result<(), Unavailable> {
        if envelope.event_type == "BatchCompleted" {
            return self.batch_completed(envelope).await;
        }
        // An API key's or project's events, and a batch's others, schedule nothing.
        if taskledger_events::LedgerEvent::is_other_stream_type(&envelope.event_type) {
            return Ok(());
        }
        let event = match envelope.event() {
            Ok(event) => event,
            Err(e) => {
                self.undecodable(envelope, &e.to_string());
                return Ok(());
            }
        };
        let due = match event {
            TaskEvent::TaskCompleted(_) | TaskEvent::TaskErrored(_) => true,
            TaskEvent::TaskAudited(a) => a.audit_source == AuditSource::Refonte,
            _ => false,
        };
        if !due {
            return Ok(());
        }
        let Some(view) = self.task_as_of(envelope).await? else {
            return Ok(());
        };
        let Some(url) = view.callback_url.clone() else {
            return Ok(());
        };
        let body = json!({
            "task": view,
            "response": view.response.clone().unwrap_or(Value::Null),
            "task_id": view.task_id,
        });
        let delivery = Delivery {
            delivery_id: envelope.event_id.to_string(),
            account_id: envelope.account_id.clone(),
            task_id: envelope.task_id.clone(),
            for_sequence: envelope.sequence,
            url,
            body: body.to_string(),
            attempts: 0,
            created_at_us: 0,
            lease_until_us: None,
        };
        if delivery.url.contains('\0') {
            return self.refuse(&delivery, URL_HOLDS_NUL).await;
        }
        match self.store().schedule_delivery(&delivery).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_unavailable() => Err(e.into()),
            Err(e) => {
                tracing::error!(
                    error = %e,
                    delivery_id = %delivery.delivery_id,
                    task_id = %delivery.task_id,
                    "storing a callback delivery failed; recording it as failed for its task"
                );
                self.refuse(&delivery, CANNOT_SCHEDULE).await
            }
        }
    }

    /// Schedules the completed batch's `callback`, if it has one: `{batch, status, counts}`,
    /// delivered, signed and retried like a task's.
    async fn batch_completed(&self, envelope: &EventEnvelope) -> Result<(), Unavailable> {
        let batch = match self.store().batch_of_stream(&envelope.task_id).await {
            Ok(batch) => batch,
            Err(e) if e.is_unavailable() => return Err(e.into()),
            Err(e) => {
                self.undecodable(envelope, &e.to_string());
                return Ok(());
            }
        };
        let Some(batch) = batch else {
            return Ok(());
        };
        let Some(url) = batch.callback.clone() else {
            return Ok(());
        };
        let body = json!({
            "batch": batch.name,
            "project": batch.project,
            "status": "completed",
            "counts": envelope.payload,
        });
        let delivery = Delivery {
            delivery_id: envelope.event_id.to_string(),
            account_id: envelope.account_id.clone(),
            task_id: envelope.task_id.clone(),
            for_sequence: envelope.sequence,
            url,
            body: body.to_string(),
            attempts: 0,
            created_at_us: 0,
            lease_until_us: None,
        };
        match self.store().schedule_delivery(&delivery).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_unavailable() => Err(e.into()),
            Err(e) => {
                tracing::error!(error = %e, batch = %envelope.task_id, "storing a batch callback failed");
                Ok(())
            }
        }
    }

    /// The task as of `envelope`, or `None` (logged and counted) when its history cannot be
    /// decoded or folded. Folded from the task's newest snapshot before the event, as the
    /// relay folds task states: the completion of a task with a long history costs what a
    /// short one's does, and never holds that history in memory.
    async fn task_as_of(&self, envelope: &EventEnvelope) -> Result<Option<TaskView>, Unavailable> {
        match TaskStates::view_after(self.store(), envelope).await {
            Ok(Some(view)) => Ok(Some(view)),
            Ok(None) => {
                self.undecodable(
                    envelope,
                    "the task's history does not decode or fold up to this event",
                );
                Ok(None)
            }
            Err(e @ StoreError::Corrupt { .. }) => {
                self.undecodable(envelope, &e.to_string());
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Loud, counted, and not in the way of the events after it.
    fn undecodable(&self, envelope: &EventEnvelope, error: &str) {
        tracing::error!(
            event_id = %envelope.event_id,
            global_position = envelope.global_position,
            task_id = %envelope.task_id,
            event_type = %envelope.event_type,
            error,
            "the callback scheduler cannot decode an event; no callback is scheduled for it"
        );
        self.metrics.observe_callback_undecodable_event();
    }

    /// Records the delivery as failed before any attempt.
    async fn refuse(&self, delivery: &Delivery, reason: &str) -> Result<(), Unavailable> {
        tracing::warn!(
            delivery_id = %delivery.delivery_id,
            task_id = %delivery.task_id,
            reason,
            "callback refused before any attempt"
        );
        let action = TaskAction::RecordCallbackFailed {
            delivery_id: delivery.delivery_id.clone(),
            for_sequence: delivery.for_sequence,
            attempts: 0,
            last_error: reason.to_string(),
        };
        match record(&self.ledger, delivery, action).await {
            Recorded::Appended => {
                self.metrics.observe_callback_attempt("failed");
                Ok(())
            }
            Recorded::Already | Recorded::Never => Ok(()),
            Recorded::Later => Err(Unavailable::Ledger),
        }
    }
}

/// Why the scheduler reads the same events again after a pause.
#[derive(Debug, thiserror::Error)]
enum Unavailable {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the ledger could not record a refused callback for now")]
    Ledger,
}
