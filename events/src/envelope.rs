use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::{DecodeError, TaskEvent};

/// The `prev_hash` of the first event of every task.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a key may do: the customer side, the workforce side, or taskledger itself (callbacks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Customer,
    Contributor,
    System,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownScope(pub String);

impl std::fmt::Display for UnknownScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown scope {:?} (customer, contributor)", self.0)
    }
}

impl std::error::Error for UnknownScope {}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Customer => "customer",
            Scope::Contributor => "contributor",
            Scope::System => "system",
        }
    }

    pub fn parse(s: &str) -> Result<Scope, UnknownScope> {
        match s {
            "customer" => Ok(Scope::Customer),
            "contributor" => Ok(Scope::Contributor),
            "system" => Ok(Scope::System),
            other => Err(UnknownScope(other.to_string())),
        }
    }
}

/// Who caused an event: the account, the API key (absent for the system) and its scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Actor {
    pub account_id: String,
    /// Null for taskledger itself (callback records).
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub key_id: Option<String>,
    pub scope: Scope,
}

/// One recorded event with everything needed to audit it, order it and check its hash.
///
/// This is the JSON document of `GET /v1/events` and the value of each Kafka record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventEnvelope {
    /// UUID v7; the de-duplication key for at-least-once consumers.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = "uuid"))]
    pub event_id: Uuid,
    pub event_type: String,
    pub event_version: u32,
    pub task_id: String,
    pub account_id: String,
    /// 1-based, contiguous within the task.
    pub sequence: i64,
    /// 1-based, contiguous across the ledger, in commit order.
    pub global_position: i64,
    /// When the event was committed, microsecond precision.
    #[serde(with = "micros")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub recorded_at: DateTime<Utc>,
    pub actor: Actor,
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub request_id: Option<String>,
    /// The event's own fields; their shape depends on `event_type` and `event_version`.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub payload: Value,
    /// Hash of the previous event of the same task ([`GENESIS_HASH`] for the first).
    pub prev_hash: String,
    /// Hex SHA-256 of [`EventEnvelope::hash_input`].
    pub hash: String,
}

impl EventEnvelope {
    pub fn event(&self) -> Result<TaskEvent, DecodeError> {
        TaskEvent::decode(&self.event_type, self.event_version, self.payload.clone())
    }

    /// The exact bytes whose SHA-256 is `hash`.
    ///
    /// Every field but `hash` is included, each length-prefixed so no two envelopes share an
    /// input, and the payload in [`canonical_json`] form so any JSON library can recompute it.
    pub fn hash_input(&self) -> Vec<u8> {
        let recorded_at = self.recorded_at.timestamp_micros().to_string();
        let fields: [&str; 14] = [
            "taskledger-event-v1",
            &self.prev_hash,
            &self.event_id.to_string(),
            &self.event_type,
            &self.event_version.to_string(),
            &self.task_id,
            &self.account_id,
            &self.sequence.to_string(),
            &self.global_position.to_string(),
            &recorded_at,
            &self.actor.account_id,
            self.actor.key_id.as_deref().unwrap_or(""),
            self.actor.scope.as_str(),
            self.request_id.as_deref().unwrap_or(""),
        ];
        let payload = canonical_json(&self.payload);
        let mut out = Vec::with_capacity(256 + payload.len());
        for field in fields
            .iter()
            .copied()
            .chain(std::iter::once(payload.as_str()))
        {
            out.extend_from_slice(&(field.len() as u64).to_be_bytes());
            out.extend_from_slice(field.as_bytes());
        }
        out
    }
}

/// JSON with object keys sorted at every depth and no insignificant white space: the form
/// payloads are stored and hashed in, independent of any map ordering.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

mod micros {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Micros, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope() -> EventEnvelope {
        EventEnvelope {
            event_id: Uuid::nil(),
            event_type: "TaskCanceled".into(),
            event_version: 1,
            task_id: "0190a1b2c3d4e5f601234567".into(),
            account_id: "acme".into(),
            sequence: 2,
            global_position: 7,
            recorded_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            actor: Actor {
                account_id: "acme".into(),
                key_id: Some("k1".into()),
                scope: Scope::Customer,
            },
            request_id: None,
            payload: json!({}),
            prev_hash: GENESIS_HASH.into(),
            hash: String::new(),
        }
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let v = json!({"b": 1, "a": {"z": [3, {"y": 1, "x": 2}], "c": "é"}});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"c":"é","z":[3,{"x":2,"y":1}]},"b":1}"#
        );
    }

    #[test]
    fn the_hash_input_changes_with_any_field() {
        let base = envelope();
        let mut other = base.clone();
        other.global_position = 8;
        assert_ne!(base.hash_input(), other.hash_input());
        let mut other = base.clone();
        other.actor.key_id = None;
        assert_ne!(base.hash_input(), other.hash_input());
        let mut other = base.clone();
        other.payload = json!({"x": 1});
        assert_ne!(base.hash_input(), other.hash_input());
    }

    #[test]
    fn recorded_at_serializes_with_microseconds_and_round_trips() {
        let e = envelope();
        let text = serde_json::to_string(&e).unwrap();
        assert!(text.contains("\"recorded_at\":\"2023-11-14T22:13:20.123456Z\""));
        let back: EventEnvelope = serde_json::from_str(&text).unwrap();
        assert_eq!(back, e);
    }
}
