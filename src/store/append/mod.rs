//! The append path. One [`AppendTx`] is one database transaction that may carry many
//! commands (group commit); each command runs inside its own savepoint, so one command's
//! conflict never takes the others down, and each command's events, task view, list row,
//! unique_id reservation and idempotency record commit together or not at all.
//!
//! A command alone and a batch of commands are written by the same [`AppendTx::apply`]; the
//! batch path ([`batch`]) only decides how many commands one call carries.

mod batch;
mod lone;

pub(super) use lone::KnownHead;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{Any, AnyConnection, Transaction};
use taskledger_events::{
    seal_events, Actor, EnvelopeContext, EventEnvelope, SealedEvent, TaskEvent,
};
use taskledger_projections::{fold, FoldError, TaskView, UniqueIdChange};

use super::counts::CountDeltas;
use super::idempotency::record_answer;
use super::merkle::{append_known_leaves, append_leaves, Growth, Head, KnownFrontiers, Leaf};
use super::projection::{
    insert_task_rows, release_unique_ids, replace_tags, reserve_unique_ids, update_task_row,
    Reservation, TaskRow, TaskTags,
};
use super::read::{holder_of, EVENT_COLUMNS};
use super::sql::{insert_rows, unique_violation_as_false, Savepoint, Statement};
use super::{now_micros, Backend, Store, StoreError};

/// Events per INSERT: 16 parameters each stays far below both backends' limits.
const EVENTS_PER_INSERT: usize = 1000;

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
    /// The project and batch a new task names that do not exist yet: created in the task's
    /// transaction, before it, so both are recorded or neither is.
    pub placement: Vec<super::platform::PlatformCreate>,
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
    /// `task_id` is the task holding the value, never empty: a value whose holder let go
    /// before it could be named is a [`WriteError::Conflict`] (decide again) instead.
    #[error("The unique_id (\"{unique_id}\") is already used for a different task ({task_id}).")]
    UniqueIdTaken { unique_id: String, task_id: String },
    #[error("the events do not fold into a task view: {0}")]
    Projection(#[from] FoldError),
    /// The command's `Idempotency-Key` claim was taken over or already answered.
    #[error("the idempotency key's claim is no longer held")]
    IdempotencyClaimLost,
    /// A new task names a batch that stopped taking tasks before the task could commit.
    #[error("Batch {batch:?} is {status}: tasks may join a batch only while it is staging.")]
    BatchClosed { batch: String, status: String },
    /// The project or batch the new task was to create was refused.
    #[error("{0}")]
    Placement(String),
}

/// Why [`AppendTx::apply`] wrote nothing; which command it was is the caller's to find out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// A task moved on, or a create's id exists already.
    Conflict,
    /// A unique_id to reserve is held by another task.
    UniqueIdTaken,
    /// The command's idempotency claim is no longer its own (fenced): it must not commit.
    ClaimLost,
    /// A new task names a batch that is no longer staging.
    BatchClosed,
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
    /// Whether appended events go into their accounts' Merkle trees ([`Store::without_merkle_trees`]).
    merkle_trees: bool,
    /// See [`Store::with_max_record_bytes`].
    pub(in crate::store) max_record_bytes: usize,
    /// The store's record of the head, set to this transaction's once it commits.
    known_head: std::sync::Arc<std::sync::Mutex<KnownHead>>,
    /// (account, batch) of each batch a task of this transaction finished in: checked for
    /// completion before the transaction commits.
    finished_batches: Vec<(String, String)>,
    /// Events were recorded beyond those the head was moved over in advance: the head is
    /// written at commit after all.
    recorded_beyond_reserve: bool,
    backend: Backend,
    /// The store's record of the trees' heads, given this transaction's once it commits.
    known_frontiers: std::sync::Arc<std::sync::Mutex<KnownFrontiers>>,
    /// The heads of the trees this transaction grew, as they are in it.
    grown: HashMap<String, Head>,
}

/// What every append transaction on PostgreSQL takes before the head row: the projection
/// tables a `replay` swaps, in the order the swap locks them ([`SWAP_LOCKS`]). A lock on a
/// table is always taken before the head's row lock, by every append and by the swap, so
/// no append can hold the head while it waits for a table the swap holds. A lone command's
/// single statement takes its tables' locks when it starts, before its head update runs,
/// and names them in the same order.
pub(crate) const APPEND_LOCKS: &str =
    "LOCK TABLE tasks, task_tags, unique_ids, task_counts IN ROW EXCLUSIVE MODE";

/// What `replay`'s swap takes before the head (see [`APPEND_LOCKS`]); a long reader of the
/// live tables makes it fail after 10 s rather than keep writers waiting behind it.
pub(crate) const SWAP_LOCKS: &str = "SET LOCAL lock_timeout = '10s'; \
     LOCK TABLE tasks, task_tags, unique_ids, task_counts IN ACCESS EXCLUSIVE MODE";

impl Store {
    pub async fn begin_append(&self) -> Result<AppendTx, StoreError> {
        self.begin_reserving(0).await
    }

    /// An append transaction that holds the projection tables alone, for `replay`'s swap.
    pub(crate) async fn begin_swap(&self) -> Result<AppendTx, StoreError> {
        self.begin_locking(0, SWAP_LOCKS).await
    }

    /// Begins an append transaction, taking the head lock. With `events > 0` the head is moved
    /// over that many positions in the same statement (one round trip fewer for a transaction
    /// that carries one command); a refusal rolls the whole transaction back.
    async fn begin_reserving(&self, events: i64) -> Result<AppendTx, StoreError> {
        self.begin_locking(events, APPEND_LOCKS).await
    }

    /// [`Store::begin_reserving`], taking `locks` (PostgreSQL statements) with BEGIN, in its
    /// round trip.
    async fn begin_locking(&self, events: i64, locks: &str) -> Result<AppendTx, StoreError> {
        let mut tx = match self.backend {
            Backend::Postgres => self.pool.begin_with(format!("BEGIN; {locks}")).await?,
            // One writer at a time: the write lock is all there is to take.
            Backend::Sqlite => self.pool.begin().await?,
        };
        // Writing the head row first takes its lock (the row lock on PostgreSQL, the write
        // lock on SQLite) before any other row, so appends cannot deadlock on each other.
        // recorded_at never goes back, even if the clock does.
        let (last_position, last_recorded_us): (i64, i64) = sqlx::query_as(
            "UPDATE ledger_head SET last_position = last_position + $1, \
             last_recorded_us = CASE WHEN $1 > 0 AND last_recorded_us < $2 THEN $2 \
             ELSE last_recorded_us END WHERE id = 1 \
             RETURNING last_position, last_recorded_us",
        )
        .bind(events)
        .bind(now_micros())
        .fetch_one(&mut *tx)
        .await?;
        Ok(AppendTx {
            tx,
            last_position: last_position - events,
            last_recorded_us,
            dirty: false,
            reserved_recorded_us: (events > 0).then_some(last_recorded_us),
            merkle_trees: self.merkle_trees,
            max_record_bytes: self.max_record_bytes,
            known_head: self.head.clone(),
            finished_batches: Vec::new(),
            recorded_beyond_reserve: false,
            backend: self.backend,
            known_frontiers: self.frontiers.clone(),
            grown: HashMap::new(),
        })
    }

    /// Records a batch of commands in one transaction; one result per command, in order.
    pub async fn commit_batch(
        &self,
        writes: Vec<CommandWrite>,
    ) -> Result<Vec<Result<Committed, WriteError>>, StoreError> {
        let only = match <[CommandWrite; 1]>::try_from(writes) {
            // A task creating its project or batch: the head moves over all their events.
            Ok([only]) if !only.placement.is_empty() => {
                let mut tx = self.begin_append().await?;
                let results = tx.write_all(vec![only]).await?;
                tx.commit().await?;
                return Ok(results);
            }
            Ok([only]) => only,
            Err(writes) => {
                let mut tx = self.begin_append().await?;
                let results = tx.write_all(writes).await?;
                tx.commit().await?;
                return Ok(results);
            }
        };
        if let Some(done) = self.commit_on_known_head(&only).await? {
            return Ok(vec![done]);
        }
        // Alone in its transaction, a command needs no savepoint (a refusal rolls the whole
        // transaction back) and moves the head in the statement that locks it.
        let mut tx = self.begin_reserving(only.events.len() as i64).await?;
        let account_id = only.account_id.clone();
        let prepared = match tx.prepare(only)? {
            Ok(p) => p,
            Err(refused) => {
                tx.rollback().await?;
                return Ok(vec![Err(refused)]);
            }
        };
        let applied = if self.backend == Backend::Postgres && prepared.fits_one_statement() {
            tx.apply_in_one_statement(&prepared).await?
        } else {
            tx.apply(std::slice::from_ref(&prepared)).await?
        };
        match applied {
            Ok(()) => {
                let committed = prepared.into_committed();
                tx.advance(&committed);
                tx.commit().await?;
                Ok(vec![Ok(committed)])
            }
            Err(refused) => {
                // On PostgreSQL the failed statement poisoned the transaction: name the
                // holder from outside it.
                tx.rollback().await?;
                Ok(vec![Err(name_refusal(
                    &self.pool,
                    &account_id,
                    refused,
                    &prepared,
                )
                .await?)])
            }
        }
    }
}

/// What to answer for a command [`AppendTx::apply`] refused, once what it wrote is rolled
/// back. A unique_id found taken is named after the task holding it, read through
/// `executor`; if that task let go of it meanwhile there is no holder to name, and the
/// command is decided again instead (a conflict), never answered with an empty holder.
async fn name_refusal<'e>(
    executor: impl sqlx::Executor<'e, Database = Any>,
    account_id: &str,
    refused: Refused,
    prepared: &Prepared,
) -> Result<WriteError, StoreError> {
    if refused == Refused::ClaimLost {
        return Ok(WriteError::IdempotencyClaimLost);
    }
    if refused == Refused::BatchClosed {
        let batch = prepared.view.batch.clone().unwrap_or_default();
        let status: Option<String> = sqlx::query_scalar(
            "SELECT status FROM batches WHERE account_id = $1 AND name = $2 LIMIT 1",
        )
        .bind(account_id)
        .bind(&batch)
        .fetch_optional(executor)
        .await?;
        return Ok(WriteError::BatchClosed {
            batch,
            status: status.unwrap_or_else(|| "closed".into()),
        });
    }
    let (Refused::UniqueIdTaken, Some(unique_id)) = (refused, prepared.reserved()) else {
        return Ok(WriteError::Conflict);
    };
    Ok(match holder_of(executor, account_id, &unique_id).await? {
        Some(task_id) => WriteError::UniqueIdTaken { unique_id, task_id },
        None => WriteError::Conflict,
    })
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
        if !write.placement.is_empty() {
            return self.write_placed(write).await;
        }
        let prepared = match self.prepare(write)? {
            Ok(p) => p,
            Err(refused) => return Ok(Err(refused)),
        };
        let savepoint = Savepoint::open(self.conn(), "command").await?;
        match self.apply(std::slice::from_ref(&prepared)).await? {
            Ok(()) => {
                savepoint.release(self.conn()).await?;
                let committed = prepared.into_committed();
                self.advance(&committed);
                Ok(Ok(committed))
            }
            Err(refused) => {
                savepoint.roll_back(self.conn()).await?;
                let account_id = prepared.write.account_id.clone();
                Ok(Err(name_refusal(
                    self.conn(),
                    &account_id,
                    refused,
                    &prepared,
                )
                .await?))
            }
        }
    }

    /// Records a new task with the project and batch it creates, all inside one savepoint:
    /// a task refused takes its project and batch with it, and what this transaction
    /// remembered of them (the head, the trees grown) is forgotten too.
    async fn write_placed(
        &mut self,
        mut write: CommandWrite,
    ) -> Result<Result<Committed, WriteError>, StoreError> {
        let placement = std::mem::take(&mut write.placement);
        let before = (
            self.last_position,
            self.last_recorded_us,
            self.dirty,
            self.recorded_beyond_reserve,
            self.grown.clone(),
        );
        let savepoint = Savepoint::open(self.conn(), "placed").await?;
        let mut refusal = None;
        for create in &placement {
            if let Err(refused) = self.create_placed(create).await? {
                refusal = Some(refused);
                break;
            }
        }
        let prepared = match refusal {
            Some(refused) => Err(refused),
            None => self.prepare(write)?,
        };
        let refused = match prepared {
            Err(refused) => Err(refused),
            Ok(prepared) => match self.apply(std::slice::from_ref(&prepared)).await? {
                Ok(()) => {
                    savepoint.release(self.conn()).await?;
                    let committed = prepared.into_committed();
                    self.advance(&committed);
                    return Ok(Ok(committed));
                }
                Err(refused) => Ok((refused, prepared)),
            },
        };
        // Rolled back first: on PostgreSQL a refused statement leaves the transaction
        // unusable until then, and the refusal is named with a read.
        savepoint.roll_back(self.conn()).await?;
        (
            self.last_position,
            self.last_recorded_us,
            self.dirty,
            self.recorded_beyond_reserve,
            self.grown,
        ) = before;
        Ok(Err(match refused {
            Err(refused) => refused,
            Ok((refused, prepared)) => {
                let account_id = prepared.write.account_id.clone();
                name_refusal(self.conn(), &account_id, refused, &prepared).await?
            }
        }))
    }

    /// Notes the batch of a task the command finished (completed, errored, canceled).
    fn note_finished<'a>(
        &mut self,
        account_id: &str,
        view: &TaskView,
        mut events: impl Iterator<Item = &'a EventEnvelope>,
    ) {
        if view.batch.is_none() || !events.any(|e| FINISHING.contains(&e.event_type.as_str())) {
            return;
        }
        if let Some(batch) = view.batch.clone() {
            let key = (account_id.to_string(), batch);
            if !self.finished_batches.contains(&key) {
                self.finished_batches.push(key);
            }
        }
    }

    /// Moves the head over a recorded command's events.
    fn advance(&mut self, committed: &Committed) {
        if let Some(first) = committed.envelopes.first() {
            let account_id = first.account_id.clone();
            self.note_finished(&account_id, &committed.view, committed.envelopes.iter());
        }
        if let Some(last) = committed.envelopes.last() {
            self.last_position = last.global_position;
            self.last_recorded_us = last.recorded_at.timestamp_micros();
            self.dirty = true;
        }
    }

    /// Records events decided outside the task aggregate (an API key's), sealed after
    /// [`AppendTx::next_position`] at [`AppendTx::next_recorded_us`]: inserted, added to
    /// their accounts' trees, and the head moved over them. `false` if a slot was taken.
    pub(super) async fn record_sealed(
        &mut self,
        sealed: &[SealedEvent],
    ) -> Result<bool, StoreError> {
        let events: Vec<&SealedEvent> = sealed.iter().collect();
        if !insert_events(self.conn(), &events).await? {
            return Ok(false);
        }
        self.grow_trees(&events).await?;
        if let Some(last) = sealed.last() {
            self.last_position = last.envelope.global_position;
            self.last_recorded_us = last.envelope.recorded_at.timestamp_micros();
            self.dirty = true;
            self.recorded_beyond_reserve = self.reserved_recorded_us.is_some();
        }
        Ok(true)
    }

    /// The recorded_at of an event recorded now: never before the last one.
    pub(super) fn next_recorded_us(&self) -> i64 {
        now_micros().max(self.last_recorded_us)
    }

    pub async fn commit(mut self) -> Result<(), StoreError> {
        if !self.finished_batches.is_empty() {
            let batches = std::mem::take(&mut self.finished_batches);
            self.complete_finished_batches(&batches).await?;
        }
        if self.dirty && (self.reserved_recorded_us.is_none() || self.recorded_beyond_reserve) {
            sqlx::query(
                "UPDATE ledger_head SET last_position = $1, last_recorded_us = $2 WHERE id = 1",
            )
            .bind(self.last_position)
            .bind(self.last_recorded_us)
            .execute(&mut *self.tx)
            .await?;
        }
        self.tx.commit().await?;
        self.known_head
            .lock()
            .expect("the head lock")
            .committed(self.last_position, self.last_recorded_us);
        let mut known = self.known_frontiers.lock().expect("the frontiers lock");
        for (account_id, head) in self.grown {
            known.remember(account_id, head);
        }
        Ok(())
    }

    /// Adds recorded events to their accounts' trees. On PostgreSQL, from the heads this
    /// transaction or this process last wrote, checked against the stored ones and written
    /// in one statement; otherwise, or if they were not the stored ones, read first.
    async fn grow_trees(&mut self, events: &[&SealedEvent]) -> Result<(), StoreError> {
        if !self.merkle_trees || events.is_empty() {
            return Ok(());
        }
        let leaves = leaves_of(events);
        if self.backend == Backend::Postgres {
            let (grown, known) = (&self.grown, &self.known_frontiers);
            let heads = append_known_leaves(&mut self.tx, &leaves, |account_id| {
                known_head_of(grown, known, account_id)
            })
            .await?;
            if let Some(heads) = heads {
                self.grown.extend(heads);
                return Ok(());
            }
        }
        self.grow_stored_trees(&leaves).await
    }

    /// Inserts the events; on PostgreSQL, when this process knows their trees' heads, the
    /// trees grow in the same statement (guarded as [`AppendTx::grow_trees`] is), so a group
    /// commit pays no round trip of its own for them.
    async fn insert_events_growing_trees(
        &mut self,
        events: &[&SealedEvent],
    ) -> Result<Inserted, StoreError> {
        let growth = if self.backend == Backend::Postgres
            && self.merkle_trees
            && !events.is_empty()
            && events.len() <= EVENTS_PER_INSERT
        {
            let (grown, known) = (&self.grown, &self.known_frontiers);
            let leaves = leaves_of(events);
            Growth::from_known(&leaves, |account_id| {
                known_head_of(grown, known, account_id)
            })?
            .filter(|g| g.fits_one_statement(events.len() * 16))
        } else {
            None
        };
        let Some(growth) = growth else {
            return Ok(if insert_events(self.conn(), events).await? {
                Inserted::EventsOnly
            } else {
                Inserted::Refused
            });
        };
        let event_ids: Vec<String> = events
            .iter()
            .map(|s| s.envelope.event_id.to_string())
            .collect();
        let mut s = Statement::default();
        s.push("WITH ");
        growth.push_guarded(&mut s);
        s.push(", ");
        push_events_cte(&mut s, events, &event_ids);
        s.push(" SELECT ok FROM mk");
        let ok: bool = match s.query().fetch_one(&mut *self.tx).await {
            Ok(row) => sqlx::Row::try_get(&row, 0)?,
            Err(sqlx::Error::Database(e)) if is_refusal(e.as_ref()) => {
                return Ok(Inserted::Refused)
            }
            Err(e) => return Err(e.into()),
        };
        Ok(if ok {
            Inserted::TreesGrown(growth.into_heads().collect())
        } else {
            Inserted::EventsOnly
        })
    }

    /// [`AppendTx::grow_trees`] from the heads as stored.
    async fn grow_stored_trees(&mut self, leaves: &[Leaf<'_>]) -> Result<(), StoreError> {
        let heads = append_leaves(self.conn(), leaves).await?;
        self.known_frontiers
            .lock()
            .expect("the frontiers lock")
            .read_back();
        self.grown.extend(heads);
        Ok(())
    }

    pub async fn rollback(self) -> Result<(), StoreError> {
        self.tx.rollback().await?;
        Ok(())
    }

    pub(super) fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }

    /// A command's envelopes, placed after the last recorded event, and its view.
    fn prepare(&self, write: CommandWrite) -> Result<Result<Prepared, WriteError>, StoreError> {
        let recorded_us = self
            .reserved_recorded_us
            .unwrap_or_else(|| now_micros().max(self.last_recorded_us));
        prepare(write, self.last_position, recorded_us)
    }

    /// Writes the prepared commands, all or nothing: events, task rows, unique_id
    /// reservations, tags and idempotency records, each kind in as few statements as the
    /// backends allow. On `Err(_)` something was refused and the caller rolls back to its
    /// savepoint (or the transaction) before anything else.
    async fn apply(&mut self, prepared: &[Prepared]) -> Result<Result<(), Refused>, StoreError> {
        let changing: Vec<&Prepared> = prepared.iter().filter(|p| !p.sealed.is_empty()).collect();
        let rows: Vec<TaskRow> = changing
            .iter()
            .map(|p| TaskRow::of(&p.write.account_id, p.version(), &p.view))
            .collect();
        let (created, updated): (Vec<_>, Vec<_>) = changing
            .iter()
            .zip(&rows)
            .partition(|(p, _)| p.write.expected_sequence == 0);
        // A new task joins its batch only while the batch is staging. Checked here, under
        // the ledger head, so a finalize cannot slip between the check and the task's commit.
        for p in &changing {
            if let (0, Some(batch)) = (p.write.expected_sequence, &p.view.batch) {
                if !batch_takes_tasks(self.conn(), &p.write.account_id, batch).await? {
                    return Ok(Err(Refused::BatchClosed));
                }
            }
        }
        let created: Vec<&TaskRow> = created.into_iter().map(|(_, row)| row).collect();
        if !insert_task_rows(self.conn(), &created).await? {
            return Ok(Err(Refused::Conflict));
        }
        for (p, row) in updated {
            if !update_task_row(self.conn(), row, p.write.expected_sequence).await? {
                return Ok(Err(Refused::Conflict));
            }
        }
        let changes: Vec<(&Prepared, UniqueIdChange)> = changing
            .iter()
            .map(|p| {
                (
                    *p,
                    UniqueIdChange::between(p.write.prior_view.as_ref(), &p.view),
                )
            })
            .collect();
        let reservations = |pick: fn(&UniqueIdChange) -> Option<&String>| -> Vec<Reservation> {
            changes
                .iter()
                .filter_map(|(p, change)| {
                    pick(change).map(|unique_id| Reservation {
                        account_id: &p.write.account_id,
                        unique_id,
                        task_id: &p.write.task_id,
                    })
                })
                .collect()
        };
        release_unique_ids(self.conn(), &reservations(|c| c.release.as_ref())).await?;
        if !reserve_unique_ids(self.conn(), &reservations(|c| c.reserve.as_ref())).await? {
            return Ok(Err(Refused::UniqueIdTaken));
        }
        let retagged: Vec<TaskTags> = changing
            .iter()
            .filter(|p| {
                p.write.prior_view.as_ref().map(|v| v.tags.as_slice())
                    != Some(p.view.tags.as_slice())
            })
            .map(|p| TaskTags {
                account_id: &p.write.account_id,
                task_id: &p.write.task_id,
                tags: &p.view.tags,
                created_at_us: p.view.created_at.timestamp_micros(),
                replaces: p.write.prior_view.is_some(),
            })
            .collect();
        replace_tags(self.conn(), &retagged).await?;
        let mut counts = CountDeltas::default();
        for p in &changing {
            counts.change(&p.write.account_id, p.write.prior_view.as_ref(), &p.view);
        }
        counts.write(self.conn(), "task_counts").await?;
        let events: Vec<&SealedEvent> = changing.iter().flat_map(|p| &p.sealed).collect();
        let grown = match self.insert_events_growing_trees(&events).await? {
            Inserted::Refused => return Ok(Err(Refused::Conflict)),
            Inserted::TreesGrown(heads) => Some(heads),
            Inserted::EventsOnly => None,
        };
        for p in prepared {
            if let Some(idem) = &p.write.idempotency {
                let body = p.view.to_json();
                // Idempotency keys belong to the account (and are tied to the API key), not
                // to one of its ledgers: a contributor's command on a test task answers the
                // claim it made as the account's.
                let account = taskledger_events::account_of_ledger(&p.write.account_id);
                if !record_answer(self.conn(), idem, account, &body).await? {
                    return Ok(Err(Refused::ClaimLost));
                }
            }
        }
        // Last, once nothing can be refused: the heads grown are this transaction's only
        // if no savepoint rolls the writes back.
        match grown {
            Some(heads) => self.grown.extend(heads),
            None => self.grow_trees(&events).await?,
        }
        Ok(Ok(()))
    }
}

/// Whether a new task may join `batch`: it is staging, or it is no batch of the ledger's
/// (a name no batch was created under: tasks carried free batch names before batches were
/// recorded). A name used by a live and a test batch takes tasks if either is staging.
async fn batch_takes_tasks(
    conn: &mut AnyConnection,
    account_id: &str,
    batch: &str,
) -> Result<bool, StoreError> {
    let statuses: Vec<String> =
        sqlx::query_scalar("SELECT status FROM batches WHERE account_id = $1 AND name = $2")
            .bind(account_id)
            .bind(batch)
            .fetch_all(conn)
            .await?;
    Ok(statuses.is_empty() || statuses.iter().any(|s| s == "staging"))
}

/// What [`AppendTx::insert_events_growing_trees`] did.
enum Inserted {
    /// A (task, sequence) slot was taken: nothing was written.
    Refused,
    /// The events, and the trees grown to these heads.
    TreesGrown(Vec<(String, Head)>),
    /// The events only: the trees are still to grow.
    EventsOnly,
}

/// Whether a unique violation is a command's refusal (its task or a slot of it was taken),
/// not a tree node met where none should be, which is the ledger's damage and an error.
fn is_refusal(e: &dyn sqlx::error::DatabaseError) -> bool {
    e.is_unique_violation() && e.constraint() != Some("merkle_nodes_pkey")
}

/// `e AS (INSERT INTO events ...)`, a PostgreSQL common table expression; `event_ids` are
/// the events' ids as text.
fn push_events_cte<'a>(s: &mut Statement<'a>, events: &[&'a SealedEvent], event_ids: &'a [String]) {
    s.push(&format!(
        "e AS (INSERT INTO events ({EVENT_COLUMNS}) VALUES "
    ));
    for (i, sealed) in events.iter().enumerate() {
        let e = &sealed.envelope;
        s.push(if i == 0 { "(" } else { ", (" });
        s.int(Some(e.global_position)).push(", ");
        s.text(Some(&event_ids[i])).push(", ");
        s.text(Some(&e.task_id)).push(", ");
        s.text(Some(&e.account_id)).push(", ");
        s.int(Some(e.sequence)).push(", ");
        s.text(Some(&e.event_type)).push(", ");
        s.int(Some(i64::from(e.event_version))).push(", ");
        s.text(Some(&sealed.payload_json)).push(", ");
        s.int(Some(e.recorded_at.timestamp_micros())).push(", ");
        s.text(Some(&e.actor.account_id)).push(", ");
        s.text(e.actor.key_id.as_deref()).push(", ");
        s.text(Some(e.actor.scope.as_str())).push(", ");
        s.text(e.request_id.as_deref()).push(", ");
        s.text(Some(&e.prev_hash)).push(", ");
        s.text(Some(&e.hash)).push(", ");
        s.int(Some(i64::from(e.hash_version))).push(")");
    }
    s.push(")");
}

/// An account's tree head as this transaction grew it, or else as this process last wrote it.
fn known_head_of(
    grown: &HashMap<String, Head>,
    known: &std::sync::Mutex<KnownFrontiers>,
    account_id: &str,
) -> Option<Head> {
    grown.get(account_id).cloned().or_else(|| {
        known
            .lock()
            .expect("the frontiers lock")
            .get(account_id)
            .cloned()
    })
}

/// The events' leaves, in global order.
fn leaves_of<'a>(events: &[&'a SealedEvent]) -> Vec<Leaf<'a>> {
    events
        .iter()
        .map(|s| Leaf {
            account_id: &s.envelope.account_id,
            global_position: s.envelope.global_position,
            hash: &s.envelope.hash,
        })
        .collect()
}

/// `false` when a (task, sequence) slot is taken: the backstop for lost updates. The payload
/// stored is the text that was hashed, byte for byte.
async fn insert_events(
    conn: &mut AnyConnection,
    events: &[&SealedEvent],
) -> Result<bool, StoreError> {
    let head = format!("INSERT INTO events ({EVENT_COLUMNS}) VALUES ");
    for chunk in events.chunks(EVENTS_PER_INSERT) {
        let inserted = insert_rows(&mut *conn, &head, chunk, |q, s| {
            let e = &s.envelope;
            q.bind(e.global_position)
                .bind(e.event_id.to_string())
                .bind(&e.task_id)
                .bind(&e.account_id)
                .bind(e.sequence)
                .bind(&e.event_type)
                .bind(i64::from(e.event_version))
                .bind(&s.payload_json)
                .bind(e.recorded_at.timestamp_micros())
                .bind(&e.actor.account_id)
                .bind(&e.actor.key_id)
                .bind(e.actor.scope.as_str())
                .bind(&e.request_id)
                .bind(&e.prev_hash)
                .bind(&e.hash)
                .bind(i64::from(e.hash_version))
        })
        .await;
        if !unique_violation_as_false(inserted)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The events that finish a task: its batch may be complete once one is recorded.
const FINISHING: [&str; 3] = ["TaskCompleted", "TaskErrored", "TaskCanceled"];

/// A command with its events sealed and its resulting view folded, ready to be written.
struct Prepared {
    write: CommandWrite,
    view: TaskView,
    sealed: Vec<SealedEvent>,
}

impl Prepared {
    /// The task's version once the command is recorded.
    fn version(&self) -> i64 {
        self.write.expected_sequence + self.sealed.len() as i64
    }

    /// Whether the command finishes a task of a batch, which the transaction checks for
    /// completion before it commits.
    fn finishes_in_batch(&self) -> bool {
        self.view.batch.is_some()
            && self
                .sealed
                .iter()
                .any(|s| FINISHING.contains(&s.envelope.event_type.as_str()))
    }

    /// The unique_id the command reserves, if any.
    fn reserved(&self) -> Option<String> {
        UniqueIdChange::between(self.write.prior_view.as_ref(), &self.view).reserve
    }

    fn into_committed(self) -> Committed {
        Committed {
            view: self.view,
            envelopes: self.sealed.into_iter().map(|s| s.envelope).collect(),
        }
    }
}

/// Seals a command's events (positions after `last_position`, recorded at `recorded_us`,
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
            sealed: Vec::new(),
        }));
    }
    let recorded_at: DateTime<Utc> =
        DateTime::from_timestamp_micros(recorded_us).expect("the clock is in range");
    let context = EnvelopeContext {
        task_id: &write.task_id,
        account_id: &write.account_id,
        actor: &write.actor,
        request_id: write.request_id.as_deref(),
        recorded_at,
        last_sequence: write.expected_sequence,
        prev_hash: &write.prev_hash,
        last_position,
    };
    let sealed = seal_events(&context, &write.events).map_err(|e| StoreError::Unencodable {
        task_id: write.task_id.clone(),
        message: e.to_string(),
    })?;
    let mut view = write.prior_view.clone();
    for s in &sealed {
        // Fold what replay will fold: the event decoded from its stored payload (the sealed
        // envelope's payload is the one parsed back from the stored text).
        let event = s.envelope.event().map_err(|e| StoreError::Corrupt {
            event_id: s.envelope.event_id.to_string(),
            message: e.to_string(),
        })?;
        view = Some(match fold(view, &write.task_id, recorded_at, &event) {
            Ok(v) => v,
            Err(e) => return Ok(Err(e.into())),
        });
    }
    let view = view.expect("at least one event was folded");
    Ok(Ok(Prepared {
        write,
        view,
        sealed,
    }))
}
