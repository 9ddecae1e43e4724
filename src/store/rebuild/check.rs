//! `replay --check`: comparing the stored projections with the events, on one snapshot.

use std::collections::{HashMap, HashSet};

use sqlx::AnyConnection;

use super::fold::{fold_tasks, Folded, WholeTasks};
use super::{bind_all, placeholders, RebuildReport, IDS_PER_STATEMENT, LIVE, REPLAY_PAGE};
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

/// Compares the counts projection with what the stored task rows and tags add up to (the
/// rows themselves are compared with the events task by task): set-based, in the database,
/// so only differences reach this process, however many counts there are (one per
/// creation-time bucket, tag, project or batch).
async fn compare_counts(
    conn: &mut AnyConnection,
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
        expected = counts_of(LIVE.tasks, LIVE.tags)
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
