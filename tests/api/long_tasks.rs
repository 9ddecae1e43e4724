//! Commands on a task with a long history: decided from the newest snapshot and the events
//! after it, still on the exact version, and still serialized when they race; on PostgreSQL
//! and SQLite alike.

use serde_json::json;
use taskledger::domain::{Tags, TaskAction, TaskId};
use taskledger::ledger::{Ledger, SNAPSHOT_EVERY};
use taskledger::store::Store;
use taskledger::task_state::TaskStates;
use taskledger_events::{EventEnvelope, Scope, TaskEvent, TaskMetadataSet};

use crate::helpers::{assert_ledger_intact, context, on_both_backends, Backend, TestLedger};

/// The sequence of the task's snapshot, if it has one.
async fn snapshot_sequence(store: &Store, task: &TaskId) -> Option<i64> {
    sqlx::query_scalar("SELECT sequence FROM task_snapshots WHERE task_id = $1")
        .bind(task.as_str())
        .fetch_optional(store.pool())
        .await
        .unwrap()
}

/// Appends `n` metadata events to the task in one append, straight through the store.
async fn grow(t: &TestLedger, task: &TaskId, n: usize) {
    let events = (0..n)
        .map(|i| {
            TaskEvent::TaskMetadataSet(TaskMetadataSet {
                metadata: json!({ "i": i }),
            })
        })
        .collect();
    let write = t.decided_write(task, events).await;
    let mut results = t.store.commit_batch(vec![write]).await.unwrap();
    results.pop().unwrap().expect("the events are appended");
}

/// Adds a tag as a client would: a command that lost every race to the other process
/// (`Contended`, the API's 503) is sent again. What the test checks is that each lands once,
/// on the exact version, not how many races a loaded machine makes it lose.
async fn add_tag(ledger: &Ledger, account_id: &str, task: &TaskId, tag: String) {
    let tags: Tags = vec![tag].try_into().unwrap();
    for _ in 0..1000 {
        let command = taskledger::domain::TaskCommand::new(
            Scope::Customer,
            TaskAction::AddTags { tags: tags.clone() },
        );
        match ledger
            .execute(&context(account_id, Scope::Customer), task, command, None)
            .await
        {
            Ok(_) => return,
            Err(taskledger::ledger::LedgerError::Contended) => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await
            }
            Err(e) => panic!("add a tag: {e}"),
        }
    }
    panic!("add a tag: lost a thousand rounds of races");
}

async fn a_task_with_thousands_of_events_takes_commands_on_its_exact_version(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let task = t.create(None).await;
    grow(&t, &task, 3000).await;
    assert_eq!(snapshot_sequence(&t.store, &task).await, None);

    let first = t.set_metadata(&task, json!({"step": "first"})).await;
    assert_eq!(first.envelopes[0].sequence, 3002);
    assert_eq!(
        snapshot_sequence(&t.store, &task).await,
        Some(3002),
        "the first command folded the whole history and left a snapshot"
    );
    let again = t.set_metadata(&task, json!({"step": "first"})).await;
    assert!(
        again.envelopes.is_empty(),
        "decided on the snapshot's state: the same metadata is a no-op"
    );

    // Racing commands from two ledgers (two processes) on the long task: every one lands,
    // on consecutive sequences, and the snapshot moves on as the task grows.
    let second = t.second_ledger().await;
    let racers = (SNAPSHOT_EVERY as usize) + 16;
    let mut handles = Vec::new();
    for i in 0..racers {
        let ledger = if i % 2 == 0 {
            t.ledger.clone()
        } else {
            second.clone()
        };
        let account_id = t.account_id.clone();
        let task = task.clone();
        handles.push(tokio::spawn(async move {
            add_tag(&ledger, &account_id, &task, format!("t{i}")).await
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let history = t.events_of(&task).await;
    let sequences: Vec<i64> = history.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (1..=3002 + racers as i64).collect::<Vec<_>>());
    let view = t.view_body(&task).await;
    let tags = view["tags"].as_array().unwrap();
    assert_eq!(tags.len(), racers + 1, "{view}");
    for i in 0..racers {
        assert!(tags.contains(&json!(format!("t{i}"))), "t{i} lost: {view}");
    }
    assert_eq!(view["metadata"], json!({"step": "first"}));
    let snapshot = snapshot_sequence(&t.store, &task).await.unwrap();
    assert!(snapshot > 3002, "the snapshot moved on: {snapshot}");
    assert_ledger_intact(&t.store).await;
}

async fn an_unreadable_snapshot_is_ignored_and_replaced(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let task = t.create(None).await;
    grow(&t, &task, 2 * SNAPSHOT_EVERY as usize).await;
    t.set_metadata(&task, json!({"step": 1})).await;
    let taken = snapshot_sequence(&t.store, &task).await.unwrap();
    sqlx::query("UPDATE task_snapshots SET state = 'not a snapshot' WHERE task_id = $1")
        .bind(task.as_str())
        .execute(t.store.pool())
        .await
        .unwrap();
    let next = t.set_metadata(&task, json!({"step": 2})).await;
    assert_eq!(next.envelopes[0].sequence, taken + 1);
    assert_eq!(t.view_body(&task).await["metadata"], json!({"step": 2}));
    assert_eq!(snapshot_sequence(&t.store, &task).await, Some(taken + 1));
    let noop = t.set_metadata(&task, json!({"step": 2})).await;
    assert!(noop.envelopes.is_empty());
    assert_ledger_intact(&t.store).await;
}

/// The state records the relay's task-state step makes for `batch`, starting with nothing
/// kept (a relay just started), and how many earlier events it read for them.
async fn relayed_states(store: &Store, batch: &[EventEnvelope]) -> (Vec<Option<String>>, u64) {
    let before = store.task_state_events_read();
    let values = TaskStates::default()
        .after_each(store, batch)
        .await
        .expect("the task-state step");
    (values, store.task_state_events_read() - before)
}

async fn the_relay_states_a_long_task_from_its_snapshot_with_a_bounded_read(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let long = t.create(None).await;
    grow(&t, &long, 3000).await;
    t.set_metadata(&long, json!({"step": "snapshot"})).await;
    assert_eq!(snapshot_sequence(&t.store, &long).await, Some(3002));
    // Ten events past the snapshot without a new one, then a command.
    grow(&t, &long, 10).await;
    t.set_metadata(&long, json!({"step": "last"})).await;
    let short = t.create(None).await;
    for i in 0..4 {
        t.set_metadata(&short, json!({ "i": i })).await;
    }
    let long_events = t.events_of(&long).await;
    let short_events = t.events_of(&short).await;
    assert_eq!(long_events.len(), 3013);
    // What the states must be: every event of both tasks folded from the start, in one batch.
    let mut all: Vec<EventEnvelope> = long_events.iter().chain(&short_events).cloned().collect();
    all.sort_by_key(|e| e.global_position);
    let (expected, read) = relayed_states(&t.store, &all).await;
    assert_eq!(
        read, 0,
        "a batch holding whole histories reads nothing more"
    );
    let expected_of = |e: &EventEnvelope| {
        expected[all.iter().position(|a| a.event_id == e.event_id).unwrap()].clone()
    };
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(
            expected_of(&long_events[3012]).as_deref().unwrap()
        )
        .unwrap(),
        t.view_body(&long).await,
        "the last state record is the task as GET serves it"
    );

    // A relay batch of the long task's last events and the short task's: the long one starts
    // from its snapshot (sequence 3002) and reads only the events after it (3003 to 3009).
    let batch: Vec<EventEnvelope> = vec![
        long_events[3009].clone(),
        long_events[3010].clone(),
        short_events[4].clone(),
        long_events[3011].clone(),
        long_events[3012].clone(),
    ];
    let mut batch = batch;
    batch.sort_by_key(|e| e.global_position);
    let (values, read) = relayed_states(&t.store, &batch).await;
    assert_eq!(
        read,
        7 + 4,
        "the events after the snapshot, and the short task's"
    );
    for (e, value) in batch.iter().zip(&values) {
        assert_eq!(value, &expected_of(e), "the state after {}", e.sequence);
    }

    // A batch from before the snapshot (a relay catching up) cannot use it: the history is
    // read a bounded page at a time, and the states are still exact.
    let early: Vec<EventEnvelope> = long_events[2500..2503].to_vec();
    let (values, read) = relayed_states(&t.store, &early).await;
    assert_eq!(read, 2500, "the events before the batch, each once");
    for (e, value) in early.iter().zip(&values) {
        assert_eq!(value, &expected_of(e), "the state after {}", e.sequence);
    }
}

on_both_backends!(
    the_relay_states_a_long_task_from_its_snapshot_with_a_bounded_read,
    a_task_with_thousands_of_events_takes_commands_on_its_exact_version,
    an_unreadable_snapshot_is_ignored_and_replaced,
);
