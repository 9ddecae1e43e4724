//! `replay`: rebuild every projection from the events, or check the stored ones against
//! them. A rebuild runs online: it builds shadow tables from a snapshot position, catches
//! up from the global order while writers keep committing, and swaps the shadow tables in
//! under a short hold of the ledger head. A check reads one consistent snapshot and
//! compares a page of tasks at a time. Both walk the events in (task, sequence) order, a
//! page at a time, so memory stays bounded by a page.

use std::collections::{HashMap, HashSet};

use futures::{StreamExt, TryStreamExt};
use sqlx::AnyConnection;
use taskledger_projections::{fold, TaskView};

use super::counts::{counts_of, fill_counts, CountDeltas};
use super::projection::{insert_tags_into, insert_task_rows_into, TaskRow, TaskTags, TASK_COLUMNS};
use super::read::{EventRow, EVENT_COLUMNS};
use super::sql::AnyQuery;
use super::verify::ChainPager;
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

/// A task's counted columns: account, type, status, project, batch, review status.
type CountedRow = (
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// A task folded from its events: its view, or `None` if the events do not fold.
struct Folded {
    task_id: String,
    account_id: String,
    version: i64,
    view: Option<TaskView>,
}

/// Folds events that arrive in (task, sequence) order into one view per task; a task is
/// handed out once the first event of the next task (or the end) shows it is complete.
#[derive(Default)]
struct Folder {
    current: Option<Folded>,
}

impl Folder {
    fn push(&mut self, row: &EventRow) -> Option<Folded> {
        let done = match &self.current {
            Some(c) if c.task_id == row.task_id => None,
            _ => self.current.take(),
        };
        let current = self.current.get_or_insert_with(|| Folded {
            task_id: row.task_id.clone(),
            account_id: row.account_id.clone(),
            version: 0,
            view: None,
        });
        let prior = current.view.take();
        // A task that failed to fold stays failed: later events have nothing to fold onto.
        let broken = current.version > 0 && prior.is_none();
        current.version = row.sequence;
        if !broken {
            let folded = row
                .envelope()
                .map_err(|e| e.to_string())
                .and_then(|envelope| {
                    let event = envelope.event().map_err(|e| e.to_string())?;
                    fold(prior, &envelope.task_id, envelope.recorded_at, &event)
                        .map_err(|e| e.to_string())
                });
            match folded {
                Ok(view) => current.view = Some(view),
                Err(message) => {
                    tracing::error!(task_id = %row.task_id, %message, "event does not fold");
                }
            }
        }
        done
    }

    fn finish(&mut self) -> Option<Folded> {
        self.current.take()
    }
}

/// Cuts pages of events in (task, sequence) order into whole tasks: the last task of a
/// page is held back until the next page (or the end) shows it complete.
#[derive(Default)]
struct WholeTasks {
    held: Vec<EventRow>,
}

impl WholeTasks {
    fn take(&mut self, page: Vec<EventRow>, end: bool) -> Vec<EventRow> {
        let mut rows = std::mem::take(&mut self.held);
        rows.extend(page);
        if !end {
            if let Some(last) = rows.last() {
                let cut = rows
                    .iter()
                    .rposition(|r| r.task_id != last.task_id)
                    .map_or(0, |i| i + 1);
                self.held = rows.split_off(cut);
            }
        }
        rows
    }
}

/// Folds whole tasks' events (in (task, sequence) order) on every core, off the async
/// workers.
async fn fold_tasks(rows: Vec<EventRow>) -> Vec<Folded> {
    if rows.is_empty() {
        return Vec::new();
    }
    let folding = tokio::task::spawn_blocking(move || {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let target = rows.len().div_ceil(threads).max(1);
        // Cut into about equal parts, each ending where a task ends.
        let mut parts: Vec<&[EventRow]> = Vec::new();
        let mut rest: &[EventRow] = &rows;
        while !rest.is_empty() {
            let mut cut = target.min(rest.len());
            while cut < rest.len() && rest[cut].task_id == rest[cut - 1].task_id {
                cut += 1;
            }
            let (part, tail) = rest.split_at(cut);
            parts.push(part);
            rest = tail;
        }
        std::thread::scope(|s| {
            let workers: Vec<_> = parts
                .into_iter()
                .map(|part| {
                    s.spawn(move || {
                        let mut folder = Folder::default();
                        let mut done: Vec<Folded> =
                            part.iter().filter_map(|r| folder.push(r)).collect();
                        done.extend(folder.finish());
                        done
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        })
    });
    folding
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
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
        if let Some(conn) = guard {
            // Closing the session releases the lock; a failure to say goodbye is harmless.
            let _ = sqlx::Connection::close(conn).await;
        }
        report
    }

    async fn rebuild(&self, progress: &impl Fn(u64)) -> Result<RebuildReport, StoreError> {
        let mut conn = self.pool.acquire().await?;
        clear(&mut conn, self.backend).await?;
        // Rows load faster into tables without their secondary indexes; they are built
        // afterwards, once, from the live tables' definitions.
        drop_secondary_indexes(&mut conn, self.backend).await?;
        // Every position up to the head read now is committed: the shadow is built from
        // them while writers go on appending after it.
        // On SQLite the head and the events are read on one connection: another pooled
        // connection may still hold an older snapshot, without the events up to this head.
        let snapshot: i64 =
            sqlx::query_scalar("SELECT last_position FROM ledger_head WHERE id = 1")
                .fetch_one(&mut *conn)
                .await?;
        let mut report = RebuildReport::default();
        let mut pager = ChainPager::new(1, snapshot, REPLAY_PAGE);
        let mut whole = WholeTasks::default();
        let mut page = pager.next(&mut *conn).await?;
        loop {
            let end = page.is_empty();
            let rows = whole.take(page, end);
            report.events += rows.len() as u64;
            let done = fold_tasks(rows).await;
            report.tasks += done.len() as u64;
            if end {
                write_tasks(&mut conn, SHADOW, &done, &mut report.mismatches).await?;
                break;
            }
            let next = if self.backend == Backend::Postgres {
                // Read the next page on another connection while this one is written.
                let (written, next) = tokio::join!(
                    write_tasks(&mut conn, SHADOW, &done, &mut report.mismatches),
                    pager.next(&self.pool)
                );
                written?;
                next
            } else {
                write_tasks(&mut conn, SHADOW, &done, &mut report.mismatches).await?;
                pager.next(&mut *conn).await
            };
            progress(report.events);
            page = next?;
        }
        fill_counts(&mut conn, SHADOW.tasks, SHADOW.counts).await?;
        build_secondary_indexes(self, &mut conn).await?;
        if self.backend == Backend::Postgres {
            // Statistics belong to the table: the planner must know the shadow's before it
            // serves lists.
            for table in SHADOW.all() {
                sqlx::query(&format!("ANALYZE {table}"))
                    .execute(&mut *conn)
                    .await?;
            }
        }
        progress(report.events);

        let mut caught_up = snapshot;
        loop {
            let head = self.head_position().await?;
            if head - caught_up <= LAST_CATCH_UP {
                break;
            }
            catch_up(&mut conn, caught_up, head, &mut report).await?;
            caught_up = head;
            progress(report.events);
        }
        drop(conn);

        // The last stretch and the swap under the ledger head: appends wait meanwhile, so
        // nothing is committed between the last event caught up and the swap.
        let mut tx = self.begin_append().await?;
        let head = tx.next_position() - 1;
        catch_up(tx.conn(), caught_up, head, &mut report).await?;
        swap(tx.conn(), self.backend).await?;
        tx.commit().await?;
        // The shadow now holds the old projections.
        let mut conn = self.pool.acquire().await?;
        clear(&mut conn, self.backend).await?;
        Ok(report)
    }

    async fn replay_check(&self, progress: &impl Fn(u64)) -> Result<RebuildReport, StoreError> {
        // One snapshot for events and projections alike, without holding writers up.
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await?;
        }
        let head: i64 = sqlx::query_scalar("SELECT last_position FROM ledger_head WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        let mut report = RebuildReport::default();
        let mut pager = ChainPager::new(1, head, REPLAY_PAGE);
        let mut whole = WholeTasks::default();
        let mut page = pager.next(&mut *tx).await?;
        loop {
            let end = page.is_empty();
            let rows = whole.take(page, end);
            report.events += rows.len() as u64;
            // Fold this page while the next one is read.
            let (done, next) = if end {
                (fold_tasks(rows).await, Ok(Vec::new()))
            } else {
                tokio::join!(fold_tasks(rows), pager.next(&mut *tx))
            };
            report.tasks += done.len() as u64;
            compare(&mut tx, &done, &mut report.mismatches).await?;
            progress(report.events);
            if end {
                break;
            }
            page = next?;
        }
        let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tasks")
            .fetch_one(&mut *tx)
            .await?;
        compare_counts(&mut tx, &mut report.mismatches).await?;
        if stored as u64 != report.tasks {
            report.mismatches.push(format!(
                "{stored} task views are stored but the events describe {}",
                report.tasks
            ));
        }
        tx.rollback().await?;
        Ok(report)
    }
}

/// Empties the shadow tables (nobody else reads or writes them).
async fn clear(conn: &mut AnyConnection, backend: Backend) -> Result<(), StoreError> {
    let verb = match backend {
        // Instant whatever the size, and leaves no dead rows behind.
        Backend::Postgres => "TRUNCATE",
        Backend::Sqlite => "DELETE FROM",
    };
    for table in SHADOW.all() {
        sqlx::query(&format!("{verb} {table}"))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Writes folded tasks' rows, tags and unique_id reservations into `tables`, where none
/// of them has rows yet. A task that did not fold, or whose unique_id another task holds,
/// is a mismatch.
async fn write_tasks(
    conn: &mut AnyConnection,
    tables: Tables,
    done: &[Folded],
    mismatches: &mut Vec<String>,
) -> Result<(), StoreError> {
    let mut rows = Vec::with_capacity(done.len());
    let mut tags = Vec::with_capacity(done.len());
    let mut reservations = Vec::new();
    for task in done {
        let Some(view) = &task.view else {
            mismatches.push(task.task_id.clone());
            continue;
        };
        rows.push(TaskRow::of(&task.account_id, task.version, view));
        tags.push(TaskTags {
            account_id: &task.account_id,
            task_id: &task.task_id,
            tags: &view.tags,
            created_at_us: view.created_at.timestamp_micros(),
            replaces: false,
        });
        if let Some(unique_id) = &view.unique_id {
            reservations.push((
                task.account_id.as_str(),
                unique_id.as_str(),
                task.task_id.as_str(),
            ));
        }
    }
    let row_refs: Vec<&TaskRow> = rows.iter().collect();
    if !insert_task_rows_into(conn, tables.tasks, &row_refs).await? {
        return Err(StoreError::Corrupt {
            event_id: String::new(),
            message: "a task was rebuilt twice".into(),
        });
    }
    insert_tags_into(conn, tables.tags, &tags).await?;
    for chunk in reservations.chunks(IDS_PER_STATEMENT) {
        let mut sql = format!(
            "INSERT INTO {} (account_id, unique_id, task_id) VALUES ",
            tables.unique_ids
        );
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("({})", placeholders(3 * i + 1, 3)));
        }
        sql.push_str(" ON CONFLICT DO NOTHING");
        let inserted = chunk
            .iter()
            .fold(sqlx::query(&sql), |q, (a, u, t)| {
                q.bind(*a).bind(*u).bind(*t)
            })
            .execute(&mut *conn)
            .await?
            .rows_affected();
        if inserted as usize == chunk.len() {
            continue;
        }
        // Two tasks claim one value: whichever did not get it is a mismatch.
        for (account_id, unique_id, task_id) in chunk {
            let holder: Option<String> = sqlx::query_scalar(&format!(
                "SELECT task_id FROM {} WHERE account_id = $1 AND unique_id = $2",
                tables.unique_ids
            ))
            .bind(*account_id)
            .bind(*unique_id)
            .fetch_optional(&mut *conn)
            .await?;
            if holder.as_deref() != Some(*task_id) {
                mismatches.push(task_id.to_string());
            }
        }
    }
    Ok(())
}

/// Brings the shadow from position `after` up to `until`: every task with an event in
/// between is folded again from all its events up to `until` and its rows replaced.
async fn catch_up(
    conn: &mut AnyConnection,
    after: i64,
    until: i64,
    report: &mut RebuildReport,
) -> Result<(), StoreError> {
    if until <= after {
        return Ok(());
    }
    let changed: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT task_id, MIN(sequence), COUNT(*) FROM events \
         WHERE global_position > $1 AND global_position <= $2 GROUP BY task_id ORDER BY task_id",
    )
    .bind(after)
    .bind(until)
    .fetch_all(&mut *conn)
    .await?;
    for (_, first, events) in &changed {
        report.events += *events as u64;
        if *first == 1 {
            report.tasks += 1;
        }
    }
    let ids: Vec<&str> = changed.iter().map(|(t, _, _)| t.as_str()).collect();
    // Every changed task lets go of its rows first: a unique_id may have moved between two
    // of them that are rewritten in different chunks.
    for chunk in ids.chunks(IDS_PER_STATEMENT) {
        // What the changed tasks counted for so far is taken out of the counts.
        let sql = format!(
            "SELECT account_id, task_type, status, project, batch, customer_review_status \
             FROM {} WHERE task_id IN ({})",
            SHADOW.tasks,
            placeholders(1, chunk.len())
        );
        let counted: Vec<CountedRow> = chunk
            .iter()
            .fold(sqlx::query_as(&sql), |q, id| q.bind(*id))
            .fetch_all(&mut *conn)
            .await?;
        let mut counts = CountDeltas::default();
        for (account, task_type, status, project, batch, review) in &counted {
            counts.task(
                account,
                task_type,
                status,
                project.as_deref(),
                batch.as_deref(),
                review.as_deref(),
                -1,
            );
        }
        counts.write(&mut *conn, SHADOW.counts).await?;
        for table in SHADOW.per_task() {
            let sql = format!(
                "DELETE FROM {table} WHERE task_id IN ({})",
                placeholders(1, chunk.len())
            );
            bind_all(sqlx::query(&sql), chunk)
                .execute(&mut *conn)
                .await?;
        }
    }
    for chunk in ids.chunks(IDS_PER_STATEMENT) {
        let n = chunk.len();
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE task_id IN ({}) \
             AND global_position <= ${} ORDER BY task_id, sequence",
            placeholders(1, n),
            n + 1
        );
        let rows: Vec<EventRow> = bind_all(sqlx::query(&sql), chunk)
            .bind(until)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(sqlx::FromRow::from_row)
            .collect::<Result<_, _>>()?;
        let mut folder = Folder::default();
        let mut done: Vec<Folded> = rows.iter().filter_map(|r| folder.push(r)).collect();
        done.extend(folder.finish());
        write_tasks(&mut *conn, SHADOW, &done, &mut report.mismatches).await?;
        let mut counts = CountDeltas::default();
        for task in &done {
            if let Some(view) = &task.view {
                counts.view(&task.account_id, view, 1);
            }
        }
        counts.write(&mut *conn, SHADOW.counts).await?;
    }
    Ok(())
}

/// The secondary (non-unique) indexes of `table`: name and definition.
async fn secondary_indexes(
    conn: &mut AnyConnection,
    backend: Backend,
    table: &str,
) -> Result<Vec<(String, String)>, StoreError> {
    let sql = match backend {
        Backend::Postgres => {
            "SELECT CAST(indexname AS TEXT), indexdef FROM pg_indexes \
             WHERE schemaname = current_schema() AND tablename = $1"
        }
        Backend::Sqlite => {
            "SELECT name, sql FROM sqlite_master \
             WHERE type = 'index' AND tbl_name = $1 AND sql IS NOT NULL"
        }
    };
    let all: Vec<(String, String)> = sqlx::query_as(sql).bind(table).fetch_all(conn).await?;
    Ok(all
        .into_iter()
        .filter(|(_, definition)| !definition.to_ascii_uppercase().starts_with("CREATE UNIQUE"))
        .collect())
}

async fn drop_secondary_indexes(
    conn: &mut AnyConnection,
    backend: Backend,
) -> Result<(), StoreError> {
    for table in SHADOW.per_task() {
        for (name, _) in secondary_indexes(&mut *conn, backend, table).await? {
            sqlx::query(&format!("DROP INDEX {name}"))
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

/// Gives each shadow table the secondary indexes its live table has. The definitions come
/// from the live tables, which always have them, so a rebuild that stopped half-way cannot
/// leave an index out of the next swap. Names alternate between `<live>_...` and
/// `<shadow>_...` as the tables swap.
async fn build_secondary_indexes(
    store: &Store,
    conn: &mut AnyConnection,
) -> Result<(), StoreError> {
    let backend = store.backend;
    let mut statements = Vec::new();
    for (live, shadow) in LIVE.per_task().into_iter().zip(SHADOW.per_task()) {
        let present: HashSet<String> = secondary_indexes(&mut *conn, backend, shadow)
            .await?
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        for (name, definition) in secondary_indexes(&mut *conn, backend, live).await? {
            let renamed = match name.strip_prefix(&format!("{shadow}_")) {
                Some(rest) => format!("{live}_{rest}"),
                None => match name.strip_prefix(&format!("{live}_")) {
                    Some(rest) => format!("{shadow}_{rest}"),
                    None => format!("{shadow}_{name}"),
                },
            };
            if present.contains(&renamed) {
                continue;
            }
            // What follows the table name: `USING btree (...)` on PostgreSQL, `(...)` on
            // SQLite.
            let columns = match backend {
                Backend::Postgres => definition.find(" USING "),
                Backend::Sqlite => definition.find('('),
            };
            let Some(columns) = columns else {
                return Err(StoreError::Corrupt {
                    event_id: String::new(),
                    message: format!("index {name} has a definition replay cannot copy"),
                });
            };
            statements.push(format!(
                "CREATE INDEX {renamed} ON {shadow} {}",
                definition[columns..].trim_start()
            ));
        }
    }
    match backend {
        // Indexes are built on connections of their own, side by side, with memory
        // enough to sort in one pass.
        Backend::Postgres => {
            let builds = statements.iter().map(|sql| async move {
                let mut conn = store.pool.acquire().await?;
                sqlx::query("SET maintenance_work_mem = '256MB'")
                    .execute(&mut *conn)
                    .await?;
                sqlx::query(sql).execute(&mut *conn).await?;
                sqlx::query("RESET maintenance_work_mem")
                    .execute(&mut *conn)
                    .await?;
                Ok::<_, StoreError>(())
            });
            // A few at a time: each holds a pool connection for as long as it sorts.
            futures::stream::iter(builds)
                .buffer_unordered(INDEX_BUILDS_AT_ONCE)
                .try_collect::<Vec<()>>()
                .await?;
        }
        // One writer at a time on SQLite, and on the connection that dropped the old
        // indexes: another pooled connection may still read an older snapshot of the
        // schema, in which they exist.
        Backend::Sqlite => {
            for sql in &statements {
                sqlx::query(sql).execute(&mut *conn).await?;
            }
        }
    }
    Ok(())
}

/// Swaps the shadow tables with the live ones, inside the caller's transaction.
async fn swap(conn: &mut AnyConnection, backend: Backend) -> Result<(), StoreError> {
    if backend == Backend::Postgres {
        // A long reader of the live tables must not keep writers waiting behind the swap.
        sqlx::query("SET LOCAL lock_timeout = '10s'")
            .execute(&mut *conn)
            .await?;
    }
    for (live, shadow) in LIVE.all().into_iter().zip(SHADOW.all()) {
        for (from, to) in [
            (live, format!("{live}_swapping")),
            (shadow, live.to_string()),
            (&format!("{live}_swapping"), shadow.to_string()),
        ] {
            sqlx::query(&format!("ALTER TABLE {from} RENAME TO {to}"))
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

/// Compares folded tasks with the stored projections (`LIVE`), a page of tasks per query.
async fn compare(
    conn: &mut AnyConnection,
    done: &[Folded],
    mismatches: &mut Vec<String>,
) -> Result<(), StoreError> {
    for chunk in done.chunks(IDS_PER_STATEMENT) {
        let ids: Vec<&str> = chunk.iter().map(|f| f.task_id.as_str()).collect();
        let list = placeholders(1, ids.len());
        let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE task_id IN ({list})");
        let rows: Vec<TaskRow> = bind_all(sqlx::query(&sql), &ids)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(sqlx::FromRow::from_row)
            .collect::<Result<_, _>>()?;
        let rows: HashMap<&str, &TaskRow> = rows.iter().map(|r| (r.task_id.as_str(), r)).collect();
        let sql =
            format!("SELECT task_id, account_id, tag, created_at_us FROM task_tags WHERE task_id IN ({list})");
        let tag_rows: Vec<(String, String, String, i64)> = ids
            .iter()
            .fold(sqlx::query_as(&sql), |q, id| q.bind(*id))
            .fetch_all(&mut *conn)
            .await?;
        let mut tags: HashMap<(&str, &str), HashSet<(&str, i64)>> = HashMap::new();
        for (task, account, tag, created) in &tag_rows {
            tags.entry((task.as_str(), account.as_str()))
                .or_default()
                .insert((tag.as_str(), *created));
        }
        let sql = format!(
            "SELECT task_id, account_id, unique_id FROM unique_ids WHERE task_id IN ({list})"
        );
        let reserved_rows: Vec<(String, String, String)> = ids
            .iter()
            .fold(sqlx::query_as(&sql), |q, id| q.bind(*id))
            .fetch_all(&mut *conn)
            .await?;
        let mut reserved: HashMap<(&str, &str), Vec<&str>> = HashMap::new();
        for (task, account, unique_id) in &reserved_rows {
            reserved
                .entry((task.as_str(), account.as_str()))
                .or_default()
                .push(unique_id.as_str());
        }
        for task in chunk {
            let Some(view) = &task.view else {
                mismatches.push(task.task_id.clone());
                continue;
            };
            let key = (task.task_id.as_str(), task.account_id.as_str());
            let created = view.created_at.timestamp_micros();
            let expected_tags: HashSet<(&str, i64)> = view
                .tags
                .iter()
                .map(|tag| (tag.as_str(), created))
                .collect();
            let stored_tags = tags.remove(&key).unwrap_or_default();
            let stored_reserved = reserved.remove(&key).unwrap_or_default();
            let matches = rows.get(task.task_id.as_str()).copied()
                == Some(&TaskRow::of(&task.account_id, task.version, view))
                && stored_tags == expected_tags
                && stored_reserved
                    == view
                        .unique_id
                        .iter()
                        .map(String::as_str)
                        .collect::<Vec<_>>();
            if !matches {
                mismatches.push(task.task_id.clone());
            }
        }
    }
    Ok(())
}

/// Compares the counts projection with what the stored task rows add up to (the rows
/// themselves are compared with the events task by task): set-based, one query each.
async fn compare_counts(
    conn: &mut AnyConnection,
    mismatches: &mut Vec<String>,
) -> Result<(), StoreError> {
    type Count = (String, String, String, i64);
    let stored: Vec<Count> =
        sqlx::query_as("SELECT account_id, dimension, value, n FROM task_counts WHERE n <> 0")
            .fetch_all(&mut *conn)
            .await?;
    let expected: Vec<Count> = sqlx::query_as(&counts_of(LIVE.tasks))
        .fetch_all(&mut *conn)
        .await?;
    let mut stored: HashMap<(String, String, String), i64> = stored
        .into_iter()
        .map(|(a, d, v, n)| ((a, d, v), n))
        .collect();
    for (account, dimension, value, n) in expected {
        let key = (account, dimension, value);
        let found = stored.remove(&key).unwrap_or(0);
        if found != n {
            mismatches.push(format!(
                "task_counts of account {} has {} = {:?}: {found}, the tasks {n}",
                key.0, key.1, key.2
            ));
        }
    }
    for ((account, dimension, value), n) in stored {
        mismatches.push(format!(
            "task_counts of account {account} has {dimension} = {value:?}: {n}, the tasks 0"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(task_id: &str, sequence: i64) -> EventRow {
        EventRow {
            global_position: 0,
            event_id: String::new(),
            task_id: task_id.into(),
            account_id: "acme".into(),
            sequence,
            event_type: "TaskCreated".into(),
            event_version: 1,
            payload: "{}".into(),
            recorded_at_us: 0,
            actor_account_id: "acme".into(),
            actor_key_id: None,
            actor_scope: "customer".into(),
            request_id: None,
            prev_hash: String::new(),
            hash: String::new(),
            hash_version: 2,
        }
    }

    fn tasks_of(rows: &[EventRow]) -> Vec<(String, i64)> {
        rows.iter()
            .map(|r| (r.task_id.clone(), r.sequence))
            .collect()
    }

    #[test]
    fn a_task_cut_by_a_page_end_is_held_until_it_is_whole() {
        let mut whole = WholeTasks::default();
        let first = whole.take(vec![row("a", 1), row("a", 2), row("b", 1)], false);
        assert_eq!(tasks_of(&first), vec![("a".into(), 1), ("a".into(), 2)]);
        // A page holding nothing but the held task's next events hands out nothing yet.
        assert!(whole.take(vec![row("b", 2), row("b", 3)], false).is_empty());
        let second = whole.take(vec![row("b", 4), row("c", 1)], false);
        assert_eq!(second.len(), 4);
        assert!(second.iter().all(|r| r.task_id == "b"));
        let last = whole.take(Vec::new(), true);
        assert_eq!(tasks_of(&last), vec![("c".into(), 1)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn folding_on_every_core_hands_out_each_task_once_with_its_last_sequence() {
        let mut rows = Vec::new();
        for (task, events) in [("a", 3), ("b", 1), ("c", 700), ("d", 2), ("e", 1)] {
            rows.extend((1..=events).map(|s| row(task, s)));
        }
        let folded = fold_tasks(rows).await;
        let got: Vec<(String, i64)> = folded
            .iter()
            .map(|f| (f.task_id.clone(), f.version))
            .collect();
        let want: Vec<(String, i64)> = [("a", 3), ("b", 1), ("c", 700), ("d", 2), ("e", 1)]
            .iter()
            .map(|(t, v)| (t.to_string(), *v))
            .collect();
        assert_eq!(got, want);
    }
}
