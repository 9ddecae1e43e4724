//! Reads of the ledger: a task's history, the global order, and the stored views.

use chrono::DateTime;
use taskledger_events::{Actor, EventEnvelope, Scope};
use uuid::Uuid;

use super::{now_micros, Store, StoreError};

/// The columns of `events`, in the order [`EventRow`] has them and the append path binds them.
pub(super) const EVENT_COLUMNS: &str = "global_position, event_id, task_id, account_id, sequence, \
     event_type, event_version, payload, recorded_at_us, actor_account_id, actor_key_id, \
     actor_scope, request_id, prev_hash, hash, hash_version";

/// One row of `events`, as stored. Read by position, in [`EVENT_COLUMNS`]' order: looking
/// every column up by name was a tenth of what `verify` spent in this process.
#[derive(Debug, Clone)]
pub(super) struct EventRow {
    pub global_position: i64,
    pub event_id: String,
    pub task_id: String,
    pub account_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: i64,
    /// The canonical JSON text that was hashed.
    pub payload: String,
    pub recorded_at_us: i64,
    pub actor_account_id: String,
    pub actor_key_id: Option<String>,
    pub actor_scope: String,
    pub request_id: Option<String>,
    pub prev_hash: String,
    pub hash: String,
    pub hash_version: i64,
}

/// The names [`EVENT_COLUMNS`] lists, in order.
const EVENT_COLUMN_NAMES: [&str; 16] = [
    "global_position",
    "event_id",
    "task_id",
    "account_id",
    "sequence",
    "event_type",
    "event_version",
    "payload",
    "recorded_at_us",
    "actor_account_id",
    "actor_key_id",
    "actor_scope",
    "request_id",
    "prev_hash",
    "hash",
    "hash_version",
];

impl<'r, R: sqlx::Row> sqlx::FromRow<'r, R> for EventRow
where
    usize: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        // Every statement selects `EVENT_COLUMNS` first; the debug builds the tests run
        // check it on every row they read.
        debug_assert!(
            selects_first(row, &EVENT_COLUMN_NAMES),
            "a statement reading events does not select EVENT_COLUMNS first"
        );
        Ok(EventRow {
            global_position: row.try_get(0)?,
            event_id: row.try_get(1)?,
            task_id: row.try_get(2)?,
            account_id: row.try_get(3)?,
            sequence: row.try_get(4)?,
            event_type: row.try_get(5)?,
            event_version: row.try_get(6)?,
            payload: row.try_get(7)?,
            recorded_at_us: row.try_get(8)?,
            actor_account_id: row.try_get(9)?,
            actor_key_id: row.try_get(10)?,
            actor_scope: row.try_get(11)?,
            request_id: row.try_get(12)?,
            prev_hash: row.try_get(13)?,
            hash: row.try_get(14)?,
            hash_version: row.try_get(15)?,
        })
    }
}

/// Whether `row`'s first columns are `names`, in order: what a row read by position needs.
pub(super) fn selects_first<R: sqlx::Row>(row: &R, names: &[&str]) -> bool {
    use sqlx::Column;
    let columns = row.columns();
    columns.len() >= names.len() && columns.iter().zip(names).all(|(c, n)| c.name() == *n)
}

impl EventRow {
    /// The envelope of the row, which it is taken apart for: the strings move, not copy.
    pub(super) fn envelope(self) -> Result<EventEnvelope, StoreError> {
        let corrupt = |message: String| StoreError::Corrupt {
            event_id: self.event_id.clone(),
            message,
        };
        let recorded_us = self.recorded_at_us;
        let event_id = Uuid::parse_str(&self.event_id).map_err(|e| corrupt(e.to_string()))?;
        let event_version = u32::try_from(self.event_version)
            .map_err(|e| corrupt(format!("event_version: {e}")))?;
        let recorded_at = DateTime::from_timestamp_micros(recorded_us)
            .ok_or_else(|| corrupt(format!("recorded_at {recorded_us} out of range")))?;
        let scope = Scope::parse(&self.actor_scope).map_err(|e| corrupt(e.to_string()))?;
        let payload = serde_json::from_str(&self.payload).map_err(|e| corrupt(e.to_string()))?;
        let hash_version =
            u32::try_from(self.hash_version).map_err(|e| corrupt(format!("hash_version: {e}")))?;
        let is_test = taskledger_events::is_test_ledger(&self.account_id);
        Ok(EventEnvelope {
            event_id,
            event_type: self.event_type,
            event_version,
            task_id: self.task_id,
            account_id: self.account_id,
            sequence: self.sequence,
            global_position: self.global_position,
            recorded_at,
            actor: Actor {
                account_id: self.actor_account_id,
                key_id: self.actor_key_id,
                scope,
            },
            request_id: self.request_id,
            payload,
            prev_hash: self.prev_hash,
            hash: self.hash,
            hash_version,
            is_test,
        })
    }
}

/// A task's stored view and the sequence it reflects.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredView {
    pub version: i64,
    pub body: String,
}

impl Store {
    /// A task's events, oldest first, or none if the task is not in this account. With
    /// `until_us`, only those recorded at or before it (time travel).
    pub async fn task_events(
        &self,
        account_id: &str,
        task_id: &str,
        until_us: Option<i64>,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE task_id = $1 AND account_id = $2 \
             AND recorded_at_us <= $3 ORDER BY sequence"
        );
        let rows: Vec<EventRow> = sqlx::query_as(&sql)
            .bind(task_id)
            .bind(account_id)
            .bind(until_us.unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(EventRow::envelope).collect()
    }

    /// A page of a task's history: at most `limit` events with a sequence above `after`,
    /// oldest first, or none if the task is not in this account. One indexed range read on
    /// `(task_id, sequence)`, however long the history.
    pub async fn task_events_page(
        &self,
        account_id: &str,
        task_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE task_id = $1 AND account_id = $2 \
             AND sequence > $3 ORDER BY sequence LIMIT $4"
        );
        let rows: Vec<EventRow> = sqlx::query_as(&sql)
            .bind(task_id)
            .bind(account_id)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(EventRow::envelope).collect()
    }

    /// Events after a global position, in global order. Because appends are serialized on the
    /// ledger head, every position below a visible one is visible too: nothing is skipped.
    pub async fn events_after(
        &self,
        after: i64,
        limit: i64,
        account_id: Option<&str>,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        let rows: Vec<EventRow> = match account_id {
            Some(account) => {
                let sql = format!(
                    "SELECT {EVENT_COLUMNS} FROM events WHERE account_id = $1 AND global_position > $2 \
                     ORDER BY global_position LIMIT $3"
                );
                sqlx::query_as(&sql)
                    .bind(account)
                    .bind(after)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                let sql = format!(
                    "SELECT {EVENT_COLUMNS} FROM events WHERE global_position > $1 \
                     ORDER BY global_position LIMIT $2"
                );
                sqlx::query_as(&sql)
                    .bind(after)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.into_iter().map(EventRow::envelope).collect()
    }

    /// The events after `after` in global order, at most `limit` of them, and only as many
    /// as keep their payloads' total within `max_payload_chars` (counted in characters, which
    /// both backends measure in the database; the first event always comes, whatever its
    /// size). A follower's round is bounded this way, so large events cannot make it hold
    /// `limit` of them at once.
    pub async fn events_after_within(
        &self,
        after: i64,
        limit: i64,
        max_payload_chars: i64,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        // The running total is taken over the index scan the limit stops, so the database
        // reads at most `limit` rows and sends only the prefix.
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM (SELECT {EVENT_COLUMNS}, \
             SUM(length(payload)) OVER (ORDER BY global_position) - length(payload) AS before \
             FROM events WHERE global_position > $1 ORDER BY global_position LIMIT $2) e \
             WHERE before < $3 ORDER BY global_position"
        );
        let rows: Vec<EventRow> = sqlx::query_as(&sql)
            .bind(after)
            .bind(limit)
            .bind(max_payload_chars)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(EventRow::envelope).collect()
    }

    /// The last committed global position (0 for an empty ledger).
    pub async fn head_position(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT last_position FROM ledger_head WHERE id = 1")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub async fn task_view(
        &self,
        account_id: &str,
        task_id: &str,
    ) -> Result<Option<StoredView>, StoreError> {
        Ok(
            sqlx::query_as(
                "SELECT version, body FROM tasks WHERE task_id = $1 AND account_id = $2",
            )
            .bind(task_id)
            .bind(account_id)
            .fetch_optional(&self.pool)
            .await?,
        )
    }

    /// Which task of the account holds a unique_id.
    pub async fn unique_id_holder(
        &self,
        account_id: &str,
        unique_id: &str,
    ) -> Result<Option<String>, StoreError> {
        holder_of(&self.pool, account_id, unique_id).await
    }
}

/// Which task of the account holds a unique_id, read through `executor` (the pool, or an
/// open transaction that must see its own writes).
pub(super) async fn holder_of<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
    account_id: &str,
    unique_id: &str,
) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT task_id FROM unique_ids WHERE account_id = $1 AND unique_id = $2",
    )
    .bind(account_id)
    .bind(unique_id)
    .fetch_optional(executor)
    .await?)
}

impl Store {
    /// The last position a reader (e.g. `relay:<topic>`) has fully handled; 0 if none yet.
    pub async fn reader_checkpoint(&self, reader: &str) -> Result<i64, StoreError> {
        let position: Option<i64> =
            sqlx::query_scalar("SELECT position FROM reader_checkpoints WHERE reader = $1")
                .bind(reader)
                .fetch_optional(&self.pool)
                .await?;
        Ok(position.unwrap_or(0))
    }

    /// Moves a reader's checkpoint forward (never back, whoever writes it).
    pub async fn advance_reader_checkpoint(
        &self,
        reader: &str,
        position: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO reader_checkpoints (reader, position, updated_at_us) VALUES ($1, $2, $3) \
             ON CONFLICT (reader) DO UPDATE SET position = excluded.position, \
             updated_at_us = excluded.updated_at_us \
             WHERE reader_checkpoints.position < excluded.position",
        )
        .bind(reader)
        .bind(position)
        .bind(now_micros())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_column_names_are_the_columns_listed() {
        let listed: Vec<&str> = EVENT_COLUMNS.split(',').map(str::trim).collect();
        assert_eq!(listed, EVENT_COLUMN_NAMES);
    }
}
