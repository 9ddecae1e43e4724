//! The counts projection behind an exact `total` on every list page: per account, how many
//! tasks there are in all and per type, status, project, batch and customer_review_status.
//! It is kept in the append transaction (one statement per transaction that changes a
//! count) and rebuilt by `replay`, so reading a total costs one indexed lookup whatever the
//! ledger's size.

use std::collections::HashMap;

use sqlx::AnyConnection;
use taskledger_projections::{ListRow, TaskView};

use super::StoreError;

/// Rows per upsert: 4 parameters each.
const COUNTS_PER_STATEMENT: usize = 1000;

/// The dimensions counted, with the column of `tasks` each counts by (`'all'` counts every
/// task under the value `''`).
/// `batch_status` counts a batch's tasks per status under `<status>:<batch>` (a status has
/// no colon, so the value splits at its first one): a batch's status answer reads four rows.
pub(super) const DIMENSIONS: [(&str, &str); 7] = [
    ("all", "''"),
    ("type", "task_type"),
    ("status", "status"),
    ("project", "project"),
    ("batch", "batch"),
    ("review", "customer_review_status"),
    ("batch_status", "status || ':' || batch"),
];

/// Changes to counts, summed per (account, dimension, value) before they are written.
#[derive(Debug, Default)]
pub(super) struct CountDeltas(HashMap<(String, &'static str, String), i64>);

impl CountDeltas {
    /// Counts a task's view in (`sign = 1`) or out (`-1`).
    pub(super) fn view(&mut self, account_id: &str, view: &TaskView, sign: i64) {
        let row = ListRow::of(view);
        self.task(
            account_id,
            &row.task_type,
            row.status,
            row.project.as_deref(),
            row.batch.as_deref(),
            row.customer_review_status.as_deref(),
            sign,
        );
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn task(
        &mut self,
        account_id: &str,
        task_type: &str,
        status: &str,
        project: Option<&str>,
        batch: Option<&str>,
        review: Option<&str>,
        sign: i64,
    ) {
        let batch_status = batch.map(|b| format!("{status}:{b}"));
        let values = [
            ("batch_status", batch_status.as_deref()),
            ("all", Some("")),
            ("type", Some(task_type)),
            ("status", Some(status)),
            ("project", project),
            ("batch", batch),
            ("review", review),
        ];
        for (dimension, value) in values {
            if let Some(value) = value {
                *self
                    .0
                    .entry((account_id.to_string(), dimension, value.to_string()))
                    .or_default() += sign;
            }
        }
    }

    /// The changes left once those that cancel out are dropped.
    pub(super) fn nonzero(self) -> Vec<((String, &'static str, String), i64)> {
        self.0.into_iter().filter(|(_, n)| *n != 0).collect()
    }

    /// Adds the changes to `table` (`task_counts` or its shadow); nothing when none is left.
    pub(super) async fn write(
        self,
        conn: &mut AnyConnection,
        table: &str,
    ) -> Result<(), StoreError> {
        let rows: Vec<_> = self.0.into_iter().filter(|(_, n)| *n != 0).collect();
        let head = format!("INSERT INTO {table} (account_id, dimension, value, n) VALUES ");
        let tail = format!(
            " ON CONFLICT (account_id, dimension, value) DO UPDATE SET n = {table}.n + excluded.n"
        );
        for chunk in rows.chunks(COUNTS_PER_STATEMENT) {
            insert_rows_then(&mut *conn, &head, &tail, chunk).await?;
        }
        Ok(())
    }
}

async fn insert_rows_then(
    conn: &mut AnyConnection,
    head: &str,
    tail: &str,
    rows: &[((String, &'static str, String), i64)],
) -> Result<(), StoreError> {
    let mut sql = String::from(head);
    for i in 0..rows.len() {
        if i > 0 {
            sql.push_str(", ");
        }
        let p = 4 * i;
        sql.push_str(&format!("(${}, ${}, ${}, ${})", p + 1, p + 2, p + 3, p + 4));
    }
    sql.push_str(tail);
    rows.iter()
        .fold(sqlx::query(&sql), |q, ((account, dimension, value), n)| {
            q.bind(account.as_str())
                .bind(*dimension)
                .bind(value.as_str())
                .bind(*n)
        })
        .execute(conn)
        .await?;
    Ok(())
}

/// The counts `tasks_table` holds, as one query: (account, dimension, value, n).
pub(super) fn counts_of(tasks_table: &str) -> String {
    DIMENSIONS
        .iter()
        .map(|(dimension, column)| {
            // PostgreSQL refuses a constant in GROUP BY: 'all' groups by account alone.
            let (present, group) = if *column == "''" {
                (String::new(), String::new())
            } else {
                (
                    format!("WHERE {column} IS NOT NULL "),
                    format!(", {column}"),
                )
            };
            format!(
                "SELECT account_id, '{dimension}' AS dimension, {column} AS value, \
                 COUNT(*) AS n FROM {tasks_table} {present}GROUP BY account_id{group}"
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

/// Fills `counts_table` (empty) from `tasks_table`, set-based.
pub(super) async fn fill_counts(
    conn: &mut AnyConnection,
    tasks_table: &str,
    counts_table: &str,
) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "INSERT INTO {counts_table} (account_id, dimension, value, n) {}",
        counts_of(tasks_table)
    ))
    .execute(conn)
    .await?;
    Ok(())
}
