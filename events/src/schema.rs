//! JSON Schemas (draft 2020-12) of the envelope and of every event payload, generated from the
//! Rust types so that the published schemas cannot drift from what is written.
//!
//! The event schemas are taken from the schema of [`TaskEvent`] itself, one per variant, so a
//! new variant gets its schema without anything to list here. Only the version each type is
//! written at today ([`TaskEvent::CURRENT_VERSIONS`]) can be generated; the schema of an older
//! version is the file that was checked in while it was current, kept unchanged in
//! `events/schemas/` and listed in [`FROZEN`].

use schemars::generate::{Contract, SchemaSettings};
use serde_json::{json, Map, Value};

use crate::{BatchEvent, EventEnvelope, KeyEvent, ProjectEvent, TaskEvent};

/// The dialect every schema declares.
pub const DIALECT: &str = "https://json-schema.org/draft/2020-12/schema";

/// Schemas of versions no longer written, as checked in when they were current:
/// `(event type, version, file text)`. When a type moves to version N+1, its
/// `<Type>.vN.json` stays in `events/schemas/` as it is and gets a line here, e.g.
/// `("TaskAudited", 1, include_str!("../schemas/TaskAudited.v1.json"))`.
pub const FROZEN: &[(&str, u32, &str)] = &[];

/// One schema file of `events/schemas/`.
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaFile {
    /// `envelope.json` or `<EventType>.v<version>.json`.
    pub file_name: String,
    pub schema: Value,
}

fn settings() -> SchemaSettings {
    SchemaSettings::draft2020_12().with(|s| {
        // Each file stands alone: a consumer validates with one document, no references.
        s.inline_subschemas = true;
        // The schemas describe what is published, so a field left out when empty is optional
        // and every other field is required.
        s.contract = Contract::Serialize;
    })
}

/// The file name of an event type's schema at a version.
pub fn event_file_name(event_type: &str, version: u32) -> String {
    format!("{event_type}.v{version}.json")
}

/// The schema of the envelope, the value of every Kafka record and item of `GET /v1/events`.
pub fn envelope_schema() -> Value {
    standalone_schema::<EventEnvelope>("taskledger event envelope", "envelope.json")
}

/// The schema of any type, generated like the others and stamped as the document `file`
/// (for types of other crates, such as the task object of the state topic).
pub fn standalone_schema<T: schemars::JsonSchema>(title: &str, file: &str) -> Value {
    let mut value = settings()
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value();
    stamp(&mut value, title, file);
    value
}

/// The schema of every event type's payload at the version written today, in the order of
/// [`TaskEvent`]'s variants, then [`KeyEvent`]'s: `(event type, version, schema)`.
pub fn current_event_schemas() -> Vec<(String, u32, Value)> {
    // Another enum of events (adjacently tagged the same way) is one more line here.
    let mut schemas = variant_schemas::<TaskEvent>(TaskEvent::CURRENT_VERSIONS);
    schemas.extend(variant_schemas::<KeyEvent>(KeyEvent::CURRENT_VERSIONS));
    schemas.extend(variant_schemas::<ProjectEvent>(
        ProjectEvent::CURRENT_VERSIONS,
    ));
    schemas.extend(variant_schemas::<BatchEvent>(BatchEvent::CURRENT_VERSIONS));
    schemas
}

/// The payload schema of each variant of an enum of events tagged `event_type` with content
/// `payload`, at the version `versions` lists for it.
fn variant_schemas<E: schemars::JsonSchema>(versions: &[(&str, u32)]) -> Vec<(String, u32, Value)> {
    let whole = settings()
        .into_generator()
        .into_root_schema_for::<E>()
        .to_value();
    let variants = whole
        .get("oneOf")
        .and_then(Value::as_array)
        .expect("an adjacently tagged enum: its schema is a oneOf of variants");
    variants
        .iter()
        .map(|variant| {
            let properties = &variant["properties"];
            let event_type = properties["event_type"]["const"]
                .as_str()
                .expect("each variant names its event_type as a const")
                .to_string();
            let version = versions
                .iter()
                .find(|(name, _)| *name == event_type)
                .map(|(_, v)| *v)
                .unwrap_or_else(|| panic!("{event_type} is missing from CURRENT_VERSIONS"));
            let mut payload = properties["payload"].clone();
            if let Some(description) = variant.get("description") {
                payload
                    .as_object_mut()
                    .expect("a payload schema is an object")
                    .entry("description")
                    .or_insert_with(|| description.clone());
            }
            let file = event_file_name(&event_type, version);
            stamp(&mut payload, &format!("{event_type} v{version}"), &file);
            (event_type, version, payload)
        })
        .collect()
}

/// Adds what makes a schema a document of its own: the dialect, an id and a title.
fn stamp(schema: &mut Value, title: &str, file: &str) {
    let object = schema.as_object_mut().expect("a schema object");
    let mut stamped = Map::new();
    stamped.insert("$schema".into(), json!(DIALECT));
    stamped.insert(
        "$id".into(),
        json!(format!(
            "urn:taskledger:schema:{}",
            file.trim_end_matches(".json")
        )),
    );
    stamped.insert("title".into(), json!(title));
    for (key, value) in std::mem::take(object) {
        if key != "$schema" && key != "title" {
            stamped.insert(key, value);
        }
    }
    *object = stamped;
}

/// Every file `events/schemas/` must hold: the envelope, each type at its current version,
/// and the frozen older versions.
pub fn schema_files() -> Vec<SchemaFile> {
    let mut files = vec![SchemaFile {
        file_name: "envelope.json".into(),
        schema: envelope_schema(),
    }];
    for (event_type, version, schema) in current_event_schemas() {
        files.push(SchemaFile {
            file_name: event_file_name(&event_type, version),
            schema,
        });
    }
    for (event_type, version, text) in FROZEN {
        files.push(SchemaFile {
            file_name: event_file_name(event_type, *version),
            schema: serde_json::from_str(text).expect("a frozen schema is JSON"),
        });
    }
    files
}

/// The document `GET /v1/schemas` serves:
/// `{"envelope": {...}, "events": {"TaskCreated": {"1": {...}}, ...}}`.
pub fn schema_document() -> Value {
    let mut events = Map::new();
    let mut add = |event_type: &str, version: u32, schema: Value| {
        events
            .entry(event_type.to_string())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("an object per event type")
            .insert(version.to_string(), schema);
    };
    for (event_type, version, schema) in current_event_schemas() {
        add(&event_type, version, schema);
    }
    for (event_type, version, text) in FROZEN {
        add(
            event_type,
            *version,
            serde_json::from_str(text).expect("a frozen schema is JSON"),
        );
    }
    json!({ "envelope": envelope_schema(), "events": events })
}

/// The text a schema file holds: pretty JSON and a final newline.
pub fn file_text(schema: &Value) -> String {
    let mut text = serde_json::to_string_pretty(schema).expect("a schema serializes");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_type_has_a_schema_at_its_current_version() {
        let generated: Vec<(String, u32)> = current_event_schemas()
            .into_iter()
            .map(|(t, v, _)| (t, v))
            .collect();
        let listed: Vec<(String, u32)> = TaskEvent::CURRENT_VERSIONS
            .iter()
            .chain(KeyEvent::CURRENT_VERSIONS)
            .chain(ProjectEvent::CURRENT_VERSIONS)
            .chain(BatchEvent::CURRENT_VERSIONS)
            .map(|(t, v)| (t.to_string(), *v))
            .collect();
        assert_eq!(generated, listed);
    }

    #[test]
    fn payload_schemas_stand_alone_and_name_their_required_fields() {
        let schemas = current_event_schemas();
        let (_, _, created) = schemas.iter().find(|(t, _, _)| t == "TaskCreated").unwrap();
        assert_eq!(created["$schema"], DIALECT);
        assert_eq!(created["type"], "object");
        let required: Vec<&str> = created["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(required.contains(&"task_type"), "{required:?}");
        assert!(!required.contains(&"instruction"), "{required:?}");
        let text = serde_json::to_string(created).unwrap();
        assert!(!text.contains("$ref"), "{text}");
    }
}
