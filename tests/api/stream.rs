//! The stream as a consumer in any language sees it: CloudEvents headers on every record,
//! records that validate against the published schemas (checked in Python with `jsonschema`),
//! and the compacted task-state topic, through a SIGKILL of the server mid-write.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::message::{Headers, Message};
use serde_json::{json, Value};
use taskledger_events::Scope;

use crate::helpers::kafka::{feed, ids_of, read_until, relayed, topic, Broker};
use crate::helpers::{
    eventually, free_port, ok_if, spawn_app, spawn_app_with, Backend, ServerProcess, TestApp,
    TestDb, PATIENCE,
};

const CE_SOURCE: &str = "urn:taskledger:test";

/// One record of the state topic.
#[derive(Debug, Clone)]
struct StateRecord {
    key: String,
    position: i64,
    headers: HashMap<String, String>,
    value: String,
}

/// Reads the state topic from its beginning until `done` holds for what was read.
async fn read_state_until(
    broker: &str,
    topic: &str,
    what: &str,
    done: impl Fn(&[StateRecord]) -> bool,
) -> Vec<StateRecord> {
    let consumer = eventually(PATIENCE, "the state topic to appear", async || {
        taskledger::relay::stream_consumer(broker, topic, true)
    })
    .await;
    let deadline = Instant::now() + PATIENCE;
    let mut records = Vec::new();
    while !done(&records) {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = match tokio::time::timeout(left, consumer.recv()).await {
            Ok(m) => m.expect("consume"),
            Err(_) => panic!("gave up waiting for {what}; read {} records", records.len()),
        };
        let mut headers = HashMap::new();
        for h in message
            .headers()
            .map(|h| h.iter().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            headers.insert(
                h.key.to_string(),
                String::from_utf8_lossy(h.value.unwrap_or_default()).to_string(),
            );
        }
        records.push(StateRecord {
            key: String::from_utf8_lossy(message.key().unwrap_or_default()).to_string(),
            position: headers["global-position"].parse().unwrap(),
            value: String::from_utf8(message.payload().expect("a value").to_vec()).unwrap(),
            headers,
        });
    }
    records
}

/// Per task, the last event's global position, from the account's feed.
fn last_positions(events: &[Value]) -> HashMap<String, i64> {
    let mut last = HashMap::new();
    // A key's events (ApiKeyCreated, ...) are no task's: they have no state records.
    let of_tasks = events.iter().filter(|e| {
        !taskledger_events::KeyEvent::is_key_event_type(e["event_type"].as_str().unwrap())
    });
    for e in of_tasks {
        let position = e["global_position"].as_i64().unwrap();
        let entry = last
            .entry(e["task_id"].as_str().unwrap().to_string())
            .or_insert(position);
        *entry = (*entry).max(position);
    }
    last
}

/// The last record of each key, by position (a redelivery may repeat older ones after it).
fn latest(records: &[StateRecord]) -> HashMap<String, &StateRecord> {
    let mut latest: HashMap<String, &StateRecord> = HashMap::new();
    for r in records {
        let entry = latest.entry(r.key.clone()).or_insert(r);
        if r.position > entry.position {
            *entry = r;
        }
    }
    latest
}

/// Every event type the API can cause without a callback receiver.
async fn every_kind_of_change(app: &TestApp) {
    let worker = app.as_key(&app.contributor_key);
    let a = app
        .create(json!({"unique_id": "u-1", "tags": ["x"]}))
        .await
        .task_id();
    app.post(&format!("/v1/task/{a}/setMetadata"), json!({"k": 1}))
        .await;
    app.post(&format!("/v1/task/{a}/tags"), json!(["p", "q"]))
        .await;
    app.as_key(&app.key)
        .put(&format!("/v1/task/{a}/tags"), json!(["r"]))
        .await;
    app.as_key(&app.key)
        .delete_with(&format!("/v1/task/{a}/tags"), json!(["p"]))
        .await;
    app.post(
        &format!("/v1/task/{a}/unique_id"),
        json!({"unique_id": "u-2"}),
    )
    .await;
    app.as_key(&app.key)
        .delete(&format!("/v1/task/{a}/unique_id"))
        .await;
    app.complete(&a).await;
    let audited = app
        .post(
            &format!("/v1/task/{a}/audit"),
            json!({"accepted": true, "comments": "fine"}),
        )
        .await;
    assert_eq!(audited.status, 200, "{}", audited.body);
    let b = app.create(json!({})).await.task_id();
    app.post(&format!("/v1/task/{b}/cancel"), Value::Null).await;
    let c = app.create(json!({})).await.task_id();
    let errored = worker
        .post(
            &format!("/v1/task/{c}/error"),
            json!({"error": {"why": "blurry"}}),
        )
        .await;
    assert_eq!(errored.status, 200, "{}", errored.body);
}

async fn every_record_has_cloudevents_headers_and_validates_against_the_served_schemas(
    backend: Backend,
) {
    let state_topic = topic();
    let (broker, topic, app) = relayed(backend, |s| {
        s.relay.ce_source = CE_SOURCE.to_string();
        s.relay.kafka_state_topic = state_topic.clone();
    })
    .await;
    every_kind_of_change(&app).await;
    // Test data is on the stream too, marked so a consumer drops it by header.
    let test_key = app.test_key().await;
    let tested = app
        .as_key(&test_key)
        .post(crate::helpers::CREATE, crate::helpers::task_body())
        .await
        .task_id();
    let test_events = feed(&app.address, &test_key).await;
    let test_records = read_until(&broker.addr, &topic, &ids_of(&test_events), PATIENCE).await;
    for r in &test_records {
        let e = &r.envelope;
        assert_eq!(e.is_test, e.task_id == tested, "{e:?}");
        assert!(e.hash_matches());
        let marked = if e.is_test { "true" } else { "false" };
        assert_eq!(r.headers["ce_istest"], marked);
    }
    let marked = test_records.iter().filter(|r| r.envelope.is_test).count();
    assert!(
        marked >= test_events.len(),
        "every test event is on the stream"
    );
    let events = feed(&app.address, &app.key).await;
    let types: HashSet<&str> = events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert!(types.len() >= 11, "{types:?}");
    let records = read_until(&broker.addr, &topic, &ids_of(&events), PATIENCE).await;
    for r in &records {
        let e = &r.envelope;
        let h = &r.headers;
        assert_eq!(h["ce_specversion"], "1.0");
        assert_eq!(h["ce_id"], e.event_id.to_string());
        assert_eq!(
            h["ce_type"],
            format!(
                "ai.refonte.taskledger.{}.v{}",
                e.event_type, e.event_version
            )
        );
        assert_eq!(h["ce_source"], CE_SOURCE);
        assert_eq!(h["ce_subject"], e.task_id);
        assert_eq!(h["ce_time"], r.raw["recorded_at"].as_str().unwrap());
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(e.is_test, e.task_id == tested);
        assert_eq!(h["ce_istest"], if e.is_test { "true" } else { "false" });
        // The custom headers stay, for consumers written against them.
        assert_eq!(h["event-id"], e.event_id.to_string());
        assert_eq!(h["global-position"], e.global_position.to_string());
    }

    // Each of a task's events has its state record; a key's events have none.
    let positions: HashSet<i64> = events
        .iter()
        .filter(|e| {
            !taskledger_events::KeyEvent::is_key_event_type(e["event_type"].as_str().unwrap())
        })
        .map(|e| e["global_position"].as_i64().unwrap())
        .collect();
    read_state_until(
        &broker.addr,
        &state_topic,
        "a state record per event",
        |r| positions.iter().all(|p| r.iter().any(|s| s.position == *p)),
    )
    .await;

    // A consumer in Python, validating with the `jsonschema` package.
    let python = tokio::task::spawn_blocking(crate::sdk::sdk_python)
        .await
        .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/stream/validate_stream.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .env("BROKERS", &broker.addr)
        .env("TOPIC", &topic)
        // Every account's events are on the topic (the fixture's other account has a key,
        // and so an ApiKeyCreated), so the consumer reads until it has seen the whole ledger.
        .env("EXPECTED", ledger_size(&app).await.to_string())
        .env("STATE_TOPIC", &state_topic)
        .env("EXPECTED_STATE", positions.len().to_string())
        .env("SCHEMAS_URL", app.url("/v1/schemas"))
        .env("KEY", &app.key)
        .env("CE_SOURCE", CE_SOURCE)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "validation failed:\n{stdout}\n{stderr}"
    );
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert!(
        summary["records"].as_u64().unwrap() >= events.len() as u64,
        "{summary}"
    );
    let validated: HashSet<&str> = summary["event_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(
        validated, types,
        "every event type went through the validator"
    );
    assert!(
        summary["state_records"].as_u64().unwrap() >= positions.len() as u64,
        "{summary}"
    );
}

/// `GET /v1/schemas` serves exactly the checked-in files, and only to a caller with a key.
async fn the_served_schemas_are_the_checked_in_files(backend: Backend) {
    let app = spawn_app(backend).await;
    let anonymous = app.client.get(app.url("/v1/schemas")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let served = app.as_key(&app.contributor_key).get("/v1/schemas").await;
    assert_eq!(served.status, 200);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("events/schemas");
    let read = |name: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap()
    };
    assert_eq!(served.body["envelope"], read("envelope.json"));
    assert_eq!(served.body["state"], read("TaskState.v1.json"));
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        if name == "TaskState.v1.json" {
            continue;
        }
        let Some((event_type, version)) =
            name.strip_suffix(".json").and_then(|n| n.rsplit_once(".v"))
        else {
            continue;
        };
        files += 1;
        assert_eq!(
            served.body["events"][event_type][version],
            read(&name),
            "{name}"
        );
    }
    let served_count: usize = served.body["events"]
        .as_object()
        .unwrap()
        .values()
        .map(|versions| versions.as_object().unwrap().len())
        .sum();
    assert_eq!(served_count, files, "one served schema per file");
    assert_eq!(
        served.body["envelope"]["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
}

/// The relay creates the state topic compacted, as the broker reports it (DescribeConfigs):
/// tansu keeps the configs a topic was created with and describes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_state_topic_is_created_with_cleanup_policy_compact() {
    let state_topic = topic();
    let (broker, events_topic, app) = relayed(Backend::Sqlite, |s| {
        s.relay.kafka_state_topic = state_topic.clone()
    })
    .await;
    let id = app.create(json!({})).await.task_id();
    let records = read_state_until(&broker.addr, &state_topic, "the first state record", |r| {
        !r.is_empty()
    })
    .await;
    assert_eq!(records[0].key, id);
    let policy = describe_topic_config(&broker.addr, &state_topic, "cleanup.policy").await;
    assert_eq!(policy.as_deref(), Some("compact"));
    // What the broker reports is what the topic was created with: not the event topic's.
    let events = describe_topic_config(&broker.addr, &events_topic, "cleanup.policy").await;
    assert_ne!(events.as_deref(), Some("compact"), "{events:?}");
}

/// A topic config as the broker reports it (DescribeConfigs).
async fn describe_topic_config(broker: &str, topic: &str, name: &str) -> Option<String> {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        taskledger::relay::client_config(broker).create().unwrap();
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &options)
        .await
        .expect("DescribeConfigs answers");
    let resource = results
        .into_iter()
        .next()
        .expect("one resource")
        .expect("the topic's configs");
    resource.get(name).and_then(|entry| entry.value.clone())
}

async fn create_and_change(url: &str, key: &str, i: usize) -> bool {
    let client = reqwest::Client::new();
    let created = client
        .post(format!("{url}/v1/task/documenttranscription"))
        .basic_auth(key, Some(""))
        .json(&json!({"attachment": format!("doc-{i}")}))
        .send()
        .await;
    let Ok(created) = created else { return false };
    if created.status() != 200 {
        return false;
    }
    let Ok(body) = created.json::<Value>().await else {
        return false;
    };
    let id = body["task_id"].as_str().unwrap().to_string();
    matches!(
        client
            .post(format!("{url}/v1/task/{id}/setMetadata"))
            .basic_auth(key, Some(""))
            .json(&json!({"i": i}))
            .send()
            .await,
        Ok(r) if r.status() == 200
    )
}

async fn get_text(url: &str, key: &str) -> String {
    let answer = reqwest::Client::new()
        .get(url)
        .basic_auth(key, Some(""))
        .send()
        .await
        .expect("the server answers");
    assert_eq!(answer.status(), 200);
    answer.text().await.unwrap()
}

/// The last state record of every task is byte for byte what `GET /v1/task/{id}` serves, after
/// the server was SIGKILLed mid-write and restarted; no state record is of an event the event
/// topic lacks; and a consumer that starts from the state topic and continues on the event
/// topic by position ends at the same tasks, with no gap.
async fn the_state_topic_ends_at_each_tasks_current_object_through_a_sigkill(backend: Backend) {
    let broker = Broker::start().await;
    let (events_topic, state_topic) = (topic(), topic());
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let (_, key) = store.create_key("acme", Scope::Customer).await.unwrap();
    let env = [
        ("KAFKA_BROKERS", broker.addr.as_str()),
        ("KAFKA_TOPIC", events_topic.as_str()),
        ("KAFKA_STATE_TOPIC", state_topic.as_str()),
        ("TASKLEDGER_CE_SOURCE", CE_SOURCE),
    ];
    let port = free_port();
    let mut server = ServerProcess::start(&db, port, &env).await;
    let landed = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (url, key, landed) = (server.url.clone(), key.clone(), landed.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while create_and_change(&url, &key, i).await {
                i += 1;
                landed.store(i, Ordering::SeqCst);
            }
        })
    };
    eventually(PATIENCE, "some writes to land", async || {
        let n = landed.load(Ordering::SeqCst);
        ok_if(n >= 10, n)
    })
    .await;
    server.kill9();
    writer.await.unwrap();

    let server = ServerProcess::start(&db, port, &env).await;
    for i in 0..5 {
        assert!(create_and_change(&server.url, &key, 10_000 + i).await);
    }

    // The bootstrap: everything on the state topic now, and the position each task is at.
    let events = feed(&server.url, &key).await;
    let last = last_positions(&events);
    let records = read_state_until(
        &broker.addr,
        &state_topic,
        "every task's latest state",
        |r| {
            let latest = latest(r);
            last.iter()
                .all(|(task, position)| latest.get(task).is_some_and(|s| s.position == *position))
        },
    )
    .await;
    for (task, record) in latest(&records) {
        let served = get_text(&format!("{}/v1/task/{task}", server.url), &key).await;
        assert_eq!(record.value, served, "task {task}");
        assert_eq!(record.headers["ce_subject"], task);
        assert_eq!(record.headers["ce_source"], CE_SOURCE);
        assert_eq!(record.headers["ce_specversion"], "1.0");
        assert_eq!(
            record.headers["ce_type"],
            "ai.refonte.taskledger.TaskState.v1"
        );
    }
    let on_event_topic = read_until(&broker.addr, &events_topic, &ids_of(&events), PATIENCE).await;
    let published: HashSet<i64> = on_event_topic
        .iter()
        .map(|r| r.envelope.global_position)
        .collect();
    for r in &records {
        assert!(
            published.contains(&r.position),
            "state record at {} has no event on the event topic",
            r.position
        );
        assert_eq!(r.headers["event-id"], {
            let e = events
                .iter()
                .find(|e| e["global_position"] == r.position)
                .unwrap();
            e["event_id"].as_str().unwrap().to_string()
        });
    }

    // More changes after the bootstrap; the consumer switches to the event topic and applies,
    // per task, only the events after the position its state record carried.
    let mut bootstrapped: HashMap<String, (i64, taskledger_projections::TaskView)> =
        latest(&records)
            .into_iter()
            .map(|(task, r)| (task, (r.position, serde_json::from_str(&r.value).unwrap())))
            .collect();
    let more = bootstrapped.keys().take(3).cloned().collect::<Vec<_>>();
    let client = reqwest::Client::new();
    for (i, task) in more.iter().enumerate() {
        let r = client
            .post(format!("{}/v1/task/{task}/setMetadata", server.url))
            .basic_auth(&key, Some(""))
            .json(&json!({"after": i}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let fresh = create_and_change(&server.url, &key, 20_000).await;
    assert!(fresh);
    let events = feed(&server.url, &key).await;
    let all = read_until(&broker.addr, &events_topic, &ids_of(&events), PATIENCE).await;
    let mut applied = HashSet::new();
    let mut ordered = all.clone();
    ordered.sort_by_key(|r| r.envelope.global_position);
    for r in ordered {
        let e = &r.envelope;
        if !applied.insert(e.event_id) {
            continue; // a redelivery
        }
        if taskledger_events::KeyEvent::is_key_event_type(&e.event_type) {
            continue; // a key's event: no task's state
        }
        let current = bootstrapped.get(&e.task_id).map(|(p, v)| (*p, v.clone()));
        if current
            .as_ref()
            .is_some_and(|(p, _)| e.global_position <= *p)
        {
            continue; // already in the state it started from
        }
        let view = taskledger_projections::fold(
            current.map(|(_, v)| v),
            &e.task_id,
            e.recorded_at,
            &e.event().unwrap(),
        )
        .unwrap();
        bootstrapped.insert(e.task_id.clone(), (e.global_position, view));
    }
    let tasks = last_positions(&events);
    assert_eq!(bootstrapped.len(), tasks.len());
    for task in tasks.keys() {
        let served = get_text(&format!("{}/v1/task/{task}", server.url), &key).await;
        assert_eq!(bootstrapped[task].1.to_json(), served, "task {task}");
    }
}

/// A task cannot grow past what one state record carries: the command that would make it
/// larger is refused like an oversized event, and writes nothing.
async fn a_command_that_would_grow_a_task_past_one_record_is_refused(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.relay.kafka_message_max_bytes = 4096).await;
    let id = app
        .create(json!({"metadata": {"blob": "m".repeat(1500)}}))
        .await
        .task_id();
    // The completion's own event fits in a record; the task after it would not.
    let response = json!({"response": {"category": "big", "note": "r".repeat(1800)}});
    app.as_key(&app.contributor_key)
        .post(&format!("/v1/task/{id}/complete"), response)
        .await
        .assert_error(413, "KAFKA_MESSAGE_MAX_BYTES");
    assert_eq!(app.history(&id).await.len(), 1, "nothing was written");
    let small = json!({"response": {"category": "big"}});
    let done = app
        .as_key(&app.contributor_key)
        .post(&format!("/v1/task/{id}/complete"), small)
        .await;
    assert_eq!(done.status, 200, "{}", done.body);
}

crate::helpers::backends!(
    both: [
        every_record_has_cloudevents_headers_and_validates_against_the_served_schemas,
        the_state_topic_ends_at_each_tasks_current_object_through_a_sigkill,
    ],
    sqlite: [
        the_served_schemas_are_the_checked_in_files,
        a_command_that_would_grow_a_task_past_one_record_is_refused,
    ],
);

/// How many events the ledger holds, every account's.
async fn ledger_size(app: &crate::helpers::TestApp) -> i64 {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM events")
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    n
}
