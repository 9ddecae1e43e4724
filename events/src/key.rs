//! Facts about an account's API keys. They are recorded in the ledger beside the task events,
//! in the account's global order, so "who could act when" is provable like everything else.
//!
//! A key's events form a stream of their own: the envelope's `task_id` is the key's id
//! (`key_...`, never a task id), its `sequence` counts the key's events (1 created,
//! 2 revoked), and its hash chain links them like a task's. The actor is the operator who ran
//! `taskledger keys`: scope `system`, no key id. No event ever carries a key's secret.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{BatchEvent, DecodeError, ProjectEvent, TaskEvent};

/// A fact about one API key of an account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "event_type", content = "payload")]
pub enum KeyEvent {
    ApiKeyCreated(ApiKeyCreated),
    ApiKeyRevoked(ApiKeyRevoked),
}

/// An API key was issued to the account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ApiKeyCreated {
    pub key_id: String,
    /// Who holds the key, as the operator named them (`keys create --name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `customer` or `contributor`.
    pub scope: String,
    /// A test-mode key (`keys create --test`): what it creates is test data. Absent for a
    /// live key, so every live key's event reads and hashes as it did before test mode.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_test: bool,
}

/// An API key was revoked: from this event on it authenticates nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ApiKeyRevoked {
    pub key_id: String,
}

impl KeyEvent {
    /// Every key event type, with the version written today.
    pub const CURRENT_VERSIONS: &'static [(&'static str, u32)] =
        &[("ApiKeyCreated", 1), ("ApiKeyRevoked", 1)];

    /// Whether `event_type` names a key event (rather than a task event).
    pub fn is_key_event_type(event_type: &str) -> bool {
        Self::CURRENT_VERSIONS.iter().any(|(t, _)| *t == event_type)
    }

    pub fn event_type(&self) -> &'static str {
        match self {
            KeyEvent::ApiKeyCreated(_) => "ApiKeyCreated",
            KeyEvent::ApiKeyRevoked(_) => "ApiKeyRevoked",
        }
    }

    pub fn event_version(&self) -> u32 {
        1
    }

    /// The payload alone, as stored and published.
    pub fn payload(&self) -> Value {
        match serde_json::to_value(self) {
            Ok(Value::Object(mut map)) => map.remove("payload").unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }

    pub fn decode(event_type: &str, version: u32, payload: Value) -> Result<KeyEvent, DecodeError> {
        crate::platform::decode_v1(Self::CURRENT_VERSIONS, event_type, version, payload)
    }

    /// [`KeyEvent::decode`] from the payload's text, with no `Value` in between.
    pub fn decode_text(
        event_type: &str,
        version: u32,
        text: &str,
    ) -> Result<KeyEvent, DecodeError> {
        crate::platform::decode_v1_text(Self::CURRENT_VERSIONS, event_type, version, text)
    }
}

/// Any event of the ledger: about a task, a key, a project or a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum LedgerEvent {
    Task(TaskEvent),
    Key(KeyEvent),
    Project(ProjectEvent),
    Batch(BatchEvent),
}

impl LedgerEvent {
    /// Every event type of a stream that is not a task's (a key's, a project's, a batch's),
    /// with the version written today.
    pub fn other_stream_versions() -> impl Iterator<Item = &'static (&'static str, u32)> + Clone {
        KeyEvent::CURRENT_VERSIONS
            .iter()
            .chain(ProjectEvent::CURRENT_VERSIONS)
            .chain(BatchEvent::CURRENT_VERSIONS)
    }

    /// Whether `event_type` names an event of a key's, a project's or a batch's stream: such
    /// a stream is no task, and folds into no task view.
    pub fn is_other_stream_type(event_type: &str) -> bool {
        KeyEvent::is_key_event_type(event_type)
            || ProjectEvent::is_project_event_type(event_type)
            || BatchEvent::is_batch_event_type(event_type)
    }

    pub fn decode(
        event_type: &str,
        version: u32,
        payload: Value,
    ) -> Result<LedgerEvent, DecodeError> {
        if KeyEvent::is_key_event_type(event_type) {
            KeyEvent::decode(event_type, version, payload).map(LedgerEvent::Key)
        } else if ProjectEvent::is_project_event_type(event_type) {
            ProjectEvent::decode(event_type, version, payload).map(LedgerEvent::Project)
        } else if BatchEvent::is_batch_event_type(event_type) {
            BatchEvent::decode(event_type, version, payload).map(LedgerEvent::Batch)
        } else {
            TaskEvent::decode(event_type, version, payload).map(LedgerEvent::Task)
        }
    }

    /// [`LedgerEvent::decode`] from the payload's text, with no `Value` in between. Its
    /// errors may word a bad payload differently (with a line and column); a caller that
    /// reports them can take [`LedgerEvent::decode`] when this fails.
    pub fn decode_text(
        event_type: &str,
        version: u32,
        text: &str,
    ) -> Result<LedgerEvent, DecodeError> {
        if KeyEvent::is_key_event_type(event_type) {
            KeyEvent::decode_text(event_type, version, text).map(LedgerEvent::Key)
        } else if ProjectEvent::is_project_event_type(event_type) {
            ProjectEvent::decode_text(event_type, version, text).map(LedgerEvent::Project)
        } else if BatchEvent::is_batch_event_type(event_type) {
            BatchEvent::decode_text(event_type, version, text).map(LedgerEvent::Batch)
        } else {
            TaskEvent::decode_text(event_type, version, text).map(LedgerEvent::Task)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_key_event_round_trips_and_never_names_a_secret() {
        let created = KeyEvent::ApiKeyCreated(ApiKeyCreated {
            key_id: "key_01".into(),
            name: Some("Dana Reyes (QA lead)".into()),
            scope: "customer".into(),
            is_test: false,
        });
        let payload = created.payload();
        assert_eq!(
            payload,
            json!({"key_id": "key_01", "name": "Dana Reyes (QA lead)", "scope": "customer"})
        );
        assert_eq!(
            KeyEvent::decode("ApiKeyCreated", 1, payload).unwrap(),
            created
        );
    }

    #[test]
    fn a_ledger_event_tells_keys_from_tasks() {
        assert!(matches!(
            LedgerEvent::decode("ApiKeyRevoked", 1, json!({"key_id": "key_01"})),
            Ok(LedgerEvent::Key(_))
        ));
        assert!(matches!(
            LedgerEvent::decode("TaskCanceled", 1, json!({})),
            Ok(LedgerEvent::Task(_))
        ));
        assert!(LedgerEvent::decode("ApiKeyRevoked", 2, json!({"key_id": "k"})).is_err());
    }
}
