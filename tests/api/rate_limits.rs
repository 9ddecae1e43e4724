//! Per-key rate limits (issue 12): 429 with `Retry-After` over the limit, the `X-RateLimit-*`
//! headers on every authenticated answer, one key's limit never touching another's. The
//! limit here refills one token in 1000 s, so no request of a test can earn one back: what is
//! asserted never depends on how fast the machine is.

use serde_json::json;

use crate::helpers::{metric_value, on_sqlite, spawn_app_with, Backend, Reply};

fn header(reply: &Reply, name: &str) -> Option<String> {
    reply
        .headers
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

async fn a_key_over_its_limit_gets_429_with_retry_after_and_other_keys_are_untouched(
    backend: Backend,
) {
    let app = spawn_app_with(backend, |serve| {
        serve.limits.rate_limit_per_sec = 0.001;
        serve.limits.rate_limit_burst = 2;
    })
    .await;
    for remaining in ["1", "0"] {
        let reply = app.get("/v1/tasks").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(header(&reply, "x-ratelimit-limit").as_deref(), Some("2"));
        assert_eq!(
            header(&reply, "x-ratelimit-remaining").as_deref(),
            Some(remaining)
        );
        assert!(header(&reply, "x-ratelimit-reset").is_some());
        assert!(header(&reply, "retry-after").is_none());
    }
    let refused = app.create(json!({})).await;
    refused.assert_error(429, "too many requests");
    assert_eq!(
        header(&refused, "x-ratelimit-remaining").as_deref(),
        Some("0")
    );
    let retry: u64 = header(&refused, "retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1, "{retry}");
    assert!(app.get("/v1/tasks").await.status == 429);

    // Another account, and another key of the same account, have buckets of their own.
    for key in [&app.other_key, &app.contributor_key] {
        let reply = app.as_key(key).get("/v1/events").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(
            header(&reply, "x-ratelimit-remaining").as_deref(),
            Some("1")
        );
    }
    // A key that does not authenticate gets its 401 and no bucket.
    let stranger = app.as_key("not-a-key").get("/v1/tasks").await;
    assert_eq!(stranger.status, 401);
    assert!(header(&stranger, "x-ratelimit-limit").is_none());

    let metrics = app.metrics().await;
    assert_eq!(
        metric_value(&metrics, "taskledger_rate_limited_total{account=\"acme\"}"),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            "taskledger_rate_limited_total{account=\"globex\"}"
        ),
        None
    );
}

on_sqlite!(a_key_over_its_limit_gets_429_with_retry_after_and_other_keys_are_untouched);
