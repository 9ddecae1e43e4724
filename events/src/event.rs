use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A fact about one task. Names are past tense and stable; see the crate docs on versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "event_type", content = "payload")]
pub enum TaskEvent {
    TaskCreated(TaskCreated),
    TaskCanceled(TaskCanceled),
    TaskMetadataSet(TaskMetadataSet),
    TaskUniqueIdSet(TaskUniqueIdSet),
    TaskUniqueIdCleared(TaskUniqueIdCleared),
    TaskTagsAdded(TaskTagsAdded),
    TaskTagsReplaced(TaskTagsReplaced),
    TaskTagsRemoved(TaskTagsRemoved),
    TaskCompleted(TaskCompleted),
    TaskErrored(TaskErrored),
    TaskAudited(TaskAudited),
    CallbackDelivered(CallbackDelivered),
    CallbackFailed(CallbackFailed),
}

/// A task was created. `params` holds the type-specific creation fields exactly as given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TaskCreated {
    pub task_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instruction: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<String>,
    pub params: Value,
    pub metadata: Value,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique_id: Option<String>,
    #[serde(default)]
    pub clear_unique_id_on_error: bool,
    /// The version of its project's params the task inherited from; absent when it has no
    /// project or the project had no params.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_param_version: Option<u32>,
    /// Test data, created with a test-mode key. Absent for a live task, so every live
    /// task's payload (and hash) is what it was before test mode existed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_test: bool,
}

/// A pending task was canceled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TaskCanceled {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TaskMetadataSet {
    pub metadata: Value,
}

/// The task's unique_id was set; `previous` (if any) was released by the same fact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TaskUniqueIdSet {
    pub unique_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// The task's `clear_unique_id_on_error` from here on, when the request set it. Absent
    /// when it did not (and in every event written before it could), leaving it as it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_unique_id_on_error: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum UniqueIdClearReason {
    /// `DELETE /v1/task/{id}/unique_id`.
    Requested,
    /// `cancel?clear_unique_id=true`.
    Canceled,
    /// The task errored and was created with `clear_unique_id_on_error`.
    Errored,
}

/// The task's unique_id was released and may be used by another task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TaskUniqueIdCleared {
    pub unique_id: String,
    pub reason: UniqueIdClearReason,
}

/// Tags that were not present were appended, in order. Only the new ones are listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TaskTagsAdded {
    pub tags: Vec<String>,
}

/// The whole tag list was replaced (already de-duplicated, order kept).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TaskTagsReplaced {
    pub tags: Vec<String>,
}

/// Tags that were present were removed. Only those actually removed are listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TaskTagsRemoved {
    pub tags: Vec<String>,
}

/// A contributor completed the task with this response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TaskCompleted {
    pub response: Value,
}

/// A contributor reported that the task cannot be done; `error` is what they reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TaskErrored {
    pub error: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AuditSource {
    /// The customer reviewed the work.
    Customer,
    /// The workforce's own quality review.
    Refonte,
}

/// A completed task was audited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TaskAudited {
    pub audited_by: String,
    pub audit_source: AuditSource,
    /// `accepted`, `rejected` or (workforce only) `fixed`.
    pub audit_result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_time_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comments: Option<String>,
    /// The corrected response, for a `fixed` audit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<Value>,
}

/// A callback for the event at `for_sequence` was answered with a 2xx.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CallbackDelivered {
    pub delivery_id: String,
    pub for_sequence: i64,
    pub attempts: u32,
    pub status_code: u16,
}

/// A callback was given up after its last attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CallbackFailed {
    pub delivery_id: String,
    pub for_sequence: i64,
    pub attempts: u32,
    pub last_error: String,
}

/// A stored event could not be turned back into a [`TaskEvent`].
#[derive(Debug, Clone, PartialEq)]
pub enum DecodeError {
    UnknownType(String),
    UnsupportedVersion { event_type: String, version: u32 },
    Payload { event_type: String, message: String },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::UnknownType(t) => write!(f, "unknown event type {t:?}"),
            DecodeError::UnsupportedVersion {
                event_type,
                version,
            } => write!(f, "{event_type} has no known version {version}"),
            DecodeError::Payload {
                event_type,
                message,
            } => write!(f, "{event_type} payload does not decode: {message}"),
        }
    }
}

impl std::error::Error for DecodeError {}

impl DecodeError {
    pub(crate) fn payload(event_type: &str, error: serde_json::Error) -> DecodeError {
        DecodeError::Payload {
            event_type: event_type.to_string(),
            message: error.to_string(),
        }
    }
}

impl TaskEvent {
    /// Every event type this crate knows, with the version it writes today.
    pub const CURRENT_VERSIONS: &'static [(&'static str, u32)] = &[
        ("TaskCreated", 1),
        ("TaskCanceled", 1),
        ("TaskMetadataSet", 1),
        ("TaskUniqueIdSet", 1),
        ("TaskUniqueIdCleared", 1),
        ("TaskTagsAdded", 1),
        ("TaskTagsReplaced", 1),
        ("TaskTagsRemoved", 1),
        ("TaskCompleted", 1),
        ("TaskErrored", 1),
        ("TaskAudited", 1),
        ("CallbackDelivered", 1),
        ("CallbackFailed", 1),
    ];

    pub fn event_type(&self) -> &'static str {
        match self {
            TaskEvent::TaskCreated(_) => "TaskCreated",
            TaskEvent::TaskCanceled(_) => "TaskCanceled",
            TaskEvent::TaskMetadataSet(_) => "TaskMetadataSet",
            TaskEvent::TaskUniqueIdSet(_) => "TaskUniqueIdSet",
            TaskEvent::TaskUniqueIdCleared(_) => "TaskUniqueIdCleared",
            TaskEvent::TaskTagsAdded(_) => "TaskTagsAdded",
            TaskEvent::TaskTagsReplaced(_) => "TaskTagsReplaced",
            TaskEvent::TaskTagsRemoved(_) => "TaskTagsRemoved",
            TaskEvent::TaskCompleted(_) => "TaskCompleted",
            TaskEvent::TaskErrored(_) => "TaskErrored",
            TaskEvent::TaskAudited(_) => "TaskAudited",
            TaskEvent::CallbackDelivered(_) => "CallbackDelivered",
            TaskEvent::CallbackFailed(_) => "CallbackFailed",
        }
    }

    /// The version this build writes for this event's type.
    pub fn event_version(&self) -> u32 {
        let ty = self.event_type();
        Self::CURRENT_VERSIONS
            .iter()
            .find(|(name, _)| *name == ty)
            .map(|(_, v)| *v)
            .unwrap_or(1)
    }

    /// The payload alone, as stored and published (the envelope carries type and version).
    pub fn payload(&self) -> Value {
        match serde_json::to_value(self) {
            Ok(Value::Object(mut map)) => map.remove("payload").unwrap_or(Value::Null),
            // Serializing plain structs of JSON values cannot fail or produce a non-object.
            _ => Value::Null,
        }
    }

    /// Decodes a stored or received payload, upcasting older versions to the current shape.
    pub fn decode(
        event_type: &str,
        version: u32,
        payload: Value,
    ) -> Result<TaskEvent, DecodeError> {
        let current = Self::current_version_of(event_type, version)?;
        let payload = upcast(event_type, version, current, payload);
        crate::tagged::from_value(event_type, payload)
    }

    /// [`TaskEvent::decode`] from the payload's text: a payload of the current version
    /// goes from text to event with no `Value` in between; an older one is parsed and
    /// upcast.
    pub fn decode_text(
        event_type: &str,
        version: u32,
        text: &str,
    ) -> Result<TaskEvent, DecodeError> {
        let current = Self::current_version_of(event_type, version)?;
        if version == current {
            return crate::tagged::from_text(event_type, text);
        }
        let payload =
            serde_json::from_str(text).map_err(|e| DecodeError::payload(event_type, e))?;
        Self::decode(event_type, version, payload)
    }

    /// [`TaskEvent::decode`] of a payload it only borrows: one of the current version is not
    /// copied first.
    pub(crate) fn decode_ref(
        event_type: &str,
        version: u32,
        payload: &Value,
    ) -> Result<TaskEvent, DecodeError> {
        let current = Self::current_version_of(event_type, version)?;
        if version == current {
            return crate::tagged::from_ref(event_type, payload);
        }
        Self::decode(event_type, version, payload.clone())
    }

    /// The version written today of `event_type`, if `version` is one this build reads.
    fn current_version_of(event_type: &str, version: u32) -> Result<u32, DecodeError> {
        let current = Self::CURRENT_VERSIONS
            .iter()
            .find(|(name, _)| *name == event_type)
            .map(|(_, v)| *v)
            .ok_or_else(|| DecodeError::UnknownType(event_type.to_string()))?;
        if version == 0 || version > current {
            return Err(DecodeError::UnsupportedVersion {
                event_type: event_type.to_string(),
                version,
            });
        }
        Ok(current)
    }
}

/// Brings a payload written at `from` up to the current version `to`.
///
/// Every event type is still at version 1, so nothing needs rewriting yet. A version 2 adds a
/// step here (`("TaskAudited", 1) => add the new field with its default`), applied one version
/// at a time, and never touches what is stored.
fn upcast(_event_type: &str, _from: u32, _to: u32, payload: Value) -> Value {
    payload
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_payload_round_trips_through_decode() {
        let event = TaskEvent::TaskAudited(TaskAudited {
            audited_by: "qa@example.com".into(),
            audit_source: AuditSource::Refonte,
            audit_result: "fixed".into(),
            audit_time_secs: Some(12),
            comments: None,
            response: Some(json!({"category": "big"})),
        });
        let decoded = TaskEvent::decode(event.event_type(), 1, event.payload()).unwrap();
        assert_eq!(decoded, event);
    }

    #[test]
    fn every_event_type_has_a_current_version() {
        let created = TaskEvent::TaskCanceled(TaskCanceled {});
        assert_eq!(created.event_version(), 1);
        assert_eq!(created.payload(), json!({}));
    }

    #[test]
    fn unknown_types_and_future_versions_are_refused() {
        assert_eq!(
            TaskEvent::decode("TaskExploded", 1, json!({})),
            Err(DecodeError::UnknownType("TaskExploded".into()))
        );
        assert!(matches!(
            TaskEvent::decode("TaskCanceled", 2, json!({})),
            Err(DecodeError::UnsupportedVersion { .. })
        ));
    }

    #[test]
    fn a_payload_missing_a_required_field_is_a_decode_error() {
        assert!(matches!(
            TaskEvent::decode("TaskCompleted", 1, json!({})),
            Err(DecodeError::Payload { .. })
        ));
    }
}
