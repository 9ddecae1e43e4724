//! Batches through the API: every endpoint, the lifecycle, the rules for tasks joining a
//! batch, exactly one `BatchCompleted` under racing completions, and test-mode isolation.

use futures::future::join_all;
use serde_json::{json, Value};

use crate::callbacks::{app_for_callbacks, receiver, Step};
use crate::helpers::{
    assert_ledger_intact, eventually, on_both_backends, spawn_app, Backend, TestApp, PATIENCE,
};

async fn with_project(backend: Backend) -> TestApp {
    let app = spawn_app(backend).await;
    let created = app
        .post(
            "/v1/projects",
            json!({"type": "categorization", "name": "kittens"}),
        )
        .await;
    assert_eq!(created.status, 200, "{}", created.body);
    app
}

async fn batch(app: &TestApp, name: &str) -> Value {
    let reply = app
        .post(
            "/v1/batches",
            json!({"project": "kittens", "name": name, "callback": "",
                   "calibration_batch": false, "self_label_batch": false,
                   "metadata": {"owner": "dana"}}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

async fn count_events(app: &TestApp, event_type: &str) -> usize {
    let reply = app
        .get(&format!("/v1/events?limit=1000&event_type={event_type}"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["events"].as_array().unwrap().len()
}

async fn status(app: &TestApp, name: &str) -> Value {
    let reply = app.get(&format!("/v1/batches/{name}/status")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

async fn every_batch_endpoint_answers_in_the_references_shape(backend: Backend) {
    let app = with_project(backend).await;
    let created = batch(&app, "b1").await;
    assert_eq!(created["status"], "staging");
    assert_eq!(created["project"], "kittens");
    assert_eq!(created["metadata"], json!({"owner": "dana"}));
    assert!(created["created_at"].is_string());
    assert_eq!(app.get("/v1/batches/b1").await.body, created);
    let set = app
        .post("/v1/batches/b1/setMetadata", json!({"owner": "lee"}))
        .await;
    assert_eq!(set.body["metadata"], json!({"owner": "lee"}));
    assert_eq!(
        status(&app, "b1").await,
        json!({"status": "staging", "pending": 0, "completed": 0, "error": 0, "canceled": 0})
    );
    batch(&app, "b2").await;
    batch(&app, "b3").await;
    let page = app.get("/v1/batches?limit=2&offset=1").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(page.body["totalDocs"], 3);
    assert_eq!(page.body["limit"], 2);
    assert_eq!(page.body["offset"], 1);
    assert_eq!(page.body["has_more"], false);
    let names: Vec<&str> = page.body["docs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["b2", "b3"]);
    let first = app.get("/v1/batches?limit=1&exclude_archived=False").await;
    assert_eq!(first.body["has_more"], true);
    let finalized = app.post("/v1/batches/b2/finalize", json!(null)).await;
    assert_eq!(
        finalized.body["status"], "completed",
        "no task is left to do"
    );
    let done = app
        .get("/v1/batches?status=completed&project=kittens")
        .await;
    assert_eq!(done.body["totalDocs"], 1);
    assert_eq!(done.body["docs"][0]["name"], "b2");
    app.get("/v1/batches?limit=101")
        .await
        .assert_error(400, "limit");
    app.get("/v1/batches?status=archived")
        .await
        .assert_error(400, "status");
    app.get("/v1/batches/nope").await.assert_error(404, "batch");
    app.get("/v1/batches/nope/status")
        .await
        .assert_error(404, "batch");
    app.post("/v1/batches/nope/finalize", json!({}))
        .await
        .assert_error(404, "batch");
    app.post("/v1/batches", json!({"project": "kittens", "name": "b1"}))
        .await
        .assert_error(409, "b1");
    app.post("/v1/batches", json!({"project": "nope", "name": "b9"}))
        .await
        .assert_error(400, "nope");
    let other = app.as_key(&app.other_key).get("/v1/batches").await;
    assert_eq!(other.body["totalDocs"], 0);
    assert_ledger_intact(&app.store).await;
}

async fn a_batch_completes_when_finalized_and_its_last_task_finishes(backend: Backend) {
    let app = with_project(backend).await;
    batch(&app, "b1").await;
    let a = app
        .create(json!({"project": "kittens", "batch": "b1"}))
        .await
        .task_id();
    let b = app
        .create(json!({"project": "kittens", "batch": "b1"}))
        .await
        .task_id();
    let c = app
        .create(json!({"project": "kittens", "batch": "b1"}))
        .await
        .task_id();
    app.complete(&a).await;
    let finalized = app.post("/v1/batches/b1/finalize", json!({})).await;
    assert_eq!(finalized.body["status"], "in_progress");
    assert_eq!(
        app.post("/v1/batches/b1/finalize", json!({})).await.body["status"],
        "in_progress",
        "finalizing again changes nothing"
    );
    app.post(&format!("/v1/task/{b}/cancel"), json!({})).await;
    assert_eq!(
        status(&app, "b1").await,
        json!({"status": "in_progress", "pending": 1, "completed": 1, "error": 0, "canceled": 1})
    );
    assert_eq!(count_events(&app, "BatchCompleted").await, 0);
    let errored = app
        .as_key(&app.contributor_key)
        .post(
            &format!("/v1/task/{c}/error"),
            json!({"error": "unreadable"}),
        )
        .await;
    assert_eq!(errored.status, 200, "{}", errored.body);
    assert_eq!(
        status(&app, "b1").await,
        json!({"status": "completed", "pending": 0, "completed": 1, "error": 1, "canceled": 1})
    );
    assert_eq!(count_events(&app, "BatchFinalized").await, 1);
    assert_eq!(count_events(&app, "BatchCompleted").await, 1);
    assert_ledger_intact(&app.store).await;
}

async fn tasks_join_only_a_staging_batch_of_their_own_project(backend: Backend) {
    let app = with_project(backend).await;
    batch(&app, "b1").await;
    app.post(
        "/v1/projects",
        json!({"type": "categorization", "name": "puppies"}),
    )
    .await;
    app.create(json!({"project": "puppies", "batch": "b1"}))
        .await
        .assert_error(400, "kittens");
    let joined = app.create(json!({"batch": "b1"})).await;
    assert_eq!(joined.status, 200, "{}", joined.body);
    assert_eq!(joined.body["project"], "kittens", "the batch's project");
    app.post("/v1/batches/b1/finalize", json!({})).await;
    let late = app
        .create(json!({"project": "kittens", "batch": "b1"}))
        .await;
    late.assert_error(400, "\"b1\"");
    late.assert_error(400, "in_progress");
    let fresh = app
        .create(json!({"project": "kittens", "batch": "fresh"}))
        .await;
    assert_eq!(fresh.status, 200, "{}", fresh.body);
    let made = app.get("/v1/batches/fresh").await;
    assert_eq!(made.body["status"], "staging");
    assert_eq!(made.body["project"], "kittens");
    app.create(json!({"batch": "nowhere"}))
        .await
        .assert_error(400, "project");
}

async fn racing_completions_of_a_batchs_last_tasks_record_one_batch_completed(backend: Backend) {
    let app = with_project(backend).await;
    batch(&app, "b1").await;
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(
            app.create(json!({"project": "kittens", "batch": "b1"}))
                .await
                .task_id(),
        );
    }
    app.post("/v1/batches/b1/finalize", json!({})).await;
    join_all(ids.iter().map(|id| app.complete(id))).await;
    assert_eq!(status(&app, "b1").await["status"], "completed");
    assert_eq!(status(&app, "b1").await["completed"], 8);
    assert_eq!(count_events(&app, "BatchCompleted").await, 1);
    assert_ledger_intact(&app.store).await;
}

async fn test_mode_batches_and_live_batches_never_mix(backend: Backend) {
    let app = with_project(backend).await;
    let test = app.test_key().await;
    batch(&app, "live-batch").await;
    app.as_key(&test)
        .post(
            "/v1/projects",
            json!({"type": "categorization", "name": "kittens"}),
        )
        .await;
    let made = app
        .as_key(&test)
        .post(
            "/v1/batches",
            json!({"project": "kittens", "name": "test-batch"}),
        )
        .await;
    assert_eq!(made.status, 200, "{}", made.body);
    assert_eq!(made.body["is_test"], true);
    let live = app.get("/v1/batches").await;
    assert_eq!(live.body["totalDocs"], 1);
    assert_eq!(live.body["docs"][0]["name"], "live-batch");
    app.get("/v1/batches/test-batch")
        .await
        .assert_error(404, "batch");
    app.get("/v1/batches/test-batch/status")
        .await
        .assert_error(404, "batch");
    let seen = app.as_key(&test).get("/v1/batches").await;
    assert_eq!(seen.body["totalDocs"], 1);
    assert_eq!(seen.body["docs"][0]["name"], "test-batch");
    app.as_key(&test)
        .get("/v1/batches/live-batch")
        .await
        .assert_error(404, "batch");
}

async fn replay_rebuilds_the_batch_views_from_their_events(backend: Backend) {
    let app = with_project(backend).await;
    batch(&app, "b1").await;
    let id = app.create(json!({"batch": "b1"})).await.task_id();
    app.post("/v1/batches/b1/finalize", json!({})).await;
    app.complete(&id).await;
    let before = app.get("/v1/batches").await.body;
    assert_eq!(before["docs"][0]["status"], "completed");
    app.assert_replay_repairs("/v1/batches", "UPDATE batches SET status = 'staging'")
        .await;
}

async fn a_completed_batch_calls_its_callback_through_the_durable_signed_deliveries(
    backend: Backend,
) {
    let app = app_for_callbacks(backend, 3, 10).await;
    let (url, log) = receiver(vec![Step::Answer(500), Step::Answer(200)]).await;
    app.post(
        "/v1/projects",
        json!({"type": "categorization", "name": "kittens"}),
    )
    .await;
    let made = app
        .post(
            "/v1/batches",
            json!({"project": "kittens", "name": "b1", "callback": url}),
        )
        .await;
    assert_eq!(made.status, 200, "{}", made.body);
    let id = app.create(json!({"batch": "b1"})).await.task_id();
    app.post("/v1/batches/b1/finalize", json!({})).await;
    app.complete(&id).await;
    let received = eventually(PATIENCE, "the batch callback is delivered", async || {
        let log = log.lock().unwrap().clone();
        let batch: Vec<_> = log
            .into_iter()
            .filter(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["batch"] == "b1")
            .collect();
        if batch.len() == 2 {
            Ok(batch)
        } else {
            Err(batch.len())
        }
    })
    .await;
    let body: Value = serde_json::from_slice(&received[1].body).unwrap();
    assert_eq!(body["status"], "completed");
    assert_eq!(body["counts"]["completed"], 1);
    assert!(
        received[1]
            .headers
            .contains_key("refonte-callback-signature"),
        "signed: {:?}",
        received[1].headers
    );
    assert_eq!(
        received[0].headers["refonte-callback-id"], received[1].headers["refonte-callback-id"],
        "one delivery, retried"
    );
}

async fn no_task_joins_a_batch_after_its_finalize_even_when_they_race(backend: Backend) {
    let app = with_project(backend).await;
    batch(&app, "b1").await;
    let creates =
        join_all((0..16).map(|_| app.create(json!({"project": "kittens", "batch": "b1"}))));
    let (replies, finalized) =
        tokio::join!(creates, app.post("/v1/batches/b1/finalize", json!({})));
    assert_eq!(finalized.status, 200, "{}", finalized.body);
    let mut joined = 0;
    for reply in &replies {
        if reply.status == 200 {
            joined += 1;
        } else {
            // `completed` when the finalize found nothing pending.
            reply.assert_error(400, "\"b1\" is ");
            let message = reply.body["error"].as_str().unwrap();
            assert!(
                message.contains("in_progress") || message.contains("completed"),
                "{message}"
            );
        }
    }
    let events = app.get("/v1/events?limit=1000").await.body["events"]
        .as_array()
        .unwrap()
        .clone();
    let finalized_at = events
        .iter()
        .find(|e| e["event_type"] == "BatchFinalized")
        .unwrap()["global_position"]
        .as_i64()
        .unwrap();
    let created: Vec<i64> = events
        .iter()
        .filter(|e| e["event_type"] == "TaskCreated")
        .map(|e| e["global_position"].as_i64().unwrap())
        .collect();
    assert_eq!(created.len(), joined);
    assert!(
        created.iter().all(|p| *p < finalized_at),
        "every task joined before the finalize: {created:?} vs {finalized_at}"
    );
    assert_eq!(status(&app, "b1").await["pending"], joined);
}

on_both_backends!(
    no_task_joins_a_batch_after_its_finalize_even_when_they_race,
    a_completed_batch_calls_its_callback_through_the_durable_signed_deliveries,
    every_batch_endpoint_answers_in_the_references_shape,
    a_batch_completes_when_finalized_and_its_last_task_finishes,
    tasks_join_only_a_staging_batch_of_their_own_project,
    racing_completions_of_a_batchs_last_tasks_record_one_batch_completed,
    test_mode_batches_and_live_batches_never_mix,
    replay_rebuilds_the_batch_views_from_their_events,
);
