//! A downstream consumer of the taskledger stream: decodes each record with
//! `taskledger-events` and drops the duplicates that at-least-once delivery allows.
//!
//! ```sh
//! cargo run --example consume -- 127.0.0.1:9092 taskledger.task-events
//! ```

use rdkafka::Message;
use taskledger_events::{Deduplicator, EventEnvelope, TaskEvent};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let brokers = args.next().unwrap_or_else(|| "127.0.0.1:9092".into());
    let topic = args
        .next()
        .unwrap_or_else(|| "taskledger.task-events".into());
    let consumer = taskledger::relay::stream_consumer(&brokers, &topic, true)?;
    let mut seen = Deduplicator::new(100_000);
    loop {
        let message = consumer.recv().await?;
        let Some(payload) = message.payload() else {
            continue;
        };
        let envelope: EventEnvelope = serde_json::from_slice(payload)?;
        if !seen.first_time(envelope.event_id) {
            continue;
        }
        match envelope.event()? {
            TaskEvent::TaskCompleted(done) => println!(
                "task {} completed at {}: {}",
                envelope.task_id, envelope.recorded_at, done.response
            ),
            other => println!(
                "task {} #{} {} (position {})",
                envelope.task_id,
                envelope.sequence,
                other.event_type(),
                envelope.global_position
            ),
        }
    }
}
