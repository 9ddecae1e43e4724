//! Callbacks to a real HTTP receiver on a random port: body, auth, signature, retries with
//! back-off, timeouts, final failure, the private-network guard, and a SIGKILL of the server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use taskledger::store::Store;

use crate::helpers::process::taskledger;
use crate::helpers::{
    eventually, free_port, metric_value, ok_if, on_both_backends, spawn_app_with, Backend,
    ProcessClient, ServerProcess, TestApp, TestDb, PATIENCE,
};

/// What the receiver does with the n-th attempt (1-based) of a delivery.
#[derive(Clone, Copy, Debug)]
pub enum Step {
    Answer(u16),
    Hang(Duration),
}

#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// The delivery's row as the server left it when this attempt arrived (receivers made by
    /// [`receiver_watching`] only).
    pub row: Option<DeliveryRow>,
}

/// What the server had recorded of a delivery when an attempt of it arrived.
#[derive(Clone, Debug)]
pub struct DeliveryRow {
    /// Attempts recorded before this one.
    pub attempts: i64,
    /// When the scheduler planned this attempt, after the previous one failed.
    pub next_attempt_at_us: i64,
    /// When this attempt was claimed (the claim is the row's last update).
    pub claimed_at_us: i64,
    /// The previous attempt's error.
    pub last_error: Option<String>,
}

async fn delivery_row(store: &Store, delivery_id: &str) -> Option<DeliveryRow> {
    let row: Option<(i64, i64, i64, Option<String>)> = sqlx::query_as(
        "SELECT attempts, next_attempt_at_us, updated_at_us, last_error \
         FROM callback_deliveries WHERE delivery_id = $1",
    )
    .bind(delivery_id)
    .fetch_optional(store.pool())
    .await
    .expect("read the delivery");
    row.map(
        |(attempts, next_attempt_at_us, claimed_at_us, last_error)| DeliveryRow {
            attempts,
            next_attempt_at_us,
            claimed_at_us,
            last_error,
        },
    )
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    fn delivery_id(&self) -> &str {
        &self.headers["refonte-callback-id"]
    }
}

#[derive(Clone)]
struct Receiver {
    script: Arc<Vec<Step>>,
    log: Arc<Mutex<Vec<Received>>>,
    store: Option<Store>,
}

async fn hook(
    State(r): State<Receiver>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, [(axum::http::HeaderName, &'static str); 1]) {
    let headers: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    let id = headers
        .get("refonte-callback-id")
        .cloned()
        .unwrap_or_default();
    let row = match &r.store {
        Some(store) => delivery_row(store, &id).await,
        None => None,
    };
    let attempt = {
        let mut log = r.log.lock().unwrap();
        log.push(Received {
            headers,
            body: body.to_vec(),
            row,
        });
        log.iter()
            .filter(|x| x.headers.get("refonte-callback-id") == Some(&id))
            .count()
    };
    let status = match r
        .script
        .get(attempt - 1)
        .copied()
        .unwrap_or(Step::Answer(200))
    {
        Step::Answer(code) => StatusCode::from_u16(code).unwrap(),
        Step::Hang(d) => {
            tokio::time::sleep(d).await;
            StatusCode::OK
        }
    };
    // Every answer names somewhere else to go; a client that followed it would land there.
    (status, [(axum::http::header::LOCATION, "/elsewhere")])
}

/// Where a followed redirect would land; it records under the id `redirected`.
async fn elsewhere(State(r): State<Receiver>) -> StatusCode {
    r.log.lock().unwrap().push(Received {
        headers: HashMap::from([("refonte-callback-id".to_string(), "redirected".to_string())]),
        body: b"{}".to_vec(),
        row: None,
    });
    StatusCode::OK
}

/// A receiver on a random port; returns its URL and the log of what it received.
pub async fn receiver(script: Vec<Step>) -> (String, Arc<Mutex<Vec<Received>>>) {
    serve_receiver(script, None).await
}

/// A receiver that also records, with each attempt, the delivery's row in `store` as the
/// server left it: the schedule it decided, read from its state rather than from a clock.
pub async fn receiver_watching(
    script: Vec<Step>,
    store: Store,
) -> (String, Arc<Mutex<Vec<Received>>>) {
    serve_receiver(script, Some(store)).await
}

async fn serve_receiver(
    script: Vec<Step>,
    store: Option<Store>,
) -> (String, Arc<Mutex<Vec<Received>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let state = Receiver {
        script: Arc::new(script),
        log: log.clone(),
        store,
    };
    let app = Router::new()
        .route("/hook", post(hook))
        .route("/elsewhere", post(elsewhere).get(elsewhere))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://127.0.0.1:{}/hook",
        listener.local_addr().unwrap().port()
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, log)
}

pub async fn app_for_callbacks(backend: Backend, attempts: u32, base_ms: u64) -> TestApp {
    spawn_app_with(backend, |s| {
        s.callbacks.callback_allow_private_networks = true;
        s.callbacks.callback_max_attempts = attempts;
        s.callbacks.callback_retry_base_ms = base_ms;
        s.callbacks.callback_retry_span_secs = 0;
        // Ample for a receiver that answers at once (it reads its delivery row first), even
        // on a loaded machine: only a scripted hang, far longer, runs into it.
        s.callbacks.callback_timeout_ms = 10_000;
    })
    .await
}

/// Waits until the task's history satisfies `done`, then reads the task.
///
/// The history is the one source: it is read in one request, and events are only ever
/// appended, so once `done` holds it keeps holding. The task is read after it, so it shows
/// at least those events; reading the two the other way round (or checking one against the
/// other while deliveries still land) races.
async fn settled(
    app: &TestApp,
    id: &str,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> (Value, Vec<Value>) {
    let history = eventually(PATIENCE, what, async || {
        let history = app.history(id).await;
        if done(&history) {
            Ok(history)
        } else {
            Err(history)
        }
    })
    .await;
    let task = app.get(&format!("/v1/task/{id}")).await.body;
    (task, history)
}

fn events_of(history: &[Value], event_type: &str) -> Vec<Value> {
    history
        .iter()
        .filter(|e| e["type"] == event_type)
        .cloned()
        .collect()
}

/// Verifies the signature, and that it was made between `since` (seconds) and now.
fn verify_signature(secret: &str, r: &Received, since: i64) {
    let header = &r.headers["refonte-callback-signature"];
    let (t, v1) = header
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
        .expect("t=...,v1=...");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(&r.body);
    mac.verify_slice(&hex::decode(v1).unwrap())
        .expect("the signature verifies");
    let signed_at = t.parse::<i64>().unwrap();
    assert!(
        (since..=chrono::Utc::now().timestamp()).contains(&signed_at),
        "a timestamp of the moment of sending: {signed_at}"
    );
}

async fn completing_erroring_and_workforce_audits_call_back_signed(backend: Backend) {
    let since = chrono::Utc::now().timestamp();
    let (url, log) = receiver(vec![]).await;
    let app = app_for_callbacks(backend, 3, 50).await;
    let secret = app
        .store
        .callback_secret("acme", false)
        .await
        .unwrap()
        .unwrap();
    let done = app.completed(json!({"callback_url": url})).await;
    let failed = app.create(json!({"callback_url": url})).await.task_id();
    let worker = app.as_key(&app.contributor_key);
    worker
        .post(
            &format!("/v1/task/{failed}/error"),
            json!({"error": "unreadable"}),
        )
        .await;
    app.post(
        &format!("/v1/task/{done}/audit"),
        json!({"accepted": false}),
    )
    .await;
    worker
        .post(
            &format!("/v1/task/{done}/audit"),
            json!({"audit_result": "fixed", "response": {"category": "small"}}),
        )
        .await;
    let silent = app.completed(json!({})).await;

    let (task, history) = settled(&app, &done, "two deliveries", |h| {
        events_of(h, "CallbackDelivered").len() == 2
    })
    .await;
    assert_eq!(task["callback_completed"], true, "{task}");
    let (task_b, _) = settled(&app, &failed, "the error callback", |h| {
        !events_of(h, "CallbackDelivered").is_empty()
    })
    .await;
    assert_eq!(task_b["status"], "error");
    assert_eq!(task_b["callback_completed"], true, "{task_b}");

    let received = log.lock().unwrap().clone();
    assert_eq!(
        received.len(),
        3,
        "complete, error, workforce audit; not the customer audit"
    );
    for r in &received {
        assert_eq!(r.headers["refonte-callback-auth"], secret);
        assert_eq!(r.headers["content-type"], "application/json");
        verify_signature(&secret, r, since);
        let body = r.json();
        assert_eq!(body["task_id"], body["task"]["task_id"]);
        assert_eq!(body["response"], body["task"]["response"]);
    }
    let for_task = |id: &str| -> Vec<Value> {
        received
            .iter()
            .map(Received::json)
            .filter(|b| b["task_id"] == id)
            .collect()
    };
    let a = for_task(&done);
    assert_eq!(a.len(), 2);
    let completed = a
        .iter()
        .find(|b| b["task"]["audits"].as_array().unwrap().is_empty())
        .unwrap();
    assert_eq!(completed["response"], json!({"category": "big"}));
    assert_eq!(completed["task"]["status"], "completed");
    let fixed = a
        .iter()
        .find(|b| b["task"]["customer_review_status"] == "fixed")
        .unwrap();
    assert_eq!(
        fixed["response"],
        json!({"category": "small"}),
        "the task as of the audit"
    );
    assert_eq!(
        for_task(&failed)[0]["response"],
        json!({"error": "unreadable"})
    );
    assert!(for_task(&silent).is_empty(), "no callback_url, no callback");
    let delivered = events_of(&history, "CallbackDelivered");
    assert_eq!(delivered[0]["payload"]["status_code"], 200);
    assert_eq!(delivered[0]["actor"]["scope"], "system");
}

async fn failed_and_hung_attempts_are_retried_with_backoff_under_one_delivery_id(backend: Backend) {
    let app = app_for_callbacks(backend, 6, 200).await;
    let (url, log) = receiver_watching(
        vec![
            Step::Answer(500),
            // Far longer than the 10 s attempt timeout: only the timeout ends this attempt.
            Step::Hang(Duration::from_secs(30)),
            Step::Answer(503),
            Step::Answer(204),
        ],
        app.store.clone(),
    )
    .await;
    let id = app.completed(json!({"callback_url": url})).await;
    let (task, history) = settled(&app, &id, "the delivery", |h| {
        !events_of(h, "CallbackDelivered").is_empty()
    })
    .await;
    assert_eq!(task["callback_completed"], true);
    let delivered = events_of(&history, "CallbackDelivered");
    assert_eq!(delivered.len(), 1);
    // The hung attempt would have answered 200 had it been waited for: it was cut.
    assert_eq!(delivered[0]["payload"]["attempts"], 4);
    assert_eq!(delivered[0]["payload"]["status_code"], 204);

    let received = log.lock().unwrap().clone();
    assert_eq!(received.len(), 4);
    let first = received[0].delivery_id().to_string();
    for (i, r) in received.iter().enumerate() {
        assert_eq!(r.delivery_id(), first, "one stable delivery id");
        assert_eq!(r.headers["refonte-callback-attempt"], (i + 1).to_string());
        let row = r.row.as_ref().expect("the delivery was scheduled first");
        assert_eq!(
            row.attempts, i as i64,
            "each failure recorded before the next try"
        );
    }
    // Each failure was recorded with its cause ...
    let errors: Vec<String> = received[1..]
        .iter()
        .map(|r| {
            r.row
                .as_ref()
                .unwrap()
                .last_error
                .clone()
                .unwrap_or_default()
        })
        .collect();
    assert!(errors[0].contains("500"), "{errors:?}");
    assert!(
        !errors[1].contains("answered"),
        "the hung attempt got no answer: {errors:?}"
    );
    assert!(errors[2].contains("503"), "{errors:?}");
    // ... and the next try planned no sooner than the 200 ms base after the failed one was
    // claimed (jitter is at most ±20 %), by the server's own record of both moments.
    for pair in received.windows(2) {
        let (failed, next) = (pair[0].row.as_ref().unwrap(), pair[1].row.as_ref().unwrap());
        let planned_after_us = next.next_attempt_at_us - failed.claimed_at_us;
        assert!(
            planned_after_us >= 160_000,
            "back-off honoured: {planned_after_us} µs"
        );
    }
}

async fn the_last_failed_attempt_is_recorded_and_nothing_more_is_tried(backend: Backend) {
    let (url, log) = receiver(vec![Step::Answer(500); 10]).await;
    let app = app_for_callbacks(backend, 3, 50).await;
    let id = app.completed(json!({"callback_url": url})).await;
    let (task, history) = settled(&app, &id, "the failure", |h| {
        !events_of(h, "CallbackFailed").is_empty()
    })
    .await;
    assert_eq!(task["callback_completed"], false);
    let failed = events_of(&history, "CallbackFailed");
    assert_eq!(failed[0]["payload"]["attempts"], 3);
    assert!(failed[0]["payload"]["last_error"]
        .as_str()
        .unwrap()
        .contains("500"));
    // The delivery is closed as failed (the metric counts it once that is stored) ...
    let metrics = eventually(PATIENCE, "the failure to be counted", async || {
        let text = app.metrics().await;
        let failed = metric_value(
            &text,
            "taskledger_callback_deliveries_total{outcome=\"failed\"}",
        );
        ok_if(failed == Some(1.0), text.clone()).map(|()| text)
    })
    .await;
    assert!(
        metrics.contains("taskledger_callback_deliveries_total{outcome=\"retry\"} 2"),
        "{metrics}"
    );
    // ... so nothing is left for the scheduler to try: the three attempts were all.
    let backlog = app.store.delivery_backlog().await.unwrap();
    assert_eq!(backlog.pending, 0, "{backlog:?}");
    assert_eq!(log.lock().unwrap().len(), 3);
}

async fn private_addresses_are_refused_unless_allowed(backend: Backend) {
    let (url, log) = receiver(vec![]).await;
    let app = spawn_app_with(backend, |s| {
        s.callbacks.callback_allow_private_networks = false;
    })
    .await;
    let id = app.completed(json!({"callback_url": url})).await;
    let (_, history) = settled(&app, &id, "the refusal", |h| {
        !events_of(h, "CallbackFailed").is_empty()
    })
    .await;
    let error = events_of(&history, "CallbackFailed")[0]["payload"]["last_error"].clone();
    let error = error.as_str().unwrap();
    assert!(error.contains("CALLBACK_ALLOW_PRIVATE_NETWORKS"), "{error}");
    assert!(error.contains("not allowed"), "{error}");
    assert!(
        !error.contains("127.0.0.1"),
        "the customer's history does not learn where the host resolved: {error}"
    );
    assert!(log.lock().unwrap().is_empty(), "nothing was sent");
}

/// A server process whose callback attempts time out after `timeout_ms`.
async fn serve(db: &TestDb, port: u16, timeout_ms: &str) -> ServerProcess {
    ServerProcess::start(
        db,
        port,
        &[
            ("CALLBACK_ALLOW_PRIVATE_NETWORKS", "true"),
            ("CALLBACK_RETRY_BASE_MS", "100"),
            ("CALLBACK_RETRY_SPAN_SECS", "0"),
            ("CALLBACK_TIMEOUT_MS", timeout_ms),
        ],
    )
    .await
}

async fn no_callback_is_lost_or_doubled_across_a_sigkill(backend: Backend) {
    // The first attempt of each delivery is never answered (only its 3 s timeout ends it),
    // so the attempts that have started are in flight when the server dies.
    let (url, log) = receiver(vec![Step::Hang(Duration::from_secs(60))]).await;
    let db = TestDb::new(backend).await;
    let api = ProcessClient::new(&db).await;
    let port = free_port();
    let mut server = serve(&db, port, "3000").await;
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(api.completed_task(&server.url, &url, i).await);
    }
    eventually(PATIENCE, "a delivery to start", async || {
        let started = log.lock().unwrap().len();
        ok_if(started > 0, started)
    })
    .await;
    server.kill9();

    server = serve(&db, port, "3000").await;
    api.wait_called_back(&server.url, &ids).await;
    for id in &ids {
        let history = api.get(&server.url, &format!("/task/{id}/history")).await;
        let recorded = history["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "CallbackDelivered")
            .count();
        assert_eq!(recorded, 1, "task {id}: one delivery, recorded once");
    }
    drop(server);
    let received = log.lock().unwrap().clone();
    let mut by_delivery: HashMap<String, Vec<Value>> = HashMap::new();
    for r in &received {
        by_delivery
            .entry(r.delivery_id().to_string())
            .or_default()
            .push(r.json());
    }
    assert_eq!(
        by_delivery.len(),
        12,
        "one delivery per completion, every one arrived"
    );
    // Every first attempt hangs, so each delivery that started before the kill was made
    // again; that alone cannot tell a retry after the restart from one after the timeout
    // (the lease is the timeout plus 5 s, so a longer timeout would keep the restarted
    // server waiting). What proves the crash lost nothing is above: every delivery arrived
    // and is recorded exactly once.
    assert!(
        by_delivery.values().any(|v| v.len() >= 2),
        "a hung attempt was made again"
    );
    for (id, bodies) in &by_delivery {
        assert!(
            bodies.windows(2).all(|w| w[0] == w[1]),
            "a repeat of {id} is the same callback"
        );
    }
    let task_ids: std::collections::HashSet<String> = by_delivery
        .values()
        .map(|b| b[0]["task_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(task_ids.len(), 12);
}

async fn the_callback_secret_is_shown_and_rotated_by_the_cli(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    store.ensure_account("acme").await.unwrap();
    let run = |args: &[&str]| {
        let out = taskledger(&db.url, args);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .to_string()
    };
    let shown = run(&["keys", "callback-secret", "--account", "acme"]);
    assert_eq!(
        Some(shown.clone()),
        store.callback_secret("acme", false).await.unwrap()
    );
    let rotated = run(&["keys", "callback-secret", "--account", "acme", "--rotate"]);
    assert_ne!(rotated, shown);
    assert_eq!(
        Some(rotated),
        store.callback_secret("acme", false).await.unwrap()
    );
}

async fn redirects_are_not_followed(backend: Backend) {
    let (url, log) = receiver(vec![Step::Answer(302), Step::Answer(200)]).await;
    let app = app_for_callbacks(backend, 3, 50).await;
    let id = app.completed(json!({"callback_url": url})).await;
    let (_, history) = settled(&app, &id, "the delivery", |h| {
        !events_of(h, "CallbackDelivered").is_empty()
    })
    .await;
    assert_eq!(
        events_of(&history, "CallbackDelivered")[0]["payload"]["attempts"],
        2
    );
    let received = log.lock().unwrap().clone();
    assert!(
        received.iter().all(|r| r.delivery_id() != "redirected"),
        "a 302 is a failed attempt, not followed"
    );
    assert_eq!(received.len(), 2);
}

/// Two servers on one database: every delivery is attempted by one of them at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_attempt_each_delivery_once() {
    let (url, log) = receiver(vec![Step::Hang(Duration::from_millis(300))]).await;
    let db = TestDb::new(Backend::Postgres).await;
    let api = ProcessClient::new(&db).await;
    // Attempts take 300 ms; a timeout far beyond it means a second attempt of a delivery
    // could only come from the other server.
    let a = serve(&db, free_port(), "30000").await;
    let b = serve(&db, free_port(), "30000").await;
    let mut ids = Vec::new();
    for i in 0..16 {
        let server = if i % 2 == 0 { &a.url } else { &b.url };
        ids.push(api.completed_task(server, &url, i).await);
    }
    api.wait_called_back(&a.url, &ids).await;
    let received = log.lock().unwrap().clone();
    let mut per_delivery: HashMap<String, usize> = HashMap::new();
    for r in &received {
        *per_delivery.entry(r.delivery_id().to_string()).or_default() += 1;
    }
    assert_eq!(per_delivery.len(), 16);
    assert!(
        per_delivery.values().all(|n| *n == 1),
        "one attempt each: {per_delivery:?}"
    );
}

async fn a_test_task_calls_back_signed_with_the_accounts_secret(backend: Backend) {
    let since = chrono::Utc::now().timestamp();
    let (url, log) = receiver(vec![]).await;
    let app = app_for_callbacks(backend, 3, 50).await;
    let test_key = app.test_key().await;
    let tester = app.as_key(&test_key);
    let mut body = crate::helpers::task_body();
    body["callback_url"] = json!(url);
    let id = tester.post("/v1/task/categorization", body).await.task_id();
    app.complete(&id).await;
    let history = eventually(PATIENCE, "the test task's callback", async || {
        let history = tester.history(&id).await;
        if events_of(&history, "CallbackDelivered").is_empty() {
            Err(history)
        } else {
            Ok(history)
        }
    })
    .await;
    assert_eq!(events_of(&history, "CallbackDelivered").len(), 1);
    let received = log.lock().unwrap().clone();
    assert_eq!(received.len(), 1);
    let secret = app.store.callback_secret("acme", false).await.unwrap();
    verify_signature(&secret.unwrap(), &received[0], since);
    let delivered = received[0].json();
    assert_eq!(delivered["task"]["is_test"], json!(true));
    assert_eq!(
        tester.get(&format!("/v1/task/{id}")).await.body["callback_completed"],
        json!(true)
    );
}

/// The callback of a long task's completion is the task as of it, folded from the task's
/// newest snapshot before it: an early event that no longer decodes (damaged behind the
/// ledger's back) is never read, where a fold of the whole history would fail on it.
async fn a_long_tasks_completion_calls_back_from_its_snapshot_not_its_whole_history(
    backend: Backend,
) {
    let (url, log) = receiver(vec![]).await;
    let app = app_for_callbacks(backend, 3, 50).await;
    let id = app.create(json!({"callback_url": url})).await.task_id();
    for i in 0..140 {
        let set = app
            .post(&format!("/v1/task/{id}/setMetadata"), json!({ "i": i }))
            .await;
        assert_eq!(set.status, 200, "{}", set.body);
    }
    let snapshots = app.store.task_snapshots(&[id.as_str()]).await.unwrap();
    assert!(
        snapshots.iter().any(|(_, sequence, _)| *sequence > 64),
        "{:?}",
        snapshots.iter().map(|s| s.1).collect::<Vec<_>>()
    );
    let lift = match backend {
        Backend::Postgres => "ALTER TABLE events DISABLE TRIGGER USER",
        Backend::Sqlite => "DROP TRIGGER events_no_update; DROP TRIGGER events_no_delete",
    };
    sqlx::raw_sql(lift).execute(app.store.pool()).await.unwrap();
    sqlx::query("UPDATE events SET payload = '{}' WHERE task_id = $1 AND sequence = 2")
        .bind(&id)
        .execute(app.store.pool())
        .await
        .unwrap();
    app.complete(&id).await;
    settled(&app, &id, "the completion's callback", |h| {
        !events_of(h, "CallbackDelivered").is_empty()
    })
    .await;
    let received = log.lock().unwrap().clone();
    assert_eq!(received.len(), 1);
    let body = received[0].json();
    assert_eq!(body["task_id"], id.as_str());
    assert_eq!(body["task"]["status"], "completed");
    assert_eq!(body["task"]["metadata"], json!({"i": 139}));
    assert_eq!(body["response"], json!({"category": "big"}));
    assert_eq!(
        body["task"]["callback_completed"], false,
        "as of the completion"
    );
}

on_both_backends!(
    a_long_tasks_completion_calls_back_from_its_snapshot_not_its_whole_history,
    a_test_task_calls_back_signed_with_the_accounts_secret,
    redirects_are_not_followed,
    completing_erroring_and_workforce_audits_call_back_signed,
    failed_and_hung_attempts_are_retried_with_backoff_under_one_delivery_id,
    the_last_failed_attempt_is_recorded_and_nothing_more_is_tried,
    private_addresses_are_refused_unless_allowed,
    no_callback_is_lost_or_doubled_across_a_sigkill,
    the_callback_secret_is_shown_and_rotated_by_the_cli,
);
