//! Callbacks to a real HTTP receiver on a random port: body, auth, signature, retries with
//! back-off, timeouts, final failure, the private-network guard, and a SIGKILL of the server.

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use taskledger_events::Scope;

use crate::helpers::{
    free_port, on_both_backends, spawn_app_with, Backend, ServerProcess, TestApp, TestDb,
};

/// What the receiver does with the n-th attempt (1-based) of a delivery.
#[derive(Clone, Copy, Debug)]
pub enum Step {
    Answer(u16),
    Hang(Duration),
}

#[derive(Clone, Debug)]
pub struct Received {
    pub at: Instant,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
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
    let attempt = {
        let mut log = r.log.lock().unwrap();
        log.push(Received {
            at: Instant::now(),
            headers,
            body: body.to_vec(),
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
        at: Instant::now(),
        headers: HashMap::from([("refonte-callback-id".to_string(), "redirected".to_string())]),
        body: b"{}".to_vec(),
    });
    StatusCode::OK
}

/// A receiver on a random port; returns its URL and the log of what it received.
pub async fn receiver(script: Vec<Step>) -> (String, Arc<Mutex<Vec<Received>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let state = Receiver {
        script: Arc::new(script),
        log: log.clone(),
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

async fn app_for_callbacks(backend: Backend, attempts: u32, base_ms: u64) -> TestApp {
    spawn_app_with(backend, |s| {
        s.callbacks.callback_allow_private_networks = true;
        s.callbacks.callback_max_attempts = attempts;
        s.callbacks.callback_retry_base_ms = base_ms;
        s.callbacks.callback_retry_span_secs = 0;
        s.callbacks.callback_timeout_ms = 300;
    })
    .await
}

/// Waits until the task's callback_completed (or its history) satisfies `done`.
async fn wait_for(
    app: &TestApp,
    id: &str,
    what: &str,
    done: impl Fn(&Value, &[Value]) -> bool,
) -> (Value, Vec<Value>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let task = app.get(&format!("/v1/task/{id}")).await.body;
        let history = app.get(&format!("/v1/task/{id}/history")).await.body["events"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if done(&task, &history) {
            return (task, history);
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {task}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn events_of(history: &[Value], event_type: &str) -> Vec<Value> {
    history
        .iter()
        .filter(|e| e["type"] == event_type)
        .cloned()
        .collect()
}

fn verify_signature(secret: &str, r: &Received) {
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
    let age = chrono::Utc::now().timestamp() - t.parse::<i64>().unwrap();
    assert!((0..60).contains(&age), "a fresh timestamp");
}

async fn completing_erroring_and_workforce_audits_call_back_signed(backend: Backend) {
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
    app.contributor_post(
        &format!("/v1/task/{failed}/error"),
        json!({"error": "unreadable"}),
    )
    .await;
    app.post(
        &format!("/v1/task/{done}/audit"),
        json!({"accepted": false}),
    )
    .await;
    app.contributor_post(
        &format!("/v1/task/{done}/audit"),
        json!({"audit_result": "fixed", "response": {"category": "small"}}),
    )
    .await;
    let silent = app.completed(json!({})).await;

    let (task, history) = wait_for(&app, &done, "two deliveries", |_, h| {
        events_of(h, "CallbackDelivered").len() == 2
    })
    .await;
    assert_eq!(task["callback_completed"], true);
    let (task_b, _) = wait_for(&app, &failed, "the error callback", |t, _| {
        t["callback_completed"] == true
    })
    .await;
    assert_eq!(task_b["status"], "error");

    let received = log.lock().unwrap().clone();
    assert_eq!(
        received.len(),
        3,
        "complete, error, workforce audit; not the customer audit"
    );
    for r in &received {
        assert_eq!(r.headers["refonte-callback-auth"], secret);
        assert_eq!(r.headers["content-type"], "application/json");
        verify_signature(&secret, r);
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
    let (url, log) = receiver(vec![
        Step::Answer(500),
        Step::Hang(Duration::from_secs(2)),
        Step::Answer(503),
        Step::Answer(204),
    ])
    .await;
    let app = app_for_callbacks(backend, 6, 200).await;
    let id = app.completed(json!({"callback_url": url})).await;
    let (task, history) = wait_for(&app, &id, "delivery", |t, _| {
        t["callback_completed"] == true
    })
    .await;
    assert_eq!(task["callback_completed"], true);
    let delivered = events_of(&history, "CallbackDelivered");
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0]["payload"]["attempts"], 4);
    assert_eq!(delivered[0]["payload"]["status_code"], 204);

    let received = log.lock().unwrap().clone();
    assert_eq!(received.len(), 4);
    let first = received[0].delivery_id().to_string();
    for (i, r) in received.iter().enumerate() {
        assert_eq!(r.delivery_id(), first, "one stable delivery id");
        assert_eq!(r.headers["refonte-callback-attempt"], (i + 1).to_string());
    }
    // The schedule never shrinks below the 200 ms base (jitter is at most ±20 %), and the
    // hung attempt was cut by the 300 ms timeout before the next one.
    for pair in received.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(160),
            "back-off honoured: {gap:?}"
        );
    }
    assert!(received[2].at - received[1].at >= Duration::from_millis(300 + 160));
}

async fn the_last_failed_attempt_is_recorded_and_nothing_more_is_tried(backend: Backend) {
    let (url, log) = receiver(vec![Step::Answer(500); 10]).await;
    let app = app_for_callbacks(backend, 3, 50).await;
    let id = app.completed(json!({"callback_url": url})).await;
    let (task, history) = wait_for(&app, &id, "the failure", |_, h| {
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
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(log.lock().unwrap().len(), 3);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("taskledger_callback_deliveries_total{outcome=\"failed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("taskledger_callback_deliveries_total{outcome=\"retry\"} 2"),
        "{metrics}"
    );
}

async fn private_addresses_are_refused_unless_allowed(backend: Backend) {
    let (url, log) = receiver(vec![]).await;
    let app = spawn_app_with(backend, |s| {
        s.callbacks.callback_allow_private_networks = false;
    })
    .await;
    let id = app.completed(json!({"callback_url": url})).await;
    let (_, history) = wait_for(&app, &id, "the refusal", |_, h| {
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

async fn serve(db: &TestDb, port: u16) -> ServerProcess {
    ServerProcess::start(
        db,
        port,
        &[
            ("CALLBACK_ALLOW_PRIVATE_NETWORKS", "true"),
            ("CALLBACK_RETRY_BASE_MS", "100"),
            ("CALLBACK_RETRY_SPAN_SECS", "0"),
            ("CALLBACK_TIMEOUT_MS", "3000"),
        ],
    )
    .await
}

/// A client of a server process, with a customer and a contributor key of one account.
struct ProcessClient {
    client: reqwest::Client,
    key: String,
    worker: String,
}

impl ProcessClient {
    async fn new(db: &TestDb) -> ProcessClient {
        let store = db.store().await;
        let (_, key) = store.create_key("acme", Scope::Customer).await.unwrap();
        let (_, worker) = store.create_key("acme", Scope::Contributor).await.unwrap();
        ProcessClient {
            client: reqwest::Client::new(),
            key,
            worker,
        }
    }

    async fn get(&self, server: &str, path: &str) -> Value {
        self.client
            .get(format!("{server}/v1{path}"))
            .basic_auth(&self.key, Some(""))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Creates a task calling back `url` and completes it; returns its id.
    async fn completed_task(&self, server: &str, url: &str, i: usize) -> String {
        let created: Value = self
            .client
            .post(format!("{server}/v1/task/documenttranscription"))
            .basic_auth(&self.key, Some(""))
            .json(&json!({"attachment": format!("d{i}"), "callback_url": url}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = created["task_id"].as_str().unwrap().to_string();
        let done = self
            .client
            .post(format!("{server}/v1/task/{id}/complete"))
            .basic_auth(&self.worker, Some(""))
            .json(&json!({"response": {"text": "ok"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(done.status(), 200);
        id
    }

    /// Waits until every task says `callback_completed`.
    async fn wait_called_back(&self, server: &str, ids: &[String]) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for id in ids {
            while self.get(server, &format!("/task/{id}")).await["callback_completed"] != true {
                assert!(Instant::now() < deadline, "task {id} was never called back");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn no_callback_is_lost_or_doubled_across_a_sigkill(backend: Backend) {
    // The first attempts are answered slowly, so they are in flight when the server dies.
    let (url, log) = receiver(vec![Step::Hang(Duration::from_millis(1500))]).await;
    let db = TestDb::new(backend).await;
    let api = ProcessClient::new(&db).await;
    let port = free_port();
    let mut server = serve(&db, port).await;
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(api.completed_task(&server.url, &url, i).await);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while log.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no delivery started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill9();

    server = serve(&db, port).await;
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
    assert!(
        by_delivery.values().any(|v| v.len() >= 2),
        "an attempt cut by the kill was made again after the restart"
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
        let out = Command::new(env!("CARGO_BIN_EXE_taskledger"))
            .args(args)
            .env("DATABASE_URL", &db.url)
            .output()
            .unwrap();
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
    let (_, history) = wait_for(&app, &id, "delivery", |t, _| {
        t["callback_completed"] == true
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
    let a = serve(&db, free_port()).await;
    let b = serve(&db, free_port()).await;
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

on_both_backends!(
    redirects_are_not_followed,
    completing_erroring_and_workforce_audits_call_back_signed,
    failed_and_hung_attempts_are_retried_with_backoff_under_one_delivery_id,
    the_last_failed_attempt_is_recorded_and_nothing_more_is_tried,
    private_addresses_are_refused_unless_allowed,
    no_callback_is_lost_or_doubled_across_a_sigkill,
    the_callback_secret_is_shown_and_rotated_by_the_cli,
);
