//! Folding pages of events, in (task, sequence) order, into one view per task.

use chrono::DateTime;
use taskledger_events::TaskEvent;
use taskledger_projections::{fold, TaskView};

use crate::store::read::EventRow;

/// A task folded from its events: its view, or `None` if the events do not fold.
pub(super) struct Folded {
    pub(super) task_id: String,
    pub(super) account_id: String,
    pub(super) version: i64,
    pub(super) view: Option<TaskView>,
}

/// Folds events that arrive in (task, sequence) order into one view per task; a task is
/// handed out once the first event of the next task (or the end) shows it is complete.
#[derive(Default)]
pub(super) struct Folder {
    current: Option<Folded>,
}

impl Folder {
    pub(super) fn push(&mut self, row: &EventRow) -> Option<Folded> {
        // An API key's events are facts of the account, not of a task: nothing to fold.
        if taskledger_events::LedgerEvent::is_other_stream_type(&row.event_type) {
            return None;
        }
        let done = match &self.current {
            Some(c) if c.task_id == row.task_id => None,
            _ => self.current.take(),
        };
        let current = self.current.get_or_insert_with(|| Folded {
            task_id: row.task_id.clone(),
            account_id: row.account_id.clone(),
            version: 0,
            view: None,
        });
        let prior = current.view.take();
        // A task that failed to fold stays failed: later events have nothing to fold onto.
        let broken = current.version > 0 && prior.is_none();
        current.version = row.sequence;
        if !broken {
            // Only what folding reads is decoded: the event and its time (verify checks
            // the rest of the envelope).
            let folded = (|| {
                let recorded_at = DateTime::from_timestamp_micros(row.recorded_at_us)
                    .ok_or_else(|| format!("recorded_at {} out of range", row.recorded_at_us))?;
                let version =
                    u32::try_from(row.event_version).map_err(|e| format!("event_version: {e}"))?;
                // Straight from the stored text; a payload that path refuses (one not in
                // canonical form, say) is read as every other reader reads it, which also
                // words the error.
                let event = TaskEvent::decode_text(&row.event_type, version, &row.payload)
                    .or_else(|_| {
                        let payload: serde_json::Value =
                            serde_json::from_str(&row.payload).map_err(|e| e.to_string())?;
                        TaskEvent::decode(&row.event_type, version, payload)
                            .map_err(|e| e.to_string())
                    })?;
                fold(prior, &row.task_id, recorded_at, &event).map_err(|e| e.to_string())
            })();
            match folded {
                Ok(view) => current.view = Some(view),
                Err(message) => {
                    tracing::error!(task_id = %row.task_id, %message, "event does not fold");
                }
            }
        }
        done
    }

    pub(super) fn finish(&mut self) -> Option<Folded> {
        self.current.take()
    }
}

/// Cuts pages of events in (task, sequence) order into whole tasks: the last task of a
/// page is held back until the next page (or the end) shows it complete.
#[derive(Default)]
pub(super) struct WholeTasks {
    held: Vec<EventRow>,
}

impl WholeTasks {
    pub(super) fn take(&mut self, page: Vec<EventRow>, end: bool) -> Vec<EventRow> {
        let mut rows = std::mem::take(&mut self.held);
        rows.extend(page);
        if !end {
            if let Some(last) = rows.last() {
                let cut = rows
                    .iter()
                    .rposition(|r| r.task_id != last.task_id)
                    .map_or(0, |i| i + 1);
                self.held = rows.split_off(cut);
            }
        }
        rows
    }
}

/// Folds whole tasks' events (in (task, sequence) order) on every core, off the async
/// workers.
pub(super) async fn fold_tasks(rows: Vec<EventRow>) -> Vec<Folded> {
    if rows.is_empty() {
        return Vec::new();
    }
    let folding = tokio::task::spawn_blocking(move || {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let target = rows.len().div_ceil(threads).max(1);
        // Cut into about equal parts, each ending where a task ends.
        let mut parts: Vec<&[EventRow]> = Vec::new();
        let mut rest: &[EventRow] = &rows;
        while !rest.is_empty() {
            let mut cut = target.min(rest.len());
            while cut < rest.len() && rest[cut].task_id == rest[cut - 1].task_id {
                cut += 1;
            }
            let (part, tail) = rest.split_at(cut);
            parts.push(part);
            rest = tail;
        }
        std::thread::scope(|s| {
            let workers: Vec<_> = parts
                .into_iter()
                .map(|part| {
                    s.spawn(move || {
                        let mut folder = Folder::default();
                        let mut done: Vec<Folded> =
                            part.iter().filter_map(|r| folder.push(r)).collect();
                        done.extend(folder.finish());
                        done
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        })
    });
    folding
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}
