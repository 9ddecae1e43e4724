//! `/v1/projects`: a project names a task type and carries params its tasks inherit. A
//! project is an aggregate of the ledger (`ProjectCreated`, `ProjectParamsSet`), kept apart
//! per mode: a test key sees only test projects, a live key only live ones.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use taskledger_events::Scope;
use utoipa::{OpenApi, ToSchema};

use super::extract::{AccountRead, LenientBody, LenientJson};
use super::{ApiError, Routes};
use crate::domain::{Identifier, ProjectCommand, TaskType};
use crate::store::{PlatformActor, ProjectRecord};

pub(super) fn router() -> Routes {
    Routes::new()
        .route("/v1/projects", post(create_project).get(list_projects))
        .route("/v1/projects/{name}", get(get_project))
        .route("/v1/projects/{name}/setParams", post(set_project_params))
}

#[derive(OpenApi)]
#[openapi(
    paths(create_project, list_projects, get_project, set_project_params),
    tags((name = "projects", description = "Projects and the params their tasks inherit."))
)]
pub(super) struct Docs;

/// `POST /v1/projects`. `rapid`, `studio` and `dataset_id` are accepted and ignored.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct CreateProjectBody {
    #[serde(rename = "type")]
    #[schema(value_type = String)]
    task_type: Option<String>,
    name: Option<String>,
    /// The first params (`instruction`, `callback_url`, type params): version 1.
    #[schema(value_type = Object)]
    params: Option<Value>,
}

impl LenientBody for CreateProjectBody {
    const ROOT: &'static str = "body";
}

/// The body of `setParams`: the params themselves.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = Object)]
pub struct ProjectParamsBody(Map<String, Value>);

impl LenientBody for ProjectParamsBody {
    const ROOT: &'static str = "params";
    const KEYS_ARE_FIELDS: bool = false;
}

/// A project as the reference shows it; the SDK reads `param_history[-1]`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectOut {
    name: String,
    #[serde(rename = "type")]
    task_type: String,
    #[schema(format = DateTime)]
    created_at: String,
    /// Each params version, oldest first: `{version, created_at, instruction?, ...params}`.
    #[schema(value_type = Vec<Object>)]
    param_history: Value,
    /// Created by a test-mode key.
    is_test: bool,
}

impl From<ProjectRecord> for ProjectOut {
    fn from(r: ProjectRecord) -> ProjectOut {
        ProjectOut {
            name: r.name,
            task_type: r.task_type,
            created_at: super::batches::time(r.created_at_us),
            param_history: serde_json::from_str(&r.param_history)
                .unwrap_or_else(|_| Value::Array(vec![])),
            is_test: r.is_test != 0,
        }
    }
}

/// The caller as the actor of a project or batch command; customer keys only.
pub(super) fn platform_actor(read: &AccountRead) -> Result<PlatformActor, ApiError> {
    if read.caller.principal.scope != Scope::Customer {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Only a customer key may use projects and batches.",
        ));
    }
    let context = read.caller.context();
    Ok(PlatformActor {
        actor: context.actor,
        request_id: context.request_id,
        is_test: read.caller.is_test(),
    })
}

pub(super) fn name(field: &str, value: String) -> Result<Identifier, ApiError> {
    if value.trim().is_empty() {
        return Err(ApiError::bad_request(format!("{field} must not be empty")));
    }
    Identifier::parse(value)
        .map_err(|e| ApiError::bad_request(super::extract::field_message(field, &e.0)))
}

fn params_object(value: Option<Value>) -> Result<Option<Map<String, Value>>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(_) => Err(ApiError::bad_request("params must be a JSON object")),
    }
}

#[utoipa::path(
    post,
    path = "/v1/projects",
    tag = "projects",
    request_body = CreateProjectBody,
    description = "Creates a project in the caller's mode. A second project of the same name \
                   is 409. Recorded as `ProjectCreated`.",
    responses(
        (status = 200, description = "The new project.", body = ProjectOut),
        (status = 400, description = "A missing or unknown type, or a missing name.", body = super::error::ErrorBody),
        (status = 409, description = "The name is taken.", body = super::error::ErrorBody)
    )
)]
async fn create_project(
    read: AccountRead,
    LenientJson(body): LenientJson<CreateProjectBody>,
) -> Result<Json<ProjectOut>, ApiError> {
    let who = platform_actor(&read)?;
    let task_type = body
        .task_type
        .ok_or_else(|| ApiError::bad_request("type is required"))?;
    let task_type = TaskType::parse(&task_type).map_err(|e| ApiError::bad_request(e.0))?;
    let project = name(
        "name",
        body.name
            .ok_or_else(|| ApiError::bad_request("name is required"))?,
    )?;
    let params = params_object(body.params)?;
    let key = project.as_str().to_string();
    let row = read
        .state
        .ledger
        .store()
        .project_command(
            &who,
            &key,
            ProjectCommand::Create {
                name: project,
                task_type,
                params,
                is_test: who.is_test,
                created_by_task: None,
            },
        )
        .await?;
    Ok(Json(row.into()))
}

#[utoipa::path(
    get,
    path = "/v1/projects",
    tag = "projects",
    description = "The caller's projects in its mode, oldest first, as a JSON array.",
    responses((status = 200, description = "The projects.", body = Vec<ProjectOut>))
)]
async fn list_projects(read: AccountRead) -> Result<Json<Vec<ProjectOut>>, ApiError> {
    let who = platform_actor(&read)?;
    let rows = read
        .state
        .ledger
        .store()
        .projects(who.account(), who.is_test)
        .await?;
    Ok(Json(rows.into_iter().map(ProjectOut::from).collect()))
}

#[utoipa::path(
    get,
    path = "/v1/projects/{name}",
    tag = "projects",
    params(("name" = String, Path, description = "The project's name.")),
    responses(
        (status = 200, description = "The project.", body = ProjectOut),
        (status = 404, description = "No such project in the caller's mode.", body = super::error::ErrorBody)
    )
)]
async fn get_project(
    read: AccountRead,
    Path(project): Path<String>,
) -> Result<Json<ProjectOut>, ApiError> {
    let who = platform_actor(&read)?;
    read.state
        .ledger
        .store()
        .project(who.account(), who.is_test, &project)
        .await?
        .map(|r| Json(r.into()))
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "Project not found."))
}

#[utoipa::path(
    post,
    path = "/v1/projects/{name}/setParams",
    tag = "projects",
    params(("name" = String, Path, description = "The project's name.")),
    request_body = ProjectParamsBody,
    description = "Adds a params version (`ProjectParamsSet`); tasks created from now on \
                   inherit it for every field they leave out.",
    responses(
        (status = 200, description = "The project.", body = ProjectOut),
        (status = 404, description = "No such project in the caller's mode.", body = super::error::ErrorBody)
    )
)]
async fn set_project_params(
    read: AccountRead,
    Path(project): Path<String>,
    LenientJson(ProjectParamsBody(params)): LenientJson<ProjectParamsBody>,
) -> Result<Json<ProjectOut>, ApiError> {
    let who = platform_actor(&read)?;
    let row = read
        .state
        .ledger
        .store()
        .project_command(&who, &project, ProjectCommand::SetParams { params })
        .await?;
    Ok(Json(row.into()))
}
