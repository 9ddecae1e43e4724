//! `/v1/batches`: a batch groups tasks of one project; `staging` while tasks join it,
//! `in_progress` once finalized, `completed` once finalized with every task finished. A
//! batch is an aggregate of the ledger (`BatchCreated`, `BatchMetadataSet`,
//! `BatchFinalized`, `BatchCompleted`), kept apart per mode like projects.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::extract::{AccountRead, Flag, LenientBody, LenientJson, Limit, QueryParams, Time};
use super::projects::{name, platform_actor};
use super::{ApiError, Routes};
use crate::domain::{BatchCommand, BatchCounts, BatchStatus, CallbackUrl};
use crate::store::{BatchQuery, BatchRecord};

/// The most batches one page holds.
const MAX_BATCH_PAGE: i64 = 100;

pub(super) fn router() -> Routes {
    Routes::new()
        .route("/v1/batches", post(create_batch).get(list_batches))
        .route("/v1/batches/{name}", get(get_batch))
        .route("/v1/batches/{name}/finalize", post(finalize_batch))
        .route("/v1/batches/{name}/status", get(batch_status))
        .route("/v1/batches/{name}/setMetadata", post(set_batch_metadata))
}

#[derive(OpenApi)]
#[openapi(
    paths(create_batch, list_batches, get_batch, finalize_batch, batch_status, set_batch_metadata),
    tags((name = "batches", description = "Batches of a project's tasks and their lifecycle."))
)]
pub(super) struct Docs;

pub(super) fn time(us: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(us)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `POST /v1/batches`, as the SDK's `create_batch` sends it.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct CreateBatchBody {
    project: Option<String>,
    name: Option<String>,
    /// A URL called (signed, retried) when the batch completes; empty for none.
    callback: Option<String>,
    #[schema(value_type = Object)]
    metadata: Option<Value>,
    #[schema(value_type = bool)]
    calibration_batch: Option<Flag>,
    #[schema(value_type = bool)]
    self_label_batch: Option<Flag>,
}

impl LenientBody for CreateBatchBody {
    const ROOT: &'static str = "body";
}

/// The body of `setMetadata`: the metadata object itself.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = Object)]
pub struct BatchMetadataBody(Option<Value>);

impl LenientBody for BatchMetadataBody {
    const ROOT: &'static str = "metadata";
    const KEYS_ARE_FIELDS: bool = false;
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchOut {
    name: String,
    project: String,
    /// `staging`, `in_progress` or `completed`.
    status: String,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(value_type = Object)]
    metadata: Value,
    callback: Option<String>,
    calibration_batch: bool,
    self_label_batch: bool,
    /// Created by a test-mode key.
    is_test: bool,
}

impl From<BatchRecord> for BatchOut {
    fn from(r: BatchRecord) -> BatchOut {
        BatchOut {
            name: r.name,
            project: r.project,
            status: r.status,
            created_at: time(r.created_at_us),
            metadata: serde_json::from_str(&r.metadata).unwrap_or_default(),
            callback: r.callback,
            calibration_batch: r.calibration_batch != 0,
            self_label_batch: r.self_label_batch != 0,
            is_test: r.is_test != 0,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchStatusOut {
    status: String,
    pending: u64,
    completed: u64,
    error: u64,
    canceled: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchPageOut {
    docs: Vec<BatchOut>,
    #[serde(rename = "totalDocs")]
    total_docs: i64,
    limit: i64,
    offset: i64,
    has_more: bool,
}

/// `GET /v1/batches` filters, as the SDK's `batches()` and `get_batches()` send them.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BatchListParams {
    project: Option<String>,
    /// `staging`, `in_progress` or `completed`.
    status: Option<String>,
    /// Created at or after.
    #[param(value_type = Option<String>)]
    start_time: Option<Time>,
    /// Created at or before.
    #[param(value_type = Option<String>)]
    end_time: Option<Time>,
    /// Accepted; no batch is archived here, so it filters nothing.
    #[param(value_type = Option<bool>)]
    #[allow(dead_code)]
    exclude_archived: Option<Flag>,
    /// 1 to 100 (default 100).
    #[param(value_type = Option<i64>)]
    limit: Option<Limit<MAX_BATCH_PAGE>>,
    /// Batches to skip.
    #[param(value_type = Option<i64>)]
    offset: Option<String>,
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "Batch not found.")
}

#[utoipa::path(
    post,
    path = "/v1/batches",
    tag = "batches",
    request_body = CreateBatchBody,
    description = "Creates a batch in `staging` in an existing project of the caller's mode \
                   (`BatchCreated`). A second batch of the same name is 409.",
    responses(
        (status = 200, description = "The new batch.", body = BatchOut),
        (status = 400, description = "A missing name, or no such project.", body = super::error::ErrorBody),
        (status = 409, description = "The name is taken.", body = super::error::ErrorBody)
    )
)]
async fn create_batch(
    read: AccountRead,
    LenientJson(body): LenientJson<CreateBatchBody>,
) -> Result<Json<BatchOut>, ApiError> {
    let who = platform_actor(&read)?;
    let project = name(
        "project",
        body.project
            .ok_or_else(|| ApiError::bad_request("project is required"))?,
    )?;
    let batch = name(
        "name",
        body.name
            .ok_or_else(|| ApiError::bad_request("name is required"))?,
    )?;
    let callback = match body.callback.filter(|c| !c.is_empty()) {
        Some(c) => Some(
            CallbackUrl::parse(c)
                .map_err(|e| {
                    ApiError::bad_request(super::extract::field_message("callback", &e.0))
                })?
                .into_string(),
        ),
        None => None,
    };
    let metadata = match body.metadata {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(m) => m,
    };
    let key = batch.as_str().to_string();
    let row = read
        .state
        .ledger
        .store()
        .batch_command(
            &who,
            &key,
            BatchCommand::Create {
                name: batch,
                project,
                callback,
                metadata,
                calibration_batch: body.calibration_batch.unwrap_or_default().0,
                self_label_batch: body.self_label_batch.unwrap_or_default().0,
                is_test: who.is_test,
                created_by_task: None,
            },
        )
        .await?;
    Ok(Json(row.into()))
}

#[utoipa::path(
    get,
    path = "/v1/batches",
    tag = "batches",
    params(BatchListParams),
    description = "The caller's batches in its mode, oldest first, a page at a time.",
    responses((status = 200, description = "One page.", body = BatchPageOut))
)]
async fn list_batches(
    read: AccountRead,
    QueryParams(params): QueryParams<BatchListParams>,
) -> Result<Json<BatchPageOut>, ApiError> {
    let who = platform_actor(&read)?;
    if let Some(status) = &params.status {
        if BatchStatus::parse(status).is_none() {
            return Err(ApiError::bad_request(format!(
                "status must be staging, in_progress or completed; got {:?}",
                status.chars().take(64).collect::<String>()
            )));
        }
    }
    let offset = match &params.offset {
        None => 0,
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| ApiError::bad_request("offset must be an integer >= 0"))?,
    };
    let limit = params.limit.map_or(MAX_BATCH_PAGE, |l| l.0);
    let query = BatchQuery {
        project: params.project,
        status: params.status,
        start_us: params.start_time.map(|t| t.0.timestamp_micros()),
        end_us: params.end_time.map(|t| t.0.timestamp_micros()),
        limit,
        offset,
    };
    let (rows, total) = read
        .state
        .ledger
        .store()
        .batches(who.account(), who.is_test, &query)
        .await?;
    let has_more = offset + (rows.len() as i64) < total;
    Ok(Json(BatchPageOut {
        docs: rows.into_iter().map(BatchOut::from).collect(),
        total_docs: total,
        limit,
        offset,
        has_more,
    }))
}

#[utoipa::path(
    get,
    path = "/v1/batches/{name}",
    tag = "batches",
    params(("name" = String, Path, description = "The batch's name.")),
    responses(
        (status = 200, description = "The batch.", body = BatchOut),
        (status = 404, description = "No such batch in the caller's mode.", body = super::error::ErrorBody)
    )
)]
async fn get_batch(
    read: AccountRead,
    Path(batch): Path<String>,
) -> Result<Json<BatchOut>, ApiError> {
    let who = platform_actor(&read)?;
    read.state
        .ledger
        .store()
        .batch(who.account(), who.is_test, &batch)
        .await?
        .map(|r| Json(r.into()))
        .ok_or_else(not_found)
}

#[utoipa::path(
    post,
    path = "/v1/batches/{name}/finalize",
    tag = "batches",
    params(("name" = String, Path, description = "The batch's name.")),
    description = "Moves a staging batch to `in_progress` (`BatchFinalized`); if every task \
                   is already finished it completes in the same transaction \
                   (`BatchCompleted`). Finalizing again changes nothing.",
    responses(
        (status = 200, description = "The batch.", body = BatchOut),
        (status = 404, description = "No such batch in the caller's mode.", body = super::error::ErrorBody)
    )
)]
async fn finalize_batch(
    read: AccountRead,
    Path(batch): Path<String>,
) -> Result<Json<BatchOut>, ApiError> {
    let who = platform_actor(&read)?;
    let row = read
        .state
        .ledger
        .store()
        .batch_command(
            &who,
            &batch,
            BatchCommand::Finalize {
                counts: BatchCounts::default(),
            },
        )
        .await?;
    Ok(Json(row.into()))
}

#[utoipa::path(
    get,
    path = "/v1/batches/{name}/status",
    tag = "batches",
    params(("name" = String, Path, description = "The batch's name.")),
    description = "The batch's status and its tasks per status, read from the counts \
                   projection (four rows, whatever the batch's size).",
    responses(
        (status = 200, description = "The counts.", body = BatchStatusOut),
        (status = 404, description = "No such batch in the caller's mode.", body = super::error::ErrorBody)
    )
)]
async fn batch_status(
    read: AccountRead,
    Path(batch): Path<String>,
) -> Result<Json<BatchStatusOut>, ApiError> {
    let who = platform_actor(&read)?;
    let store = read.state.ledger.store();
    let row = store
        .batch(who.account(), who.is_test, &batch)
        .await?
        .ok_or_else(not_found)?;
    let counts = store.batch_counts(who.account(), &batch).await?;
    Ok(Json(BatchStatusOut {
        status: row.status,
        pending: counts.pending,
        completed: counts.completed,
        error: counts.error,
        canceled: counts.canceled,
    }))
}

#[utoipa::path(
    post,
    path = "/v1/batches/{name}/setMetadata",
    tag = "batches",
    params(("name" = String, Path, description = "The batch's name.")),
    request_body = BatchMetadataBody,
    description = "Replaces the batch's metadata (`BatchMetadataSet`).",
    responses(
        (status = 200, description = "The batch.", body = BatchOut),
        (status = 404, description = "No such batch in the caller's mode.", body = super::error::ErrorBody)
    )
)]
async fn set_batch_metadata(
    read: AccountRead,
    Path(batch): Path<String>,
    LenientJson(BatchMetadataBody(metadata)): LenientJson<BatchMetadataBody>,
) -> Result<Json<BatchOut>, ApiError> {
    let who = platform_actor(&read)?;
    let metadata = metadata.unwrap_or_else(|| Value::Object(Default::default()));
    let row = read
        .state
        .ledger
        .store()
        .batch_command(&who, &batch, BatchCommand::SetMetadata { metadata })
        .await?;
    Ok(Json(row.into()))
}
