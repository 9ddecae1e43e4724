//! Exact numbers, hashes over the stored bytes, `verify` reporting every broken event, and
//! what the store de-duplicates itself; on PostgreSQL and SQLite alike.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use taskledger::domain::TaskId;
use taskledger::store::{CommandWrite, Store, StoreError, VERIFY_NAMED_MAX};
use taskledger_events::{
    canonical_json, EventEnvelope, Scope, TaskCreated, TaskEvent, GENESIS_HASH, HASH_V1,
};

use crate::helpers::{assert_ledger_intact, on_both_backends, Backend, TestDb, TestLedger};

/// Parses JSON text the way a request body is parsed.
fn parse(text: &str) -> Value {
    serde_json::from_str(text).expect("valid JSON")
}

/// Sets a task's metadata from JSON text; the number of events it appended.
async fn set_metadata(t: &TestLedger, task: &TaskId, text: &str) -> usize {
    t.set_metadata(task, parse(text)).await.envelopes.len()
}

/// Runs SQL that the append-only triggers would refuse, the way someone with the table
/// owner's rights could, on one connection.
async fn behind_the_ledgers_back(db: &TestDb, store: &Store, statements: &[&str]) {
    let mut conn = store.pool().acquire().await.unwrap();
    let unlock = match db.backend {
        Backend::Postgres => "ALTER TABLE events DISABLE TRIGGER events_no_update",
        Backend::Sqlite => "DROP TRIGGER IF EXISTS events_no_update",
    };
    sqlx::raw_sql(unlock).execute(&mut *conn).await.unwrap();
    for sql in statements {
        sqlx::raw_sql(sql).execute(&mut *conn).await.unwrap();
    }
}

async fn the_same_metadata_with_extreme_floats_twice_appends_one_event_and_verifies(
    backend: Backend,
) {
    let t = TestLedger::new(backend).await;
    let task = t.create(None).await;
    let text = r#"{"score": 9.3e30, "p": 7.65e-25, "tiny": 5e-324, "big": 1e308,
        "zero": -0.0, "id": 18446744073709551615, "above_2_53": 9007199254740993,
        "beyond_u64": 100000000000000000000}"#;
    assert_eq!(set_metadata(&t, &task, text).await, 1);
    assert_eq!(
        set_metadata(&t, &task, text).await,
        0,
        "the same metadata again is a no-op"
    );
    assert_eq!(t.store.count_events().await.unwrap(), 2);

    let history = t.events_of(&task).await;
    let stored = &history[1].payload["metadata"];
    assert_eq!(
        stored,
        &parse(text),
        "every number reads back as it went in"
    );
    assert_eq!(stored["score"].as_f64(), Some(9.3e30));
    assert_eq!(stored["p"].as_f64(), Some(7.65e-25));
    assert_eq!(stored["id"].as_u64(), Some(u64::MAX));
    assert_eq!(stored["above_2_53"].as_u64(), Some(9_007_199_254_740_993));
    // Past u64 an integer is kept as the nearest f64, the same in every reader.
    assert_eq!(stored["beyond_u64"].as_f64(), Some(1e20));
    assert!(history.iter().all(EventEnvelope::hash_matches));
    let report = t.store.verify(|_| {}).await.unwrap();
    assert!(report.is_intact(), "{:?}", report.failures);
    assert_ledger_intact(&t.store).await;
}

/// Any JSON value without NaN or infinities (JSON has neither), weighted towards the numbers
/// that do not survive a lossy float parser.
fn json_value() -> impl Strategy<Value = Value> {
    let float = prop_oneof![
        Just(9.3e30),
        Just(7.65e-25),
        Just(5e-324),
        Just(2.225_073_858_507_201e-308),
        Just(-0.0),
        Just(1e308),
        Just(f64::MAX),
        prop::num::f64::POSITIVE
            | prop::num::f64::NEGATIVE
            | prop::num::f64::NORMAL
            | prop::num::f64::SUBNORMAL
            | prop::num::f64::ZERO,
    ]
    .prop_map(|f| json!(f));
    let integer = prop_oneof![
        Just(json!(u64::MAX)),
        Just(json!(i64::MIN)),
        ((1u64 << 53) + 1..=u64::MAX).prop_map(|n| json!(n)),
        any::<i64>().prop_map(|n| json!(n)),
    ];
    let leaf = prop_oneof![
        3 => float,
        2 => integer,
        1 => any::<bool>().prop_map(Value::Bool),
        1 => Just(Value::Null),
        1 => "\\PC{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("\\PC{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// One case: the value, sent as text, is stored, read back, verified and folded unchanged,
/// and sending it again appends nothing.
async fn round_trip(t: &TestLedger, task: &TaskId, value: Value) {
    let text = json!({ "m": value }).to_string();
    let before = t.store.count_events().await.unwrap();
    let appended = set_metadata(t, task, &text).await;
    assert!(appended <= 1);
    assert_eq!(set_metadata(t, task, &text).await, 0, "a no-op: {text}");
    assert_eq!(
        t.store.count_events().await.unwrap(),
        before + appended as u64
    );

    let history = t.events_of(task).await;
    let last = history.last().unwrap();
    assert!(last.hash_matches(), "{text}");
    if appended == 1 {
        assert_eq!(last.payload["metadata"], parse(&text), "{text}");
    }
    let folded = t
        .ledger
        .task_as_of(&t.account_id, task, chrono::Utc::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(folded.metadata, parse(&text), "{text}");
    let body = t.view_body(task).await;
    assert_eq!(body["metadata"], parse(&text), "{text}");
}

async fn any_json_goes_through_store_read_verify_and_fold_unchanged(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let task = t.create(None).await;
    let handle = tokio::runtime::Handle::current();
    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    });
    tokio::task::block_in_place(|| {
        runner
            .run(&json_value(), |value| {
                handle.block_on(round_trip(&t, &task, value));
                Ok(())
            })
            .unwrap();
    });
    let report = t.store.verify(|_| {}).await.unwrap();
    assert!(report.is_intact(), "{:?}", report.failures);
    assert_ledger_intact(&t.store).await;
}

async fn verify_goes_on_past_a_broken_event_and_names_every_one(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        tasks.push(t.create(None).await);
    }
    for (i, task) in tasks.iter().enumerate() {
        set_metadata(&t, task, &format!(r#"{{"n": {i}}}"#)).await;
    }
    assert!(t.store.verify(|_| {}).await.unwrap().is_intact());
    // Positions 1-4 are the creates, 5-8 the metadata changes. Alter three events three
    // ways: a payload, a hash, and a payload whose successor then still chains.
    behind_the_ledgers_back(
        &t.db,
        &t.store,
        &[
            r#"UPDATE events SET payload = '{"metadata":{"n":100}}' WHERE global_position = 6"#,
            "UPDATE events SET hash = 'f' WHERE global_position = 7",
            r#"UPDATE events SET payload = '{"metadata":{}}' WHERE global_position = 2"#,
        ],
    )
    .await;
    let report = t.store.verify(|_| {}).await.unwrap();
    assert_eq!(report.events, 8);
    assert_eq!(report.broken, 3, "{:?}", report.failures);
    let named: Vec<i64> = report.failures.iter().map(|f| f.global_position).collect();
    assert_eq!(named, vec![2, 6, 7]);
    assert!(report.failures.iter().all(|f| f.reason.contains("hash")));
    assert_eq!(report.failures[1].task_id, tasks[1].as_str());
    assert!(!report.is_intact());
}

/// `verify` checks each stored row where it lies (no envelope is built of it): every way a
/// field can be wrong is still found and named, with the same words, whichever hashing
/// worker the event falls to.
async fn verify_names_each_way_a_stored_field_is_wrong_whichever_worker_hashes_it(
    backend: Backend,
) {
    let t = TestLedger::new(backend).await;
    let mut tasks = Vec::new();
    for _ in 0..6 {
        tasks.push(t.create(None).await);
    }
    // Position 7: the last event of the first task, so its successor cannot break too.
    set_metadata(&t, &tasks[0], r#"{"a": 1}"#).await;
    let events = t.store.events_after(0, 10, None).await.unwrap();
    let last = &events[6];
    // The same payload, stored with a space, and hashed as stored: only its form is wrong.
    let spaced = r#"{"metadata": {"a":1}}"#;
    let spaced_hash = hex::encode(Sha256::digest(last.hash_input_of(spaced).unwrap()));
    let rehash = format!(
        "UPDATE events SET payload = '{spaced}', hash = '{spaced_hash}' WHERE global_position = 7"
    );
    behind_the_ledgers_back(
        &t.db,
        &t.store,
        &[
            "UPDATE events SET actor_scope = 'admin' WHERE global_position = 1",
            "UPDATE events SET payload = '{\"metadata\":' WHERE global_position = 2",
            "UPDATE events SET hash_version = 9 WHERE global_position = 4",
            "UPDATE events SET event_id = 'not-a-uuid' WHERE global_position = 5",
            "UPDATE events SET recorded_at_us = 9223372036854775807 WHERE global_position = 6",
            &rehash,
        ],
    )
    .await;
    let report = t.store.verify(|_| {}).await.unwrap();
    assert_eq!(report.events, 7);
    let reasons: Vec<(i64, &str)> = report
        .failures
        .iter()
        .map(|f| (f.global_position, f.reason.as_str()))
        .collect();
    assert_eq!(report.broken, 6, "{reasons:?}");
    let expected = [
        (1, "does not decode"),
        (2, "does not decode"),
        (4, "unknown hash version 9"),
        (5, "does not decode"),
        (6, "out of range"),
        (7, "the stored payload is not canonical JSON"),
    ];
    for ((position, reason), (want_position, want)) in reasons.iter().zip(expected) {
        assert_eq!(*position, want_position, "{reasons:?}");
        assert!(reason.contains(want), "position {position}: {reason}");
    }
    assert_eq!(report.failures[0].task_id, tasks[0].as_str());
}

async fn verify_counts_every_broken_event_but_names_only_the_first_hundred(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let ctx = t.customer();
    let creates = (0..VERIFY_NAMED_MAX + 20).map(|_| {
        t.ledger
            .create(&ctx, crate::helpers::categorization(None), None)
    });
    for created in futures::future::join_all(creates).await {
        created.expect("create a task");
    }
    behind_the_ledgers_back(
        &t.db,
        &t.store,
        &["UPDATE events SET payload = '{\"x\":1}'"],
    )
    .await;
    let report = t.store.verify(|_| {}).await.unwrap();
    assert_eq!(report.broken, (VERIFY_NAMED_MAX + 20) as u64);
    assert_eq!(report.failures.len(), VERIFY_NAMED_MAX);
    let named: Vec<i64> = report.failures.iter().map(|f| f.global_position).collect();
    assert_eq!(named, (1..=VERIFY_NAMED_MAX as i64).collect::<Vec<_>>());
}

async fn the_verify_command_prints_a_count_and_every_broken_event_and_exits_1(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let first = t.create(None).await;
    let second = t.create(None).await;
    set_metadata(&t, &first, r#"{"a": 1}"#).await;
    let events = t.store.events_after(0, 10, None).await.unwrap();
    behind_the_ledgers_back(
        &t.db,
        &t.store,
        &[
            r#"UPDATE events SET payload = '{"metadata":{"a":2}}' WHERE global_position = 3"#,
            "UPDATE events SET hash = 'f' WHERE global_position = 2",
        ],
    )
    .await;
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_taskledger"))
        .arg("verify")
        .env("DATABASE_URL", &t.db.url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the taskledger binary");
    assert_eq!(run.status.code(), Some(1));
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(out.contains("BROKEN: 2 findings in 3 events"), "{out}");
    for (event, task) in [(&events[1], &second), (&events[2], &first)] {
        let line = out
            .lines()
            .find(|l| l.contains(&event.event_id.to_string()))
            .unwrap_or_else(|| panic!("{} is named: {out}", event.event_id));
        assert!(line.contains(task.as_str()), "{line}");
        assert!(
            line.contains(&format!("global position {}", event.global_position)),
            "{line}"
        );
    }
    assert!(!out.contains(&events[0].event_id.to_string()), "{out}");
}

/// The first release's hash of an event, written out independently of the code under test:
/// every field length-prefixed, an absent key or request id as the empty string.
fn first_release_hash(fields: &[&str]) -> String {
    let mut input = Vec::new();
    for f in fields {
        input.extend_from_slice(&(f.len() as u64).to_be_bytes());
        input.extend_from_slice(f.as_bytes());
    }
    hex::encode(Sha256::digest(input))
}

/// A store whose schema is where the previous release left it: every migration before
/// the hash version's.
async fn store_of_the_previous_release(db: &TestDb) -> Store {
    let store = Store::connect(&db.url, 4).await.unwrap();
    let backend = match db.backend {
        Backend::Postgres => "postgres",
        Backend::Sqlite => "sqlite",
    };
    let all = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(backend);
    let previous = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&all).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.as_str() < "0004" {
            std::fs::copy(&path, previous.path().join(&name)).unwrap();
        }
    }
    sqlx::migrate::Migrator::new(previous.path())
        .await
        .unwrap()
        .run(store.pool())
        .await
        .unwrap();
    store
}

async fn an_event_written_by_the_previous_release_verifies_after_the_upgrade(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = store_of_the_previous_release(&db).await;
    let account_id = store.ensure_account("acme").await.unwrap();
    let payload = r#"{"metadata":{"p":7.65e-25}}"#;
    let event_id = uuid::Uuid::now_v7().to_string();
    let recorded_us = 1_700_000_000_000_000i64;
    let hash = first_release_hash(&[
        "taskledger-event-v1",
        GENESIS_HASH,
        &event_id,
        "TaskMetadataSet",
        "1",
        "t-old",
        &account_id,
        "1",
        "1",
        &recorded_us.to_string(),
        &account_id,
        "",
        "system",
        "",
        payload,
    ]);
    // The row as the previous release wrote it, before the hash_version column existed.
    sqlx::query(
        "INSERT INTO events (global_position, event_id, task_id, account_id, sequence, \
         event_type, event_version, payload, recorded_at_us, actor_account_id, actor_key_id, \
         actor_scope, request_id, prev_hash, hash) \
         VALUES (1, $1, 't-old', $2, 1, 'TaskMetadataSet', 1, $3, $4, $2, NULL, 'system', \
         NULL, $5, $6)",
    )
    .bind(&event_id)
    .bind(&account_id)
    .bind(payload)
    .bind(recorded_us)
    .bind(GENESIS_HASH)
    .bind(&hash)
    .execute(store.pool())
    .await
    .unwrap();
    sqlx::query("UPDATE ledger_head SET last_position = 1, last_recorded_us = $1")
        .bind(recorded_us)
        .execute(store.pool())
        .await
        .unwrap();

    store.migrate().await.unwrap();
    // The upgraded release goes on appending, with the current hash input.
    let actor = crate::helpers::context(&account_id, Scope::Customer).actor;
    let appended = store
        .commit_batch(vec![CommandWrite {
            account_id: account_id.clone(),
            task_id: TaskId::generate().to_string(),
            actor,
            request_id: None,
            expected_sequence: 0,
            prev_hash: GENESIS_HASH.into(),
            prior_view: None,
            events: vec![created_with_tags(&["new"])],
            idempotency: None,
            placement: Vec::new(),
        }])
        .await
        .unwrap();
    assert!(appended[0].is_ok(), "{appended:?}");
    let report = store.verify(|_| {}).await.unwrap();
    assert!(report.is_intact(), "{:?}", report.failures);
    assert_eq!(report.events, 2);
    let read = store.events_after(0, 10, None).await.unwrap();
    assert_eq!(read[0].hash_version, HASH_V1);
    assert_eq!(
        read[1].hash_version,
        taskledger_events::CURRENT_HASH_VERSION
    );
    assert!(read[0].hash_matches(), "a consumer recomputes it too");
    let published: EventEnvelope =
        serde_json::from_str(&serde_json::to_string(&read[0]).unwrap()).unwrap();
    assert!(published.hash_matches());
    assert_eq!(canonical_json(&read[0].payload), payload);
}

async fn new_events_record_the_current_hash_version_and_the_payload_text_hashed(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let task = t.create(None).await;
    set_metadata(&t, &task, r#"{"b": 9.3e30, "a": [7.65e-25, -0.0]}"#).await;
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT payload, hash_version FROM events ORDER BY global_position")
            .fetch_all(t.store.pool())
            .await
            .unwrap();
    assert!(rows
        .iter()
        .all(|(_, v)| *v == i64::from(taskledger_events::CURRENT_HASH_VERSION)));
    assert_eq!(
        rows[1].0,
        r#"{"metadata":{"a":[7.65e-25,-0.0],"b":9.3e+30}}"#
    );
    let history = t.events_of(&task).await;
    for (e, (payload, _)) in history.iter().zip(&rows) {
        assert_eq!(&e.expected_hash_of(payload).unwrap(), &e.hash);
    }
}

fn created_with_tags(tags: &[&str]) -> TaskEvent {
    TaskEvent::TaskCreated(TaskCreated {
        task_type: "categorization".into(),
        instruction: None,
        callback_url: None,
        project: None,
        batch: None,
        params: json!({"attachment_type": "text", "attachment": "car", "categories": ["a"]}),
        metadata: json!({}),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        unique_id: None,
        clear_unique_id_on_error: false,
        project_param_version: None,
        is_test: false,
    })
}

async fn a_tag_given_twice_is_stored_once_alone_and_in_a_batch(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let ctx = t.customer();
    let write = || CommandWrite {
        account_id: t.account_id.clone(),
        task_id: TaskId::generate().to_string(),
        actor: ctx.actor.clone(),
        request_id: None,
        expected_sequence: 0,
        prev_hash: GENESIS_HASH.into(),
        prior_view: None,
        events: vec![created_with_tags(&["x", "y", "x", "x"])],
        idempotency: None,
        placement: Vec::new(),
    };
    let alone = t.store.commit_batch(vec![write()]).await.unwrap();
    assert!(alone[0].is_ok(), "{alone:?}");
    let batch = t
        .store
        .commit_batch(vec![write(), write(), write()])
        .await
        .unwrap();
    assert!(batch.iter().all(Result::is_ok), "{batch:?}");
    let tags: Vec<(String, String)> =
        sqlx::query_as("SELECT task_id, tag FROM task_tags ORDER BY task_id, tag")
            .fetch_all(t.store.pool())
            .await
            .unwrap();
    assert_eq!(
        tags.len(),
        8,
        "x and y once for each of four tasks: {tags:?}"
    );
    let report = t.store.replay(true, |_| {}).await.unwrap();
    assert!(report.mismatches.is_empty(), "{:?}", report.mismatches);
}

async fn a_key_with_a_corrupt_scope_is_refused_not_taken_for_a_customer(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let (key, secret) = t
        .store
        .create_key("acme", Scope::Contributor)
        .await
        .unwrap();
    let mut conn = t.store.pool().acquire().await.unwrap();
    let unlock = match backend {
        Backend::Postgres => "ALTER TABLE api_keys DROP CONSTRAINT api_keys_scope_check",
        Backend::Sqlite => "PRAGMA ignore_check_constraints = ON",
    };
    sqlx::raw_sql(unlock).execute(&mut *conn).await.unwrap();
    sqlx::query("UPDATE api_keys SET scope = 'admin' WHERE key_id = $1")
        .bind(&key.key_id)
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    let authenticated = t.store.authenticate(&secret).await;
    assert!(
        matches!(&authenticated, Err(StoreError::CorruptKey { key_id, scope })
            if key_id == &key.key_id && scope == "admin"),
        "{authenticated:?}"
    );
    assert!(matches!(
        t.store.list_keys().await,
        Err(StoreError::CorruptKey { .. })
    ));
}

on_both_backends!(
    the_same_metadata_with_extreme_floats_twice_appends_one_event_and_verifies,
    any_json_goes_through_store_read_verify_and_fold_unchanged,
    verify_goes_on_past_a_broken_event_and_names_every_one,
    verify_counts_every_broken_event_but_names_only_the_first_hundred,
    verify_names_each_way_a_stored_field_is_wrong_whichever_worker_hashes_it,
    an_event_written_by_the_previous_release_verifies_after_the_upgrade,
    new_events_record_the_current_hash_version_and_the_payload_text_hashed,
    a_tag_given_twice_is_stored_once_alone_and_in_a_batch,
    a_key_with_a_corrupt_scope_is_refused_not_taken_for_a_customer,
    the_verify_command_prints_a_count_and_every_broken_event_and_exits_1,
);
