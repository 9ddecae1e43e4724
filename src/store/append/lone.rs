//! A command alone, on PostgreSQL, in one round trip: one statement outside any transaction
//! (PostgreSQL commits it by itself) moves the head, writes the task row, the counts, the
//! events and the tree's nodes (data-modifying CTEs), and refuses itself, writing nothing,
//! if the ledger is not as the command was sealed for. A command that needs more (a
//! unique_id, tags, an idempotency record, a batch) takes three: BEGIN with the head taken
//! in the same statement, every write in one statement, COMMIT.
//!
//! Taking the head in the BEGIN statement means not reading it back before the events are
//! sealed (their hashes cover their positions): the process seals them after the head it last
//! committed. If another process appended since, the first of those positions is already
//! taken, the events' primary key refuses the write, and the command is written again the
//! ordinary way (head read back, then sealed). The head only moves with the events that
//! fill its positions, so a position found free is the next one.
//!
//! The one statement serves the common command: no unique_id moves, no tag changes and no
//! idempotency record (each of those needs its own refusal handling, and a value released
//! and reserved within one statement would trip its own unique index); the others take the
//! statement-per-table path.

use sqlx::AnyConnection;
use taskledger_projections::UniqueIdChange;

use super::{
    is_refusal, known_head_of, leaves_of, name_refusal, prepare, push_events_cte, AppendTx,
    CommandWrite, Committed, Prepared, Refused, WriteError, APPEND_LOCKS,
};
use crate::store::counts::CountDeltas;
use crate::store::merkle::Growth;
use crate::store::projection::{TaskRow, TASK_COLUMNS};
use crate::store::sql::Statement;
use crate::store::{now_micros, Backend, Store, StoreError};
use taskledger_events::SealedEvent;

/// After the head was found moved, how many commits go the ordinary way before the process
/// trusts its own record again: with several writing processes the record is often stale,
/// and a miss costs a wasted transaction.
const SKIP_AFTER_MISS: u32 = 64;

/// The ledger head as this process last committed it.
#[derive(Debug, Default)]
pub struct KnownHead {
    /// (last position, its recorded_at in microseconds).
    head: Option<(i64, i64)>,
    skip: u32,
    /// How many commands were written by one statement ([`Store::commit_alone`]).
    alone: u64,
}

impl KnownHead {
    pub(super) fn committed(&mut self, position: i64, recorded_us: i64) {
        self.head = Some((position, recorded_us));
        self.skip = self.skip.saturating_sub(1);
    }

    /// The head to seal after, if it is worth trying.
    fn usable(&self) -> Option<(i64, i64)> {
        if self.skip > 0 {
            return None;
        }
        self.head
    }

    fn missed(&mut self) {
        self.head = None;
        self.skip = SKIP_AFTER_MISS;
    }
}

impl Store {
    /// Records a lone command after the head this process last committed (see the module
    /// notes); `None` when that is not known or was stale, and the caller records it the
    /// ordinary way.
    pub(super) async fn commit_on_known_head(
        &self,
        write: &CommandWrite,
    ) -> Result<Option<Result<Committed, WriteError>>, StoreError> {
        let events = write.events.len() as i64;
        if self.backend != Backend::Postgres || events == 0 || !write.placement.is_empty() {
            return Ok(None);
        }
        let Some((position, recorded_us)) = self.head.lock().expect("the head lock").usable()
        else {
            return Ok(None);
        };
        let recorded_us = now_micros().max(recorded_us);
        let prepared = match prepare(write.clone(), position, recorded_us)? {
            Ok(p) => p,
            Err(refused) => return Ok(Some(Err(refused))),
        };
        match self.commit_alone(&prepared, position).await? {
            Alone::Committed => return Ok(Some(Ok(prepared.into_committed()))),
            Alone::Refused => {
                self.head.lock().expect("the head lock").missed();
                return Ok(None);
            }
            Alone::Unfit => {}
        }
        // Integers only are formatted into the statement. The head is moved exactly as
        // `begin_reserving` moves it; whether it was where this process left it is
        // found out by the events' primary key.
        let begin = format!(
            "BEGIN; {APPEND_LOCKS}; \
             UPDATE ledger_head SET last_position = last_position + {events}, \
             last_recorded_us = GREATEST(last_recorded_us, {recorded_us}) WHERE id = 1"
        );
        let mut tx = AppendTx {
            tx: self.pool.begin_with(begin).await?,
            last_position: position,
            last_recorded_us: recorded_us,
            dirty: false,
            reserved_recorded_us: Some(recorded_us),
            merkle_trees: self.merkle_trees,
            max_record_bytes: self.max_record_bytes,
            known_head: self.head.clone(),
            finished_batches: Vec::new(),
            recorded_beyond_reserve: false,
            backend: self.backend,
            known_frontiers: self.frontiers.clone(),
            grown: Default::default(),
        };
        let applied = if prepared.fits_one_statement() {
            tx.apply_in_one_statement(&prepared).await?
        } else {
            tx.apply(std::slice::from_ref(&prepared)).await?
        };
        match applied {
            Ok(()) => {
                let committed = prepared.into_committed();
                tx.advance(&committed);
                tx.commit().await?;
                Ok(Some(Ok(committed)))
            }
            Err(Refused::Conflict) => {
                // The head moved, or the task did: the ordinary way tells which.
                tx.rollback().await?;
                self.head.lock().expect("the head lock").missed();
                Ok(None)
            }
            Err(refused) => {
                tx.rollback().await?;
                Ok(Some(Err(name_refusal(
                    &self.pool,
                    &write.account_id,
                    refused,
                    &prepared,
                )
                .await?)))
            }
        }
    }
}

impl Prepared {
    /// Whether [`AppendTx::apply_in_one_statement`] can write this command.
    pub(super) fn fits_one_statement(&self) -> bool {
        let prior_tags = self.write.prior_view.as_ref().map(|v| v.tags.as_slice());
        !self.sealed.is_empty()
            && self.write.idempotency.is_none()
            // A new task in a batch checks the batch first (`AppendTx::apply`).
            && !(self.write.expected_sequence == 0 && self.view.batch.is_some())
            && UniqueIdChange::between(self.write.prior_view.as_ref(), &self.view).is_empty()
            // A new task's tags are inserted with it; changing a task's tags replaces them,
            // which takes a statement of its own.
            && match prior_tags {
                None => self.view.tags.len() <= TAGS_IN_ONE_STATEMENT,
                Some(prior) => prior == self.view.tags.as_slice(),
            }
    }
}

/// A new task with more tags than this is written statement by statement, so that the one
/// statement's bound values stay far below PostgreSQL's limit.
const TAGS_IN_ONE_STATEMENT: usize = 100;

/// The rows of a command written by one statement, owned here so that the statement can
/// borrow them: the task row, a new task's tags, the count changes and the events.
struct OneStatement<'p> {
    p: &'p Prepared,
    row: TaskRow,
    /// A new task's tags, each once.
    tags: Vec<&'p str>,
    deltas: Vec<((String, &'static str, String), i64)>,
    event_ids: Vec<String>,
    events: Vec<&'p SealedEvent>,
}

impl<'p> OneStatement<'p> {
    fn of(p: &'p Prepared) -> OneStatement<'p> {
        let mut counts = CountDeltas::default();
        counts.change(&p.write.account_id, p.write.prior_view.as_ref(), &p.view);
        OneStatement {
            p,
            row: TaskRow::of(&p.write.account_id, p.version(), &p.view),
            tags: match p.write.prior_view {
                Some(_) => Vec::new(),
                None => {
                    let mut seen = std::collections::HashSet::new();
                    p.view
                        .tags
                        .iter()
                        .map(String::as_str)
                        .filter(|tag| seen.insert(*tag))
                        .collect()
                }
            },
            deltas: counts.nonzero(),
            event_ids: p
                .sealed
                .iter()
                .map(|s| s.envelope.event_id.to_string())
                .collect(),
            events: p.sealed.iter().collect(),
        }
    }

    /// `t` (the task row, inserted, or updated if still at the expected version; one row
    /// when written), `g` (a new task's tags), `c` (the counts) and `e` (the events), to
    /// follow `WITH ` or a comma.
    fn push_writes<'s>(&'s self, s: &mut Statement<'s>) {
        let (p, row) = (self.p, &self.row);
        if p.write.expected_sequence == 0 {
            s.push(&format!(
                "t AS (INSERT INTO tasks ({TASK_COLUMNS}) VALUES ("
            ));
            s.text(Some(&row.task_id)).push(", ");
            s.text(Some(&row.account_id)).push(", ");
            s.int(Some(row.version)).push(", ");
            s.text(Some(&row.body)).push(", ");
            s.text(Some(&row.task_type)).push(", ");
            s.text(Some(&row.status)).push(", ");
            s.text(row.project.as_deref()).push(", ");
            s.text(row.batch.as_deref()).push(", ");
            s.text(row.customer_review_status.as_deref()).push(", ");
            s.text(row.unique_id.as_deref()).push(", ");
            s.int(Some(row.created_at_us)).push(", ");
            s.int(Some(row.updated_at_us)).push(", ");
            s.int(row.completed_at_us).push(") RETURNING 1)");
        } else {
            s.push("t AS (UPDATE tasks SET version = ");
            s.int(Some(row.version)).push(", body = ");
            s.text(Some(&row.body)).push(", status = ");
            s.text(Some(&row.status))
                .push(", customer_review_status = ");
            s.text(row.customer_review_status.as_deref())
                .push(", unique_id = ");
            s.text(row.unique_id.as_deref()).push(", updated_at_us = ");
            s.int(Some(row.updated_at_us)).push(", completed_at_us = ");
            s.int(row.completed_at_us).push(" WHERE task_id = ");
            s.text(Some(&row.task_id)).push(" AND version = ");
            s.int(Some(p.write.expected_sequence)).push(" RETURNING 1)");
        }
        if !self.tags.is_empty() {
            s.push(
                ", g AS (INSERT INTO task_tags (task_id, account_id, tag, created_at_us) VALUES ",
            );
            for (i, tag) in self.tags.iter().enumerate() {
                s.push(if i == 0 { "(" } else { ", (" });
                s.text(Some(&row.task_id)).push(", ");
                s.text(Some(&row.account_id)).push(", ");
                s.text(Some(tag)).push(", ");
                s.int(Some(row.created_at_us)).push(")");
            }
            s.push(")");
        }
        if !self.deltas.is_empty() {
            s.push(", c AS (INSERT INTO task_counts (account_id, dimension, value, n) VALUES ");
            for (i, ((account, dimension, value), n)) in self.deltas.iter().enumerate() {
                s.push(if i == 0 { "(" } else { ", (" });
                s.text(Some(account)).push(", ");
                s.text(Some(dimension)).push(", ");
                s.text(Some(value)).push(", ");
                s.int(Some(*n)).push(")");
            }
            s.push(
                " ON CONFLICT (account_id, dimension, value) \
                 DO UPDATE SET n = task_counts.n + excluded.n)",
            );
        }
        s.push(", ");
        push_events_cte(s, &self.events, &self.event_ids);
    }
}

impl Store {
    /// How many commands this store (and its clones) wrote with one statement, in one round
    /// trip.
    pub fn appends_in_one_statement(&self) -> u64 {
        self.head.lock().expect("the head lock").alone
    }

    /// Records a lone command with one statement outside any transaction (PostgreSQL
    /// commits it on its own), in one round trip: the head moved, the task row, the counts,
    /// the events and the tree's new nodes. The statement refuses itself, and so writes
    /// nothing, unless the head it moved ends where this process expected and the task row
    /// was written (and the tree's head was the one known). [`Alone::Unfit`] when the
    /// command needs more than that statement ([`Prepared::fits_one_statement`], a task
    /// finishing in a batch, a tree whose head this process does not know); the caller then
    /// writes it in a transaction.
    async fn commit_alone(&self, prepared: &Prepared, position: i64) -> Result<Alone, StoreError> {
        let Some(last) = prepared.sealed.last() else {
            return Ok(Alone::Unfit);
        };
        if !prepared.fits_one_statement() || prepared.finishes_in_batch() {
            return Ok(Alone::Unfit);
        }
        let (last_position, recorded_us) = (
            last.envelope.global_position,
            last.envelope.recorded_at.timestamp_micros(),
        );
        let parts = OneStatement::of(prepared);
        let mut s = Statement::default();
        // The head first: its row lock orders this append after every other one, as the
        // transaction path's first statement does. The tables are named (and so locked, when
        // the statement starts, before any row) in `APPEND_LOCKS`'s order: ledger_head,
        // then tasks, task_tags, task_counts.
        s.push("WITH h AS (UPDATE ledger_head SET last_position = last_position + ");
        s.int(Some(last_position - position))
            .push(", last_recorded_us = GREATEST(last_recorded_us, ");
        s.int(Some(recorded_us))
            .push(") WHERE id = 1 RETURNING last_position), ");
        parts.push_writes(&mut s);
        let leaves = leaves_of(&parts.events);
        let growth = if self.merkle_trees {
            let known = &self.frontiers;
            let growth = Growth::from_known(&leaves, |account_id| {
                known
                    .lock()
                    .expect("the frontiers lock")
                    .get(account_id)
                    .cloned()
            })?
            .filter(|g| g.fits_one_statement(s.values()));
            match growth {
                Some(growth) => Some(growth),
                None => return Ok(Alone::Unfit),
            }
        } else {
            None
        };
        if let Some(growth) = &growth {
            s.push(", ");
            growth.push_guarded(&mut s);
        }
        s.push(" SELECT CASE WHEN (SELECT last_position FROM h) = ");
        s.int(Some(last_position))
            .push(" AND (SELECT COUNT(*) FROM t) = 1");
        if growth.is_some() {
            s.push(" AND (SELECT ok FROM mk)");
        }
        s.push(" THEN true ELSE taskledger_refuse('moved') END");
        match s.query().fetch_one(&self.pool).await {
            Ok(_) => {}
            // Another process appended, the task moved on, or the tree is not where this
            // process left it: nothing was written.
            Err(sqlx::Error::Database(e))
                if is_refusal(e.as_ref()) || e.code().as_deref() == Some(REFUSED) =>
            {
                return Ok(Alone::Refused)
            }
            Err(e) => return Err(e.into()),
        }
        {
            let mut head = self.head.lock().expect("the head lock");
            head.committed(last_position, recorded_us);
            head.alone += 1;
        }
        if let Some(growth) = growth {
            let mut known = self.frontiers.lock().expect("the frontiers lock");
            for (account_id, head) in growth.into_heads() {
                known.remember(account_id, head);
            }
        }
        Ok(Alone::Committed)
    }
}

/// What [`Store::commit_alone`] did.
enum Alone {
    Committed,
    /// Nothing was written: the ledger was not as the command was sealed for.
    Refused,
    /// The command needs more than the one statement.
    Unfit,
}

/// The SQLSTATE of `taskledger_refuse` (migration 0051): a statement that found the ledger
/// not as its command was sealed for.
const REFUSED: &str = "TLR01";

impl AppendTx {
    /// Writes one command (one that [`Prepared::fits_one_statement`]) with a single
    /// statement: the task row (inserted, or updated if still at the expected version), the
    /// counts and the events. A refusal leaves the transaction to be rolled back.
    pub(super) async fn apply_in_one_statement(
        &mut self,
        p: &Prepared,
    ) -> Result<Result<(), Refused>, StoreError> {
        let parts = OneStatement::of(p);
        let mut s = Statement::default();
        s.push("WITH ");
        parts.push_writes(&mut s);
        // The account's Merkle tree grows in the same statement when this process knows its
        // head: the statement checks that it is still the stored one, and writes the tree
        // only then.
        let leaves = leaves_of(&parts.events);
        let growth = if self.merkle_trees {
            let (grown, known) = (&self.grown, &self.known_frontiers);
            Growth::from_known(&leaves, |account_id| {
                known_head_of(grown, known, account_id)
            })?
            .filter(|g| g.fits_one_statement(s.values()))
        } else {
            None
        };
        match &growth {
            Some(growth) => {
                s.push(", ");
                growth.push_guarded(&mut s);
                s.push(" SELECT (SELECT COUNT(*) FROM t), (SELECT ok FROM mk)");
            }
            None => {
                s.push(" SELECT (SELECT COUNT(*) FROM t), false");
            }
        }
        let conn: &mut AnyConnection = &mut self.tx;
        let (written, grew): (i64, bool) = match s.query().fetch_one(conn).await {
            Ok(row) => (sqlx::Row::try_get(&row, 0)?, sqlx::Row::try_get(&row, 1)?),
            // The task id exists already, or its (task, sequence) slot was taken.
            Err(sqlx::Error::Database(e)) if is_refusal(e.as_ref()) => {
                return Ok(Err(Refused::Conflict))
            }
            Err(e) => return Err(e.into()),
        };
        if written != 1 {
            return Ok(Err(Refused::Conflict));
        }
        match growth {
            Some(growth) if grew => self.grown.extend(growth.into_heads()),
            // Not known, or not the stored head: read it, as on every other path.
            _ if self.merkle_trees => self.grow_stored_trees(&leaves).await?,
            _ => {}
        }
        Ok(Ok(()))
    }
}
