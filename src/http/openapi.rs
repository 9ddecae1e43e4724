//! `GET /openapi.json`: the OpenAPI 3.1 description of the API, generated from the handlers'
//! `#[utoipa::path]` annotations (each resource module has a `Docs` listing its own).
//!
//! What every route shares is added in one pass ([`apply_conventions`]) rather than repeated
//! on each handler: the error answers, authentication, `Idempotency-Key` on the mutating
//! routes and `x-request-id`. The types below mirror wire formats owned by crates that must
//! not depend on utoipa (`TaskView`, `EventEnvelope`); the tests hold each mirror to the
//! fields its original actually serializes.

use std::collections::HashMap;
use std::sync::LazyLock;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::Value;
use utoipa::openapi::path::{Operation, Parameter, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Components, ContentBuilder, Header, Ref, RefOr, Required, Schema};
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::Routes;
use crate::domain::validate::TASK_TYPES;

pub(super) fn router() -> Routes {
    Routes::new().route("/openapi.json", get(openapi_json))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "taskledger",
        description = "An event-sourced ledger of data-labeling tasks. Every `/v1` route needs \
                       an API key (HTTP Basic with the key as user name and an empty password, \
                       or Bearer). Every response carries `x-request-id`."
    ),
    paths(openapi_json),
    components(schemas(super::error::ErrorBody)),
    tags(
        (name = "tasks", description = "Create, read, list and change tasks."),
        (name = "events", description = "The account's event feed."),
        (name = "operations", description = "Probes, metrics and this document; no API key.")
    )
)]
struct ApiDoc;

/// The whole document: every module's routes plus the shared conventions.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    for part in [
        super::health::Docs::openapi(),
        super::metrics::Docs::openapi(),
        super::tasks::Docs::openapi(),
        super::list::Docs::openapi(),
        super::events::Docs::openapi(),
    ] {
        doc.merge(part);
    }
    apply_conventions(&mut doc);
    doc
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API.", body = Object))
)]
async fn openapi_json() -> impl IntoResponse {
    static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
        document()
            .to_json()
            .expect("the OpenAPI document serializes")
    });
    ([(CONTENT_TYPE, "application/json")], DOCUMENT.as_str())
}

/// An error answer and the name of its reusable response.
struct ErrorAnswer {
    status: u16,
    name: &'static str,
    description: &'static str,
}

const ERROR_ANSWERS: &[ErrorAnswer] = &[
    ErrorAnswer {
        status: 400,
        name: "BadRequest",
        description: "Invalid request: malformed JSON, a wrong type, a bad query value or an \
                      invalid Idempotency-Key; the message names the offending field.",
    },
    ErrorAnswer {
        status: 401,
        name: "Unauthorized",
        description: "Missing, unknown or revoked API key.",
    },
    ErrorAnswer {
        status: 403,
        name: "Forbidden",
        description: "The key's scope may not run this command (e.g. a customer key completing \
                      a task).",
    },
    ErrorAnswer {
        status: 404,
        name: "NotFound",
        description: "Task with that ID not found (also another account's task).",
    },
    ErrorAnswer {
        status: 409,
        name: "Conflict",
        description: "The unique_id is used by another task of the account (named in the \
                      message), or the Idempotency-Key was used for a different request.",
    },
    ErrorAnswer {
        status: 413,
        name: "PayloadTooLarge",
        description: "The request body is too large.",
    },
    ErrorAnswer {
        status: 429,
        name: "TooManyRequests",
        description: "A request with this Idempotency-Key is still being processed; retry \
                      after `Retry-After` seconds.",
    },
    ErrorAnswer {
        status: 500,
        name: "InternalServerError",
        description: "Internal error; the message is opaque and the cause is logged.",
    },
    ErrorAnswer {
        status: 503,
        name: "ServiceUnavailable",
        description: "The ledger store is unreachable, or the task is changed by too many \
                      concurrent requests; retry.",
    },
];

/// The error statuses an operation can answer. Derived from the route's shape, so a new
/// route gets the right list without repeating it in its annotation.
fn error_statuses(method: &str, path: &str, op: &Operation) -> Vec<u16> {
    if !path.starts_with("/v1/") {
        return if path == "/readyz" { vec![503] } else { vec![] };
    }
    let mutating = method != "get";
    let has_query = op
        .parameters
        .iter()
        .flatten()
        .any(|p| p.parameter_in == ParameterIn::Query);
    let mut statuses = vec![401, 500, 503];
    if mutating || has_query || op.request_body.is_some() {
        statuses.push(400);
    }
    let is_create = method == "post" && path == "/v1/task/{id}";
    if path.contains("{id}") && !is_create {
        statuses.push(404);
    }
    if mutating {
        statuses.extend([403, 413, 429]);
        if !never_409(method, path) {
            statuses.push(409);
        }
    }
    statuses.sort_unstable();
    statuses
}

/// The contract's routes that never answer 409 (an Idempotency-Key mismatch is a 400 there).
fn never_409(method: &str, path: &str) -> bool {
    path.ends_with("/tags")
        || path.ends_with("/cancel")
        || (method == "delete" && path.ends_with("/unique_id"))
}

fn string_schema() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

fn request_id_header() -> Header {
    let mut header = Header::new(string_schema());
    header.description = Some(
        "The request's id: the client's `x-request-id` if it was 1 to 128 visible ASCII \
         characters, otherwise a generated UUID v7. Recorded with every event the request \
         caused."
            .into(),
    );
    header
}

fn error_response(answer: &ErrorAnswer) -> Response {
    let mut builder = ResponseBuilder::new()
        .description(answer.description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Error")))
                .build(),
        )
        .header("x-request-id", request_id_header());
    if answer.status == 429 {
        let mut retry_after = Header::new(ObjectBuilder::new().schema_type(Type::Integer));
        retry_after.description = Some("Seconds to wait before retrying.".into());
        builder = builder.header("Retry-After", retry_after);
    }
    builder.build()
}

/// The operations of a path item with their lower-case method names.
fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = (&'static str, &mut Operation)> {
    [
        ("get", item.get.as_mut()),
        ("put", item.put.as_mut()),
        ("post", item.post.as_mut()),
        ("delete", item.delete.as_mut()),
        ("options", item.options.as_mut()),
        ("head", item.head.as_mut()),
        ("patch", item.patch.as_mut()),
        ("trace", item.trace.as_mut()),
    ]
    .into_iter()
    .filter_map(|(method, op)| op.map(|op| (method, op)))
}

fn apply_conventions(doc: &mut utoipa::openapi::OpenApi) {
    let components = doc.components.get_or_insert_with(Components::new);
    components.add_security_scheme(
        "basic",
        SecurityScheme::Http(
            Http::builder()
                .scheme(HttpAuthScheme::Basic)
                .description(Some("The API key as user name, an empty password."))
                .build(),
        ),
    );
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            Http::builder()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("`Authorization: Bearer <API key>`."))
                .build(),
        ),
    );
    for answer in ERROR_ANSWERS {
        components
            .responses
            .insert(answer.name.to_string(), error_response(answer).into());
    }
    let answer_name = |status: u16| {
        ERROR_ANSWERS
            .iter()
            .find(|a| a.status == status)
            .map(|a| a.name)
            .expect("every error status has a reusable response")
    };

    for (path, item) in doc.paths.paths.iter_mut() {
        for (method, op) in operations_mut(item) {
            for response in op.responses.responses.values_mut() {
                if let RefOr::T(response) = response {
                    response
                        .headers
                        .insert("x-request-id".into(), request_id_header());
                }
            }
            for status in error_statuses(method, path, op) {
                op.responses.responses.insert(
                    status.to_string(),
                    Ref::from_response_name(answer_name(status)).into(),
                );
            }
            let parameters = op.parameters.get_or_insert_with(Vec::new);
            parameters.push(
                ParameterBuilder::new()
                    .name("x-request-id")
                    .parameter_in(ParameterIn::Header)
                    .required(Required::False)
                    .description(Some(
                        "Your id for this request (1 to 128 visible ASCII characters), echoed \
                         in the response and recorded with the events it causes.",
                    ))
                    .schema(Some(string_schema().max_length(Some(128))))
                    .build(),
            );
            if !path.starts_with("/v1/") {
                continue;
            }
            op.security = Some(vec![
                SecurityRequirement::new("basic", Vec::<String>::new()),
                SecurityRequirement::new("bearer", Vec::<String>::new()),
            ]);
            if method != "get" {
                parameters.push(idempotency_key_parameter());
            }
            if method == "post" && path == "/v1/task/{id}" {
                restrict_to_task_types(parameters);
            }
        }
    }

    if let Some(RefOr::T(Schema::Object(task))) = components.schemas.get_mut("Task") {
        if let Some(RefOr::T(Schema::Object(task_type))) = task.properties.get_mut("type") {
            task_type.enum_values = Some(TASK_TYPES.iter().map(|t| Value::from(*t)).collect());
        }
    }
}

fn idempotency_key_parameter() -> Parameter {
    ParameterBuilder::new()
        .name("Idempotency-Key")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "1 to 255 visible ASCII characters. The first response (status and body, errors \
             included) is stored and replayed, with `idempotent-replayed: true`, for the same \
             request with the same key. The same key with a different method, path, body or \
             account is refused; while the first request still runs it is a 429.",
        ))
        .schema(Some(
            string_schema().min_length(Some(1)).max_length(Some(255)),
        ))
        .build()
}

fn restrict_to_task_types(parameters: &mut [Parameter]) {
    for parameter in parameters.iter_mut().filter(|p| p.name == "id") {
        parameter.schema = Some(
            string_schema()
                .enum_values(Some(TASK_TYPES.iter().copied()))
                .into(),
        );
    }
}

// Documentation types: utoipa reads their shape, nothing ever builds one.
#[allow(dead_code)]
mod schemas {
    use super::*;

    /// A task. Keys documented as optional are absent, never null, when they have no value.
    #[derive(ToSchema)]
    pub struct Task {
        /// 24 lowercase hex characters, time-ordered.
        #[schema(example = "0190a1b2c3d4e5f601234567")]
        task_id: String,
        /// RFC 3339 UTC with milliseconds.
        #[schema(format = DateTime)]
        created_at: String,
        #[schema(format = DateTime)]
        updated_at: String,
        /// Present once completed.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(format = DateTime, nullable = false)]
        completed_at: Option<String>,
        #[serde(rename = "type")]
        task_type: String,
        status: TaskStatus,
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        instruction: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        callback_url: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        project: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        batch: Option<String>,
        /// The type-specific creation fields (attachment_type, attachment, categories,
        /// geometries, ...) as given.
        #[schema(value_type = Object)]
        params: Value,
        /// Present once completed (the contributor's answer) or errored (the error).
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        response: Option<Value>,
        /// True once a callback was delivered.
        callback_completed: bool,
        #[schema(value_type = Object)]
        metadata: Value,
        audits: Vec<Audit>,
        /// Present once the task is completed.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        customer_review_status: Option<ReviewStatus>,
        /// Absent when the task has none.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tags: Vec<String>,
        /// Absent when the task has none.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        unique_id: Option<String>,
    }

    #[derive(ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum TaskStatus {
        Pending,
        Completed,
        Canceled,
        Error,
    }

    #[derive(ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum ReviewStatus {
        Pending,
        Accepted,
        Rejected,
        Fixed,
    }

    #[derive(ToSchema)]
    pub struct Audit {
        audited_by: String,
        /// RFC 3339 UTC with milliseconds.
        #[schema(format = DateTime)]
        audited_at: String,
        #[schema(required = true)]
        audit_time_secs: Option<u64>,
        /// accepted, rejected or fixed.
        audit_result: String,
        audit_source: AuditSource,
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        comments: Option<String>,
    }

    #[derive(ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum AuditSource {
        Customer,
        Refonte,
    }

    /// The reduced document of `limited_response=true`.
    #[derive(ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct LimitedTask {
        task_id: String,
        status: TaskStatus,
        #[schema(value_type = Object)]
        metadata: Value,
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        project: Option<String>,
    }

    /// A task of a list page.
    #[derive(ToSchema)]
    pub struct ListedTask {
        #[serde(flatten)]
        task: Task,
        /// With `include_attachment_url=true`: the task's `params.attachment`.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        attachment_url: Option<String>,
    }

    #[derive(ToSchema)]
    #[serde(untagged)]
    pub enum ListedDoc {
        Task(Box<ListedTask>),
        Limited(LimitedTask),
    }

    /// A page of `GET /v1/tasks`.
    #[derive(ToSchema)]
    pub struct TaskPage {
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

    /// Who caused an event.
    #[derive(ToSchema)]
    pub struct Actor {
        account_id: String,
        /// Null for taskledger itself (callback records).
        #[schema(required = true)]
        key_id: Option<String>,
        scope: Scope,
    }

    #[derive(ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum Scope {
        Customer,
        Contributor,
        System,
    }

    /// One recorded event, as in `GET /v1/events` and on the Kafka topic.
    #[derive(ToSchema)]
    pub struct EventEnvelope {
        /// UUID v7; the de-duplication key for at-least-once consumers.
        #[schema(format = "uuid")]
        event_id: String,
        event_type: String,
        event_version: u32,
        task_id: String,
        account_id: String,
        /// 1-based, contiguous within the task.
        sequence: i64,
        /// 1-based, contiguous across the ledger, in commit order.
        global_position: i64,
        /// RFC 3339 UTC with microseconds.
        #[schema(format = DateTime)]
        recorded_at: String,
        actor: Actor,
        #[schema(required = true)]
        request_id: Option<String>,
        payload: Value,
        /// Hash of the previous event of the task (64 zeros for the first).
        prev_hash: String,
        /// Hex SHA-256 of the event's canonical hash input.
        hash: String,
    }

    /// The answer of the probes.
    #[derive(ToSchema)]
    pub struct ProbeStatus {
        #[schema(example = "ok")]
        status: String,
    }

    /// The body of `POST /v1/task/{type}`. Besides the common fields, the type's own fields
    /// (categorization: `attachment`, `attachment_type`, non-empty `categories`;
    /// imageannotation: `attachment`, `geometries`; others at least `attachment`) land in
    /// the task's `params`.
    #[derive(ToSchema)]
    #[schema(example = json!({
        "callback_url": "https://example.com/callback",
        "instruction": "Is this a car?",
        "attachment_type": "image",
        "attachment": "https://example.com/car.jpg",
        "categories": ["car", "not a car"],
        "unique_id": "car-0001",
        "tags": ["cars"]
    }))]
    pub struct CreateTaskBody {
        instruction: Option<String>,
        /// An http or https URL, POSTed when the task completes or errors.
        callback_url: Option<String>,
        project: Option<String>,
        batch: Option<String>,
        /// Unique per account; a taken one is a 409 naming its task.
        unique_id: Option<String>,
        /// An object, at most 10 KB serialized. Default `{}`.
        #[schema(value_type = Option<Object>)]
        metadata: Option<Value>,
        tags: Option<Vec<String>>,
        /// Release the unique_id if the task ends in error.
        clear_unique_id_on_error: Option<bool>,
        #[serde(flatten)]
        type_fields: HashMap<String, Value>,
    }

    #[derive(ToSchema)]
    pub struct UniqueIdBody {
        unique_id: String,
    }

    /// A customer's review or a contributor's quality audit, by the key's scope.
    #[derive(ToSchema)]
    #[serde(untagged)]
    pub enum AuditBody {
        Customer(CustomerAudit),
        Contributor(ContributorAudit),
    }

    /// With a customer key.
    #[derive(ToSchema)]
    pub struct CustomerAudit {
        accepted: bool,
        comments: Option<String>,
    }

    /// With a contributor key.
    #[derive(ToSchema)]
    pub struct ContributorAudit {
        audit_result: ContributorAuditResult,
        audit_time_secs: Option<u64>,
        /// The corrected answer, with `audit_result: fixed`.
        response: Option<Value>,
    }

    #[derive(ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum ContributorAuditResult {
        Accepted,
        Fixed,
        Rejected,
    }

    #[derive(ToSchema)]
    pub struct CompleteBody {
        /// The contributor's answer, any JSON value.
        response: Value,
    }

    /// The whole object becomes the task's `response`.
    #[derive(ToSchema)]
    pub struct ErrorTaskBody {
        /// What went wrong, any JSON value.
        error: Value,
        #[serde(flatten)]
        details: HashMap<String, Value>,
    }

    #[derive(IntoParams)]
    #[into_params(parameter_in = Path)]
    pub struct TaskPath {
        /// The task id: 24 lowercase hex characters.
        id: String,
    }

    /// Times accept `2021-04-25`, RFC 3339 with an offset, or `YYYY-MM-DD HH:MM:SS[.ffffff]`
    /// in UTC; booleans `true`/`false` in any case.
    #[derive(IntoParams)]
    #[into_params(parameter_in = Query)]
    pub struct ListParams {
        /// Created at or after this time.
        #[param(nullable = false)]
        start_time: Option<String>,
        /// Created before this time.
        #[param(nullable = false)]
        end_time: Option<String>,
        #[param(nullable = false)]
        completed_after: Option<String>,
        #[param(nullable = false)]
        completed_before: Option<String>,
        #[param(nullable = false)]
        updated_after: Option<String>,
        #[param(nullable = false)]
        updated_before: Option<String>,
        /// Comma-separated, any of: pending, completed, canceled, error.
        #[param(nullable = false)]
        status: Option<String>,
        /// Comma-separated task types, any of.
        #[param(rename = "type", nullable = false)]
        task_type: Option<String>,
        #[param(nullable = false)]
        project: Option<String>,
        #[param(nullable = false)]
        batch: Option<String>,
        /// Comma-separated, any of: pending, accepted, rejected, fixed.
        #[param(nullable = false)]
        customer_review_status: Option<String>,
        /// Repeatable (`unique_id=a&unique_id=b`): tasks with any of them.
        #[param(nullable = false, style = Form, explode)]
        unique_id: Option<Vec<String>>,
        /// Repeatable (`tags=a&tags=b`): tasks having all of them.
        #[param(nullable = false, style = Form, explode)]
        tags: Option<Vec<String>>,
        /// 1 to 100.
        #[param(nullable = false, minimum = 1, maximum = 100, default = 100)]
        limit: Option<i64>,
        /// Add `attachment_url` (the task's `params.attachment`) to each doc.
        #[param(nullable = false, default = false)]
        include_attachment_url: Option<bool>,
        /// Docs hold only `task_id`, `status`, `metadata` and `project`.
        #[param(nullable = false, default = false)]
        limited_response: Option<bool>,
        /// The previous page's `next_token`.
        #[param(nullable = false)]
        next_token: Option<String>,
    }

    #[derive(IntoParams)]
    #[into_params(parameter_in = Query)]
    pub struct EventsParams {
        /// A global position: events strictly after it.
        #[param(nullable = false, minimum = 0, default = 0)]
        after: Option<i64>,
        /// 1 to 1000.
        #[param(nullable = false, minimum = 1, maximum = 1000, default = 100)]
        limit: Option<i64>,
    }
}

pub(super) use schemas::{
    Actor, AuditBody, CompleteBody, CreateTaskBody, ErrorTaskBody, EventEnvelope, EventsParams,
    ListParams, ProbeStatus, Task, TaskPage, TaskPath, UniqueIdBody,
};

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::header::ALLOW;
    use axum::http::{Method, Request, StatusCode};
    use chrono::Utc;
    use serde_json::json;
    use taskledger_events::{AuditSource, Scope};
    use taskledger_projections::{AuditView, TaskStatus, TaskView};
    use tower::ServiceExt;

    use super::*;
    use crate::http::{routes, AppState, HttpSettings};
    use crate::ledger::Ledger;
    use crate::store::Store;

    fn doc_json() -> Value {
        serde_json::to_value(document()).unwrap()
    }

    /// `(method, path)` of every documented operation.
    fn documented(doc: &Value) -> BTreeSet<(String, String)> {
        doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .unwrap()
                    .keys()
                    .filter(|k| *k != "parameters" && *k != "summary" && *k != "description")
                    .map(move |method| (method.clone(), path.clone()))
            })
            .collect()
    }

    async fn app_state(dir: &tempfile::TempDir) -> AppState {
        let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
        let store = Store::open(&url, 2).await.unwrap();
        AppState::new(
            Ledger::start(
                store,
                crate::ledger::LedgerSettings::with_max_batch(1),
                crate::metrics::Metrics::new(),
            ),
            HttpSettings {
                max_body_bytes: 1024,
                idempotency_ttl: Duration::from_secs(60),
            },
        )
    }

    /// The routes are read off the real router: its path templates from `routes()`, and each
    /// path's methods from the `Allow` header of a 405 to a method nobody routes. A route added
    /// without documentation, or documentation of a route that is not served, fails here.
    #[tokio::test]
    async fn every_routed_method_and_path_is_documented_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let state = app_state(&dir).await;
        let paths = routes(&state).paths();
        let app = crate::http::router(state);
        let mut routed = BTreeSet::new();
        for path in paths {
            let uri = path
                .split('/')
                .map(|segment| {
                    if segment.starts_with('{') {
                        "0123456789abcdef01234567"
                    } else {
                        segment
                    }
                })
                .collect::<Vec<_>>()
                .join("/");
            let probe = Request::builder()
                .method(Method::from_bytes(b"PROBE").unwrap())
                .uri(uri)
                .body(Body::empty())
                .unwrap();
            let response = app.clone().oneshot(probe).await.unwrap();
            assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
            let allow = response.headers()[ALLOW].to_str().unwrap().to_string();
            for method in allow.split(',').map(str::trim) {
                // axum answers HEAD wherever it answers GET; HEAD is not part of the API.
                if method != "HEAD" {
                    routed.insert((method.to_ascii_lowercase(), path.to_string()));
                }
            }
        }
        let documented = documented(&doc_json());
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(
            undocumented.is_empty(),
            "routed but not documented: {undocumented:?}"
        );
        assert!(
            unrouted.is_empty(),
            "documented but not routed: {unrouted:?}"
        );
        // Sanity: the probe found the API, not an empty router.
        assert!(routed.contains(&("put".to_string(), "/v1/task/{id}/tags".to_string())));
        assert!(routed.contains(&("get".to_string(), "/healthz".to_string())));
    }

    #[test]
    fn every_api_operation_has_auth_errors_and_mutations_take_an_idempotency_key() {
        let doc = doc_json();
        for (method, path) in documented(&doc) {
            let op = &doc["paths"][&path][&method];
            let param = |name: &str| {
                op["parameters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["name"] == name && p["in"] == "header")
            };
            assert!(op["responses"]["200"].is_object(), "{method} {path}");
            assert!(param("x-request-id"), "{method} {path}");
            if !path.starts_with("/v1/") {
                assert!(op.get("security").is_none(), "{method} {path}");
                continue;
            }
            assert_eq!(
                op["security"],
                json!([{"basic": []}, {"bearer": []}]),
                "{method} {path}"
            );
            for status in ["401", "500", "503"] {
                assert!(
                    op["responses"][status].is_object(),
                    "{status} {method} {path}"
                );
            }
            let mutating = method != "get";
            assert_eq!(param("Idempotency-Key"), mutating, "{method} {path}");
            if mutating {
                for status in ["400", "403", "413", "429"] {
                    assert!(
                        op["responses"][status].is_object(),
                        "{status} {method} {path}"
                    );
                }
            }
        }
        for name in [
            "BadRequest",
            "Unauthorized",
            "Forbidden",
            "NotFound",
            "Conflict",
            "PayloadTooLarge",
            "TooManyRequests",
            "ServiceUnavailable",
        ] {
            assert_eq!(
                doc["components"]["responses"][name]["content"]["application/json"]["schema"]
                    ["$ref"],
                "#/components/schemas/Error",
                "{name}"
            );
        }
        assert_eq!(
            doc["components"]["schemas"]["Error"]["required"],
            json!(["status_code", "error"])
        );
        for scheme in ["basic", "bearer"] {
            assert_eq!(
                doc["components"]["securitySchemes"][scheme]["scheme"],
                scheme
            );
        }
    }

    #[test]
    fn routes_the_contract_keeps_free_of_409_do_not_document_one() {
        let doc = doc_json();
        for (method, path) in [
            ("put", "/v1/task/{id}/tags"),
            ("post", "/v1/task/{id}/tags"),
            ("delete", "/v1/task/{id}/tags"),
            ("post", "/v1/task/{id}/cancel"),
            ("delete", "/v1/task/{id}/unique_id"),
        ] {
            assert!(doc["paths"][path][method]["responses"].get("409").is_none());
        }
        for (method, path) in [
            ("post", "/v1/task/{id}"),
            ("post", "/v1/task/{id}/unique_id"),
        ] {
            assert!(doc["paths"][path][method]["responses"]["409"].is_object());
        }
        let create = &doc["paths"]["/v1/task/{id}"]["post"];
        assert!(create["responses"].get("404").is_none());
        assert_eq!(
            create["parameters"][0]["schema"]["enum"],
            json!(TASK_TYPES),
            "the create route's path segment is the task type"
        );
    }

    #[test]
    fn list_parameters_are_all_documented() {
        let doc = doc_json();
        let names: BTreeSet<String> = doc["paths"]["/v1/tasks"]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["in"] == "query")
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect();
        let expected: BTreeSet<String> = [
            "start_time",
            "end_time",
            "completed_after",
            "completed_before",
            "updated_after",
            "updated_before",
            "status",
            "type",
            "project",
            "batch",
            "customer_review_status",
            "unique_id",
            "tags",
            "limit",
            "include_attachment_url",
            "limited_response",
            "next_token",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        assert_eq!(names, expected);
    }

    /// Whether a property schema explicitly admits `null`.
    fn admits_null(schema: &Value) -> bool {
        match &schema["type"] {
            Value::String(t) => t == "null",
            Value::Array(types) => types.iter().any(|t| t == "null"),
            _ => ["oneOf", "anyOf"].iter().any(|k| {
                schema[*k]
                    .as_array()
                    .is_some_and(|alternatives| alternatives.iter().any(admits_null))
            }),
        }
    }

    /// Holds a mirror schema to what its original serializes: `full` has every optional key,
    /// `minimal` none. Properties must be exactly `full`'s keys, required ones exactly
    /// `minimal`'s; a key serialized as null must admit null, an optional one must not (it is
    /// absent instead).
    fn assert_mirrors(doc: &Value, schema: &str, full: Value, minimal: Value) {
        let schema_json = &doc["components"]["schemas"][schema];
        let keys =
            |v: &Value| -> BTreeSet<String> { v.as_object().unwrap().keys().cloned().collect() };
        let properties = keys(&schema_json["properties"]);
        let required: BTreeSet<String> = schema_json["required"]
            .as_array()
            .map(|r| r.iter().map(|k| k.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        assert_eq!(properties, keys(&full), "{schema}: properties");
        assert_eq!(required, keys(&minimal), "{schema}: required");
        for (key, property) in schema_json["properties"].as_object().unwrap() {
            let nullable_on_wire = minimal.get(key).is_some_and(Value::is_null)
                || full.get(key).is_some_and(Value::is_null);
            assert_eq!(
                admits_null(property),
                nullable_on_wire,
                "{schema}.{key}: nullable"
            );
        }
    }

    fn audit(full: bool) -> AuditView {
        AuditView {
            audited_by: "key_1".into(),
            audited_at: Utc::now(),
            audit_time_secs: full.then_some(30),
            audit_result: "accepted".into(),
            audit_source: AuditSource::Customer,
            comments: full.then(|| "fine".to_string()),
        }
    }

    fn task(full: bool) -> TaskView {
        let some = |s: &str| full.then(|| s.to_string());
        TaskView {
            task_id: "0123456789abcdef01234567".into(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
            completed_at: full.then(Utc::now),
            task_type: "categorization".into(),
            status: TaskStatus::Completed,
            instruction: some("is it a car?"),
            callback_url: some("https://example.com/cb"),
            project: some("p"),
            batch: some("b"),
            params: json!({"attachment": "car"}),
            response: full.then(|| json!({"category": "car"})),
            callback_completed: false,
            metadata: json!({}),
            audits: if full { vec![audit(true)] } else { vec![] },
            customer_review_status: some("accepted"),
            tags: if full { vec!["t".into()] } else { vec![] },
            unique_id: some("u"),
        }
    }

    #[test]
    fn the_task_mirror_lists_exactly_what_a_task_view_serializes() {
        let doc = doc_json();
        let json = |v: &TaskView| serde_json::to_value(v).unwrap();
        assert_mirrors(&doc, "Task", json(&task(true)), json(&task(false)));
        let audit_json = |a: &AuditView| serde_json::to_value(a).unwrap();
        assert_mirrors(
            &doc,
            "Audit",
            audit_json(&audit(true)),
            audit_json(&audit(false)),
        );
        let full = task(true);
        let limited = full.limited();
        let mut without_project = full.clone();
        without_project.project = None;
        assert_mirrors(&doc, "LimitedTask", limited, without_project.limited());
    }

    #[test]
    fn the_event_mirrors_list_exactly_what_an_envelope_serializes() {
        let envelope = |full: bool| taskledger_events::EventEnvelope {
            event_id: uuid::Uuid::now_v7(),
            event_type: "TaskCanceled".into(),
            event_version: 1,
            task_id: "0123456789abcdef01234567".into(),
            account_id: "acct".into(),
            sequence: 2,
            global_position: 9,
            recorded_at: Utc::now(),
            actor: taskledger_events::Actor {
                account_id: "acct".into(),
                key_id: full.then(|| "key_1".to_string()),
                scope: if full { Scope::Customer } else { Scope::System },
            },
            request_id: full.then(|| "req-1".to_string()),
            payload: json!({}),
            prev_hash: "0".repeat(64),
            hash: "f".repeat(64),
        };
        let doc = doc_json();
        let json = |full: bool| serde_json::to_value(envelope(full)).unwrap();
        assert_mirrors(&doc, "EventEnvelope", json(true), json(false));
        assert_mirrors(
            &doc,
            "Actor",
            json(true)["actor"].clone(),
            json(false)["actor"].clone(),
        );
        let history = |full: bool| {
            serde_json::to_value(crate::http::tasks::HistoryEntryOut::from(envelope(full))).unwrap()
        };
        assert_mirrors(&doc, "HistoryEntry", history(true), history(false));
    }

    #[test]
    fn the_document_is_valid_json_with_an_api_version() {
        let doc = doc_json();
        if let Ok(path) = std::env::var("TASKLEDGER_DUMP_OPENAPI") {
            std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
        }
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    }
}
