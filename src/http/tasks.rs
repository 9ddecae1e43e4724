//! `/v1/task/...`: create, retrieve (with time travel), history, and every task command.

use axum::extract::{Path, RawQuery, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Serialize;
use serde_json::{Map, Value};
use taskledger_events::{Actor, EventEnvelope};

use super::extract::{
    self, opt_bool, opt_string, opt_string_array, parse_bool, parse_time, query_pairs, Body, Caller,
};
use super::{ApiError, AppState};
use crate::domain::{CreateTask, TaskAction, TaskCommand};
use crate::store::IdempotencyWrite;

/// The routes that change tasks; the idempotency layer is added around exactly these.
pub fn command_router() -> Router<AppState> {
    Router::new()
        .route("/v1/task/{id}", post(create))
        .route("/v1/task/{id}/cancel", post(cancel))
        .route("/v1/task/{id}/setMetadata", post(set_metadata))
        .route(
            "/v1/task/{id}/unique_id",
            post(set_unique_id).delete(clear_unique_id),
        )
        .route(
            "/v1/task/{id}/tags",
            post(set_tags).put(add_tags).delete(remove_tags),
        )
        .route("/v1/task/{id}/audit", post(audit))
        .route("/v1/task/{id}/complete", post(complete))
        .route("/v1/task/{id}/error", post(error))
}

pub fn read_router() -> Router<AppState> {
    Router::new()
        .route("/v1/task/{id}", get(retrieve))
        .route("/v1/task/{id}/history", get(history))
}

/// The idempotency record to write with the command, when the request carried a key.
type Idem = Option<Extension<IdempotencyWrite>>;

/// A task object as stored: the exact bytes of the view.
pub fn task_json(body: String) -> Response {
    ([(CONTENT_TYPE, "application/json")], body).into_response()
}

async fn run(
    state: &AppState,
    caller: &Caller,
    id: &str,
    action: TaskAction,
    idem: Idem,
) -> Result<Response, ApiError> {
    let task_id = extract::task_id(id)?;
    let command = TaskCommand::new(caller.principal.scope, action);
    let committed = state
        .ledger
        .execute(
            &caller.context(),
            &task_id,
            command,
            idem.map(|Extension(i)| i),
        )
        .await?;
    Ok(task_json(committed.view.to_json()))
}

/// Fields every task type shares; everything else in the body is the type's `params`.
const COMMON_FIELDS: &[&str] = &[
    "instruction",
    "callback_url",
    "project",
    "batch",
    "unique_id",
    "metadata",
    "tags",
    "clear_unique_id_on_error",
];

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(task_type): Path<String>,
    idem: Idem,
    body: Body,
) -> Result<Response, ApiError> {
    let mut map = body.object("the task's fields")?;
    let create = CreateTask {
        task_type,
        instruction: opt_string(&map, "instruction")?,
        callback_url: opt_string(&map, "callback_url")?,
        project: opt_string(&map, "project")?,
        batch: opt_string(&map, "batch")?,
        unique_id: opt_string(&map, "unique_id")?,
        metadata: match map.get("metadata") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.clone()),
        },
        tags: opt_string_array(&map, "tags")?,
        clear_unique_id_on_error: opt_bool(&map, "clear_unique_id_on_error")?.unwrap_or(false),
        params: {
            map.retain(|k, _| !COMMON_FIELDS.contains(&k.as_str()));
            std::mem::take(&mut map)
        },
    };
    let committed = state
        .ledger
        .create(&caller.context(), create, idem.map(|Extension(i)| i))
        .await?;
    Ok(task_json(committed.view.to_json()))
}

async fn retrieve(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let task_id = extract::task_id(&id)?;
    let as_of = query_pairs(query.as_deref())
        .into_iter()
        .find(|(k, _)| k == "as_of")
        .map(|(_, v)| parse_time("as_of", &v))
        .transpose()?;
    let body = match as_of {
        Some(t) => state
            .ledger
            .task_as_of(caller.account_id(), &task_id, t)
            .await?
            .map(|view| view.to_json()),
        None => state
            .ledger
            .store()
            .task_view(caller.account_id(), task_id.as_str())
            .await?
            .map(|stored| stored.body),
    };
    body.map(task_json).ok_or_else(extract::not_found)
}

/// One entry of `GET /v1/task/{id}/history`.
#[derive(Serialize)]
pub struct HistoryEntryOut {
    event_id: String,
    sequence: i64,
    global_position: i64,
    #[serde(rename = "type")]
    event_type: String,
    version: u32,
    recorded_at: String,
    actor: Actor,
    request_id: Option<String>,
    payload: Value,
    prev_hash: String,
    hash: String,
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
        }
    }
}

#[derive(Serialize)]
pub struct HistoryOut {
    task_id: String,
    events: Vec<HistoryEntryOut>,
}

async fn history(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<HistoryOut>, ApiError> {
    let task_id = extract::task_id(&id)?;
    let events = state
        .ledger
        .store()
        .task_events(caller.account_id(), task_id.as_str(), None)
        .await?;
    if events.is_empty() {
        return Err(extract::not_found());
    }
    Ok(Json(HistoryOut {
        task_id: task_id.to_string(),
        events: events.into_iter().map(HistoryEntryOut::from).collect(),
    }))
}

async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    idem: Idem,
) -> Result<Response, ApiError> {
    let clear_unique_id = match query_pairs(query.as_deref())
        .into_iter()
        .find(|(k, _)| k == "clear_unique_id")
    {
        Some((_, v)) => parse_bool("clear_unique_id", &v)?,
        None => false,
    };
    run(
        &state,
        &caller,
        &id,
        TaskAction::Cancel { clear_unique_id },
        idem,
    )
    .await
}

async fn set_metadata(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    idem: Idem,
    Body(metadata): Body,
) -> Result<Response, ApiError> {
    // No body is the empty object: the reference SDK sends `{}` that way.
    let metadata = if metadata.is_null() {
        Value::Object(Map::new())
    } else {
        metadata
    };
    run(
        &state,
        &caller,
        &id,
        TaskAction::SetMetadata { metadata },
        idem,
    )
    .await
}

async fn set_unique_id(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    idem: Idem,
    body: Body,
) -> Result<Response, ApiError> {
    let map = body.object("{\"unique_id\": \"...\"}")?;
    let unique_id = opt_string(&map, "unique_id")?
        .ok_or_else(|| ApiError::bad_request("unique_id is required"))?;
    run(
        &state,
        &caller,
        &id,
        TaskAction::SetUniqueId { unique_id },
        idem,
    )
    .await
}

async fn clear_unique_id(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    idem: Idem,
) -> Result<Response, ApiError> {
    run(&state, &caller, &id, TaskAction::ClearUniqueId, idem).await
}

async fn add_tags(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    idem: Idem,
    body: Body,
) -> Result<Response, ApiError> {
    let tags = body.string_array("tags")?;
    run(&state, &caller, &id, TaskAction::AddTags { tags }, idem).await
}

async fn set_tags(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    idem: Idem,
    body: Body,
) -> Result<Response, ApiError> {
    let tags = body.string_array("tags")?;
    run(&state, &caller, &id, TaskAction::SetTags { tags }, idem).await
}

async fn remove_tags(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    idem: Idem,
    body: Body,
) -> Result<Response, ApiError> {
    let tags = body.string_array("tags")?;
    run(&state, &caller, &id, TaskAction::RemoveTags { tags }, idem).await
}

async fn audit(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    idem: Idem,
    body: Body,
) -> Result<Response, ApiError> {
    let map = body.object("the audit")?;
    let audited_by = caller.principal.key_id.clone();
    let action = match caller.principal.scope {
        taskledger_events::Scope::Contributor => TaskAction::ContributorAudit {
            audited_by,
            audit_result: opt_string(&map, "audit_result")?
                .ok_or_else(|| ApiError::bad_request("audit_result is required"))?,
            audit_time_secs: opt_u64(&map, "audit_time_secs")?,
            response: match map.get("response") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.clone()),
            },
        },
        _ => TaskAction::CustomerAudit {
            audited_by,
            accepted: opt_bool(&map, "accepted")?
                .ok_or_else(|| ApiError::bad_request("accepted (true or false) is required"))?,
            comments: opt_string(&map, "comments")?,
        },
    };
    run(&state, &caller, &id, action, idem).await
}

fn opt_u64(map: &Map<String, Value>, field: &str) -> Result<Option<u64>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            ApiError::bad_request(format!("{field} must be a non-negative integer; got {v}"))
        }),
    }
}

async fn complete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    idem: Idem,
    body: Body,
) -> Result<Response, ApiError> {
    let map = body.object("{\"response\": {...}}")?;
    let response = map
        .get("response")
        .cloned()
        .ok_or_else(|| ApiError::bad_request("response is required"))?;
    run(
        &state,
        &caller,
        &id,
        TaskAction::Complete { response },
        idem,
    )
    .await
}

async fn error(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    idem: Idem,
    body: Body,
) -> Result<Response, ApiError> {
    let map = body.object("{\"error\": \"...\"}")?;
    if !map.contains_key("error") {
        return Err(ApiError::bad_request("error is required"));
    }
    run(
        &state,
        &caller,
        &id,
        TaskAction::Error {
            error: Value::Object(map),
        },
        idem,
    )
    .await
}
