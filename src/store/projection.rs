//! The projections the append path and `replay` both write: a task's row (its view, byte for
//! byte, and the list index columns), its tags and its unique_id reservation. Each write is
//! defined once, over many tasks at a time, and serves a single command, a group commit and a
//! rebuild alike.

use std::collections::HashSet;

use sqlx::AnyConnection;
use taskledger_projections::{ListRow, TaskView};

use super::sql::{insert_rows, unique_violation_as_false, AnyQuery};
use super::StoreError;

/// The columns of `tasks`, in the order [`TaskRow`] binds them.
pub(super) const TASK_COLUMNS: &str = "task_id, account_id, version, body, task_type, status, \
     project, batch, customer_review_status, unique_id, created_at_us, updated_at_us, \
     completed_at_us";

/// New task rows per INSERT: 13 parameters each stays far below both backends' limits.
const TASK_ROWS_PER_INSERT: usize = 400;
/// Rows of three or four parameters per INSERT (tags, unique_ids).
const SMALL_ROWS_PER_INSERT: usize = 1000;

/// One row of `tasks`, read by position in [`TASK_COLUMNS`]' order (`replay --check` reads
/// every row, and looking each column up by name was a tenth of its work).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TaskRow {
    pub task_id: String,
    pub account_id: String,
    pub version: i64,
    pub body: String,
    pub task_type: String,
    pub status: String,
    pub project: Option<String>,
    pub batch: Option<String>,
    pub customer_review_status: Option<String>,
    pub unique_id: Option<String>,
    pub created_at_us: i64,
    pub updated_at_us: i64,
    pub completed_at_us: Option<i64>,
}

/// The names [`TASK_COLUMNS`] lists, in order.
const TASK_COLUMN_NAMES: [&str; 13] = [
    "task_id",
    "account_id",
    "version",
    "body",
    "task_type",
    "status",
    "project",
    "batch",
    "customer_review_status",
    "unique_id",
    "created_at_us",
    "updated_at_us",
    "completed_at_us",
];

impl<'r, R: sqlx::Row> sqlx::FromRow<'r, R> for TaskRow
where
    usize: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        debug_assert!(
            super::read::selects_first(row, &TASK_COLUMN_NAMES),
            "a statement reading tasks does not select TASK_COLUMNS first"
        );
        Ok(TaskRow {
            task_id: row.try_get(0)?,
            account_id: row.try_get(1)?,
            version: row.try_get(2)?,
            body: row.try_get(3)?,
            task_type: row.try_get(4)?,
            status: row.try_get(5)?,
            project: row.try_get(6)?,
            batch: row.try_get(7)?,
            customer_review_status: row.try_get(8)?,
            unique_id: row.try_get(9)?,
            created_at_us: row.try_get(10)?,
            updated_at_us: row.try_get(11)?,
            completed_at_us: row.try_get(12)?,
        })
    }
}

impl TaskRow {
    /// The row of a task whose view, after `version` events, is `view`.
    pub(super) fn of(account_id: &str, version: i64, view: &TaskView) -> TaskRow {
        let list = ListRow::of(view);
        TaskRow {
            task_id: list.task_id,
            account_id: account_id.to_string(),
            version,
            body: view.to_json(),
            task_type: list.task_type.to_string(),
            status: list.status.to_string(),
            project: list.project,
            batch: list.batch,
            customer_review_status: list.customer_review_status,
            unique_id: list.unique_id,
            created_at_us: list.created_at_us,
            updated_at_us: list.updated_at_us,
            completed_at_us: list.completed_at_us,
        }
    }

    /// Binds every column, in [`TASK_COLUMNS`] order.
    fn bind<'q>(&'q self, q: AnyQuery<'q>) -> AnyQuery<'q> {
        q.bind(&self.task_id)
            .bind(&self.account_id)
            .bind(self.version)
            .bind(&self.body)
            .bind(&self.task_type)
            .bind(&self.status)
            .bind(&self.project)
            .bind(&self.batch)
            .bind(&self.customer_review_status)
            .bind(&self.unique_id)
            .bind(self.created_at_us)
            .bind(self.updated_at_us)
            .bind(self.completed_at_us)
    }
}

/// Inserts new tasks' rows; `false` if one of the task ids exists already (nothing is
/// inserted then, and on PostgreSQL the transaction needs rolling back to a savepoint).
pub(super) async fn insert_task_rows(
    conn: &mut AnyConnection,
    rows: &[&TaskRow],
) -> Result<bool, StoreError> {
    insert_task_rows_into(conn, "tasks", rows).await
}

/// [`insert_task_rows`] into `table` (`tasks` or the shadow a replay builds).
pub(super) async fn insert_task_rows_into(
    conn: &mut AnyConnection,
    table: &str,
    rows: &[&TaskRow],
) -> Result<bool, StoreError> {
    let head = format!("INSERT INTO {table} ({TASK_COLUMNS}) VALUES ");
    for chunk in rows.chunks(TASK_ROWS_PER_INSERT) {
        let inserted = insert_rows(&mut *conn, &head, chunk, |q, row| row.bind(q)).await;
        if !unique_violation_as_false(inserted)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Replaces a task's row if it is still at `expected_version`; `false` if it moved on.
pub(super) async fn update_task_row(
    conn: &mut AnyConnection,
    row: &TaskRow,
    expected_version: i64,
) -> Result<bool, StoreError> {
    let updated = sqlx::query(
        "UPDATE tasks SET version = $3, body = $4, status = $5, customer_review_status = $6, \
         unique_id = $7, updated_at_us = $8, completed_at_us = $9 \
         WHERE task_id = $1 AND version = $2",
    )
    .bind(&row.task_id)
    .bind(expected_version)
    .bind(row.version)
    .bind(&row.body)
    .bind(&row.status)
    .bind(&row.customer_review_status)
    .bind(&row.unique_id)
    .bind(row.updated_at_us)
    .bind(row.completed_at_us)
    .execute(conn)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// One task's unique_id reservation (or release).
#[derive(Debug, Clone, Copy)]
pub(super) struct Reservation<'a> {
    pub account_id: &'a str,
    pub unique_id: &'a str,
    pub task_id: &'a str,
}

/// Frees values held by the tasks named. Run before [`reserve_unique_ids`]: within one
/// batch a value may move from one task to another.
pub(super) async fn release_unique_ids(
    conn: &mut AnyConnection,
    releases: &[Reservation<'_>],
) -> Result<(), StoreError> {
    for r in releases {
        sqlx::query(
            "DELETE FROM unique_ids WHERE account_id = $1 AND unique_id = $2 AND task_id = $3",
        )
        .bind(r.account_id)
        .bind(r.unique_id)
        .bind(r.task_id)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Reserves values; `false` if one is held already. The primary key decides: a concurrent
/// reservation of the same value waits for the other transaction and then fails here.
pub(super) async fn reserve_unique_ids(
    conn: &mut AnyConnection,
    reserves: &[Reservation<'_>],
) -> Result<bool, StoreError> {
    for chunk in reserves.chunks(SMALL_ROWS_PER_INSERT) {
        let inserted = insert_rows(
            &mut *conn,
            "INSERT INTO unique_ids (account_id, unique_id, task_id) VALUES ",
            chunk,
            |q, r| q.bind(r.account_id).bind(r.unique_id).bind(r.task_id),
        )
        .await;
        if !unique_violation_as_false(inserted)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// One task's tags, to be written.
#[derive(Debug, Clone, Copy)]
pub(super) struct TaskTags<'a> {
    pub account_id: &'a str,
    pub task_id: &'a str,
    pub tags: &'a [String],
    /// The task's creation time, kept beside each tag so a tag's tasks are listed from
    /// their index in list order.
    pub created_at_us: i64,
    /// Whether the task may have tag rows already (it existed before this write).
    pub replaces: bool,
}

/// Sets each task's tag rows to exactly its tags. A tag given twice is written once: the
/// rows are de-duplicated with a set, in time linear in the number of tags.
pub(super) async fn replace_tags(
    conn: &mut AnyConnection,
    tasks: &[TaskTags<'_>],
) -> Result<(), StoreError> {
    for t in tasks.iter().filter(|t| t.replaces) {
        sqlx::query("DELETE FROM task_tags WHERE task_id = $1")
            .bind(t.task_id)
            .execute(&mut *conn)
            .await?;
    }
    insert_tags_into(conn, "task_tags", tasks).await
}

/// Inserts each task's tags into `table` (`task_tags` or its shadow), each tag once.
pub(super) async fn insert_tags_into(
    conn: &mut AnyConnection,
    table: &str,
    tasks: &[TaskTags<'_>],
) -> Result<(), StoreError> {
    let head = format!("INSERT INTO {table} (task_id, account_id, tag, created_at_us) VALUES ");
    let mut rows: Vec<(&str, &str, &str, i64)> = Vec::new();
    for t in tasks {
        let mut seen = HashSet::with_capacity(t.tags.len());
        rows.extend(
            t.tags
                .iter()
                .filter(|tag| seen.insert(tag.as_str()))
                .map(|tag| (t.task_id, t.account_id, tag.as_str(), t.created_at_us)),
        );
    }
    for chunk in rows.chunks(SMALL_ROWS_PER_INSERT) {
        insert_rows(
            &mut *conn,
            &head,
            chunk,
            |q, (task, account, tag, created)| {
                q.bind(*task).bind(*account).bind(*tag).bind(*created)
            },
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_task_column_names_are_the_columns_listed() {
        let listed: Vec<&str> = TASK_COLUMNS.split(',').map(str::trim).collect();
        assert_eq!(listed, TASK_COLUMN_NAMES);
    }
}
