//! `/v1/task/...` through the real server: every endpoint's success and error paths.

use reqwest::Method;
use serde_json::{json, Value};

use taskledger::domain::TYPE_RULES;

use crate::helpers::{
    a_moment_between, eventually, ok_if, on_sqlite, spawn_app, spawn_app_with, Backend, PATIENCE,
};

async fn creating_a_task_answers_200_with_the_reference_task_object(backend: Backend) {
    let app = spawn_app(backend).await;
    let reply = app
        .create(
            json!({"project": "kittens", "batch": "b1", "unique_id": "u-1",
                       "metadata": {"k": "v"}, "tags": ["t1", "t1", "t2"]}),
        )
        .await;
    let id = reply.task_id();
    let task = &reply.body;
    assert_eq!(id.len(), 24);
    assert!(id
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert_eq!(task["type"], "categorization");
    assert_eq!(task["status"], "pending");
    assert_eq!(
        task["instruction"],
        "Would you say this item is big or small?"
    );
    assert_eq!(task["callback_url"], "http://www.example.com/callback");
    assert_eq!(
        task["params"],
        json!({"attachment_type": "text", "attachment": "car", "categories": ["big", "small"]})
    );
    assert_eq!(task["metadata"], json!({"k": "v"}));
    assert_eq!(task["tags"], json!(["t1", "t2"]));
    assert_eq!(task["unique_id"], "u-1");
    assert_eq!(task["callback_completed"], false);
    assert_eq!(task["audits"], json!([]));
    for absent in ["completed_at", "response", "customer_review_status"] {
        assert!(task.get(absent).is_none(), "{absent} must be absent");
    }
    let created = task["created_at"].as_str().unwrap();
    assert!(created.ends_with('Z') && created.len() == 24, "{created}");
    let fetched = app.get(&format!("/v1/task/{id}")).await;
    assert_eq!(fetched.status, 200);
    assert_eq!(&fetched.body, task);
}

async fn every_task_type_is_created_and_checked_by_its_own_rules(backend: Backend) {
    let app = spawn_app(backend).await;
    // One of every type the reference SDK knows, each with the example of its row of the
    // rules (the README's table is written from the same rows).
    for row in TYPE_RULES {
        let task_type = row.task_type.as_str();
        let body: serde_json::Value = serde_json::from_str(row.example).unwrap();
        let reply = app.post(&format!("/v1/task/{task_type}"), body).await;
        assert_eq!(reply.status, 200, "{task_type}: {}", reply.body);
        assert_eq!(reply.body["type"], task_type);
    }
    let invalid = [
        (
            "categorization",
            json!({"attachment": "car", "attachment_type": "text", "categories": []}),
            "categories",
        ),
        (
            "categorization",
            json!({"attachment_type": "text", "categories": ["a"]}),
            "attachment",
        ),
        ("imageannotation", json!({"attachment": "x"}), "geometries"),
        (
            "imageannotation",
            json!({"attachment": "x", "geometries": {"box": {"objects_to_annotate": []}}}),
            "objects_to_annotate",
        ),
        ("videoannotation", json!({}), "attachment"),
        (
            "videoannotation",
            json!({"attachments": ["https://e.com/f1.jpg"]}),
            "geometries",
        ),
        (
            "lidarsegmentation",
            json!({"attachments": ["f.json"]}),
            "labels",
        ),
        ("segmentannotation", json!({"attachment": "x"}), "labels"),
        ("namedentityrecognition", json!({"labels": ["a"]}), "text"),
        ("comparison", json!({"attachment": "x"}), "attachments"),
        ("painting", json!({"attachment": "x"}), "task type"),
    ];
    for (task_type, body, field) in invalid {
        app.post(&format!("/v1/task/{task_type}"), body)
            .await
            .assert_error(400, field);
    }
    let listed = app.get("/v1/tasks").await;
    assert_eq!(
        listed.body["total"],
        TYPE_RULES.len(),
        "refused creates wrote nothing"
    );
}

async fn malformed_bodies_answer_400_naming_the_field_and_never_500(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create(json!({"instruction": 5}))
        .await
        .assert_error(400, "instruction");
    app.create(json!({"tags": "not-a-list", "unique_id": 7}))
        .await
        .assert_error(400, "");
    app.create(json!({"tags": [""]}))
        .await
        .assert_error(400, "tags");
    app.create(json!({"metadata": [1, 2]}))
        .await
        .assert_error(400, "metadata");
    app.create(json!({"callback_url": "ftp://example.com/cb"}))
        .await
        .assert_error(400, "callback_url");
    app.create(json!({"clear_unique_id_on_error": "maybe"}))
        .await
        .assert_error(400, "clear_unique_id_on_error");
    app.post("/v1/task/categorization", json!([1, 2]))
        .await
        .assert_error(400, "object");
    let raw = app
        .client
        .post(app.url("/v1/task/categorization"))
        .basic_auth(&app.key, Some(""))
        .header("content-type", "application/json")
        .body("{\"attachment\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    let body: Value = raw.json().await.unwrap();
    assert_eq!(body["status_code"], 400);
    assert_eq!(app.get("/v1/tasks").await.body["total"], 0);
}

async fn a_body_over_the_limit_answers_413(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.max_body_bytes = 64 * 1024).await;
    let big = "x".repeat(100 * 1024);
    let reply = app.create(json!({"instruction": big})).await;
    reply.assert_error(413, "large");
    let with_key = app
        .as_key(&app.key)
        .header("Idempotency-Key", "big-1")
        .post(
            "/v1/task/categorization",
            json!({"instruction": "x".repeat(100 * 1024)}),
        )
        .await;
    with_key.assert_error(413, "large");
}

async fn requests_without_a_valid_key_answer_401(backend: Backend) {
    let app = spawn_app(backend).await;
    let none = app.client.get(app.url("/v1/tasks")).send().await.unwrap();
    assert_eq!(none.status(), 401);
    let body: Value = none.json().await.unwrap();
    assert_eq!(body["status_code"], 401);
    app.as_key("tl_wrong")
        .get("/v1/tasks")
        .await
        .assert_error(401, "key");
    let bearer = app
        .client
        .get(app.url("/v1/tasks"))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 200, "Bearer works as well as Basic");
    let key_id = app
        .store
        .authenticate(&app.key)
        .await
        .unwrap()
        .unwrap()
        .key_id;
    app.store.revoke_key(&key_id).await.unwrap();
    // Authentication is cached; the server sees the revocation within a second.
    let refused = eventually(PATIENCE, "the revoked key to be refused", async || {
        let reply = app.get("/v1/tasks").await;
        ok_if(reply.status == 401, reply.status).map(|()| reply)
    })
    .await;
    refused.assert_error(401, "revoked");
}

async fn another_accounts_task_is_a_404_exactly_like_a_missing_one(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.create(json!({"unique_id": "mine"})).await.task_id();
    let missing = app.get("/v1/task/0123456789abcdef01234567").await;
    missing.assert_error(404, "not found");
    let theirs = app
        .as_key(&app.other_key)
        .get(&format!("/v1/task/{id}"))
        .await;
    assert_eq!(theirs.status, 404);
    assert_eq!(theirs.body, missing.body);
    for (method, path, body) in [
        (Method::POST, format!("/v1/task/{id}/cancel"), None),
        (
            Method::POST,
            format!("/v1/task/{id}/setMetadata"),
            Some(json!({"a": 1})),
        ),
        (
            Method::PUT,
            format!("/v1/task/{id}/tags"),
            Some(json!(["x"])),
        ),
        (Method::GET, format!("/v1/task/{id}/history"), None),
    ] {
        let reply = app.as_key(&app.other_key).send(method, &path, body).await;
        assert_eq!(reply.status, 404, "{path}");
    }
    app.get("/v1/task/not-a-task-id")
        .await
        .assert_error(404, "not found");
    // The other account may use the same unique_id and sees none of ours in lists.
    let other = app
        .as_key(&app.other_key)
        .post(
            "/v1/task/documenttranscription",
            json!({"attachment": "x", "unique_id": "mine"}),
        )
        .await;
    assert_eq!(other.status, 200, "{}", other.body);
    let listed = app
        .as_key(&app.other_key)
        .get("/v1/tasks?unique_id=mine")
        .await;
    assert_eq!(listed.body["total"], 1);
    assert_eq!(listed.body["docs"][0]["task_id"], other.body["task_id"]);
}

async fn as_of_shows_the_task_as_it_stood_and_history_lists_every_event(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.create(json!({"metadata": {"v": 1}})).await.task_id();
    let between = a_moment_between().await;
    let updated = app
        .post(&format!("/v1/task/{id}/setMetadata"), json!({"v": 2}))
        .await;
    assert_eq!(updated.body["metadata"], json!({"v": 2}));

    let at = between.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    let then = app.get(&format!("/v1/task/{id}?as_of={at}")).await;
    assert_eq!(then.status, 200, "{}", then.body);
    assert_eq!(then.body["metadata"], json!({"v": 1}));
    let plain = between
        .format("%Y-%m-%d %H:%M:%S%.6f")
        .to_string()
        .replace(' ', "%20");
    assert_eq!(
        app.get(&format!("/v1/task/{id}?as_of={plain}")).await.body["metadata"],
        json!({"v": 1})
    );
    app.get(&format!("/v1/task/{id}?as_of=2001-01-01"))
        .await
        .assert_error(404, "not found");
    app.get(&format!("/v1/task/{id}?as_of=soon"))
        .await
        .assert_error(400, "as_of");

    let history = app.get(&format!("/v1/task/{id}/history")).await;
    let events = history.body["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["type"], "TaskCreated");
    assert_eq!(events[1]["type"], "TaskMetadataSet");
    assert_eq!(events[1]["payload"], json!({"metadata": {"v": 2}}));
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["sequence"], i as i64 + 1);
        assert_eq!(e["version"], 1);
        assert_eq!(e["actor"]["scope"], "customer");
        assert!(e["actor"]["key_id"].as_str().unwrap().starts_with("key_"));
        assert!(e["hash"].as_str().unwrap().len() == 64);
        assert!(e["global_position"].as_i64().unwrap() >= 1);
    }
    assert_eq!(events[1]["prev_hash"], events[0]["hash"]);
}

async fn cancel_is_idempotent_refuses_finished_tasks_and_can_clear_the_unique_id(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.create(json!({"unique_id": "c-1"})).await.task_id();
    let canceled = app
        .post(&format!("/v1/task/{id}/cancel"), Value::Null)
        .await;
    assert_eq!(canceled.body["status"], "canceled");
    assert_eq!(canceled.body["unique_id"], "c-1");
    let again = app
        .post(&format!("/v1/task/{id}/cancel"), Value::Null)
        .await;
    assert_eq!(again.status, 200);
    assert_eq!(
        app.history_len(&id).await,
        2,
        "a second cancel appends nothing"
    );
    let cleared = app
        .post(
            &format!("/v1/task/{id}/cancel?clear_unique_id=true"),
            Value::Null,
        )
        .await;
    assert_eq!(cleared.status, 200);
    assert!(cleared.body.get("unique_id").is_none());
    assert_eq!(
        app.create(json!({"unique_id": "c-1"})).await.status,
        200,
        "the id is free again"
    );

    let done = app.completed(json!({})).await;
    app.post(&format!("/v1/task/{done}/cancel"), Value::Null)
        .await
        .assert_error(400, "completed");
    app.post(
        &format!("/v1/task/{id}/cancel?clear_unique_id=yes"),
        Value::Null,
    )
    .await
    .assert_error(400, "clear_unique_id");
}

async fn set_metadata_replaces_it_and_refuses_non_objects_and_oversized_ones(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.create(json!({"metadata": {"a": 1}})).await.task_id();
    let path = format!("/v1/task/{id}/setMetadata");
    let set = app.post(&path, json!({"b": 2})).await;
    assert_eq!(set.body["metadata"], json!({"b": 2}));
    assert_eq!(app.post(&path, json!({"b": 2})).await.status, 200);
    assert_eq!(
        app.history_len(&id).await,
        2,
        "the same metadata again appends nothing"
    );
    app.post(&path, json!("text"))
        .await
        .assert_error(400, "metadata");
    app.post(&path, json!({"big": "x".repeat(11 * 1024)}))
        .await
        .assert_error(400, "metadata");
    let emptied = app.post(&path, Value::Null).await;
    assert_eq!(emptied.body["metadata"], json!({}), "no body means {{}}");
}

async fn unique_id_can_be_set_replaced_and_cleared_with_409_naming_the_holder(backend: Backend) {
    let app = spawn_app(backend).await;
    let first = app.create(json!({"unique_id": "taken"})).await.task_id();
    let second = app.create(json!({})).await.task_id();
    let path = format!("/v1/task/{second}/unique_id");
    let conflict = app.post(&path, json!({"unique_id": "taken"})).await;
    conflict.assert_error(409, &first);
    assert_eq!(
        conflict.body["error"],
        format!("The unique_id (\"taken\") is already used for a different task ({first}).")
    );
    let dup = app.create(json!({"unique_id": "taken"})).await;
    dup.assert_error(409, &first);
    let set = app.post(&path, json!({"unique_id": "mine"})).await;
    assert_eq!(set.body["unique_id"], "mine");
    app.post(&path, json!({"unique_id": ""}))
        .await
        .assert_error(400, "unique_id");
    app.post(&path, json!({}))
        .await
        .assert_error(400, "unique_id");
    let cleared = app.as_key(&app.key).delete(&path).await;
    assert_eq!(cleared.status, 200);
    assert!(cleared.body.get("unique_id").is_none());
    let again = app.as_key(&app.key).delete(&path).await;
    assert_eq!(again.status, 200, "clearing nothing is fine");
    let replaced = app.post(&path, json!({"unique_id": "new"})).await;
    assert_eq!(replaced.body["unique_id"], "new");
    let reuse = app
        .post(
            &format!("/v1/task/{first}/unique_id"),
            json!({"unique_id": "mine"}),
        )
        .await;
    assert_eq!(reuse.status, 200, "a released id is free: {}", reuse.body);
}

async fn tags_are_added_replaced_and_removed_keeping_order(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.create(json!({"tags": ["a"]})).await.task_id();
    let path = format!("/v1/task/{id}/tags");
    let added = app
        .as_key(&app.key)
        .put(&path, json!(["b", "a", "c", "b"]))
        .await;
    assert_eq!(added.body["tags"], json!(["a", "b", "c"]));
    let set = app.post(&path, json!(["z", "y", "z"])).await;
    assert_eq!(set.body["tags"], json!(["z", "y"]));
    let removed = app
        .as_key(&app.key)
        .delete_with(&path, json!(["z", "nope"]))
        .await;
    assert_eq!(removed.body["tags"], json!(["y"]));
    let events = app.history_len(&id).await;
    app.as_key(&app.key)
        .delete_with(&path, json!(["nope"]))
        .await;
    app.as_key(&app.key).put(&path, json!(["y"])).await;
    assert_eq!(
        app.history_len(&id).await,
        events,
        "no-op tag changes append nothing"
    );
    app.post(&path, json!({"tags": ["x"]}))
        .await
        .assert_error(400, "array");
    app.post(&path, json!(["ok", ""]))
        .await
        .assert_error(400, "tags");
    app.post(&path, json!(["ok", 3]))
        .await
        .assert_error(400, "tags");
    let cleared = app.post(&path, Value::Null).await;
    assert_eq!(cleared.status, 200);
    assert!(
        cleared.body.get("tags").is_none(),
        "no tags: the key is absent"
    );
}

async fn the_workforce_completes_and_errors_tasks_and_customers_cannot(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.create(json!({})).await.task_id();
    let path = format!("/v1/task/{id}/complete");
    app.post(&path, json!({"response": {"category": "big"}}))
        .await
        .assert_error(403, "contributor");
    app.as_key(&app.contributor_key)
        .post(&path, json!({}))
        .await
        .assert_error(400, "response");
    let done = app
        .as_key(&app.contributor_key)
        .post(&path, json!({"response": {"category": "big"}}))
        .await;
    assert_eq!(done.body["status"], "completed");
    assert_eq!(done.body["response"], json!({"category": "big"}));
    assert_eq!(done.body["customer_review_status"], "pending");
    assert!(done.body["completed_at"].is_string());
    app.as_key(&app.contributor_key)
        .post(&path, json!({"response": {}}))
        .await
        .assert_error(400, "completed");
    // A contributor may read but not create.
    let read = app
        .as_key(&app.contributor_key)
        .get(&format!("/v1/task/{id}"))
        .await;
    assert_eq!(read.status, 200);
    app.as_key(&app.contributor_key)
        .post("/v1/task/categorization", json!({}))
        .await
        .assert_error(403, "customer");

    let keep = app.create(json!({"unique_id": "kept"})).await.task_id();
    let errored = app
        .as_key(&app.contributor_key)
        .post(
            &format!("/v1/task/{keep}/error"),
            json!({"error": "attachment unreadable"}),
        )
        .await;
    assert_eq!(errored.body["status"], "error");
    assert_eq!(
        errored.body["response"],
        json!({"error": "attachment unreadable"})
    );
    assert_eq!(errored.body["unique_id"], "kept");
    let freed = app
        .create(json!({"unique_id": "freed", "clear_unique_id_on_error": true}))
        .await
        .task_id();
    let errored = app
        .as_key(&app.contributor_key)
        .post(&format!("/v1/task/{freed}/error"), json!({"error": "bad"}))
        .await;
    assert!(errored.body.get("unique_id").is_none());
    assert_eq!(app.create(json!({"unique_id": "freed"})).await.status, 200);
    app.as_key(&app.contributor_key)
        .post(&format!("/v1/task/{freed}/error"), json!({}))
        .await
        .assert_error(400, "error");
}

async fn audits_follow_the_customer_and_workforce_forms(backend: Backend) {
    let app = spawn_app(backend).await;
    let pending = app.create(json!({})).await.task_id();
    app.post(
        &format!("/v1/task/{pending}/audit"),
        json!({"accepted": true}),
    )
    .await
    .assert_error(400, "completed");
    let id = app.completed(json!({})).await;
    let path = format!("/v1/task/{id}/audit");
    app.post(&path, json!({}))
        .await
        .assert_error(400, "accepted");
    let rejected = app
        .post(&path, json!({"accepted": false, "comments": "wrong"}))
        .await;
    assert_eq!(rejected.body["customer_review_status"], "rejected");
    let audit = &rejected.body["audits"][0];
    assert_eq!(audit["audit_source"], "customer");
    assert_eq!(audit["audit_result"], "rejected");
    assert!(audit["audited_at"].is_string() && audit["audited_by"].is_string());

    let fixed = app
        .as_key(&app.contributor_key)
        .post(
            &path,
            json!({"audit_result": "fixed", "audit_time_secs": 30,
                                         "response": {"category": "small"}}),
        )
        .await;
    assert_eq!(fixed.status, 200, "{}", fixed.body);
    assert_eq!(fixed.body["response"], json!({"category": "small"}));
    assert_eq!(fixed.body["customer_review_status"], "fixed");
    let audit = &fixed.body["audits"][1];
    assert_eq!(audit["audit_source"], "refonte");
    assert_eq!(audit["audit_time_secs"], 30);
    app.as_key(&app.contributor_key)
        .post(&path, json!({"audit_result": "fixed"}))
        .await
        .assert_error(400, "response");
    app.as_key(&app.contributor_key)
        .post(&path, json!({"audit_result": "great"}))
        .await
        .assert_error(400, "audit_result");
    let accepted = app
        .post(&path, json!({"accepted": true, "comments": null}))
        .await;
    assert_eq!(accepted.body["customer_review_status"], "accepted");
}

async fn racing_creates_with_one_unique_id_give_one_task_and_409s(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut replies = Vec::new();
    let app = std::sync::Arc::new(app);
    for _ in 0..12 {
        let app = app.clone();
        replies.push(tokio::spawn(async move {
            app.create(json!({"unique_id": "race"})).await
        }));
    }
    let mut ok = 0;
    let mut conflicts = 0;
    for r in replies {
        let reply = r.await.unwrap();
        match reply.status {
            200 => ok += 1,
            409 => conflicts += 1,
            other => panic!("unexpected {other}: {}", reply.body),
        }
    }
    assert_eq!((ok, conflicts), (1, 11));
    assert_eq!(app.get("/v1/tasks?unique_id=race").await.body["total"], 1);
}

async fn a_long_history_is_read_a_page_at_a_time(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.create(json!({})).await.task_id();
    for n in 0..5 {
        let path = format!("/v1/task/{id}/setMetadata");
        assert_eq!(app.post(&path, json!({ "n": n })).await.status, 200);
    }
    let history = format!("/v1/task/{id}/history");
    // Without paging parameters: every event (six here), and nothing more to read.
    let all = app.get(&history).await;
    assert_eq!(all.body["events"].as_array().unwrap().len(), 6);
    assert_eq!(all.body["has_more"], false);
    assert_eq!(all.body["next_after"], 6);
    // Two at a time, in sequence order, each page continuing where the last one ended.
    let mut sequences = Vec::new();
    let mut after = 0;
    loop {
        let page = app.get(&format!("{history}?limit=2&after={after}")).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let events = page.body["events"].as_array().unwrap();
        assert!(events.len() <= 2);
        sequences.extend(events.iter().map(|e| e["sequence"].as_i64().unwrap()));
        after = page.body["next_after"].as_i64().unwrap();
        if page.body["has_more"] == false {
            break;
        }
    }
    assert_eq!(sequences, vec![1, 2, 3, 4, 5, 6]);
    // Past the end of a real history: an empty page, not a 404.
    let past = app.get(&format!("{history}?after=6")).await;
    assert_eq!(past.status, 200, "{}", past.body);
    assert_eq!(past.body["events"], json!([]));
    assert_eq!(past.body["next_after"], 6);
    // A task that does not exist is a 404 however it is paged; bad paging is a 400.
    let missing = format!("/v1/task/{}/history", "0".repeat(24));
    app.get(&format!("{missing}?after=3"))
        .await
        .assert_error(404, "not found");
    for bad in ["limit=0", "limit=1001", "after=-1", "after=x"] {
        let reply = app.get(&format!("{history}?{bad}")).await;
        reply.assert_error(400, bad.split('=').next().unwrap());
    }
}

async fn clear_unique_id_on_error_is_set_with_a_unique_id_and_shown_on_the_task(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.create(json!({"unique_id": "e-1"})).await;
    assert_eq!(id.body["clear_unique_id_on_error"], json!(false));
    let id = id.task_id();
    let set = app
        .post(
            &format!("/v1/task/{id}/unique_id"),
            json!({"unique_id": "e-2", "clear_unique_id_on_error": true}),
        )
        .await;
    assert_eq!(set.status, 200, "{}", set.body);
    assert_eq!(set.body["unique_id"], "e-2");
    assert_eq!(set.body["clear_unique_id_on_error"], json!(true));
    let event = app.history(&id).await.pop().unwrap();
    assert_eq!(event["payload"]["clear_unique_id_on_error"], json!(true));
    let errored = app
        .as_key(&app.contributor_key)
        .post(&format!("/v1/task/{id}/error"), json!({"error": "blank"}))
        .await;
    assert_eq!(errored.status, 200, "{}", errored.body);
    assert!(errored.body.get("unique_id").is_none(), "{}", errored.body);
    assert_eq!(app.create(json!({"unique_id": "e-2"})).await.status, 200);
    let bad = app
        .post(
            &format!("/v1/task/{id}/unique_id"),
            json!({"unique_id": "e-3", "clear_unique_id_on_error": "sometimes"}),
        )
        .await;
    bad.assert_error(400, "clear_unique_id_on_error");
}

on_sqlite!(
    clear_unique_id_on_error_is_set_with_a_unique_id_and_shown_on_the_task,
    creating_a_task_answers_200_with_the_reference_task_object,
    every_task_type_is_created_and_checked_by_its_own_rules,
    malformed_bodies_answer_400_naming_the_field_and_never_500,
    a_body_over_the_limit_answers_413,
    requests_without_a_valid_key_answer_401,
    another_accounts_task_is_a_404_exactly_like_a_missing_one,
    as_of_shows_the_task_as_it_stood_and_history_lists_every_event,
    a_long_history_is_read_a_page_at_a_time,
    cancel_is_idempotent_refuses_finished_tasks_and_can_clear_the_unique_id,
    set_metadata_replaces_it_and_refuses_non_objects_and_oversized_ones,
    unique_id_can_be_set_replaced_and_cleared_with_409_naming_the_holder,
    tags_are_added_replaced_and_removed_keeping_order,
    the_workforce_completes_and_errors_tasks_and_customers_cannot,
    audits_follow_the_customer_and_workforce_forms,
    racing_creates_with_one_unique_id_give_one_task_and_409s,
);
