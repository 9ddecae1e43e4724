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
