//! `GET /v1/events` with filters: the account's events in global order, narrowed by task,
//! type, actor or request, and by time. Each filter has an index that yields the account's
//! matching events in global order (`events_by_account_type`, `_key`, `_scope`, `_request`;
//! a task's events through `(task_id, sequence)`, whose order is the task's global order), so
//! a page reads about `limit` rows however large the ledger. A time range becomes a range of
//! global positions first (recorded_at never goes back along the global order), found
//! through `events_by_time`.

use super::read::{EventRow, EVENT_COLUMNS};
use super::{Store, StoreError};
use taskledger_events::EventEnvelope;

/// What to narrow the account's events to; every field is optional and they combine (AND).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub task_id: Option<String>,
    /// Any of these types.
    pub event_types: Vec<String>,
    pub actor_key_id: Option<String>,
    pub actor_scope: Option<String>,
    pub request_id: Option<String>,
    /// Exclusive, microseconds.
    pub recorded_after_us: Option<i64>,
    /// Exclusive, microseconds.
    pub recorded_before_us: Option<i64>,
}

enum Bind {
    Int(i64),
    Text(String),
}

impl Store {
    /// The first global position recorded after `us`, if any.
    async fn first_position_after(&self, us: i64) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT MIN(global_position) FROM events WHERE recorded_at_us = \
             (SELECT MIN(recorded_at_us) FROM events WHERE recorded_at_us > $1)",
        )
        .bind(us)
        .fetch_one(&self.pool)
        .await?)
    }

    /// The last global position recorded before `us`, if any.
    async fn last_position_before(&self, us: i64) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT MAX(global_position) FROM events WHERE recorded_at_us = \
             (SELECT MAX(recorded_at_us) FROM events WHERE recorded_at_us < $1)",
        )
        .bind(us)
        .fetch_one(&self.pool)
        .await?)
    }

    /// At most `limit` of the account's events after `after` that pass `filter`, in global
    /// order.
    pub async fn search_events(
        &self,
        account_id: &str,
        after: i64,
        limit: i64,
        filter: &EventFilter,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        let mut lower = after;
        let mut upper = i64::MAX;
        if let Some(us) = filter.recorded_after_us {
            match self.first_position_after(us).await? {
                Some(p) => lower = lower.max(p - 1),
                None => return Ok(Vec::new()),
            }
        }
        if let Some(us) = filter.recorded_before_us {
            match self.last_position_before(us).await? {
                Some(p) => upper = p,
                None => return Ok(Vec::new()),
            }
        }
        if lower >= upper {
            return Ok(Vec::new());
        }
        let mut binds = vec![
            Bind::Text(account_id.to_string()),
            Bind::Int(lower),
            Bind::Int(upper),
        ];
        let mut sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE account_id = $1 \
             AND global_position > $2 AND global_position <= $3"
        );
        let mut condition = |sql: &mut String, column: &str, value: Bind| {
            binds.push(value);
            sql.push_str(&format!(" AND {column} = ${}", binds.len()));
        };
        if let Some(task) = &filter.task_id {
            condition(&mut sql, "task_id", Bind::Text(task.clone()));
        }
        if let Some(key) = &filter.actor_key_id {
            condition(&mut sql, "actor_key_id", Bind::Text(key.clone()));
        }
        if let Some(scope) = &filter.actor_scope {
            condition(&mut sql, "actor_scope", Bind::Text(scope.clone()));
        }
        if let Some(request) = &filter.request_id {
            condition(&mut sql, "request_id", Bind::Text(request.clone()));
        }
        if let Some(us) = filter.recorded_after_us {
            binds.push(Bind::Int(us));
            sql.push_str(&format!(" AND recorded_at_us > ${}", binds.len()));
        }
        if let Some(us) = filter.recorded_before_us {
            binds.push(Bind::Int(us));
            sql.push_str(&format!(" AND recorded_at_us < ${}", binds.len()));
        }
        if !filter.event_types.is_empty() {
            let start = binds.len() + 1;
            let list: Vec<String> = (0..filter.event_types.len())
                .map(|i| format!("${}", start + i))
                .collect();
            sql.push_str(&format!(" AND event_type IN ({})", list.join(", ")));
            binds.extend(filter.event_types.iter().cloned().map(Bind::Text));
        }
        binds.push(Bind::Int(limit));
        sql.push_str(&format!(" ORDER BY global_position LIMIT ${}", binds.len()));
        let rows: Vec<EventRow> = binds
            .into_iter()
            .fold(sqlx::query_as(&sql), |q, b| match b {
                Bind::Int(n) => q.bind(n),
                Bind::Text(t) => q.bind(t),
            })
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(EventRow::envelope).collect()
    }
}
