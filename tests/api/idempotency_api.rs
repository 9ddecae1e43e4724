//! `Idempotency-Key`: replay, conflicts, concurrency, expiry; and the `/v1/events` feed.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::helpers::{
    backends, eventually, keyed, ok_if, spawn_app, spawn_app_with, task_body, Backend, CREATE,
    PATIENCE,
};

async fn a_repeated_request_replays_the_first_answer_and_creates_one_task(backend: Backend) {
    let app = spawn_app(backend).await;
    let first = keyed(&app, "k-1", &app.key, CREATE, task_body()).await;
    assert_eq!(first.status, 200);
    let second = keyed(&app, "k-1", &app.key, CREATE, task_body()).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.body, first.body);
    assert_eq!(second.headers["idempotent-replayed"], "true");
    assert_eq!(app.get("/v1/tasks").await.body["total"], 1);

    // Errors are stored and replayed too.
    let bad = keyed(&app, "k-2", &app.key, CREATE, json!({"attachment": "car"})).await;
    assert_eq!(bad.status, 400);
    let bad_again = keyed(&app, "k-2", &app.key, CREATE, json!({"attachment": "car"})).await;
    assert_eq!((bad_again.status, &bad_again.body), (400, &bad.body));

    // Every mutating endpoint honours the key.
    let id = first.task_id();
    let path = format!("/v1/task/{id}/setMetadata");
    let set = keyed(&app, "k-3", &app.key, &path, json!({"n": 1})).await;
    // Changed by someone else meanwhile: the replay still answers what the key's request got.
    app.post(&path, json!({"n": 2})).await;
    let replay = keyed(&app, "k-3", &app.key, &path, json!({"n": 1})).await;
    assert_eq!(replay.body, set.body);
    assert_eq!(replay.body["metadata"], json!({"n": 1}));
}

async fn a_key_reused_for_another_request_is_refused_and_another_account_has_its_own(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let first = keyed(&app, "k-1", &app.key, CREATE, task_body()).await;
    let mut other_body = task_body();
    other_body["instruction"] = json!("different");
    keyed(&app, "k-1", &app.key, CREATE, other_body)
        .await
        .assert_error(409, "Idempotency-Key");
    // Keys belong to an account: another account's "k-1" is another key.
    let others = keyed(&app, "k-1", &app.other_key, CREATE, task_body()).await;
    assert_eq!(others.status, 200, "{}", others.body);
    assert_ne!(others.task_id(), first.task_id());
    let id = first.task_id();
    keyed(
        &app,
        "k-1",
        &app.key,
        &format!("/v1/task/{id}/tags"),
        json!(["a"]),
    )
    .await
    .assert_error(400, "Idempotency-Key");
    assert_eq!(app.get("/v1/tasks").await.body["total"], 1);
    assert_eq!(
        app.as_key(&app.other_key).get("/v1/tasks").await.body["total"],
        1
    );
}

async fn concurrent_requests_with_one_key_run_once(backend: Backend) {
    let app = Arc::new(spawn_app(backend).await);
    let mut handles = Vec::new();
    for _ in 0..10 {
        let app = app.clone();
        handles.push(tokio::spawn(async move {
            keyed(&app, "same", &app.key, CREATE, task_body()).await
        }));
    }
    let mut task_ids = std::collections::HashSet::new();
    for h in handles {
        let reply = h.await.unwrap();
        match reply.status {
            200 => {
                task_ids.insert(reply.task_id());
            }
            429 => {
                assert_eq!(reply.headers["retry-after"], "1");
                assert_eq!(reply.body["status_code"], 429);
            }
            other => panic!("unexpected {other}: {}", reply.body),
        }
    }
    assert_eq!(task_ids.len(), 1, "every 200 is the same task");
    assert_eq!(app.get("/v1/tasks").await.body["total"], 1);
}

async fn an_expired_key_is_forgotten_and_purged(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.idempotency_ttl_secs = 1).await;
    let first = keyed(&app, "short", &app.key, CREATE, task_body())
        .await
        .task_id();
    // Until the key expires the request is a replay of the first; then it runs anew.
    eventually(PATIENCE, "the key to expire", async || {
        let again = keyed(&app, "short", &app.key, CREATE, task_body())
            .await
            .task_id();
        ok_if(again != first, again)
    })
    .await;
    assert_eq!(app.get("/v1/tasks").await.body["total"], 2);
    // Purging keeps a key until it expires, then removes it once.
    let mut purged = 0;
    eventually(PATIENCE, "the key to be purged", async || {
        purged += app
            .store
            .purge_idempotency_keys(chrono::Utc::now().timestamp_micros())
            .await
            .unwrap();
        ok_if(purged >= 1, purged)
    })
    .await;
    assert_eq!(purged, 1);
}

async fn the_events_feed_serves_the_accounts_envelopes_in_global_order(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.create(json!({})).await.task_id();
    app.as_key(&app.other_key)
        .post("/v1/task/documenttranscription", json!({"attachment": "x"}))
        .await;
    app.post(&format!("/v1/task/{id}/setMetadata"), json!({"a": 1}))
        .await;
    app.post(&format!("/v1/task/{id}/cancel"), Value::Null)
        .await;

    // Positions 1 to 3 are the fixture's three API keys (events of their accounts).
    let page = app.get("/v1/events?after=3&limit=2").await;
    assert_eq!(page.status, 200);
    let events = page.body["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(page.body["has_more"], true);
    assert_eq!(events[0]["event_type"], "TaskCreated");
    assert_eq!(events[0]["global_position"], 4);
    assert_eq!(
        events[1]["global_position"], 6,
        "position 5 belongs to another account"
    );
    for e in events {
        assert_eq!(e["task_id"], id.as_str());
        for field in [
            "event_id",
            "event_version",
            "account_id",
            "sequence",
            "recorded_at",
            "actor",
            "payload",
            "hash",
        ] {
            assert!(e.get(field).is_some(), "{field}");
        }
    }
    let next = page.body["next_after"].as_i64().unwrap();
    let rest = app.get(&format!("/v1/events?after={next}")).await;
    let rest = rest.body["events"].as_array().unwrap().clone();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0]["event_type"], "TaskCanceled");
    let other = app.as_key(&app.other_key).get("/v1/events?after=3").await;
    assert_eq!(other.body["events"].as_array().unwrap().len(), 1);
    app.get("/v1/events?after=-1")
        .await
        .assert_error(400, "after");
    app.get("/v1/events?limit=0")
        .await
        .assert_error(400, "limit");
}

// Racing claims of one key are settled by the database: both backends. The rest is HTTP.
backends!(
    both: [concurrent_requests_with_one_key_run_once],
    sqlite: [
        a_repeated_request_replays_the_first_answer_and_creates_one_task,
        a_key_reused_for_another_request_is_refused_and_another_account_has_its_own,
        an_expired_key_is_forgotten_and_purged,
        the_events_feed_serves_the_accounts_envelopes_in_global_order,
    ],
);
