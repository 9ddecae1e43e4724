//! `replay` (rebuild or check every projection from the events) and `verify` (recompute
//! every hash chain). Both hold the ledger head while they run, so they see one consistent
//! ledger even while a server keeps accepting commands (those wait).

use std::collections::HashMap;

use futures::TryStreamExt;
use taskledger_events::{canonical_json, EventEnvelope, TaskEvent, GENESIS_HASH};
use taskledger_projections::{fold, TaskView};

use super::projection::{
    insert_task_rows, projection_matches, replace_tags, reserve_unique_ids, Reservation, TaskRow,
    TaskTags,
};
use super::read::{EventRow, EVENT_COLUMNS};
use super::{Store, StoreError};

/// Events read per query by `verify`: memory stays bounded by the page, not the ledger.
const VERIFY_PAGE: i64 = 2000;
/// How many broken events `verify` names; it counts them all.
pub const VERIFY_NAMED_MAX: usize = 100;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebuildReport {
    pub tasks: u64,
    pub events: u64,
    /// Task ids whose stored projection differed from the rebuilt one (check mode), or that
    /// could not be rebuilt.
    pub mismatches: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyFailure {
    pub global_position: i64,
    pub event_id: String,
    pub task_id: String,
    pub sequence: i64,
    pub reason: String,
}

impl std::fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "event {} (task {}, sequence {}, global position {}): {}",
            self.event_id, self.task_id, self.sequence, self.global_position, self.reason
        )
    }
}

/// What `verify` found. It goes on past a broken event, so one finding cannot hide another.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub events: u64,
    pub tasks: u64,
    /// How many findings there are: broken events, plus one for events missing at the end.
    pub broken: u64,
    /// The first [`VERIFY_NAMED_MAX`] findings, in global order.
    pub failures: Vec<VerifyFailure>,
    /// The first finding (`failures[0]`), kept for callers that only ask whether the ledger
    /// is intact.
    pub first_failure: Option<VerifyFailure>,
}

impl VerifyReport {
    pub fn is_intact(&self) -> bool {
        self.broken == 0
    }

    fn record(&mut self, failure: VerifyFailure) {
        self.broken += 1;
        if self.first_failure.is_none() {
            self.first_failure = Some(failure.clone());
        }
        if self.failures.len() < VERIFY_NAMED_MAX {
            self.failures.push(failure);
        }
    }
}

impl Store {
    pub async fn count_events(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }

    /// Rebuilds the task views, list index, tags and unique_id index from the events
    /// (`check = false`), or only compares the rebuilt projections with the stored ones
    /// (`check = true`). `progress` is told how many events were folded so far.
    pub async fn replay(
        &self,
        check: bool,
        progress: impl Fn(u64),
    ) -> Result<RebuildReport, StoreError> {
        let mut tx = self.begin_append().await?;
        if !check {
            for table in ["tasks", "task_tags", "unique_ids"] {
                sqlx::query(&format!("DELETE FROM {table}"))
                    .execute(tx.conn())
                    .await?;
            }
        }
        let mut report = RebuildReport::default();
        let sql = format!("SELECT {EVENT_COLUMNS} FROM events ORDER BY task_id, sequence");
        // Read on another connection: the head lock we hold keeps writers out meanwhile.
        let mut rows = sqlx::query_as::<_, EventRow>(&sql).fetch(&self.pool);
        let mut current: Option<(EventEnvelope, Option<TaskView>)> = None;
        while let Some(row) = rows.try_next().await? {
            let envelope = row.envelope()?;
            report.events += 1;
            if report.events % 1000 == 0 {
                progress(report.events);
            }
            let same_task = matches!(&current, Some((last, _)) if last.task_id == envelope.task_id);
            if !same_task {
                if let Some((last, view)) = current.take() {
                    self.finish_task(&mut tx, &last, view, check, &mut report)
                        .await?;
                }
            }
            let view = match current.take() {
                Some((_, view)) if same_task => view,
                _ => None,
            };
            let folded =
                envelope
                    .event()
                    .map_err(|e| e.to_string())
                    .and_then(|event: TaskEvent| {
                        fold(view, &envelope.task_id, envelope.recorded_at, &event)
                            .map_err(|e| e.to_string())
                    });
            let view = match folded {
                Ok(view) => Some(view),
                Err(message) => {
                    tracing::error!(task_id = %envelope.task_id, %message, "event does not fold");
                    None
                }
            };
            current = Some((envelope, view));
        }
        drop(rows);
        if let Some((last, view)) = current.take() {
            self.finish_task(&mut tx, &last, view, check, &mut report)
                .await?;
        }
        progress(report.events);
        if check {
            let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tasks")
                .fetch_one(tx.conn())
                .await?;
            if stored as u64 != report.tasks {
                report.mismatches.push(format!(
                    "{stored} task views are stored but the events describe {}",
                    report.tasks
                ));
            }
            tx.rollback().await?;
        } else {
            tx.commit().await?;
        }
        Ok(report)
    }

    async fn finish_task(
        &self,
        tx: &mut super::AppendTx,
        last: &EventEnvelope,
        view: Option<TaskView>,
        check: bool,
        report: &mut RebuildReport,
    ) -> Result<(), StoreError> {
        report.tasks += 1;
        let Some(view) = view else {
            report.mismatches.push(last.task_id.clone());
            return Ok(());
        };
        if check {
            if !projection_matches(tx.conn(), &last.account_id, &view, last.sequence).await? {
                report.mismatches.push(last.task_id.clone());
            }
            return Ok(());
        }
        let row = TaskRow::of(&last.account_id, last.sequence, &view);
        insert_task_rows(tx.conn(), &[&row]).await?;
        if let Some(unique_id) = &view.unique_id {
            let reservation = Reservation {
                account_id: &last.account_id,
                unique_id,
                task_id: &last.task_id,
            };
            if !reserve_unique_ids(tx.conn(), &[reservation]).await? {
                report.mismatches.push(last.task_id.clone());
            }
        }
        let tags = TaskTags {
            account_id: &last.account_id,
            task_id: &last.task_id,
            tags: &view.tags,
            replaces: false,
        };
        replace_tags(tx.conn(), &[tags]).await?;
        Ok(())
    }

    /// Recomputes every event's hash and checks each task's chain and sequence and the
    /// global positions, in global order, a page at a time. A broken event is reported and
    /// the check goes on: the chain continues from what is stored, so one altered event is
    /// one finding, not a cascade.
    pub async fn verify(&self, progress: impl Fn(u64)) -> Result<VerifyReport, StoreError> {
        // Appends move the head and insert their events in one transaction, so in one
        // snapshot no event lies beyond the head; one that does was not appended by taskledger.
        // Every position up to the head read now is committed, so the pages below must see
        // all of them; no lock is needed and writers are not held up.
        let (head, last_stored): (i64, Option<i64>) = sqlx::query_as(
            "SELECT (SELECT last_position FROM ledger_head WHERE id = 1), \
             (SELECT MAX(global_position) FROM events)",
        )
        .fetch_one(&self.pool)
        .await?;
        let until = last_stored.unwrap_or(0).max(head);
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE global_position > $1 \
             AND global_position <= $2 ORDER BY global_position LIMIT $3"
        );
        let mut report = VerifyReport::default();
        let mut chains: HashMap<String, (i64, String)> = HashMap::new();
        let mut expected_position = 1;
        let mut after = 0;
        loop {
            let page: Vec<EventRow> = sqlx::query_as(&sql)
                .bind(after)
                .bind(until)
                .bind(VERIFY_PAGE)
                .fetch_all(&self.pool)
                .await?;
            let Some(last) = page.last() else { break };
            after = last.global_position;
            for row in &page {
                report.events += 1;
                if report.events % 1000 == 0 {
                    progress(report.events);
                }
                let (last_sequence, last_hash) = chains
                    .get(&row.task_id)
                    .map_or((0, GENESIS_HASH), |(s, h)| (*s, h.as_str()));
                let mut reasons = Vec::new();
                if row.global_position != expected_position {
                    reasons.push(format!(
                        "global position {} follows {}: events are missing",
                        row.global_position,
                        expected_position - 1
                    ));
                }
                if row.global_position > head {
                    reasons.push(format!(
                        "it lies beyond the ledger head ({head}): it was not appended by taskledger"
                    ));
                }
                if row.sequence != last_sequence + 1 {
                    reasons.push(format!(
                        "sequence {} follows {last_sequence} in its task",
                        row.sequence
                    ));
                }
                if row.prev_hash != last_hash {
                    reasons.push(
                        "prev_hash does not match the hash of the task's previous event".into(),
                    );
                }
                reasons.extend(content_problem(row));
                if !reasons.is_empty() {
                    report.record(VerifyFailure {
                        global_position: row.global_position,
                        event_id: row.event_id.clone(),
                        task_id: row.task_id.clone(),
                        sequence: row.sequence,
                        reason: reasons.join("; "),
                    });
                }
                expected_position = row.global_position + 1;
                chains.insert(row.task_id.clone(), (row.sequence, row.hash.clone()));
            }
        }
        if expected_position - 1 < head {
            report.record(VerifyFailure {
                global_position: expected_position,
                event_id: String::new(),
                task_id: String::new(),
                sequence: 0,
                reason: format!(
                    "the ledger head is at position {head} but events end at {}: events are missing",
                    expected_position - 1
                ),
            });
        }
        report.tasks = chains.len() as u64;
        progress(report.events);
        Ok(report)
    }
}

/// What is wrong with an event's own content, if anything: it does not decode, its hash is
/// not the hash of what is stored, or its payload is not in the canonical form every reader
/// recomputes the hash from.
fn content_problem(row: &EventRow) -> Option<String> {
    let envelope = match row.envelope() {
        Ok(e) => e,
        Err(e) => return Some(format!("does not decode: {e}")),
    };
    // The hash covers the payload exactly as stored.
    match envelope.expected_hash_of(&row.payload) {
        Err(e) => return Some(e.to_string()),
        Ok(hash) if hash != envelope.hash => {
            return Some("the stored hash does not match the event's content".into())
        }
        Ok(_) => {}
    }
    if canonical_json(&envelope.payload) != row.payload {
        return Some(
            "the stored payload is not canonical JSON: readers would hash it differently".into(),
        );
    }
    envelope
        .event()
        .err()
        .map(|e| format!("payload does not decode: {e}"))
}
