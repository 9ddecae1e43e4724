//! The list index query: every filter a column condition, newest first, keyset pagination.

use sqlx::any::AnyArguments;
use sqlx::query::Query;
use std::collections::{BTreeSet, HashMap};

use sqlx::{Any, FromRow, Row};

use super::counts::{created_range, CreatedRange, CREATED_LEVELS};
use super::{Store, StoreError};

/// Filters of `GET /v1/tasks`, already parsed. Times are microseconds.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub created_from_us: Option<i64>,
    pub created_to_us: Option<i64>,
    pub completed_after_us: Option<i64>,
    pub completed_before_us: Option<i64>,
    pub updated_after_us: Option<i64>,
    pub updated_before_us: Option<i64>,
    pub statuses: Vec<String>,
    pub task_types: Vec<String>,
    pub project: Option<String>,
    pub batch: Option<String>,
    pub review_statuses: Vec<String>,
    pub unique_ids: Vec<String>,
    /// Tasks having all of these.
    pub tags: Vec<String>,
    pub limit: i64,
    /// Continue after this (created_at_us, task_id), exclusive.
    pub after: Option<(i64, String)>,
    /// The total of the first page of this walk, carried by the caller (e.g. in its next
    /// token). Used only for filters the counts projection does not cover (times, tags,
    /// unique_ids, two filters at once), so their later pages are not counted again.
    pub known_total: Option<i64>,
}

impl ListQuery {
    /// Whether the query filters on nothing but tags and the creation time.
    fn only_tags_and_created(&self) -> bool {
        ListQuery {
            tags: Vec::new(),
            created_from_us: None,
            created_to_us: None,
            ..self.clone()
        }
        .counted()
        .is_some_and(|(dimension, _)| dimension == "all")
    }

    /// The counts-projection dimension and values whose sum is this query's total, when it
    /// filters on at most one of type, status, project, batch and customer_review_status
    /// (a task has one value of each, so the values' counts add up).
    fn counted(&self) -> Option<(&'static str, BTreeSet<&str>)> {
        let uncounted = self.created_from_us.is_some()
            || self.created_to_us.is_some()
            || self.completed_after_us.is_some()
            || self.completed_before_us.is_some()
            || self.updated_after_us.is_some()
            || self.updated_before_us.is_some()
            || !self.unique_ids.is_empty()
            || !self.tags.is_empty();
        if uncounted {
            return None;
        }
        let filters = [
            ("type", self.task_types.as_slice()),
            ("status", self.statuses.as_slice()),
            ("project", self.project.as_slice()),
            ("batch", self.batch.as_slice()),
            ("review", self.review_statuses.as_slice()),
        ];
        let mut set = filters.iter().filter(|(_, values)| !values.is_empty());
        match (set.next(), set.next()) {
            (None, _) => Some(("all", BTreeSet::from([""]))),
            (Some((dimension, values)), None) => {
                Some((*dimension, values.iter().map(String::as_str).collect()))
            }
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ListPage {
    pub bodies: Vec<String>,
    pub total: i64,
    /// The cursor of the last task returned, when more follow.
    pub next: Option<(i64, String)>,
}

/// One task of a page, with its cursor.
#[derive(sqlx::FromRow)]
struct ListedTask {
    body: String,
    created_at_us: i64,
    task_id: String,
}

enum Param {
    Int(i64),
    Text(String),
}

/// A WHERE clause with numbered placeholders, the same on both backends.
struct Filter {
    clauses: Vec<String>,
    params: Vec<Param>,
}

impl Filter {
    fn placeholder(&mut self, p: Param) -> String {
        self.params.push(p);
        format!("${}", self.params.len())
    }

    fn push(&mut self, sql: impl FnOnce(&mut Self) -> String) {
        let clause = sql(self);
        self.clauses.push(clause);
    }

    fn any_of(&mut self, column: &str, values: &[String]) {
        if values.is_empty() {
            return;
        }
        self.push(|f| {
            let list: Vec<String> = values
                .iter()
                .map(|v| f.placeholder(Param::Text(v.clone())))
                .collect();
            format!("{column} IN ({})", list.join(", "))
        });
    }

    fn compare(&mut self, column: &str, op: &str, value: Option<i64>) {
        if let Some(v) = value {
            self.push(|f| format!("{column} {op} {}", f.placeholder(Param::Int(v))));
        }
    }

    fn sql(&self) -> String {
        self.clauses.join(" AND ")
    }

    fn bind<'q>(
        &'q self,
        mut query: Query<'q, Any, AnyArguments<'q>>,
    ) -> Query<'q, Any, AnyArguments<'q>> {
        for p in &self.params {
            query = match p {
                Param::Int(i) => query.bind(*i),
                Param::Text(s) => query.bind(s.as_str()),
            };
        }
        query
    }
}

impl Store {
    pub async fn list_tasks(
        &self,
        account_id: &str,
        q: &ListQuery,
    ) -> Result<ListPage, StoreError> {
        let mut f = Filter {
            clauses: Vec::new(),
            params: Vec::new(),
        };
        let account = f.placeholder(Param::Text(account_id.to_string()));
        f.clauses.push(format!("t.account_id = {account}"));
        f.compare("t.created_at_us", ">=", q.created_from_us);
        f.compare("t.created_at_us", "<=", q.created_to_us);
        f.compare("t.completed_at_us", ">", q.completed_after_us);
        f.compare("t.completed_at_us", "<", q.completed_before_us);
        f.compare("t.updated_at_us", ">", q.updated_after_us);
        f.compare("t.updated_at_us", "<", q.updated_before_us);
        f.any_of("t.status", &q.statuses);
        f.any_of("t.task_type", &q.task_types);
        f.any_of("t.project", q.project.as_slice());
        f.any_of("t.batch", q.batch.as_slice());
        f.any_of("t.customer_review_status", &q.review_statuses);
        f.any_of("t.unique_id", &q.unique_ids);
        // With tags, the page is read from the first tag's index in list order (task_tags
        // carries each task's created_at_us), each further tag checked per task: the cost is
        // bounded by the page, not by how many tasks carry the tag.
        let mut tags: Vec<&String> = q.tags.iter().collect::<BTreeSet<_>>().into_iter().collect();
        let only_tags = !tags.is_empty()
            && q.created_from_us.is_none()
            && q.created_to_us.is_none()
            && q.only_tags_and_created();
        if only_tags && tags.len() > 1 {
            // Several tags: the rarest one's index is read (for the page and, on a walk's
            // first page, the total), so both cost at most what that tag's tasks cost.
            self.rarest_first(account_id, &mut tags).await?;
        }
        let (from, order) = match tags.first() {
            Some(first) => {
                f.push(|f| {
                    let tag = f.placeholder(Param::Text((*first).clone()));
                    format!("g.account_id = {account} AND g.tag = {tag}")
                });
                for other in tags.iter().skip(1) {
                    f.push(|f| {
                        let tag = f.placeholder(Param::Text((*other).clone()));
                        format!(
                            "EXISTS (SELECT 1 FROM task_tags h WHERE h.task_id = t.task_id \
                             AND h.tag = {tag})"
                        )
                    });
                }
                ("task_tags g JOIN tasks t ON t.task_id = g.task_id", "g")
            }
            None => ("tasks t", "t"),
        };
        let only_created = tags.is_empty()
            && (q.created_from_us.is_some() || q.created_to_us.is_some())
            && q.only_tags_and_created();
        // Exact from the counts projection first; a figure carried from the walk's first page
        // only where no count is kept; counted from the tasks last.
        let total = match (q.counted(), q.known_total) {
            (Some((dimension, values)), _) => {
                self.counted_total(account_id, dimension, &values).await?
            }
            (None, _) if only_tags && tags.len() == 1 => {
                let tag = BTreeSet::from([tags[0].as_str()]);
                self.counted_total(account_id, "tag", &tag).await?
            }
            (None, _) if only_created => {
                self.created_total(account_id, q.created_from_us, q.created_to_us)
                    .await?
            }
            (None, Some(known)) => known,
            (None, None) if only_tags => self.tagged_total(account_id, &tags).await?,
            (None, None) => {
                let total_sql = format!("SELECT COUNT(*) FROM {from} WHERE {}", f.sql());
                f.bind(sqlx::query(&total_sql))
                    .fetch_one(&self.pool)
                    .await?
                    .try_get(0)?
            }
        };

        if let Some((created, task_id)) = &q.after {
            // A row comparison is one range of the list index: a late page starts where
            // the cursor is instead of filtering every task before it.
            f.push(|f| {
                let c = f.placeholder(Param::Int(*created));
                let t = f.placeholder(Param::Text(task_id.clone()));
                format!("({order}.created_at_us, {order}.task_id) < ({c}, {t})")
            });
        }
        let limit = f.placeholder(Param::Int(q.limit + 1));
        let page_sql = format!(
            "SELECT t.body, t.created_at_us, t.task_id FROM {from} WHERE {} \
             ORDER BY {order}.created_at_us DESC, {order}.task_id DESC LIMIT {limit}",
            f.sql()
        );
        let rows = f.bind(sqlx::query(&page_sql)).fetch_all(&self.pool).await?;
        let more = rows.len() as i64 > q.limit;
        let mut bodies = Vec::with_capacity(rows.len());
        let mut next = None;
        for row in rows.iter().take(q.limit as usize) {
            let listed = ListedTask::from_row(row)?;
            bodies.push(listed.body);
            next = Some((listed.created_at_us, listed.task_id));
        }
        Ok(ListPage {
            bodies,
            total,
            next: if more { next } else { None },
        })
    }
}

impl Store {
    /// How many tasks of the account carry every tag: from the tag index alone, without
    /// reading the tasks.
    async fn tagged_total(&self, account_id: &str, tags: &[&String]) -> Result<i64, StoreError> {
        let mut sql =
            String::from("SELECT COUNT(*) FROM task_tags g WHERE g.account_id = $1 AND g.tag = $2");
        for i in 1..tags.len() {
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM task_tags h WHERE h.task_id = g.task_id \
                 AND h.tag = ${})",
                i + 2
            ));
        }
        let total: i64 = tags
            .iter()
            .fold(sqlx::query_scalar(&sql).bind(account_id), |q, tag| {
                q.bind(tag.as_str())
            })
            .fetch_one(&self.pool)
            .await?;
        Ok(total)
    }

    /// Orders `tags` by how many of the account's tasks carry each, fewest first (from the
    /// counts projection).
    async fn rarest_first(&self, account_id: &str, tags: &mut [&String]) -> Result<(), StoreError> {
        let sql = format!(
            "SELECT value, n FROM task_counts WHERE account_id = $1 AND dimension = 'tag' \
             AND value IN ({})",
            (0..tags.len())
                .map(|i| format!("${}", i + 2))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let counts: HashMap<String, i64> = tags
            .iter()
            .fold(sqlx::query_as(&sql).bind(account_id), |q, tag| {
                q.bind(tag.as_str())
            })
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .collect();
        tags.sort_by_key(|tag| {
            (
                counts.get(tag.as_str()).copied().unwrap_or(0),
                tag.to_string(),
            )
        });
        Ok(())
    }

    /// How many tasks of the account were created in `[from, to]` (µs, inclusive; a missing
    /// end is open): whole creation-time buckets from the counts projection, and the partial
    /// seconds at the ends from the creation-time index, in one statement. An open upper end
    /// is counted as every task less those created before `from`, so no range reaches past
    /// the present into buckets that cannot hold a task yet.
    async fn created_total(
        &self,
        account_id: &str,
        from: Option<i64>,
        to: Option<i64>,
    ) -> Result<i64, StoreError> {
        let (sign, range, mut terms) = match (from, to) {
            (Some(from), None) => (
                "-",
                from.checked_sub(1)
                    .map(|before| created_range(i64::MIN, before)),
                vec![String::from(
                    "(SELECT COALESCE(SUM(n), 0) FROM task_counts \
                     WHERE account_id = $1 AND dimension = 'all')",
                )],
            ),
            (from, to) => (
                "+",
                Some(created_range(
                    from.unwrap_or(i64::MIN),
                    to.unwrap_or(i64::MAX),
                )),
                Vec::new(),
            ),
        };
        let CreatedRange { buckets, edges } = range.unwrap_or_default();
        // Every value is a number computed here, so it is written into the statement.
        let whole: Vec<String> = CREATED_LEVELS
            .iter()
            .enumerate()
            .filter_map(|(level, dimension)| {
                let values: Vec<String> = buckets
                    .iter()
                    .filter(|(l, _)| *l == level)
                    .map(|(_, b)| format!("'{b}'"))
                    .collect();
                (!values.is_empty()).then(|| {
                    format!(
                        "(dimension = '{dimension}' AND value IN ({}))",
                        values.join(", ")
                    )
                })
            })
            .collect();
        let mut parts = Vec::new();
        if !whole.is_empty() {
            parts.push(format!(
                "(SELECT COALESCE(SUM(n), 0) FROM task_counts WHERE account_id = $1 AND ({}))",
                whole.join(" OR ")
            ));
        }
        for (lo, hi) in edges {
            parts.push(format!(
                "(SELECT COUNT(*) FROM tasks WHERE account_id = $1 \
                 AND created_at_us >= {lo} AND created_at_us <= {hi})"
            ));
        }
        if terms.is_empty() {
            terms.push("0".to_string());
        }
        for part in parts {
            terms.push(format!("{sign} {part}"));
        }
        let sql = format!("SELECT CAST({} AS BIGINT)", terms.join(" "));
        let total: i64 = sqlx::query_scalar(&sql)
            .bind(account_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(total)
    }

    /// The sum of the counts of `values` in `dimension`: one indexed read.
    async fn counted_total(
        &self,
        account_id: &str,
        dimension: &str,
        values: &BTreeSet<&str>,
    ) -> Result<i64, StoreError> {
        let list: Vec<String> = (0..values.len()).map(|i| format!("${}", i + 3)).collect();
        let sql = format!(
            "SELECT CAST(COALESCE(SUM(n), 0) AS BIGINT) FROM task_counts WHERE account_id = $1 \
             AND dimension = $2 AND value IN ({})",
            list.join(", ")
        );
        let total: i64 = values
            .iter()
            .fold(
                sqlx::query_scalar(&sql).bind(account_id).bind(dimension),
                |q, v| q.bind(*v),
            )
            .fetch_one(&self.pool)
            .await?;
        Ok(total)
    }
}
