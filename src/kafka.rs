//! Kafka client helpers: the record of an event, client configuration, topic creation, the
//! reading consumer, and how a delivery failure is classified. The relay publishes with them;
//! `tail`, the example consumer and the tests read with them.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use taskledger_events::EventEnvelope;

/// A delivery failure, told apart the way the broker means it.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// Worth trying again: the broker is away, busy, or timed out.
    #[error("retriable delivery failure: {0}")]
    Retriable(KafkaError),
    /// Will fail the same way every time: the record or the permissions are wrong.
    #[error("final delivery failure: {0}")]
    Final(KafkaError),
}

impl DeliveryError {
    pub fn classify(error: KafkaError) -> DeliveryError {
        use RDKafkaErrorCode as C;
        match error.rdkafka_error_code() {
            Some(
                C::MessageSizeTooLarge
                | C::InvalidMessageSize
                | C::InvalidMessage
                | C::InvalidRecord
                | C::TopicAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::InvalidTopic
                | C::UnsupportedVersion
                | C::UnsupportedForMessageFormat,
            ) => DeliveryError::Final(error),
            _ => DeliveryError::Retriable(error),
        }
    }
}

/// Bytes a published record needs beyond its JSON value: the key (the stream id is counted
/// apart), the routing headers and the record's own framing, with room to spare.
const RECORD_OVERHEAD_BYTES: usize = 1024;

/// The size of the record `envelope` becomes on the event topic, counted without holding its
/// encoding; `usize::MAX` for one that cannot be encoded (it cannot be published either).
/// An event whose record exceeds the topic's limit would halt the relay for every account,
/// so every append path refuses one before it is recorded.
pub fn record_size(envelope: &EventEnvelope) -> usize {
    let mut counter = ByteCounter(0);
    match serde_json::to_writer(&mut counter, envelope) {
        Ok(()) => counter.0 + envelope.task_id.len() + RECORD_OVERHEAD_BYTES,
        Err(_) => usize::MAX,
    }
}

/// Counts what is written, to size a JSON encoding without holding it.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The Kafka record of an event: key = task id (one partition per task keeps its order),
/// value = the JSON envelope, headers for routing without parsing.
pub fn record_parts(envelope: &EventEnvelope) -> (String, OwnedHeaders) {
    let value = serde_json::to_string(envelope).expect("an envelope serializes");
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "event-id",
            value: Some(envelope.event_id.to_string().as_bytes()),
        })
        .insert(Header {
            key: "event-type",
            value: Some(envelope.event_type.as_bytes()),
        })
        .insert(Header {
            key: "event-version",
            value: Some(envelope.event_version.to_string().as_bytes()),
        })
        .insert(Header {
            key: "global-position",
            value: Some(envelope.global_position.to_string().as_bytes()),
        });
    (value, headers)
}

pub fn client_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("client.id", "taskledger");
    config
}

/// Creates the topic unless it exists.
pub async fn ensure_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
    replication: i32,
) -> Result<(), KafkaError> {
    ensure_topic_with(brokers, topic, partitions, replication, &[]).await
}

/// Creates the topic with these topic configs (e.g. `cleanup.policy=compact`) unless it
/// exists; an existing topic is left as it is.
pub async fn ensure_topic_with(
    brokers: &str,
    topic: &str,
    partitions: i32,
    replication: i32,
    configs: &[(&str, &str)],
) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(brokers).create()?;
    let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
    for (name, value) in configs {
        new = new.set(name, value);
    }
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    let results = admin.create_topics([&new], &options).await?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                tracing::warn!(topic = %name, ?code, "topic creation failed");
                return Err(KafkaError::AdminOp(code));
            }
        }
    }
    Ok(())
}

/// A consumer reading every partition of `topic` from its start (or its end), without a
/// consumer group: `tail`, the example consumer and the tests read the stream this way.
pub fn stream_consumer(
    brokers: &str,
    topic: &str,
    from_beginning: bool,
) -> Result<rdkafka::consumer::StreamConsumer, KafkaError> {
    use rdkafka::consumer::Consumer;
    use rdkafka::{Offset, TopicPartitionList};

    let consumer: rdkafka::consumer::StreamConsumer = client_config(brokers)
        .set(
            "group.id",
            format!("taskledger-reader-{}", uuid::Uuid::now_v7()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().len())
        .unwrap_or(0);
    if partitions == 0 {
        return Err(KafkaError::MetadataFetch(
            RDKafkaErrorCode::UnknownTopicOrPartition,
        ));
    }
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        let offset = if from_beginning {
            Offset::Beginning
        } else {
            Offset::End
        };
        assignment.add_partition_offset(topic, p, offset)?;
    }
    consumer.assign(&assignment)?;
    Ok(consumer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_the_broker_will_never_take_are_final_and_the_rest_retriable() {
        let final_ = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert!(matches!(
            DeliveryError::classify(final_),
            DeliveryError::Final(_)
        ));
        for code in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::NotLeaderForPartition,
        ] {
            let e = KafkaError::MessageProduction(code);
            assert!(
                matches!(DeliveryError::classify(e), DeliveryError::Retriable(_)),
                "{code:?}"
            );
        }
    }
}
