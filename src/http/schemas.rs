//! `GET /v1/schemas`: the JSON Schemas (2020-12) of the envelope and of every event type and
//! version, the same documents as the files in `events/schemas/`.

use std::sync::OnceLock;

use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use utoipa::OpenApi;

use super::extract::Caller;
use super::Routes;

pub(super) fn router() -> Routes {
    Routes::new().route("/v1/schemas", get(list_schemas))
}

#[derive(OpenApi)]
#[openapi(paths(list_schemas))]
pub(super) struct Docs;

/// Generated once: the schemas are fixed for a build.
fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        serde_json::to_string(&taskledger_events::schema::schema_document())
            .expect("the schema document serializes")
    })
}

/// JSON Schemas of the stream's envelope and of every event payload, by type and version.
#[utoipa::path(
    get,
    path = "/v1/schemas",
    description = "The JSON Schemas (draft 2020-12) that every envelope and payload on the \
                   Kafka stream and in `GET /v1/events` validates against: \
                   `{\"envelope\": {...}, \"events\": {\"TaskCreated\": {\"1\": {...}}, ...}}`. \
                   A payload's schema is `events[event_type][event_version]`. The same \
                   documents ship in the repository's `events/schemas/`.",
    responses((status = 200, description = "The schemas.", body = Object))
)]
async fn list_schemas(_caller: Caller) -> Response {
    ([(CONTENT_TYPE, "application/json")], document()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn the_served_document_has_the_envelope_and_every_current_event_version() {
        let doc: Value = serde_json::from_str(document()).unwrap();
        assert_eq!(doc["envelope"]["title"], "taskledger event envelope");
        for (event_type, version) in taskledger_events::TaskEvent::CURRENT_VERSIONS {
            assert!(
                doc["events"][event_type][version.to_string()].is_object(),
                "{event_type} v{version}"
            );
        }
    }
}
