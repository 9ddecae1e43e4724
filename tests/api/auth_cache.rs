//! Authentication is cached in each server process, and a revoked key is still refused by
//! every process without a restart: by the server that cached it, by a second server on the
//! same PostgreSQL, and by a SQLite server when the CLI (another process) revokes it.

use serde_json::Value;
use taskledger_events::Scope;

use crate::helpers::process::taskledger;
use crate::helpers::{
    eventually, free_port, ok_if, spawn_app, Backend, ServerProcess, TestDb, PATIENCE,
};

/// GET `/v1/tasks` on `server` as `key`: the status.
async fn list_status(client: &reqwest::Client, server: &str, key: &str) -> u16 {
    client
        .get(format!("{server}/v1/tasks"))
        .basic_auth(key, Some(""))
        .send()
        .await
        .expect("the server answers")
        .status()
        .as_u16()
}

/// Waits until `server` refuses `key` with a 401 naming the revocation.
async fn until_refused(client: &reqwest::Client, server: &str, key: &str) {
    let body: Value = eventually(PATIENCE, "the revoked key to be refused", async || {
        let reply = client
            .get(format!("{server}/v1/tasks"))
            .basic_auth(key, Some(""))
            .send()
            .await
            .expect("the server answers");
        let status = reply.status().as_u16();
        let body: Value = reply.json().await.unwrap_or_default();
        ok_if(status == 401, (status, body.clone())).map(|()| body)
    })
    .await;
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("revoked"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_revoked_from_another_connection_is_refused_by_the_server_that_cached_it() {
    let app = spawn_app(Backend::Postgres).await;
    let client = reqwest::Client::new();
    for _ in 0..3 {
        assert_eq!(list_status(&client, &app.address, &app.key).await, 200);
    }
    let principal = app.store.authenticate(&app.key).await.unwrap().unwrap();
    assert!(app.store.revoke_key(&principal.key_id).await.unwrap());
    until_refused(&client, &app.address, &app.key).await;
    assert_eq!(
        list_status(&client, &app.address, &app.other_key).await,
        200,
        "the other keys are still served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_revoked_by_the_cli_is_refused_by_both_servers_sharing_one_postgres() {
    let db = TestDb::new(Backend::Postgres).await;
    let store = db.store().await;
    let (record, key) = store.create_key("acme", Scope::Customer).await.unwrap();
    let (_, other) = store.create_key("acme", Scope::Customer).await.unwrap();
    let first = ServerProcess::start(&db, free_port(), &[]).await;
    let second = ServerProcess::start(&db, free_port(), &[]).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    for server in [&first, &second] {
        for _ in 0..3 {
            assert_eq!(list_status(&client, &server.url, &key).await, 200);
        }
    }
    let revoked = taskledger(&db.url, &["keys", "revoke", &record.key_id]);
    assert!(revoked.status.success(), "{revoked:?}");
    for server in [&first, &second] {
        until_refused(&client, &server.url, &key).await;
        assert_eq!(list_status(&client, &server.url, &other).await, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_revoked_by_the_cli_is_refused_by_the_running_sqlite_server() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.store().await;
    let (record, key) = store.create_key("acme", Scope::Customer).await.unwrap();
    let server = ServerProcess::start(&db, free_port(), &[]).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    for _ in 0..3 {
        assert_eq!(list_status(&client, &server.url, &key).await, 200);
    }
    let revoked = taskledger(&db.url, &["keys", "revoke", &record.key_id]);
    assert!(revoked.status.success(), "{revoked:?}");
    until_refused(&client, &server.url, &key).await;
}
