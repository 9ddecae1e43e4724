//! Projects through the API: create, read, list, setParams, inheritance into tasks, the
//! project a task creates by naming it, and test-mode isolation.

use serde_json::{json, Value};

use crate::helpers::{assert_ledger_intact, on_both_backends, spawn_app, Backend, TestApp};

async fn events_of_type(app: &TestApp, key: &str, event_type: &str) -> Vec<Value> {
    let reply = app
        .as_key(key)
        .get(&format!("/v1/events?limit=1000&event_type={event_type}"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["events"].as_array().unwrap().clone()
}

async fn a_project_is_created_read_listed_and_versioned_by_set_params(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app
        .post(
            "/v1/projects",
            json!({"type": "categorization", "name": "kittens",
                   "params": {"instruction": "Label the kittens"}, "rapid": false}),
        )
        .await;
    assert_eq!(created.status, 200, "{}", created.body);
    assert_eq!(created.body["name"], "kittens");
    assert_eq!(created.body["type"], "categorization");
    assert_eq!(created.body["param_history"][0]["version"], 1);
    assert_eq!(
        created.body["param_history"][0]["instruction"],
        "Label the kittens"
    );
    let set = app
        .post(
            "/v1/projects/kittens/setParams",
            json!({"instruction": "Label every kitten", "categories": ["cat", "dog"]}),
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.body);
    let history = set.body["param_history"].as_array().unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[1]["version"], 2);
    assert_eq!(history[1]["categories"], json!(["cat", "dog"]));
    let read = app.get("/v1/projects/kittens").await;
    assert_eq!(read.body, set.body);
    let listed = app.get("/v1/projects").await;
    assert_eq!(listed.body, json!([set.body]));
    app.get("/v1/projects/puppies")
        .await
        .assert_error(404, "project");
    app.post("/v1/projects/puppies/setParams", json!({}))
        .await
        .assert_error(404, "project");
    let other = app.as_key(&app.other_key).get("/v1/projects").await;
    assert_eq!(other.body, json!([]), "another account sees none");
    assert_eq!(
        events_of_type(&app, &app.key, "ProjectCreated,ProjectParamsSet")
            .await
            .len(),
        2
    );
    assert_ledger_intact(&app.store).await;
}

async fn a_second_project_of_the_same_name_is_409_and_bad_input_is_400(backend: Backend) {
    let app = spawn_app(backend).await;
    let body = json!({"type": "categorization", "name": "kittens"});
    assert_eq!(app.post("/v1/projects", body.clone()).await.status, 200);
    app.post("/v1/projects", body)
        .await
        .assert_error(409, "kittens");
    app.post("/v1/projects", json!({"name": "x"}))
        .await
        .assert_error(400, "type");
    app.post("/v1/projects", json!({"type": "telepathy", "name": "x"}))
        .await
        .assert_error(400, "telepathy");
    app.post("/v1/projects", json!({"type": "categorization"}))
        .await
        .assert_error(400, "name");
    app.as_key(&app.contributor_key)
        .get("/v1/projects")
        .await
        .assert_error(403, "customer");
}

async fn a_task_inherits_what_it_leaves_out_from_its_projects_latest_params(backend: Backend) {
    let app = spawn_app(backend).await;
    app.post(
        "/v1/projects",
        json!({"type": "categorization", "name": "kittens",
               "params": {"instruction": "Project's instruction",
                          "categories": ["cat", "dog"]}}),
    )
    .await;
    let task = app
        .post(
            "/v1/task/categorization",
            json!({"project": "kittens", "attachment_type": "text", "attachment": "a cat",
                   "instruction": "Task's own instruction"}),
        )
        .await;
    assert_eq!(task.status, 200, "{}", task.body);
    assert_eq!(task.body["instruction"], "Task's own instruction");
    assert_eq!(task.body["params"]["categories"], json!(["cat", "dog"]));
    assert_eq!(task.body["project_param_version"], 1);
    app.post(
        "/v1/projects/kittens/setParams",
        json!({"categories": ["big", "small"]}),
    )
    .await;
    let later = app
        .post(
            "/v1/task/categorization",
            json!({"project": "kittens", "attachment_type": "text", "attachment": "a cat"}),
        )
        .await;
    assert_eq!(later.status, 200, "{}", later.body);
    assert_eq!(later.body["params"]["categories"], json!(["big", "small"]));
    assert_eq!(later.body["project_param_version"], 2);
    assert!(
        later.body.get("instruction").is_none(),
        "version 2 has none"
    );
}

async fn a_task_naming_a_missing_project_creates_it_by_the_same_actor(backend: Backend) {
    let app = spawn_app(backend).await;
    let task = app.create(json!({"project": "fresh"})).await;
    assert_eq!(task.status, 200, "{}", task.body);
    let project = app.get("/v1/projects/fresh").await;
    assert_eq!(project.status, 200, "{}", project.body);
    assert_eq!(project.body["type"], "categorization");
    assert_eq!(project.body["param_history"], json!([]));
    let created = events_of_type(&app, &app.key, "ProjectCreated").await;
    assert_eq!(created.len(), 1);
    let task_created = events_of_type(&app, &app.key, "TaskCreated").await;
    assert_eq!(created[0]["actor"], task_created[0]["actor"]);
    assert_eq!(created[0]["request_id"], task_created[0]["request_id"]);
    assert_eq!(
        created[0]["payload"]["created_by_task"],
        task.body["task_id"]
    );
    // One transaction: the project's event comes right before the task's.
    assert_eq!(
        created[0]["global_position"].as_i64().unwrap() + 1,
        task_created[0]["global_position"].as_i64().unwrap()
    );
    assert_ledger_intact(&app.store).await;
}

/// The project and batch a task creates are recorded in the task's transaction: a task
/// refused at commit (its unique_id is taken) leaves neither behind, and nothing of them
/// reaches the feed, the tree or the views.
async fn a_refused_task_leaves_no_project_or_batch_it_would_have_created(backend: Backend) {
    let app = spawn_app(backend).await;
    let first = app.create(json!({"unique_id": "u-1"})).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let events_before = events_of_type(&app, &app.key, "TaskCreated").await.len();
    let refused = app
        .create(json!({"unique_id": "u-1", "project": "ghost", "batch": "ghost-batch"}))
        .await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert_eq!(app.get("/v1/projects/ghost").await.status, 404);
    assert_eq!(app.get("/v1/batches/ghost-batch").await.status, 404);
    assert!(events_of_type(&app, &app.key, "ProjectCreated")
        .await
        .is_empty());
    assert!(events_of_type(&app, &app.key, "BatchCreated")
        .await
        .is_empty());
    assert_eq!(
        events_of_type(&app, &app.key, "TaskCreated").await.len(),
        events_before
    );
    assert_ledger_intact(&app.store).await;

    // The same request without the clash creates all three, and the tree stays exact.
    let placed = app
        .create(json!({"unique_id": "u-2", "project": "ghost", "batch": "ghost-batch"}))
        .await;
    assert_eq!(placed.status, 200, "{}", placed.body);
    assert_eq!(app.get("/v1/projects/ghost").await.status, 200);
    let batch = app.get("/v1/batches/ghost-batch").await;
    assert_eq!(batch.status, 200, "{}", batch.body);
    assert_eq!(batch.body["status"], "staging");
    let digest = app.get("/v1/ledger/digest").await;
    assert_eq!(digest.status, 200, "{}", digest.body);
    let feed = app.get("/v1/events?limit=1000").await;
    assert_eq!(
        digest.body["tree_size"],
        json!(feed.body["events"].as_array().unwrap().len())
    );
    assert_ledger_intact(&app.store).await;
}

async fn test_mode_projects_and_live_projects_never_mix(backend: Backend) {
    let app = spawn_app(backend).await;
    let test = app.test_key().await;
    let body = json!({"type": "categorization", "name": "kittens"});
    assert_eq!(app.post("/v1/projects", body.clone()).await.status, 200);
    let in_test = app.as_key(&test).post("/v1/projects", body).await;
    assert_eq!(
        in_test.status, 200,
        "the name is free in test mode: {}",
        in_test.body
    );
    assert_eq!(in_test.body["is_test"], true);
    app.as_key(&test)
        .post(
            "/v1/projects",
            json!({"type": "categorization", "name": "test-only"}),
        )
        .await;
    let live = app.get("/v1/projects").await;
    assert_eq!(live.body.as_array().unwrap().len(), 1);
    assert_eq!(live.body[0]["is_test"], false);
    app.get("/v1/projects/test-only")
        .await
        .assert_error(404, "project");
    let seen_by_test = app.as_key(&test).get("/v1/projects").await;
    assert_eq!(seen_by_test.body.as_array().unwrap().len(), 2);
}

async fn replay_rebuilds_the_project_views_from_their_events(backend: Backend) {
    let app = spawn_app(backend).await;
    app.post(
        "/v1/projects",
        json!({"type": "categorization", "name": "kittens", "params": {"instruction": "a"}}),
    )
    .await;
    app.post(
        "/v1/projects/kittens/setParams",
        json!({"instruction": "b"}),
    )
    .await;
    app.assert_replay_repairs("/v1/projects", "DELETE FROM projects")
        .await;
}

on_both_backends!(
    a_refused_task_leaves_no_project_or_batch_it_would_have_created,
    a_project_is_created_read_listed_and_versioned_by_set_params,
    a_second_project_of_the_same_name_is_409_and_bad_input_is_400,
    a_task_inherits_what_it_leaves_out_from_its_projects_latest_params,
    a_task_naming_a_missing_project_creates_it_by_the_same_actor,
    test_mode_projects_and_live_projects_never_mix,
    replay_rebuilds_the_project_views_from_their_events,
);
