//! The bodies and queries of `/v1/task/...`: what each route accepts, parsed once into the
//! domain's value types (see `crate::domain::values`), and documented from the same structs.

use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::extract::{field_message, Flag, LenientBody, Time};
use super::ApiError;
use crate::domain::{
    AuditResult, CallbackUrl, CreateTask, Identifier, Json as JsonValue, Metadata, Params, Tags,
    TaskType, Text, UniqueId,
};

/// The path of a task's routes.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // Documentation only: the handlers read the segment as a String.
pub(super) struct TaskPath {
    /// The task id: 24 lowercase hex characters.
    id: String,
}

/// The body of `POST /v1/task/{type}`. Besides the common fields, the type's own fields
/// (categorization: `attachment`, `attachment_type`, non-empty `categories`;
/// imageannotation: `attachment`, `geometries`; others at least `attachment`) land in the
/// task's `params`: each within the JSON limits, all together at most 256 KiB serialized.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(expecting = "a JSON object")]
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
    #[schema(nullable = false)]
    instruction: Option<Text>,
    /// POSTed when the task completes or errors.
    #[schema(nullable = false)]
    callback_url: Option<CallbackUrl>,
    #[schema(nullable = false)]
    project: Option<Identifier>,
    #[schema(nullable = false)]
    batch: Option<Identifier>,
    /// Unique per account; a taken one is a 409 naming its task.
    #[schema(nullable = false)]
    pub(super) unique_id: Option<UniqueId>,
    /// Default `{}`.
    #[schema(nullable = false)]
    metadata: Option<Metadata>,
    /// Distinct tags, order kept; duplicates are dropped.
    #[schema(nullable = false)]
    tags: Option<Tags>,
    /// Release the unique_id if the task ends in error.
    #[schema(value_type = bool, default = false)]
    clear_unique_id_on_error: Option<Flag>,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    params: Map<String, Value>,
}

impl LenientBody for CreateTaskBody {
    const ROOT: &'static str = "body";
}

/// The body fields that are not params, and so never inherited from a project.
const NOT_INHERITED: [&str; 6] = [
    "project",
    "batch",
    "unique_id",
    "metadata",
    "tags",
    "clear_unique_id_on_error",
];

impl CreateTaskBody {
    pub(super) fn project(&self) -> Option<&str> {
        self.project.as_ref().map(|p| p.as_str())
    }

    pub(super) fn batch(&self) -> Option<&str> {
        self.batch.as_ref().map(|b| b.as_str())
    }

    /// Sets the project a task joins through its batch alone.
    pub(super) fn set_project(&mut self, project: Identifier) {
        self.project = Some(project);
    }

    /// Takes every field the task leaves out from its project's latest params: the task's
    /// own fields win.
    pub(super) fn inherit(&mut self, project_params: &Map<String, Value>) -> Result<(), ApiError> {
        let invalid = |field: &str, e: crate::domain::ValueError| {
            ApiError::bad_request(field_message(&format!("the project's {field}"), &e.0))
        };
        for (field, value) in project_params {
            match field.as_str() {
                "instruction" if self.instruction.is_none() => {
                    if let Some(s) = value.as_str() {
                        self.instruction =
                            Some(Text::parse(s).map_err(|e| invalid("instruction", e))?);
                    }
                }
                "callback_url" if self.callback_url.is_none() => {
                    if let Some(s) = value.as_str() {
                        self.callback_url =
                            Some(CallbackUrl::parse(s).map_err(|e| invalid("callback_url", e))?);
                    }
                }
                "instruction" | "callback_url" => {}
                other if NOT_INHERITED.contains(&other) => {}
                other => {
                    if !self.params.contains_key(other) {
                        self.params.insert(other.to_string(), value.clone());
                    }
                }
            }
        }
        Ok(())
    }

    pub(super) fn into_command(self, task_type: TaskType) -> Result<CreateTask, ApiError> {
        let params = Params::parse(self.params)
            .map_err(|(field, e)| ApiError::bad_request(field_message(&field, &e.0)))?;
        Ok(CreateTask {
            task_type,
            instruction: self.instruction,
            callback_url: self.callback_url,
            project: self.project,
            batch: self.batch,
            unique_id: self.unique_id,
            metadata: self.metadata,
            tags: self.tags.unwrap_or_default(),
            clear_unique_id_on_error: self.clear_unique_id_on_error.unwrap_or_default().0,
            project_param_version: None,
            params,
            // Decided by the ledger from the caller's key, never by the body.
            is_test: false,
        })
    }
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(expecting = "a JSON object")]
pub struct UniqueIdBody {
    #[schema(required = true, nullable = false)]
    pub(super) unique_id: Option<UniqueId>,
    /// Release the unique_id if the task ends in error; left as it is when absent.
    #[schema(value_type = bool, nullable = false)]
    pub(super) clear_unique_id_on_error: Option<Flag>,
}

impl LenientBody for UniqueIdBody {
    const ROOT: &'static str = "body";
}

impl LenientBody for Tags {
    const ROOT: &'static str = "tags";
}

impl LenientBody for Metadata {
    const ROOT: &'static str = "metadata";
    const KEYS_ARE_FIELDS: bool = false;
}

/// With a customer key: the customer's review.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(expecting = "a JSON object")]
pub struct CustomerAuditBody {
    /// Leave it out, and send `comments`, for a review that only comments.
    #[schema(value_type = bool, nullable = false)]
    pub(super) accepted: Option<Flag>,
    #[schema(nullable = false)]
    pub(super) comments: Option<Text>,
}

/// With a contributor key: the workforce's quality audit.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(expecting = "a JSON object")]
pub struct ContributorAuditBody {
    #[schema(required = true, nullable = false)]
    pub(super) audit_result: Option<AuditResult>,
    #[schema(nullable = false)]
    pub(super) audit_time_secs: Option<u64>,
    /// The corrected answer, with `audit_result: fixed`.
    #[schema(nullable = false)]
    pub(super) response: Option<JsonValue>,
}

/// A customer's review or a contributor's quality audit, by the key's scope.
#[derive(ToSchema)]
#[allow(dead_code)] // Documentation only: the handler picks the variant by the key's scope.
#[serde(untagged)]
pub enum AuditBody {
    Customer(CustomerAuditBody),
    Contributor(ContributorAuditBody),
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(expecting = "a JSON object")]
pub struct CompleteBody {
    /// The contributor's answer, a JSON object.
    #[schema(required = true, nullable = false)]
    pub(super) response: Option<JsonValue>,
}

impl LenientBody for CompleteBody {
    const ROOT: &'static str = "body";
}

/// The whole object becomes the task's `response`, within the JSON limits.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(expecting = "a JSON object")]
pub struct ErrorTaskBody {
    /// What went wrong: a non-empty string or an object.
    #[schema(value_type = Object, required = true)]
    pub(super) error: Option<Value>,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub(super) details: Map<String, Value>,
}

impl LenientBody for ErrorTaskBody {
    const ROOT: &'static str = "body";
}

/// `GET /v1/task/{id}`'s query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct RetrieveParams {
    /// The task as it stood at this time, rebuilt from its events (`2021-04-25`, RFC 3339
    /// with offset, or `YYYY-MM-DD HH:MM:SS` in UTC). 404 if it did not exist yet.
    #[param(value_type = Option<String>, nullable = false)]
    pub(super) as_of: Option<Time>,
}

/// `POST /v1/task/{id}/cancel`'s query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct CancelParams {
    /// Also release the task's unique_id (even if already canceled).
    #[param(value_type = Option<bool>, nullable = false)]
    pub(super) clear_unique_id: Option<Flag>,
}
