//! `GET /openapi.json`: the OpenAPI 3.1 description of the API, generated from the handlers'
//! `#[utoipa::path]` annotations (each resource module has a `Docs` listing its own).
//!
//! What every route shares is added in one pass ([`apply_conventions`]) rather than repeated
//! on each handler: the tag (from the path), the error answers, authentication,
//! `Idempotency-Key` on the mutating routes and `x-request-id`; on the routes of one task also
//! the `id` path parameter and, where the handler documents no 200 of its own, the task as
//! the answer. A handler is named after its operation id, which utoipa takes from the fn
//! name: renaming one changes the public contract. Schemas come from the real types: the
//! wire types of the events and projections crates derive `ToSchema` behind their `openapi`
//! feature, and the domain's value types are described below from the limits they enforce.

use std::sync::LazyLock;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::Value;
use utoipa::openapi::extensions::ExtensionsBuilder;
use utoipa::openapi::path::{Operation, Parameter, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaType, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Components, ContentBuilder, Header, Ref, RefOr, Required, Schema};
use utoipa::{IntoParams, OpenApi, PartialSchema, ToSchema};

use super::contract::never_answers_409;
use super::request_id::X_REQUEST_ID;
use super::task_bodies::TaskPath;
use super::Routes;
use crate::domain::limits::*;
use crate::domain::{
    CallbackUrl, Identifier, Json, Metadata, Tag, Tags, TaskType, Text, UniqueId, TYPE_RULES,
};

pub(super) fn router() -> Routes {
    Routes::new().route("/openapi.json", get(openapi))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "taskledger",
        description = "An event-sourced ledger of data-labeling tasks. Every `/v1` route needs \
                       an API key (HTTP Basic with the key as user name and an empty password, \
                       or Bearer). Every response carries `x-request-id`."
    ),
    paths(openapi),
    components(schemas(super::error::ErrorBody)),
    tags(
        (name = "tasks", description = "Create, read, list and change tasks."),
        (name = "events", description = "The account's event feed."),
        (name = "operations", description = "Probes, metrics and this document; no API key.")
    )
)]
struct ApiDoc;

/// The whole document: every module's routes plus the shared conventions.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    for part in [
        super::health::Docs::openapi(),
        super::metrics::Docs::openapi(),
        super::tasks::Docs::openapi(),
        super::list::Docs::openapi(),
        super::events::Docs::openapi(),
        super::audit::Docs::openapi(),
        super::keys::Docs::openapi(),
        super::projects::Docs::openapi(),
        super::batches::Docs::openapi(),
        super::schemas::Docs::openapi(),
    ] {
        doc.merge(part);
    }
    apply_conventions(&mut doc);
    doc
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API.", body = Object))
)]
async fn openapi() -> impl IntoResponse {
    static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
        document()
            .to_json()
            .expect("the OpenAPI document serializes")
    });
    ([(CONTENT_TYPE, "application/json")], DOCUMENT.as_str())
}

/// An error answer and the name of its reusable response.
struct ErrorAnswer {
    status: u16,
    name: &'static str,
    description: &'static str,
}

const ERROR_ANSWERS: &[ErrorAnswer] = &[
    ErrorAnswer {
        status: 400,
        name: "BadRequest",
        description: "Invalid request: malformed JSON, a wrong type, a bad query value, a \
                      value over its documented limit (length, tag count, JSON size or \
                      nesting), U+0000 in a string, or an invalid Idempotency-Key; the message \
                      names the offending field and the limit.",
    },
    ErrorAnswer {
        status: 401,
        name: "Unauthorized",
        description: "Missing, unknown or revoked API key.",
    },
    ErrorAnswer {
        status: 403,
        name: "Forbidden",
        description: "The key's scope may not run this command (e.g. a customer key completing \
                      a task).",
    },
    ErrorAnswer {
        status: 404,
        name: "NotFound",
        description: "Task with that ID not found (also another account's task).",
    },
    ErrorAnswer {
        status: 408,
        name: "RequestTimeout",
        description: "The request body stalled longer than the server's body-read timeout; \
                      nothing was written.",
    },
    ErrorAnswer {
        status: 409,
        name: "Conflict",
        description: "The unique_id is used by another task of the account (named in the \
                      message), or the Idempotency-Key was used for a different request.",
    },
    ErrorAnswer {
        status: 413,
        name: "PayloadTooLarge",
        description: "The request body is larger than the server's body limit, or the event \
                      the command would record is larger than the event stream takes \
                      (`KAFKA_MESSAGE_MAX_BYTES`); the message names the size and the limit.",
    },
    ErrorAnswer {
        status: 429,
        name: "TooManyRequests",
        description: "The API key is over its rate limit (`X-RateLimit-*` say how far), or a \
                      request with this Idempotency-Key is still being processed (or its \
                      claim was taken over by a retry); retry after `Retry-After` seconds.",
    },
    ErrorAnswer {
        status: 500,
        name: "InternalServerError",
        description: "Internal error; the message is opaque and the cause is logged.",
    },
    ErrorAnswer {
        status: 503,
        name: "ServiceUnavailable",
        description: "The ledger store is unreachable, the task is changed by too many \
                      concurrent requests, or the request ran past the server's request \
                      timeout; retry (with the same Idempotency-Key if it changes anything).",
    },
];

/// The error statuses an operation can answer. Derived from the route's shape, so a new
/// route gets the right list without repeating it in its annotation.
fn error_statuses(method: &str, path: &str, op: &Operation) -> Vec<u16> {
    if !path.starts_with("/v1/") {
        return if path == "/readyz" { vec![503] } else { vec![] };
    }
    let mutating = method != "get";
    let has_query = op
        .parameters
        .iter()
        .flatten()
        .any(|p| p.parameter_in == ParameterIn::Query);
    // Every authenticated route can answer 429: each key has a rate limit.
    let mut statuses = vec![401, 429, 500, 503];
    if mutating || has_query || op.request_body.is_some() {
        statuses.push(400);
    }
    if path.contains("{id}") && !is_create(method, path) {
        statuses.push(404);
    }
    if mutating {
        statuses.extend([403, 408, 413]);
        if !never_answers_409(method, path) {
            statuses.push(409);
        }
    }
    statuses.sort_unstable();
    statuses
}

fn string_schema() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

fn request_id_header() -> Header {
    let mut header = Header::new(string_schema());
    header.description = Some(
        "The request's id: the client's `x-request-id` if it was 1 to 128 visible ASCII \
         characters, otherwise a generated UUID v7. Recorded with every event the request \
         caused."
            .into(),
    );
    header
}

/// The `X-RateLimit-*` headers of every authenticated answer, with their descriptions.
fn rate_limit_headers() -> [(&'static str, Header); 3] {
    let header = |description: &str| {
        let mut header = Header::new(ObjectBuilder::new().schema_type(Type::Integer));
        header.description = Some(description.into());
        header
    };
    [
        (
            "X-RateLimit-Limit",
            header(
                "Requests the API key may make at once (its token bucket's size, \
                 TASKLEDGER_RATE_LIMIT_BURST); it refills at TASKLEDGER_RATE_LIMIT_PER_SEC.",
            ),
        ),
        (
            "X-RateLimit-Remaining",
            header("Requests the key may still make at once after this one."),
        ),
        (
            "X-RateLimit-Reset",
            header("Seconds until the key's bucket is full again."),
        ),
    ]
}

fn error_response(answer: &ErrorAnswer) -> Response {
    let mut builder = ResponseBuilder::new()
        .description(answer.description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Error")))
                .build(),
        )
        .header(X_REQUEST_ID.as_str(), request_id_header());
    if answer.status == 429 {
        let mut retry_after = Header::new(ObjectBuilder::new().schema_type(Type::Integer));
        retry_after.description = Some("Seconds to wait before retrying.".into());
        builder = builder.header("Retry-After", retry_after);
        for (name, header) in rate_limit_headers() {
            builder = builder.header(name, header);
        }
    }
    builder.build()
}

/// The operations of a path item with their lower-case method names.
fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = (&'static str, &mut Operation)> {
    [
        ("get", item.get.as_mut()),
        ("put", item.put.as_mut()),
        ("post", item.post.as_mut()),
        ("delete", item.delete.as_mut()),
        ("options", item.options.as_mut()),
        ("head", item.head.as_mut()),
        ("patch", item.patch.as_mut()),
        ("trace", item.trace.as_mut()),
    ]
    .into_iter()
    .filter_map(|(method, op)| op.map(|op| (method, op)))
}

fn apply_conventions(doc: &mut utoipa::openapi::OpenApi) {
    let components = doc.components.get_or_insert_with(Components::new);
    components.add_security_scheme(
        "basic",
        SecurityScheme::Http(
            Http::builder()
                .scheme(HttpAuthScheme::Basic)
                .description(Some("The API key as user name, an empty password."))
                .build(),
        ),
    );
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            Http::builder()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("`Authorization: Bearer <API key>`."))
                .build(),
        ),
    );
    for answer in ERROR_ANSWERS {
        components
            .responses
            .insert(answer.name.to_string(), error_response(answer).into());
    }
    let answer_name = |status: u16| {
        ERROR_ANSWERS
            .iter()
            .find(|a| a.status == status)
            .map(|a| a.name)
            .expect("every error status has a reusable response")
    };

    for (path, item) in doc.paths.paths.iter_mut() {
        for (method, op) in operations_mut(item) {
            let tags = op.tags.get_or_insert_with(Vec::new);
            if tags.is_empty() {
                tags.push(tag_of(path).to_string());
            }
            if is_task_route(path) && !is_create(method, path) {
                let parameters = op.parameters.get_or_insert_with(Vec::new);
                parameters.splice(0..0, TaskPath::into_params(|| None));
                op.responses
                    .responses
                    .entry("200".to_string())
                    .or_insert_with(|| the_task_response().into());
            }
            for response in op.responses.responses.values_mut() {
                if let RefOr::T(response) = response {
                    response
                        .headers
                        .insert(X_REQUEST_ID.as_str().into(), request_id_header());
                    if path.starts_with("/v1/") {
                        for (name, header) in rate_limit_headers() {
                            response.headers.insert(name.into(), header);
                        }
                    }
                }
            }
            for status in error_statuses(method, path, op) {
                op.responses.responses.insert(
                    status.to_string(),
                    Ref::from_response_name(answer_name(status)).into(),
                );
            }
            let parameters = op.parameters.get_or_insert_with(Vec::new);
            parameters.push(
                ParameterBuilder::new()
                    .name(X_REQUEST_ID.as_str())
                    .parameter_in(ParameterIn::Header)
                    .required(Required::False)
                    .description(Some(
                        "Your id for this request (1 to 128 visible ASCII characters), echoed \
                         in the response and recorded with the events it causes.",
                    ))
                    .schema(Some(string_schema().max_length(Some(128))))
                    .build(),
            );
            if !path.starts_with("/v1/") {
                continue;
            }
            op.security = Some(vec![
                SecurityRequirement::new("basic", Vec::<String>::new()),
                SecurityRequirement::new("bearer", Vec::<String>::new()),
            ]);
            if method != "get" {
                parameters.push(idempotency_key_parameter());
            }
            if is_create(method, path) {
                restrict_to_task_types(parameters);
            }
        }
    }

    if let Some(RefOr::T(Schema::Object(task))) = components.schemas.get_mut("Task") {
        if let Some(RefOr::T(Schema::Object(task_type))) = task.properties.get_mut("type") {
            task_type.enum_values = Some(task_type_names().map(Value::from).collect());
        }
    }
}

/// The tag of an operation, from the family its path belongs to.
fn tag_of(path: &str) -> &'static str {
    if path.starts_with("/v1/events") || path == "/v1/schemas" {
        "events"
    } else if path.starts_with("/v1/") {
        "tasks"
    } else {
        "operations"
    }
}

/// A route on one task, named by its id (or, on create, by its type).
fn is_task_route(path: &str) -> bool {
    path.starts_with("/v1/task/{id}")
}

/// The one task route whose segment is a task type, not an id.
fn is_create(method: &str, path: &str) -> bool {
    method == "post" && path == "/v1/task/{id}"
}

/// What a task route answers unless its annotation says otherwise.
fn the_task_response() -> Response {
    ResponseBuilder::new()
        .description("The task.")
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Task")))
                .build(),
        )
        .build()
}

fn idempotency_key_parameter() -> Parameter {
    ParameterBuilder::new()
        .name("Idempotency-Key")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "1 to 255 visible ASCII characters. The first response (status and body, errors \
             included) is stored and replayed, with `idempotent-replayed: true`, for the same \
             request with the same key. The same key with a different method, path, body or \
             account is refused; while the first request still runs it is a 429.",
        ))
        .schema(Some(
            string_schema().min_length(Some(1)).max_length(Some(255)),
        ))
        .build()
}

/// The task type of a create: one of the known types, each described with what its params
/// must hold (from the same rules the validation runs), in the description for people and in
/// `x-task-type-rules` for tools.
fn restrict_to_task_types(parameters: &mut [Parameter]) {
    let mut description = String::from("The task type. What the body's params must hold:");
    let mut rules = serde_json::Map::new();
    for row in TYPE_RULES {
        let needs: Vec<String> = row.requires.iter().map(|r| r.describe()).collect();
        description.push_str(&format!("\n- `{}`: {}", row.task_type, needs.join("; ")));
        rules.insert(row.task_type.to_string(), Value::from(needs));
    }
    for parameter in parameters.iter_mut().filter(|p| p.name == "id") {
        parameter.schema = Some(string_schema().enum_values(Some(task_type_names())).into());
        parameter.description = Some(description.clone());
        parameter.extensions = Some(
            ExtensionsBuilder::new()
                .add("x-task-type-rules", Value::Object(rules.clone()))
                .build(),
        );
    }
}

fn task_type_names() -> impl Iterator<Item = &'static str> {
    TaskType::ALL.into_iter().map(TaskType::as_str)
}

// The domain's value types, described from the limits they enforce, so the document cannot
// drift from the parsers.

fn limited_string(max: usize, description: String) -> ObjectBuilder {
    string_schema()
        .max_length(Some(max))
        .description(Some(description))
}

fn no_nul(what: &str) -> String {
    format!("{what} No U+0000 (NUL).")
}

impl PartialSchema for Identifier {
    fn schema() -> RefOr<Schema> {
        limited_string(
            MAX_IDENTIFIER_BYTES,
            no_nul(&format!("At most {MAX_IDENTIFIER_BYTES} bytes.")),
        )
        .into()
    }
}
impl ToSchema for Identifier {}

/// A unique_id and a tag obey the same rules.
fn non_blank_identifier() -> RefOr<Schema> {
    limited_string(
        MAX_IDENTIFIER_BYTES,
        no_nul(&format!("Not blank, at most {MAX_IDENTIFIER_BYTES} bytes.")),
    )
    .min_length(Some(1))
    .into()
}

impl PartialSchema for UniqueId {
    fn schema() -> RefOr<Schema> {
        non_blank_identifier()
    }
}
impl ToSchema for UniqueId {}

impl PartialSchema for Tag {
    fn schema() -> RefOr<Schema> {
        non_blank_identifier()
    }
}
impl ToSchema for Tag {}

impl PartialSchema for Tags {
    fn schema() -> RefOr<Schema> {
        ArrayBuilder::new()
            .items(Ref::from_schema_name(Tag::name()))
            .max_items(Some(MAX_TAGS))
            .description(Some(format!(
                "At most {MAX_TAGS} tags; a task holds at most {MAX_TAGS}. Duplicates are \
                 dropped, order is kept."
            )))
            .into()
    }
}
impl ToSchema for Tags {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((Tag::name().into(), Tag::schema()));
    }
}

impl PartialSchema for Text {
    fn schema() -> RefOr<Schema> {
        limited_string(
            MAX_TEXT_BYTES,
            no_nul(&format!("At most {MAX_TEXT_BYTES} bytes.")),
        )
        .into()
    }
}
impl ToSchema for Text {}

impl PartialSchema for CallbackUrl {
    fn schema() -> RefOr<Schema> {
        limited_string(
            MAX_URL_BYTES,
            format!(
                "An http or https URL with a host, at most {MAX_URL_BYTES} bytes, without NUL \
                 (raw or %00)."
            ),
        )
        .format(Some(utoipa::openapi::SchemaFormat::Custom("uri".into())))
        .into()
    }
}
impl ToSchema for CallbackUrl {}

/// A JSON value within the size and depth limits, described with them. `x-max-bytes` and
/// `x-max-depth`: JSON Schema has no keyword for a value's serialized size.
fn limited_json(schema_type: impl Into<SchemaType>, what: &str, max_bytes: usize) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(schema_type)
        .extensions(Some(
            ExtensionsBuilder::new()
                .add("x-max-bytes", max_bytes)
                .add("x-max-depth", MAX_JSON_DEPTH)
                .build(),
        ))
        .description(Some(format!(
            "{what} of at most {max_bytes} bytes serialized, nested at most {MAX_JSON_DEPTH} \
             levels, with no U+0000 in a key or string."
        )))
        .into()
}

impl PartialSchema for Metadata {
    fn schema() -> RefOr<Schema> {
        limited_json(Type::Object, "A JSON object", MAX_METADATA_BYTES)
    }
}
impl ToSchema for Metadata {}

impl PartialSchema for Json {
    fn schema() -> RefOr<Schema> {
        limited_json(SchemaType::AnyValue, "Any JSON value", MAX_JSON_BYTES)
    }
}
impl ToSchema for Json {}

#[cfg(test)]
#[path = "openapi_tests.rs"]
mod tests;
