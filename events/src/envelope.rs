use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::{DecodeError, TaskEvent};

/// What a test-mode key's account id gets, as the id of the account's test ledger.
///
/// Test data lives in a ledger of its own per account, named `<account_id>:test`: its events
/// carry that id as their `account_id` (so the hash covers the mode), its tasks, counts,
/// unique_ids, events feed and Merkle tree are keyed by it, and every read keyed by the
/// caller's ledger sees one mode only. Account ids never contain `:`.
pub const TEST_LEDGER_SUFFIX: &str = ":test";

/// The ledger a key of `account_id` reads and writes: the account's own, or its test ledger.
pub fn ledger_of(account_id: &str, is_test: bool) -> String {
    if is_test {
        format!("{account_id}{TEST_LEDGER_SUFFIX}")
    } else {
        account_id.to_string()
    }
}

/// Whether `ledger_id` (an envelope's `account_id`) is an account's test ledger.
pub fn is_test_ledger(ledger_id: &str) -> bool {
    ledger_id.ends_with(TEST_LEDGER_SUFFIX)
}

/// The account a ledger belongs to: `ledger_id` without the test suffix.
pub fn account_of_ledger(ledger_id: &str) -> &str {
    ledger_id
        .strip_suffix(TEST_LEDGER_SUFFIX)
        .unwrap_or(ledger_id)
}

/// The `prev_hash` of the first event of every task.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a key may do: the customer side, the workforce side, or taskledger itself (callbacks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
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
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventEnvelope {
    /// UUID v7; the de-duplication key for at-least-once consumers.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = "uuid"))]
    #[cfg_attr(feature = "schema", schemars(with = "String", extend("format" = "uuid")))]
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
    #[cfg_attr(feature = "schema", schemars(with = "String", extend("format" = "date-time")))]
    pub recorded_at: DateTime<Utc>,
    pub actor: Actor,
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub request_id: Option<String>,
    /// The event's own fields; their shape depends on `event_type` and `event_version`.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    #[cfg_attr(feature = "schema", schemars(with = "serde_json::Map<String, Value>"))]
    pub payload: Value,
    /// Hash of the previous event of the same task ([`GENESIS_HASH`] for the first).
    pub prev_hash: String,
    /// Hex SHA-256 of [`EventEnvelope::hash_input`] (see [`crate::seal`]).
    pub hash: String,
    /// Which hash input `hash` was computed over ([`crate::HASH_V1`] or [`crate::HASH_V2`]). Envelopes
    /// without the field come from before it existed, when every event was hashed as v1.
    #[serde(default = "first_hash_version")]
    pub hash_version: u32,
    /// Test data (created with a test-mode key): consumers of live data drop it. Always
    /// equal to whether `account_id` names a test ledger (`<account_id>:test`), which the hash
    /// covers, so it needs no place in the hash input of its own; an envelope where the two
    /// disagree does not verify ([`EventEnvelope::hash_matches`]).
    #[serde(default)]
    pub is_test: bool,
}

fn first_hash_version() -> u32 {
    crate::HASH_V1
}

impl EventEnvelope {
    pub fn event(&self) -> Result<TaskEvent, DecodeError> {
        TaskEvent::decode_ref(&self.event_type, self.event_version, &self.payload)
    }

    /// The event, whether about a task or about an API key ([`crate::KeyEvent`]).
    pub fn ledger_event(&self) -> Result<crate::LedgerEvent, DecodeError> {
        crate::LedgerEvent::decode(&self.event_type, self.event_version, self.payload.clone())
    }
}

/// JSON with object keys sorted at every depth and no insignificant white space: the form
/// payloads are stored and hashed in, independent of any map ordering.
pub fn canonical_json(value: &Value) -> String {
    let mut out = Vec::new();
    write_canonical(value, &mut out);
    // serde_json writes UTF-8 only, and the punctuation added here is ASCII.
    String::from_utf8(out).expect("JSON text is UTF-8")
}

/// [`canonical_json`] appended to `out`: for a caller that writes many payloads into one
/// buffer.
pub fn write_canonical_json(value: &Value, out: &mut Vec<u8>) {
    write_canonical(value, out);
}

/// Writes `value` into `out` with serde_json's own escaping and number format, straight into
/// the buffer: verify and replay write every stored payload again, so nothing is allocated per
/// key or per scalar.
fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key).expect("writing to a Vec cannot fail");
                out.push(b':');
                write_canonical(&map[key], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar).expect("writing to a Vec cannot fail"),
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

/// An envelope for the unit tests of this crate.
#[cfg(test)]
pub(crate) fn sample_envelope(hash_version: u32) -> EventEnvelope {
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
        payload: serde_json::json!({}),
        prev_hash: GENESIS_HASH.into(),
        hash: String::new(),
        hash_version,
        is_test: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope() -> EventEnvelope {
        sample_envelope(crate::HASH_V2)
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
    fn recorded_at_serializes_with_microseconds_and_round_trips() {
        let e = envelope();
        let text = serde_json::to_string(&e).unwrap();
        assert!(text.contains("\"recorded_at\":\"2023-11-14T22:13:20.123456Z\""));
        let back: EventEnvelope = serde_json::from_str(&text).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn an_envelope_without_a_hash_version_was_hashed_as_v1() {
        let mut e = serde_json::to_value(envelope()).unwrap();
        e.as_object_mut().unwrap().remove("hash_version");
        let back: EventEnvelope = serde_json::from_value(e).unwrap();
        assert_eq!(back.hash_version, crate::HASH_V1);
    }
}
