//! Commands on a task with a long history: decided from the newest snapshot and the events
//! after it, still on the exact version, and still serialized when they race; on PostgreSQL
//! and SQLite alike.

use serde_json::json;
use taskledger::domain::{Tags, TaskAction, TaskId};
use taskledger::ledger::{Ledger, SNAPSHOT_EVERY};
use taskledger::store::{Store, WriteError};
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

/// How many rows of `events` a PostgreSQL plan run under `EXPLAIN ANALYZE` fetched: the rows
/// each scan of the table produced, and those it read only to drop them.
fn events_fetched(plan: &[String]) -> i64 {
    let mut fetched = 0;
    let mut in_events_scan = false;
    for line in plan {
        if line.contains("->") || line.contains("InitPlan") || line.contains("SubPlan") {
            in_events_scan = false;
        }
        if line.contains(" on events e ") {
            in_events_scan = true;
            let number = |key: &str| -> i64 {
                let at = line.find(key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len();
                let digits: String = line[at..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                digits.parse().unwrap()
            };
            fetched += number("rows=") * number("loops=");
        } else if in_events_scan && line.trim_start().starts_with("Rows Removed by") {
            let n = line.rsplit(':').next().unwrap().trim();
            fetched += n.parse::<i64>().unwrap();
        }
    }
    fetched
}

async fn a_command_on_a_long_task_reads_only_the_events_after_its_snapshot(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let task = t.create(None).await;
    if backend == Backend::Postgres {
        // The statistics of a large ledger, taken while this task was short: about one event
        // per task, and every event in one account (declared, as the test cannot create a
        // ledger's worth of tasks), kept while the task grows, as autovacuum keeps them until
        // the table grows by a tenth. The bench's long task met exactly these.
        for sql in [
            "ALTER TABLE events SET (autovacuum_enabled = false)",
            "ALTER TABLE events ALTER COLUMN task_id SET (n_distinct = -1)",
            "ALTER TABLE events ALTER COLUMN account_id SET (n_distinct = 1)",
            "ANALYZE events",
        ] {
            sqlx::query(sql).execute(t.store.pool()).await.unwrap();
        }
    }
    grow(&t, &task, 3000).await;
    t.set_metadata(&task, json!({"step": "snapshot"})).await;
    assert_eq!(snapshot_sequence(&t.store, &task).await, Some(3002));
    for i in 0..5 {
        t.set_metadata(&task, json!({ "after": i })).await;
    }
    let last = t.events_of(&task).await.pop().unwrap();
    assert_eq!(last.sequence, 3007);

    // What the next command reads: the snapshot and the five events after it, found through
    // the index, never the 3,002 events before it.
    let plan = t
        .store
        .task_tail_plan(&t.account_id, task.as_str())
        .await
        .unwrap();
    match backend {
        Backend::Postgres => assert_eq!(
            events_fetched(&plan),
            5,
            "only the events after the snapshot are read:\n{}",
            plan.join("\n")
        ),
        Backend::Sqlite => assert!(
            plan.iter()
                .any(|step| step.starts_with("SEARCH e ") && step.contains("sequence>?")),
            "the events are searched from the snapshot on: {plan:?}"
        ),
    }
    let tail = t
        .store
        .task_tail(&t.account_id, task.as_str())
        .await
        .unwrap();
    assert_eq!(tail.snapshot.map(|(sequence, _)| sequence), Some(3002));
    let read: Vec<i64> = tail.events.iter().map(|e| e.sequence).collect();
    assert_eq!(read, (3003..=3007).collect::<Vec<_>>());

    // Still decided on the exact version: chained to the last event, on the state it left,
    // and a write decided one version earlier is refused.
    let next = t.set_metadata(&task, json!({"step": "next"})).await;
    assert_eq!(next.envelopes.len(), 1);
    assert_eq!(next.envelopes[0].sequence, last.sequence + 1);
    assert_eq!(next.envelopes[0].prev_hash, last.hash);
    let again = t.set_metadata(&task, json!({"step": "next"})).await;
    assert!(
        again.envelopes.is_empty(),
        "the same metadata again is a no-op"
    );
    let mut stale = t
        .decided_write(
            &task,
            vec![TaskEvent::TaskMetadataSet(TaskMetadataSet {
                metadata: json!({"step": "stale"}),
            })],
        )
        .await;
    stale.expected_sequence -= 1;
    let refused = t
        .store
        .commit_batch(vec![stale])
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert!(
        matches!(refused, Err(WriteError::Conflict)),
        "a write on the version before the last: {refused:?}"
    );
    assert_eq!(t.events_of(&task).await.len(), 3008);
    assert_ledger_intact(&t.store).await;
}

/// The state records the relay's task-state step makes for `batch`, starting with nothing
/// kept (a relay just started), and how many earlier events it read for them.
async fn relayed_states(store: &Store, batch: &[EventEnvelope]) -> (Vec<Option<String>>, u64) {
    let before = store.task_state_events_read();
    let values = TaskStates::default()
        .after_each(store, batch, usize::MAX)
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

    // The task grows on and its snapshot moves past the batch: the one before it is kept,
    // and the same batch still reads only the events after that one.
    grow(&t, &long, 70).await;
    t.set_metadata(&long, json!({"step": "later"})).await;
    assert_eq!(snapshot_sequence(&t.store, &long).await, Some(3084));
    let (values, read) = relayed_states(&t.store, &batch).await;
    assert_eq!(read, 7 + 4, "from the previous snapshot");
    for (e, value) in batch.iter().zip(&values) {
        assert_eq!(value, &expected_of(e), "the state after {}", e.sequence);
    }

    // A batch from before both snapshots (a relay catching up) cannot use them: the history is
    // read a bounded page at a time, and the states are still exact.
    let early: Vec<EventEnvelope> = long_events[2500..2503].to_vec();
    let (values, read) = relayed_states(&t.store, &early).await;
    assert_eq!(read, 2500, "the events before the batch, each once");
    for (e, value) in early.iter().zip(&values) {
        assert_eq!(value, &expected_of(e), "the state after {}", e.sequence);
    }
}

/// Creates `n` tasks of about 60 kB each (their instructions) and returns the ledger's
/// events.
async fn large_tasks(t: &TestLedger, n: usize) -> Vec<EventEnvelope> {
    for i in 0..n {
        let mut create = crate::helpers::categorization(None);
        create.instruction = Some(format!("{i} {}", "x".repeat(60_000)).try_into().unwrap());
        t.ledger.create(&t.customer(), create, None).await.unwrap();
    }
    t.store.events_after(0, 1000, None).await.unwrap()
}

/// A follower's round (the relay's, the callbacks') reads only as many events as keep their
/// payloads within its bound, and always the first: one account's large events cannot make
/// a round hold thousands of them.
async fn a_followers_round_stops_where_the_payloads_reach_its_bound(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let all = large_tasks(&t, 6).await;
    assert_eq!(all.len(), 6);
    let size = |e: &EventEnvelope| e.payload.to_string().len() as i64;
    assert!(all.iter().all(|e| (60_000..61_000).contains(&size(e))));
    let within = |chars: i64| {
        let store = t.store.clone();
        async move { store.events_after_within(0, 1000, chars).await.unwrap() }
    };
    // The first three payloads start below 150,000 characters; the fourth does not.
    let three = within(150_000).await;
    assert_eq!(three.len(), 3);
    assert_eq!(three, all[..3].to_vec());
    assert_eq!(within(1).await, all[..1].to_vec(), "the first always comes");
    assert_eq!(within(i64::MAX).await, all);
    assert_eq!(
        t.store.events_after_within(2, 2, i64::MAX).await.unwrap(),
        all[2..4].to_vec(),
        "after a position, at most the limit"
    );
}

/// The task-state step stops at its byte bound; the events it did not state get theirs in
/// the next batch, the same as in one batch.
async fn the_task_state_step_stops_at_its_bound_and_the_next_batch_goes_on(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let all = large_tasks(&t, 5).await;
    let whole = TaskStates::default()
        .after_each(&t.store, &all, usize::MAX)
        .await
        .unwrap();
    assert_eq!(whole.len(), 5);
    let mut states = TaskStates::default();
    let first = states.after_each(&t.store, &all, 100_000).await.unwrap();
    assert_eq!(first.len(), 2, "stops once 100 kB of states are made");
    let rest = states
        .after_each(&t.store, &all[first.len()..], usize::MAX)
        .await
        .unwrap();
    assert_eq!([first, rest].concat(), whole);
    let one = TaskStates::default()
        .after_each(&t.store, &all, 0)
        .await
        .unwrap();
    assert_eq!(one.len(), 1, "the first always comes");
}

/// The views kept between batches are bounded by bytes, not only by count: with large tasks
/// the relay holds at most the bound and one batch's views, and a task whose view was
/// dropped is folded again from the ledger to the same state.
async fn the_views_kept_between_batches_stay_within_their_byte_bound(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let created = large_tasks(&t, 6).await;
    let first_task = TaskId::parse(&created[0].task_id).unwrap();
    grow(&t, &first_task, 1).await;
    let all = t.store.events_after(0, 1000, None).await.unwrap();
    assert_eq!(all.len(), 7);
    let whole = TaskStates::default()
        .after_each(&t.store, &all, usize::MAX)
        .await
        .unwrap();
    let bound = 100_000;
    let mut states = TaskStates::keeping(bound);
    let mut one_by_one = Vec::new();
    for event in &all {
        let value = states
            .after_each(&t.store, std::slice::from_ref(event), usize::MAX)
            .await
            .unwrap();
        let batch_bytes = value[0].as_ref().map_or(0, String::len);
        assert!(batch_bytes > 60_000, "each task's view is large");
        assert!(
            states.kept_bytes() <= bound + batch_bytes,
            "kept {} bytes after a batch of {batch_bytes}",
            states.kept_bytes()
        );
        assert!(
            states.kept_bytes() >= batch_bytes,
            "the batch's view is kept"
        );
        one_by_one.extend(value);
    }
    assert_eq!(
        one_by_one, whole,
        "the first task's view was dropped and folded again"
    );
    let mut unbounded = TaskStates::default();
    unbounded
        .after_each(&t.store, &all[..6], usize::MAX)
        .await
        .unwrap();
    assert!(unbounded.kept_bytes() > 6 * 60_000, "all six are kept");

    // A task's view goes on from batch to batch (taken from what is kept, stepped, put
    // back), and one the step stopped before keeps its view for the next batch.
    let second_task = TaskId::parse(&created[1].task_id).unwrap();
    grow(&t, &second_task, 3).await;
    let all = t.store.events_after(0, 1000, None).await.unwrap();
    assert_eq!(all.len(), 10);
    let whole = TaskStates::default()
        .after_each(&t.store, &all, usize::MAX)
        .await
        .unwrap();
    let mut states = TaskStates::default();
    let mut in_threes = Vec::new();
    for batch in all.chunks(3) {
        in_threes.extend(
            states
                .after_each(&t.store, batch, usize::MAX)
                .await
                .unwrap(),
        );
    }
    assert_eq!(in_threes, whole);
    let mut states = TaskStates::default();
    let (mut stopped, mut rest) = (Vec::new(), &all[..]);
    while !rest.is_empty() {
        let values = states.after_each(&t.store, rest, 150_000).await.unwrap();
        rest = &rest[values.len()..];
        stopped.extend(values);
    }
    assert_eq!(stopped, whole);
}

on_both_backends!(
    the_views_kept_between_batches_stay_within_their_byte_bound,
    a_followers_round_stops_where_the_payloads_reach_its_bound,
    the_task_state_step_stops_at_its_bound_and_the_next_batch_goes_on,
    the_relay_states_a_long_task_from_its_snapshot_with_a_bounded_read,
    a_task_with_thousands_of_events_takes_commands_on_its_exact_version,
    an_unreadable_snapshot_is_ignored_and_replaced,
    a_command_on_a_long_task_reads_only_the_events_after_its_snapshot,
);
