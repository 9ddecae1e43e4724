//! Decoding a payload under its event type into one of the adjacently tagged event enums
//! (`{"event_type": ..., "payload": ...}`), from a parsed value or straight from the stored
//! text.

use serde::de::value::{MapAccessDeserializer, StrDeserializer};
use serde::de::{DeserializeOwned, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess};
use serde_json::{Map, Value};

use crate::DecodeError;

/// `E` from the event type and a parsed payload. The payload is moved into the tagged map,
/// not copied: `json!` would serialize it into a new tree first.
pub(crate) fn from_value<E: DeserializeOwned>(
    event_type: &str,
    payload: Value,
) -> Result<E, DecodeError> {
    let mut tagged = Map::new();
    tagged.insert("event_type".into(), Value::String(event_type.into()));
    tagged.insert("payload".into(), payload);
    serde_json::from_value(Value::Object(tagged)).map_err(|e| DecodeError::payload(event_type, e))
}

/// `E` from the event type and the payload's text, with no tree in between: the payload's
/// own deserializer feeds the variant. The text must be one JSON value and nothing more.
pub(crate) fn from_text<E: DeserializeOwned>(
    event_type: &str,
    text: &str,
) -> Result<E, DecodeError> {
    let mut payload = serde_json::Deserializer::from_str(text);
    from_deserializer(event_type, &mut payload)
        .and_then(|event| payload.end().map(|()| event))
        .map_err(|e| DecodeError::payload(event_type, e))
}

/// `E` from the event type and a parsed payload it only borrows: nothing of the tree is
/// copied but the strings the event keeps.
pub(crate) fn from_ref<E: DeserializeOwned>(
    event_type: &str,
    payload: &Value,
) -> Result<E, DecodeError> {
    from_deserializer(event_type, payload).map_err(|e| DecodeError::payload(event_type, e))
}

fn from_deserializer<'de, E, D>(event_type: &str, payload: D) -> Result<E, serde_json::Error>
where
    E: DeserializeOwned,
    D: Deserializer<'de, Error = serde_json::Error>,
{
    E::deserialize(MapAccessDeserializer::new(Tagged {
        event_type,
        payload: Some(payload),
        next: 0,
    }))
}

/// The two entries of the tagged form: the type, then the payload from its deserializer.
struct Tagged<'a, D> {
    event_type: &'a str,
    payload: Option<D>,
    next: u8,
}

impl<'de, D: Deserializer<'de, Error = serde_json::Error>> MapAccess<'de> for Tagged<'_, D> {
    type Error = serde_json::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        let key = match self.next {
            0 => "event_type",
            1 => "payload",
            _ => return Ok(None),
        };
        seed.deserialize(IntoDeserializer::<serde_json::Error>::into_deserializer(
            key,
        ))
        .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        self.next += 1;
        if self.next == 1 {
            return seed.deserialize(StrDeserializer::<serde_json::Error>::new(self.event_type));
        }
        match self.payload.take() {
            Some(payload) => seed.deserialize(payload),
            None => Err(serde::de::Error::custom("the payload was read already")),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::{
        canonical_json, DecodeError, KeyEvent, LedgerEvent, ProjectEvent, TaskCreated, TaskEvent,
    };

    fn both_ways(event_type: &str, payload: serde_json::Value) -> LedgerEvent {
        let text = canonical_json(&payload);
        let from_text = LedgerEvent::decode_text(event_type, 1, &text).unwrap();
        if let LedgerEvent::Task(from_text) = &from_text {
            let envelope = crate::EventEnvelope {
                event_type: event_type.into(),
                payload: payload.clone(),
                ..crate::envelope::sample_envelope(1)
            };
            assert_eq!(
                &envelope.event().unwrap(),
                from_text,
                "{event_type} by reference"
            );
        }
        let from_value = LedgerEvent::decode(event_type, 1, payload).unwrap();
        assert_eq!(from_text, from_value, "{event_type}");
        from_text
    }

    #[test]
    fn an_event_decodes_the_same_from_its_text_as_from_its_value() {
        let created = TaskEvent::TaskCreated(TaskCreated {
            task_type: "categorization".into(),
            instruction: Some("Is it \"big\"?\n".into()),
            callback_url: None,
            project: Some("kittens".into()),
            batch: None,
            params: json!({"categories": ["big", "small"], "ratio": 0.25, "n": -3}),
            metadata: json!({"k": {"nested": [1, 2.5, null, true]}}),
            tags: vec!["a".into(), "é".into()],
            unique_id: Some("u-1".into()),
            clear_unique_id_on_error: true,
            project_param_version: Some(2),
            is_test: false,
        });
        assert_eq!(
            both_ways("TaskCreated", created.payload()),
            LedgerEvent::Task(created)
        );
        both_ways("TaskCanceled", json!({}));
        both_ways(
            "ApiKeyCreated",
            json!({"key_id": "key_01", "scope": "customer", "is_test": false}),
        );
        both_ways(
            "ProjectCreated",
            json!({"name": "p", "task_type": "categorization", "is_test": false}),
        );
        both_ways("BatchFinalized", json!({}));
    }

    #[test]
    fn text_that_is_not_one_payload_is_refused() {
        for text in [
            "{} {}",
            "{},\"event_type\":\"TaskCanceled\"",
            "{",
            "",
            "{\"x\":1}x",
        ] {
            assert!(
                matches!(
                    TaskEvent::decode_text("TaskCanceled", 1, text),
                    Err(DecodeError::Payload { .. })
                ),
                "{text:?}"
            );
        }
        assert!(matches!(
            KeyEvent::decode_text("ApiKeyCreated", 1, "{\"key_id\":1}"),
            Err(DecodeError::Payload { .. })
        ));
        assert_eq!(
            ProjectEvent::decode_text("ProjectCreated", 2, "{}"),
            Err(DecodeError::UnsupportedVersion {
                event_type: "ProjectCreated".into(),
                version: 2
            })
        );
        assert_eq!(
            LedgerEvent::decode_text("TaskExploded", 1, "{}"),
            Err(DecodeError::UnknownType("TaskExploded".into()))
        );
    }
}
