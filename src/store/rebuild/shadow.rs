//! Building the shadow tables from the events, catching them up, and swapping them in.

use std::collections::HashSet;

use futures::{StreamExt, TryStreamExt};
use sqlx::AnyConnection;

use super::fold::{fold_tasks, Folded, Folder, WholeTasks};
use super::{
    bind_all, placeholders, RebuildReport, Tables, IDS_PER_STATEMENT, INDEX_BUILDS_AT_ONCE,
    LAST_CATCH_UP, LIVE, REPLAY_PAGE, SHADOW,
};
use crate::store::counts::{fill_counts, CountDeltas};
use crate::store::projection::{insert_tags_into, insert_task_rows_into, TaskRow, TaskTags};
use crate::store::read::{EventRow, EVENT_COLUMNS};
use crate::store::verify::ChainPager;
use crate::store::{Backend, Store, StoreError};

/// A task's counted columns: account, type, status, project, batch, review status,
/// creation time.
type CountedRow = (
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
);

impl Store {
    pub(super) async fn rebuild(
        &self,
        progress: &impl Fn(u64),
    ) -> Result<RebuildReport, StoreError> {
        // Each phase's time is logged (debug): where a slow rebuild spends it.
        let started = std::time::Instant::now();
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
        // The tasks folded from the previous page, written while this one is folded.
        let mut folded: Vec<Folded> = Vec::new();
        loop {
            let end = page.is_empty();
            let rows = whole.take(page, end);
            report.events += rows.len() as u64;
            let next = if let Some(native) = &self.native {
                // Three stages at once on PostgreSQL: the next page is read on a connection
                // of its own (through the native driver: the Any driver would convert every
                // value first) while this page is folded and the previous one written.
                let (done, written, next) = tokio::join!(
                    fold_tasks(rows),
                    write_tasks(
                        &mut conn,
                        SHADOW,
                        &folded,
                        &mut report.mismatches,
                        Some(native)
                    ),
                    async {
                        if end {
                            Ok(Vec::new())
                        } else {
                            pager.next_native(native).await
                        }
                    }
                );
                written?;
                report.tasks += done.len() as u64;
                folded = done;
                next
            } else {
                let done = fold_tasks(rows).await;
                report.tasks += done.len() as u64;
                if end {
                    folded = done;
                    Ok(Vec::new())
                } else {
                    write_tasks(&mut conn, SHADOW, &done, &mut report.mismatches, None).await?;
                    pager.next(&mut *conn).await
                }
            };
            if end {
                write_tasks(
                    &mut conn,
                    SHADOW,
                    &folded,
                    &mut report.mismatches,
                    self.native.as_ref(),
                )
                .await?;
                break;
            }
            progress(report.events);
            page = next?;
        }
        let events = report.events;
        tracing::debug!(events, elapsed = ?started.elapsed(), "replay: shadow written");
        fill_counts(
            &mut conn,
            self.backend,
            SHADOW.tasks,
            SHADOW.tags,
            SHADOW.counts,
        )
        .await?;
        tracing::debug!(elapsed = ?started.elapsed(), "replay: counts filled");
        build_secondary_indexes(self, &mut conn).await?;
        tracing::debug!(elapsed = ?started.elapsed(), "replay: indexes built");
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
        tracing::debug!(elapsed = ?started.elapsed(), "replay: shadow analyzed");

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
        let events = report.events;
        tracing::debug!(events, elapsed = ?started.elapsed(), "replay: caught up");

        // The last stretch and the swap under the ledger head: appends wait meanwhile, so
        // nothing is committed between the last event caught up and the swap.
        let mut tx = self.begin_swap().await?;
        let head = tx.next_position() - 1;
        catch_up(tx.conn(), caught_up, head, &mut report).await?;
        swap(tx.conn(), self.backend).await?;
        tx.commit().await?;
        let events = report.events;
        tracing::debug!(events, elapsed = ?started.elapsed(), "replay: swapped in");
        // The shadow now holds the old projections.
        let mut conn = self.pool.acquire().await?;
        clear(&mut conn, self.backend).await?;
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
///
/// With `copy` (PostgreSQL, outside any transaction: the first build of the shadow), the
/// task rows and tags go in with `COPY` on that pool instead of multi-row INSERTs.
async fn write_tasks(
    conn: &mut AnyConnection,
    tables: Tables,
    done: &[Folded],
    mismatches: &mut Vec<String>,
    copy: Option<&sqlx::PgPool>,
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
    if let Some(pg) = copy {
        super::copy::copy_tasks(pg, tables, &rows, &tags).await?;
    } else if !insert_task_rows_into(conn, tables.tasks, &row_refs).await? {
        return Err(StoreError::Corrupt {
            event_id: String::new(),
            message: "a task was rebuilt twice".into(),
        });
    }
    if copy.is_none() {
        insert_tags_into(conn, tables.tags, &tags).await?;
    }
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
            "SELECT account_id, task_type, status, project, batch, customer_review_status, \
             created_at_us FROM {} WHERE task_id IN ({})",
            SHADOW.tasks,
            placeholders(1, chunk.len())
        );
        let counted: Vec<CountedRow> = chunk
            .iter()
            .fold(sqlx::query_as(&sql), |q, id| q.bind(*id))
            .fetch_all(&mut *conn)
            .await?;
        let sql = format!(
            "SELECT account_id, tag FROM {} WHERE task_id IN ({})",
            SHADOW.tags,
            placeholders(1, chunk.len())
        );
        let tagged: Vec<(String, String)> = chunk
            .iter()
            .fold(sqlx::query_as(&sql), |q, id| q.bind(*id))
            .fetch_all(&mut *conn)
            .await?;
        let mut counts = CountDeltas::default();
        for (account, tag) in &tagged {
            counts.add(account, "tag", tag, -1);
        }
        for (account, task_type, status, project, batch, review, created) in &counted {
            counts.created(account, *created, -1);
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
        write_tasks(&mut *conn, SHADOW, &done, &mut report.mismatches, None).await?;
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
