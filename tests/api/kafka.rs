//! The Kafka relay against a real Kafka-protocol broker (tansu), each test with its own
//! broker process and topic: delivery, order, headers, a hung broker, SIGKILL, fail-over.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use taskledger::consume::Seen;
use taskledger::domain::TaskId;
use taskledger_events::{EventEnvelope, Scope, TaskEvent, TaskMetadataSet};

use crate::helpers::kafka::{
    feed, ids_of, records_on_topic, relayed, relayed_app, small_stream, topic, wait_for_relay,
};
pub use crate::helpers::kafka::{read_until, Broker, Record};
use crate::helpers::{
    eventually, free_port, metric_value, ok_if, on_both_backends, within, Backend, ServerProcess,
    TestApp, TestDb, TestLedger, PATIENCE,
};

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

async fn busy_work(app: &TestApp, tasks: usize) {
    for i in 0..tasks {
        let id = app
            .create(json!({"unique_id": format!("k-{i}-{}", uuid::Uuid::now_v7())}))
            .await
            .task_id();
        app.post(&format!("/v1/task/{id}/setMetadata"), json!({"i": i}))
            .await;
        app.as_key(&app.key)
            .put(&format!("/v1/task/{id}/tags"), json!(["t"]))
            .await;
        app.as_key(&app.contributor_key)
            .post(
                &format!("/v1/task/{id}/complete"),
                json!({"response": {"ok": true}}),
            )
            .await;
    }
}

async fn every_committed_event_arrives_keyed_by_task_in_order_with_headers(backend: Backend) {
    let (broker, topic, app) = relayed(backend, |_| {}).await;
    busy_work(&app, 5).await;
    let other = app
        .as_key(&app.other_key)
        .post("/v1/task/documenttranscription", json!({"attachment": "x"}))
        .await;
    assert_eq!(other.status, 200);

    let mine = feed(&app.address, &app.key).await;
    let theirs = feed(&app.address, &app.other_key).await;
    // 20 task events and the fixture's two API keys of acme.
    assert_eq!(mine.len(), 22);
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
        assert!(
            r.envelope.ledger_event().is_ok(),
            "decodes with taskledger-events"
        );
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
    let (broker, topic, app) = relayed(backend, |_| {}).await;
    busy_work(&app, 2).await;
    let first = ids_of(&feed(&app.address, &app.key).await);
    read_until(&broker.addr, &topic, &first, Duration::from_secs(60)).await;

    broker.pause();
    // Commands do not wait for the broker: they all finish while it is still hung.
    within(
        PATIENCE,
        "commands while the broker hangs",
        busy_work(&app, 3),
    )
    .await;
    // The relay sees the hang: the new events are counted as its lag, unpublished.
    eventually(PATIENCE, "the lag to show the new events", async || {
        let text = app.metrics().await;
        let lag = metric_value(&text, "taskledger_relay_lag_events");
        ok_if(lag == Some(12.0), text)
    })
    .await;
    broker.resume();

    let all = ids_of(&feed(&app.address, &app.key).await);
    assert_eq!(all.len(), 22, "20 task events and the fixture's two keys");
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
    let landed = Arc::new(AtomicUsize::new(0));
    let writer = {
        let url = server.url.clone();
        let key = key.clone();
        let landed = landed.clone();
        tokio::spawn(async move {
            let mut i = 0;
            while create_raw(&url, &key, i).await {
                i += 1;
                landed.store(i, Ordering::SeqCst);
            }
            i
        })
    };
    // Killed in the middle of the writes: after some landed, while more are being sent.
    eventually(PATIENCE, "some writes to land", async || {
        let n = landed.load(Ordering::SeqCst);
        ok_if(n >= 20, n)
    })
    .await;
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
    // One relay holds the lease and the other stands by; the two gauges are read one after
    // the other, so wait for a pair that agrees rather than judging one read of each.
    let active_is_a = eventually(PATIENCE, "exactly one active relay", async || {
        let states = (
            a.metric("taskledger_relay_state").await,
            b.metric("taskledger_relay_state").await,
        );
        match states {
            (Some(1.0), Some(0.0)) => Ok(true),
            (Some(0.0), Some(1.0)) => Ok(false),
            other => Err(other),
        }
    })
    .await;
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
    assert_eq!(all.len(), 16, "the key's ApiKeyCreated and 15 creations");
    read_until(&broker.addr, &topic, &ids_of(&all), Duration::from_secs(60)).await;
    eventually(
        PATIENCE,
        "the survivor to take over the relay",
        async || {
            let state = survivor.metric("taskledger_relay_state").await;
            ok_if(state == Some(1.0), state)
        },
    )
    .await;
}

/// `taskledger tail` prints the envelopes of the topic, one JSON per line.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tail_prints_one_envelope_per_line_and_filters_by_task() {
    let (broker, topic, app) = relayed(Backend::Sqlite, |_| {}).await;
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
        let line = within(PATIENCE, "tail to print", lines.next_line())
            .await
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
    // Commands do not wait for Kafka: they all finish while there is no broker at all.
    within(PATIENCE, "commands without a broker", busy_work(&app, 3)).await;
    eventually(PATIENCE, "the backlog to be visible", async || {
        let text = app.metrics().await;
        let lag = metric_value(&text, "taskledger_relay_lag_events");
        // 12 task events and the fixture's three API keys.
        ok_if(lag == Some(15.0), text)
    })
    .await;
    let broker = Broker::start_on(port).await;
    let all = ids_of(&feed(&app.address, &app.key).await);
    let records = read_until(&broker.addr, &topic, &all, Duration::from_secs(90)).await;
    assert_in_task_order(&records);
}

/// A backlog of several relay rounds, one task's thousands of events among them, is
/// published whole and in each task's order: every round is read ahead while the one before
/// it is delivered, and the long task's view is carried from round to round.
async fn a_backlog_of_several_rounds_is_published_whole_and_in_task_order(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let created = t
            .ledger
            .create(&t.customer(), crate::helpers::categorization(None), None)
            .await
            .unwrap();
        tasks.push(TaskId::parse(&created.view.task_id).unwrap());
    }
    // 4,500 more events in turns of 500, so the rounds of 2,000 cut through every task.
    for turn in 0..9 {
        let task = &tasks[turn % tasks.len()];
        let events = (0..500)
            .map(|i| {
                TaskEvent::TaskMetadataSet(TaskMetadataSet {
                    metadata: json!({ "turn": turn, "i": i }),
                })
            })
            .collect();
        let write = t.decided_write(task, events).await;
        let mut results = t.store.commit_batch(vec![write]).await.unwrap();
        results.pop().unwrap().expect("the events are appended");
    }
    let mut wanted = HashSet::new();
    let mut after = 0;
    loop {
        let page = t.store.events_after(after, 1000, None).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.global_position;
        wanted.extend(page.iter().map(|e| e.event_id.to_string()));
    }
    assert!(wanted.len() > 4500);
    let broker = Broker::start().await;
    let topic = topic();
    let settings = taskledger::relay::RelaySettings {
        kafka_topic: topic.clone(),
        kafka_partitions: 3,
        kafka_replication: 1,
        kafka_message_max_bytes: 1_000_000,
        kafka_message_timeout_ms: 30_000,
        kafka_state_topic: format!("{topic}.state"),
        ce_source: "urn:taskledger:test".into(),
    };
    let (_wake, wake) = tokio::sync::watch::channel(0u64);
    let relay = taskledger::relay::Relay::new(
        t.store.clone(),
        broker.addr.clone(),
        settings,
        taskledger::metrics::Metrics::new(),
        wake,
    );
    let running = tokio::spawn(relay.run());
    let records = read_until(&broker.addr, &topic, &wanted, Duration::from_secs(120)).await;
    running.abort();
    assert_in_task_order(&records);
    let order = per_task_order(&records);
    for task in &tasks {
        assert_eq!(order[task.as_str()].len(), 1501, "task {task}");
    }
}

/// An event larger than the stream takes cannot be created, so no tenant can put one in the
/// relay's way: the create answers 413 and everything after it is published.
async fn an_event_too_large_for_the_stream_is_refused_and_the_relay_keeps_publishing(
    backend: Backend,
) {
    let (broker, topic, app) = small_stream(backend).await;
    let small = app.create(json!({})).await.task_id();
    app.create(json!({"metadata": {"blob": "x".repeat(8000)}}))
        .await
        .assert_error(413, "KAFKA_MESSAGE_MAX_BYTES");
    app.post(&format!("/v1/task/{small}/cancel"), Value::Null)
        .await;
    let all = ids_of(&feed(&app.address, &app.key).await);
    assert_eq!(
        all.len(),
        4,
        "the fixture's two keys and two task events: the refused create appended nothing"
    );
    read_until(&broker.addr, &topic, &all, PATIENCE).await;
    wait_for_relay(&app, "the relay active with no lag", |state, lag, _| {
        state == 1.0 && lag == 0.0
    })
    .await;
}

/// The example consumer (`taskledger::consume`, which `examples/consume.rs` runs) decodes the
/// stream and prints each event once even when the topic holds it twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_example_consumer_prints_each_event_once_despite_redeliveries() {
    let (broker, topic, app) = relayed(Backend::Sqlite, |_| {}).await;
    let id = app.create(json!({})).await.task_id();
    app.as_key(&app.contributor_key)
        .post(
            &format!("/v1/task/{id}/complete"),
            json!({"response": {"ok": true}}),
        )
        .await;
    let events = feed(&app.address, &app.key).await;
    let records = read_until(&broker.addr, &topic, &ids_of(&events), PATIENCE).await;
    // The fixture's three API keys and the task's two events.
    let originals = records_on_topic(&broker.addr, &topic).await;
    assert_eq!(originals, 5);

    // Publish every record read a second time, as a relay restart would.
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
    let total = originals + records.len() as i64;
    assert_eq!(records_on_topic(&broker.addr, &topic).await, total);

    let (sender, mut outcomes) = tokio::sync::mpsc::unbounded_channel();
    let consumer = {
        let (brokers, topic) = (broker.addr.clone(), topic.clone());
        tokio::spawn(async move {
            taskledger::consume::run(&brokers, &topic, |seen| {
                let _ = sender.send(seen);
            })
            .await
        })
    };
    // Every record on the topic, originals and redeliveries, goes through the consumer.
    let mut seen = Vec::new();
    while (seen.len() as i64) < total {
        let next = within(PATIENCE, "the consumer to read the topic", outcomes.recv()).await;
        seen.push(next.expect("the consumer keeps running"));
    }
    consumer.abort();
    let printed: Vec<&String> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::New(line) => Some(line),
            Seen::Again => None,
        })
        .collect();
    assert_eq!(printed.len(), 5, "each event once: {seen:?}");
    let task: Vec<&&String> = printed.iter().filter(|l| l.starts_with("task")).collect();
    assert_eq!(task.len(), 2, "{printed:?}");
    assert!(task[0].contains("TaskCreated"), "{printed:?}");
    assert!(task[1].contains("completed"), "{printed:?}");
}

on_both_backends!(
    a_backlog_of_several_rounds_is_published_whole_and_in_task_order,
    an_event_too_large_for_the_stream_is_refused_and_the_relay_keeps_publishing,
    a_broker_down_at_start_gets_the_whole_backlog_when_it_comes_up,
    every_committed_event_arrives_keyed_by_task_in_order_with_headers,
    a_hung_broker_delays_publication_but_neither_commands_nor_events_are_lost,
    a_server_killed_during_writes_delivers_everything_after_restart,
);
