//! The relay never skips an event: one it cannot publish for good (already in the ledger,
//! whatever the API accepts today) or cannot even read halts it, loudly, holding back the
//! events after it.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use taskledger_events::EventEnvelope;

use crate::helpers::{metric_value, on_both_backends, spawn_app_with, Backend, TestApp};
use crate::kafka::Broker;

async fn relayed_app(backend: Backend, broker: &Broker, topic: &str) -> TestApp {
    spawn_app_with(backend, |s| {
        s.kafka_brokers = Some(broker.addr.clone());
        s.relay.kafka_topic = topic.to_string();
        s.relay.kafka_message_max_bytes = 4096;
    })
    .await
}

/// Waits, for at most 60 s, until the relay's state, lag and published count satisfy `done`.
async fn wait_for_relay(app: &TestApp, what: &str, done: impl Fn(f64, f64, f64) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = app.metrics().await;
        let state = metric_value(&text, "taskledger_relay_state");
        let lag = metric_value(&text, "taskledger_relay_lag_events");
        let published = metric_value(&text, "taskledger_relay_published_total");
        if let (Some(state), Some(lag), Some(published)) = (state, lag, published) {
            if done(state, lag, published) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Appends an event of acme, for a task of its own, at the head of the ledger behind the
/// API's back, the way the append path does (moving the head first), so the readers of the
/// global order meet it before anything committed after it.
pub async fn append_raw_event(app: &TestApp, event_type: &str, payload: &str) {
    let account: String = sqlx::query_scalar("SELECT account_id FROM accounts WHERE name = 'acme'")
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    let mut tx = app.store.pool().begin().await.unwrap();
    let position: i64 = sqlx::query_scalar(
        "UPDATE ledger_head SET last_position = last_position + 1 WHERE id = 1 \
         RETURNING last_position",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO events (global_position, event_id, task_id, account_id, sequence, event_type, \
         event_version, payload, recorded_at_us, actor_account_id, actor_key_id, actor_scope, \
         request_id, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, 1, $5, 1, $6, $7, $4, NULL, 'customer', NULL, $8, $8)",
    )
    .bind(position)
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(format!("task_raw_{position}"))
    .bind(&account)
    .bind(event_type)
    .bind(payload)
    .bind(chrono::Utc::now().timestamp_micros())
    .bind("0".repeat(64))
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

/// Every task id on the topic, in the order read.
async fn published_task_ids(broker: &Broker, topic: &str) -> Vec<String> {
    use rdkafka::Message;
    let consumer = taskledger::relay::stream_consumer(&broker.addr, topic, true).unwrap();
    let mut seen = Vec::new();
    while let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await {
        let e: EventEnvelope = serde_json::from_slice(m.payload().unwrap()).unwrap();
        seen.push(e.task_id);
    }
    seen
}

/// Runs one halt scenario: a task published, then `bad` appended, then one more event.
async fn the_relay_halts_on(backend: Backend, event_type: &str, bad: &str) {
    let broker = Broker::start().await;
    let topic = format!("tl-test-{}", uuid::Uuid::now_v7().simple());
    let app = relayed_app(backend, &broker, &topic).await;
    let small = app.create(json!({})).await.task_id();
    wait_for_relay(
        &app,
        "the first event published",
        |state, lag, published| state == 1.0 && lag == 0.0 && published == 1.0,
    )
    .await;

    append_raw_event(&app, event_type, bad).await;
    app.post(&format!("/v1/task/{small}/cancel"), Value::Null)
        .await;
    // Halted (state 3), with the bad event and the one after it counted as lag, not skipped.
    wait_for_relay(&app, "the relay to halt", |state, lag, published| {
        state == 3.0 && lag == 2.0 && published == 1.0
    })
    .await;
    assert_eq!(published_task_ids(&broker, &topic).await, vec![small]);
}

async fn a_stored_event_larger_than_the_stream_takes_halts_the_relay_instead_of_being_skipped(
    backend: Backend,
) {
    // The API now refuses an event this large; a ledger written before it did not.
    let big = json!({"metadata": {"blob": "x".repeat(8000)}}).to_string();
    the_relay_halts_on(backend, "TaskMetadataSet", &big).await;
}

async fn a_stored_event_that_cannot_be_read_halts_the_relay_instead_of_being_skipped(
    backend: Backend,
) {
    the_relay_halts_on(backend, "TaskMetadataSet", "{not json").await;
}

on_both_backends!(
    a_stored_event_larger_than_the_stream_takes_halts_the_relay_instead_of_being_skipped,
    a_stored_event_that_cannot_be_read_halts_the_relay_instead_of_being_skipped,
);
