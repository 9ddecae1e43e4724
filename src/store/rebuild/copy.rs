//! `COPY` into the shadow tables on PostgreSQL: the first build of the shadow writes every
//! task, and `COPY` takes rows several times faster than multi-row INSERTs (no parameters
//! to parse and plan). It needs the native driver, which the Any driver does not expose.

use std::collections::HashSet;

use sqlx::postgres::PgPoolCopyExt;

use super::Tables;
use crate::store::projection::{TaskRow, TaskTags, TASK_COLUMNS};
use crate::store::StoreError;

/// Appends `value` in `COPY`'s text format: backslash, tab, newline and carriage return
/// escaped (JSON text holds backslashes; the others cannot occur unescaped in it, but a
/// name could hold them).
fn field(out: &mut String, value: Option<&str>) {
    let Some(value) = value else {
        out.push_str("\\N");
        return;
    };
    // Copied a run at a time between escapes (most values have none): pushing char by char
    // was a tenth of a rebuild's CPU. The four are ASCII, so every cut is a char boundary.
    let mut start = 0;
    for (i, byte) in value.bytes().enumerate() {
        let escaped = match byte {
            b'\\' => "\\\\",
            b'\t' => "\\t",
            b'\n' => "\\n",
            b'\r' => "\\r",
            _ => continue,
        };
        out.push_str(&value[start..i]);
        out.push_str(escaped);
        start = i + 1;
    }
    out.push_str(&value[start..]);
}

fn int(out: &mut String, value: Option<i64>) {
    match value {
        Some(v) => out.push_str(&v.to_string()),
        None => out.push_str("\\N"),
    }
}

async fn copy_in(pg: &sqlx::PgPool, statement: &str, data: String) -> Result<(), StoreError> {
    let mut copy = pg.copy_in_raw(statement).await?;
    if let Err(e) = copy.send(data.into_bytes()).await {
        let _ = copy.abort("failed to send").await;
        return Err(e.into());
    }
    copy.finish().await?;
    Ok(())
}

/// Writes task rows and their tags (each tag once) into the tables, which hold none of
/// them yet; a task id met twice is corruption, as with INSERT.
pub(super) async fn copy_tasks(
    pg: &sqlx::PgPool,
    tables: Tables,
    rows: &[TaskRow],
    tags: &[TaskTags<'_>],
) -> Result<(), StoreError> {
    if !rows.is_empty() {
        let mut data = String::with_capacity(rows.len() * 512);
        for r in rows {
            field(&mut data, Some(&r.task_id));
            data.push('\t');
            field(&mut data, Some(&r.account_id));
            data.push('\t');
            int(&mut data, Some(r.version));
            data.push('\t');
            field(&mut data, Some(&r.body));
            data.push('\t');
            field(&mut data, Some(&r.task_type));
            data.push('\t');
            field(&mut data, Some(&r.status));
            data.push('\t');
            field(&mut data, r.project.as_deref());
            data.push('\t');
            field(&mut data, r.batch.as_deref());
            data.push('\t');
            field(&mut data, r.customer_review_status.as_deref());
            data.push('\t');
            field(&mut data, r.unique_id.as_deref());
            data.push('\t');
            int(&mut data, Some(r.created_at_us));
            data.push('\t');
            int(&mut data, Some(r.updated_at_us));
            data.push('\t');
            int(&mut data, r.completed_at_us);
            data.push('\n');
        }
        let statement = format!("COPY {} ({TASK_COLUMNS}) FROM STDIN", tables.tasks);
        match copy_in(pg, &statement, data).await {
            Err(StoreError::Database(sqlx::Error::Database(e))) if e.is_unique_violation() => {
                return Err(StoreError::Corrupt {
                    event_id: String::new(),
                    message: "a task was rebuilt twice".into(),
                });
            }
            other => other?,
        }
    }
    let mut data = String::new();
    for t in tags {
        let mut seen = HashSet::with_capacity(t.tags.len());
        for tag in t.tags.iter().filter(|tag| seen.insert(tag.as_str())) {
            field(&mut data, Some(t.task_id));
            data.push('\t');
            field(&mut data, Some(t.account_id));
            data.push('\t');
            field(&mut data, Some(tag));
            data.push('\t');
            int(&mut data, Some(t.created_at_us));
            data.push('\n');
        }
    }
    if !data.is_empty() {
        let statement = format!(
            "COPY {} (task_id, account_id, tag, created_at_us) FROM STDIN",
            tables.tags
        );
        copy_in(pg, &statement, data).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::field;

    #[test]
    fn copy_text_escapes_backslashes_tabs_and_line_ends_and_writes_null_as_backslash_n() {
        let mut out = String::new();
        field(&mut out, Some("a\\b\tc\nd\re\"f"));
        out.push('|');
        field(&mut out, None);
        assert_eq!(out, "a\\\\b\\tc\\nd\\re\"f|\\N");
    }

    #[test]
    fn copy_text_keeps_characters_of_several_bytes_whole_around_escapes() {
        let mut out = String::new();
        field(&mut out, Some("é\t日本\\ü"));
        assert_eq!(out, "é\\t日本\\\\ü");
    }
}
