//! Where a command starts from: the task's state at its last event, rebuilt from the newest
//! snapshot and the events after it, so its cost does not grow with the task's history.
//!
//! The state is still exact: every event after the snapshot is folded, and the write is
//! checked against the last one's sequence. A command that folded [`SNAPSHOT_EVERY`] events
//! or more past the snapshot leaves a new one once it committed.

use serde::{Deserialize, Serialize};
use taskledger_events::{EventEnvelope, GENESIS_HASH};
use taskledger_projections::{fold, TaskView};

use super::{Ledger, LedgerError};
use crate::domain::{LedgerEvent, Task, TaskId};
use crate::store::Committed;

/// How many events past its snapshot a task may grow before a command leaves a new one:
/// the most a command folds, and one snapshot write per this many events.
pub const SNAPSHOT_EVERY: i64 = 64;

/// Bumped whenever the aggregate's state or the view changes shape: a snapshot of another
/// format is ignored and the history folded from the start.
const FORMAT: u32 = 1;

/// A task's decision state at its last event.
#[derive(Debug, Clone)]
pub(super) struct Current {
    pub task: Task,
    pub view: Option<TaskView>,
    /// The sequence of the last event (0 for no task).
    pub sequence: i64,
    /// The hash of that event, which the next one chains to.
    pub hash: String,
    /// The sequence of the snapshot this state was rebuilt from (0 for none).
    snapshot_sequence: i64,
}

impl Default for Current {
    fn default() -> Self {
        Current {
            task: Task::default(),
            view: None,
            sequence: 0,
            hash: GENESIS_HASH.to_string(),
            snapshot_sequence: 0,
        }
    }
}

/// The stored form. The view's own encoding keeps milliseconds; the list index needs its
/// microseconds, so they are kept beside it.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    format: u32,
    hash: String,
    task: Task,
    view: TaskView,
    created_at_us: i64,
    updated_at_us: i64,
    completed_at_us: Option<i64>,
    audited_at_us: Vec<i64>,
}

fn micros(us: i64) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp_micros(us)
}

impl Current {
    /// Folds `events` (the ones right after this state, oldest first) into the aggregate and
    /// the view.
    fn fold(mut self, task_id: &TaskId, events: &[EventEnvelope]) -> Result<Current, LedgerError> {
        for envelope in events {
            if envelope.sequence != self.sequence + 1 {
                return Err(LedgerError::internal(
                    format!("task {task_id} history"),
                    format!(
                        "event {} has sequence {} after {}",
                        envelope.event_id, envelope.sequence, self.sequence
                    ),
                ));
            }
            let event = envelope.event().map_err(|e| {
                LedgerError::internal(format!("event {} does not decode", envelope.event_id), e)
            })?;
            self.view = Some(
                fold(self.view, task_id.as_str(), envelope.recorded_at, &event).map_err(|e| {
                    LedgerError::internal(format!("task {task_id} does not fold"), e)
                })?,
            );
            cqrs_es::Aggregate::apply(&mut self.task, LedgerEvent(event));
            self.sequence = envelope.sequence;
            self.hash = envelope.hash.clone();
        }
        Ok(self)
    }

    fn encode(&self) -> Option<String> {
        let view = self.view.clone()?;
        let snapshot = Snapshot {
            format: FORMAT,
            hash: self.hash.clone(),
            task: self.task.clone(),
            created_at_us: view.created_at.timestamp_micros(),
            updated_at_us: view.updated_at.timestamp_micros(),
            completed_at_us: view.completed_at.map(|t| t.timestamp_micros()),
            audited_at_us: view
                .audits
                .iter()
                .map(|a| a.audited_at.timestamp_micros())
                .collect(),
            view,
        };
        serde_json::to_string(&snapshot).ok()
    }

    /// The state a stored snapshot holds; `None` if it is of another format or does not
    /// read back (then the history is folded from the start instead).
    fn decode(text: &str, task_id: &TaskId, sequence: i64) -> Option<Current> {
        let s: Snapshot = serde_json::from_str(text).ok()?;
        if s.format != FORMAT
            || s.view.task_id != task_id.as_str()
            || s.audited_at_us.len() != s.view.audits.len()
        {
            return None;
        }
        let mut view = s.view;
        view.created_at = micros(s.created_at_us)?;
        view.updated_at = micros(s.updated_at_us)?;
        view.completed_at = match s.completed_at_us {
            Some(us) => Some(micros(us)?),
            None => None,
        };
        for (audit, us) in view.audits.iter_mut().zip(s.audited_at_us) {
            audit.audited_at = micros(us)?;
        }
        Some(Current {
            task: s.task,
            view: Some(view),
            sequence,
            hash: s.hash,
            snapshot_sequence: sequence,
        })
    }
}

/// The task object a stored snapshot holds, as `GET /v1/task/{id}` served it at
/// `sequence`; `None` if the snapshot is of another format or does not read back.
pub fn view_of_snapshot(text: &str, task_id: &str, sequence: i64) -> Option<TaskView> {
    let task_id = TaskId::parse(task_id)?;
    Current::decode(text, &task_id, sequence)?.view
}

impl Ledger {
    /// The task's state at its last event: the newest snapshot and the events after it, read
    /// in one query.
    pub(super) async fn current(
        &self,
        account_id: &str,
        task_id: &TaskId,
    ) -> Result<Current, LedgerError> {
        let tail = self.store.task_tail(account_id, task_id.as_str()).await?;
        let start = tail
            .snapshot
            .as_ref()
            .map(|(sequence, text)| Current::decode(text, task_id, *sequence));
        match start {
            None => Current::default().fold(task_id, &tail.events),
            Some(Some(start)) => start.fold(task_id, &tail.events),
            Some(None) => {
                tracing::warn!(task_id = %task_id, "ignoring an unreadable task snapshot");
                let history = self
                    .store
                    .task_events(account_id, task_id.as_str(), None)
                    .await?;
                Current::default().fold(task_id, &history)
            }
        }
    }

    /// Leaves a snapshot after a committed command when the task has grown
    /// [`SNAPSHOT_EVERY`] events past its last one. Best effort: the command is recorded
    /// either way, and a missing snapshot only makes the next command read more.
    pub(super) async fn keep_snapshot(
        &self,
        account_id: &str,
        task_id: &TaskId,
        before: Current,
        committed: &Committed,
    ) {
        let Some(last) = committed.envelopes.last() else {
            return;
        };
        if last.sequence - before.snapshot_sequence < SNAPSHOT_EVERY {
            return;
        }
        let after = match before.fold(task_id, &committed.envelopes) {
            Ok(after) => after,
            Err(e) => {
                tracing::warn!(task_id = %task_id, error = %e, "no snapshot taken");
                return;
            }
        };
        let Some(text) = after.encode() else {
            return;
        };
        if let Err(e) = self
            .store
            .save_snapshot(account_id, task_id.as_str(), after.sequence, &text)
            .await
        {
            tracing::warn!(task_id = %task_id, error = %e, "the task snapshot was not saved");
        }
    }
}
