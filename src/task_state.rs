//! The values of the compacted task-state topic: the task object after each event, exactly as
//! `GET /v1/task/{id}` serves it then (the same fold and the same bytes as the stored view).
//!
//! The relay folds a batch's events onto each task's view just before the batch. That view
//! comes from the views it folded in earlier batches (kept for the most recently touched
//! tasks), from nothing for a task created in the batch, or else from the task's newest
//! snapshot before the batch (the ledger keeps its last two) and the events after it (its
//! whole earlier history if both snapshots are newer than the
//! batch), read for all such tasks of the batch together, a bounded page at a time. A view after a given event is
//! a fact that never changes, so what is kept never goes stale, whichever process relayed.

use std::collections::{HashMap, HashSet};

use taskledger_events::{EventEnvelope, TaskEvent};
use taskledger_projections::{fold, TaskView};

use crate::ledger::view_of_snapshot;
use crate::store::{HistoryRange, Store, StoreError};

/// How many tasks' latest views are kept between batches, and how many bytes their JSON may
/// add up to; beyond either, all are dropped and read again when needed, which costs a
/// query, never a wrong value. The bytes bound is what holds when tasks are large: 20,000
/// views near the 1 MB limit would be 20 GB. What is kept is then at most this bound plus
/// one batch's views, which the batch's own byte bound limits.
const KEPT_TASKS: usize = 20_000;
pub const KEPT_BYTES: usize = 32_000_000;
/// Events read per query when tasks are brought up to a batch: the memory bound of a batch's
/// catch-up, whatever the tasks' histories.
const HISTORY_PAGE: i64 = 1000;

pub struct TaskStates {
    /// task id -> (sequence of the last event folded, the view after it, its JSON's length).
    kept: HashMap<String, (i64, TaskView, usize)>,
    kept_bytes: usize,
    max_kept_bytes: usize,
}

impl Default for TaskStates {
    fn default() -> Self {
        TaskStates::keeping(KEPT_BYTES)
    }
}

/// A task being folded through a batch: its view so far, or broken (an event that does not
/// decode or fold; it gets no state record and neither do its later events in the batch).
enum Folding {
    View(Option<Box<TaskView>>, i64),
    Broken,
}

impl TaskStates {
    /// States that keep views between batches up to `max_kept_bytes` of JSON (and
    /// [`KEPT_TASKS`] tasks).
    pub fn keeping(max_kept_bytes: usize) -> Self {
        TaskStates {
            kept: HashMap::new(),
            kept_bytes: 0,
            max_kept_bytes,
        }
    }

    /// The JSON bytes of the views kept for the next batch.
    pub fn kept_bytes(&self) -> usize {
        self.kept_bytes
    }

    /// For each event of `events` (a batch in global order), the task object after it as
    /// JSON text, or `None` for an event that belongs to no task the fold knows. It stops
    /// once the values add up to `max_bytes` (always giving the first): the states of
    /// small events on large tasks may be far larger than the events, and the caller
    /// handles the events of the values it got, the rest in its next batch.
    pub async fn after_each(
        &mut self,
        store: &Store,
        events: &[EventEnvelope],
        max_bytes: usize,
    ) -> Result<Vec<Option<String>>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut folding: HashMap<&str, Folding> = HashMap::new();
        // Tasks whose view before the batch is not kept: each with the sequence of its first
        // event in the batch.
        let mut unknown: Vec<(&str, i64)> = Vec::new();
        let mut seen = HashSet::new();
        // Views taken out of `kept` for the batch, with their JSON's length.
        let mut taken: HashMap<&str, usize> = HashMap::new();
        for e in events {
            let task = e.task_id.as_str();
            if !seen.insert(task) {
                continue;
            }
            // A key's events (ApiKeyCreated, ...) are a stream of their own, not a task:
            // they have no task state to publish.
            if task.is_empty()
                || taskledger_events::LedgerEvent::is_other_stream_type(&e.event_type)
            {
                folding.insert(task, Folding::Broken);
                continue;
            }
            let continues = self
                .kept
                .get(task)
                .is_some_and(|(sequence, _, _)| *sequence == e.sequence - 1);
            if e.sequence <= 1 {
                folding.insert(task, Folding::View(None, 0));
            } else if let Some((sequence, view, len)) =
                continues.then(|| self.kept.remove(task)).flatten()
            {
                // Taken, not copied: it goes back below, stepped or as it was.
                self.kept_bytes -= len;
                taken.insert(task, len);
                folding.insert(task, Folding::View(Some(Box::new(view)), sequence));
            } else {
                unknown.push((task, e.sequence));
            }
        }
        self.catch_up(store, &unknown, &mut folding).await?;
        let mut values = Vec::with_capacity(events.len());
        let mut bytes = 0;
        // The length of each stepped task's last value: what keeping its view costs.
        let mut last_len: HashMap<&str, usize> = HashMap::new();
        for e in events {
            if bytes >= max_bytes && !values.is_empty() {
                // The tasks not stepped on stay at the events before this one: what is kept
                // below is still the view after its sequence.
                break;
            }
            let state = folding
                .get_mut(e.task_id.as_str())
                .expect("every task of the batch is folding");
            step(state, e);
            let value = match state {
                Folding::View(Some(view), _) => Some(view.to_json()),
                _ => None,
            };
            let len = value.as_ref().map_or(0, String::len);
            bytes += len;
            last_len.insert(e.task_id.as_str(), len);
            values.push(value);
        }
        if self.kept.len() > KEPT_TASKS || self.kept_bytes > self.max_kept_bytes {
            self.kept.clear();
            self.kept_bytes = 0;
        }
        for (task, state) in folding {
            // A task the step stopped before keeps what it had: that is still its view
            // after the sequence kept.
            let Some(len) = last_len.get(task).or_else(|| taken.get(task)) else {
                continue;
            };
            let replaced = match state {
                Folding::View(Some(view), sequence) => {
                    self.kept_bytes += len;
                    self.kept.insert(task.to_string(), (sequence, *view, *len))
                }
                _ => self.kept.remove(task),
            };
            if let Some((_, _, old)) = replaced {
                self.kept_bytes -= old;
            }
        }
        Ok(values)
    }
}

impl TaskStates {
    /// The task object after `event`, one of a task's events, folded as
    /// [`TaskStates::after_each`] folds a task it has not kept: from the task's newest
    /// snapshot before the event and the events between, a page at a time, so what it costs
    /// does not grow with the task's history. `None` if the history does not decode or fold
    /// up to the event.
    pub async fn view_after(
        store: &Store,
        event: &EventEnvelope,
    ) -> Result<Option<TaskView>, StoreError> {
        let task = event.task_id.as_str();
        let mut folding: HashMap<&str, Folding> = HashMap::new();
        if event.sequence <= 1 {
            folding.insert(task, Folding::View(None, 0));
        } else {
            TaskStates::default()
                .catch_up(store, &[(task, event.sequence)], &mut folding)
                .await?;
        }
        let Some(state) = folding.get_mut(task) else {
            return Ok(None);
        };
        step(state, event);
        Ok(match folding.remove(task) {
            Some(Folding::View(Some(view), _)) => Some(*view),
            _ => None,
        })
    }

    /// Brings each of `unknown` (a task and the sequence of its first event in the batch)
    /// to its view just before that event: from the task's newest snapshot before that event
    /// (of the two the ledger keeps), so only the events after it are read, else from the
    /// start.
    /// Either way the events come a page at a time, so a task's long history never sits in
    /// memory whole.
    async fn catch_up<'a>(
        &self,
        store: &Store,
        unknown: &[(&'a str, i64)],
        folding: &mut HashMap<&'a str, Folding>,
    ) -> Result<(), StoreError> {
        if unknown.is_empty() {
            return Ok(());
        }
        let tasks: Vec<&str> = unknown.iter().map(|(task, _)| *task).collect();
        // Per task, the newest snapshot before its first event of the batch.
        let mut snapshots: HashMap<String, (i64, String)> = HashMap::new();
        let firsts: HashMap<&str, i64> = unknown.iter().copied().collect();
        for (task, sequence, text) in store.task_snapshots(&tasks).await? {
            let usable = firsts
                .get(task.as_str())
                .is_some_and(|first| sequence < *first);
            let newer = snapshots
                .get(&task)
                .is_none_or(|(kept, _)| *kept < sequence);
            if usable && newer {
                snapshots.insert(task, (sequence, text));
            }
        }
        let mut ranges = Vec::with_capacity(unknown.len());
        for (task, first) in unknown {
            let start = snapshots.get(*task).and_then(|(sequence, text)| {
                view_of_snapshot(text, task, *sequence).map(|view| (*sequence, view))
            });
            let state = match start {
                Some((sequence, view)) => Folding::View(Some(Box::new(view)), sequence),
                None => Folding::View(None, 0),
            };
            let after = match &state {
                Folding::View(_, sequence) => *sequence,
                Folding::Broken => 0,
            };
            folding.insert(*task, state);
            if after + 1 < *first {
                ranges.push(HistoryRange {
                    task_id: task,
                    after,
                    before: *first,
                });
            }
        }
        while !ranges.is_empty() {
            let page = store.task_history_page(&ranges, HISTORY_PAGE).await?;
            for e in &page {
                let state = folding
                    .get_mut(e.task_id.as_str())
                    .expect("the history read is of these tasks");
                step(state, e);
            }
            if (page.len() as i64) < HISTORY_PAGE {
                break;
            }
            // Events come by task (in the database's order of task ids, whichever that is):
            // every task of the page but the last is done, the last is folded up to its last
            // event here, and the tasks not reached yet are still to come.
            let last = page.last().expect("a full page");
            let done: HashSet<&str> = page
                .iter()
                .map(|e| e.task_id.as_str())
                .filter(|task| *task != last.task_id)
                .collect();
            ranges.retain_mut(|r| {
                if r.task_id == last.task_id {
                    r.after = last.sequence;
                }
                !done.contains(r.task_id) && r.after + 1 < r.before
            });
        }
        Ok(())
    }
}

fn step(state: &mut Folding, e: &EventEnvelope) {
    let Folding::View(view, sequence) = state else {
        return;
    };
    let folded = e
        .event()
        .map_err(|error| error.to_string())
        .and_then(|event| {
            fold(view.take().map(|v| *v), &e.task_id, e.recorded_at, &event)
                .map_err(|error| error.to_string())
        });
    match folded {
        Ok(next) => {
            *view = Some(Box::new(next));
            *sequence = e.sequence;
        }
        Err(error) => {
            // The ledger's damage, which `verify` names: the event stream goes on, and this
            // task gets no state record until the relay folds it cleanly again.
            tracing::warn!(event_id = %e.event_id, task_id = %e.task_id, %error,
                "no task state after this event");
            *state = Folding::Broken;
        }
    }
}

/// The size of the state record a command would publish: the task object after `decided`,
/// the key and room for headers. The write path refuses a command that would make it larger
/// than a Kafka record may be, as it refuses such an event.
pub fn record_size(prior: &Option<TaskView>, task_id: &str, decided: &[TaskEvent]) -> usize {
    // The time only fills fixed-width fields; the size does not depend on it.
    let now = chrono::Utc::now();
    let after = decided.iter().try_fold(prior.clone(), |view, event| {
        fold(view, task_id, now, event).map(Some)
    });
    match after {
        Ok(Some(view)) => view.to_json().len() + task_id.len() + STATE_RECORD_OVERHEAD_BYTES,
        // A command that does not fold is refused on the write path with its own error.
        _ => 0,
    }
}

/// Room for a state record's key framing and headers beyond its value.
pub const STATE_RECORD_OVERHEAD_BYTES: usize = 1024;
