//! A command alone in its transaction, on PostgreSQL, in three round trips like the plain
//! one-insert transaction it is measured against: BEGIN with the head taken in the same
//! statement, every write in one statement (data-modifying CTEs), COMMIT.
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
    is_refusal, known_head_of, leaves_of, name_refusal, push_events_cte, AppendTx, CommandWrite,
    Committed, Prepared, Refused, WriteError,
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
        // Integers only are formatted into the statement. The head is moved exactly as
        // `begin_reserving` moves it; whether it was where this process left it is
        // found out by the events' primary key.
        let begin = format!(
            "BEGIN; UPDATE ledger_head SET last_position = last_position + {events}, \
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
        let prepared = match tx.prepare(write.clone())? {
            Ok(p) => p,
            Err(refused) => {
                tx.rollback().await?;
                return Ok(Some(Err(refused)));
            }
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
            && prior_tags.unwrap_or(&[]) == self.view.tags.as_slice()
    }
}

impl AppendTx {
    /// Writes one command (one that [`Prepared::fits_one_statement`]) with a single
    /// statement: the task row (inserted, or updated if still at the expected version), the
    /// counts and the events. A refusal leaves the transaction to be rolled back.
    pub(super) async fn apply_in_one_statement(
        &mut self,
        p: &Prepared,
    ) -> Result<Result<(), Refused>, StoreError> {
        let row = TaskRow::of(&p.write.account_id, p.version(), &p.view);
        let mut counts = CountDeltas::default();
        counts.change(&p.write.account_id, p.write.prior_view.as_ref(), &p.view);
        let deltas = counts.nonzero();
        let event_ids: Vec<String> = p
            .sealed
            .iter()
            .map(|s| s.envelope.event_id.to_string())
            .collect();
        let mut s = Statement::default();
        if p.write.expected_sequence == 0 {
            s.push(&format!(
                "WITH t AS (INSERT INTO tasks ({TASK_COLUMNS}) VALUES ("
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
            s.push("WITH t AS (UPDATE tasks SET version = ");
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
        if !deltas.is_empty() {
            s.push(", c AS (INSERT INTO task_counts (account_id, dimension, value, n) VALUES ");
            for (i, ((account, dimension, value), n)) in deltas.iter().enumerate() {
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
        let events: Vec<&SealedEvent> = p.sealed.iter().collect();
        push_events_cte(&mut s, &events, &event_ids);
        // The account's Merkle tree grows in the same statement when this process knows its
        // head: the statement checks that it is still the stored one, and writes the tree
        // only then.
        let leaves = leaves_of(&events);
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
