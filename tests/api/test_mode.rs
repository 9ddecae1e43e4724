//! Test mode (issue 12): what a test-mode key creates is test data, kept apart from the
//! account's live data on every read, while the account's contributor keys work on it as usual.

use serde_json::{json, Value};
use taskledger_events::EventEnvelope;
use taskledger_events::Scope;

use crate::helpers::{on_both_backends, spawn_app, Backend, TestApp};

/// acme's test-mode customer key.
async fn feed(app: &TestApp, key: &str, query: &str) -> Vec<EventEnvelope> {
    let reply = app
        .as_key(key)
        .get(&format!("/v1/events?limit=1000{query}"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    serde_json::from_value(reply.body["events"].clone()).unwrap()
}

async fn listed(app: &TestApp, key: &str, query: &str) -> (Vec<String>, Value) {
    let reply = app.as_key(key).get(&format!("/v1/tasks?{query}")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let ids = reply.body["docs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["task_id"].as_str().unwrap().to_string())
        .collect();
    (ids, reply.body["total"].clone())
}

fn categorization(extra: Value) -> Value {
    let mut body = json!({
        "attachment_type": "text", "attachment": "car", "categories": ["big", "small"],
        "project": "p1", "tags": ["t"],
    });
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        body[k] = v;
    }
    body
}

async fn a_test_key_and_a_live_key_never_see_each_others_tasks_on_any_read(backend: Backend) {
    let app = spawn_app(backend).await;
    let test = app.test_key().await;
    let live_task = app
        .post(
            "/v1/task/categorization",
            categorization(json!({"unique_id": "u1"})),
        )
        .await;
    assert_eq!(
        live_task.body["is_test"],
        json!(false),
        "{}",
        live_task.body
    );
    let live = live_task.task_id();
    let test_task = app
        .as_key(&test)
        .post(
            "/v1/task/categorization",
            categorization(json!({"unique_id": "u1"})),
        )
        .await;
    // The same unique_id: test data has its own unique_ids, it never blocks a live one.
    assert_eq!(test_task.body["is_test"], json!(true), "{}", test_task.body);
    let tested = test_task.task_id();

    // GET, history and as_of: the other mode's task does not exist.
    for (key, own, other) in [(&app.key, &live, &tested), (&test, &tested, &live)] {
        let k = app.as_key(key);
        assert_eq!(k.get(&format!("/v1/task/{own}")).await.status, 200);
        assert_eq!(k.get(&format!("/v1/task/{other}")).await.status, 404);
        assert_eq!(k.get(&format!("/v1/task/{own}/history")).await.status, 200);
        assert_eq!(
            k.get(&format!("/v1/task/{other}/history")).await.status,
            404
        );
        let later = "2100-01-01T00:00:00Z";
        let as_of = k.get(&format!("/v1/task/{other}?as_of={later}")).await;
        assert_eq!(as_of.status, 404, "{}", as_of.body);
        // Commands too: a customer cannot change the other mode's task.
        let cancel = k
            .post(&format!("/v1/task/{other}/cancel"), Value::Null)
            .await;
        assert_eq!(cancel.status, 404, "{}", cancel.body);
    }

    // Lists and their totals, with and without a filter the counts projection serves.
    for query in ["", "project=p1", "status=pending", "tags=t", "unique_id=u1"] {
        let (ids, total) = listed(&app, &app.key, query).await;
        assert_eq!(ids, vec![live.clone()], "live {query}");
        assert_eq!(total, json!(1), "live total {query}");
        let (ids, total) = listed(&app, &test, query).await;
        assert_eq!(ids, vec![tested.clone()], "test {query}");
        assert_eq!(total, json!(1), "test total {query}");
    }

    // The events feed, with and without a search filter.
    for query in ["", "&event_type=TaskCreated"] {
        let live_feed = feed(&app, &app.key, query).await;
        assert!(live_feed.iter().all(|e| !e.is_test && e.task_id != tested));
        assert!(live_feed.iter().any(|e| e.task_id == live));
        let test_feed = feed(&app, &test, query).await;
        assert!(!test_feed.is_empty());
        // Besides the task's events, the feed holds the test project (`p1`) the task
        // created by naming it: test data too.
        assert!(test_feed.iter().all(|e| e.is_test
            && (e.task_id == tested
                || taskledger_events::LedgerEvent::is_other_stream_type(&e.event_type))));
        for e in &test_feed {
            assert!(e.hash_matches(), "a test event verifies like any other");
            assert_eq!(e.account_id, format!("{}:test", live_feed[0].account_id));
        }
    }
}

async fn the_merkle_tree_a_digest_signs_is_exactly_the_callers_feed(backend: Backend) {
    let app = spawn_app(backend).await;
    let test = app.test_key().await;
    app.create(json!({})).await.task_id();
    for _ in 0..3 {
        app.as_key(&test)
            .post("/v1/task/categorization", categorization(json!({})))
            .await
            .task_id();
    }
    for key in [&app.key, &test] {
        let digest = app.as_key(key).get("/v1/ledger/digest").await;
        assert_eq!(digest.status, 200, "{}", digest.body);
        let events = feed(&app, key, "").await;
        assert_eq!(digest.body["tree_size"], json!(events.len()));
        let last = events.last().unwrap().event_id;
        let proof = app
            .as_key(key)
            .get(&format!(
                "/v1/ledger/proof/inclusion?event_id={last}&tree_size={}",
                events.len()
            ))
            .await;
        assert_eq!(proof.status, 200, "{}", proof.body);
    }
    let live_event = feed(&app, &app.key, "").await.last().unwrap().event_id;
    let crossed = app
        .as_key(&test)
        .get(&format!(
            "/v1/ledger/proof/inclusion?event_id={live_event}&tree_size=3"
        ))
        .await;
    assert_eq!(crossed.status, 404, "a live event is not in the test tree");
}

async fn the_accounts_contributor_keys_complete_test_tasks_as_usual(backend: Backend) {
    let app = spawn_app(backend).await;
    let test = app.test_key().await;
    let id = app
        .as_key(&test)
        .post("/v1/task/categorization", categorization(json!({})))
        .await
        .task_id();
    // With an Idempotency-Key too: the claim is the account's, whichever ledger the task is in.
    let complete = async || {
        crate::helpers::keyed(
            &app,
            "complete-1",
            &app.contributor_key,
            &format!("/v1/task/{id}/complete"),
            json!({"response": {"category": "big"}}),
        )
        .await
    };
    let completed = complete().await;
    assert_eq!(completed.status, 200, "{}", completed.body);
    assert_eq!(complete().await.body, completed.body, "replayed");
    let done = app.as_key(&test).get(&format!("/v1/task/{id}")).await;
    assert_eq!(done.body["status"], "completed", "{}", done.body);
    assert_eq!(done.body["is_test"], json!(true));
    let events = feed(&app, &test, "").await;
    let completed = events
        .iter()
        .find(|e| e.event_type == "TaskCompleted")
        .expect("the completion is in the test feed");
    assert!(completed.is_test && completed.hash_matches());
    let (_, total) = listed(&app, &app.key, "status=completed").await;
    assert_eq!(total, json!(0), "the live counts never saw it");
    let (_, total) = listed(&app, &test, "status=completed").await;
    assert_eq!(total, json!(1));
    // Another account's contributor cannot reach it.
    let (_, stranger) = app
        .store
        .create_key("globex", Scope::Contributor)
        .await
        .unwrap();
    let refused = app
        .as_key(&stranger)
        .post(&format!("/v1/task/{id}/error"), json!({"error": "cannot"}))
        .await;
    assert_eq!(refused.status, 404, "{}", refused.body);
}

async fn verify_and_replay_keep_each_modes_tree_and_views(backend: Backend) {
    let app = spawn_app(backend).await;
    let test = app.test_key().await;
    let live = app.create(json!({})).await.task_id();
    let tested = app
        .as_key(&test)
        .post("/v1/task/categorization", categorization(json!({})))
        .await
        .task_id();
    app.complete(&tested).await;
    let digest = |key: &str| {
        let key = key.to_string();
        let app = &app;
        async move {
            let d = app.as_key(&key).get("/v1/ledger/digest").await.body;
            (d["tree_size"].clone(), d["root"].clone())
        }
    };
    let (live_before, test_before) = (digest(&app.key).await, digest(&test).await);
    let body_before = app
        .as_key(&test)
        .get(&format!("/v1/task/{tested}"))
        .await
        .body;
    sqlx::raw_sql("DELETE FROM merkle_nodes")
        .execute(app.store.pool())
        .await
        .unwrap();
    let url = app._db.url.clone();
    let replayed = crate::helpers::process::taskledger(&url, &["replay"]);
    assert!(replayed.status.success(), "{replayed:?}");
    let verified = crate::helpers::process::taskledger(&url, &["verify"]);
    assert!(verified.status.success(), "{verified:?}");
    assert_eq!(digest(&app.key).await, live_before);
    assert_eq!(digest(&test).await, test_before);
    let body_after = app
        .as_key(&test)
        .get(&format!("/v1/task/{tested}"))
        .await
        .body;
    assert_eq!(body_after, body_before);
    assert_eq!(app.get(&format!("/v1/task/{live}")).await.status, 200);
    assert_eq!(app.get(&format!("/v1/task/{tested}")).await.status, 404);
}

on_both_backends!(
    verify_and_replay_keep_each_modes_tree_and_views,
    a_test_key_and_a_live_key_never_see_each_others_tasks_on_any_read,
    the_merkle_tree_a_digest_signs_is_exactly_the_callers_feed,
    the_accounts_contributor_keys_complete_test_tasks_as_usual,
);
