//! The Kafka relay: publishes every event, in global order, at least once.
//!
//! One relay is active among the processes sharing a ledger (a lease, see
//! [`crate::follower::Follower`]). It reads events after its durable checkpoint, produces them
//! with an idempotent producer (`acks=all`), and moves the checkpoint only over events the
//! broker acknowledged. The Kafka client helpers live in [`crate::kafka`]. A crash between acknowledgement and checkpoint republishes a few events:
//! consumers de-duplicate by `event_id`. A broker that is down or hung only delays the relay;
//! commands never wait for it. An error that retrying cannot fix (a record the broker refuses
//! for good, a stored event that cannot be read) halts the relay loudly instead of skipping
//! the event.

use std::time::Duration;

use clap::Args;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::watch;

use crate::follower::Follower;
use crate::kafka::ensure_topic;
use crate::metrics::Metrics;
use crate::store::{now_micros, Leadership, Store, StoreError};
use crate::task_state::TaskStates;
use taskledger_events::EventEnvelope;

// Re-exported where they were before `kafka` took them, for `tail`, the example consumer and
// the tests.
pub use crate::kafka::{client_config, record_parts, stream_consumer, DeliveryError};

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

    /// Compacted topic of each task's current state (created with `cleanup.policy=compact`).
    #[arg(
        long,
        env = "KAFKA_STATE_TOPIC",
        default_value = "taskledger.task-state"
    )]
    pub kafka_state_topic: String,

    /// The CloudEvents `ce_source` of every record: this ledger's identity (a URI-reference).
    #[arg(long, env = "TASKLEDGER_CE_SOURCE", default_value = "urn:taskledger")]
    pub ce_source: String,
}

/// What the relay is doing, for `/metrics` and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayState {
    /// Another process holds the relay lease.
    Standby = 0,
    Active = 1,
    /// Retrying: the broker is unreachable or refused a batch for now.
    Retrying = 2,
    /// Halted on an error that retrying cannot fix (a record the broker refuses for good, a
    /// stored event that cannot be read); needs an operator.
    Failed = 3,
}

pub struct Relay {
    follower: Follower,
    brokers: String,
    settings: RelaySettings,
    metrics: Metrics,
    states: TaskStates,
    /// The round after the checkpoint, read while the last one was delivered: used only if
    /// the checkpoint then moved over all of that one, and never across leases.
    ahead: Option<Round>,
}

/// The events of a round and their task states (as many states as events).
struct Round {
    events: Vec<EventEnvelope>,
    states: Vec<Option<String>>,
}

impl Round {
    /// The events after `after` (after the checkpoint if `None`) and their states.
    async fn read(
        follower: &Follower,
        states: &mut TaskStates,
        after: Option<i64>,
    ) -> Result<Round, StoreError> {
        let mut events = match after {
            Some(position) => follower.batch_after(position, BATCH).await?,
            None => follower.next_batch(BATCH).await?,
        };
        let states = states
            .after_each(follower.store(), &events, ROUND_STATE_BYTES)
            .await?;
        // The events whose states did not fit go in the next round.
        events.truncate(states.len());
        Ok(Round { events, states })
    }
}

/// Events read and published per round. Each round waits for the broker twice (the events,
/// then their task states) and moves the checkpoint once, while the next round is read and
/// folded. At 500 a round without reading ahead, those waits held a 1.2 M-event backlog to
/// about 18k events/s (relay alone on a 2-core machine, tansu); 2,000 went 1.6 times as
/// fast. Reading ahead, 1,000 a round went as fast as 2,000 (27.9k and 29.2k events/s, the
/// spread of runs of one build) with a serve process peaking at 93 MB against 111 MB.
const BATCH: i64 = 1000;
/// The task-state values one round holds at most (beyond its first): a small event on a
/// large task makes a state record of up to a megabyte.
const ROUND_STATE_BYTES: usize = 8_000_000;
const LAG_INTERVAL: Duration = Duration::from_millis(500);

impl Relay {
    pub fn new(
        store: Store,
        brokers: String,
        settings: RelaySettings,
        metrics: Metrics,
        wake: watch::Receiver<u64>,
    ) -> Relay {
        let reader = format!("relay:{}", settings.kafka_topic);
        Relay {
            follower: Follower::new(store, reader, wake),
            brokers,
            settings,
            metrics,
            states: TaskStates::default(),
            ahead: None,
        }
    }

    fn set_state(&self, state: RelayState) {
        self.metrics.set_relay_state(state as i64);
    }

    /// Runs forever: waits for the lease, then relays; starts over if the lease is lost.
    pub async fn run(mut self) {
        // Lag is the ledger's, not this process's: every process reports it, relaying or not,
        // and whether or not the broker answers.
        let lag = {
            let (store, reader, metrics) = (
                self.follower.store().clone(),
                self.follower.reader().to_string(),
                self.metrics.clone(),
            );
            tokio::spawn(async move {
                loop {
                    report_lag(&store, &reader, &metrics).await;
                    tokio::time::sleep(LAG_INTERVAL).await;
                }
            })
        };
        let _stop_lag = AbortOnDrop(lag);
        loop {
            self.set_state(RelayState::Standby);
            let lease = self.follower.lead().await;
            tracing::info!(topic = %self.settings.kafka_topic, "relay active");
            self.lead(lease).await;
            tracing::warn!("relay lease lost; standing by");
        }
    }

    async fn lead(&mut self, mut lease: Leadership) {
        // Another process may have moved the checkpoint since this one last led.
        self.ahead = None;
        let mut backoff = Duration::from_millis(100);
        let producer = loop {
            match self.prepare().await {
                Ok(p) => break p,
                Err(e) => {
                    self.set_state(RelayState::Retrying);
                    tracing::warn!(error = %e, "relay cannot set up the topic or producer yet");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    if !lease.still_held().await {
                        return;
                    }
                }
            }
        };
        self.set_state(RelayState::Active);
        let mut backoff = Duration::from_millis(100);
        loop {
            if !lease.still_held().await {
                return;
            }
            match self.publish_next(&producer).await {
                Ok(0) => {
                    self.set_state(RelayState::Active);
                    backoff = Duration::from_millis(100);
                    self.follower.idle().await;
                }
                Ok(n) => {
                    self.set_state(RelayState::Active);
                    self.metrics.observe_relay_published(n);
                    backoff = Duration::from_millis(100);
                }
                Err(RelayError::Delivery(DeliveryError::Final(e))) => {
                    tracing::error!(
                        error = %e,
                        "relay halted: the broker refuses an event for good; it is not skipped, \
                         fix the cause and restart"
                    );
                    return self.halt(lease).await;
                }
                Err(RelayError::Store(e @ StoreError::Corrupt { .. })) => {
                    tracing::error!(
                        error = %e,
                        "relay halted: a stored event cannot be read; it is not skipped, \
                         repair it (taskledger verify names it) and restart"
                    );
                    return self.halt(lease).await;
                }
                Err(e) => {
                    self.set_state(RelayState::Retrying);
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "relay retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Stays halted, and loud, until the lease is lost. The lease is kept so that no other
    /// process skips the event either.
    async fn halt(&self, mut lease: Leadership) {
        self.set_state(RelayState::Failed);
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            if !lease.still_held().await {
                return;
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
        crate::kafka::ensure_topic_with(
            &self.brokers,
            &self.settings.kafka_state_topic,
            self.settings.kafka_partitions,
            self.settings.kafka_replication,
            &[("cleanup.policy", "compact")],
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
    ///
    /// The events go first; only once the broker has acknowledged an event does its task-state
    /// record go out, so the state topic is never ahead of the event topic. The checkpoint then
    /// moves over the events whose records (event and state) were all acknowledged.
    async fn publish_next(&mut self, producer: &FutureProducer) -> Result<u64, RelayError> {
        let round = match self.ahead.take() {
            Some(round) => round,
            None => Round::read(&self.follower, &mut self.states, None).await?,
        };
        let Some(last) = round.events.last().map(|e| e.global_position) else {
            return Ok(0);
        };
        // The next round is read and stated while this one is delivered: the broker's
        // acknowledgements are most of a round's time.
        let (delivered, next) = tokio::join!(
            deliver_round(producer, &self.settings, &round),
            Round::read(&self.follower, &mut self.states, Some(last))
        );
        let (handled, failure) = delivered;
        let count = handled.map_or(0, |p| {
            round
                .events
                .iter()
                .filter(|e| e.global_position <= p)
                .count() as u64
        });
        if let Some(position) = handled {
            self.follower.advance(position).await?;
        }
        if let Some(e) = failure {
            return Err(RelayError::Delivery(e));
        }
        if handled == Some(last) {
            // A failed read of the next round is read again from the checkpoint.
            self.ahead = next.ok().filter(|next| !next.events.is_empty());
        }
        Ok(count)
    }
}

/// Produces a round: the events first; only once the broker has acknowledged an event does
/// its task-state record go out, so the state topic is never ahead of the event topic.
/// Returns the last position whose records (event and state) were all acknowledged, and
/// the first failure.
async fn deliver_round(
    producer: &FutureProducer,
    settings: &RelaySettings,
    round: &Round,
) -> (Option<i64>, Option<DeliveryError>) {
    let Round { events, states } = round;
    let source = settings.ce_source.as_str();
    let records = events.iter().map(|envelope| {
        let (value, headers) = record_parts(envelope);
        let headers = crate::cloudevents::event_headers(headers, envelope, source);
        (envelope, value, headers)
    });
    let sent = deliver(producer, &settings.kafka_topic, records).await;
    let mut handled = sent.through;
    let mut failure = sent.failure;
    if let Some(through) = sent.through {
        let limit = settings.kafka_message_max_bytes;
        let records = events
            .iter()
            .zip(states)
            .take_while(|(e, _)| e.global_position <= through)
            .filter_map(|(envelope, state)| {
                let state = state.as_ref()?;
                if state.len()
                    + envelope.task_id.len()
                    + crate::task_state::STATE_RECORD_OVERHEAD_BYTES
                    > limit
                {
                    // Commands cannot grow a task past the limit; a task stored larger by
                    // an earlier release must not stop the stream.
                    tracing::error!(task_id = %envelope.task_id, size = state.len(),
                        "task state too large for a Kafka record; no state record");
                    return None;
                }
                let headers = crate::cloudevents::state_headers(envelope, source);
                Some((envelope, state, headers))
            });
        let state = deliver(producer, &settings.kafka_state_topic, records).await;
        if let Some((failed_at, e)) = state.failure {
            handled = Some(failed_at - 1).filter(|p| *p >= events[0].global_position);
            failure = failure.or(Some((failed_at, e)));
        }
    }
    (handled, failure.map(|(_, e)| e))
}

/// What the broker acknowledged of a run of records.
struct Delivered {
    /// The last position of the unbroken run of acknowledged records from the first.
    through: Option<i64>,
    /// The first record not acknowledged, and why.
    failure: Option<(i64, DeliveryError)>,
}

/// Produces the records (keyed by their task id) and awaits their deliveries in order.
async fn deliver<'a, V: AsRef<str>>(
    producer: &FutureProducer,
    topic: &str,
    records: impl Iterator<Item = (&'a EventEnvelope, V, rdkafka::message::OwnedHeaders)>,
) -> Delivered {
    let mut pending = Vec::new();
    let mut failure = None;
    for (envelope, value, headers) in records {
        let record = FutureRecord::to(topic)
            .key(envelope.task_id.as_str())
            .payload(value.as_ref())
            .headers(headers);
        match producer.send_result(record) {
            Ok(delivery) => pending.push((envelope.global_position, delivery)),
            Err((e, _)) => {
                // The local queue is full or closed: acknowledge what went out so far.
                failure = Some((envelope.global_position, DeliveryError::classify(e)));
                break;
            }
        }
    }
    let mut through = None;
    let mut first_failure = None;
    for (position, delivery) in pending {
        let result = delivery.await;
        if first_failure.is_some() {
            continue;
        }
        match result {
            Ok(Ok(_)) => through = Some(position),
            Ok(Err((e, _))) => first_failure = Some((position, DeliveryError::classify(e))),
            Err(_canceled) => {
                first_failure = Some((position, DeliveryError::Retriable(KafkaError::Canceled)))
            }
        }
    }
    Delivered {
        through,
        failure: first_failure.or(failure),
    }
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How far the relay's checkpoint is behind the ledger head, in events and in seconds.
async fn report_lag(store: &Store, reader: &str, metrics: &Metrics) {
    let lag = async {
        let checkpoint = store.reader_checkpoint(reader).await?;
        let head = store.head_position().await?;
        // Undecoded: the lag of a relay halted on an unreadable event is still reported.
        let oldest = store.next_event_after(checkpoint).await?;
        let seconds = oldest.map_or(0.0, |e| {
            (now_micros() - e.recorded_at_us).max(0) as f64 / 1e6
        });
        Ok::<_, StoreError>((head - checkpoint, seconds))
    };
    if let Ok((events, seconds)) = lag.await {
        metrics.set_relay_lag(events, seconds);
    }
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error(transparent)]
    Delivery(#[from] DeliveryError),
    #[error(transparent)]
    Store(#[from] StoreError),
}
