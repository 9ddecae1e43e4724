//! The Kafka relay against a real Kafka-protocol broker (tansu), each test with its own
//! broker process and topic: delivery, order, headers, a hung broker, SIGKILL, fail-over.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::message::{Headers, Message};
use reqwest::Method;
use serde_json::{json, Value};
use taskledger_events::{EventEnvelope, Scope};

use crate::helpers::{
    free_port, on_both_backends, spawn_app_with, Backend, ServerProcess, TestApp, TestDb,
};

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
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(&addr).await.is_err() {
            assert!(Instant::now() < deadline, "tansu did not start on {addr}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Broker { child, addr }
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
    let consumer = loop {
        match taskledger::relay::stream_consumer(broker, topic, true) {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < deadline, "the topic never appeared: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
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
async fn feed(app_url: &str, key: &str) -> Vec<Value> {
    let client = reqwest::Client::new();
    let mut after = 0;
    let mut all = Vec::new();
    loop {
        let page: Value = client
            .get(format!("{app_url}/v1/events?after={after}&limit=1000"))
            .basic_auth(key, Some(""))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let events = page["events"].as_array().unwrap().clone();
        all.extend(events);
        if page["has_more"] != true {
            return all;
        }
        after = page["next_after"].as_i64().unwrap();
    }
}

fn ids_of(events: &[Value]) -> HashSet<String> {
    events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_string())
        .collect()
}

/// Per task, the sequences in the order a consumer read them, duplicates dropped by event id.
fn per_task_order(records: &[Record]) -> HashMap<String, Vec<i64>> {
    let mut seen = HashSet::new();
    let mut order: HashMap<String, Vec<i64>> = HashMap::new();
    for r in records {
        if seen.insert(r.envelope.event_id) {
            order
                .entry(r.key.clone())
                .or_default()
                .push(r.envelope.sequence);
        }
    }
    order
}

fn assert_in_task_order(records: &[Record]) {
    for (task, sequences) in per_task_order(records) {
        let expected: Vec<i64> = (1..=sequences.len() as i64).collect();
        assert_eq!(sequences, expected, "task {task} out of order");
    }
}

/// A server whose relay publishes to `topic` on `brokers`.
async fn relayed_app(
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

fn topic() -> String {
    format!("tl-test-{}", uuid::Uuid::now_v7().simple())
}

async fn busy_work(app: &TestApp, tasks: usize) {
    for i in 0..tasks {
        let id = app
            .create(json!({"unique_id": format!("k-{i}-{}", uuid::Uuid::now_v7())}))
            .await
            .task_id();
        app.post(&format!("/v1/task/{id}/setMetadata"), json!({"i": i}))
            .await;
        app.send(
            Method::PUT,
            &format!("/v1/task/{id}/tags"),
            &app.key,
            Some(json!(["t"])),
            &[],
        )
        .await;
        app.contributor_post(
            &format!("/v1/task/{id}/complete"),
            json!({"response": {"ok": true}}),
        )
        .await;
    }
}

async fn every_committed_event_arrives_keyed_by_task_in_order_with_headers(backend: Backend) {
    let broker = Broker::start().await;
    let topic = topic();
    let app = relayed_app(backend, &broker.addr, &topic, |_| {}).await;
    busy_work(&app, 5).await;
    let other = app
        .send(
            Method::POST,
            "/v1/task/documenttranscription",
            &app.other_key,
            Some(json!({"attachment": "x"})),
            &[],
        )
        .await;
    assert_eq!(other.status, 200);

    let mine = feed(&app.address, &app.key).await;
    let theirs = feed(&app.address, &app.other_key).await;
    assert_eq!(mine.len(), 20);
    let mut wanted = ids_of(&mine);
    wanted.extend(ids_of(&theirs));
    let records = read_until(&broker.addr, &topic, &wanted, Duration::from_secs(60)).await;

    let by_id: HashMap<String, &Value> = mine
        .iter()
        .chain(theirs.iter())
        .map(|e| (e["event_id"].as_str().unwrap().to_string(), e))
        .collect();
    for r in &records {
        let id = r.envelope.event_id.to_string();
        assert_eq!(
            &r.raw, by_id[&id],
            "the record value is the feed's envelope"
        );
        assert_eq!(r.key, r.envelope.task_id);
        assert_eq!(r.headers["event-id"], id);
        assert_eq!(r.headers["event-type"], r.envelope.event_type);
        assert_eq!(
            r.headers["event-version"],
            r.envelope.event_version.to_string()
        );
        assert_eq!(
            r.headers["global-position"],
            r.envelope.global_position.to_string()
        );
        assert!(r.envelope.event().is_ok(), "decodes with taskledger-events");
    }
    assert_in_task_order(&records);
    // One task, one partition.
    let mut partitions: HashMap<&str, HashSet<i32>> = HashMap::new();
    for r in &records {
        partitions.entry(&r.key).or_default().insert(r.partition);
    }
    assert!(partitions.values().all(|p| p.len() == 1));
}

async fn a_hung_broker_delays_publication_but_neither_commands_nor_events_are_lost(
    backend: Backend,
) {
    let broker = Broker::start().await;
    let topic = topic();
    let app = relayed_app(backend, &broker.addr, &topic, |_| {}).await;
    busy_work(&app, 2).await;
    let first = ids_of(&feed(&app.address, &app.key).await);
    read_until(&broker.addr, &topic, &first, Duration::from_secs(60)).await;

    broker.pause();
    let started = Instant::now();
    busy_work(&app, 3).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "commands kept their pace: {elapsed:?}"
    );
    let metrics = app.metrics().await;
    assert!(metrics.contains("taskledger_relay_lag_events"), "{metrics}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.resume();

    let all = ids_of(&feed(&app.address, &app.key).await);
    assert_eq!(all.len(), 20);
    let records = read_until(&broker.addr, &topic, &all, Duration::from_secs(90)).await;
    assert_in_task_order(&records);
}

async fn create_raw(url: &str, key: &str, i: usize) -> bool {
    let body = json!({"attachment": format!("doc-{i}")});
    matches!(
        reqwest::Client::new()
            .post(format!("{url}/v1/task/documenttranscription"))
            .basic_auth(key, Some(""))
            .json(&body)
            .send()
            .await,
        Ok(r) if r.status() == 200
    )
}

async fn a_server_killed_during_writes_delivers_everything_after_restart(backend: Backend) {
    let broker = Broker::start().await;
    let topic = topic();
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let (_, key) = store.create_key("acme", Scope::Customer).await.unwrap();
    let port = free_port();
    let mut server = ServerProcess::start(
        &db,
        port,
        &[("KAFKA_BROKERS", &broker.addr), ("KAFKA_TOPIC", &topic)],
    )
    .await;
    let writer = {
        let url = server.url.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let mut i = 0;
            while create_raw(&url, &key, i).await {
                i += 1;
            }
            i
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.kill9();
    let written = writer.await.unwrap();
    assert!(written > 0, "some writes landed before the kill");

    let server = ServerProcess::start(
        &db,
        port,
        &[("KAFKA_BROKERS", &broker.addr), ("KAFKA_TOPIC", &topic)],
    )
    .await;
    for i in 0..5 {
        assert!(create_raw(&server.url, &key, 10_000 + i).await);
    }
    let all = feed(&server.url, &key).await;
    assert!(
        all.len() >= written + 5,
        "{} events for {written} + 5 writes",
        all.len()
    );
    let records = read_until(&broker.addr, &topic, &ids_of(&all), Duration::from_secs(90)).await;
    let distinct: HashSet<_> = records.iter().map(|r| r.envelope.event_id).collect();
    assert_eq!(
        distinct.len(),
        all.len(),
        "duplicates only by event id, nothing extra"
    );
    assert_in_task_order(&records);
}

/// Two servers on one PostgreSQL database: one relay at a time, and the other takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_on_one_database_run_one_relay_and_fail_over() {
    let broker = Broker::start().await;
    let topic = topic();
    let db = TestDb::new(Backend::Postgres).await;
    let store = db.store().await;
    let (_, key) = store.create_key("acme", Scope::Customer).await.unwrap();
    let mut a = ServerProcess::start(
        &db,
        free_port(),
        &[("KAFKA_BROKERS", &broker.addr), ("KAFKA_TOPIC", &topic)],
    )
    .await;
    let mut b = ServerProcess::start(
        &db,
        free_port(),
        &[("KAFKA_BROKERS", &broker.addr), ("KAFKA_TOPIC", &topic)],
    )
    .await;
    for i in 0..5 {
        assert!(create_raw(&a.url, &key, i).await);
        assert!(create_raw(&b.url, &key, 100 + i).await);
    }
    let first = feed(&a.url, &key).await;
    read_until(
        &broker.addr,
        &topic,
        &ids_of(&first),
        Duration::from_secs(60),
    )
    .await;
    let states = (
        a.metric("taskledger_relay_state").await.map(|v| v as i64),
        b.metric("taskledger_relay_state").await.map(|v| v as i64),
    );
    let active_is_a = match states {
        (Some(1), Some(0)) => true,
        (Some(0), Some(1)) => false,
        other => panic!("exactly one relay must be active: {other:?}"),
    };
    let (dead, survivor) = if active_is_a {
        (&mut a, &b)
    } else {
        (&mut b, &a)
    };
    dead.kill9();
    for i in 0..5 {
        assert!(create_raw(&survivor.url, &key, 200 + i).await);
    }
    let all = feed(&survivor.url, &key).await;
    assert_eq!(all.len(), 15);
    read_until(&broker.addr, &topic, &ids_of(&all), Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while survivor
        .metric("taskledger_relay_state")
        .await
        .map(|v| v as i64)
        != Some(1)
    {
        assert!(
            Instant::now() < deadline,
            "the survivor took over the relay"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `taskledger tail` prints the envelopes of the topic, one JSON per line.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tail_prints_one_envelope_per_line_and_filters_by_task() {
    let broker = Broker::start().await;
    let topic = topic();
    let app = relayed_app(Backend::Sqlite, &broker.addr, &topic, |_| {}).await;
    let one = app.create(json!({})).await.task_id();
    app.create(json!({})).await.task_id();
    app.post(&format!("/v1/task/{one}/cancel"), Value::Null)
        .await;
    let all = ids_of(&feed(&app.address, &app.key).await);
    read_until(&broker.addr, &topic, &all, Duration::from_secs(60)).await;

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_taskledger"))
        .args(["tail", "--from-beginning", "--task", &one])
        .env("KAFKA_BROKERS", &broker.addr)
        .env("KAFKA_TOPIC", &topic)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut got = Vec::new();
    while got.len() < 2 {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("tail prints")
            .unwrap()
            .expect("a line");
        let envelope: EventEnvelope =
            serde_json::from_str(&line).expect("one JSON envelope per line");
        assert_eq!(envelope.task_id, one);
        got.push(envelope.event_type);
    }
    assert_eq!(got, vec!["TaskCreated", "TaskCanceled"]);
    let _ = child.kill().await;
}

async fn a_broker_down_at_start_gets_the_whole_backlog_when_it_comes_up(backend: Backend) {
    let port = free_port();
    let topic = topic();
    let app = relayed_app(backend, &format!("127.0.0.1:{port}"), &topic, |_| {}).await;
    let started = Instant::now();
    busy_work(&app, 3).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "commands do not wait for Kafka"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = app.metrics().await;
    assert_eq!(
        crate::helpers::metric_value(&metrics, "taskledger_relay_lag_events"),
        Some(12.0),
        "the backlog is visible: {metrics}"
    );
    let broker = Broker::start_on(port).await;
    let all = ids_of(&feed(&app.address, &app.key).await);
    let records = read_until(&broker.addr, &topic, &all, Duration::from_secs(90)).await;
    assert_in_task_order(&records);
}

async fn an_event_the_broker_can_never_take_halts_the_relay_instead_of_being_skipped(
    backend: Backend,
) {
    let broker = Broker::start().await;
    let topic = topic();
    let app = relayed_app(backend, &broker.addr, &topic, |s| {
        s.relay.kafka_message_max_bytes = 4096;
    })
    .await;
    let small = app.create(json!({})).await.task_id();
    let first = ids_of(&feed(&app.address, &app.key).await);
    read_until(&broker.addr, &topic, &first, Duration::from_secs(60)).await;

    // The API now refuses an event larger than the stream takes (KAFKA_MESSAGE_MAX_BYTES), so
    // this one is recorded as an older release, or a ledger configured with a larger limit,
    // could have: through a ledger of its own on the same database.
    app.create(json!({"metadata": {"blob": "x".repeat(8000)}}))
        .await
        .assert_error(413, "KAFKA_MESSAGE_MAX_BYTES");
    let account_id = app.store.ensure_account("acme").await.unwrap();
    let lenient = taskledger::ledger::Ledger::start(
        app.store.clone(),
        taskledger::ledger::LedgerSettings::default(),
        taskledger::metrics::Metrics::new(),
    );
    let mut oversized = crate::helpers::categorization(None);
    oversized.metadata = Some(json!({"blob": "x".repeat(8000)}));
    let big = lenient
        .create(
            &crate::helpers::context(&account_id, Scope::Customer),
            oversized,
            None,
        )
        .await
        .unwrap()
        .view
        .task_id;
    app.post(&format!("/v1/task/{small}/cancel"), Value::Null)
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    // The relay halts (state 3), and the oversized event and the one after it stay counted
    // as lag rather than being skipped.
    loop {
        let text = app.metrics().await;
        let state = crate::helpers::metric_value(&text, "taskledger_relay_state");
        let lag = crate::helpers::metric_value(&text, "taskledger_relay_lag_events");
        if state == Some(3.0) && lag == Some(2.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the relay halts on a final error: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing after the refused event was published: a consumer sees only the first.
    let consumer = taskledger::relay::stream_consumer(&broker.addr, &topic, true).unwrap();
    let mut seen = Vec::new();
    while let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await {
        let e: EventEnvelope = serde_json::from_slice(m.payload().unwrap()).unwrap();
        seen.push(e.task_id);
    }
    assert_eq!(seen, vec![small.clone()]);
    assert!(!seen.contains(&big));
}

/// The example consumer (`examples/consume.rs`), built with the tests, decodes the stream and
/// prints each event once even when the topic holds it twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_example_consumer_prints_each_event_once_despite_redeliveries() {
    let broker = Broker::start().await;
    let topic = topic();
    let app = relayed_app(Backend::Sqlite, &broker.addr, &topic, |_| {}).await;
    let id = app.create(json!({})).await.task_id();
    app.contributor_post(
        &format!("/v1/task/{id}/complete"),
        json!({"response": {"ok": true}}),
    )
    .await;
    let events = feed(&app.address, &app.key).await;
    let records = read_until(
        &broker.addr,
        &topic,
        &ids_of(&events),
        Duration::from_secs(60),
    )
    .await;

    // Publish every record a second time, as a relay restart would.
    let producer: rdkafka::producer::FutureProducer =
        taskledger::relay::client_config(&broker.addr)
            .create()
            .unwrap();
    for r in &records {
        let (value, headers) = taskledger::relay::record_parts(&r.envelope);
        producer
            .send(
                rdkafka::producer::FutureRecord::to(&topic)
                    .key(r.key.as_str())
                    .payload(value.as_str())
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    // target/<profile>/deps/api-... -> target/<profile>/examples/consume
    let example = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("examples").join("consume"))
        .unwrap();
    assert!(
        example.exists(),
        "build the example first (scripts/test does: cargo build --examples): {example:?}"
    );
    let mut child = tokio::process::Command::new(example)
        .args([&broker.addr, &topic])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    // Everything is on the topic already: read until the output goes quiet.
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await
    {
        printed.push(line);
    }
    let _ = child.kill().await;
    assert_eq!(printed.len(), 2, "each event once: {printed:?}");
    assert!(printed[0].contains("TaskCreated"), "{printed:?}");
    assert!(printed[1].contains("completed"), "{printed:?}");
}

on_both_backends!(
    an_event_the_broker_can_never_take_halts_the_relay_instead_of_being_skipped,
    a_broker_down_at_start_gets_the_whole_backlog_when_it_comes_up,
    every_committed_event_arrives_keyed_by_task_in_order_with_headers,
    a_hung_broker_delays_publication_but_neither_commands_nor_events_are_lost,
    a_server_killed_during_writes_delivers_everything_after_restart,
);
