//! Every JSON Schema the stream publishes: the envelope and the event payloads (from
//! `taskledger-events`), and the value of the task-state topic (the task object, from
//! `taskledger-projections`). The files of `events/schemas/` and `GET /v1/schemas` are these.

use serde_json::Value;
use taskledger_events::schema::{self, SchemaFile};
use taskledger_projections::TaskView;

/// The file of the task-state topic's value schema.
pub const STATE_FILE: &str = "TaskState.v1.json";

/// The schema of a task-state record's value: the task object of `GET /v1/task/{id}`.
pub fn state_schema() -> Value {
    schema::standalone_schema::<TaskView>(
        "taskledger task state v1 (the task object of GET /v1/task/{id})",
        STATE_FILE,
    )
}

/// Every file `events/schemas/` holds.
pub fn schema_files() -> Vec<SchemaFile> {
    let mut files = schema::schema_files();
    files.push(SchemaFile {
        file_name: STATE_FILE.into(),
        schema: state_schema(),
    });
    files
}

/// `{"envelope": {...}, "events": {"TaskCreated": {"1": {...}}, ...}, "state": {...}}`.
pub fn schema_document() -> Value {
    let mut document = schema::schema_document();
    document["state"] = state_schema();
    document
}
