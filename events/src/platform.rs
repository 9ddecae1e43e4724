//! Facts about an account's projects and batches. Like a key's, each project's and each
//! batch's events form a stream of their own beside the task streams: the envelope's
//! `task_id` is the stream id (`proj_...` or `batch_...`, never a task id), its `sequence`
//! counts that project's or batch's events, and its hash chain links them. They share the
//! account's global order, Merkle tree, feed and Kafka stream with every other event.
//!
//! Both carry `is_test` from their creation: test-mode data never mixes with live data, and a
//! consumer can drop test data by the creation event of its stream.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::DecodeError;

/// A fact about one project of an account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "event_type", content = "payload")]
pub enum ProjectEvent {
    ProjectCreated(ProjectCreated),
    ProjectParamsSet(ProjectParamsSet),
}

/// A project was created, explicitly (`POST /v1/projects`) or by the first task naming it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ProjectCreated {
    /// The project's name, unique in its account and mode.
    pub name: String,
    /// The task type of the project's tasks.
    pub task_type: String,
    /// The project's first params (its param version 1); absent when created without any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
    /// Created by a test-mode key.
    pub is_test: bool,
    /// The task whose creation created the project, when a task named a missing project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by_task: Option<String>,
}

/// A new version of the project's params; tasks created from now on inherit it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ProjectParamsSet {
    /// 1 for the first params, one more for each later set.
    pub version: u32,
    /// The params as given (`instruction`, `callback_url`, type params...).
    pub params: Value,
}

/// A fact about one batch of an account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "event_type", content = "payload")]
pub enum BatchEvent {
    BatchCreated(BatchCreated),
    BatchMetadataSet(BatchMetadataSet),
    BatchFinalized(BatchFinalized),
    BatchCompleted(BatchCompleted),
}

/// A batch was created in `staging`, explicitly (`POST /v1/batches`) or by the first task
/// naming it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct BatchCreated {
    pub name: String,
    /// The project the batch belongs to, for its whole life.
    pub project: String,
    /// A URL called when the batch completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<String>,
    pub metadata: Value,
    #[serde(default)]
    pub calibration_batch: bool,
    #[serde(default)]
    pub self_label_batch: bool,
    /// Created by a test-mode key.
    pub is_test: bool,
    /// The task whose creation created the batch, when a task named a missing batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by_task: Option<String>,
}

/// The batch's metadata was replaced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct BatchMetadataSet {
    pub metadata: Value,
}

/// The batch was finalized: it takes no more tasks and is `in_progress`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct BatchFinalized {}

/// Every task of the finalized batch is finished (completed, error or canceled).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct BatchCompleted {
    pub completed: u64,
    pub error: u64,
    pub canceled: u64,
}

/// Checks that `event_type` is one of `known` at version 1 (the only version of these
/// types).
fn check_v1(known: &[(&str, u32)], event_type: &str, version: u32) -> Result<(), DecodeError> {
    if !known.iter().any(|(t, _)| *t == event_type) {
        return Err(DecodeError::UnknownType(event_type.to_string()));
    }
    if version != 1 {
        return Err(DecodeError::UnsupportedVersion {
            event_type: event_type.to_string(),
            version,
        });
    }
    Ok(())
}

/// Decodes an adjacently tagged event of version 1.
pub(crate) fn decode_v1<E: serde::de::DeserializeOwned>(
    known: &[(&str, u32)],
    event_type: &str,
    version: u32,
    payload: Value,
) -> Result<E, DecodeError> {
    check_v1(known, event_type, version)?;
    crate::tagged::from_value(event_type, payload)
}

/// [`decode_v1`] from the payload's text.
pub(crate) fn decode_v1_text<E: serde::de::DeserializeOwned>(
    known: &[(&str, u32)],
    event_type: &str,
    version: u32,
    text: &str,
) -> Result<E, DecodeError> {
    check_v1(known, event_type, version)?;
    crate::tagged::from_text(event_type, text)
}

/// The payload alone of an adjacently tagged event.
fn payload_of<E: Serialize>(event: &E) -> Value {
    match serde_json::to_value(event) {
        Ok(Value::Object(mut map)) => map.remove("payload").unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

impl ProjectEvent {
    pub const CURRENT_VERSIONS: &'static [(&'static str, u32)] =
        &[("ProjectCreated", 1), ("ProjectParamsSet", 1)];

    pub fn is_project_event_type(event_type: &str) -> bool {
        Self::CURRENT_VERSIONS.iter().any(|(t, _)| *t == event_type)
    }

    pub fn event_type(&self) -> &'static str {
        match self {
            ProjectEvent::ProjectCreated(_) => "ProjectCreated",
            ProjectEvent::ProjectParamsSet(_) => "ProjectParamsSet",
        }
    }

    pub fn event_version(&self) -> u32 {
        1
    }

    pub fn payload(&self) -> Value {
        payload_of(self)
    }

    pub fn decode(
        event_type: &str,
        version: u32,
        payload: Value,
    ) -> Result<ProjectEvent, DecodeError> {
        decode_v1(Self::CURRENT_VERSIONS, event_type, version, payload)
    }

    /// [`ProjectEvent::decode`] from the payload's text, with no `Value` in between.
    pub fn decode_text(
        event_type: &str,
        version: u32,
        text: &str,
    ) -> Result<ProjectEvent, DecodeError> {
        decode_v1_text(Self::CURRENT_VERSIONS, event_type, version, text)
    }
}

impl BatchEvent {
    pub const CURRENT_VERSIONS: &'static [(&'static str, u32)] = &[
        ("BatchCreated", 1),
        ("BatchMetadataSet", 1),
        ("BatchFinalized", 1),
        ("BatchCompleted", 1),
    ];

    pub fn is_batch_event_type(event_type: &str) -> bool {
        Self::CURRENT_VERSIONS.iter().any(|(t, _)| *t == event_type)
    }

    pub fn event_type(&self) -> &'static str {
        match self {
            BatchEvent::BatchCreated(_) => "BatchCreated",
            BatchEvent::BatchMetadataSet(_) => "BatchMetadataSet",
            BatchEvent::BatchFinalized(_) => "BatchFinalized",
            BatchEvent::BatchCompleted(_) => "BatchCompleted",
        }
    }

    pub fn event_version(&self) -> u32 {
        1
    }

    pub fn payload(&self) -> Value {
        payload_of(self)
    }

    pub fn decode(
        event_type: &str,
        version: u32,
        payload: Value,
    ) -> Result<BatchEvent, DecodeError> {
        decode_v1(Self::CURRENT_VERSIONS, event_type, version, payload)
    }

    /// [`BatchEvent::decode`] from the payload's text, with no `Value` in between.
    pub fn decode_text(
        event_type: &str,
        version: u32,
        text: &str,
    ) -> Result<BatchEvent, DecodeError> {
        decode_v1_text(Self::CURRENT_VERSIONS, event_type, version, text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn project_and_batch_events_round_trip_through_decode() {
        let created = ProjectEvent::ProjectCreated(ProjectCreated {
            name: "kittens".into(),
            task_type: "categorization".into(),
            params: Some(json!({"instruction": "Label the kittens"})),
            is_test: false,
            created_by_task: None,
        });
        assert_eq!(
            ProjectEvent::decode("ProjectCreated", 1, created.payload()).unwrap(),
            created
        );
        let done = BatchEvent::BatchCompleted(BatchCompleted {
            completed: 3,
            error: 1,
            canceled: 0,
        });
        assert_eq!(
            BatchEvent::decode("BatchCompleted", 1, done.payload()).unwrap(),
            done
        );
        assert!(BatchEvent::decode("BatchFinalized", 2, json!({})).is_err());
        assert!(ProjectEvent::decode("BatchFinalized", 1, json!({})).is_err());
    }
}
