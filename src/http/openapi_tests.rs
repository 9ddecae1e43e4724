use std::collections::BTreeSet;
use std::time::Duration;

use axum::body::Body;
use axum::http::header::ALLOW;
use axum::http::{Method, Request, StatusCode};
use serde_json::json;
use tower::ServiceExt;

use super::*;
use crate::http::{routes, AppState, HttpSettings};
use crate::ledger::Ledger;
use crate::store::Store;

fn doc_json() -> Value {
    serde_json::to_value(document()).unwrap()
}

/// `(method, path)` of every documented operation.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| *k != "parameters" && *k != "summary" && *k != "description")
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect()
}

async fn app_state(dir: &tempfile::TempDir) -> AppState {
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let store = Store::open(&url, 2).await.unwrap();
    AppState::new(
        Ledger::start(
            store,
            crate::ledger::LedgerSettings::with_max_batch(1),
            crate::metrics::Metrics::new(),
        ),
        HttpSettings {
            max_body_bytes: 1024,
            idempotency_ttl: Duration::from_secs(60),
        },
    )
}

/// The routes are read off the real router: its path templates from `routes()`, and each
/// path's methods from the `Allow` header of a 405 to a method nobody routes. A route added
/// without documentation, or documentation of a route that is not served, fails here.
#[tokio::test]
async fn every_routed_method_and_path_is_documented_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let state = app_state(&dir).await;
    let paths = routes(&state).paths();
    let app = crate::http::router(state);
    let mut routed = BTreeSet::new();
    for path in paths {
        let uri = path
            .split('/')
            .map(|segment| {
                if segment.starts_with('{') {
                    "0123456789abcdef01234567"
                } else {
                    segment
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        let probe = Request::builder()
            .method(Method::from_bytes(b"PROBE").unwrap())
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(probe).await.unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
        let allow = response.headers()[ALLOW].to_str().unwrap().to_string();
        for method in allow.split(',').map(str::trim) {
            // axum answers HEAD wherever it answers GET; HEAD is not part of the API.
            if method != "HEAD" {
                routed.insert((method.to_ascii_lowercase(), path.to_string()));
            }
        }
    }
    let documented = documented(&doc_json());
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty(),
        "routed but not documented: {undocumented:?}"
    );
    assert!(
        unrouted.is_empty(),
        "documented but not routed: {unrouted:?}"
    );
    // Sanity: the probe found the API, not an empty router.
    assert!(routed.contains(&("put".to_string(), "/v1/task/{id}/tags".to_string())));
    assert!(routed.contains(&("get".to_string(), "/healthz".to_string())));
}

#[test]
fn every_api_operation_has_auth_errors_and_mutations_take_an_idempotency_key() {
    let doc = doc_json();
    for (method, path) in documented(&doc) {
        let op = &doc["paths"][&path][&method];
        let param = |name: &str| {
            op["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == name && p["in"] == "header")
        };
        assert!(op["responses"]["200"].is_object(), "{method} {path}");
        assert!(param(X_REQUEST_ID.as_str()), "{method} {path}");
        if !path.starts_with("/v1/") {
            assert!(op.get("security").is_none(), "{method} {path}");
            continue;
        }
        assert_eq!(
            op["security"],
            json!([{"basic": []}, {"bearer": []}]),
            "{method} {path}"
        );
        for status in ["401", "429", "500", "503"] {
            assert!(
                op["responses"][status].is_object(),
                "{status} {method} {path}"
            );
        }
        let ok_headers = &op["responses"]["200"]["headers"];
        for name in [
            "X-RateLimit-Limit",
            "X-RateLimit-Remaining",
            "X-RateLimit-Reset",
        ] {
            assert!(ok_headers[name].is_object(), "{name} {method} {path}");
        }
        let mutating = method != "get";
        assert_eq!(param("Idempotency-Key"), mutating, "{method} {path}");
        if mutating {
            for status in ["400", "403", "413"] {
                assert!(
                    op["responses"][status].is_object(),
                    "{status} {method} {path}"
                );
            }
        }
    }
    for name in [
        "BadRequest",
        "Unauthorized",
        "Forbidden",
        "NotFound",
        "Conflict",
        "PayloadTooLarge",
        "TooManyRequests",
        "ServiceUnavailable",
    ] {
        assert_eq!(
            doc["components"]["responses"][name]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/Error",
            "{name}"
        );
    }
    assert_eq!(
        doc["components"]["schemas"]["Error"]["required"],
        json!(["status_code", "error"])
    );
    for scheme in ["basic", "bearer"] {
        assert_eq!(
            doc["components"]["securitySchemes"][scheme]["scheme"],
            scheme
        );
    }
}

#[test]
fn routes_the_contract_keeps_free_of_409_do_not_document_one() {
    let doc = doc_json();
    for (method, path) in [
        ("put", "/v1/task/{id}/tags"),
        ("post", "/v1/task/{id}/tags"),
        ("delete", "/v1/task/{id}/tags"),
        ("post", "/v1/task/{id}/cancel"),
        ("delete", "/v1/task/{id}/unique_id"),
    ] {
        assert!(doc["paths"][path][method]["responses"].get("409").is_none());
    }
    for (method, path) in [
        ("post", "/v1/task/{id}"),
        ("post", "/v1/task/{id}/unique_id"),
    ] {
        assert!(doc["paths"][path][method]["responses"]["409"].is_object());
    }
    let create = &doc["paths"]["/v1/task/{id}"]["post"];
    assert!(create["responses"].get("404").is_none());
    assert_eq!(
        create["parameters"][0]["schema"]["enum"],
        json!(task_type_names().collect::<Vec<_>>()),
        "the create route's path segment is the task type"
    );
}

#[test]
fn list_parameters_are_all_documented() {
    let doc = doc_json();
    let names: BTreeSet<String> = doc["paths"]["/v1/tasks"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["in"] == "query")
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    let expected: BTreeSet<String> = [
        "start_time",
        "end_time",
        "completed_after",
        "completed_before",
        "updated_after",
        "updated_before",
        "status",
        "type",
        "project",
        "batch",
        "customer_review_status",
        "unique_id",
        "tags",
        "limit",
        "include_attachment_url",
        "limited_response",
        "next_token",
        "offset",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(names, expected);
}

#[test]
fn every_limit_is_documented_with_the_value_the_parsers_enforce() {
    let doc = doc_json();
    let schema = |name: &str| doc["components"]["schemas"][name].clone();
    for name in ["Identifier", "UniqueId", "Tag"] {
        assert_eq!(
            schema(name)["maxLength"],
            json!(MAX_IDENTIFIER_BYTES),
            "{name}"
        );
    }
    assert_eq!(schema("Tags")["maxItems"], json!(MAX_TAGS));
    assert_eq!(schema("Text")["maxLength"], json!(MAX_TEXT_BYTES));
    assert_eq!(schema("CallbackUrl")["maxLength"], json!(MAX_URL_BYTES));
    assert_eq!(schema("Metadata")["x-max-bytes"], json!(MAX_METADATA_BYTES));
    assert_eq!(schema("Json")["x-max-bytes"], json!(MAX_JSON_BYTES));
    for name in ["Metadata", "Json"] {
        assert_eq!(schema(name)["x-max-depth"], json!(MAX_JSON_DEPTH), "{name}");
    }
    // The bodies use them.
    let create = schema("CreateTaskBody");
    for (field, target) in [
        ("project", "Identifier"),
        ("batch", "Identifier"),
        ("unique_id", "UniqueId"),
        ("tags", "Tags"),
        ("metadata", "Metadata"),
        ("instruction", "Text"),
        ("callback_url", "CallbackUrl"),
    ] {
        // The flattened type fields make the schema an allOf; look anywhere in it.
        let text = create.to_string();
        assert!(
            text.contains(&format!(
                "\"{field}\":{{\"$ref\":\"#/components/schemas/{target}\""
            )),
            "{field}: {text}"
        );
    }
    let list = &doc["paths"]["/v1/tasks"]["get"]["parameters"];
    let param = |name: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()
            .clone()
    };
    for name in ["project", "batch"] {
        assert_eq!(
            param(name)["schema"]["maxLength"],
            json!(MAX_IDENTIFIER_BYTES),
            "{name}"
        );
    }
    for name in ["tags", "unique_id"] {
        assert_eq!(
            param(name)["schema"]["maxItems"],
            json!(MAX_FILTER_VALUES),
            "{name}"
        );
    }
    assert_eq!(
        param("next_token")["schema"]["maxLength"],
        json!(MAX_TOKEN_BYTES)
    );
}

#[test]
fn the_task_schema_is_the_view_that_is_served() {
    let doc = doc_json();
    let task = &doc["components"]["schemas"]["Task"];
    assert_eq!(
        task["properties"]["type"]["enum"],
        json!(TaskType::ALL.map(TaskType::as_str))
    );
    let required: BTreeSet<&str> = task["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    // Keys the view always serializes are required; the ones it omits when empty are not.
    for key in [
        "task_id",
        "created_at",
        "status",
        "params",
        "metadata",
        "audits",
    ] {
        assert!(required.contains(key), "{key}");
    }
    for key in ["completed_at", "response", "tags", "unique_id", "project"] {
        assert!(!required.contains(key), "{key}");
    }
    assert!(doc["components"]["schemas"]["EventEnvelope"].is_object());
    assert!(doc["components"]["schemas"]["HistoryEntry"].is_object());
}

#[test]
fn the_document_is_valid_json_with_an_api_version() {
    let doc = doc_json();
    if let Ok(path) = std::env::var("TASKLEDGER_DUMP_OPENAPI") {
        std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    }
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
}

/// Clients generate code from the operation ids, which utoipa takes from the handlers' fn
/// names, and group it by tag, which the conventions derive from the path: a renamed handler
/// or a moved route must not change either silently.
#[test]
fn every_operation_keeps_its_published_operation_id_and_tag() {
    let doc = doc_json();
    let mut served = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let tags = op["tags"].as_array().unwrap();
            assert_eq!(tags.len(), 1, "{method} {path}");
            let id = op["operationId"].as_str().unwrap();
            served.insert((tags[0].as_str().unwrap().to_string(), id.to_string()));
        }
    }
    let published: BTreeSet<(String, String)> = [
        ("operations", "openapi healthz readyz metrics"),
        ("events", "list_events list_schemas"),
        (
            "ledger",
            "ledger_digest ledger_public_keys inclusion_proof consistency_proof",
        ),
        ("keys", "list_keys"),
        (
            "projects",
            "create_project list_projects get_project set_project_params",
        ),
        (
            "batches",
            "create_batch list_batches get_batch finalize_batch batch_status \
             set_batch_metadata",
        ),
        (
            "tasks",
            "create_task retrieve_task task_history list_tasks cancel_task set_task_metadata \
             set_task_unique_id clear_task_unique_id add_task_tags set_task_tags \
             remove_task_tags audit_task complete_task error_task",
        ),
    ]
    .into_iter()
    .flat_map(|(tag, ids)| {
        ids.split_whitespace()
            .map(move |id| (tag.into(), id.into()))
    })
    .collect();
    assert_eq!(served, published);
}

#[test]
fn the_create_operation_lists_every_task_types_rules_as_validation_runs_them() {
    let doc = doc_json();
    let create = &doc["paths"]["/v1/task/{id}"]["post"];
    let id = create["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "id")
        .expect("the type is a path parameter");
    let description = id["description"].as_str().unwrap();
    for row in TYPE_RULES {
        let needs: Vec<String> = row.requires.iter().map(|r| r.describe()).collect();
        assert_eq!(
            id["x-task-type-rules"][row.task_type.as_str()],
            json!(needs)
        );
        assert!(
            description.contains(&format!("`{}`: {}", row.task_type, needs.join("; "))),
            "{}",
            row.task_type
        );
    }
    assert_eq!(
        id["schema"]["enum"].as_array().unwrap().len(),
        TYPE_RULES.len()
    );
}
