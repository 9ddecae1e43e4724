//! `replay` (rebuild or check every projection from the events) and `verify` (recompute
//! every hash chain). Both hold the ledger head while they run, so they see one consistent
//! ledger even while a server keeps accepting commands (those wait).

use std::collections::HashMap;

use futures::TryStreamExt;
use taskledger_events::{EventEnvelope, TaskEvent, GENESIS_HASH};
use taskledger_projections::{fold, TaskView, UniqueIdChange};

use super::read::{envelope_from_row, EVENT_COLUMNS};
use super::{event_hash, Store, StoreError};

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

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub events: u64,
    pub tasks: u64,
    pub first_failure: Option<VerifyFailure>,
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
                    .execute(&mut **tx.tx_mut())
                    .await?;
            }
        }
        let mut report = RebuildReport::default();
        let sql = format!("SELECT {EVENT_COLUMNS} FROM events ORDER BY task_id, sequence");
        // Read on another connection: the head lock we hold keeps writers out meanwhile.
        let mut rows = sqlx::query(&sql).fetch(&self.pool);
        let mut current: Option<(EventEnvelope, Option<TaskView>)> = None;
        while let Some(row) = rows.try_next().await? {
            let envelope = envelope_from_row(&row)?;
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
                .fetch_one(&mut **tx.tx_mut())
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
            if !tx
                .projection_matches(&last.account_id, &view, last.sequence)
                .await?
            {
                report.mismatches.push(last.task_id.clone());
            }
            return Ok(());
        }
        tx.insert_task_row(&last.account_id, &view, last.sequence)
            .await?;
        let reserve = UniqueIdChange::between(None, &view);
        if tx
            .change_unique_id(&last.account_id, &last.task_id, &reserve)
            .await?
            .is_err()
        {
            report.mismatches.push(last.task_id.clone());
        }
        tx.put_tags(&last.account_id, &last.task_id, &view.tags, false)
            .await?;
        Ok(())
    }

    /// Recomputes every event's hash and checks each task's chain and sequence and the
    /// global positions, in global order; stops at the first broken link.
    pub async fn verify(&self, progress: impl Fn(u64)) -> Result<VerifyReport, StoreError> {
        // Every position up to the head read now is committed, so the scan below must see
        // all of them; no lock is needed and writers are not held up.
        let head = self.head_position().await?;
        let sql = format!("SELECT {EVENT_COLUMNS} FROM events ORDER BY global_position");
        let mut rows = sqlx::query(&sql).fetch(&self.pool);
        let mut report = VerifyReport::default();
        let mut chains: HashMap<String, (i64, String)> = HashMap::new();
        let mut expected_position = 1;
        while let Some(row) = rows.try_next().await? {
            let envelope = match envelope_from_row(&row) {
                Ok(e) => e,
                Err(StoreError::Corrupt { event_id, message }) => {
                    let position: i64 = sqlx::Row::try_get(&row, "global_position")?;
                    report.first_failure = Some(VerifyFailure {
                        global_position: position,
                        event_id,
                        task_id: sqlx::Row::try_get(&row, "task_id")?,
                        sequence: sqlx::Row::try_get(&row, "sequence")?,
                        reason: format!("does not decode: {message}"),
                    });
                    break;
                }
                Err(other) => return Err(other),
            };
            report.events += 1;
            if report.events % 1000 == 0 {
                progress(report.events);
            }
            let (last_sequence, last_hash) = chains
                .get(&envelope.task_id)
                .cloned()
                .unwrap_or((0, GENESIS_HASH.to_string()));
            let reason = if envelope.global_position != expected_position {
                Some(format!(
                    "global position {} follows {}: events are missing",
                    envelope.global_position,
                    expected_position - 1
                ))
            } else if envelope.sequence != last_sequence + 1 {
                Some(format!(
                    "sequence {} follows {last_sequence} in its task",
                    envelope.sequence
                ))
            } else if envelope.prev_hash != last_hash {
                Some("prev_hash does not match the hash of the task's previous event".to_string())
            } else if event_hash(&envelope) != envelope.hash {
                Some("the stored hash does not match the event's content".to_string())
            } else if let Err(e) = envelope.event() {
                Some(format!("payload does not decode: {e}"))
            } else {
                None
            };
            if let Some(reason) = reason {
                report.first_failure = Some(VerifyFailure {
                    global_position: envelope.global_position,
                    event_id: envelope.event_id.to_string(),
                    task_id: envelope.task_id.clone(),
                    sequence: envelope.sequence,
                    reason,
                });
                break;
            }
            expected_position += 1;
            chains.insert(envelope.task_id.clone(), (envelope.sequence, envelope.hash));
        }
        drop(rows);
        if report.first_failure.is_none() && expected_position - 1 < head {
            report.first_failure = Some(VerifyFailure {
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
