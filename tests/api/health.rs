use crate::helpers::{eventually, ok_if, on_sqlite, spawn_app, within, Backend, PATIENCE};

async fn healthz_and_readyz_answer_200_when_the_store_is_reachable(backend: Backend) {
    let app = spawn_app(backend).await;
    for path in ["/healthz", "/readyz"] {
        let response = app
            .client
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
}

async fn an_unknown_path_answers_a_404_with_the_error_body(backend: Backend) {
    let app = spawn_app(backend).await;
    let response = app
        .client
        .get(format!("{}/v1/nothing-here", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status_code"], 404);
    assert!(body["error"].is_string());
}

on_sqlite!(
    healthz_and_readyz_answer_200_when_the_store_is_reachable,
    an_unknown_path_answers_a_404_with_the_error_body,
);

/// The store gone (PostgreSQL refusing the database's connections): 503s, not 500s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_store_answers_503_and_readyz_says_so() {
    let app = crate::helpers::spawn_app(Backend::Postgres).await;
    assert_eq!(app.create(serde_json::json!({})).await.status, 200);
    let name = app._db.url.rsplit('/').next().unwrap().to_string();
    let admin = format!("{}/postgres", crate::helpers::pg_admin_url());
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
        .await
        .unwrap();
    for sql in [
        format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"),
        format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"),
    ] {
        sqlx::query(&sql).execute(&mut conn).await.unwrap();
    }
    // The answers come (a hang fails the test), and they are 503s.
    let ready = within(PATIENCE, "/readyz to answer", async {
        app.client.get(app.url("/readyz")).send().await.unwrap()
    })
    .await;
    assert_eq!(ready.status(), 503);
    let create = within(
        PATIENCE,
        "a create to answer",
        app.create(serde_json::json!({})),
    )
    .await;
    create.assert_error(503, "unavailable");
    sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .execute(&mut conn)
        .await
        .unwrap();
    eventually(
        PATIENCE,
        "the service to recover with its store",
        async || {
            let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
            ok_if(ready.status() == 200, ready.status())
        },
    )
    .await;
    assert_eq!(app.create(serde_json::json!({})).await.status, 200);
}
