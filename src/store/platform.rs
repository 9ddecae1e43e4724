//! Projects and batches as streams of the ledger. Each command runs in one append transaction
//! (holding the ledger head, so commands on one project or batch are serialized with every
//! other append): the stream's events are read and folded into its aggregate, the aggregate
//! decides, and the events, the view row and the Merkle leaves are written together.
//!
//! A project's or batch's view row is folded from its events by [`fold_project`] and
//! [`fold_batch`], the same functions `replay` runs over the whole ledger.

use chrono::DateTime;
use serde_json::{json, Map, Value};
use sqlx::AnyConnection;
use taskledger_events::{
    canonical_json, Actor, BatchEvent, EventEnvelope, LedgerEvent, ProjectEvent, SealedEvent,
    CURRENT_HASH_VERSION, GENESIS_HASH,
};
use uuid::Uuid;

use super::append::AppendTx;
use super::keys::random_hex;
use super::read::{EventRow, EVENT_COLUMNS};
use super::sql::unique_violation_as_false;
use super::{Store, StoreError};
use crate::domain::{
    Batch, BatchCommand, BatchCounts, BatchStatus, PlatformError, Project, ProjectCommand,
};

/// One row of `projects`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ProjectRecord {
    pub stream_id: String,
    pub account_id: String,
    pub is_test: i64,
    pub name: String,
    pub task_type: String,
    pub created_at_us: i64,
    pub version: i64,
    pub last_hash: String,
    /// JSON array of `{version, created_at, ...params}`.
    pub param_history: String,
}

impl ProjectRecord {
    /// The latest params and their version, if the project has any.
    pub fn latest_params(&self) -> Option<(u32, Map<String, Value>)> {
        let history: Vec<Value> = serde_json::from_str(&self.param_history).ok()?;
        let mut last = history.last()?.as_object()?.clone();
        let version = last.remove("version")?.as_u64()? as u32;
        last.remove("created_at");
        Some((version, last))
    }
}

/// One row of `batches`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct BatchRecord {
    pub stream_id: String,
    pub account_id: String,
    pub is_test: i64,
    pub name: String,
    pub project: String,
    pub status: String,
    pub callback: Option<String>,
    pub metadata: String,
    pub calibration_batch: i64,
    pub self_label_batch: i64,
    pub created_at_us: i64,
    pub version: i64,
    pub last_hash: String,
}

const PROJECT_COLUMNS: &str = "stream_id, account_id, is_test, name, task_type, created_at_us, \
     version, last_hash, param_history";
const BATCH_COLUMNS: &str = "stream_id, account_id, is_test, name, project, status, callback, \
     metadata, calibration_batch, self_label_batch, created_at_us, version, last_hash";

/// What `GET /v1/batches` filters on.
#[derive(Debug, Clone, Default)]
pub struct BatchQuery {
    pub project: Option<String>,
    pub status: Option<String>,
    pub start_us: Option<i64>,
    pub end_us: Option<i64>,
    pub limit: i64,
    pub offset: i64,
}

/// Why a project or batch command wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum PlatformWriteError {
    #[error(transparent)]
    Refused(#[from] PlatformError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn time(us: i64) -> String {
    DateTime::from_timestamp_micros(us)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The project's view after `event`, recorded as `envelope`.
pub(super) fn fold_project(
    prior: Option<ProjectRecord>,
    envelope: &EventEnvelope,
    event: &ProjectEvent,
) -> Option<ProjectRecord> {
    let at = envelope.recorded_at.timestamp_micros();
    let entry = |version: u32, params: &Value| {
        let mut entry = Map::new();
        entry.insert("version".into(), json!(version));
        entry.insert("created_at".into(), json!(time(at)));
        if let Some(params) = params.as_object() {
            entry.extend(params.clone());
        }
        Value::Object(entry)
    };
    match (prior, event) {
        (None, ProjectEvent::ProjectCreated(e)) => Some(ProjectRecord {
            stream_id: envelope.task_id.clone(),
            account_id: envelope.account_id.clone(),
            is_test: i64::from(e.is_test),
            name: e.name.clone(),
            task_type: e.task_type.clone(),
            created_at_us: at,
            version: envelope.sequence,
            last_hash: envelope.hash.clone(),
            param_history: Value::Array(e.params.iter().map(|p| entry(1, p)).collect()).to_string(),
        }),
        (Some(mut row), ProjectEvent::ProjectParamsSet(e)) => {
            let mut history: Vec<Value> =
                serde_json::from_str(&row.param_history).unwrap_or_default();
            history.push(entry(e.version, &e.params));
            row.param_history = Value::Array(history).to_string();
            row.version = envelope.sequence;
            row.last_hash = envelope.hash.clone();
            Some(row)
        }
        _ => None,
    }
}

/// The batch's view after `event`, recorded as `envelope`.
pub(super) fn fold_batch(
    prior: Option<BatchRecord>,
    envelope: &EventEnvelope,
    event: &BatchEvent,
) -> Option<BatchRecord> {
    let mut row = match (prior, event) {
        (None, BatchEvent::BatchCreated(e)) => BatchRecord {
            stream_id: envelope.task_id.clone(),
            account_id: envelope.account_id.clone(),
            is_test: i64::from(e.is_test),
            name: e.name.clone(),
            project: e.project.clone(),
            status: BatchStatus::Staging.as_str().to_string(),
            callback: e.callback.clone(),
            metadata: e.metadata.to_string(),
            calibration_batch: i64::from(e.calibration_batch),
            self_label_batch: i64::from(e.self_label_batch),
            created_at_us: envelope.recorded_at.timestamp_micros(),
            version: 0,
            last_hash: String::new(),
        },
        (Some(mut row), BatchEvent::BatchMetadataSet(e)) => {
            row.metadata = e.metadata.to_string();
            row
        }
        (Some(mut row), BatchEvent::BatchFinalized(_)) => {
            row.status = BatchStatus::InProgress.as_str().to_string();
            row
        }
        (Some(mut row), BatchEvent::BatchCompleted(_)) => {
            row.status = BatchStatus::Completed.as_str().to_string();
            row
        }
        _ => return None,
    };
    row.version = envelope.sequence;
    row.last_hash = envelope.hash.clone();
    Some(row)
}

/// Seals a stream's new events after the transaction's last event, chained from
/// `last_sequence`/`prev_hash`.
pub(super) fn seal_stream(
    tx: &AppendTx,
    who: &PlatformActor,
    stream_id: &str,
    events: &[(&'static str, Value)],
    last_sequence: i64,
    prev_hash: &str,
) -> Result<Vec<SealedEvent>, StoreError> {
    let account_id = who.account();
    let recorded_us = tx.next_recorded_us();
    let corrupt = |message: String| StoreError::Unencodable {
        task_id: stream_id.to_string(),
        message,
    };
    let mut sealed = Vec::with_capacity(events.len());
    let mut prev_hash = prev_hash.to_string();
    for (i, (event_type, payload)) in events.iter().enumerate() {
        let payload_json = canonical_json(payload);
        let mut envelope = EventEnvelope {
            event_id: Uuid::now_v7(),
            event_type: event_type.to_string(),
            event_version: 1,
            task_id: stream_id.to_string(),
            account_id: account_id.to_string(),
            sequence: last_sequence + 1 + i as i64,
            global_position: tx.next_position() + i as i64,
            recorded_at: DateTime::from_timestamp_micros(recorded_us)
                .expect("the clock is in range"),
            actor: who.actor.clone(),
            request_id: who.request_id.clone(),
            payload: serde_json::from_str(&payload_json).map_err(|e| corrupt(e.to_string()))?,
            prev_hash: prev_hash.clone(),
            hash: String::new(),
            hash_version: CURRENT_HASH_VERSION,
            is_test: who.is_test,
        };
        envelope.hash = envelope
            .expected_hash_of(&payload_json)
            .map_err(|e| corrupt(e.to_string()))?;
        prev_hash = envelope.hash.clone();
        sealed.push(SealedEvent {
            envelope,
            payload_json,
        });
    }
    Ok(sealed)
}

fn decode(envelope: &EventEnvelope) -> Result<LedgerEvent, StoreError> {
    envelope.ledger_event().map_err(|e| StoreError::Corrupt {
        event_id: envelope.event_id.to_string(),
        message: e.to_string(),
    })
}

async fn project_row(
    conn: &mut AnyConnection,
    account_id: &str,
    is_test: bool,
    name: &str,
) -> Result<Option<ProjectRecord>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {PROJECT_COLUMNS} FROM projects WHERE account_id = $1 AND is_test = $2 \
         AND name = $3"
    ))
    .bind(account_id)
    .bind(i64::from(is_test))
    .bind(name)
    .fetch_optional(conn)
    .await?)
}

async fn batch_row(
    conn: &mut AnyConnection,
    account_id: &str,
    is_test: bool,
    name: &str,
) -> Result<Option<BatchRecord>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {BATCH_COLUMNS} FROM batches WHERE account_id = $1 AND is_test = $2 \
         AND name = $3"
    ))
    .bind(account_id)
    .bind(i64::from(is_test))
    .bind(name)
    .fetch_optional(conn)
    .await?)
}

/// Writes a project's view row: inserted for a new stream, else replaced if still at
/// `expected_version`. `false` when the name is taken or the row moved on.
pub(super) async fn write_project_row(
    conn: &mut AnyConnection,
    table: &str,
    row: &ProjectRecord,
    expected_version: i64,
) -> Result<bool, StoreError> {
    if expected_version == 0 {
        let inserted = sqlx::query(&format!(
            "INSERT INTO {table} ({PROJECT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ))
        .bind(&row.stream_id)
        .bind(&row.account_id)
        .bind(row.is_test)
        .bind(&row.name)
        .bind(&row.task_type)
        .bind(row.created_at_us)
        .bind(row.version)
        .bind(&row.last_hash)
        .bind(&row.param_history)
        .execute(conn)
        .await
        .map(|_| ());
        return unique_violation_as_false(inserted);
    }
    let updated = sqlx::query(&format!(
        "UPDATE {table} SET version = $2, last_hash = $3, param_history = $4 \
         WHERE stream_id = $1 AND version = $5"
    ))
    .bind(&row.stream_id)
    .bind(row.version)
    .bind(&row.last_hash)
    .bind(&row.param_history)
    .bind(expected_version)
    .execute(conn)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// [`write_project_row`] for a batch.
pub(super) async fn write_batch_row(
    conn: &mut AnyConnection,
    table: &str,
    row: &BatchRecord,
    expected_version: i64,
) -> Result<bool, StoreError> {
    if expected_version == 0 {
        let inserted = sqlx::query(&format!(
            "INSERT INTO {table} ({BATCH_COLUMNS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        ))
        .bind(&row.stream_id)
        .bind(&row.account_id)
        .bind(row.is_test)
        .bind(&row.name)
        .bind(&row.project)
        .bind(&row.status)
        .bind(&row.callback)
        .bind(&row.metadata)
        .bind(row.calibration_batch)
        .bind(row.self_label_batch)
        .bind(row.created_at_us)
        .bind(row.version)
        .bind(&row.last_hash)
        .execute(conn)
        .await
        .map(|_| ());
        return unique_violation_as_false(inserted);
    }
    let updated = sqlx::query(&format!(
        "UPDATE {table} SET status = $2, metadata = $3, version = $4, last_hash = $5 \
         WHERE stream_id = $1 AND version = $6"
    ))
    .bind(&row.stream_id)
    .bind(&row.status)
    .bind(&row.metadata)
    .bind(row.version)
    .bind(&row.last_hash)
    .bind(expected_version)
    .execute(conn)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// A batch's task counts by status, from the counts projection (never its tasks).
pub(super) async fn batch_counts(
    conn: &mut AnyConnection,
    account_id: &str,
    name: &str,
) -> Result<BatchCounts, StoreError> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT value, n FROM task_counts WHERE account_id = $1 AND dimension = 'batch_status' \
         AND value IN ($2, $3, $4, $5)",
    )
    .bind(account_id)
    .bind(format!("pending:{name}"))
    .bind(format!("completed:{name}"))
    .bind(format!("error:{name}"))
    .bind(format!("canceled:{name}"))
    .fetch_all(conn)
    .await?;
    let mut counts = BatchCounts::default();
    for (value, n) in rows {
        let n = n.max(0) as u64;
        match value.split_once(':').map(|(s, _)| s) {
            Some("pending") => counts.pending = n,
            Some("completed") => counts.completed = n,
            Some("error") => counts.error = n,
            Some("canceled") => counts.canceled = n,
            _ => {}
        }
    }
    Ok(counts)
}

/// How every batch's stream id starts.
pub const BATCH_STREAM_PREFIX: &str = "batch_";

/// A new stream id: `prefix` and random hex, never a task id.
fn stream_id(prefix: &str) -> String {
    format!("{prefix}_{}", random_hex(12))
}

/// Who acts, in which account and mode.
#[derive(Debug, Clone)]
pub struct PlatformActor {
    pub actor: Actor,
    pub request_id: Option<String>,
    pub is_test: bool,
}

impl PlatformActor {
    /// The ledger the actor acts in: the account's, or its test ledger for a test key.
    pub fn account(&self) -> &str {
        &self.actor.account_id
    }
}

impl AppendTx {
    /// Seals the events an aggregate decided after its view row's last event (`last`: its
    /// sequence and hash, none for a new stream), and folds the row over them.
    fn seal_and_fold<R>(
        &self,
        who: &PlatformActor,
        stream: &str,
        last: (i64, Option<String>),
        payloads: &[(&'static str, Value)],
        fold: impl Fn(Option<R>, &EventEnvelope, usize) -> Option<R>,
        row: Option<R>,
    ) -> Result<Result<(Vec<SealedEvent>, R), PlatformError>, StoreError> {
        let (last_sequence, prev_hash) = last;
        let prev_hash = prev_hash.unwrap_or_else(|| GENESIS_HASH.to_string());
        let sealed = seal_stream(self, who, stream, payloads, last_sequence, &prev_hash)?;
        let largest = sealed
            .iter()
            .map(|s| crate::kafka::record_size(&s.envelope))
            .max()
            .unwrap_or(0);
        if largest > self.max_record_bytes {
            return Ok(Err(PlatformError::TooLarge(format!(
                "The event this would record is {largest} bytes as a stream record, more than \
                 the {} bytes one record may hold (KAFKA_MESSAGE_MAX_BYTES).",
                self.max_record_bytes
            ))));
        }
        let mut view = row;
        for (i, s) in sealed.iter().enumerate() {
            view = fold(view, &s.envelope, i);
        }
        let view = view.ok_or_else(|| StoreError::Corrupt {
            event_id: stream.to_string(),
            message: "the stream's events do not fold into its view".into(),
        })?;
        Ok(Ok((sealed, view)))
    }

    /// Decides `command` on the project named and records it with its view row; the updated
    /// row.
    pub(super) async fn project_command(
        &mut self,
        who: &PlatformActor,
        name: &str,
        command: ProjectCommand,
    ) -> Result<Result<ProjectRecord, PlatformError>, StoreError> {
        let row = project_row(self.conn(), who.account(), who.is_test, name).await?;
        // Decided on the view row, which holds the whole state: a command costs the same
        // whatever the length of the project's stream.
        let (stream, project) = match &row {
            Some(r) => (
                r.stream_id.clone(),
                Project::from_view(r.latest_params().map_or(0, |(version, _)| version)),
            ),
            None => (stream_id("proj"), Project::default()),
        };
        let decided = match project.handle(command) {
            Ok(d) => d,
            Err(e) => return Ok(Err(e)),
        };
        let last_sequence = row.as_ref().map_or(0, |r| r.version);
        let prev_hash = row.as_ref().map(|r| r.last_hash.clone());
        let payloads: Vec<_> = decided
            .iter()
            .map(|e| (e.event_type(), e.payload()))
            .collect();
        let (sealed, view) = match self.seal_and_fold(
            who,
            &stream,
            (last_sequence, prev_hash),
            &payloads,
            |view, envelope, i| fold_project(view, envelope, &decided[i]),
            row,
        )? {
            Ok(done) => done,
            Err(refused) => return Ok(Err(refused)),
        };
        if !write_project_row(self.conn(), "projects", &view, last_sequence).await?
            || !self.record_sealed(&sealed).await?
        {
            return Ok(Err(PlatformError::AlreadyExists(format!(
                "A project named {name:?} already exists."
            ))));
        }
        Ok(Ok(view))
    }

    /// Decides `command` on the batch named and records it with its view row.
    pub(super) async fn batch_command(
        &mut self,
        who: &PlatformActor,
        name: &str,
        command: BatchCommand,
    ) -> Result<Result<BatchRecord, PlatformError>, StoreError> {
        let row = batch_row(self.conn(), who.account(), who.is_test, name).await?;
        self.batch_command_on(who, name, row, command).await
    }

    async fn batch_command_on(
        &mut self,
        who: &PlatformActor,
        name: &str,
        row: Option<BatchRecord>,
        command: BatchCommand,
    ) -> Result<Result<BatchRecord, PlatformError>, StoreError> {
        // Decided on the view row, which holds the whole state (name, project, status): a
        // command costs the same whatever the length of the batch's stream.
        let (stream, batch) = match &row {
            Some(r) => {
                let status = BatchStatus::parse(&r.status).ok_or_else(|| StoreError::Corrupt {
                    event_id: r.stream_id.clone(),
                    message: format!("batch status {:?}", r.status),
                })?;
                (
                    r.stream_id.clone(),
                    Batch::from_view(&r.name, &r.project, status),
                )
            }
            None => (stream_id("batch"), Batch::default()),
        };
        let decided = match batch.handle(command) {
            Ok(d) => d,
            Err(e) => return Ok(Err(e)),
        };
        if decided.is_empty() {
            return Ok(row.ok_or_else(|| PlatformError::NotFound("Batch not found.".into())));
        }
        let last_sequence = row.as_ref().map_or(0, |r| r.version);
        let prev_hash = row.as_ref().map(|r| r.last_hash.clone());
        let payloads: Vec<_> = decided
            .iter()
            .map(|e| (e.event_type(), e.payload()))
            .collect();
        let (sealed, view) = match self.seal_and_fold(
            who,
            &stream,
            (last_sequence, prev_hash),
            &payloads,
            |view, envelope, i| fold_batch(view, envelope, &decided[i]),
            row,
        )? {
            Ok(done) => done,
            Err(refused) => return Ok(Err(refused)),
        };
        if !write_batch_row(self.conn(), "batches", &view, last_sequence).await?
            || !self.record_sealed(&sealed).await?
        {
            return Ok(Err(PlatformError::AlreadyExists(format!(
                "A batch named {name:?} already exists."
            ))));
        }
        Ok(Ok(view))
    }

    /// After tasks of `batches` finished in this transaction: records `BatchCompleted` for
    /// each finalized one with no task left pending. The ledger head is held, so of racing
    /// completions exactly one transaction sees the last pending task go.
    pub(super) async fn complete_finished_batches(
        &mut self,
        batches: &[(String, String)],
    ) -> Result<(), StoreError> {
        for (account_id, name) in batches {
            let rows: Vec<BatchRecord> = sqlx::query_as(&format!(
                "SELECT {BATCH_COLUMNS} FROM batches WHERE account_id = $1 AND name = $2 \
                 AND status = 'in_progress'"
            ))
            .bind(account_id)
            .bind(name)
            .fetch_all(self.conn())
            .await?;
            for row in rows {
                let counts = batch_counts(self.conn(), account_id, name).await?;
                let who = PlatformActor {
                    actor: Actor {
                        account_id: account_id.clone(),
                        key_id: None,
                        scope: taskledger_events::Scope::System,
                    },
                    request_id: None,
                    is_test: row.is_test != 0,
                };
                // A refusal cannot happen here: TaskFinished only decides.
                let _ = self
                    .batch_command_on(&who, name, Some(row), BatchCommand::TaskFinished { counts })
                    .await?;
            }
        }
        Ok(())
    }
}

impl Store {
    /// Runs a project command in its own append transaction.
    pub async fn project_command(
        &self,
        who: &PlatformActor,
        name: &str,
        command: ProjectCommand,
    ) -> Result<ProjectRecord, PlatformWriteError> {
        let mut tx = self.begin_append().await?;
        match tx.project_command(who, name, command).await? {
            Ok(row) => {
                tx.commit().await?;
                Ok(row)
            }
            Err(refused) => {
                tx.rollback().await?;
                Err(refused.into())
            }
        }
    }

    /// Runs a batch command in its own append transaction. A new batch's project must
    /// exist in the caller's mode; finalizing reads the batch's counts in the transaction.
    pub async fn batch_command(
        &self,
        who: &PlatformActor,
        name: &str,
        command: BatchCommand,
    ) -> Result<BatchRecord, PlatformWriteError> {
        let mut tx = self.begin_append().await?;
        let command = match command {
            BatchCommand::Create { ref project, .. } => {
                if project_row(tx.conn(), who.account(), who.is_test, project.as_str())
                    .await?
                    .is_none()
                {
                    tx.rollback().await?;
                    return Err(PlatformError::Invalid(format!(
                        "Project {:?} not found: create it first (POST /v1/projects).",
                        project.as_str()
                    ))
                    .into());
                }
                command
            }
            BatchCommand::Finalize { .. } => BatchCommand::Finalize {
                counts: batch_counts(tx.conn(), who.account(), name).await?,
            },
            other => other,
        };
        match tx.batch_command(who, name, command).await? {
            Ok(row) => {
                tx.commit().await?;
                Ok(row)
            }
            Err(refused) => {
                tx.rollback().await?;
                Err(refused.into())
            }
        }
    }

    pub async fn project(
        &self,
        account_id: &str,
        is_test: bool,
        name: &str,
    ) -> Result<Option<ProjectRecord>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        project_row(&mut conn, account_id, is_test, name).await
    }

    /// The account's projects in one mode, oldest first.
    pub async fn projects(
        &self,
        account_id: &str,
        is_test: bool,
    ) -> Result<Vec<ProjectRecord>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {PROJECT_COLUMNS} FROM projects WHERE account_id = $1 AND is_test = $2 \
             ORDER BY created_at_us, stream_id"
        ))
        .bind(account_id)
        .bind(i64::from(is_test))
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn batch(
        &self,
        account_id: &str,
        is_test: bool,
        name: &str,
    ) -> Result<Option<BatchRecord>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        batch_row(&mut conn, account_id, is_test, name).await
    }

    /// The batch whose stream is `stream_id`.
    pub async fn batch_of_stream(
        &self,
        stream_id: &str,
    ) -> Result<Option<BatchRecord>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {BATCH_COLUMNS} FROM batches WHERE stream_id = $1"
        ))
        .bind(stream_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// A batch's counts by task status, from the counts projection.
    pub async fn batch_counts(
        &self,
        account_id: &str,
        name: &str,
    ) -> Result<BatchCounts, StoreError> {
        let mut conn = self.pool.acquire().await?;
        batch_counts(&mut conn, account_id, name).await
    }

    /// One page of the account's batches in one mode, oldest first, and how many match.
    pub async fn batches(
        &self,
        account_id: &str,
        is_test: bool,
        query: &BatchQuery,
    ) -> Result<(Vec<BatchRecord>, i64), StoreError> {
        let mut filter = String::from("account_id = $1 AND is_test = $2");
        let mut n = 2;
        let mut next = |column: &str, op: &str| {
            n += 1;
            format!(" AND {column} {op} ${n}")
        };
        if query.project.is_some() {
            filter += &next("project", "=");
        }
        if query.status.is_some() {
            filter += &next("status", "=");
        }
        if query.start_us.is_some() {
            filter += &next("created_at_us", ">=");
        }
        if query.end_us.is_some() {
            filter += &next("created_at_us", "<=");
        }
        let page_sql = format!(
            "SELECT {BATCH_COLUMNS} FROM batches WHERE {filter} \
             ORDER BY created_at_us, stream_id LIMIT {} OFFSET {}",
            query.limit, query.offset
        );
        let count_sql = format!("SELECT COUNT(*) FROM batches WHERE {filter}");
        let mut page = sqlx::query_as::<_, BatchRecord>(&page_sql)
            .bind(account_id)
            .bind(i64::from(is_test));
        let mut count = sqlx::query_scalar::<_, i64>(&count_sql)
            .bind(account_id)
            .bind(i64::from(is_test));
        for v in [&query.project, &query.status].into_iter().flatten() {
            page = page.bind(v.clone());
            count = count.bind(v.clone());
        }
        for v in [query.start_us, query.end_us].into_iter().flatten() {
            page = page.bind(v);
            count = count.bind(v);
        }
        Ok((
            page.fetch_all(&self.pool).await?,
            count.fetch_one(&self.pool).await?,
        ))
    }
}

/// Where a new task goes: its project's latest params (version and fields) to inherit,
/// and the project and batch to create with it.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// The project the task is in (the batch's when the task named only a batch).
    pub project: Option<String>,
    pub params: Option<(u32, Map<String, Value>)>,
    /// Recorded in the task's own transaction, before the task ([`CommandWrite::placement`]).
    ///
    /// [`CommandWrite::placement`]: super::CommandWrite::placement
    pub creates: Vec<PlatformCreate>,
}

/// A project or batch a new task names that does not exist yet, to create in the task's
/// transaction by the task's actor.
#[derive(Debug, Clone)]
pub enum PlatformCreate {
    Project {
        who: PlatformActor,
        name: String,
        command: ProjectCommand,
    },
    Batch {
        who: PlatformActor,
        name: String,
        command: BatchCommand,
    },
}

impl PlatformCreate {
    /// The same creation, naming the task that makes it (`created_by_task` in its event).
    pub fn by_task(mut self, task_id: &str) -> PlatformCreate {
        match &mut self {
            PlatformCreate::Project {
                command:
                    ProjectCommand::Create {
                        created_by_task, ..
                    },
                ..
            }
            | PlatformCreate::Batch {
                command:
                    BatchCommand::Create {
                        created_by_task, ..
                    },
                ..
            } => *created_by_task = Some(task_id.to_string()),
            _ => {}
        }
        self
    }
}

impl AppendTx {
    /// Records one [`PlatformCreate`]. One created meanwhile by another request (this
    /// transaction holds the head, so it committed before) is used as it is; any other
    /// refusal refuses the task.
    pub(super) async fn create_placed(
        &mut self,
        create: &PlatformCreate,
    ) -> Result<Result<(), super::WriteError>, StoreError> {
        let refused = match create {
            PlatformCreate::Project { who, name, command } => self
                .project_command(who, name, command.clone())
                .await?
                .err(),
            PlatformCreate::Batch { who, name, command } => {
                self.batch_command(who, name, command.clone()).await?.err()
            }
        };
        Ok(match refused {
            None | Some(PlatformError::AlreadyExists(_)) => Ok(()),
            Some(refused) => Err(super::WriteError::Placement(refused.to_string())),
        })
    }
}

impl Store {
    /// Readies the project and batch a new task names, writing nothing: a missing project
    /// is to be created with the task's type and no params, a missing batch in `staging` in
    /// the task's project (each by the task's actor, in the task's transaction: see
    /// [`Placement::creates`]), and a batch that is no longer staging, or of another
    /// project, refuses the task.
    pub async fn place_task(
        &self,
        who: &PlatformActor,
        task_type: crate::domain::TaskType,
        project: Option<&str>,
        batch: Option<&str>,
    ) -> Result<Placement, PlatformWriteError> {
        let account = who.account();
        let batch_row = match batch {
            Some(b) => self.batch(account, who.is_test, b).await?,
            None => None,
        };
        let project = match (project, &batch_row) {
            (Some(p), _) => Some(p.to_string()),
            (None, Some(b)) => Some(b.project.clone()),
            (None, None) if batch.is_some() => {
                return Err(PlatformError::Invalid(
                    "project is required to create a task in a batch that does not exist".into(),
                )
                .into())
            }
            (None, None) => None,
        };
        let Some(project) = project else {
            return Ok(Placement::default());
        };
        let project_row = self.project(account, who.is_test, &project).await?;
        let mut creates = Vec::new();
        if project_row.is_none() {
            let name = crate::domain::Identifier::parse(project.clone())
                .map_err(|e| PlatformError::Invalid(format!("project {}", e.0)))?;
            creates.push(PlatformCreate::Project {
                who: who.clone(),
                name: project.clone(),
                command: ProjectCommand::Create {
                    name,
                    task_type,
                    params: None,
                    is_test: who.is_test,
                    created_by_task: None,
                },
            });
        }
        match (batch, batch_row) {
            (Some(_), Some(row)) => {
                let status = BatchStatus::parse(&row.status).unwrap_or(BatchStatus::Completed);
                Batch::from_view(&row.name, &row.project, status)
                    .handle(BatchCommand::AdmitTask {
                        project: project.clone(),
                    })
                    .map_err(PlatformWriteError::Refused)?;
            }
            (Some(b), None) => {
                let create = BatchCommand::Create {
                    name: crate::domain::Identifier::parse(b)
                        .map_err(|e| PlatformError::Invalid(format!("batch {}", e.0)))?,
                    project: crate::domain::Identifier::parse(project.clone())
                        .map_err(|e| PlatformError::Invalid(format!("project {}", e.0)))?,
                    callback: None,
                    metadata: Value::Object(Map::new()),
                    calibration_batch: false,
                    self_label_batch: false,
                    is_test: who.is_test,
                    created_by_task: None,
                };
                creates.push(PlatformCreate::Batch {
                    who: who.clone(),
                    name: b.to_string(),
                    command: create,
                });
            }
            _ => {}
        }
        Ok(Placement {
            params: project_row.and_then(|r| r.latest_params()),
            project: Some(project),
            creates,
        })
    }
}

/// The stream ids of projects and of batches, as index ranges of `events.task_id`: `_` is
/// followed by `` ` `` in every collation the backends use here (byte order).
const STREAM_RANGES: [(&str, &str); 2] = [("proj_", "proj`"), ("batch_", "batch`")];

impl Store {
    /// Rebuilds the project and batch views from their streams (`check = false`), or
    /// compares the stored ones with them (`check = true`); the stream ids that differ.
    /// Runs under the ledger head, reading only those streams (an index range of
    /// `events`), so its cost grows with the projects' and batches' events, never with the
    /// tasks'.
    pub async fn replay_platform_views(&self, check: bool) -> Result<Vec<String>, StoreError> {
        let mut tx = self.begin_append().await?;
        let mut projects: Vec<ProjectRecord> = Vec::new();
        let mut batches: Vec<BatchRecord> = Vec::new();
        for (from, to) in STREAM_RANGES {
            let rows: Vec<EventRow> = sqlx::query_as(&format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE task_id >= $1 AND task_id < $2 \
                 ORDER BY task_id, sequence"
            ))
            .bind(from)
            .bind(to)
            .fetch_all(tx.conn())
            .await?;
            let mut project: Option<ProjectRecord> = None;
            let mut batch: Option<BatchRecord> = None;
            for row in rows {
                let envelope = row.envelope()?;
                match decode(&envelope)? {
                    LedgerEvent::Project(e) => {
                        if envelope.sequence == 1 {
                            projects.extend(project.take());
                        }
                        project = fold_project(project.take(), &envelope, &e);
                    }
                    LedgerEvent::Batch(e) => {
                        if envelope.sequence == 1 {
                            batches.extend(batch.take());
                        }
                        batch = fold_batch(batch.take(), &envelope, &e);
                    }
                    _ => {}
                }
            }
            projects.extend(project);
            batches.extend(batch);
        }
        let mut mismatches = Vec::new();
        if check {
            let stored: Vec<ProjectRecord> =
                sqlx::query_as(&format!("SELECT {PROJECT_COLUMNS} FROM projects"))
                    .fetch_all(tx.conn())
                    .await?;
            let stored_batches: Vec<BatchRecord> =
                sqlx::query_as(&format!("SELECT {BATCH_COLUMNS} FROM batches"))
                    .fetch_all(tx.conn())
                    .await?;
            for p in &projects {
                if !stored.contains(p) {
                    mismatches.push(p.stream_id.clone());
                }
            }
            for b in &batches {
                if !stored_batches.contains(b) {
                    mismatches.push(b.stream_id.clone());
                }
            }
            if stored.len() != projects.len() || stored_batches.len() != batches.len() {
                mismatches.push("projects or batches without events".into());
            }
            tx.rollback().await?;
            return Ok(mismatches);
        }
        sqlx::query("DELETE FROM projects")
            .execute(tx.conn())
            .await?;
        sqlx::query("DELETE FROM batches")
            .execute(tx.conn())
            .await?;
        for p in &projects {
            if !write_project_row(tx.conn(), "projects", p, 0).await? {
                mismatches.push(p.stream_id.clone());
            }
        }
        for b in &batches {
            if !write_batch_row(tx.conn(), "batches", b, 0).await? {
                mismatches.push(b.stream_id.clone());
            }
        }
        tx.commit().await?;
        Ok(mismatches)
    }
}
