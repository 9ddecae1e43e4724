//! No tenant can stall or poison the callbacks of the others: a callback URL that cannot be
//! stored is recorded as failed for its task, an event the scheduler cannot decode is counted
//! and passed, a receiver that never answers holds only its own account's share of the
//! dispatcher, and callbacks never go through the environment's proxy.

use std::sync::{Arc, Mutex};

use axum::Router;
use serde_json::{json, Value};
use sqlx::Row;
use taskledger_events::Scope;

use crate::callbacks::receiver;
use crate::helpers::{
    append_raw_event, eventually, free_port, metric_value, ok_if, on_both_backends, spawn_app_with,
    tamper_with_event, Backend, ProcessClient, ServerProcess, TestApp, TestDb, PATIENCE,
};

fn of_type<'a>(history: &'a [Value], event_type: &str) -> Vec<&'a Value> {
    history.iter().filter(|e| e["type"] == event_type).collect()
}

/// Waits until the task's history holds an event of `event_type`; returns that history.
async fn wait_for_event(app: &TestApp, key: &str, id: &str, event_type: &str) -> Vec<Value> {
    let what = format!("{event_type} on task {id}");
    eventually(PATIENCE, &what, async || {
        let h = app.as_key(key).history(id).await;
        if of_type(&h, event_type).is_empty() {
            Err(h)
        } else {
            Ok(h)
        }
    })
    .await
}

/// globex, the other account: its contributor key (the app has only its customer key).
async fn globex_contributor(app: &TestApp) -> String {
    app.store
        .create_key("globex", Scope::Contributor)
        .await
        .unwrap()
        .1
}

/// A server allowed to call back the test's receivers on 127.0.0.1.
async fn calling_loopback(backend: Backend) -> TestApp {
    spawn_app_with(backend, |s| {
        s.callbacks.callback_allow_private_networks = true
    })
    .await
}

/// A task of globex calling back `url`, completed; returns its id.
async fn globex_completed(app: &TestApp, contributor: &str, url: &str) -> String {
    let created = app
        .as_key(&app.other_key)
        .post(
            "/v1/task/categorization",
            json!({
                "instruction": "big or small?",
                "callback_url": url,
                "attachment_type": "text",
                "attachment": "boat",
                "categories": ["big", "small"],
            }),
        )
        .await
        .task_id();
    let done = app
        .as_key(contributor)
        .post(
            &format!("/v1/task/{created}/complete"),
            json!({"response": {"category": "small"}}),
        )
        .await;
    assert_eq!(done.status, 200, "{}", done.body);
    created
}

async fn a_callback_url_that_cannot_be_stored_fails_for_its_task_and_other_accounts_are_still_called_back(
    backend: Backend,
) {
    let (url, log) = receiver(vec![]).await;
    let app = calling_loopback(backend).await;
    // The API refuses NUL in a callback_url, but a ledger written before it did not: put one
    // in acme's task behind the API's back, as such a ledger holds it.
    let poisoned = app
        .create(json!({"callback_url": format!("{url}?poison")}))
        .await
        .task_id();
    let row = sqlx::query(
        "SELECT global_position, payload FROM events WHERE task_id = $1 AND sequence = 1",
    )
    .bind(&poisoned)
    .fetch_one(app.store.pool())
    .await
    .unwrap();
    let mut created: Value = serde_json::from_str(&row.get::<String, _>(1)).unwrap();
    created["callback_url"] = json!(format!("{url}\u{0}poison"));
    tamper_with_event(
        &app._db,
        &app.store,
        row.get::<i64, _>(0),
        &created.to_string(),
    )
    .await;
    app.complete(&poisoned).await;

    // Then another account's callback, scheduled after the poisoned one in global order.
    let contributor = globex_contributor(&app).await;
    let other = globex_completed(&app, &contributor, &url).await;
    let delivered = wait_for_event(&app, &app.other_key, &other, "CallbackDelivered").await;
    assert_eq!(
        of_type(&delivered, "CallbackDelivered")[0]["payload"]["status_code"],
        200
    );

    let poisoned_history = wait_for_event(&app, &app.key, &poisoned, "CallbackFailed").await;
    let failed = of_type(&poisoned_history, "CallbackFailed");
    assert_eq!(failed.len(), 1);
    assert_eq!(
        failed[0]["payload"]["attempts"], 0,
        "refused before any attempt"
    );
    let error = failed[0]["payload"]["last_error"].as_str().unwrap();
    assert!(error.contains("NUL"), "{error}");
    assert!(of_type(&poisoned_history, "CallbackDelivered").is_empty());
    let received = log.lock().unwrap().clone();
    assert_eq!(received.len(), 1, "only globex's callback went out");
    assert_eq!(
        received[0].headers["refonte-callback-id"],
        of_type(&delivered, "CallbackDelivered")[0]["payload"]["delivery_id"]
    );
}

async fn an_event_the_scheduler_cannot_decode_is_counted_and_the_next_ones_are_called_back(
    backend: Backend,
) {
    let (url, log) = receiver(vec![]).await;
    let app = calling_loopback(backend).await;
    // Completions no reader can decode: one that is not even JSON, one of the wrong shape.
    append_raw_event(&app.store, "TaskCompleted", "{not json").await;
    append_raw_event(&app.store, "TaskCompleted", "\"not a completion\"").await;

    let id = app.completed(json!({"callback_url": url})).await;
    wait_for_event(&app, &app.key, &id, "CallbackDelivered").await;
    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(&metrics, "taskledger_callback_undecodable_events_total"),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(log.lock().unwrap().len(), 1);
}

/// A receiver that accepts connections and never answers; returns its URL and how many
/// connections it accepted.
async fn black_hole() -> (String, Arc<Mutex<usize>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://127.0.0.1:{}/hook",
        listener.local_addr().unwrap().port()
    );
    let accepted = Arc::new(Mutex::new(0usize));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            *count.lock().unwrap() += 1;
            held.push(socket);
        }
    });
    (url, accepted)
}

async fn a_black_holed_receiver_holds_only_its_own_accounts_share_of_the_dispatcher(
    backend: Backend,
) {
    let (hole, accepted) = black_hole().await;
    let (url, log) = receiver(vec![]).await;
    let app = spawn_app_with(backend, |s| {
        s.callbacks.callback_allow_private_networks = true;
        s.callbacks.callback_concurrency = 4;
        s.callbacks.callback_account_concurrency = 2;
        // Far longer than the test: every attempt into the hole is still pending at its end.
        s.callbacks.callback_timeout_ms = 600_000;
    })
    .await;
    let mut swallowed = Vec::new();
    for _ in 0..6 {
        swallowed.push(app.completed(json!({"callback_url": hole})).await);
    }
    eventually(PATIENCE, "acme's attempts to reach the hole", async || {
        let so_far = *accepted.lock().unwrap();
        ok_if(so_far >= 2, so_far)
    })
    .await;

    let contributor = globex_contributor(&app).await;
    let other = globex_completed(&app, &contributor, &url).await;
    wait_for_event(&app, &app.other_key, &other, "CallbackDelivered").await;

    // globex was called back while acme's attempts were all still hanging: none of them
    // has an outcome, and no more than acme's share ever left.
    for id in &swallowed {
        let h = app.history(id).await;
        assert!(of_type(&h, "CallbackDelivered").is_empty(), "{id}");
        assert!(of_type(&h, "CallbackFailed").is_empty(), "{id}");
    }
    assert_eq!(
        *accepted.lock().unwrap(),
        2,
        "at most two of acme's attempts at once"
    );
    assert_eq!(log.lock().unwrap().len(), 1);
}

/// Records every request that reaches it, as a forward proxy would receive them.
async fn proxy_recorder() -> (String, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let app = Router::new().fallback(move |request: axum::extract::Request| {
        let log = log.clone();
        async move {
            log.lock().unwrap().push(request.uri().to_string());
            "proxied"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

/// The dispatcher's HTTP client alone is under test: one backend is enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callbacks_go_straight_to_the_receiver_whatever_http_proxy_says() {
    let (url, log) = receiver(vec![]).await;
    let (proxy, proxied) = proxy_recorder().await;
    let db = TestDb::new(Backend::Sqlite).await;
    let api = ProcessClient::new(&db).await;
    let server = ServerProcess::start(
        &db,
        free_port(),
        &[
            ("CALLBACK_ALLOW_PRIVATE_NETWORKS", "true"),
            ("HTTP_PROXY", &proxy),
            ("http_proxy", &proxy),
            ("HTTPS_PROXY", &proxy),
            ("ALL_PROXY", &proxy),
            ("NO_PROXY", ""),
        ],
    )
    .await;
    let id = api.completed_task(&server.url, &url, 0).await;
    api.wait_called_back(&server.url, &[id]).await;
    assert_eq!(log.lock().unwrap().len(), 1, "the receiver got it");
    assert!(
        proxied.lock().unwrap().is_empty(),
        "{:?}",
        proxied.lock().unwrap()
    );
}

on_both_backends!(
    a_callback_url_that_cannot_be_stored_fails_for_its_task_and_other_accounts_are_still_called_back,
    an_event_the_scheduler_cannot_decode_is_counted_and_the_next_ones_are_called_back,
    a_black_holed_receiver_holds_only_its_own_accounts_share_of_the_dispatcher,
);

/// One account allowed more attempts at once than the whole process is a configuration
/// error, named at start, before anything is opened or served.
#[tokio::test]
async fn an_account_share_above_the_process_concurrency_is_refused_at_start() {
    let db = TestDb::new(Backend::Sqlite).await;
    let (db_settings, mut serve) = crate::helpers::app::serve_settings(&db.url);
    serve.callbacks.callback_concurrency = 4;
    serve.callbacks.callback_account_concurrency = 8;
    let refused = taskledger::startup::Application::build(&db_settings, &serve).await;
    let message = format!("{:#}", refused.err().expect("the settings are refused"));
    assert!(
        message
            .contains("CALLBACK_ACCOUNT_CONCURRENCY (8) must not exceed CALLBACK_CONCURRENCY (4)"),
        "{message}"
    );
    serve.callbacks.callback_account_concurrency = 4;
    assert!(
        taskledger::startup::Application::build(&db_settings, &serve)
            .await
            .is_ok(),
        "an account may take the whole process"
    );
}
