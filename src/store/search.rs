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
        let mut rows: Vec<EventRow> = Vec::new();
        for one in one_type_each(filter) {
            let Some((sql, binds)) = self.search_query(account_id, after, limit, &one).await?
            else {
                return Ok(Vec::new());
            };
            let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE {sql}");
            let page: Vec<EventRow> = bind_all(sqlx::query_as(&sql), binds)
                .fetch_all(&self.pool)
                .await?;
            rows.extend(page);
        }
        // Several types: each was read through its own index, in global order; the page is
        // the first `limit` of them all.
        rows.sort_by_key(|r| r.global_position);
        rows.truncate(limit as usize);
        rows.into_iter().map(EventRow::envelope).collect()
    }

    /// The database's plan for a search (PostgreSQL's `EXPLAIN`, SQLite's `EXPLAIN QUERY
    /// PLAN`), one line per step: what the tests check each filter's index use with. On
    /// PostgreSQL sequential scans are disabled for the session first, so the plan shows
    /// whether an index can serve the search at all, whatever a small table's statistics.
    pub async fn search_plan(
        &self,
        account_id: &str,
        filter: &EventFilter,
    ) -> Result<Vec<String>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let explain = match self.backend {
            super::Backend::Postgres => {
                sqlx::query("SET enable_seqscan = off")
                    .execute(&mut *conn)
                    .await?;
                "EXPLAIN"
            }
            super::Backend::Sqlite => "EXPLAIN QUERY PLAN",
        };
        let mut plan = Vec::new();
        for one in one_type_each(filter) {
            let Some((sql, binds)) = self.search_query(account_id, 0, 100, &one).await? else {
                continue;
            };
            let sql = format!("{explain} SELECT {EVENT_COLUMNS} FROM events WHERE {sql}");
            let rows = bind_all(sqlx::query(&sql), binds)
                .fetch_all(&mut *conn)
                .await?;
            use sqlx::Row;
            plan.extend(rows.iter().map(|row| {
                let last = row.len() - 1;
                row.try_get::<String, _>(last).unwrap_or_default()
            }));
        }
        if self.backend == super::Backend::Postgres {
            sqlx::query("RESET enable_seqscan")
                .execute(&mut *conn)
                .await?;
        }
        Ok(plan)
    }

    /// The WHERE clause (and its ORDER BY and LIMIT) of a search, with its values; `None`
    /// when the time range holds no event at all.
    async fn search_query(
        &self,
        account_id: &str,
        after: i64,
        limit: i64,
        filter: &EventFilter,
    ) -> Result<Option<(String, Vec<Bind>)>, StoreError> {
        let mut lower = after;
        let mut upper = i64::MAX;
        if let Some(us) = filter.recorded_after_us {
            match self.first_position_after(us).await? {
                Some(p) => lower = lower.max(p - 1),
                None => return Ok(None),
            }
        }
        if let Some(us) = filter.recorded_before_us {
            match self.last_position_before(us).await? {
                Some(p) => upper = p,
                None => return Ok(None),
            }
        }
        if lower >= upper {
            return Ok(None);
        }
        let mut binds = vec![
            Bind::Text(account_id.to_string()),
            Bind::Int(lower),
            Bind::Int(upper),
        ];
        let mut sql =
            String::from("account_id = $1 AND global_position > $2 AND global_position <= $3");
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
        if let Some(event_type) = filter.event_types.first() {
            condition(&mut sql, "event_type", Bind::Text(event_type.clone()));
        }
        if let Some(us) = filter.recorded_after_us {
            binds.push(Bind::Int(us));
            sql.push_str(&format!(" AND recorded_at_us > ${}", binds.len()));
        }
        if let Some(us) = filter.recorded_before_us {
            binds.push(Bind::Int(us));
            sql.push_str(&format!(" AND recorded_at_us < ${}", binds.len()));
        }
        binds.push(Bind::Int(limit));
        sql.push_str(&format!(" ORDER BY global_position LIMIT ${}", binds.len()));
        Ok(Some((sql, binds)))
    }
}

/// The filter once per event type it names (or once, if it names none): each type is read
/// through its own index in global order, which one query over several types cannot do.
fn one_type_each(filter: &EventFilter) -> Vec<EventFilter> {
    if filter.event_types.len() <= 1 {
        return vec![filter.clone()];
    }
    filter
        .event_types
        .iter()
        .map(|t| EventFilter {
            event_types: vec![t.clone()],
            ..filter.clone()
        })
        .collect()
}

fn bind_all<'q, Q: Bindable<'q>>(query: Q, binds: Vec<Bind>) -> Q {
    binds.into_iter().fold(query, |q, b| match b {
        Bind::Int(n) => q.bind_int(n),
        Bind::Text(t) => q.bind_text(t),
    })
}

/// The two query kinds a search binds its values to.
trait Bindable<'q> {
    fn bind_int(self, n: i64) -> Self;
    fn bind_text(self, t: String) -> Self;
}

impl<'q> Bindable<'q> for sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    fn bind_int(self, n: i64) -> Self {
        self.bind(n)
    }
    fn bind_text(self, t: String) -> Self {
        self.bind(t)
    }
}

impl<'q, O> Bindable<'q> for sqlx::query::QueryAs<'q, sqlx::Any, O, sqlx::any::AnyArguments<'q>> {
    fn bind_int(self, n: i64) -> Self {
        self.bind(n)
    }
    fn bind_text(self, t: String) -> Self {
        self.bind(t)
    }
}
