//! `GET /v1/tasks`: filters, keyset pagination with an opaque `next_token`.

use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use base64::Engine;
use serde::de::{self, Deserializer};
use serde::Deserialize;
use serde_json::{json, Value};
use taskledger_projections::{ReviewStatus, TaskStatus, TaskView};
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::extract::{AccountRead, Flag, Limit, Many, QueryParams, Time};
use super::tasks::task_json;
use super::{ApiError, Routes};
use crate::domain::limits::MAX_TOKEN_BYTES;
use crate::domain::{Identifier, Tag, TaskType, UniqueId};
use crate::store::ListQuery;

pub(super) fn router() -> Routes {
    Routes::new().route("/v1/tasks", get(list_tasks))
}

#[derive(OpenApi)]
#[openapi(paths(list_tasks))]
pub(super) struct Docs;

/// A closed set of names a list filter accepts.
trait Choice: Sized + 'static {
    const ALL: &'static [Self];
    fn name(&self) -> &'static str;
}

impl Choice for TaskStatus {
    const ALL: &'static [Self] = &TaskStatus::ALL;
    fn name(&self) -> &'static str {
        self.as_str()
    }
}

impl Choice for ReviewStatus {
    const ALL: &'static [Self] = &ReviewStatus::ALL;
    fn name(&self) -> &'static str {
        self.as_str()
    }
}

impl Choice for TaskType {
    const ALL: &'static [Self] = &TaskType::ALL;
    fn name(&self) -> &'static str {
        self.as_str()
    }
}

/// Comma-separated names, possibly repeated (`status=pending,error&status=canceled`).
#[derive(Debug)]
struct AnyOf<T>(Vec<T>);

impl<T> Default for AnyOf<T> {
    fn default() -> Self {
        AnyOf(Vec::new())
    }
}

impl<'de, T: Choice + Copy> Deserialize<'de> for AnyOf<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Many(values) = Many::<String>::deserialize(d)?;
        let mut out = Vec::new();
        for value in &values {
            for v in value.split(',').map(str::trim) {
                let found = T::ALL.iter().find(|c| c.name() == v).ok_or_else(|| {
                    let names: Vec<_> = T::ALL.iter().map(Choice::name).collect();
                    de::Error::custom(format!(
                        "must be one of {}; got {:?}",
                        names.join(", "),
                        v.chars().take(64).collect::<String>()
                    ))
                })?;
                // Each name once: a filter then holds at most `T::ALL.len()` values however
                // long the list, so no query can carry thousands of parameters.
                if !out.iter().any(|c: &T| c.name() == found.name()) {
                    out.push(*found);
                }
            }
        }
        Ok(AnyOf(out))
    }
}

/// `GET /v1/tasks`' query. Times accept `2021-04-25`, RFC 3339 with an offset, or
/// `YYYY-MM-DD HH:MM:SS[.ffffff]` in UTC; booleans `true`/`false` in any case. Parameters not
/// listed are ignored.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(default)]
pub(super) struct ListParams {
    /// Created at or after this time.
    #[param(value_type = Option<String>, nullable = false)]
    start_time: Option<Time>,
    /// Created at or before this time.
    #[param(value_type = Option<String>, nullable = false)]
    end_time: Option<Time>,
    #[param(value_type = Option<String>, nullable = false)]
    completed_after: Option<Time>,
    #[param(value_type = Option<String>, nullable = false)]
    completed_before: Option<Time>,
    #[param(value_type = Option<String>, nullable = false)]
    updated_after: Option<Time>,
    #[param(value_type = Option<String>, nullable = false)]
    updated_before: Option<Time>,
    /// Comma-separated, any of: pending, completed, canceled, error.
    #[param(value_type = Option<String>, nullable = false)]
    status: AnyOf<TaskStatus>,
    /// Comma-separated task types, any of.
    #[serde(rename = "type")]
    #[param(rename = "type", value_type = Option<String>, nullable = false)]
    task_type: AnyOf<TaskType>,
    /// At most 255 bytes, no U+0000.
    #[param(value_type = Option<String>, nullable = false, max_length = 255)]
    project: Option<Identifier>,
    /// At most 255 bytes, no U+0000.
    #[param(value_type = Option<String>, nullable = false, max_length = 255)]
    batch: Option<Identifier>,
    /// Comma-separated, any of: pending, accepted, rejected, fixed, commented.
    #[param(value_type = Option<String>, nullable = false)]
    customer_review_status: AnyOf<ReviewStatus>,
    /// Repeatable (`unique_id=a&unique_id=b`, at most 100): tasks with any of them.
    #[param(value_type = Option<Vec<UniqueId>>, nullable = false, style = Form, explode, max_items = 100)]
    unique_id: Many<UniqueId>,
    /// Repeatable (`tags=a&tags=b`, at most 100): tasks having all of them.
    #[param(value_type = Option<Vec<Tag>>, nullable = false, style = Form, explode, max_items = 100)]
    tags: Many<Tag>,
    /// 1 to 100.
    #[param(value_type = Option<i64>, nullable = false, minimum = 1, maximum = 100, default = 100)]
    limit: Option<Limit<100>>,
    /// Add `attachment_url` (the task's `params.attachment`) to each doc.
    #[param(value_type = Option<bool>, nullable = false, default = false)]
    include_attachment_url: Option<Flag>,
    /// Docs hold only `task_id`, `status`, `metadata` and `project`.
    #[param(value_type = Option<bool>, nullable = false, default = false)]
    limited_response: Option<Flag>,
    /// The previous page's `next_token` (at most 1024 bytes).
    #[param(nullable = false, max_length = 1024)]
    next_token: Option<String>,
    /// Only 0. Pages are reached with `next_token`, whose cost does not grow with the depth
    /// of the page; any other offset is a 400 saying so, never silently ignored.
    #[param(value_type = Option<i64>, nullable = false, minimum = 0, maximum = 0, default = 0)]
    #[allow(dead_code)]
    offset: Option<ZeroOffset>,
}

/// `offset`, accepted only as 0 (which is what every page answers with).
#[derive(Debug)]
struct ZeroOffset;

impl<'de> Deserialize<'de> for ZeroOffset {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim() == "0" {
            Ok(ZeroOffset)
        } else {
            Err(serde::de::Error::custom(format!(
                "is not supported past 0 (got {}): page with next_token, passing back the \
                 next_token of the previous page; an offset would make a page cost more the \
                 deeper it is",
                crate::domain::values::preview(&s)
            )))
        }
    }
}

/// The reduced document of `limited_response=true` ([`TaskView::limited`]).
#[derive(ToSchema)]
#[allow(dead_code)] // Documentation only: list pages are spliced from stored bytes.
pub(super) struct LimitedTask {
    task_id: String,
    status: TaskStatus,
    #[schema(value_type = Object)]
    metadata: Value,
    #[schema(nullable = false)]
    project: Option<String>,
}

/// A task of a list page.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct ListedTask {
    #[serde(flatten)]
    task: TaskView,
    /// With `include_attachment_url=true`: the task's `params.attachment`.
    #[schema(nullable = false)]
    attachment_url: Option<String>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
pub(super) enum ListedDoc {
    Task(Box<ListedTask>),
    Limited(LimitedTask),
}

/// A page of `GET /v1/tasks`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(super) struct TaskPage {
    docs: Vec<ListedDoc>,
    /// Tasks matching the filters, over all pages.
    total: i64,
    limit: i64,
    /// Always 0: pages are reached with `next_token`.
    offset: i64,
    has_more: bool,
    /// Pass back as `next_token` for the next page; null on the last one.
    #[schema(required = true)]
    next_token: Option<String>,
}

struct Options {
    query: ListQuery,
    include_attachment_url: bool,
    limited_response: bool,
}

fn parse(p: ListParams) -> Result<Options, ApiError> {
    let micros = |t: Option<Time>| t.map(|Time(t)| t.timestamp_micros());
    let names = |v: Vec<&'static str>| v.into_iter().map(String::from).collect::<Vec<_>>();
    let query = ListQuery {
        limit: p.limit.map_or(100, |Limit(n)| n),
        created_from_us: micros(p.start_time),
        created_to_us: micros(p.end_time),
        completed_after_us: micros(p.completed_after),
        completed_before_us: micros(p.completed_before),
        updated_after_us: micros(p.updated_after),
        updated_before_us: micros(p.updated_before),
        statuses: names(p.status.0.iter().map(|s| s.as_str()).collect()),
        task_types: names(p.task_type.0.iter().map(|s| s.as_str()).collect()),
        review_statuses: names(
            p.customer_review_status
                .0
                .iter()
                .map(|s| s.as_str())
                .collect(),
        ),
        project: p.project.map(Identifier::into_string),
        batch: p.batch.map(Identifier::into_string),
        unique_ids: p
            .unique_id
            .0
            .into_iter()
            .map(UniqueId::into_string)
            .collect(),
        tags: p.tags.0.into_iter().map(Tag::into_string).collect(),
        after: None,
        known_total: None,
    };
    let mut query = query;
    if let Some(token) = p.next_token.filter(|t| !t.is_empty()) {
        let cursor = decode_token(&token)?;
        query.after = Some((cursor.created_us, cursor.task_id));
        query.known_total = cursor.total;
    }
    Ok(Options {
        query,
        include_attachment_url: p.include_attachment_url.unwrap_or_default().0,
        limited_response: p.limited_response.unwrap_or_default().0,
    })
}

/// Where a walk stands: after the task `(created_us, task_id)`, with the walk's `total` as
/// counted on its first page, so later pages of a filter the counts projection does not
/// cover need not count again.
#[derive(Debug, PartialEq)]
struct Cursor {
    created_us: i64,
    task_id: String,
    total: Option<i64>,
}

fn encode_token(created_us: i64, task_id: &str, total: i64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({ "c": created_us, "t": task_id, "n": total }).to_string())
}

fn decode_token(token: &str) -> Result<Cursor, ApiError> {
    let invalid = || ApiError::bad_request("next_token is not valid");
    if token.len() > MAX_TOKEN_BYTES {
        return Err(invalid());
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| invalid())?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    let total = match value.get("n") {
        None => None,
        Some(n) => Some(n.as_i64().filter(|n| *n >= 0).ok_or_else(invalid)?),
    };
    match (value["c"].as_i64(), value["t"].as_str()) {
        (Some(c), Some(t)) => Ok(Cursor {
            created_us: c,
            task_id: t.to_string(),
            total,
        }),
        _ => Err(invalid()),
    }
}

/// The account's tasks, newest first, with keyset pagination.
#[utoipa::path(
    get,
    path = "/v1/tasks",
    description = "Tasks matching every given filter, newest `created_at` first (ties by task \
                   id). Pass `next_token` back to get the next page; it stays valid while tasks \
                   are added.",
    params(ListParams),
    responses((status = 200, description = "A page of tasks.", body = TaskPage))
)]
async fn list_tasks(
    AccountRead { state, caller }: AccountRead,
    QueryParams(params): QueryParams<ListParams>,
) -> Result<Response, ApiError> {
    let options = parse(params)?;
    let page = state
        .ledger
        .store()
        .list_tasks(&caller.ledger(), &options.query)
        .await?;
    let docs: Vec<String> = if options.include_attachment_url || options.limited_response {
        page.bodies
            .iter()
            .map(|body| reshape(body, &options))
            .collect::<Result<_, _>>()?
    } else {
        page.bodies
    };
    let next_token = match &page.next {
        Some((c, t)) => Value::String(encode_token(*c, t, page.total)),
        None => Value::Null,
    };
    // The stored task objects are spliced in as they are, byte for byte.
    let body = format!(
        "{{\"docs\":[{}],\"total\":{},\"limit\":{},\"offset\":0,\"has_more\":{},\"next_token\":{}}}",
        docs.join(","),
        page.total,
        options.query.limit,
        page.next.is_some(),
        next_token
    );
    Ok(task_json(body))
}

fn reshape(body: &str, options: &Options) -> Result<String, ApiError> {
    let view: TaskView = serde_json::from_str(body).map_err(|e| {
        // A stored view that does not decode is our bug; the client gets no detail of it.
        tracing::error!(error = %e, "a stored task view does not decode");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error.")
    })?;
    let mut doc = if options.limited_response {
        view.limited()
    } else {
        serde_json::to_value(&view).expect("a view serializes")
    };
    if options.include_attachment_url {
        if let Some(url) = view.params.get("attachment").and_then(Value::as_str) {
            doc["attachment_url"] = Value::String(url.to_string());
        }
    }
    Ok(doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::extract::{form_object, from_value};

    fn params(q: &str) -> Result<Options, ApiError> {
        parse(from_value("query", form_object(q.as_bytes()))?)
    }

    #[test]
    fn a_next_token_round_trips_and_garbage_is_a_400() {
        let token = encode_token(1_700_000_000_000_000, "0190a1b2c3d4e5f601234567", 42);
        assert_eq!(
            decode_token(&token).unwrap(),
            Cursor {
                created_us: 1_700_000_000_000_000,
                task_id: "0190a1b2c3d4e5f601234567".to_string(),
                total: Some(42),
            }
        );
        assert!(decode_token("not-a-token").is_err());
        assert!(decode_token(&"A".repeat(MAX_TOKEN_BYTES + 1)).is_err());
    }

    #[test]
    fn a_comma_list_holds_each_name_once_however_long_it_is() {
        let long = vec!["error"; 20_000].join(",");
        let o = params(&format!(
            "status={long},pending&type=categorization,categorization"
        ))
        .unwrap();
        assert_eq!(o.query.statuses, vec!["error", "pending"]);
        assert_eq!(o.query.task_types, vec!["categorization"]);
    }

    #[test]
    fn limits_outside_1_to_100_are_refused() {
        for bad in ["0", "101", "-1", "ten", ""] {
            let e = params(&format!("limit={bad}")).err().unwrap();
            assert!(e.message.contains("limit"), "{bad}: {}", e.message);
        }
        assert_eq!(params("limit=100").ok().unwrap().query.limit, 100);
        assert_eq!(params("").ok().unwrap().query.limit, 100);
    }

    #[test]
    fn repeated_and_comma_separated_filters_accumulate() {
        let o = params(
            "tags=a&tags=b&unique_id=x&unique_id=y&customer_review_status=accepted,fixed\
             &status=pending&status=error,canceled&unknown=ignored",
        )
        .ok()
        .unwrap();
        assert_eq!(o.query.tags, vec!["a", "b"]);
        assert_eq!(o.query.unique_ids, vec!["x", "y"]);
        assert_eq!(o.query.review_statuses, vec!["accepted", "fixed"]);
        assert_eq!(o.query.statuses, vec!["pending", "error", "canceled"]);
    }

    #[test]
    fn unknown_enum_values_are_400s_naming_the_parameter() {
        for q in [
            "status=done",
            "type=painting",
            "customer_review_status=maybe",
        ] {
            let e = params(q).err().unwrap();
            assert!(
                e.message.contains(q.split('=').next().unwrap()),
                "{}",
                e.message
            );
        }
    }

    #[test]
    fn identifier_filters_with_nul_or_over_the_limit_are_400s_naming_the_parameter() {
        let long = "x".repeat(crate::domain::limits::MAX_IDENTIFIER_BYTES + 1);
        for name in ["project", "batch", "unique_id", "tags"] {
            for bad in ["%00", "a%00b", long.as_str()] {
                let e = params(&format!("{name}={bad}")).err().unwrap();
                assert_eq!(e.status, StatusCode::BAD_REQUEST);
                assert!(e.message.starts_with(name), "{name}={bad}: {}", e.message);
            }
        }
        let many = vec!["tags=t"; crate::domain::limits::MAX_FILTER_VALUES + 1].join("&");
        assert!(params(&many).err().unwrap().message.contains("tags"));
    }
}
