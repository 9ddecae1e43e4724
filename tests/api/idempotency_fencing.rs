//! Idempotency without double execution: keys belong to an account and to the API key that
//! claimed them, a claim taken over fences its previous holder off, and a command whose
//! COMMIT reply was lost is found by its retry instead of being run again.

use serde_json::{json, Value};
use taskledger::ledger::LedgerError;
use taskledger::store::{
    ClaimToken, Claimant, Committed, IdempotencyRecord, IdempotencyState, IdempotencyWrite,
};
use taskledger_events::Scope;

use crate::helpers::{
    categorization, keyed, on_both_backends, spawn_app, task_body, Backend, TestLedger, CREATE,
};

const LEASE_US: i64 = 60_000_000;
const DAY_US: i64 = 86_400_000_000;

async fn tasks_in(t: &TestLedger) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM tasks")
        .fetch_one(t.store.pool())
        .await
        .unwrap()
}

async fn claim(t: &TestLedger, key: &str, now_us: i64) -> IdempotencyState {
    t.store
        .claim_idempotency_key(
            key,
            Claimant {
                account_id: &t.account_id,
                key_id: "key_test_customer",
            },
            "fingerprint-of-the-request",
            now_us,
            now_us + DAY_US,
            LEASE_US,
        )
        .await
        .unwrap()
}

fn claimed(state: IdempotencyState) -> ClaimToken {
    match state {
        IdempotencyState::Claimed(token) => token,
        other => panic!("expected a claim, got {other:?}"),
    }
}

/// Creates a task as the holder of `token` on `key`.
async fn create_holding(
    t: &TestLedger,
    key: &str,
    token: &ClaimToken,
) -> Result<Committed, LedgerError> {
    let holding = Some(IdempotencyWrite {
        key: key.to_string(),
        claim_token: token.clone(),
    });
    t.ledger
        .create(&t.customer(), categorization(None), holding)
        .await
}

/// Releases `key` as the holder of `token`: whether a claim was released.
async fn release(t: &TestLedger, key: &str, token: &ClaimToken) -> bool {
    t.store
        .release_idempotency_key(&t.account_id, key, token)
        .await
        .unwrap()
}

async fn the_same_key_in_two_accounts_is_two_keys(backend: Backend) {
    let app = spawn_app(backend).await;
    let ours = keyed(&app, "order-1", &app.key, CREATE, task_body()).await;
    let theirs = keyed(&app, "order-1", &app.other_key, CREATE, task_body()).await;
    assert_eq!((ours.status, theirs.status), (200, 200), "{}", theirs.body);
    assert_ne!(ours.task_id(), theirs.task_id());
    // Each replays its own answer.
    let ours_again = keyed(&app, "order-1", &app.key, CREATE, task_body()).await;
    let theirs_again = keyed(&app, "order-1", &app.other_key, CREATE, task_body()).await;
    assert_eq!(ours_again.body, ours.body);
    assert_eq!(theirs_again.body, theirs.body);
    assert_eq!(ours_again.headers["idempotent-replayed"], "true");
}

async fn another_api_key_of_the_account_reusing_a_key_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, second_key) = app.store.create_key("acme", Scope::Customer).await.unwrap();
    let first = keyed(&app, "order-2", &app.key, CREATE, task_body()).await;
    assert_eq!(first.status, 200);
    // The same request from another key of the same account: the reference's
    // "different user".
    keyed(&app, "order-2", &second_key, CREATE, task_body())
        .await
        .assert_error(409, "another API key");
    // 400 on the endpoints that never answer 409.
    let id = first.task_id();
    keyed(
        &app,
        "order-2",
        &second_key,
        &format!("/v1/task/{id}/cancel"),
        json!({}),
    )
    .await
    .assert_error(400, "another API key");
    assert_eq!(app.get("/v1/tasks").await.body["total"], 1);
    assert_eq!(
        app.get(&format!("/v1/task/{id}")).await.body["status"],
        "pending"
    );
}

async fn a_claim_taken_over_fences_its_previous_holder_off(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let start = chrono::Utc::now().timestamp_micros();
    let quiet = claimed(claim(&t, "order-3", start).await);
    // Within the lease the key is busy; after it, a retry takes the claim over.
    assert_eq!(
        claim(&t, "order-3", start + 1).await,
        IdempotencyState::InFlight
    );
    let retry = claimed(claim(&t, "order-3", start + LEASE_US + 1).await);
    assert_ne!(quiet, retry);

    // The quiet holder wakes up and tries to commit its command: refused, nothing written.
    let late = create_holding(&t, "order-3", &quiet).await;
    assert!(
        matches!(late, Err(LedgerError::IdempotencyClaimLost)),
        "{late:?}"
    );
    assert_eq!(tasks_in(&t).await, 0);

    // The current holder commits.
    let done = create_holding(&t, "order-3", &retry)
        .await
        .expect("the current holder commits");
    // The old holder can neither record an answer nor release the new one's record.
    assert!(!t
        .store
        .finish_idempotency_key(&t.account_id, "order-3", &quiet, 429, "{}")
        .await
        .unwrap());
    assert!(!release(&t, "order-3", &quiet).await);
    assert_eq!(
        claim(&t, "order-3", start + LEASE_US + 2).await,
        IdempotencyState::Replay(IdempotencyRecord {
            status_code: 200,
            body: done.view.to_json(),
        })
    );
    assert_eq!(tasks_in(&t).await, 1);
}

async fn a_taken_over_claim_cannot_be_released_by_its_previous_holder(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let start = chrono::Utc::now().timestamp_micros();
    let quiet = claimed(claim(&t, "order-4", start).await);
    let retry = claimed(claim(&t, "order-4", start + LEASE_US + 1).await);
    // The quiet holder fails (5xx) and releases: the retry's claim stays in flight.
    assert!(!release(&t, "order-4", &quiet).await);
    assert_eq!(
        claim(&t, "order-4", start + LEASE_US + 2).await,
        IdempotencyState::InFlight
    );
    create_holding(&t, "order-4", &retry)
        .await
        .expect("the retry's claim is intact");
    assert_eq!(tasks_in(&t).await, 1);
}

async fn a_command_whose_commit_reply_was_lost_is_not_run_again_by_its_retry(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let start = chrono::Utc::now().timestamp_micros();
    let token = claimed(claim(&t, "order-5", start).await);
    // The command commits, answer included, in one transaction...
    let committed = create_holding(&t, "order-5", &token).await.unwrap();
    // ...but the reply is lost on its way back (the connection died at COMMIT). The server
    // sees a failure: the committer submits the command again (a create gets a fresh id)...
    let resubmitted = create_holding(&t, "order-5", &token).await;
    assert!(
        matches!(resubmitted, Err(LedgerError::IdempotencyClaimLost)),
        "the answered claim refuses a second commit: {resubmitted:?}"
    );
    // ...and the HTTP layer answers 5xx and releases its claim, which leaves the answer.
    assert!(!release(&t, "order-5", &token).await);
    // The client retries with the same key: it gets the first answer, and one task exists.
    assert_eq!(
        claim(&t, "order-5", start + 1).await,
        IdempotencyState::Replay(IdempotencyRecord {
            status_code: 200,
            body: committed.view.to_json(),
        })
    );
    assert_eq!(tasks_in(&t).await, 1);
}

on_both_backends!(
    the_same_key_in_two_accounts_is_two_keys,
    another_api_key_of_the_account_reusing_a_key_is_refused,
    a_claim_taken_over_fences_its_previous_holder_off,
    a_taken_over_claim_cannot_be_released_by_its_previous_holder,
    a_command_whose_commit_reply_was_lost_is_not_run_again_by_its_retry,
);

/// Forwards PostgreSQL traffic; once armed, lets the next `COMMIT` through, waits for the
/// server's reply (so the commit is done) and drops it, closing the connection: the client
/// never learns that its transaction committed.
async fn commit_reply_eating_proxy(
    upstream: String,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::net::SocketAddr {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                continue;
            };
            let armed = armed.clone();
            tokio::spawn(async move {
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_server, mut to_server) = server.into_split();
                let (eat, mut eating) = tokio::sync::watch::channel(false);
                let up = async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match from_client.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let chunk = &buf[..n];
                        if chunk.windows(6).any(|w| w == b"COMMIT")
                            && armed.swap(false, Ordering::SeqCst)
                        {
                            let _ = eat.send(true);
                        }
                        if to_server.write_all(chunk).await.is_err() {
                            return;
                        }
                        if *eat.borrow() {
                            // Nothing more goes up this connection.
                            std::future::pending::<()>().await;
                        }
                    }
                };
                let down = async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match from_server.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if *eating.borrow_and_update() {
                            // The COMMIT's reply: dropped, and the connection with it.
                            return;
                        }
                        if to_client.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                tokio::select! {
                    () = up => {}
                    () = down => {}
                }
            });
        }
    });
    address
}

/// PostgreSQL only: the connection really is lost at COMMIT, after the commit went through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_whose_commit_reply_is_lost_answers_503_and_its_retry_replays_the_task() {
    use clap::Parser;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use taskledger::cli::{Cli, Command};
    use taskledger::startup::Application;

    let db = crate::helpers::TestDb::new(Backend::Postgres).await;
    let url = url::Url::parse(&db.url).unwrap();
    let upstream = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
    let armed = Arc::new(AtomicBool::new(false));
    let proxy = commit_reply_eating_proxy(upstream, armed.clone()).await;
    let mut proxied = url.clone();
    proxied.set_port(Some(proxy.port())).unwrap();

    let cli = Cli::parse_from([
        "taskledger",
        "--database-url",
        proxied.as_str(),
        "serve",
        "--listen",
        "127.0.0.1:0",
    ]);
    let Command::Serve(serve) = cli.command else {
        panic!("parsed as serve");
    };
    let app = Application::build(&cli.db, &serve).await.unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until(std::future::pending()));
    let store = db.store().await;
    let (_, key) = store.create_key("acme", Scope::Customer).await.unwrap();
    let client = reqwest::Client::new();
    let create = || {
        client
            .post(format!("{base}{CREATE}"))
            .basic_auth(&key, Some(""))
            .header("Idempotency-Key", "lost-at-commit")
            .json(&task_body())
            .send()
    };

    armed.store(true, Ordering::SeqCst);
    let first = create().await.unwrap();
    assert_eq!(
        first.status().as_u16(),
        503,
        "the outcome is unknown to the server"
    );
    assert!(!armed.load(Ordering::SeqCst), "the COMMIT reply was eaten");
    let tasks: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tasks")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(tasks, 1, "the commit went through");

    let retry = create().await.unwrap();
    assert_eq!(retry.status().as_u16(), 200);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    let body: Value = retry.json().await.unwrap();
    let task_id: String = sqlx::query_scalar("SELECT task_id FROM tasks")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(
        body["task_id"],
        task_id.as_str(),
        "the retry replays the committed task"
    );
    let tasks: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tasks")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(tasks, 1, "the retry did not run the create again");
}
