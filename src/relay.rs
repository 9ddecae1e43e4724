//! The Kafka relay: publishes every event, in global order, at least once.
//!
//! One relay is active among the processes sharing a ledger (a lease, see
//! [`Store::try_lead`]). It reads events after its durable checkpoint, produces them with an
//! idempotent producer (`acks=all`), and moves the checkpoint only over events the broker
//! acknowledged. A crash between acknowledgement and checkpoint republishes a few events:
//! consumers de-duplicate by `event_id`. A broker that is down or hung only delays the relay;
//! commands never wait for it. An error that retrying cannot fix (a record the broker refuses
//! for good) halts the relay loudly instead of skipping the event.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use taskledger_events::EventEnvelope;
use tokio::sync::watch;

use crate::store::{Store, StoreError};

/// Relay settings, from flags or the environment.
#[derive(Debug, Clone, Args)]
pub struct RelaySettings {
    /// Topic the events are published to (created if missing).
    #[arg(long, env = "KAFKA_TOPIC", default_value = "taskledger.task-events")]
    pub kafka_topic: String,

    /// Partitions of the topic when the relay creates it.
    #[arg(long, env = "KAFKA_PARTITIONS", default_value_t = 6)]
    pub kafka_partitions: i32,

    /// Replication factor of the topic when the relay creates it.
    #[arg(long, env = "KAFKA_REPLICATION", default_value_t = 1)]
    pub kafka_replication: i32,

    /// The largest record the producer sends (librdkafka's `message.max.bytes`); an event
    /// larger than this halts the relay rather than being skipped.
    #[arg(long, env = "KAFKA_MESSAGE_MAX_BYTES", default_value_t = 1_000_000)]
    pub kafka_message_max_bytes: usize,

    /// How long the producer keeps retrying one record before the relay re-reads it.
    #[arg(long, env = "KAFKA_MESSAGE_TIMEOUT_MS", default_value_t = 30_000)]
    pub kafka_message_timeout_ms: u64,
}

/// What the relay is doing, for `/metrics` and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayState {
    /// Another process holds the relay lease.
    Standby = 0,
    Active = 1,
    /// Retrying: the broker is unreachable or refused a batch for now.
    Retrying = 2,
    /// Halted on an error that retrying cannot fix; needs an operator.
    Failed = 3,
}

/// Observations the relay reports; implemented by the metrics registry.
pub trait RelayObserver: Send + Sync + 'static {
    fn state(&self, state: RelayState);
    fn published(&self, events: u64);
    fn lag(&self, events: i64, seconds: f64);
}

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

pub struct Relay {
    store: Store,
    brokers: String,
    settings: RelaySettings,
    observer: Arc<dyn RelayObserver>,
    wake: watch::Receiver<u64>,
}

const BATCH: i64 = 500;
const IDLE_POLL: Duration = Duration::from_millis(250);

impl Relay {
    pub fn new(
        store: Store,
        brokers: String,
        settings: RelaySettings,
        observer: Arc<dyn RelayObserver>,
        wake: watch::Receiver<u64>,
    ) -> Relay {
        Relay {
            store,
            brokers,
            settings,
            observer,
            wake,
        }
    }

    fn reader(&self) -> String {
        format!("relay:{}", self.settings.kafka_topic)
    }

    /// Runs forever: waits for the lease, then relays; starts over if the lease is lost.
    pub async fn run(self) {
        let role = self.reader();
        // Lag is the ledger's, not this process's: every process reports it, relaying or not,
        // and whether or not the broker answers.
        let lag = {
            let (store, reader, observer) =
                (self.store.clone(), role.clone(), self.observer.clone());
            tokio::spawn(async move {
                loop {
                    report_lag(&store, &reader, observer.as_ref()).await;
                    tokio::time::sleep(LAG_INTERVAL).await;
                }
            })
        };
        let _stop_lag = AbortOnDrop(lag);
        loop {
            self.observer.state(RelayState::Standby);
            let lease = match self.store.try_lead(&role).await {
                Ok(Some(lease)) => lease,
                Ok(None) => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "relay cannot reach the store");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            tracing::info!(topic = %self.settings.kafka_topic, "relay active");
            self.lead(lease).await;
            tracing::warn!("relay lease lost; standing by");
        }
    }

    async fn lead(&self, mut lease: crate::store::Leadership) {
        let mut backoff = Duration::from_millis(100);
        let producer = loop {
            match self.prepare().await {
                Ok(p) => break p,
                Err(e) => {
                    self.observer.state(RelayState::Retrying);
                    tracing::warn!(error = %e, "relay cannot set up the topic or producer yet");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    if !lease.still_held().await {
                        return;
                    }
                }
            }
        };
        self.observer.state(RelayState::Active);
        let mut backoff = Duration::from_millis(100);
        let mut wake = self.wake.clone();
        loop {
            if !lease.still_held().await {
                return;
            }
            match self.publish_next(&producer).await {
                Ok(0) => {
                    self.observer.state(RelayState::Active);
                    backoff = Duration::from_millis(100);
                    idle(&mut wake).await;
                }
                Ok(n) => {
                    self.observer.state(RelayState::Active);
                    self.observer.published(n);
                    backoff = Duration::from_millis(100);
                }
                Err(RelayError::Delivery(DeliveryError::Final(e))) => {
                    self.observer.state(RelayState::Failed);
                    tracing::error!(
                        error = %e,
                        "relay halted: the broker refuses an event for good; it is not skipped, \
                         fix the cause and restart"
                    );
                    // Keep the lease so no other process skips it either; only report.
                    loop {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        if !lease.still_held().await {
                            return;
                        }
                    }
                }
                Err(e) => {
                    self.observer.state(RelayState::Retrying);
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "relay retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn prepare(&self) -> Result<FutureProducer, KafkaError> {
        ensure_topic(
            &self.brokers,
            &self.settings.kafka_topic,
            self.settings.kafka_partitions,
            self.settings.kafka_replication,
        )
        .await?;
        client_config(&self.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set(
                "message.max.bytes",
                self.settings.kafka_message_max_bytes.to_string(),
            )
            .set(
                "message.timeout.ms",
                self.settings.kafka_message_timeout_ms.to_string(),
            )
            .create()
    }

    /// Publishes the next batch after the checkpoint; returns how many events it moved past.
    async fn publish_next(&self, producer: &FutureProducer) -> Result<u64, RelayError> {
        let reader = self.reader();
        let checkpoint = self.store.reader_checkpoint(&reader).await?;
        let events = self.store.events_after(checkpoint, BATCH, None).await?;
        if events.is_empty() {
            return Ok(0);
        }
        let mut pending = Vec::with_capacity(events.len());
        for envelope in &events {
            let (value, headers) = record_parts(envelope);
            let record = FutureRecord::to(&self.settings.kafka_topic)
                .key(envelope.task_id.as_str())
                .payload(value.as_str())
                .headers(headers);
            match producer.send_result(record) {
                Ok(delivery) => pending.push((envelope.global_position, delivery)),
                Err((e, _)) => {
                    // The local queue is full or closed: acknowledge what went out so far.
                    return self
                        .finish(&reader, pending, Some(DeliveryError::classify(e)))
                        .await;
                }
            }
        }
        self.finish(&reader, pending, None).await
    }

    /// Awaits deliveries in order and checkpoints the last position before the first failure.
    async fn finish(
        &self,
        reader: &str,
        pending: Vec<(i64, rdkafka::producer::DeliveryFuture)>,
        mut failure: Option<DeliveryError>,
    ) -> Result<u64, RelayError> {
        let mut acknowledged = None;
        let mut count = 0;
        for (position, delivery) in pending {
            let result = delivery.await;
            if failure.is_some() {
                continue;
            }
            match result {
                Ok(Ok(_)) => {
                    acknowledged = Some(position);
                    count += 1;
                }
                Ok(Err((e, _))) => failure = Some(DeliveryError::classify(e)),
                Err(_canceled) => {
                    failure = Some(DeliveryError::Retriable(KafkaError::Canceled));
                }
            }
        }
        if let Some(position) = acknowledged {
            self.store
                .advance_reader_checkpoint(reader, position)
                .await?;
        }
        match failure {
            Some(e) => Err(RelayError::Delivery(e)),
            None => Ok(count),
        }
    }
}

const LAG_INTERVAL: Duration = Duration::from_millis(500);

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How far the relay's checkpoint is behind the ledger head, in events and in seconds.
async fn report_lag(store: &Store, reader: &str, observer: &dyn RelayObserver) {
    let lag = async {
        let checkpoint = store.reader_checkpoint(reader).await?;
        let head = store.head_position().await?;
        let oldest = store.events_after(checkpoint, 1, None).await?;
        let seconds = oldest.first().map_or(0.0, |e| {
            (chrono::Utc::now() - e.recorded_at)
                .num_milliseconds()
                .max(0) as f64
                / 1000.0
        });
        Ok::<_, StoreError>((head - checkpoint, seconds))
    };
    if let Ok((events, seconds)) = lag.await {
        observer.lag(events, seconds);
    }
}

/// Waits for a local commit, or the poll interval (commits of other processes).
pub async fn idle(wake: &mut watch::Receiver<u64>) {
    match tokio::time::timeout(IDLE_POLL, wake.changed()).await {
        Ok(Ok(())) | Err(_) => {}
        // No committer in this process (its ledger is gone): poll.
        Ok(Err(_)) => tokio::time::sleep(IDLE_POLL).await,
    }
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Creates the topic unless it exists.
pub async fn ensure_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
    replication: i32,
) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(brokers).create()?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
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
