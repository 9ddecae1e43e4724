//! Racing writers and readers: optimistic concurrency, unique_id under contention, and a
//! global order that no reader can see out of order or with holes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::json;
use taskledger::domain::{TaskAction, TaskCommand};
use taskledger::ledger::{Ledger, LedgerError};
use taskledger_events::{Scope, TaskEvent};

use crate::helpers::{
    assert_ledger_intact, categorization, eventually, metric_value, ok_if, on_both_backends,
    Backend, TestLedger, PATIENCE,
};

/// The `i`-th of a run of commands goes to `one` or `other` in turn, so that both
/// committers race.
fn alternately(i: usize, one: &Ledger, other: &Ledger) -> Ledger {
    if i.is_multiple_of(2) {
        one.clone()
    } else {
        other.clone()
    }
}

async fn racing_commands_on_one_task_lose_no_update(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let task = t.create(None).await;
    // Two ledgers = two committers, like two server processes on one database.
    let other = t.second_ledger().await;
    let mut handles = Vec::new();
    for i in 0..24 {
        let ledger = alternately(i, &t.ledger, &other);
        let ctx = t.customer();
        let task = task.clone();
        handles.push(tokio::spawn(async move {
            let add = TaskAction::AddTags {
                tags: vec![format!("tag-{i}")].try_into().unwrap(),
            };
            ledger
                .execute(&ctx, &task, TaskCommand::new(Scope::Customer, add), None)
                .await
        }));
    }
    for h in handles {
        h.await.unwrap().expect("every command eventually lands");
    }
    let events = t.events_of(&task).await;
    assert_eq!(events.len(), 25);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.sequence, i as i64 + 1, "contiguous sequences");
    }
    let view = t
        .ledger
        .task_as_of(&t.account_id, &task, chrono::Utc::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.tags.len(), 25, "no tag was lost: {:?}", view.tags);
    assert_ledger_intact(&t.store).await;
}

async fn racing_creates_with_one_unique_id_give_exactly_one_task(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let other = t.second_ledger().await;
    let mut handles = Vec::new();
    for i in 0..20 {
        let ledger = alternately(i, &t.ledger, &other);
        let ctx = t.customer();
        handles.push(tokio::spawn(async move {
            ledger
                .create(&ctx, categorization(Some("once")), None)
                .await
        }));
    }
    let mut created = Vec::new();
    let mut conflicts = 0;
    for h in handles {
        match h.await.unwrap() {
            Ok(c) => created.push(c.view.task_id),
            Err(LedgerError::UniqueIdTaken { task_id, .. }) => {
                assert!(!task_id.is_empty());
                conflicts += 1;
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(created.len(), 1);
    assert_eq!(conflicts, 19);
    assert_eq!(t.store.count_events().await.unwrap(), 1);
    assert_eq!(
        t.store
            .unique_id_holder(&t.account_id, "once")
            .await
            .unwrap(),
        Some(created[0].clone())
    );
}

/// The "allocated at INSERT, visible at COMMIT" trap: a writer holding position p open must
/// hide p+1 from readers until p is visible.
async fn a_reader_never_sees_a_later_position_before_a_late_committing_lower_one(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let slow_task = t.create(None).await;
    let head = t.store.head_position().await.unwrap();

    let write = t
        .decided_write(
            &slow_task,
            vec![TaskEvent::TaskMetadataSet(
                taskledger_events::TaskMetadataSet {
                    metadata: json!({"slow": true}),
                },
            )],
        )
        .await;
    let mut slow = t.store.begin_append().await.unwrap();
    assert_eq!(slow.next_position(), head + 1);
    slow.write(write).await.unwrap().unwrap();

    // A fast writer starts while the slow one holds position head+1 ...
    let ledger = t.ledger.clone();
    let ctx = t.customer();
    let fast = tokio::spawn(async move { ledger.create(&ctx, categorization(None), None).await });
    // ... and gets as far as it can: into its own transaction, and on PostgreSQL until it
    // waits for the slow one's lock.
    eventually(
        PATIENCE,
        "the fast writer to be in its transaction",
        async || {
            let pool = t.store.pool();
            let busy = pool.size() as usize - pool.num_idle();
            ok_if(busy >= 2, busy)
        },
    )
    .await;
    if backend == Backend::Postgres {
        eventually(
            PATIENCE,
            "the fast writer to wait for the lock",
            async || {
                let waiting: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                 WHERE NOT l.granted AND a.datname = current_database()",
                )
                .fetch_one(t.store.pool())
                .await
                .unwrap();
                ok_if(waiting > 0, waiting)
            },
        )
        .await;
    }
    let seen = t.store.events_after(head, 100, None).await.unwrap();
    assert!(
        seen.is_empty(),
        "nothing after the open transaction is visible: {seen:?}"
    );
    assert!(
        !fast.is_finished(),
        "the fast writer waits for the slow one"
    );

    slow.commit().await.unwrap();
    let fast = fast.await.unwrap().unwrap();
    let seen = t.store.events_after(head, 100, None).await.unwrap();
    let positions: Vec<i64> = seen.iter().map(|e| e.global_position).collect();
    assert_eq!(positions, vec![head + 1, head + 2]);
    assert_eq!(seen[0].task_id, slow_task.as_str());
    assert_eq!(seen[1].task_id, fast.view.task_id);
}

async fn a_rolled_back_writer_leaves_no_gap_in_the_global_order(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let task = t.create(None).await;
    let write = t
        .decided_write(
            &task,
            vec![TaskEvent::TaskCanceled(taskledger_events::TaskCanceled {})],
        )
        .await;
    let mut doomed = t.store.begin_append().await.unwrap();
    doomed.write(write).await.unwrap().unwrap();
    doomed.rollback().await.unwrap();
    t.create(None).await;
    let positions: Vec<i64> = t
        .store
        .events_after(0, 10, None)
        .await
        .unwrap()
        .iter()
        .map(|e| e.global_position)
        .collect();
    assert_eq!(positions, vec![1, 2]);
    assert_ledger_intact(&t.store).await;
}

/// Many writers on two committers while a reader follows the global order: every read
/// continues exactly where the last one ended, and the reader ends with everything.
async fn a_following_reader_sees_every_position_once_in_order_under_load(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let other = t.second_ledger().await;
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let store = t.store.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                let finished = done.load(Ordering::SeqCst);
                let batch = store.events_after(last, 50, None).await.unwrap();
                for e in &batch {
                    assert_eq!(
                        e.global_position,
                        last + 1,
                        "the reader skipped or repeated"
                    );
                    last = e.global_position;
                }
                if finished && batch.is_empty() {
                    return last;
                }
            }
        })
    };
    let mut writers = Vec::new();
    for w in 0..8 {
        let ledger = if w % 2 == 0 {
            t.ledger.clone()
        } else {
            other.clone()
        };
        let ctx = t.customer();
        writers.push(tokio::spawn(async move {
            for _ in 0..10 {
                let c = ledger
                    .create(&ctx, categorization(None), None)
                    .await
                    .unwrap();
                let task = taskledger::domain::TaskId::parse(&c.view.task_id).unwrap();
                let cancel = TaskCommand::new(
                    Scope::Customer,
                    TaskAction::Cancel {
                        clear_unique_id: false,
                    },
                );
                ledger.execute(&ctx, &task, cancel, None).await.unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let last = reader.await.unwrap();
    assert_eq!(last, 160);
    assert_eq!(t.store.head_position().await.unwrap(), 160);
    // Some transactions carried several commands (group commit) ...
    let grouped = [&t.ledger, &other].iter().any(|l| {
        let text = l.metrics().render();
        let value = |name| metric_value(&text, name).unwrap_or(0.0);
        value("taskledger_append_batch_size_sum") > value("taskledger_append_batch_size_count")
    });
    assert!(grouped, "no transaction carried more than one command");
    // ... and what they wrote together, several commands per statement, equals its replay.
    assert_ledger_intact(&t.store).await;
}

on_both_backends!(
    racing_commands_on_one_task_lose_no_update,
    racing_creates_with_one_unique_id_give_exactly_one_task,
    a_reader_never_sees_a_later_position_before_a_late_committing_lower_one,
    a_rolled_back_writer_leaves_no_gap_in_the_global_order,
    a_following_reader_sees_every_position_once_in_order_under_load,
);
