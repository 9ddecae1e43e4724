//! The CloudEvents Kafka protocol binding, binary content mode: the record's value stays the
//! envelope (`content-type: application/json`) and the event's attributes travel as `ce_`
//! headers, so a consumer routes and filters records without parsing them.

use chrono::SecondsFormat;
use rdkafka::message::{Header, OwnedHeaders};
use taskledger_events::EventEnvelope;

pub const SPEC_VERSION: &str = "1.0";

/// The reverse-DNS prefix of every `ce_type`.
pub const TYPE_PREFIX: &str = "ai.refonte.taskledger";

/// The `ce_type` of the state topic's records (the task object, not an event).
pub const STATE_TYPE: &str = "ai.refonte.taskledger.TaskState.v1";

/// `ai.refonte.taskledger.<EventType>.v<version>`: stable, and a new version is a new type,
/// so a consumer that routes on it never receives a shape it was not written for.
pub fn event_type(envelope: &EventEnvelope) -> String {
    format!(
        "{TYPE_PREFIX}.{}.v{}",
        envelope.event_type, envelope.event_version
    )
}

/// What the event is about: its task, or, for an event of no task (an account's own events),
/// the stream it was appended to, which the envelope's `task_id` names when set and its
/// account otherwise.
pub fn subject(envelope: &EventEnvelope) -> &str {
    if envelope.task_id.is_empty() {
        &envelope.account_id
    } else {
        &envelope.task_id
    }
}

fn time(envelope: &EventEnvelope) -> String {
    envelope
        .recorded_at
        .to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn with_attributes(
    headers: OwnedHeaders,
    id: &str,
    ce_type: &str,
    source: &str,
    envelope: &EventEnvelope,
) -> OwnedHeaders {
    let time = time(envelope);
    // An extension attribute, so a consumer drops test data by header, without parsing.
    let is_test = if envelope.is_test { "true" } else { "false" };
    [
        ("ce_istest", is_test),
        ("ce_specversion", SPEC_VERSION),
        ("ce_id", id),
        ("ce_type", ce_type),
        ("ce_source", source),
        ("ce_subject", subject(envelope)),
        ("ce_time", time.as_str()),
        ("content-type", "application/json"),
    ]
    .into_iter()
    .fold(headers, |headers, (key, value)| {
        headers.insert(Header {
            key,
            value: Some(value.as_bytes()),
        })
    })
}

/// Adds the CloudEvents attributes of an event record: `ce_id` is the event id.
pub fn event_headers(
    headers: OwnedHeaders,
    envelope: &EventEnvelope,
    source: &str,
) -> OwnedHeaders {
    let id = envelope.event_id.to_string();
    with_attributes(headers, &id, &event_type(envelope), source, envelope)
}

/// The headers of the state record written after `envelope`: its global position, the event
/// it follows (`event-id`, `event-type`), and CloudEvents attributes of its own (`ce_id` is
/// `<event id>.state`, since a CloudEvents id names one occurrence per source).
pub fn state_headers(envelope: &EventEnvelope, source: &str) -> OwnedHeaders {
    let id = format!("{}.state", envelope.event_id);
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "global-position",
            value: Some(envelope.global_position.to_string().as_bytes()),
        })
        .insert(Header {
            key: "event-id",
            value: Some(envelope.event_id.to_string().as_bytes()),
        })
        .insert(Header {
            key: "event-type",
            value: Some(envelope.event_type.as_bytes()),
        });
    with_attributes(headers, &id, STATE_TYPE, source, envelope)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;
    use taskledger_events::{Actor, Scope};

    fn envelope(task_id: &str) -> EventEnvelope {
        EventEnvelope {
            event_id: uuid::Uuid::nil(),
            event_type: "TaskCreated".into(),
            event_version: 1,
            task_id: task_id.into(),
            account_id: "acme".into(),
            sequence: 1,
            global_position: 42,
            recorded_at: chrono::DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            actor: Actor {
                account_id: "acme".into(),
                key_id: None,
                scope: Scope::System,
            },
            request_id: None,
            payload: serde_json::json!({}),
            prev_hash: String::new(),
            hash: String::new(),
            hash_version: 2,
            is_test: false,
        }
    }

    fn header<'a>(headers: &'a OwnedHeaders, key: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|h| h.key == key)
            .and_then(|h| h.value)
            .map(|v| std::str::from_utf8(v).unwrap())
    }

    #[test]
    fn an_event_record_carries_every_required_cloudevents_attribute() {
        let e = envelope("0190a1b2c3d4e5f601234567");
        let headers = event_headers(OwnedHeaders::new(), &e, "urn:test");
        assert_eq!(header(&headers, "ce_specversion"), Some("1.0"));
        assert_eq!(
            header(&headers, "ce_id"),
            Some(e.event_id.to_string().as_str())
        );
        assert_eq!(
            header(&headers, "ce_type"),
            Some("ai.refonte.taskledger.TaskCreated.v1")
        );
        assert_eq!(header(&headers, "ce_source"), Some("urn:test"));
        assert_eq!(
            header(&headers, "ce_subject"),
            Some("0190a1b2c3d4e5f601234567")
        );
        assert_eq!(
            header(&headers, "ce_time"),
            Some("2023-11-14T22:13:20.123456Z")
        );
        assert_eq!(header(&headers, "content-type"), Some("application/json"));
    }

    #[test]
    fn an_event_of_no_task_has_its_account_as_subject() {
        let e = envelope("");
        let headers = event_headers(OwnedHeaders::new(), &e, "urn:test");
        assert_eq!(header(&headers, "ce_subject"), Some("acme"));
    }

    #[test]
    fn a_state_record_has_an_id_and_type_of_its_own_and_the_position() {
        let e = envelope("0190a1b2c3d4e5f601234567");
        let headers = state_headers(&e, "urn:test");
        assert_eq!(header(&headers, "global-position"), Some("42"));
        assert_eq!(header(&headers, "ce_type"), Some(STATE_TYPE));
        assert_eq!(
            header(&headers, "ce_id"),
            Some(format!("{}.state", e.event_id).as_str())
        );
    }
}
