//! `GET /v1/tasks`: every filter, the time formats, keyset pagination under concurrent adds.

use std::collections::HashSet;

use serde_json::{json, Value};

use crate::helpers::{a_moment_between, on_both_backends, spawn_app, Backend, TestApp};

async fn ids(app: &TestApp, query: &str) -> Vec<String> {
    let reply = app.get(&format!("/v1/tasks?{query}")).await;
    assert_eq!(reply.status, 200, "{query}: {}", reply.body);
    reply.body["docs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["task_id"].as_str().unwrap().to_string())
        .collect()
}

fn set(items: &[&String]) -> HashSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

async fn every_filter_selects_exactly_the_matching_tasks(backend: Backend) {
    let app = spawn_app(backend).await;
    let a = app
        .create(json!({"project": "p1", "batch": "b1", "tags": ["x", "y"], "unique_id": "ua"}))
        .await
        .task_id();
    let b = app
        .create(json!({"project": "p1", "batch": "b2", "tags": ["x"]}))
        .await
        .task_id();
    let c = app
        .post(
            "/v1/task/imageannotation",
            json!({"attachment": "https://e.com/i.jpg", "project": "p2",
              "geometries": {"box": {"objects_to_annotate": ["car"]}}, "unique_id": "uc"}),
        )
        .await
        .task_id();
    let done = app.completed(json!({"project": "p3"})).await;
    let accepted = app.completed(json!({"project": "p3"})).await;
    app.post(
        &format!("/v1/task/{accepted}/audit"),
        json!({"accepted": true}),
    )
    .await;
    let commented = app.completed(json!({"project": "p3"})).await;
    let reviewed = app
        .post(
            &format!("/v1/task/{commented}/audit"),
            json!({"comments": "the second box is too wide"}),
        )
        .await;
    assert_eq!(reviewed.status, 200, "{}", reviewed.body);
    assert_eq!(reviewed.body["customer_review_status"], "commented");
    assert_eq!(reviewed.body["audits"][0]["audit_result"], "commented");
    app.post(&format!("/v1/task/{b}/cancel"), Value::Null).await;

    let check = |query: &'static str, expected: HashSet<String>| {
        let app = &app;
        async move {
            let got: HashSet<String> = ids(app, query).await.into_iter().collect();
            assert_eq!(got, expected, "{query}");
            let total = app.get(&format!("/v1/tasks?{query}")).await.body["total"].clone();
            assert_eq!(total, expected.len(), "total for {query}");
        }
    };
    check("project=p1", set(&[&a, &b])).await;
    check("project=p1&batch=b2", set(&[&b])).await;
    check("status=canceled", set(&[&b])).await;
    check("status=completed", set(&[&done, &accepted, &commented])).await;
    check("customer_review_status=commented", set(&[&commented])).await;
    check("type=imageannotation", set(&[&c])).await;
    check("customer_review_status=pending", set(&[&done])).await;
    check(
        "customer_review_status=pending,accepted",
        set(&[&done, &accepted]),
    )
    .await;
    check("tags=x", set(&[&a, &b])).await;
    check("tags=x&tags=y", set(&[&a])).await;
    check("unique_id=ua&unique_id=uc", set(&[&a, &c])).await;
    check("unique_id=none", set(&[])).await;

    let limited = app.get("/v1/tasks?project=p1&limited_response=true").await;
    for doc in limited.body["docs"].as_array().unwrap() {
        let keys: HashSet<&str> = doc
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            HashSet::from(["task_id", "status", "metadata", "project"])
        );
    }
    let with_url = app
        .get("/v1/tasks?type=imageannotation&include_attachment_url=True")
        .await;
    assert_eq!(
        with_url.body["docs"][0]["attachment_url"],
        "https://e.com/i.jpg"
    );
}

async fn time_filters_accept_every_documented_format(backend: Backend) {
    let app = spawn_app(backend).await;
    let early = app.create(json!({})).await;
    let (early, early_created) = (
        early.task_id(),
        early.body["created_at"].as_str().unwrap().to_string(),
    );
    let cut = a_moment_between().await;
    let late = app.completed(json!({})).await;

    let rfc = cut.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let offset = cut
        .with_timezone(&chrono::FixedOffset::west_opt(7 * 3600).unwrap())
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, false);
    let spaced = cut.format("%Y-%m-%d %H:%M:%S%.6f").to_string();
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    for t in [&rfc, &offset, &spaced] {
        assert_eq!(
            ids(&app, &format!("start_time={}", enc(t))).await,
            vec![late.clone()],
            "{t}"
        );
        assert_eq!(
            ids(&app, &format!("end_time={}", enc(t))).await,
            vec![early.clone()],
            "{t}"
        );
        assert_eq!(
            ids(&app, &format!("updated_after={}", enc(t))).await,
            vec![late.clone()],
            "{t}"
        );
        assert_eq!(
            ids(&app, &format!("completed_after={}", enc(t))).await,
            vec![late.clone()],
            "{t}"
        );
        assert!(
            ids(&app, &format!("completed_before={}", enc(t)))
                .await
                .is_empty(),
            "{t}"
        );
        assert_eq!(
            ids(&app, &format!("updated_before={}", enc(t))).await,
            vec![early.clone()],
            "{t}"
        );
    }
    // A date alone is its midnight: both tasks were created on or after the first one's day.
    let day = &early_created[..10];
    assert_eq!(ids(&app, &format!("start_time={day}")).await.len(), 2);
    assert!(ids(&app, "start_time=2999-01-01").await.is_empty());
}

async fn bad_query_values_answer_400_naming_the_parameter(backend: Backend) {
    let app = spawn_app(backend).await;
    for (query, name) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=many", "limit"),
        ("start_time=yesterday", "start_time"),
        ("end_time=2021-02-30", "end_time"),
        ("completed_after=3pm", "completed_after"),
        ("updated_before=x", "updated_before"),
        ("include_attachment_url=yes", "include_attachment_url"),
        ("limited_response=1", "limited_response"),
        ("status=done", "status"),
        ("type=painting", "type"),
        ("customer_review_status=maybe", "customer_review_status"),
        ("next_token=garbage!", "next_token"),
        ("offset=100", "next_token"),
        ("offset=-1", "offset"),
    ] {
        app.get(&format!("/v1/tasks?{query}"))
            .await
            .assert_error(400, name);
    }
    // An offset of 0 is what every page answers with, so it is accepted and echoed.
    let first = app.get("/v1/tasks?offset=0").await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["offset"], 0);
}

async fn pages_walk_every_task_once_newest_first_while_tasks_are_added(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut created = Vec::new();
    for _ in 0..7 {
        created.push(app.create(json!({"project": "walk"})).await.task_id());
    }
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let query = match &token {
            Some(t) => format!("/v1/tasks?project=walk&limit=2&next_token={t}"),
            None => "/v1/tasks?project=walk&limit=2".to_string(),
        };
        let page = app.get(&query).await;
        assert_eq!(page.status, 200, "{}", page.body);
        assert_eq!(page.body["limit"], 2);
        assert_eq!(page.body["offset"], 0);
        pages += 1;
        for doc in page.body["docs"].as_array().unwrap() {
            seen.push(doc["task_id"].as_str().unwrap().to_string());
        }
        // New tasks arrive between pages: they are newer than the cursor and never shift it.
        app.create(json!({"project": "walk"})).await.task_id();
        match page.body["next_token"].as_str() {
            Some(t) => {
                assert_eq!(page.body["has_more"], true);
                token = Some(t.to_string());
            }
            None => {
                assert_eq!(page.body["has_more"], false);
                break;
            }
        }
    }
    assert_eq!(pages, 4);
    let mut expected = created.clone();
    expected.reverse();
    assert_eq!(seen, expected, "every original task once, newest first");
    let total = app.get("/v1/tasks?project=walk&limit=1").await.body["total"].clone();
    assert_eq!(total, 7 + 4);
}

on_both_backends!(
    every_filter_selects_exactly_the_matching_tasks,
    time_filters_accept_every_documented_format,
    bad_query_values_answer_400_naming_the_parameter,
    pages_walk_every_task_once_newest_first_while_tasks_are_added,
);
