//! `replay`: rebuild every projection from the events, or check the stored ones against
//! them. A rebuild runs online: it builds shadow tables from a snapshot position, catches
//! up from the global order while writers keep committing, and swaps the shadow tables in
//! under a short hold of the ledger head. A check reads one consistent snapshot and
//! compares a page of tasks at a time. Both walk the events in (task, sequence) order, a
//! page at a time, so memory stays bounded by a page.

mod check;
mod copy;
mod fold;
mod shadow;
#[cfg(test)]
mod tests;

use super::sql::AnyQuery;
use super::{Backend, Store, StoreError};

/// The PostgreSQL advisory lock a rebuild holds ("tlreplay").
pub const REPLAY_LOCK: i64 = 0x746c_7265_706c_6179;
/// Secondary indexes a rebuild builds side by side.
const INDEX_BUILDS_AT_ONCE: usize = 3;
/// Events read per page by `replay`.
const REPLAY_PAGE: i64 = 5000;
/// Task ids per `IN (...)` list.
const IDS_PER_STATEMENT: usize = 2000;
/// Once the shadow is at most this many events behind, the last catch-up runs under the
/// ledger head: the hold writers see is bounded by it.
const LAST_CATCH_UP: i64 = 2000;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebuildReport {
    pub tasks: u64,
    pub events: u64,
    /// Task ids whose stored projection differed from the rebuilt one (check mode), or that
    /// could not be rebuilt.
    pub mismatches: Vec<String>,
}

/// The projection tables: the live ones, or the shadow ones a rebuild fills before they
/// are swapped in.
#[derive(Debug, Clone, Copy)]
struct Tables {
    tasks: &'static str,
    tags: &'static str,
    unique_ids: &'static str,
    counts: &'static str,
}

const LIVE: Tables = Tables {
    tasks: "tasks",
    tags: "task_tags",
    unique_ids: "unique_ids",
    counts: "task_counts",
};

const SHADOW: Tables = Tables {
    tasks: "tasks_shadow",
    tags: "task_tags_shadow",
    unique_ids: "unique_ids_shadow",
    counts: "task_counts_shadow",
};

impl Tables {
    /// The tables with a row per task (or per task and tag, or value).
    fn per_task(&self) -> [&'static str; 3] {
        [self.tasks, self.tags, self.unique_ids]
    }

    fn all(&self) -> [&'static str; 4] {
        [self.tasks, self.tags, self.unique_ids, self.counts]
    }
}

/// `(?, ?, ...)` placeholders `$first..$first+n-1`.
fn placeholders(first: usize, n: usize) -> String {
    let list: Vec<String> = (first..first + n).map(|i| format!("${i}")).collect();
    list.join(", ")
}

fn bind_all<'q>(query: AnyQuery<'q>, values: &'q [&'q str]) -> AnyQuery<'q> {
    values.iter().fold(query, |q, v| q.bind(*v))
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
    /// (`check = true`). `progress` is told how many events were folded so far. Neither
    /// stops writers for longer than the last catch-up of a rebuild.
    pub async fn replay(
        &self,
        check: bool,
        progress: impl Fn(u64),
    ) -> Result<RebuildReport, StoreError> {
        let mut report = if check {
            self.replay_check(&progress).await?
        } else {
            self.replay_online(&progress).await?
        };
        report
            .mismatches
            .extend(self.replay_platform_views(check).await?);
        report.mismatches.sort();
        report.mismatches.dedup();
        progress(report.events);
        Ok(report)
    }

    async fn replay_online(&self, progress: &impl Fn(u64)) -> Result<RebuildReport, StoreError> {
        // One rebuild at a time: the session lock lives as long as this connection, which
        // is closed (never returned to the pool) however the rebuild ends.
        let mut guard = None;
        if self.backend == Backend::Postgres {
            let mut conn = self.pool.acquire().await?.detach();
            let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(REPLAY_LOCK)
                .fetch_one(&mut conn)
                .await?;
            if !locked {
                return Err(StoreError::ReplayRunning);
            }
            guard = Some(conn);
        }
        let report = self.rebuild(progress).await;
        if let Some(mut conn) = guard {
            // Unlocked explicitly, so the next replay can start at once: closing the session
            // releases the lock too, but only once the server has ended that backend, which a
            // busy server may do after `close` returned. Either failing is harmless: the lock
            // goes with the session.
            let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(REPLAY_LOCK)
                .execute(&mut conn)
                .await;
            let _ = sqlx::Connection::close(conn).await;
        }
        report
    }
}
