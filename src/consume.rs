//! A downstream consumer of the event stream, as `examples/consume.rs` runs it: each record
//! decoded with `taskledger-events`, the redeliveries that at-least-once delivery allows
//! dropped by event id, one line per event. It lives in the library so that its test runs it
//! in-process, against a real broker, instead of a separately built binary.

use rdkafka::Message;
use taskledger_events::{DecodeError, Deduplicator, EventEnvelope, LedgerEvent, TaskEvent};

/// How many event ids are remembered to recognise a redelivery.
pub const DEDUP_WINDOW: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error("reading the stream: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("a record is not an event envelope: {0}")]
    Envelope(#[from] serde_json::Error),
    #[error("an event cannot be decoded: {0}")]
    Event(#[from] DecodeError),
}

/// What became of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// The first delivery of an event: the line to print.
    New(String),
    /// A redelivery of an event already printed.
    Again,
}

/// Turns records into lines, each event once.
#[derive(Debug, Clone)]
pub struct Printer {
    seen: Deduplicator,
}

impl Default for Printer {
    fn default() -> Printer {
        Printer::new(DEDUP_WINDOW)
    }
}

impl Printer {
    pub fn new(window: usize) -> Printer {
        Printer {
            seen: Deduplicator::new(window),
        }
    }

    /// One record's value.
    pub fn record(&mut self, payload: &[u8]) -> Result<Seen, ConsumeError> {
        let envelope: EventEnvelope = serde_json::from_slice(payload)?;
        if !self.seen.first_time(envelope.event_id) {
            return Ok(Seen::Again);
        }
        let line = match envelope.ledger_event()? {
            LedgerEvent::Key(key) => format!(
                "key {} {} (position {})",
                envelope.task_id,
                key.event_type(),
                envelope.global_position
            ),
            LedgerEvent::Project(project) => format!(
                "project {} {} (position {})",
                envelope.task_id,
                project.event_type(),
                envelope.global_position
            ),
            LedgerEvent::Batch(batch) => format!(
                "batch {} {} (position {})",
                envelope.task_id,
                batch.event_type(),
                envelope.global_position
            ),
            LedgerEvent::Task(TaskEvent::TaskCompleted(done)) => format!(
                "task {} completed at {}: {}",
                envelope.task_id, envelope.recorded_at, done.response
            ),
            LedgerEvent::Task(other) => format!(
                "task {} #{} {} (position {})",
                envelope.task_id,
                envelope.sequence,
                other.event_type(),
                envelope.global_position
            ),
        };
        Ok(Seen::New(line))
    }
}

/// Reads `topic` from its beginning forever, handing `each` what became of every record
/// (records without a value are skipped); returns only on an error.
pub async fn run(
    brokers: &str,
    topic: &str,
    mut each: impl FnMut(Seen),
) -> Result<(), ConsumeError> {
    let consumer = crate::relay::stream_consumer(brokers, topic, true)?;
    let mut printer = Printer::default();
    loop {
        let message = consumer.recv().await?;
        if let Some(payload) = message.payload() {
            each(printer.record(payload)?);
        }
    }
}
