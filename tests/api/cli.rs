//! The `taskledger` binary, run as an operator would.

use std::process::{Command, Output, Stdio};

use serde_json::json;
use taskledger_events::Scope;

use crate::helpers::process::taskledger;
use crate::helpers::{
    eventually, free_port, on_both_backends, tamper_with_event, Backend, TestLedger, PATIENCE,
};

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string()
}

async fn keys_create_prints_a_working_key_alone_on_the_last_line(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let created = taskledger(
        &t.db.url,
        &[
            "keys",
            "create",
            "--account",
            "initech",
            "--scope",
            "contributor",
        ],
    );
    assert!(created.status.success(), "{created:?}");
    let out = stdout(&created);
    let key = out.lines().last().expect("a last line").to_string();
    assert!(key.starts_with("tl_") && !key.contains(' '), "{out:?}");

    let principal = t
        .store
        .authenticate(&key)
        .await
        .unwrap()
        .expect("the key authenticates");
    assert_eq!(principal.account_name, "initech");
    assert_eq!(principal.scope, Scope::Contributor);
    assert!(!principal.is_test, "a key is live unless asked otherwise");
    let stored: Vec<String> = sqlx::query_scalar("SELECT key_hash FROM api_keys")
        .fetch_all(t.store.pool())
        .await
        .unwrap();
    assert!(
        !stored.iter().any(|h| h.contains(&key)),
        "only a hash is stored"
    );

    let listed = stdout(&taskledger(&t.db.url, &["keys", "list"]));
    assert!(
        listed.contains(&principal.key_id) && listed.contains("active"),
        "{listed}"
    );
    assert!(!listed.contains(&key), "list never shows keys");

    let revoked = taskledger(&t.db.url, &["keys", "revoke", &principal.key_id]);
    assert!(revoked.status.success(), "{revoked:?}");
    assert!(
        t.store.authenticate(&key).await.unwrap().is_none(),
        "a revoked key is refused"
    );
    assert!(stdout(&taskledger(&t.db.url, &["keys", "list"])).contains("revoked"));
    let again = taskledger(&t.db.url, &["keys", "revoke", &principal.key_id]);
    assert!(!again.status.success());
}

async fn keys_create_test_makes_a_test_mode_key_recorded_as_such(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let created = taskledger(
        &t.db.url,
        &["keys", "create", "--account", "initech", "--test"],
    );
    assert!(created.status.success(), "{created:?}");
    let key = stdout(&created).lines().last().unwrap().to_string();
    let principal = t.store.authenticate(&key).await.unwrap().unwrap();
    assert!(principal.is_test);
    assert_eq!(principal.scope, Scope::Customer);
    let listed = stdout(&taskledger(&t.db.url, &["keys", "list"]));
    let line = listed
        .lines()
        .find(|l| l.starts_with(&principal.key_id))
        .expect("the key is listed");
    assert!(line.contains("\ttest\t"), "{line}");

    let payload: String =
        sqlx::query_scalar("SELECT payload FROM events WHERE task_id = $1 AND sequence = 1")
            .bind(&principal.key_id)
            .fetch_one(t.store.pool())
            .await
            .unwrap();
    let payload: serde_json::Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(
        payload["is_test"],
        json!(true),
        "the ledger proves the key's mode"
    );
}

async fn verify_exits_nonzero_naming_the_tampered_event(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let task = t.create(None).await;
    t.set_metadata(&task, json!({"x": 1})).await;
    let ok = taskledger(&t.db.url, &["verify"]);
    assert!(ok.status.success(), "{ok:?}");
    assert!(stdout(&ok).contains("2 events"), "{}", stdout(&ok));

    let events = t.store.events_after(0, 10, None).await.unwrap();
    tamper_with_event(&t.db, &t.store, 2, r#"{"metadata":{"x":2}}"#).await;
    let broken = taskledger(&t.db.url, &["verify"]);
    assert_eq!(broken.status.code(), Some(1));
    let out = stdout(&broken);
    assert!(out.contains(&events[1].event_id.to_string()), "{out}");
    assert!(out.contains("global position 2"), "{out}");
}

async fn replay_rebuilds_the_views_from_the_events(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let task = t.create(Some("u")).await;
    t.add_tags(&task, &["z"]).await;
    let live = crate::helpers::projection_snapshot(&t.store).await;
    sqlx::query("DELETE FROM tasks")
        .execute(t.store.pool())
        .await
        .unwrap();
    let check = taskledger(&t.db.url, &["replay", "--check"]);
    assert_eq!(check.status.code(), Some(1), "{check:?}");
    let replay = taskledger(&t.db.url, &["replay"]);
    assert!(replay.status.success(), "{replay:?}");
    assert!(
        stdout(&replay).contains("replayed 2 events into 1 tasks"),
        "{}",
        stdout(&replay)
    );
    assert_eq!(crate::helpers::projection_snapshot(&t.store).await, live);
    assert!(taskledger(&t.db.url, &["replay", "--check"])
        .status
        .success());
}

on_both_backends!(
    keys_create_prints_a_working_key_alone_on_the_last_line,
    keys_create_test_makes_a_test_mode_key_recorded_as_such,
    verify_exits_nonzero_naming_the_tampered_event,
    replay_rebuilds_the_views_from_the_events,
);

/// The README's first command: no configuration at all, in an empty directory.
#[tokio::test]
async fn serve_with_no_configuration_answers_healthz_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_taskledger"))
        .arg("serve")
        .current_dir(dir.path())
        .env_remove("DATABASE_URL")
        .env_remove("KAFKA_BROKERS")
        .env("TASKLEDGER_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/healthz");
    let answered = eventually(PATIENCE, "serve to answer /healthz", async || {
        reqwest::get(&url).await.map(|r| r.status().as_u16())
    })
    .await;
    assert_eq!(answered, 200);
    assert!(
        dir.path().join("taskledger.db").exists(),
        "the SQLite ledger is created in place"
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exited = eventually(PATIENCE, "serve to exit after SIGTERM", async || {
        child.try_wait().unwrap().ok_or("still running")
    })
    .await;
    assert!(exited.success(), "{exited:?}");
}

/// `taskledger bench` measures the ledger against the database's own commit rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bench_reports_the_ledger_against_the_database_anchor() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let db = crate::helpers::TestDb::new(backend).await;
        let out = taskledger(
            &db.url,
            &["bench", "--commands", "200", "--concurrency", "8"],
        );
        assert!(out.status.success(), "{out:?}");
        let text = stdout(&out);
        assert!(text.contains("anchor: one-row transactions"), "{text}");
        assert!(text.contains("ledger / anchor:"), "{text}");
        let store = db.store().await;
        assert_eq!(
            store.count_events().await.unwrap(),
            200,
            "the ledger run really wrote"
        );
        assert!(store.verify(|_| {}).await.unwrap().is_intact());
    }
}

/// A SQLite ledger is served by one process; a second `serve` says so and exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_serve_on_one_sqlite_ledger_is_refused() {
    let db = crate::helpers::TestDb::new(Backend::Sqlite).await;
    let _first = crate::helpers::ServerProcess::start(&db, crate::helpers::free_port(), &[]).await;
    // Bounded and killed on drop: if the lock ever stops refusing it, this second serve
    // would run forever, and the test must fail rather than hang.
    let second = tokio::process::Command::new(env!("CARGO_BIN_EXE_taskledger"))
        .arg("serve")
        .env("DATABASE_URL", &db.url)
        .env(
            "TASKLEDGER_LISTEN",
            format!("127.0.0.1:{}", crate::helpers::free_port()),
        )
        .kill_on_drop(true)
        .output();
    let second =
        crate::helpers::within(crate::helpers::PATIENCE, "the second serve to exit", second)
            .await
            .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("already using the SQLite ledger"),
        "{stderr}"
    );
}
