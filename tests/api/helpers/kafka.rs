//! A Kafka-protocol broker (tansu) per test, and a consumer's view of the stream.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::{Headers, Message};
use serde_json::Value;
use taskledger_events::EventEnvelope;

use super::process::get_json;
use super::{eventually, free_port, metric_value, spawn_app_with, Backend, TestApp, PATIENCE};

/// A tansu broker on a free port, with in-memory storage; killed on drop.
pub struct Broker {
    child: Child,
    pub addr: String,
}

fn tansu_binary() -> String {
    if let Ok(path) = std::env::var("TANSU") {
        return path;
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let cargo_bin = format!("{home}/.cargo/bin/tansu");
    if std::path::Path::new(&cargo_bin).exists() {
        cargo_bin
    } else {
        "tansu".to_string()
    }
}

impl Broker {
    pub async fn start() -> Broker {
        Broker::start_on(free_port()).await
    }

    pub async fn start_on(port: u16) -> Broker {
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu_binary())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu must be installed (scripts/test installs it)");
        let addr = format!("127.0.0.1:{port}");
        // Owned from here, so a broker that never comes up is killed on the way out.
        let broker = Broker { child, addr };
        eventually(PATIENCE, "tansu to listen", async || {
            tokio::net::TcpStream::connect(&broker.addr).await.map(drop)
        })
        .await;
        broker
    }

    fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {signal}");
    }

    /// SIGSTOP: the broker hangs with its connections open.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One record as a consumer sees it.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub key: String,
    pub headers: HashMap<String, String>,
    pub envelope: EventEnvelope,
    pub raw: Value,
}

/// Reads the topic from the beginning until every wanted event id was seen.
pub async fn read_until(
    broker: &str,
    topic: &str,
    wanted: &HashSet<String>,
    timeout: Duration,
) -> Vec<Record> {
    let deadline = Instant::now() + timeout;
    let consumer = eventually(timeout, "the topic to appear", async || {
        taskledger::relay::stream_consumer(broker, topic, true)
    })
    .await;
    let mut records = Vec::new();
    let mut seen = HashSet::new();
    while !wanted.is_subset(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = match tokio::time::timeout(left, consumer.recv()).await {
            Ok(m) => m.expect("consume"),
            Err(_) => panic!(
                "only {} of {} events arrived; missing {:?}",
                wanted.intersection(&seen).count(),
                wanted.len(),
                wanted.difference(&seen).take(5).collect::<Vec<_>>()
            ),
        };
        let mut headers = HashMap::new();
        if let Some(h) = message.headers() {
            for header in h.iter() {
                headers.insert(
                    header.key.to_string(),
                    String::from_utf8_lossy(header.value.unwrap_or_default()).to_string(),
                );
            }
        }
        let payload = message.payload().expect("a value");
        let envelope: EventEnvelope = serde_json::from_slice(payload).expect("an envelope");
        seen.insert(envelope.event_id.to_string());
        records.push(Record {
            partition: message.partition(),
            key: String::from_utf8_lossy(message.key().unwrap_or_default()).to_string(),
            headers,
            raw: serde_json::from_slice(payload).unwrap(),
            envelope,
        });
    }
    records
}

/// Every event of the feed, as the API serves them to the account.
pub async fn feed(app_url: &str, key: &str) -> Vec<Value> {
    let client = reqwest::Client::new();
    let mut after = 0;
    let mut all = Vec::new();
    loop {
        let url = format!("{app_url}/v1/events?after={after}&limit=1000");
        let page = get_json(&client, &url, key).await;
        let events = page["events"].as_array().unwrap().clone();
        all.extend(events);
        if page["has_more"] != true {
            return all;
        }
        after = page["next_after"].as_i64().unwrap();
    }
}

pub fn ids_of(events: &[Value]) -> HashSet<String> {
    events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_string())
        .collect()
}

/// A server whose relay publishes to `topic` on `brokers`.
pub async fn relayed_app(
    backend: Backend,
    brokers: &str,
    topic: &str,
    configure: impl FnOnce(&mut taskledger::config::ServeSettings),
) -> TestApp {
    spawn_app_with(backend, |s| {
        s.kafka_brokers = Some(brokers.to_string());
        s.relay.kafka_topic = topic.to_string();
        configure(s);
    })
    .await
}

/// A topic of its own for one test.
pub fn topic() -> String {
    format!("tl-test-{}", uuid::Uuid::now_v7().simple())
}

/// How many records the topic holds, all partitions together: every partition is read from
/// its beginning to its end as the broker reports it (librdkafka's partition EOF), counting
/// records. Not from the watermarks: tansu's offsets count a multi-record batch as one, so
/// `high - low` undercounts as soon as the relay sends several records in one batch.
pub async fn records_on_topic(broker: &str, topic: &str) -> i64 {
    let (broker, topic) = (broker.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let consumer: rdkafka::consumer::BaseConsumer = taskledger::relay::client_config(&broker)
            .set(
                "group.id",
                format!("tl-count-{}", uuid::Uuid::now_v7().simple()),
            )
            .set("enable.partition.eof", "true")
            .set("enable.auto.commit", "false")
            .create()
            .expect("a consumer");
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(30))
            .expect("the topic's metadata");
        let partitions = metadata.topics()[0].partitions().len() as i32;
        assert!(partitions > 0, "the topic exists");
        let mut assignment = rdkafka::TopicPartitionList::new();
        for p in 0..partitions {
            assignment
                .add_partition_offset(&topic, p, rdkafka::Offset::Beginning)
                .expect("a partition");
        }
        consumer.assign(&assignment).expect("assign the partitions");
        let deadline = Instant::now() + PATIENCE;
        let mut at_end = HashSet::new();
        let mut records = 0;
        while at_end.len() < partitions as usize {
            assert!(
                Instant::now() < deadline,
                "only {} of {partitions} partitions read to their end",
                at_end.len()
            );
            match consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Ok(_)) => records += 1,
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                    at_end.insert(p);
                }
                Some(Err(e)) => panic!("reading the topic: {e}"),
            }
        }
        records
    })
    .await
    .unwrap()
}

/// Waits until the relay's state, lag and published count satisfy `done`.
pub async fn wait_for_relay(app: &TestApp, what: &str, done: impl Fn(f64, f64, f64) -> bool) {
    eventually(PATIENCE, what, async || {
        let text = app.metrics().await;
        let gauges = (
            metric_value(&text, "taskledger_relay_state"),
            metric_value(&text, "taskledger_relay_lag_events"),
            metric_value(&text, "taskledger_relay_published_total"),
        );
        match gauges {
            (Some(state), Some(lag), Some(published)) if done(state, lag, published) => Ok(()),
            _ => Err(text),
        }
    })
    .await;
}

/// A broker of its own, a topic of its own, and a server relaying to it with the binary's
/// settings changed by `configure`.
pub async fn relayed(
    backend: Backend,
    configure: impl FnOnce(&mut taskledger::config::ServeSettings),
) -> (Broker, String, TestApp) {
    let broker = Broker::start().await;
    let topic = topic();
    let app = relayed_app(backend, &broker.addr, &topic, configure).await;
    (broker, topic, app)
}

/// [`relayed`], with a stream that takes events of at most 4096 bytes.
pub async fn small_stream(backend: Backend) -> (Broker, String, TestApp) {
    relayed(backend, |s| s.relay.kafka_message_max_bytes = 4096).await
}
