//! `replay --check`: comparing the stored projections with the events, on one snapshot.

use std::collections::{HashMap, HashSet};

use sqlx::AnyConnection;

use super::fold::{fold_tasks, Folded, WholeTasks};
use super::{RebuildReport, IDS_PER_STATEMENT, LIVE, REPLAY_PAGE};
use crate::store::counts::counts_of;
use crate::store::projection::{TaskRow, TASK_COLUMNS};
use crate::store::verify::ChainPager;
use crate::store::{Backend, Store, StoreError};

impl Store {
    pub(super) async fn replay_check(
        &self,
        progress: &impl Fn(u64),
    ) -> Result<RebuildReport, StoreError> {
        // One snapshot for events and projections alike, without holding writers up.
        let mut tx = self.pool.begin().await?;
        let mut native = None;
        if self.backend == Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await?;
            if let Some(pool) = &self.native {
                // Two native connections share this snapshot: one reads the events while the
                // other reads the stored projections, and neither pays the Any driver's
                // conversion of every value.
                let snapshot: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
                    .fetch_one(&mut *tx)
                    .await?;
                native = Some((
                    on_snapshot(pool, &snapshot).await?,
                    on_snapshot(pool, &snapshot).await?,
                ));
            }
        }
        let head: i64 = sqlx::query_scalar("SELECT last_position FROM ledger_head WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        let mut report = RebuildReport::default();
        let mut pager = ChainPager::new(1, head, REPLAY_PAGE);
        let mut whole = WholeTasks::default();
        // The last task id compared: the next comparison reads the stored rows after it.
        let mut compared = String::new();
        let (stored, count_mismatches) = match native {
            Some((mut events, mut stored)) => {
                // Three stages at once: the next page is read while this one is folded and
                // the page folded before it is compared.
                let streaming = async {
                    let mut page = pager.next_native(&mut *events).await?;
                    let mut folded: Vec<Folded> = Vec::new();
                    loop {
                        let end = page.is_empty();
                        let rows = whole.take(page, end);
                        report.events += rows.len() as u64;
                        // The next page is read in a task of its own: decoding its rows is work
                        // of this process, which would otherwise wait for the comparison's on
                        // the same thread.
                        let reading = tokio::spawn(async move {
                            let next = if end {
                                Ok(Vec::new())
                            } else {
                                pager.next_native(&mut *events).await
                            };
                            (pager, events, next)
                        });
                        let (done, checked) = tokio::join!(
                            fold_tasks(rows),
                            compare(
                                Projections::Native(&mut stored),
                                &mut compared,
                                &folded,
                                &mut report.mismatches
                            )
                        );
                        let next;
                        (pager, events, next) = reading
                            .await
                            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
                        checked?;
                        report.tasks += done.len() as u64;
                        folded = done;
                        progress(report.events);
                        if end {
                            compare(
                                Projections::Native(&mut stored),
                                &mut compared,
                                &folded,
                                &mut report.mismatches,
                            )
                            .await?;
                            break;
                        }
                        page = next?;
                    }
                    events.rollback().await?;
                    stored.rollback().await?;
                    Ok::<_, StoreError>(())
                };
                // Meanwhile the counts are compared on the first connection, on the same
                // snapshot: that is PostgreSQL's work alone.
                let (streamed, counted) =
                    tokio::join!(streaming, counts_checked(&mut tx, self.backend));
                streamed?;
                counted?
            }
            None => {
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
                    compare(
                        Projections::Any(&mut tx),
                        &mut compared,
                        &done,
                        &mut report.mismatches,
                    )
                    .await?;
                    progress(report.events);
                    if end {
                        break;
                    }
                    page = next?;
                }
                counts_checked(&mut tx, self.backend).await?
            }
        };
        report.mismatches.extend(count_mismatches);
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

/// How many task views are stored, and where the counts projection differs from what the
/// stored rows add up to.
async fn counts_checked(
    conn: &mut AnyConnection,
    backend: Backend,
) -> Result<(i64, Vec<String>), StoreError> {
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tasks")
        .fetch_one(&mut *conn)
        .await?;
    let mut mismatches = Vec::new();
    compare_counts(conn, backend, &mut mismatches).await?;
    Ok((stored, mismatches))
}

/// A native read-only transaction on the snapshot another transaction exported.
async fn on_snapshot(
    pool: &sqlx::PgPool,
    snapshot: &str,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::raw_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    // The identifier comes from the server (hex digits and dashes); SET takes no parameters.
    if !snapshot.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(StoreError::Corrupt {
            event_id: String::new(),
            message: format!("unexpected snapshot identifier {snapshot:?}"),
        });
    }
    sqlx::raw_sql(&format!("SET TRANSACTION SNAPSHOT '{snapshot}'"))
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// Where the stored projections are read: the Any connection, or on PostgreSQL a native one.
enum Projections<'c> {
    Any(&'c mut AnyConnection),
    Native(&'c mut sqlx::PgConnection),
}

/// `query_as($sql)` with each of the binds, fetched on either kind of connection: the
/// statement and binds are the same, only the driver differs.
macro_rules! fetch_all {
    ($conn:expr, $sql:expr, $($bind:expr),*) => {
        match $conn {
            Projections::Any(c) => {
                sqlx::query_as($sql)$(.bind($bind))*.fetch_all(&mut **c).await?
            }
            Projections::Native(c) => {
                sqlx::query_as($sql)$(.bind($bind))*.fetch_all(&mut **c).await?
            }
        }
    };
}

/// Compares folded tasks with the stored projections (`LIVE`). The tasks come in the
/// database's task order, so each chunk's stored rows are one range of task ids, read on
/// the primary key and the task indexes: after the last task compared (`compared`, moved
/// on here) up to the chunk's last. A stored row in a range without events is not named
/// here: the count of task views tells it.
async fn compare(
    mut conn: Projections<'_>,
    compared: &mut String,
    done: &[Folded],
    mismatches: &mut Vec<String>,
) -> Result<(), StoreError> {
    let range = "task_id > $1 AND task_id <= $2";
    for chunk in done.chunks(IDS_PER_STATEMENT) {
        let Some(last) = chunk.last() else { continue };
        let (after, until) = (compared.as_str(), last.task_id.as_str());
        let sql = format!("SELECT {TASK_COLUMNS} FROM {} WHERE {range}", LIVE.tasks);
        let rows: Vec<TaskRow> = fetch_all!(&mut conn, &sql, after, until);
        let rows: HashMap<&str, &TaskRow> = rows.iter().map(|r| (r.task_id.as_str(), r)).collect();
        let sql = format!(
            "SELECT task_id, account_id, tag, created_at_us FROM {} WHERE {range}",
            LIVE.tags
        );
        let tag_rows: Vec<(String, String, String, i64)> =
            fetch_all!(&mut conn, &sql, after, until);
        let mut tags: HashMap<(&str, &str), HashSet<(&str, i64)>> = HashMap::new();
        for (task, account, tag, created) in &tag_rows {
            tags.entry((task.as_str(), account.as_str()))
                .or_default()
                .insert((tag.as_str(), *created));
        }
        let sql = format!(
            "SELECT task_id, account_id, unique_id FROM {} WHERE {range}",
            LIVE.unique_ids
        );
        let reserved_rows: Vec<(String, String, String)> =
            fetch_all!(&mut conn, &sql, after, until);
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
        compared.clone_from(&last.task_id);
    }
    Ok(())
}

/// Compares the counts projection with what the stored task rows and tags add up to (the
/// rows themselves are compared with the events task by task): set-based, in the database,
/// so only differences reach this process, however many counts there are (one per
/// creation-time bucket, tag, project or batch).
async fn compare_counts(
    conn: &mut AnyConnection,
    backend: Backend,
    mismatches: &mut Vec<String>,
) -> Result<(), StoreError> {
    let same = "s.account_id = e.account_id AND s.dimension = e.dimension AND s.value = e.value";
    let sql = format!(
        "WITH e AS ({expected}) \
         SELECT e.account_id, e.dimension, e.value, COALESCE(s.n, 0), e.n FROM e \
         LEFT JOIN task_counts s ON {same} WHERE COALESCE(s.n, 0) <> e.n \
         UNION ALL \
         SELECT s.account_id, s.dimension, s.value, s.n, 0 FROM task_counts s \
         WHERE s.n <> 0 AND NOT EXISTS (SELECT 1 FROM e WHERE {same})",
        expected = counts_of(LIVE.tasks, LIVE.tags, backend)
    );
    let differing: Vec<(String, String, String, i64, i64)> =
        sqlx::query_as(&sql).fetch_all(&mut *conn).await?;
    for (account, dimension, value, found, n) in differing {
        mismatches.push(format!(
            "task_counts of account {account} has {dimension} = {value:?}: {found}, the tasks {n}"
        ));
    }
    Ok(())
}
