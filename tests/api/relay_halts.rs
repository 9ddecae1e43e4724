//! The relay never skips an event: one it cannot publish for good (already in the ledger,
//! whatever the API accepts today) or cannot even read halts it, loudly, holding back the
//! events after it.

use serde_json::{json, Value};

use crate::helpers::kafka::{ids_of, read_until, records_on_topic, small_stream, wait_for_relay};
use crate::helpers::{append_raw_event, on_both_backends, Backend, PATIENCE};

/// Runs one halt scenario: a task published, then `bad` appended, then one more event.
async fn the_relay_halts_on(backend: Backend, event_type: &str, bad: &str) {
    let (broker, topic, app) = small_stream(backend).await;
    let small = app.create(json!({})).await.task_id();
    wait_for_relay(
        &app,
        "the first event published",
        // The fixture's three API keys are events too, published before the task.
        |state, lag, published| state == 1.0 && lag == 0.0 && published == 4.0,
    )
    .await;
    let created = app.history(&small).await;

    append_raw_event(&app.store, event_type, bad).await;
    app.post(&format!("/v1/task/{small}/cancel"), Value::Null)
        .await;
    // Halted (state 3), with the bad event and the one after it counted as lag, not skipped.
    wait_for_relay(&app, "the relay to halt", |state, lag, published| {
        state == 3.0 && lag == 2.0 && published == 4.0
    })
    .await;
    // The topic holds the keys' events and the first task's creation alone.
    assert_eq!(records_on_topic(&broker.addr, &topic).await, 4);
    let records = read_until(&broker.addr, &topic, &ids_of(&created), PATIENCE).await;
    let task_ids: Vec<_> = records
        .iter()
        .filter(|r| !r.envelope.event_type.starts_with("ApiKey"))
        .map(|r| r.envelope.task_id.clone())
        .collect();
    assert_eq!(task_ids, vec![small]);
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
