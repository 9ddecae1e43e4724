//! The append path. One [`AppendTx`] is one database transaction that may carry many
//! commands (group commit); each command runs inside its own savepoint, so one command's
//! conflict never takes the others down, and each command's events, task view, list row,
//! unique_id reservation and idempotency record commit together or not at all.

use chrono::{DateTime, Utc};
use sqlx::{Any, Row, Transaction};
use taskledger_events::{canonical_json, Actor, EventEnvelope, TaskEvent};
use taskledger_projections::{fold, FoldError, ListRow, TaskView, UniqueIdChange};
use uuid::Uuid;

use super::{event_hash, now_micros, Store, StoreError};

/// One decided command, ready to be recorded.
#[derive(Debug, Clone)]
pub struct CommandWrite {
    pub account_id: String,
    pub task_id: String,
    pub actor: Actor,
    pub request_id: Option<String>,
    /// The sequence of the last event the command was decided on; 0 for a new task.
    pub expected_sequence: i64,
    /// The hash of that event ([`taskledger_events::GENESIS_HASH`] for a new task).
    pub prev_hash: String,
    /// The view at `expected_sequence`; `None` for a new task.
    pub prior_view: Option<TaskView>,
    /// What the aggregate decided; may be empty (a no-op still stores its idempotency record).
    pub events: Vec<TaskEvent>,
    pub idempotency: Option<IdempotencyWrite>,
}

/// The stored answer of a request carrying an `Idempotency-Key`; on success it is the task
/// object, written in the same transaction as the command's events, by the holder of the
/// key's current claim only.
#[derive(Debug, Clone)]
pub struct IdempotencyWrite {
    pub key: String,
    pub claim_token: super::ClaimToken,
}

#[derive(Debug, Clone)]
pub struct Committed {
    pub view: TaskView,
    pub envelopes: Vec<EventEnvelope>,
}

/// Why one command of a batch was not recorded; the rest of the batch is unaffected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WriteError {
    /// Another command changed the task after this one was decided: decide again.
    #[error("the task changed concurrently")]
    Conflict,
    #[error("The unique_id (\"{unique_id}\") is already used for a different task ({task_id}).")]
    UniqueIdTaken { unique_id: String, task_id: String },
    #[error("the events do not fold into a task view: {0}")]
    Projection(#[from] FoldError),
    /// The command's `Idempotency-Key` claim was taken over or already answered.
    #[error("the idempotency key's claim is no longer held")]
    IdempotencyClaimLost,
}

/// An open append transaction holding the ledger head: every other append waits for it, which
/// is what makes commit order equal global position order.
pub struct AppendTx {
    tx: Transaction<'static, Any>,
    last_position: i64,
    last_recorded_us: i64,
    dirty: bool,
    /// Set when the head was already moved over the events of the transaction's one
    /// command (see [`Store::commit_batch`]): their time, and no second head update.
    reserved_recorded_us: Option<i64>,
}

impl Store {
    pub async fn begin_append(&self) -> Result<AppendTx, StoreError> {
        self.begin_reserving(0).await
    }

    /// Begins an append transaction, taking the head lock. With `events > 0` the head is moved
    /// over that many positions in the same statement (one round trip fewer for a transaction
    /// that carries one command); a refusal rolls the whole transaction back.
    async fn begin_reserving(&self, events: i64) -> Result<AppendTx, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Writing the head row first takes its lock (the row lock on PostgreSQL, the write
        // lock on SQLite) before any other row, so appends cannot deadlock on each other.
        // recorded_at never goes back, even if the clock does.
        let row = sqlx::query(
            "UPDATE ledger_head SET last_position = last_position + $1, \
             last_recorded_us = CASE WHEN $1 > 0 AND last_recorded_us < $2 THEN $2 \
             ELSE last_recorded_us END WHERE id = 1 \
             RETURNING last_position, last_recorded_us",
        )
        .bind(events)
        .bind(now_micros())
        .fetch_one(&mut *tx)
        .await?;
        let last_position: i64 = row.try_get(0)?;
        let last_recorded_us: i64 = row.try_get(1)?;
        Ok(AppendTx {
            tx,
            last_position: last_position - events,
            last_recorded_us,
            dirty: false,
            reserved_recorded_us: (events > 0).then_some(last_recorded_us),
        })
    }

    /// Records a batch of commands in one transaction; one result per command, in order.
    pub async fn commit_batch(
        &self,
        writes: Vec<CommandWrite>,
    ) -> Result<Vec<Result<Committed, WriteError>>, StoreError> {
        if let [only] = writes.as_slice() {
            // Alone in its transaction, a command needs no savepoint (a refusal rolls the
            // whole transaction back) and moves the head in the statement that locks it.
            let mut tx = self.begin_reserving(only.events.len() as i64).await?;
            let write = writes.into_iter().next().expect("one write");
            let account_id = write.account_id.clone();
            let result = tx.write_in_savepoint(write).await?;
            return match result {
                Ok(committed) => {
                    tx.advance(&committed);
                    tx.commit().await?;
                    Ok(vec![Ok(committed)])
                }
                Err(WriteError::UniqueIdTaken { unique_id, .. }) => {
                    tx.rollback().await?;
                    let holder = self.unique_id_holder(&account_id, &unique_id).await?;
                    Ok(vec![Err(WriteError::UniqueIdTaken {
                        unique_id,
                        task_id: holder.unwrap_or_default(),
                    })])
                }
                Err(refused) => {
                    tx.rollback().await?;
                    Ok(vec![Err(refused)])
                }
            };
        }
        let mut tx = self.begin_append().await?;
        let results = tx.write_all(writes).await?;
        tx.commit().await?;
        Ok(results)
    }
}

impl AppendTx {
    /// The position the next recorded event will get.
    pub fn next_position(&self) -> i64 {
        self.last_position + 1
    }

    /// Records one command inside a savepoint. `Err` is fatal for the whole transaction;
    /// `Ok(Err(_))` means only this command was refused.
    pub async fn write(
        &mut self,
        write: CommandWrite,
    ) -> Result<Result<Committed, WriteError>, StoreError> {
        sqlx::query("SAVEPOINT command")
            .execute(&mut *self.tx)
            .await?;
        let account_id = write.account_id.clone();
        match self.write_in_savepoint(write).await {
            Ok(Ok(committed)) => {
                sqlx::query("RELEASE SAVEPOINT command")
                    .execute(&mut *self.tx)
                    .await?;
                self.advance(&committed);
                Ok(Ok(committed))
            }
            Ok(Err(refused)) => {
                sqlx::query("ROLLBACK TO SAVEPOINT command")
                    .execute(&mut *self.tx)
                    .await?;
                sqlx::query("RELEASE SAVEPOINT command")
                    .execute(&mut *self.tx)
                    .await?;
                Ok(Err(self.name_holder(&account_id, refused).await?))
            }
            Err(fatal) => Err(fatal),
        }
    }

    /// Completes a unique_id refusal with the task that holds the value.
    async fn name_holder(
        &mut self,
        account_id: &str,
        refused: WriteError,
    ) -> Result<WriteError, StoreError> {
        match refused {
            WriteError::UniqueIdTaken { unique_id, task_id } if task_id.is_empty() => {
                let holder: Option<String> = sqlx::query_scalar(
                    "SELECT task_id FROM unique_ids WHERE account_id = $1 AND unique_id = $2",
                )
                .bind(account_id)
                .bind(&unique_id)
                .fetch_optional(&mut *self.tx)
                .await?;
                Ok(WriteError::UniqueIdTaken {
                    unique_id,
                    task_id: holder.unwrap_or_default(),
                })
            }
            other => Ok(other),
        }
    }

    /// Moves the head over a recorded command's events.
    fn advance(&mut self, committed: &Committed) {
        if let Some(last) = committed.envelopes.last() {
            self.last_position = last.global_position;
            self.last_recorded_us = last.recorded_at.timestamp_micros();
            self.dirty = true;
        }
    }

    pub async fn commit(mut self) -> Result<(), StoreError> {
        if self.dirty && self.reserved_recorded_us.is_none() {
            sqlx::query(
                "UPDATE ledger_head SET last_position = $1, last_recorded_us = $2 WHERE id = 1",
            )
            .bind(self.last_position)
            .bind(self.last_recorded_us)
            .execute(&mut *self.tx)
            .await?;
        }
        self.tx.commit().await?;
        Ok(())
    }

    pub async fn rollback(self) -> Result<(), StoreError> {
        self.tx.rollback().await?;
        Ok(())
    }

    async fn write_in_savepoint(
        &mut self,
        write: CommandWrite,
    ) -> Result<Result<Committed, WriteError>, StoreError> {
        let recorded_us = self
            .reserved_recorded_us
            .unwrap_or_else(|| now_micros().max(self.last_recorded_us));
        let prepared = match prepare(write, self.last_position, recorded_us)? {
            Ok(p) => p,
            Err(refused) => return Ok(Err(refused)),
        };
        let Prepared {
            write,
            view,
            envelopes,
        } = prepared;
        if envelopes.is_empty() {
            if let Some(idem) = &write.idempotency {
                if !self
                    .insert_idempotency(idem, &write.account_id, &view)
                    .await?
                {
                    return Ok(Err(WriteError::IdempotencyClaimLost));
                }
            }
            return Ok(Ok(Committed { view, envelopes }));
        }
        if !self.put_task_row(&write, &view).await? {
            return Ok(Err(WriteError::Conflict));
        }
        let change = UniqueIdChange::between(write.prior_view.as_ref(), &view);
        if let Err(taken) = self
            .change_unique_id(&write.account_id, &write.task_id, &change)
            .await?
        {
            return Ok(Err(taken));
        }
        let old_tags = write.prior_view.as_ref().map(|v| v.tags.as_slice());
        if old_tags != Some(view.tags.as_slice()) {
            self.put_tags(
                &write.account_id,
                &write.task_id,
                &view.tags,
                old_tags.is_some(),
            )
            .await?;
        }
        if !self.insert_events(&envelopes).await? {
            return Ok(Err(WriteError::Conflict));
        }
        if let Some(idem) = &write.idempotency {
            if !self
                .insert_idempotency(idem, &write.account_id, &view)
                .await?
            {
                return Ok(Err(WriteError::IdempotencyClaimLost));
            }
        }
        Ok(Ok(Committed { view, envelopes }))
    }

    /// Records a batch of commands. First optimistically, all at once with multi-row
    /// statements and no per-command savepoint (a few round trips for the whole batch);
    /// if any command is refused there, the batch is rolled back and replayed one command
    /// per savepoint, so only the refused ones fail, exactly as if each ran alone.
    pub async fn write_all(
        &mut self,
        writes: Vec<CommandWrite>,
    ) -> Result<Vec<Result<Committed, WriteError>>, StoreError> {
        if writes.len() > 1 {
            if let Some(done) = self.try_write_together(&writes).await? {
                return Ok(done.into_iter().map(Ok).collect());
            }
        }
        let mut results = Vec::with_capacity(writes.len());
        for write in writes {
            results.push(self.write(write).await?);
        }
        Ok(results)
    }

    /// The optimistic path of [`AppendTx::write_all`]; `None` when a command was refused and
    /// nothing of the batch remains.
    async fn try_write_together(
        &mut self,
        writes: &[CommandWrite],
    ) -> Result<Option<Vec<Committed>>, StoreError> {
        let mut tasks = std::collections::HashSet::new();
        if !writes.iter().all(|w| tasks.insert(w.task_id.as_str())) {
            // Two commands on one task: the second was decided on a stale version.
            return Ok(None);
        }
        let mut position = self.last_position;
        let mut recorded_us = self.last_recorded_us;
        let mut prepared = Vec::with_capacity(writes.len());
        for write in writes {
            let at = now_micros().max(recorded_us);
            match prepare(write.clone(), position, at)? {
                Ok(p) => {
                    if let Some(last) = p.envelopes.last() {
                        position = last.global_position;
                        recorded_us = last.recorded_at.timestamp_micros();
                    }
                    prepared.push(p);
                }
                Err(_) => return Ok(None),
            }
        }
        sqlx::query("SAVEPOINT batch")
            .execute(&mut *self.tx)
            .await?;
        if self.apply_together(&prepared).await? {
            sqlx::query("RELEASE SAVEPOINT batch")
                .execute(&mut *self.tx)
                .await?;
            if position != self.last_position {
                self.last_position = position;
                self.last_recorded_us = recorded_us;
                self.dirty = true;
            }
            Ok(Some(
                prepared
                    .into_iter()
                    .map(|p| Committed {
                        view: p.view,
                        envelopes: p.envelopes,
                    })
                    .collect(),
            ))
        } else {
            sqlx::query("ROLLBACK TO SAVEPOINT batch")
                .execute(&mut *self.tx)
                .await?;
            sqlx::query("RELEASE SAVEPOINT batch")
                .execute(&mut *self.tx)
                .await?;
            Ok(None)
        }
    }

    /// Writes every prepared command; `false` as soon as one would be refused.
    async fn apply_together(&mut self, prepared: &[Prepared]) -> Result<bool, StoreError> {
        let changing: Vec<&Prepared> = prepared
            .iter()
            .filter(|p| !p.envelopes.is_empty())
            .collect();
        let (creates, updates): (Vec<&Prepared>, Vec<&Prepared>) = changing
            .iter()
            .partition(|p| p.write.expected_sequence == 0);
        for chunk in creates.chunks(400) {
            if !self.insert_task_rows(chunk).await? {
                return Ok(false);
            }
        }
        for p in &updates {
            if !self.put_task_row(&p.write, &p.view).await? {
                return Ok(false);
            }
        }
        // Releases first: within the batch a value may move from one task to another.
        let changes: Vec<(&Prepared, UniqueIdChange)> = changing
            .iter()
            .map(|p| {
                (
                    *p,
                    UniqueIdChange::between(p.write.prior_view.as_ref(), &p.view),
                )
            })
            .filter(|(_, c)| !c.is_empty())
            .collect();
        for (p, change) in &changes {
            if change.release.is_some() {
                let release_only = UniqueIdChange {
                    release: change.release.clone(),
                    reserve: None,
                };
                self.change_unique_id(&p.write.account_id, &p.write.task_id, &release_only)
                    .await?
                    .ok();
            }
        }
        let reserves: Vec<[String; 3]> = changes
            .iter()
            .filter_map(|(p, c)| {
                c.reserve
                    .clone()
                    .map(|u| [p.write.account_id.clone(), u, p.write.task_id.clone()])
            })
            .collect();
        for chunk in reserves.chunks(1000) {
            let inserted = insert_rows(
                &mut self.tx,
                "INSERT INTO unique_ids (account_id, unique_id, task_id) VALUES ",
                chunk,
                |q, [a, u, t]| q.bind(a.clone()).bind(u.clone()).bind(t.clone()),
            )
            .await;
            if !unique_violation_as_false(inserted)? {
                return Ok(false);
            }
        }
        let retagged: Vec<&Prepared> = changing
            .iter()
            .filter(|p| {
                p.write.prior_view.as_ref().map(|v| v.tags.as_slice())
                    != Some(p.view.tags.as_slice())
            })
            .copied()
            .collect();
        for p in retagged.iter().filter(|p| p.write.prior_view.is_some()) {
            sqlx::query("DELETE FROM task_tags WHERE task_id = $1")
                .bind(&p.write.task_id)
                .execute(&mut *self.tx)
                .await?;
        }
        let tag_rows: Vec<[String; 3]> = retagged
            .iter()
            .flat_map(|p| {
                p.view.tags.iter().map(|tag| {
                    [
                        p.write.task_id.clone(),
                        p.write.account_id.clone(),
                        tag.clone(),
                    ]
                })
            })
            .collect();
        for chunk in tag_rows.chunks(1000) {
            insert_rows(
                &mut self.tx,
                "INSERT INTO task_tags (task_id, account_id, tag) VALUES ",
                chunk,
                |q, [t, a, tag]| q.bind(t.clone()).bind(a.clone()).bind(tag.clone()),
            )
            .await?;
        }
        let envelopes: Vec<EventEnvelope> = changing
            .iter()
            .flat_map(|p| p.envelopes.iter().cloned())
            .collect();
        if !self.insert_events(&envelopes).await? {
            return Ok(false);
        }
        for p in prepared {
            if let Some(idem) = &p.write.idempotency {
                if !self
                    .insert_idempotency(idem, &p.write.account_id, &p.view)
                    .await?
                {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Inserts or version-checks the task row. `false`: the task moved on (or, for a create,
    /// already exists) since the command was decided.
    async fn put_task_row(
        &mut self,
        write: &CommandWrite,
        view: &TaskView,
    ) -> Result<bool, StoreError> {
        let version = write.expected_sequence + write.events.len() as i64;
        if write.expected_sequence == 0 {
            return self.insert_task_row(&write.account_id, view, version).await;
        }
        let row = ListRow::of(view);
        let updated = sqlx::query(
            "UPDATE tasks SET version = $3, body = $4, status = $5, customer_review_status = $6, \
             unique_id = $7, updated_at_us = $8, completed_at_us = $9 \
             WHERE task_id = $1 AND version = $2",
        )
        .bind(&row.task_id)
        .bind(write.expected_sequence)
        .bind(version)
        .bind(view.to_json())
        .bind(row.status)
        .bind(&row.customer_review_status)
        .bind(&row.unique_id)
        .bind(row.updated_at_us)
        .bind(row.completed_at_us)
        .execute(&mut *self.tx)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    pub(super) fn tx_mut(&mut self) -> &mut Transaction<'static, Any> {
        &mut self.tx
    }

    /// Whether the stored view, list row, tags and unique_id reservation of a task are
    /// exactly what folding its events gives.
    pub(super) async fn projection_matches(
        &mut self,
        account_id: &str,
        view: &TaskView,
        version: i64,
    ) -> Result<bool, StoreError> {
        let expected = ListRow::of(view);
        let Some(stored) = sqlx::query(
            "SELECT account_id, version, body, task_type, status, project, batch, \
             customer_review_status, unique_id, created_at_us, updated_at_us, completed_at_us \
             FROM tasks WHERE task_id = $1",
        )
        .bind(&view.task_id)
        .fetch_optional(&mut *self.tx)
        .await?
        else {
            return Ok(false);
        };
        let row_matches = stored.try_get::<String, _>(0)? == account_id
            && stored.try_get::<i64, _>(1)? == version
            && stored.try_get::<String, _>(2)? == view.to_json()
            && stored.try_get::<String, _>(3)? == expected.task_type
            && stored.try_get::<String, _>(4)? == expected.status
            && stored.try_get::<Option<String>, _>(5)? == expected.project
            && stored.try_get::<Option<String>, _>(6)? == expected.batch
            && stored.try_get::<Option<String>, _>(7)? == expected.customer_review_status
            && stored.try_get::<Option<String>, _>(8)? == expected.unique_id
            && stored.try_get::<i64, _>(9)? == expected.created_at_us
            && stored.try_get::<i64, _>(10)? == expected.updated_at_us
            && stored.try_get::<Option<i64>, _>(11)? == expected.completed_at_us;
        if !row_matches {
            return Ok(false);
        }
        let mut tags: Vec<String> =
            sqlx::query_scalar("SELECT tag FROM task_tags WHERE task_id = $1 AND account_id = $2")
                .bind(&view.task_id)
                .bind(account_id)
                .fetch_all(&mut *self.tx)
                .await?;
        tags.sort();
        let mut expected_tags = view.tags.clone();
        expected_tags.sort();
        let reserved: Vec<String> = sqlx::query_scalar(
            "SELECT unique_id FROM unique_ids WHERE task_id = $1 AND account_id = $2",
        )
        .bind(&view.task_id)
        .bind(account_id)
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(tags == expected_tags && reserved == view.unique_id.iter().cloned().collect::<Vec<_>>())
    }

    /// Inserts a new task's row; `false` if the task id exists already.
    pub(super) async fn insert_task_row(
        &mut self,
        account_id: &str,
        view: &TaskView,
        version: i64,
    ) -> Result<bool, StoreError> {
        let row = ListRow::of(view);
        let inserted = sqlx::query(
            "INSERT INTO tasks (task_id, account_id, version, body, task_type, status, project, \
             batch, customer_review_status, unique_id, created_at_us, updated_at_us, completed_at_us) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(&row.task_id)
        .bind(account_id)
        .bind(version)
        .bind(view.to_json())
        .bind(&row.task_type)
        .bind(row.status)
        .bind(&row.project)
        .bind(&row.batch)
        .bind(&row.customer_review_status)
        .bind(&row.unique_id)
        .bind(row.created_at_us)
        .bind(row.updated_at_us)
        .bind(row.completed_at_us)
        .execute(&mut *self.tx)
        .await;
        unique_violation_as_false(inserted.map(|_| ()))
    }

    pub(super) async fn change_unique_id(
        &mut self,
        account_id: &str,
        task_id: &str,
        change: &UniqueIdChange,
    ) -> Result<Result<(), WriteError>, StoreError> {
        if let Some(old) = &change.release {
            sqlx::query(
                "DELETE FROM unique_ids WHERE account_id = $1 AND unique_id = $2 AND task_id = $3",
            )
            .bind(account_id)
            .bind(old)
            .bind(task_id)
            .execute(&mut *self.tx)
            .await?;
        }
        let Some(new) = &change.reserve else {
            return Ok(Ok(()));
        };
        // The primary key decides; a concurrent reservation of the same value waits for the
        // other transaction and then fails here.
        let reserved = sqlx::query(
            "INSERT INTO unique_ids (account_id, unique_id, task_id) VALUES ($1, $2, $3)",
        )
        .bind(account_id)
        .bind(new)
        .bind(task_id)
        .execute(&mut *self.tx)
        .await;
        if unique_violation_as_false(reserved.map(|_| ()))? {
            return Ok(Ok(()));
        }
        // The holder is named by the caller once this statement's failure is rolled back
        // (on PostgreSQL it poisons the transaction until then).
        Ok(Err(WriteError::UniqueIdTaken {
            unique_id: new.clone(),
            task_id: String::new(),
        }))
    }

    pub(super) async fn put_tags(
        &mut self,
        account_id: &str,
        task_id: &str,
        tags: &[String],
        had_tags_row: bool,
    ) -> Result<(), StoreError> {
        if had_tags_row {
            sqlx::query("DELETE FROM task_tags WHERE task_id = $1")
                .bind(task_id)
                .execute(&mut *self.tx)
                .await?;
        }
        if tags.is_empty() {
            return Ok(());
        }
        let values: Vec<String> = (0..tags.len())
            .map(|i| format!("($1, $2, ${})", i + 3))
            .collect();
        let sql = format!(
            "INSERT INTO task_tags (task_id, account_id, tag) VALUES {}",
            values.join(", ")
        );
        let mut query = sqlx::query(&sql).bind(task_id).bind(account_id);
        for tag in tags {
            query = query.bind(tag);
        }
        query.execute(&mut *self.tx).await?;
        Ok(())
    }

    /// `false` when a (task, sequence) slot is taken: the backstop for lost updates.
    async fn insert_events(&mut self, events: &[EventEnvelope]) -> Result<bool, StoreError> {
        for chunk in events.chunks(1000) {
            let inserted = insert_rows(
                &mut self.tx,
                "INSERT INTO events (global_position, event_id, task_id, account_id, sequence, \
                 event_type, event_version, payload, recorded_at_us, actor_account_id, actor_key_id, \
                 actor_scope, request_id, prev_hash, hash) VALUES ",
                chunk,
                |q, e| {
                    q.bind(e.global_position)
                        .bind(e.event_id.to_string())
                        .bind(e.task_id.clone())
                        .bind(e.account_id.clone())
                        .bind(e.sequence)
                        .bind(e.event_type.clone())
                        .bind(i64::from(e.event_version))
                        .bind(canonical_json(&e.payload))
                        .bind(e.recorded_at.timestamp_micros())
                        .bind(e.actor.account_id.clone())
                        .bind(e.actor.key_id.clone())
                        .bind(e.actor.scope.as_str())
                        .bind(e.request_id.clone())
                        .bind(e.prev_hash.clone())
                        .bind(e.hash.clone())
                },
            )
            .await;
            if !unique_violation_as_false(inserted)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// New tasks' rows in one statement; `false` if a task id exists already.
    async fn insert_task_rows(&mut self, prepared: &[&Prepared]) -> Result<bool, StoreError> {
        let inserted = insert_rows(
            &mut self.tx,
            "INSERT INTO tasks (task_id, account_id, version, body, task_type, status, project, \
             batch, customer_review_status, unique_id, created_at_us, updated_at_us, completed_at_us) VALUES ",
            prepared,
            |q, p| {
                let row = ListRow::of(&p.view);
                q.bind(row.task_id)
                    .bind(p.write.account_id.clone())
                    .bind(p.envelopes.len() as i64)
                    .bind(p.view.to_json())
                    .bind(row.task_type)
                    .bind(row.status)
                    .bind(row.project)
                    .bind(row.batch)
                    .bind(row.customer_review_status)
                    .bind(row.unique_id)
                    .bind(row.created_at_us)
                    .bind(row.updated_at_us)
                    .bind(row.completed_at_us)
            },
        )
        .await;
        unique_violation_as_false(inserted)
    }

    /// `false`: the claim is no longer the command's, which must then not commit.
    async fn insert_idempotency(
        &mut self,
        idem: &IdempotencyWrite,
        account_id: &str,
        view: &TaskView,
    ) -> Result<bool, StoreError> {
        super::idempotency::record_answer(&mut self.tx, idem, account_id, &view.to_json()).await
    }
}

/// A command with its events, hashes and resulting view computed, ready to be written.
struct Prepared {
    write: CommandWrite,
    view: TaskView,
    envelopes: Vec<EventEnvelope>,
}

/// Builds a command's envelopes (positions after `last_position`, recorded at `recorded_us`,
/// which callers keep at or after the previous event's so recorded_at follows global order
/// even if the clock steps back; hashes chained from the task's last event) and folds its
/// view, in memory.
fn prepare(
    write: CommandWrite,
    last_position: i64,
    recorded_us: i64,
) -> Result<Result<Prepared, WriteError>, StoreError> {
    if write.events.is_empty() {
        let Some(view) = write.prior_view.clone() else {
            return Ok(Err(WriteError::Conflict));
        };
        return Ok(Ok(Prepared {
            write,
            view,
            envelopes: Vec::new(),
        }));
    }
    let recorded_at: DateTime<Utc> =
        DateTime::from_timestamp_micros(recorded_us).expect("the clock is in range");
    let mut envelopes = Vec::with_capacity(write.events.len());
    let mut prev_hash = write.prev_hash.clone();
    let mut view = write.prior_view.clone();
    for (i, event) in write.events.iter().enumerate() {
        let mut envelope = EventEnvelope {
            event_id: Uuid::now_v7(),
            event_type: event.event_type().to_string(),
            event_version: event.event_version(),
            task_id: write.task_id.clone(),
            account_id: write.account_id.clone(),
            sequence: write.expected_sequence + 1 + i as i64,
            global_position: last_position + 1 + i as i64,
            recorded_at,
            actor: write.actor.clone(),
            request_id: write.request_id.clone(),
            payload: event.payload(),
            prev_hash: prev_hash.clone(),
            hash: String::new(),
        };
        envelope.hash = event_hash(&envelope);
        prev_hash = envelope.hash.clone();
        // Fold what replay will fold: the event as decoded from its stored, canonical
        // payload. Map key order then cannot differ between the live view and a rebuilt
        // one, whatever JSON map ordering the build uses.
        let stored = canonical_json(&envelope.payload);
        let event = serde_json::from_str(&stored)
            .map_err(|e| e.to_string())
            .and_then(|payload| {
                TaskEvent::decode(&envelope.event_type, envelope.event_version, payload)
                    .map_err(|e| e.to_string())
            })
            .map_err(|message| StoreError::Corrupt {
                event_id: envelope.event_id.to_string(),
                message,
            })?;
        view = Some(match fold(view, &write.task_id, recorded_at, &event) {
            Ok(v) => v,
            Err(e) => return Ok(Err(e.into())),
        });
        envelopes.push(envelope);
    }
    let view = view.expect("at least one event was folded");
    Ok(Ok(Prepared {
        write,
        view,
        envelopes,
    }))
}

type AnyQuery<'q> = sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>;

/// Runs a multi-row INSERT: `head` (which names its columns) followed by one `($n, ...)`
/// group per row, each row's values bound by `bind`.
async fn insert_rows<T>(
    tx: &mut Transaction<'static, Any>,
    head: &str,
    rows: &[T],
    bind: impl for<'q> Fn(AnyQuery<'q>, &'q T) -> AnyQuery<'q>,
) -> Result<(), sqlx::Error> {
    let columns = head
        .split_once('(')
        .and_then(|(_, rest)| rest.split_once(')'))
        .map_or(1, |(cols, _)| cols.split(',').count());
    let mut sql = String::with_capacity(head.len() + rows.len() * columns * 6);
    sql.push_str(head);
    for r in 0..rows.len() {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..columns {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push('$');
            sql.push_str(&(r * columns + c + 1).to_string());
        }
        sql.push(')');
    }
    rows.iter()
        .fold(sqlx::query(&sql), bind)
        .execute(&mut **tx)
        .await
        .map(|_| ())
}

/// Unique violations are an expected outcome (`Ok(false)`); anything else is fatal.
fn unique_violation_as_false(result: Result<(), sqlx::Error>) -> Result<bool, StoreError> {
    match result {
        Ok(()) => Ok(true),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
        Err(e) => Err(e.into()),
    }
}
