//! The append path on PostgreSQL seals a lone command after the head its process last
//! committed; when another process appended meanwhile it must find out and record the
//! command the ordinary way, with no gap, no reordering and no failed command.

use chrono::Utc;
use serde_json::json;
use taskledger::domain::{TaskAction, TaskId};

use crate::helpers::{assert_ledger_intact, categorization, Backend, TestLedger};
use taskledger_events::Scope;

/// Sets the task's metadata to `{"round": round}` through `ledger`.
async fn set_round(
    ledger: &taskledger::ledger::Ledger,
    t: &TestLedger,
    task: &TaskId,
    round: usize,
) -> taskledger::store::Committed {
    let metadata = taskledger::domain::Metadata::parse(json!({ "round": round })).unwrap();
    ledger
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
        .expect("set metadata")
}

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
            set_round(ledger, &t, &tasks[round - 1], round).await;
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
        let done = set_round(&t.ledger, &t, task, round).await;
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

/// `replay` swaps the projection tables in while appends go on. Its transaction takes the
/// tables first, then the ledger head; every append takes the tables before the head too (a
/// lone command's one statement when it starts, a transaction with BEGIN). Were any append to
/// hold the head and then wait for a table, or hold a table and wait for the head the swap
/// holds, the two would deadlock. Here a transaction does what the swap does while a lone
/// command and a transaction's command wait on it, and all three commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_waiting_on_a_swap_of_the_projection_tables_commit_after_it_without_a_deadlock() {
    let t = TestLedger::new(Backend::Postgres).await;
    let other = t.second_ledger().await;
    // This process learns the head: its next create is a lone statement.
    t.create(None).await;

    let mut swap = t.store.pool().begin().await.unwrap();
    sqlx::raw_sql(
        "SET LOCAL lock_timeout = '60s'; \
         LOCK TABLE tasks, task_tags, unique_ids, task_counts IN ACCESS EXCLUSIVE MODE; \
         UPDATE ledger_head SET last_position = last_position WHERE id = 1",
    )
    .execute(&mut *swap)
    .await
    .unwrap();
    let lone = {
        let (ledger, ctx) = (t.ledger.clone(), t.customer());
        tokio::spawn(async move { ledger.create(&ctx, categorization(None), None).await })
    };
    // The other process does not know the head, and a unique_id takes the transaction path.
    let in_transaction = {
        let ctx = t.customer();
        tokio::spawn(async move {
            other
                .create(&ctx, categorization(Some("waits-on-the-swap")), None)
                .await
        })
    };
    // Both wait on a lock before the swap goes on (polled, never timed).
    let mut waiting = 0;
    for _ in 0..600 {
        waiting = sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(t.store.pool())
        .await
        .unwrap();
        if waiting >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(waiting, 2, "both commands wait on the swap");
    for table in ["tasks", "task_tags", "unique_ids", "task_counts"] {
        sqlx::raw_sql(&format!(
            "ALTER TABLE {table} RENAME TO {table}_swapping; \
             ALTER TABLE {table}_swapping RENAME TO {table}"
        ))
        .execute(&mut *swap)
        .await
        .unwrap();
    }
    swap.commit().await.unwrap();

    lone.await
        .unwrap()
        .expect("the lone command commits after the swap");
    in_transaction
        .await
        .unwrap()
        .expect("the transaction's command commits after the swap");
    assert_eq!(t.store.head_position().await.unwrap(), 3);
    assert_ledger_intact(&t.store).await;
}
