//! The server protects itself: header-read, body-read and request deadlines, a cap on
//! connections, and no event larger than the stream can carry.

use reqwest::Method;
use serde_json::json;
use sqlx::Connection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{
    eventually, keyed, ok_if, on_both_backends, spawn_app, spawn_app_with, task_body, within,
    Backend, TestApp, CREATE, PATIENCE,
};

fn address(app: &TestApp) -> String {
    app.address.trim_start_matches("http://").to_string()
}

/// Reads until the server closes the connection; what it sent before closing.
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    within(PATIENCE, "the server closing the connection", async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&received).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.limits.header_read_timeout_secs = 1).await;
    let mut stream = TcpStream::connect(address(&app)).await.unwrap();
    stream
        .write_all(b"POST /v1/task/categorization HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let answered = read_until_closed(&mut stream).await;
    assert!(!answered.contains("200 OK"), "no request ran: {answered:?}");
    // The server still serves everyone else.
    assert_eq!(app.get("/healthz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_connects_and_sends_nothing_is_disconnected() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.limits.header_read_timeout_secs = 1).await;
    let mut stream = TcpStream::connect(address(&app)).await.unwrap();
    let answered = read_until_closed(&mut stream).await;
    assert!(!answered.contains("200 OK"), "no request ran: {answered:?}");
    assert_eq!(app.get("/healthz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_body_that_stalls_is_refused_with_408() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.limits.body_read_timeout_secs = 1).await;
    let mut stream = TcpStream::connect(address(&app)).await.unwrap();
    let auth = base64_basic(&app.key);
    let head = format!(
        "POST /v1/task/categorization HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n\
         Content-Type: application/json\r\nIdempotency-Key: stalled\r\n\
         Content-Length: 100\r\n\r\n{{\"attachment\": "
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let answered = read_until_closed(&mut stream).await;
    assert!(
        answered.starts_with("HTTP/1.1 408"),
        "a stalled body answers 408: {answered:?}"
    );
    assert!(answered.contains("not received in time"), "{answered:?}");
    assert_eq!(app.get("/v1/tasks").await.body["total"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_over_the_cap_wait_until_one_closes() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.limits.max_connections = 1;
        s.limits.header_read_timeout_secs = 1;
    })
    .await;
    // The one connection allowed, held by a client that never finishes its headers.
    let mut holder = TcpStream::connect(address(&app)).await.unwrap();
    holder
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .unwrap();
    // Wait until the server has accepted it: a probe on a second connection can only be
    // answered after the holder is cut off.
    let mut probe = TcpStream::connect(address(&app)).await.unwrap();
    probe
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answered = read_until_closed(&mut probe).await;
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered:?}");
    // Served only once the holder's slot was freed: it is closed already.
    let mut buf = [0u8; 64];
    let holder_state = loop {
        match holder.try_read(&mut buf) {
            Ok(0) => break "closed",
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break "open",
            Err(_) => break "closed",
        }
    };
    assert_eq!(
        holder_state, "closed",
        "the second connection was served while the first still held the only slot"
    );
}

/// SQLite only: a write lock held by the test keeps a create waiting (its busy timeout is
/// far longer than the request timeout), so the request deadline is what answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_that_takes_too_long_answers_503() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.limits.request_timeout_secs = 1).await;
    let url = app._db.url.clone();
    let mut blocker = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut blocker)
        .await
        .unwrap();
    let reply = app.create(json!({})).await;
    reply.assert_error(503, "did not complete within 1 s");
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    // The server is fine afterwards.
    assert_eq!(app.get("/healthz").await.status, 200);
}

/// PostgreSQL only: the test holds the ledger head, so the key is claimed but the command
/// waits, and the request deadline cuts the request off with its claim taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_cut_off_by_its_deadline_releases_its_idempotency_key_for_the_retry() {
    let app = spawn_app_with(Backend::Postgres, |s| s.limits.request_timeout_secs = 1).await;
    let mut blocker = sqlx::PgConnection::connect(&app._db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("SELECT last_position FROM ledger_head FOR UPDATE")
        .execute(&mut blocker)
        .await
        .unwrap();

    keyed(&app, "retry-me", &app.key, CREATE, task_body())
        .await
        .assert_error(503, "did not complete within 1 s");
    let unanswered_claims = || async {
        let (n,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM idempotency_keys WHERE idem_key = 'retry-me'")
                .fetch_one(app.store.pool())
                .await
                .unwrap();
        n
    };
    eventually(
        PATIENCE,
        "the cut-off request's claim to be released",
        async || {
            let n = unanswered_claims().await;
            ok_if(n == 0, n)
        },
    )
    .await;
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();

    // The retry the 503 asks for runs at once, and the command happens once: the cut-off
    // command, still queued when its claim went, could not commit without it.
    let retried = keyed(&app, "retry-me", &app.key, CREATE, task_body()).await;
    assert_eq!(retried.status, 200, "{}", retried.body);
    let again = keyed(&app, "retry-me", &app.key, CREATE, task_body()).await;
    assert_eq!(again.body["task_id"], retried.body["task_id"]);
    let list = app.get("/v1/tasks").await;
    assert_eq!(list.body["total"], 1, "{}", list.body);
}

fn base64_basic(key: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
}

/// 1.5 MB: under the request body limit (10 MiB), over the default KAFKA_MESSAGE_MAX_BYTES
/// (1 MB). Refused by the field limit of `attachment` where one applies, else by the
/// whole-event check; either way before anything is written.
async fn a_create_of_one_and_a_half_megabytes_is_refused_and_writes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let reply = app
        .create(json!({"attachment": "x".repeat(1_500_000)}))
        .await;
    let message = reply.body["error"].as_str().unwrap_or_default().to_string();
    assert!(
        (reply.status == 413 && message.contains("KAFKA_MESSAGE_MAX_BYTES"))
            || (reply.status == 400 && message.contains("attachment")),
        "{} {}",
        reply.status,
        reply.body
    );
    // The fixture's API keys are events of their accounts; no task event may be.
    let events: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE event_type NOT LIKE 'ApiKey%'")
            .fetch_one(app.store.pool())
            .await
            .unwrap();
    assert_eq!(events, 0, "nothing was written");
    assert_eq!(app.get("/v1/tasks").await.body["total"], 0);
}

async fn an_event_over_kafka_message_max_bytes_answers_413_even_without_a_relay(backend: Backend) {
    let app = spawn_app_with(backend, |s| {
        assert!(s.kafka_brokers.is_none());
        s.relay.kafka_message_max_bytes = 5_000;
    })
    .await;
    let reply = app
        .as_key(&app.key)
        .send(
            Method::POST,
            "/v1/task/categorization",
            Some(json!({
                "attachment_type": "text",
                "attachment": "x".repeat(6_000),
                "categories": ["big", "small"],
            })),
        )
        .await;
    reply.assert_error(413, "5000 bytes");
    let message = reply.body["error"].as_str().unwrap();
    let size: usize = message
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .expect("names the size");
    assert!(size > 6_000, "the size counts the whole event: {message}");
    // Every field well within its own limit, together too large for the stream.
    app.create(json!({
        "instruction": "i".repeat(2_000),
        "attachment": "a".repeat(2_000),
        "metadata": {"note": "m".repeat(2_000)},
    }))
    .await
    .assert_error(413, "KAFKA_MESSAGE_MAX_BYTES");
    // The fixture's API keys are events of their accounts; no task event may be.
    let events: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE event_type NOT LIKE 'ApiKey%'")
            .fetch_one(app.store.pool())
            .await
            .unwrap();
    assert_eq!(events, 0, "nothing was written");
    let small = app.create(json!({"attachment": "car"})).await;
    assert_eq!(small.status, 200, "{}", small.body);
    // A later command on the task is checked too.
    let id = small.task_id();
    app.post(
        &format!("/v1/task/{id}/setMetadata"),
        json!({"blob": "y".repeat(4_500)}),
    )
    .await
    .assert_error(413, "5000 bytes");
}

/// Projects and batches take bodies up to the server's body limit, far above a stream record:
/// a params or metadata too large to publish is refused before it is recorded, so it can never
/// stop the relay for every account.
async fn a_project_or_batch_event_over_kafka_message_max_bytes_answers_413_and_writes_nothing(
    backend: Backend,
) {
    let app = spawn_app_with(backend, |s| s.relay.kafka_message_max_bytes = 5_000).await;
    let big = json!({"instruction": "x".repeat(6_000)});
    app.post(
        "/v1/projects",
        json!({"type": "categorization", "name": "big", "params": big}),
    )
    .await
    .assert_error(413, "KAFKA_MESSAGE_MAX_BYTES");
    assert_eq!(app.get("/v1/projects/big").await.status, 404);

    let made = app
        .post(
            "/v1/projects",
            json!({"type": "categorization", "name": "p"}),
        )
        .await;
    assert_eq!(made.status, 200, "{}", made.body);
    app.post("/v1/projects/p/setParams", big.clone())
        .await
        .assert_error(413, "5000 bytes");
    let batch = app
        .post("/v1/batches", json!({"project": "p", "name": "b"}))
        .await;
    assert_eq!(batch.status, 200, "{}", batch.body);
    app.post(
        "/v1/batches/b/setMetadata",
        json!({"blob": "y".repeat(6_000)}),
    )
    .await
    .assert_error(413, "5000 bytes");

    let events: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM events WHERE event_type NOT LIKE 'ApiKey%' ORDER BY global_position",
    )
    .fetch_all(app.store.pool())
    .await
    .unwrap();
    assert_eq!(
        events,
        vec!["ProjectCreated", "BatchCreated"],
        "nothing else was written"
    );
    assert_eq!(
        app.get("/v1/projects/p").await.body["param_history"],
        json!([])
    );
    assert_eq!(app.get("/v1/batches/b").await.body["metadata"], json!({}));
}

on_both_backends!(
    a_project_or_batch_event_over_kafka_message_max_bytes_answers_413_and_writes_nothing,
    a_create_of_one_and_a_half_megabytes_is_refused_and_writes_nothing,
    an_event_over_kafka_message_max_bytes_answers_413_even_without_a_relay,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_declared_over_the_limit_is_refused_before_it_is_sent() {
    // Were the body awaited, the 1 s body deadline would answer instead of the 413.
    let app = spawn_app_with(Backend::Sqlite, |s| s.limits.body_read_timeout_secs = 1).await;
    let mut stream = TcpStream::connect(address(&app)).await.unwrap();
    let head = format!(
        "POST /v1/task/categorization HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        base64_basic(&app.key),
        10 * 1024 * 1024 + 1
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let answered = read_until_closed(&mut stream).await;
    assert!(answered.starts_with("HTTP/1.1 413"), "{answered:?}");
    assert!(
        answered.contains("TASKLEDGER_MAX_BODY_BYTES"),
        "{answered:?}"
    );
}
