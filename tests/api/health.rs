use crate::helpers::{on_both_backends, spawn_app, Backend};

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

on_both_backends!(
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
    let started = std::time::Instant::now();
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let create = app.create(serde_json::json!({})).await;
    create.assert_error(503, "unavailable");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(25),
        "{:?}",
        started.elapsed()
    );
    sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .execute(&mut conn)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
        if ready.status() == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the service recovers with its store"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(app.create(serde_json::json!({})).await.status, 200);
}
