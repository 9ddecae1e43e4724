//! Hostile input (issue 8): every bad value answers a 4xx naming the field before it reaches
//! the store, so none can fail there, fail a group-commit batch, or poison a reader. The
//! PostgreSQL-specific failures (U+0000, B-tree row limits) run on both backends; the rest
//! is HTTP-only and runs on SQLite.

use reqwest::Method;
use serde_json::{json, Value};
use taskledger::domain::limits::{
    MAX_IDENTIFIER_BYTES, MAX_JSON_BYTES, MAX_JSON_DEPTH, MAX_METADATA_BYTES, MAX_TAGS,
    MAX_TEXT_BYTES, MAX_URL_BYTES,
};

use crate::helpers::{backends, metric_value, spawn_app, Backend, TestApp};

/// `depth` nested objects around a scalar: `{"d": {"d": ... 1}}`.
fn nested(depth: usize) -> Value {
    let mut v = json!(1);
    for _ in 0..depth {
        v = json!({ "d": v });
    }
    v
}

/// A body as raw text, for values `json!` cannot build (nesting past serde's 128).
async fn post_raw(app: &TestApp, path: &str, body: String) -> crate::helpers::Reply {
    let response = app
        .client
        .post(app.url(path))
        .basic_auth(&app.key, Some(""))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("the server answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    crate::helpers::Reply {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
    }
}

async fn total_tasks(app: &TestApp) -> u64 {
    let listed = app.get("/v1/tasks").await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    listed.body["total"].as_u64().unwrap()
}

async fn nul_in_any_string_field_is_a_400_naming_the_field(backend: Backend) {
    let app = spawn_app(backend).await;
    for field in ["project", "batch", "unique_id", "instruction"] {
        app.create(json!({ field: "a\u{0}b" }))
            .await
            .assert_error(400, field);
    }
    app.create(json!({"tags": ["ok", "t\u{0}"]}))
        .await
        .assert_error(400, "tags");
    app.create(json!({"callback_url": "http://example.com/cb%00"}))
        .await
        .assert_error(400, "callback_url");
    app.create(json!({"callback_url": "http://example.com/cb\u{0}"}))
        .await
        .assert_error(400, "callback_url");
    app.create(json!({"metadata": {"k": "v\u{0}"}}))
        .await
        .assert_error(400, "metadata");
    app.create(json!({"attachment": "car\u{0}"}))
        .await
        .assert_error(400, "attachment");
    assert_eq!(total_tasks(&app).await, 0, "nothing was written");

    let id = app.create(json!({})).await.task_id();
    app.post(
        &format!("/v1/task/{id}/unique_id"),
        json!({"unique_id": "\u{0}"}),
    )
    .await
    .assert_error(400, "unique_id");
    for method in [Method::PUT, Method::POST, Method::DELETE] {
        app.as_key(&app.key)
            .send(
                method,
                &format!("/v1/task/{id}/tags"),
                Some(json!(["\u{0}"])),
            )
            .await
            .assert_error(400, "tags");
    }
    assert_eq!(app.history_len(&id).await, 1);
}

async fn identifiers_at_the_limit_are_stored_and_8_kb_ones_are_400s(backend: Backend) {
    let app = spawn_app(backend).await;
    let at_limit = "é".repeat(MAX_IDENTIFIER_BYTES / 2) + "x";
    assert_eq!(at_limit.len(), MAX_IDENTIFIER_BYTES);
    let stored = app
        .create(json!({
            "project": at_limit, "batch": at_limit, "unique_id": at_limit, "tags": [at_limit]
        }))
        .await;
    assert_eq!(stored.status, 200, "{}", stored.body);
    assert_eq!(stored.body["unique_id"], at_limit.as_str());
    let found = app
        .get(&format!(
            "/v1/tasks?project={}&tags={}",
            urlencode(&at_limit),
            urlencode(&at_limit)
        ))
        .await;
    assert_eq!(found.body["total"], 1, "{}", found.body);

    let over = "x".repeat(MAX_IDENTIFIER_BYTES + 1);
    let random_8k: String = (0..8 * 1024)
        .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
        .collect();
    for value in [over.as_str(), random_8k.as_str()] {
        for field in ["project", "batch", "unique_id"] {
            let reply = app.create(json!({ field: value })).await;
            reply.assert_error(400, field);
            reply.assert_error(400, &MAX_IDENTIFIER_BYTES.to_string());
        }
        app.create(json!({ "tags": [value] }))
            .await
            .assert_error(400, "tags");
    }
    assert_eq!(total_tasks(&app).await, 1);
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn json_nested_past_the_limit_is_a_400_naming_the_field(backend: Backend) {
    let app = spawn_app(backend).await;
    // At the limit: stored, read back and listed (the stored event nests deeper still).
    let deepest = nested(MAX_JSON_DEPTH);
    let ok = app.create(json!({ "metadata": deepest })).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let id = ok.task_id();
    assert_eq!(
        app.get(&format!("/v1/task/{id}")).await.body["metadata"],
        deepest
    );
    assert_eq!(app.history_len(&id).await, 1);

    for depth in [MAX_JSON_DEPTH + 1, 127] {
        app.create(json!({ "metadata": nested(depth) }))
            .await
            .assert_error(400, "metadata");
        app.create(json!({ "geometry_hint": nested(depth) }))
            .await
            .assert_error(400, "geometry_hint");
        app.post(&format!("/v1/task/{id}/setMetadata"), nested(depth))
            .await
            .assert_error(400, "metadata");
    }
    // Past serde_json's own limit of 128: still a 400 naming the field, not a parse error.
    let deep_text = format!(
        "{{\"attachment\": \"car\", \"attachment_type\": \"text\", \"categories\": [\"a\"], \
         \"metadata\": {}1{}}}",
        "[".repeat(500),
        "]".repeat(500)
    );
    post_raw(&app, "/v1/task/categorization", deep_text)
        .await
        .assert_error(400, "metadata");
    post_raw(
        &app,
        &format!("/v1/task/{id}/setMetadata"),
        format!("{}1{}", "[".repeat(500), "]".repeat(500)),
    )
    .await
    .assert_error(400, "metadata");
    app.as_key(&app.contributor_key)
        .post(
            &format!("/v1/task/{id}/complete"),
            json!({ "response": nested(127) }),
        )
        .await
        .assert_error(400, "response");
    app.as_key(&app.contributor_key)
        .post(
            &format!("/v1/task/{id}/error"),
            json!({ "error": "bad", "detail": nested(127) }),
        )
        .await
        .assert_error(400, "detail");
    app.as_key(&app.contributor_key)
        .post(
            &format!("/v1/task/{id}/error"),
            json!({ "error": nested(MAX_JSON_DEPTH + 1) }),
        )
        .await
        .assert_error(400, "error");
    assert_eq!(total_tasks(&app).await, 1);
    assert_eq!(app.history_len(&id).await, 1, "no refused command appended");
}

async fn list_filters_with_nul_or_over_the_limit_are_400s_naming_the_parameter(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create(json!({"project": "p", "tags": ["t"], "unique_id": "u"}))
        .await
        .task_id();
    let over = "x".repeat(MAX_IDENTIFIER_BYTES + 1);
    for name in ["project", "batch", "tags", "unique_id"] {
        for value in ["%00", "a%00b", over.as_str()] {
            app.get(&format!("/v1/tasks?{name}={value}"))
                .await
                .assert_error(400, name);
        }
    }
    let many = vec!["tags=t"; 101].join("&");
    app.get(&format!("/v1/tasks?{many}"))
        .await
        .assert_error(400, "tags");
    app.get(&format!("/v1/tasks?next_token={}", "A".repeat(5000)))
        .await
        .assert_error(400, "next_token");
    let found = app.get("/v1/tasks?project=p&tags=t&unique_id=u").await;
    assert_eq!(
        found.body["total"], 1,
        "good filters still work: {}",
        found.body
    );
}

async fn a_task_holds_at_most_the_tag_limit_and_150k_tags_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let tags = |from: usize, to: usize| -> Vec<String> {
        (from..to).map(|i| format!("tag-{i}")).collect()
    };
    app.create(json!({ "tags": tags(0, MAX_TAGS + 1) }))
        .await
        .assert_error(400, "tags");
    let id = app
        .create(json!({ "tags": tags(0, MAX_TAGS - 1) }))
        .await
        .task_id();
    let path = format!("/v1/task/{id}/tags");
    let added = app
        .as_key(&app.key)
        .send(Method::PUT, &path, Some(json!(tags(0, MAX_TAGS))))
        .await;
    assert_eq!(added.status, 200, "{}", added.body);
    assert_eq!(added.body["tags"].as_array().unwrap().len(), MAX_TAGS);
    let reply = app
        .as_key(&app.key)
        .send(Method::PUT, &path, Some(json!(["one-more"])))
        .await;
    reply.assert_error(400, "tags");
    reply.assert_error(400, &MAX_TAGS.to_string());
    // 150 000 distinct tags: refused from the first one past the limit.
    let huge = tags(0, 150_000);
    for method in [Method::POST, Method::PUT, Method::DELETE] {
        app.as_key(&app.key)
            .send(method, &path, Some(json!(huge)))
            .await
            .assert_error(400, "tags");
    }
    app.create(json!({ "tags": huge }))
        .await
        .assert_error(400, "tags");
    assert_eq!(
        app.get(&format!("/v1/task/{id}")).await.body["tags"]
            .as_array()
            .unwrap()
            .len(),
        MAX_TAGS
    );
    assert_eq!(app.get("/healthz").await.status, 200);
}

async fn values_over_their_size_limit_are_400s_naming_the_field_and_the_limit(backend: Backend) {
    let app = spawn_app(backend).await;
    // The 1.5 MB attachment that once halted the relay.
    let reply = app
        .create(json!({ "attachment": "x".repeat(1_500_000) }))
        .await;
    reply.assert_error(400, "attachment");
    reply.assert_error(400, &MAX_JSON_BYTES.to_string());
    let reply = app
        .create(json!({ "instruction": "x".repeat(MAX_TEXT_BYTES + 1) }))
        .await;
    reply.assert_error(400, "instruction");
    reply.assert_error(400, &MAX_TEXT_BYTES.to_string());
    let half = "x".repeat(MAX_JSON_BYTES / 2);
    app.create(json!({ "extra_a": half, "extra_b": half }))
        .await
        .assert_error(400, "params");
    let id = app.create(json!({})).await.task_id();
    app.as_key(&app.contributor_key)
        .post(
            &format!("/v1/task/{id}/complete"),
            json!({ "response": { "text": "x".repeat(MAX_JSON_BYTES) } }),
        )
        .await
        .assert_error(400, "response");
    assert_eq!(total_tasks(&app).await, 1);
}

/// The sum of the batch-size histogram counts every command each commit transaction
/// carried; a batch that failed and fell back to one transaction per command counts its
/// commands twice.
async fn commands_in_commit_transactions(app: &TestApp) -> f64 {
    metric_value(&app.metrics().await, "taskledger_append_batch_size_sum").unwrap_or(0.0)
}

async fn bad_requests_among_concurrent_good_ones_never_reach_a_commit_batch(backend: Backend) {
    let app = spawn_app(backend).await;
    let before = commands_in_commit_transactions(&app).await;
    let bad_bodies = [
        json!({"project": "p\u{0}"}),
        json!({"unique_id": "x".repeat(8 * 1024)}),
        json!({"tags": ["\u{0}"]}),
        json!({"metadata": nested(127)}),
        json!({"batch": "b\u{0}"}),
    ];
    let mut replies = Vec::new();
    let app = std::sync::Arc::new(app);
    for i in 0..40 {
        let app = app.clone();
        let body = if i % 4 == 0 {
            bad_bodies[i / 4 % bad_bodies.len()].clone()
        } else {
            json!({ "unique_id": format!("good-{i}") })
        };
        replies.push(tokio::spawn(async move { (i, app.create(body).await) }));
    }
    let mut good = 0;
    for reply in replies {
        let (i, reply) = reply.await.unwrap();
        if i % 4 == 0 {
            assert_eq!(reply.status, 400, "{}", reply.body);
        } else {
            assert_eq!(reply.status, 200, "{}", reply.body);
            good += 1;
        }
    }
    assert_eq!(total_tasks(&app).await, good);
    let committed = commands_in_commit_transactions(&app).await - before;
    assert_eq!(
        committed, good as f64,
        "every command was committed once: no batch failed and fell back"
    );
}

/// `bytes` bytes of multi-byte text (plus ASCII to fill), unique by `seed`.
fn text_of(bytes: usize, seed: usize) -> String {
    let head = format!("{seed}-");
    let wide = "é".repeat((bytes - head.len()) / 2);
    let fill = "x".repeat(bytes - head.len() - wide.len());
    format!("{head}{wide}{fill}")
}

/// The largest values the limits allow all fit the store, the list index and the event
/// stream together: a value the edge accepts never fails later.
async fn a_task_with_every_field_at_its_limit_is_stored_listed_and_completed(backend: Backend) {
    let app = spawn_app(backend).await;
    let identifier = text_of(MAX_IDENTIFIER_BYTES, 0);
    let tags: Vec<String> = (0..MAX_TAGS)
        .map(|i| text_of(MAX_IDENTIFIER_BYTES, i))
        .collect();
    let url = format!(
        "https://example.com/{}",
        "p".repeat(MAX_URL_BYTES - "https://example.com/".len())
    );
    // Serialized metadata and the attachment land exactly on their limits.
    let metadata = json!({ "k": "m".repeat(MAX_METADATA_BYTES - r#"{"k":""}"#.len()) });
    let attachment = "a".repeat(MAX_JSON_BYTES / 2);
    let created = app
        .create(json!({
            "project": identifier, "batch": identifier, "unique_id": identifier,
            "tags": tags, "callback_url": url, "metadata": metadata,
            "instruction": text_of(MAX_TEXT_BYTES, 0),
            "attachment": attachment, "nested": nested(MAX_JSON_DEPTH),
        }))
        .await;
    assert_eq!(created.status, 200, "{}", created.body);
    let id = created.task_id();
    assert_eq!(created.body["tags"].as_array().unwrap().len(), MAX_TAGS);
    let query = format!(
        "/v1/tasks?project={p}&batch={p}&unique_id={p}&tags={t}&tags={u}",
        p = urlencode(&identifier),
        t = urlencode(&tags[0]),
        u = urlencode(&tags[MAX_TAGS - 1])
    );
    assert_eq!(app.get(&query).await.body["total"], 1);
    let done = app
        .as_key(&app.contributor_key)
        .post(
            &format!("/v1/task/{id}/complete"),
            json!({ "response": { "text": "r".repeat(MAX_JSON_BYTES - 100) } }),
        )
        .await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(app.history_len(&id).await, 2);
    let events = app.get(&format!("/v1/events?task_id={id}")).await;
    assert_eq!(events.body["events"].as_array().unwrap().len(), 2);
}

/// The typed bodies keep the old leniency: a null common field is an absent one.
async fn null_common_fields_are_absent_ones(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app
        .create(json!({
            "project": null, "batch": null, "unique_id": null, "metadata": null,
            "tags": null, "clear_unique_id_on_error": null, "instruction": null
        }))
        .await;
    assert_eq!(created.status, 200, "{}", created.body);
    assert_eq!(created.body["metadata"], json!({}));
    assert!(created.body.get("tags").is_none());
    assert!(created.body.get("project").is_none());
}

// The tag and size limits are the edge's (HTTP-only): the backend plays no part.
backends!(
    both: [
        a_task_with_every_field_at_its_limit_is_stored_listed_and_completed,
        nul_in_any_string_field_is_a_400_naming_the_field,
        identifiers_at_the_limit_are_stored_and_8_kb_ones_are_400s,
        json_nested_past_the_limit_is_a_400_naming_the_field,
        list_filters_with_nul_or_over_the_limit_are_400s_naming_the_parameter,
        bad_requests_among_concurrent_good_ones_never_reach_a_commit_batch,
    ],
    sqlite: [
        null_common_fields_are_absent_ones,
        a_task_holds_at_most_the_tag_limit_and_150k_tags_are_refused,
        values_over_their_size_limit_are_400s_naming_the_field_and_the_limit,
    ],
);
