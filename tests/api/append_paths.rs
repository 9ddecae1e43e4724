//! The append path on PostgreSQL seals a lone command after the head its process last
//! committed; when another process appended meanwhile it must find out and record the
//! command the ordinary way, with no gap, no reordering and no failed command.

use chrono::Utc;
use serde_json::json;
use taskledger::domain::{TaskAction, TaskId};

use crate::helpers::{assert_ledger_intact, categorization, Backend, TestLedger};
use taskledger_events::Scope;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_taking_turns_each_find_the_head_moved_and_append_without_a_gap() {
    let t = TestLedger::new(Backend::Postgres).await;
    let other = t.second_ledger().await;
    let mut tasks: Vec<TaskId> = Vec::new();
    for round in 0..12 {
        let ledger = if round % 2 == 0 { &t.ledger } else { &other };
        let created = ledger
            .create(&t.customer(), categorization(None), None)
            .await
            .expect("create");
        tasks.push(TaskId::parse(&created.view.task_id).unwrap());
        // A command on the task the other process created last (its head is stale now).
        if round > 0 {
            let metadata = taskledger::domain::Metadata::parse(json!({ "round": round })).unwrap();
            ledger
                .execute(
                    &t.customer(),
                    &tasks[round - 1],
                    taskledger::domain::TaskCommand::new(
                        Scope::Customer,
                        TaskAction::SetMetadata { metadata },
                    ),
                    None,
                )
                .await
                .expect("set metadata");
        }
    }
    let events = t.store.events_after(0, 1000, None).await.unwrap();
    let positions: Vec<i64> = events.iter().map(|e| e.global_position).collect();
    assert_eq!(positions, (1..=23).collect::<Vec<i64>>());
    assert!(
        events
            .windows(2)
            .all(|w| w[0].recorded_at <= w[1].recorded_at),
        "recorded_at follows the global order"
    );
    assert!(events.last().unwrap().recorded_at <= Utc::now());
    assert_eq!(t.store.head_position().await.unwrap(), 23);
    assert_ledger_intact(&t.store).await;
}

#[tokio::test]
async fn lone_commands_after_the_first_are_each_written_by_one_statement_and_keep_the_ledger_whole()
{
    let t = TestLedger::new(Backend::Postgres).await;
    let mut tasks: Vec<TaskId> = Vec::new();
    for _ in 0..20 {
        let created = t
            .ledger
            .create(&t.customer(), categorization(None), None)
            .await
            .expect("create");
        tasks.push(TaskId::parse(&created.view.task_id).unwrap());
    }
    for (round, task) in tasks.iter().enumerate() {
        let metadata = taskledger::domain::Metadata::parse(json!({ "round": round })).unwrap();
        let done = t
            .ledger
            .execute(
                &t.customer(),
                task,
                taskledger::domain::TaskCommand::new(
                    Scope::Customer,
                    TaskAction::SetMetadata { metadata },
                ),
                None,
            )
            .await
            .expect("set metadata");
        assert_eq!(done.view.metadata, json!({ "round": round }));
    }
    // The first command learns the head and the tree's head the ordinary way; every later
    // one is sealed after them and written alone.
    assert_eq!(t.store.appends_in_one_statement(), 39);
    let events = t.store.events_after(0, 1000, None).await.unwrap();
    let positions: Vec<i64> = events.iter().map(|e| e.global_position).collect();
    assert_eq!(positions, (1..=40).collect::<Vec<i64>>());
    assert_eq!(t.store.head_position().await.unwrap(), 40);
    assert_ledger_intact(&t.store).await;
}
