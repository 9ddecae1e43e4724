//! Commands on a task with a long history: decided from the newest snapshot and the events
//! after it, still on the exact version, and still serialized when they race; on PostgreSQL
//! and SQLite alike.

use serde_json::json;
use taskledger::domain::{Tags, TaskAction, TaskId};
use taskledger::ledger::{Ledger, SNAPSHOT_EVERY};
use taskledger::store::Store;
use taskledger_events::{Scope, TaskEvent, TaskMetadataSet};

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

async fn add_tag(ledger: &Ledger, account_id: &str, task: &TaskId, tag: String) {
    let tags: Tags = vec![tag].try_into().unwrap();
    ledger
        .execute(
            &context(account_id, Scope::Customer),
            task,
            taskledger::domain::TaskCommand::new(Scope::Customer, TaskAction::AddTags { tags }),
            None,
        )
        .await
        .expect("add a tag");
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

on_both_backends!(
    a_task_with_thousands_of_events_takes_commands_on_its_exact_version,
    an_unreadable_snapshot_is_ignored_and_replaced,
);
