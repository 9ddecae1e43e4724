//! Small SQL building blocks shared by the write paths: multi-row INSERTs, unique violations
//! as an expected outcome, and savepoints.

use sqlx::{Any, AnyConnection};

use super::StoreError;

pub(super) type AnyQuery<'q> = sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>;

/// Runs a multi-row INSERT: `head` (which names its columns) followed by one `($n, ...)`
/// group per row, each row's values bound by `bind`.
pub(super) async fn insert_rows<T>(
    conn: &mut AnyConnection,
    head: &str,
    rows: &[T],
    bind: impl for<'q> Fn(AnyQuery<'q>, &'q T) -> AnyQuery<'q>,
) -> Result<(), sqlx::Error> {
    let columns = head
        .split_once('(')
        .and_then(|(_, rest)| rest.split_once(')'))
        .map_or(1, |(cols, _)| cols.split(',').count());
    let mut sql = String::with_capacity(head.len() + rows.len() * columns * 6);
    sql.push_str(head);
    for r in 0..rows.len() {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..columns {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push('$');
            sql.push_str(&(r * columns + c + 1).to_string());
        }
        sql.push(')');
    }
    rows.iter()
        .fold(sqlx::query(&sql), bind)
        .execute(conn)
        .await
        .map(|_| ())
}

/// Unique violations are an expected outcome (`Ok(false)`); anything else is fatal.
pub(super) fn unique_violation_as_false(
    result: Result<(), sqlx::Error>,
) -> Result<bool, StoreError> {
    match result {
        Ok(()) => Ok(true),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A named savepoint inside an open transaction: what lets one command of a group commit be
/// undone without the others. Dropping it without [`Savepoint::release`] or
/// [`Savepoint::roll_back`] leaves it to the transaction's end.
#[must_use = "a savepoint is released or rolled back"]
pub(super) struct Savepoint {
    name: &'static str,
}

impl Savepoint {
    pub(super) async fn open(
        conn: &mut AnyConnection,
        name: &'static str,
    ) -> Result<Savepoint, StoreError> {
        sqlx::query(&format!("SAVEPOINT {name}"))
            .execute(conn)
            .await?;
        Ok(Savepoint { name })
    }

    /// Keeps what was written since the savepoint.
    pub(super) async fn release(self, conn: &mut AnyConnection) -> Result<(), StoreError> {
        sqlx::query(&format!("RELEASE SAVEPOINT {}", self.name))
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Undoes what was written since the savepoint (and, on PostgreSQL, clears a failed
    /// statement's poisoning of the transaction).
    pub(super) async fn roll_back(self, conn: &mut AnyConnection) -> Result<(), StoreError> {
        sqlx::query(&format!("ROLLBACK TO SAVEPOINT {}", self.name))
            .execute(&mut *conn)
            .await?;
        self.release(conn).await
    }
}

/// One bound value.
enum Value<'a> {
    Text(Option<&'a str>),
    Int(Option<i64>),
}

/// SQL with `$n` placeholders numbered as values are pushed.
#[derive(Default)]
pub(super) struct Statement<'a> {
    sql: String,
    values: Vec<Value<'a>>,
}

impl<'a> Statement<'a> {
    pub(super) fn text(&mut self, v: Option<&'a str>) -> &mut Self {
        self.values.push(Value::Text(v));
        self.placeholder()
    }

    pub(super) fn int(&mut self, v: Option<i64>) -> &mut Self {
        self.values.push(Value::Int(v));
        self.placeholder()
    }

    fn placeholder(&mut self) -> &mut Self {
        self.sql.push('$');
        self.sql.push_str(&self.values.len().to_string());
        self
    }

    /// How many values are bound so far (PostgreSQL takes at most 65,535).
    pub(super) fn values(&self) -> usize {
        self.values.len()
    }

    pub(super) fn push(&mut self, sql: &str) -> &mut Self {
        self.sql.push_str(sql);
        self
    }

    pub(super) fn query(&'a self) -> AnyQuery<'a> {
        self.values
            .iter()
            .fold(sqlx::query(&self.sql), |q, v| match v {
                Value::Text(t) => q.bind(*t),
                Value::Int(i) => q.bind(*i),
            })
    }
}
