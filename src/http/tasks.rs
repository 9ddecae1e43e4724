//! `/v1/task/...`: create, retrieve (with time travel), history, and every task command.

use axum::extract::{FromRequestParts, Path};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use taskledger_events::{Actor, EventEnvelope, Scope};
use taskledger_projections::TaskView as Task;
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::extract::{
    self, field_message, AccountRead, Caller, LenientBody, LenientJson, Limit, Position,
    QueryParams, Time,
};
use super::task_bodies::{
    AuditBody, CancelParams, CompleteBody, ContributorAuditBody, CreateTaskBody, CustomerAuditBody,
    ErrorTaskBody, RetrieveParams, UniqueIdBody,
};
use super::{ApiError, AppState, Routes};
use crate::domain::{
    Json as JsonValue, Metadata, Tags, TaskAction, TaskCommand, TaskError, TaskType,
};
use crate::ledger::LedgerError;
use crate::store::IdempotencyWrite;

/// The routes that change tasks; the idempotency layer is added around exactly these.
pub(super) fn command_router() -> Routes {
    Routes::new()
        .route("/v1/task/{id}", post(create_task))
        .route("/v1/task/{id}/cancel", post(cancel_task))
        .route("/v1/task/{id}/setMetadata", post(set_task_metadata))
        .route(
            "/v1/task/{id}/unique_id",
            post(set_task_unique_id).delete(clear_task_unique_id),
        )
        .route(
            "/v1/task/{id}/tags",
            post(set_task_tags)
                .put(add_task_tags)
                .delete(remove_task_tags),
        )
        .route("/v1/task/{id}/audit", post(audit_task))
        .route("/v1/task/{id}/complete", post(complete_task))
        .route("/v1/task/{id}/error", post(error_task))
}

pub(super) fn read_router() -> Routes {
    Routes::new()
        .route("/v1/task/{id}", get(retrieve_task))
        .route("/v1/task/{id}/history", get(task_history))
}

#[derive(OpenApi)]
#[openapi(paths(
    create_task,
    retrieve_task,
    task_history,
    cancel_task,
    set_task_metadata,
    set_task_unique_id,
    clear_task_unique_id,
    add_task_tags,
    set_task_tags,
    remove_task_tags,
    audit_task,
    complete_task,
    error_task
))]
pub(super) struct Docs;

/// A task object as stored: the exact bytes of the view.
pub fn task_json(body: String) -> Response {
    ([(CONTENT_TYPE, "application/json")], body).into_response()
}

/// What every task command takes from the request besides its body: the caller, the path
/// segment (a task id, or the task type on create) and the idempotency record to write with
/// the command, when the request carried a key.
struct CommandRequest {
    state: AppState,
    caller: Caller,
    segment: String,
    idem: Option<IdempotencyWrite>,
}

impl FromRequestParts<AppState> for CommandRequest {
    // A segment axum cannot decode keeps axum's own answer, as it had with `Path` alone.
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let caller = Caller::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let Path(segment) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(CommandRequest {
            state: state.clone(),
            caller,
            segment,
            idem: parts.extensions.get::<IdempotencyWrite>().cloned(),
        })
    }
}

impl CommandRequest {
    /// Runs `action` on the task the path names, as the caller.
    async fn run(self, action: TaskAction) -> Result<Response, ApiError> {
        let task_id = extract::task_id(&self.segment)?;
        let command = TaskCommand::new(self.caller.principal.scope, action);
        let ledger = &self.state.ledger;
        let first = ledger
            .execute(
                &self.caller.context(),
                &task_id,
                command.clone(),
                self.idem.clone(),
            )
            .await;
        // The account's contributor keys work on its test tasks as on its live ones (test
        // mode exercises the whole workflow): a task that is not in a live contributor's
        // ledger is looked for in the account's test ledger. Customers never cross modes.
        let committed = match first {
            Err(LedgerError::Rejected(TaskError::NotFound))
                if self.caller.principal.scope == Scope::Contributor && !self.caller.is_test() =>
            {
                let test = taskledger_events::ledger_of(self.caller.account_id(), true);
                ledger
                    .execute(&self.caller.context_in(test), &task_id, command, self.idem)
                    .await?
            }
            other => other?,
        };
        Ok(task_json(committed.view.to_json()))
    }
}

#[utoipa::path(
    post,
    path = "/v1/task/{id}",
    summary = "Create a task",
    description = "On this route the path segment is the task **type**, not a task id. \
                   The common fields are typed; every other field of the body lands in the \
                   task's `params`. A form-encoded body is read as an object of strings.",
    params((
        "id" = String,
        Path,
        description = "The task type."
    )),
    request_body(content = CreateTaskBody, content_type = "application/json"),
    responses((status = 200, description = "The new task.", body = Task))
)]
async fn create_task(
    request: CommandRequest,
    LenientJson(body): LenientJson<CreateTaskBody>,
) -> Result<Response, ApiError> {
    let task_type = TaskType::parse(&request.segment).map_err(|e| ApiError::bad_request(e.0))?;
    let mut body = body;
    let mut project_param_version = None;
    let mut placement = Vec::new();
    if body.project().is_some() || body.batch().is_some() {
        let who = crate::store::PlatformActor {
            actor: request.caller.context().actor,
            request_id: request.caller.request_id.clone(),
            is_test: request.caller.is_test(),
        };
        let placed = request
            .state
            .ledger
            .store()
            .place_task(&who, task_type, body.project(), body.batch())
            .await?;
        if body.project().is_none() {
            if let Some(project) = placed.project {
                body.set_project(
                    crate::domain::Identifier::parse(project)
                        .map_err(|e| ApiError::bad_request(e.0))?,
                );
            }
        }
        if let Some((version, params)) = &placed.params {
            body.inherit(params)?;
            project_param_version = Some(*version);
        }
        placement = placed.creates;
    }
    let mut create = body.into_command(task_type)?;
    create.project_param_version = project_param_version;
    let committed = request
        .state
        .ledger
        .create_placed(&request.caller.context(), create, request.idem, placement)
        .await?;
    Ok(task_json(committed.view.to_json()))
}

#[utoipa::path(
    get,
    path = "/v1/task/{id}",
    summary = "Retrieve a task",
    params(RetrieveParams)
)]
async fn retrieve_task(
    AccountRead { state, caller }: AccountRead,
    Path(id): Path<String>,
    QueryParams(query): QueryParams<RetrieveParams>,
) -> Result<Response, ApiError> {
    let task_id = extract::task_id(&id)?;
    let body = match query.as_of {
        Some(Time(t)) => state
            .ledger
            .task_as_of(&caller.ledger(), &task_id, t)
            .await?
            .map(|view| view.to_json()),
        None => state
            .ledger
            .store()
            .task_view(&caller.ledger(), task_id.as_str())
            .await?
            .map(|stored| stored.body),
    };
    body.map(task_json).ok_or_else(extract::not_found)
}

/// One entry of `GET /v1/task/{id}/history`.
#[derive(Serialize, ToSchema)]
#[schema(as = HistoryEntry)]
pub struct HistoryEntryOut {
    event_id: String,
    sequence: i64,
    global_position: i64,
    #[serde(rename = "type")]
    event_type: String,
    version: u32,
    /// RFC 3339 UTC with microseconds.
    #[schema(format = DateTime)]
    recorded_at: String,
    actor: Actor,
    #[schema(required = true)]
    request_id: Option<String>,
    /// The event's own fields; their shape depends on `type` and `version`.
    payload: Value,
    prev_hash: String,
    hash: String,
    /// Which hash input `hash` was computed over (1: the first release's, 2: current); a
    /// reader recomputing hashes needs it.
    hash_version: u32,
}

impl From<EventEnvelope> for HistoryEntryOut {
    fn from(e: EventEnvelope) -> Self {
        HistoryEntryOut {
            event_id: e.event_id.to_string(),
            sequence: e.sequence,
            global_position: e.global_position,
            event_type: e.event_type,
            version: e.event_version,
            recorded_at: e
                .recorded_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            actor: e.actor,
            request_id: e.request_id,
            payload: e.payload,
            prev_hash: e.prev_hash,
            hash: e.hash,
            hash_version: e.hash_version,
        }
    }
}

#[derive(Serialize, ToSchema)]
#[schema(as = TaskHistory)]
pub struct HistoryOut {
    task_id: String,
    events: Vec<HistoryEntryOut>,
    /// Pass as `after` to continue: the sequence of the last event of this page (the
    /// request's `after` when the page is empty).
    next_after: i64,
    /// Whether events follow this page.
    has_more: bool,
}

/// The most events one history page holds, and the page size when `limit` is not given: a
/// task's history can grow without bound, a page cannot.
const HISTORY_PAGE_MAX: i64 = 1000;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(default)]
struct HistoryParams {
    /// A sequence within the task: events strictly after it.
    #[param(value_type = Option<i64>, nullable = false, minimum = 0, default = 0)]
    after: Option<Position>,
    /// 1 to 1000.
    #[param(value_type = Option<i64>, nullable = false, minimum = 1, maximum = 1000, default = 1000)]
    limit: Option<Limit<HISTORY_PAGE_MAX>>,
}

#[utoipa::path(
    get,
    path = "/v1/task/{id}/history",
    summary = "A task's events, oldest first, a page at a time",
    description = "At most `limit` events (1000 when not given) after the sequence `after`; \
                   pass `next_after` back as `after` while `has_more` is true.",
    params(HistoryParams),
    responses((status = 200, description = "The task's events.", body = HistoryOut))
)]
async fn task_history(
    AccountRead { state, caller }: AccountRead,
    Path(id): Path<String>,
    QueryParams(query): QueryParams<HistoryParams>,
) -> Result<Json<HistoryOut>, ApiError> {
    let task_id = extract::task_id(&id)?;
    let after = query.after.unwrap_or_default().0;
    let limit = query.limit.map_or(HISTORY_PAGE_MAX, |Limit(n)| n);
    let store = state.ledger.store();
    let ledger = caller.ledger();
    let account_id = ledger.as_str();
    let mut events = store
        .task_events_page(account_id, task_id.as_str(), after, limit + 1)
        .await?;
    // Every task has a first event: none at all means no such task (of this account), while
    // an empty page past the end of a real history is just empty.
    let exists = !events.is_empty()
        || (after > 0
            && !store
                .task_events_page(account_id, task_id.as_str(), 0, 1)
                .await?
                .is_empty());
    if !exists {
        return Err(extract::not_found());
    }
    let has_more = events.len() as i64 > limit;
    events.truncate(limit as usize);
    let next_after = events.last().map_or(after, |e| e.sequence);
    Ok(Json(HistoryOut {
        task_id: task_id.to_string(),
        events: events.into_iter().map(HistoryEntryOut::from).collect(),
        next_after,
        has_more,
    }))
}

#[utoipa::path(
    post,
    path = "/v1/task/{id}/cancel",
    summary = "Cancel a pending task",
    description = "Pending: canceled. Already canceled: 200 without a new event. Completed or \
                   errored: 400. Never answers 409.",
    params(CancelParams)
)]
async fn cancel_task(
    request: CommandRequest,
    QueryParams(query): QueryParams<CancelParams>,
) -> Result<Response, ApiError> {
    let clear_unique_id = query.clear_unique_id.unwrap_or_default().0;
    request.run(TaskAction::Cancel { clear_unique_id }).await
}

#[utoipa::path(
    post,
    path = "/v1/task/{id}/setMetadata",
    summary = "Replace a task's metadata",
    description = "The same value again answers 200 without a new event.",
    request_body(
        content = Metadata,
        content_type = "application/json",
        description = "The new metadata object itself. No body is `{}`."
    ),
)]
async fn set_task_metadata(
    request: CommandRequest,
    LenientJson(metadata): LenientJson<Metadata>,
) -> Result<Response, ApiError> {
    request.run(TaskAction::SetMetadata { metadata }).await
}

#[utoipa::path(
    post,
    path = "/v1/task/{id}/unique_id",
    summary = "Set or replace a task's unique_id",
    description = "Releases the old one. A unique_id used by another task of the account is a \
                   409 naming that task.",
    request_body(content = UniqueIdBody, content_type = "application/json"),
)]
async fn set_task_unique_id(
    request: CommandRequest,
    LenientJson(body): LenientJson<UniqueIdBody>,
) -> Result<Response, ApiError> {
    let unique_id = required(body.unique_id, "unique_id")?;
    request
        .run(TaskAction::SetUniqueId {
            unique_id,
            clear_unique_id_on_error: body.clear_unique_id_on_error.map(|f| f.0),
        })
        .await
}

#[utoipa::path(
    delete,
    path = "/v1/task/{id}/unique_id",
    summary = "Clear a task's unique_id",
    description = "200 also when there was none. Never answers 409."
)]
async fn clear_task_unique_id(request: CommandRequest) -> Result<Response, ApiError> {
    request.run(TaskAction::ClearUniqueId).await
}

#[utoipa::path(
    put,
    path = "/v1/task/{id}/tags",
    summary = "Add tags",
    description = "Tags already present are ignored; order is kept. Never answers 409.",
    request_body(
        content = Tags,
        content_type = "application/json",
        description = "Tags to add. No body is `[]`."
    ),
)]
async fn add_task_tags(
    request: CommandRequest,
    LenientJson(tags): LenientJson<Tags>,
) -> Result<Response, ApiError> {
    request.run(TaskAction::AddTags { tags }).await
}

#[utoipa::path(
    post,
    path = "/v1/task/{id}/tags",
    summary = "Replace all tags",
    description = "Deduplicated, order kept. Never answers 409.",
    request_body(
        content = Tags,
        content_type = "application/json",
        description = "The task's new tags. No body is `[]`."
    ),
)]
async fn set_task_tags(
    request: CommandRequest,
    LenientJson(tags): LenientJson<Tags>,
) -> Result<Response, ApiError> {
    request.run(TaskAction::SetTags { tags }).await
}

#[utoipa::path(
    delete,
    path = "/v1/task/{id}/tags",
    summary = "Remove tags",
    description = "Absent tags are ignored. Never answers 409.",
    request_body(
        content = Tags,
        content_type = "application/json",
        description = "Tags to remove. No body is `[]`."
    ),
)]
async fn remove_task_tags(
    request: CommandRequest,
    LenientJson(tags): LenientJson<Tags>,
) -> Result<Response, ApiError> {
    request.run(TaskAction::RemoveTags { tags }).await
}

#[utoipa::path(
    post,
    path = "/v1/task/{id}/audit",
    summary = "Audit a completed task",
    description = "A customer key sends `accepted` (an audit with `audit_source: customer`; \
                   `customer_review_status` follows), or `comments` alone for a review that \
                   only comments (`audit_result` and `customer_review_status`: `commented`). \
                   A contributor key sends `audit_result` (`audit_source: refonte`). Not \
                   completed: 400.",
    request_body(content = AuditBody, content_type = "application/json"),
)]
async fn audit_task(
    request: CommandRequest,
    LenientJson(body): LenientJson<Value>,
) -> Result<Response, ApiError> {
    let principal = &request.caller.principal;
    let audited_by = principal.key_id.clone();
    // The same route takes two bodies; the key's scope says which one this is.
    let action = match principal.scope {
        taskledger_events::Scope::Contributor => {
            let body: ContributorAuditBody = audit_body(body)?;
            TaskAction::ContributorAudit {
                audited_by,
                audit_result: required(body.audit_result, "audit_result")?,
                audit_time_secs: body.audit_time_secs,
                response: body.response,
            }
        }
        _ => {
            let body: CustomerAuditBody = audit_body(body)?;
            TaskAction::CustomerAudit {
                audited_by,
                accepted: body.accepted.map(|a| a.0),
                comments: body.comments,
            }
        }
    };
    request.run(action).await
}

/// A body field the command cannot go without.
fn required<T>(value: Option<T>, field: &str) -> Result<T, ApiError> {
    value.ok_or_else(|| ApiError::bad_request(format!("{field} is required")))
}

/// The audit body of one scope; no body is `{}`.
fn audit_body<T: serde::de::DeserializeOwned + Default>(body: Value) -> Result<T, ApiError> {
    if body.is_null() {
        return Ok(T::default());
    }
    extract::from_value("body", body)
}

impl LenientBody for Value {
    const ROOT: &'static str = "body";
}

#[utoipa::path(
    post,
    path = "/v1/task/{id}/complete",
    summary = "Complete a pending task (contributor key)",
    request_body(content = CompleteBody, content_type = "application/json"),
)]
async fn complete_task(
    request: CommandRequest,
    LenientJson(body): LenientJson<CompleteBody>,
) -> Result<Response, ApiError> {
    let response = required(body.response, "response")?;
    request.run(TaskAction::Complete { response }).await
}

#[utoipa::path(
    post,
    path = "/v1/task/{id}/error",
    summary = "Put a pending task in error (contributor key)",
    description = "The whole body becomes the task's `response`. Clears the unique_id when the \
                   task was created with `clear_unique_id_on_error: true`.",
    request_body(content = ErrorTaskBody, content_type = "application/json"),
)]
async fn error_task(
    request: CommandRequest,
    LenientJson(body): LenientJson<ErrorTaskBody>,
) -> Result<Response, ApiError> {
    let error = required(body.error, "error")?;
    let mut whole = body.details;
    whole.insert("error".into(), error);
    let error = JsonValue::parse(Value::Object(whole))
        .map_err(|e| ApiError::bad_request(field_message("error", &e.0)))?;
    request.run(TaskAction::Error { error }).await
}
