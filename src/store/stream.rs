//! Reads for the task-state topic: where the tasks a relay batch touches stood just before
//! the batch, from their snapshots and the few events after them, a bounded page at a time.

use std::sync::atomic::Ordering;

use taskledger_events::EventEnvelope;

use super::read::{EventRow, EVENT_COLUMNS};
use super::{Store, StoreError};

/// The events of one task with a sequence in `(after, before)`.
#[derive(Debug, Clone, Copy)]
pub struct HistoryRange<'a> {
    pub task_id: &'a str,
    pub after: i64,
    pub before: i64,
}

#[derive(sqlx::FromRow)]
struct SnapshotsRow {
    task_id: String,
    sequence: i64,
    state: String,
    previous_sequence: Option<i64>,
    previous_state: Option<String>,
}

impl Store {
    /// The snapshots of each of `task_ids` that has one, newest and previous (the ledger keeps
    /// the two last): (task id, sequence, text). One query on the snapshots' primary key.
    pub async fn task_snapshots(
        &self,
        task_ids: &[&str],
    ) -> Result<Vec<(String, i64, String)>, StoreError> {
        if task_ids.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders: Vec<String> = (1..=task_ids.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT task_id, sequence, state, previous_sequence, previous_state \
             FROM task_snapshots WHERE task_id IN ({})",
            placeholders.join(", ")
        );
        let rows: Vec<SnapshotsRow> = task_ids
            .iter()
            .fold(sqlx::query_as(&sql), |q, t| q.bind(*t))
            .fetch_all(&self.pool)
            .await?;
        let mut snapshots = Vec::with_capacity(rows.len() * 2);
        for r in rows {
            if let (Some(sequence), Some(state)) = (r.previous_sequence, r.previous_state) {
                snapshots.push((r.task_id.clone(), sequence, state));
            }
            snapshots.push((r.task_id, r.sequence, r.state));
        }
        Ok(snapshots)
    }

    /// The first `limit` events of `ranges`, by task then sequence: one page of what the
    /// relay folds to know each task's view just before its first event of a batch. One
    /// query on the `(task_id, sequence)` index; the caller narrows the ranges past what it
    /// folded and asks again while a page comes back full, so memory stays within a page.
    pub async fn task_history_page(
        &self,
        ranges: &[HistoryRange<'_>],
        limit: i64,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        if ranges.is_empty() {
            return Ok(Vec::new());
        }
        let conditions: Vec<String> = (0..ranges.len())
            .map(|i| {
                let b = 3 * i + 2;
                format!(
                    "(task_id = ${b} AND sequence > ${} AND sequence < ${})",
                    b + 1,
                    b + 2
                )
            })
            .collect();
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE {} ORDER BY task_id, sequence LIMIT $1",
            conditions.join(" OR ")
        );
        let rows: Vec<EventRow> = ranges
            .iter()
            .fold(sqlx::query_as(&sql).bind(limit), |q, r| {
                q.bind(r.task_id).bind(r.after).bind(r.before)
            })
            .fetch_all(&self.pool)
            .await?;
        self.task_state_reads
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        rows.into_iter().map(EventRow::envelope).collect()
    }

    /// How many events [`Store::task_history_page`] has read through this store (and its
    /// clones): what a relay's task-state step costs beyond the batch itself.
    pub fn task_state_events_read(&self) -> u64 {
        self.task_state_reads.load(Ordering::Relaxed)
    }
}
