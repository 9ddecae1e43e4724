//! Snapshots of a task's decision state, so a command on a long task reads a bounded tail
//! of its history instead of all of it.
//!
//! A snapshot is opaque here (the ledger encodes the aggregate and the view in it) and is
//! keyed by the sequence it was taken at. Events never change, so the state at a sequence is
//! a fact: a snapshot needs no transaction of its own, and an older one is never written over
//! a newer one. A command still decides on the exact version: it folds every event after the
//! snapshot, and its write is checked against that last sequence like any other.

use taskledger_events::EventEnvelope;

use super::read::EventRow;
use super::{Store, StoreError};

/// A task's newest snapshot and the events after it, read in one statement.
#[derive(Debug, Default)]
pub struct TaskTail {
    /// The sequence the snapshot was taken at and its text; `None` without a snapshot.
    pub snapshot: Option<(i64, String)>,
    /// Every event after the snapshot (all of them without one), oldest first.
    pub events: Vec<EventEnvelope>,
}

/// One row of [`Store::task_tail`]: the snapshot's columns, then an event's (all `None` when
/// no event follows the snapshot).
#[derive(sqlx::FromRow)]
struct TailRow {
    snapshot_sequence: Option<i64>,
    snapshot_state: Option<String>,
    global_position: Option<i64>,
    event_id: Option<String>,
    task_id: Option<String>,
    account_id: Option<String>,
    sequence: Option<i64>,
    event_type: Option<String>,
    event_version: Option<i64>,
    payload: Option<String>,
    recorded_at_us: Option<i64>,
    actor_account_id: Option<String>,
    actor_key_id: Option<String>,
    actor_scope: Option<String>,
    request_id: Option<String>,
    prev_hash: Option<String>,
    hash: Option<String>,
    hash_version: Option<i64>,
}

impl TailRow {
    fn event(self) -> Option<EventRow> {
        Some(EventRow {
            global_position: self.global_position?,
            event_id: self.event_id?,
            task_id: self.task_id?,
            account_id: self.account_id?,
            sequence: self.sequence?,
            event_type: self.event_type?,
            event_version: self.event_version?,
            payload: self.payload?,
            recorded_at_us: self.recorded_at_us?,
            actor_account_id: self.actor_account_id?,
            actor_key_id: self.actor_key_id,
            actor_scope: self.actor_scope?,
            request_id: self.request_id,
            prev_hash: self.prev_hash?,
            hash: self.hash?,
            hash_version: self.hash_version?,
        })
    }
}

/// [`Store::task_tail`]'s statement. The events' lower bound is an uncorrelated subquery
/// (evaluated once, before the scan), not the joined snapshot row: the bound is then part of
/// the index condition on `(task_id, sequence)` whatever plan is chosen. Joined, it could end
/// up a join filter applied after an index scan on `task_id` alone, which reads the task's
/// whole history; PostgreSQL chose that plan whenever its statistics dated from before the
/// task grew (it then expects about one event per task, as in any large ledger), and a
/// command on a 10,000-event task read all of them to keep a few dozen.
const TAIL_SQL: &str = "SELECT s.sequence AS snapshot_sequence, \
     CASE WHEN e.sequence IS NULL OR e.sequence = s.sequence + 1 THEN s.state END \
       AS snapshot_state, \
     e.global_position, e.event_id, e.task_id, e.account_id, e.sequence, e.event_type, \
     e.event_version, e.payload, e.recorded_at_us, e.actor_account_id, e.actor_key_id, \
     e.actor_scope, e.request_id, e.prev_hash, e.hash, e.hash_version \
     FROM (SELECT CAST($1 AS TEXT) AS task_id) k \
     LEFT JOIN task_snapshots s ON s.task_id = k.task_id AND s.account_id = $2 \
     LEFT JOIN events e ON e.task_id = k.task_id AND e.account_id = $2 \
       AND e.sequence > COALESCE((SELECT b.sequence FROM task_snapshots b \
         WHERE b.task_id = $1 AND b.account_id = $2), 0) \
     ORDER BY e.sequence";

impl Store {
    /// The task's newest snapshot and the events after it, in one indexed read whatever the
    /// length of the history (see [`TAIL_SQL`]). The snapshot's text rides on the first row
    /// only.
    pub async fn task_tail(&self, account_id: &str, task_id: &str) -> Result<TaskTail, StoreError> {
        let rows: Vec<TailRow> = sqlx::query_as(TAIL_SQL)
            .bind(task_id)
            .bind(account_id)
            .fetch_all(&self.pool)
            .await?;
        let mut tail = TaskTail::default();
        for row in rows {
            if let (Some(sequence), Some(state)) = (row.snapshot_sequence, &row.snapshot_state) {
                tail.snapshot = Some((sequence, state.clone()));
            }
            if let Some(event) = row.event() {
                tail.events.push(event.envelope()?);
            }
        }
        Ok(tail)
    }

    /// How the database runs [`Store::task_tail`] for the task, one line per step: on
    /// PostgreSQL the statement is run under `EXPLAIN ANALYZE`, so each step shows the rows it
    /// produced and the rows it read only to drop them; on SQLite, `EXPLAIN QUERY PLAN` (each
    /// index search with its constraints). What the tests check that a command reads a bounded
    /// part of a long task's history with, whatever the statistics.
    pub async fn task_tail_plan(
        &self,
        account_id: &str,
        task_id: &str,
    ) -> Result<Vec<String>, StoreError> {
        let explain = match self.backend {
            super::Backend::Postgres => "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF)",
            super::Backend::Sqlite => "EXPLAIN QUERY PLAN",
        };
        let rows = sqlx::query(&format!("{explain} {TAIL_SQL}"))
            .bind(task_id)
            .bind(account_id)
            .fetch_all(&self.pool)
            .await?;
        use sqlx::Row;
        Ok(rows
            .iter()
            .map(|row| {
                let last = row.len() - 1;
                row.try_get::<String, _>(last).unwrap_or_default()
            })
            .collect())
    }

    /// Keeps `state` as the task's snapshot at `sequence`, unless a newer one is kept already;
    /// the one it replaces is kept as the previous one (for the relay, see
    /// [`Store::task_snapshots`]).
    pub async fn save_snapshot(
        &self,
        account_id: &str,
        task_id: &str,
        sequence: i64,
        state: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO task_snapshots (task_id, account_id, sequence, state) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (task_id) DO UPDATE SET \
             previous_sequence = task_snapshots.sequence, previous_state = task_snapshots.state, \
             sequence = excluded.sequence, state = excluded.state \
             WHERE task_snapshots.sequence < excluded.sequence",
        )
        .bind(task_id)
        .bind(account_id)
        .bind(sequence)
        .bind(state)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
