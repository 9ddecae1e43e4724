//! Scale behaviour of the store: `replay` online beside a writer that keeps committing,
//! `replay --check` comparing a page of tasks at a time, and `verify` streaming, from the
//! start or from a position; on PostgreSQL and SQLite alike.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use taskledger::domain::{Json, Metadata, Tags, TaskAction, TaskId};
use taskledger::ledger::Ledger;
use taskledger::store::{ListQuery, RebuildReport, Store};
use taskledger_events::Scope;

use crate::helpers::{
    categorization, context, eventually, ok_if, on_both_backends, projection_snapshot, Backend,
    TestDb, TestLedger, PATIENCE,
};

/// Runs `replay --check` and asserts it names no mismatch; its report for what else a
/// test checks.
async fn assert_check_finds_nothing(store: &Store) -> RebuildReport {
    let check = store.replay(true, |_| {}).await.unwrap();
    assert!(check.mismatches.is_empty(), "{:?}", check.mismatches);
    check
}

/// Runs SQL that the append-only triggers would refuse, on one connection.
async fn behind_the_ledgers_back(db: &TestDb, store: &Store, statements: &[&str]) {
    let mut conn = store.pool().acquire().await.unwrap();
    let unlock: &[&str] = match db.backend {
        Backend::Postgres => &["ALTER TABLE events DISABLE TRIGGER events_no_update"],
        Backend::Sqlite => &[
            "DROP TRIGGER IF EXISTS events_no_update",
            "DROP TRIGGER IF EXISTS events_no_delete",
        ],
    };
    for sql in unlock.iter().chain(statements) {
        sqlx::raw_sql(sql).execute(&mut *conn).await.unwrap();
    }
}

/// The secondary indexes of the projection tables, by what they index (names move between
/// a table and its shadow as replay swaps them).
async fn index_shapes(db: &TestDb, store: &Store) -> Vec<String> {
    let mut shapes = Vec::new();
    for table in ["tasks", "task_tags", "unique_ids", "task_counts"] {
        let sql = match db.backend {
            Backend::Postgres => {
                "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() \
                 AND tablename = $1"
            }
            Backend::Sqlite => {
                "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = $1 \
                 AND sql IS NOT NULL"
            }
        };
        let definitions: Vec<String> = sqlx::query_scalar(sql)
            .bind(table)
            .fetch_all(store.pool())
            .await
            .unwrap();
        for d in definitions {
            let unique = d.to_ascii_uppercase().starts_with("CREATE UNIQUE");
            let columns = &d[d.find('(').unwrap()..];
            shapes.push(format!(
                "{table} unique={unique} {}",
                columns.split_whitespace().collect::<Vec<_>>().join(" ")
            ));
        }
    }
    shapes.sort();
    shapes
}

/// Waits, polling, until `done` holds, from inside a synchronous callback (hence not
/// [`crate::helpers::eventually`]); `PATIENCE` only turns a hang into a failure.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + crate::helpers::PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A writer that keeps creating tasks (with unique_ids, some moved to the next task) and
/// changing them until told to stop; counts its commits and keeps every error.
struct Writer {
    stop: Arc<AtomicBool>,
    commits: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    handle: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(ledger: Ledger, account_id: String) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let commits = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let handle = tokio::spawn({
            let (stop, commits, errors) = (stop.clone(), commits.clone(), errors.clone());
            async move {
                let customer = context(&account_id, Scope::Customer);
                let mut previous: Option<TaskId> = None;
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let unique_id = format!("w{i}");
                    let mut outcome = ledger
                        .create(&customer, categorization(Some(&unique_id)), None)
                        .await
                        .map(|c| TaskId::parse(&c.view.task_id).unwrap());
                    if let (Ok(task), Some(prev)) = (&outcome, &previous) {
                        // The previous task's unique_id moves to this one: a release and a
                        // reservation in two tasks the catch-up must both see.
                        let moved = async {
                            let give_up = TaskAction::SetUniqueId {
                                unique_id: format!("x{i}").try_into().unwrap(),
                                clear_unique_id_on_error: None,
                            };
                            ledger.execute(&customer, prev, cmd(give_up), None).await?;
                            let take = TaskAction::SetUniqueId {
                                unique_id: format!("w{}", i - 1).try_into().unwrap(),
                                clear_unique_id_on_error: None,
                            };
                            ledger.execute(&customer, task, cmd(take), None).await?;
                            let tags = TaskAction::SetTags {
                                tags: Tags::try_from(vec![format!("t{}", i % 3), "w".into()])
                                    .unwrap(),
                            };
                            ledger.execute(&customer, task, cmd(tags), None).await
                        };
                        if let Err(e) = moved.await {
                            outcome = Err(e);
                        }
                    }
                    match outcome {
                        Ok(task) => {
                            previous = Some(task);
                            commits.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => errors.lock().unwrap().push(e.to_string()),
                    }
                }
            }
        });
        Writer {
            stop,
            commits,
            errors,
            handle,
        }
    }

    async fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.await.expect("the writer does not panic");
        let errors = self.errors.lock().unwrap().clone();
        errors
    }
}

fn cmd(action: TaskAction) -> taskledger::domain::TaskCommand {
    taskledger::domain::TaskCommand::new(Scope::Customer, action)
}

async fn seed(t: &TestLedger, tasks: usize) -> Vec<TaskId> {
    let mut ids = Vec::new();
    for i in 0..tasks {
        let task = t.create(Some(&format!("seed{i}"))).await;
        t.run(
            &task,
            Scope::Customer,
            TaskAction::AddTags {
                tags: Tags::try_from(vec![format!("s{}", i % 4)]).unwrap(),
            },
        )
        .await
        .unwrap();
        ids.push(task);
    }
    ids
}

async fn replay_runs_while_a_writer_keeps_committing_and_ends_equal_to_a_fresh_rebuild(
    backend: Backend,
) {
    let t = TestLedger::new(backend).await;
    seed(&t, 30).await;
    let indexes = index_shapes(&t.db, &t.store).await;
    assert!(indexes.len() >= 10, "{indexes:?}");
    let writer = Writer::start(t.ledger.clone(), t.account_id.clone());
    let commits = writer.commits.clone();
    wait_until("the writer commits", || commits.load(Ordering::SeqCst) >= 3);

    let progressed = AtomicBool::new(false);
    let report = t
        .store
        .replay(false, |_| {
            // The first report comes after the rebuild read its snapshot: hold the replay
            // here until the writer has committed more, so the replay must catch those up.
            if !progressed.swap(true, Ordering::SeqCst) {
                let from = commits.load(Ordering::SeqCst);
                tokio::task::block_in_place(|| {
                    wait_until("the writer commits during the replay", || {
                        commits.load(Ordering::SeqCst) >= from + 10
                    })
                });
            }
        })
        .await
        .expect("the replay succeeds beside the writer");
    assert!(report.mismatches.is_empty(), "{:?}", report.mismatches);
    let before_stop = commits.load(Ordering::SeqCst);
    let errors = writer.stop().await;
    assert!(errors.is_empty(), "the writer saw errors: {errors:?}");
    assert!(
        before_stop >= 13,
        "the writer kept committing: {before_stop}"
    );

    let replayed = projection_snapshot(&t.store).await;
    let fresh = t.store.replay(false, |_| {}).await.unwrap();
    assert!(fresh.mismatches.is_empty(), "{:?}", fresh.mismatches);
    assert_eq!(
        projection_snapshot(&t.store).await,
        replayed,
        "the online replay left what a fresh rebuild gives"
    );
    let check = assert_check_finds_nothing(&t.store).await;
    assert_eq!(check.events, t.store.count_events().await.unwrap());
    assert_eq!(
        index_shapes(&t.db, &t.store).await,
        indexes,
        "the swapped-in tables have every index the live ones had"
    );
    assert!(t.store.verify(|_| {}).await.unwrap().is_intact());
    // The shadow tables are left empty.
    let shadow: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tasks_shadow")
        .fetch_one(t.store.pool())
        .await
        .unwrap();
    assert_eq!(shadow, 0);
}

async fn replay_check_names_each_task_whose_row_tags_or_unique_id_differ(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let tasks = seed(&t, 12).await;
    let check = assert_check_finds_nothing(&t.store).await;
    assert_eq!((check.tasks, check.events), (12, 24));

    let (a, b, c) = (tasks[2].as_str(), tasks[5].as_str(), tasks[9].as_str());
    let damage = [
        format!("UPDATE tasks SET body = '{{}}' WHERE task_id = '{a}'"),
        format!("INSERT INTO task_tags (task_id, account_id, tag) SELECT task_id, account_id, 'extra' FROM tasks WHERE task_id = '{b}'"),
        format!("DELETE FROM unique_ids WHERE task_id = '{c}'"),
    ];
    for sql in &damage {
        sqlx::query(sql).execute(t.store.pool()).await.unwrap();
    }
    let check = t.store.replay(true, |_| {}).await.unwrap();
    let mut expected = vec![a.to_string(), b.to_string(), c.to_string()];
    expected.sort();
    // The tag written behind the ledger's back is not in the per-tag counts either.
    let (counts, tasks): (Vec<String>, Vec<String>) = check
        .mismatches
        .into_iter()
        .partition(|m| m.starts_with("task_counts"));
    assert_eq!(tasks, expected);
    assert!(
        counts.len() == 1 && counts[0].contains("\"extra\""),
        "{counts:?}"
    );

    let rebuilt = t.store.replay(false, |_| {}).await.unwrap();
    assert_eq!((rebuilt.tasks, rebuilt.events), (12, 24));
    assert_check_finds_nothing(&t.store).await;
}

/// Three tasks with three events each, created one after another, so positions 1-3 are
/// task 0, 4-6 task 1, 7-9 task 2; then a fourth event on task 0 at position 10.
async fn three_chains(t: &TestLedger) -> Vec<TaskId> {
    let mut tasks = Vec::new();
    for i in 0..3 {
        let task = t.create(None).await;
        for n in 0..2 {
            t.run(
                &task,
                Scope::Customer,
                TaskAction::SetMetadata {
                    metadata: Metadata::parse(json!({"i": i, "n": n})).unwrap(),
                },
            )
            .await
            .unwrap();
        }
        tasks.push(task);
    }
    t.run(
        &tasks[0],
        Scope::Customer,
        TaskAction::SetMetadata {
            metadata: Metadata::parse(json!({"last": true})).unwrap(),
        },
    )
    .await
    .unwrap();
    tasks
}

/// `verify_from` walks a short tail in global order; walking it chain by chain (as a long
/// tail is) must find exactly the same.
async fn both_walks_from(t: &TestLedger, from: i64) -> taskledger::store::VerifyReport {
    let in_global_order = t.store.verify_from(from, |_| {}).await.unwrap();
    let chain_by_chain = t
        .store
        .verify_from_walking(from, true, |_| {})
        .await
        .unwrap();
    assert_eq!(in_global_order, chain_by_chain);
    in_global_order
}

async fn verify_from_a_position_checks_what_follows_and_picks_each_chain_up_there(
    backend: Backend,
) {
    let t = TestLedger::new(backend).await;
    let tasks = three_chains(&t).await;
    let all = t.store.verify(|_| {}).await.unwrap();
    assert!(all.is_intact(), "{:?}", all.failures);
    assert_eq!((all.events, all.tasks), (10, 3));

    let tail = both_walks_from(&t, 6).await;
    assert!(tail.is_intact(), "{:?}", tail.failures);
    assert_eq!(
        (tail.events, tail.tasks),
        (5, 3),
        "positions 6-10 of three tasks"
    );

    // An event before the position is not checked again...
    behind_the_ledgers_back(
        &t.db,
        &t.store,
        &[r#"UPDATE events SET payload = '{"metadata":{}}' WHERE global_position = 2"#],
    )
    .await;
    assert!(both_walks_from(&t, 6).await.is_intact());
    assert_eq!(t.store.verify(|_| {}).await.unwrap().broken, 1);
    // ...but the chain is picked up from its stored hash: an event after the position
    // whose predecessor's hash was altered is named.
    behind_the_ledgers_back(
        &t.db,
        &t.store,
        &["UPDATE events SET hash = 'f' WHERE global_position = 3"],
    )
    .await;
    let tail = both_walks_from(&t, 6).await;
    assert_eq!(tail.broken, 1, "{:?}", tail.failures);
    let failure = &tail.failures[0];
    assert_eq!(
        (failure.global_position, failure.task_id.as_str()),
        (10, tasks[0].as_str())
    );
    assert!(failure.reason.contains("prev_hash"), "{}", failure.reason);

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_taskledger"))
        .args(["verify", "--from", "4"])
        .env("DATABASE_URL", &t.db.url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("BROKEN: 1 findings in 7 events"), "{text}");
    assert!(text.contains("global position 10"), "{text}");
}

async fn verify_names_a_missing_position_and_the_chain_it_breaks(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let tasks = three_chains(&t).await;
    behind_the_ledgers_back(
        &t.db,
        &t.store,
        &["DELETE FROM events WHERE global_position = 5"],
    )
    .await;
    let report = t.store.verify(|_| {}).await.unwrap();
    assert_eq!(report.events, 9);
    let named: Vec<(i64, &str)> = report
        .failures
        .iter()
        .map(|f| (f.global_position, f.reason.as_str()))
        .collect();
    assert_eq!(report.broken, 2, "{named:?}");
    // Position 6 follows 4 in the global order, and task 1's sequence 3 follows 1.
    assert_eq!(report.failures[0].global_position, 6);
    assert_eq!(report.failures[0].task_id, tasks[1].as_str());
    assert!(report.failures[0].reason.contains("follows 4"), "{named:?}");
    assert!(
        report.failures[0].reason.contains("sequence 3 follows 1"),
        "{named:?}"
    );
}

/// What `GET /v1/tasks` would answer as `total`, and the tasks a walk of every page finds.
async fn total_and_walk(t: &TestLedger, q: &ListQuery) -> (i64, usize) {
    let first = t.store.list_tasks(&t.account_id, q).await.unwrap();
    let mut seen = first.bodies.len();
    let mut next = first.next.clone();
    while let Some(after) = next {
        let page = t
            .store
            .list_tasks(
                &t.account_id,
                &ListQuery {
                    after: Some(after),
                    ..q.clone()
                },
            )
            .await
            .unwrap();
        assert_eq!(page.total, first.total, "every page carries the same total");
        seen += page.bodies.len();
        next = page.next;
    }
    (first.total, seen)
}

async fn list_totals_are_exact_for_each_counted_filter_as_tasks_change(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let customer = t.customer();
    let contributor = context(&t.account_id, Scope::Contributor);
    let mut tasks = Vec::new();
    for i in 0..9 {
        let mut create = categorization(None);
        create.project = Some(format!("p{}", i % 3).try_into().unwrap());
        create.batch = (i % 2 == 0).then(|| "b0".try_into().unwrap());
        let committed = t.ledger.create(&customer, create, None).await.unwrap();
        tasks.push(TaskId::parse(&committed.view.task_id).unwrap());
    }
    for task in &tasks[0..2] {
        let cancel = TaskAction::Cancel {
            clear_unique_id: false,
        };
        t.ledger
            .execute(&customer, task, cmd(cancel), None)
            .await
            .unwrap();
    }
    for task in &tasks[2..5] {
        let complete = taskledger::domain::TaskCommand::new(
            Scope::Contributor,
            TaskAction::Complete {
                response: Json::try_from(json!({"category": "big"})).unwrap(),
            },
        );
        t.ledger
            .execute(&contributor, task, complete, None)
            .await
            .unwrap();
    }
    let audit = TaskAction::CustomerAudit {
        audited_by: "qa".into(),
        accepted: Some(true),
        comments: None,
    };
    t.ledger
        .execute(&customer, &tasks[2], cmd(audit), None)
        .await
        .unwrap();

    let page = |q: ListQuery| ListQuery { limit: 2, ..q };
    let cases: Vec<(ListQuery, i64)> = vec![
        (ListQuery::default(), 9),
        (
            ListQuery {
                statuses: vec!["canceled".into()],
                ..Default::default()
            },
            2,
        ),
        (
            ListQuery {
                statuses: vec!["pending".into(), "completed".into(), "pending".into()],
                ..Default::default()
            },
            7,
        ),
        (
            ListQuery {
                task_types: vec!["categorization".into()],
                ..Default::default()
            },
            9,
        ),
        (
            ListQuery {
                project: Some("p1".into()),
                ..Default::default()
            },
            3,
        ),
        (
            ListQuery {
                batch: Some("b0".into()),
                ..Default::default()
            },
            5,
        ),
        (
            ListQuery {
                review_statuses: vec!["accepted".into()],
                ..Default::default()
            },
            1,
        ),
        // Two filters at once are counted from the tasks themselves.
        (
            ListQuery {
                statuses: vec!["completed".into()],
                project: Some("p2".into()),
                ..Default::default()
            },
            1,
        ),
    ];
    for (q, expected) in &cases {
        let (total, walked) = total_and_walk(&t, &page(q.clone())).await;
        assert_eq!((total, walked), (*expected, *expected as usize), "{q:?}");
    }

    // The counts are a projection: replay --check compares them, replay rebuilds them.
    sqlx::query(
        "UPDATE task_counts SET n = n + 5 WHERE dimension = 'status' AND value = 'canceled'",
    )
    .execute(t.store.pool())
    .await
    .unwrap();
    let check = t.store.replay(true, |_| {}).await.unwrap();
    assert_eq!(check.mismatches.len(), 1, "{:?}", check.mismatches);
    assert!(
        check.mismatches[0].contains("canceled"),
        "{:?}",
        check.mismatches
    );
    t.store.replay(false, |_| {}).await.unwrap();
    for (q, expected) in &cases {
        assert_eq!(
            total_and_walk(&t, &page(q.clone())).await.0,
            *expected,
            "{q:?}"
        );
    }
    assert_check_finds_nothing(&t.store).await;
}

async fn a_later_page_of_an_uncounted_filter_takes_the_total_the_caller_carries(backend: Backend) {
    let t = TestLedger::new(backend).await;
    seed(&t, 5).await;
    // A tag with another filter is counted from the tasks on the walk's first page.
    let q = ListQuery {
        tags: vec!["s0".into()],
        updated_after_us: Some(0),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(
        t.store.list_tasks(&t.account_id, &q).await.unwrap().total,
        2
    );
    let carried = ListQuery {
        known_total: Some(2),
        ..q.clone()
    };
    // A task tagged meanwhile shows on the page; the walk keeps its first total.
    let task = t.create(None).await;
    t.run(
        &task,
        Scope::Customer,
        TaskAction::AddTags {
            tags: Tags::try_from(vec!["s0".into()]).unwrap(),
        },
    )
    .await
    .unwrap();
    let page = t.store.list_tasks(&t.account_id, &carried).await.unwrap();
    assert_eq!((page.total, page.bodies.len()), (2, 3));
    assert_eq!(
        t.store.list_tasks(&t.account_id, &q).await.unwrap().total,
        3
    );
    // A tag alone is counted by the projection: exact on every page, whatever is carried.
    let tag_alone = ListQuery {
        tags: vec!["s0".into()],
        known_total: Some(2),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(
        t.store
            .list_tasks(&t.account_id, &tag_alone)
            .await
            .unwrap()
            .total,
        3
    );
    // Every tag asked for must be carried, on the page and in the total alike.
    t.run(
        &task,
        Scope::Customer,
        TaskAction::AddTags {
            tags: Tags::try_from(vec!["x".into()]).unwrap(),
        },
    )
    .await
    .unwrap();
    for (tags, expected) in [
        (vec!["s0", "x"], 1),
        (vec!["x", "s0", "x"], 1),
        (vec!["s0", "s1"], 0),
        (vec!["s0", "never"], 0),
    ] {
        let q = ListQuery {
            tags: tags.iter().map(|t| t.to_string()).collect(),
            limit: 10,
            ..Default::default()
        };
        let page = t.store.list_tasks(&t.account_id, &q).await.unwrap();
        assert_eq!(
            (page.total, page.bodies.len()),
            (expected, expected as usize),
            "{tags:?}"
        );
    }
}

/// Waits (polling the clock, not sleeping a fixed time) until the clock is past the finest
/// creation-time bucket (2^20 µs) it is in now.
async fn the_next_creation_bucket() {
    let unit = 1i64 << 20;
    let next = (chrono::Utc::now().timestamp_micros() / unit + 1) * unit;
    eventually(PATIENCE, "the next creation-time bucket", async || {
        let now = chrono::Utc::now().timestamp_micros();
        ok_if(now > next, now)
    })
    .await;
}

async fn list_totals_of_a_tag_or_a_creation_time_range_are_exact_and_rebuilt_by_replay(
    backend: Backend,
) {
    let t = TestLedger::new(backend).await;
    let customer = t.customer();
    // Tasks in three finest buckets at least, so ranges take whole buckets and partial ends.
    let mut created: Vec<(TaskId, i64)> = Vec::new();
    for round in 0..3 {
        if round > 0 {
            the_next_creation_bucket().await;
        }
        for _ in 0..3 {
            let committed = t
                .ledger
                .create(&customer, categorization(None), None)
                .await
                .unwrap();
            created.push((
                TaskId::parse(&committed.view.task_id).unwrap(),
                committed.view.created_at.timestamp_micros(),
            ));
        }
    }
    // Tags move: added, replaced and removed.
    for (i, (task, _)) in created.iter().enumerate() {
        let tags: Vec<String> = match i % 3 {
            0 => vec!["red".into(), "blue".into()],
            1 => vec!["red".into()],
            _ => vec!["green".into()],
        };
        t.run(
            task,
            Scope::Customer,
            TaskAction::AddTags {
                tags: Tags::try_from(tags).unwrap(),
            },
        )
        .await
        .unwrap();
    }
    t.run(
        &created[0].0,
        Scope::Customer,
        TaskAction::SetTags {
            tags: Tags::try_from(vec!["green".to_string(), "blue".to_string()]).unwrap(),
        },
    )
    .await
    .unwrap();
    t.run(
        &created[1].0,
        Scope::Customer,
        TaskAction::RemoveTags {
            tags: Tags::try_from(vec!["red".to_string()]).unwrap(),
        },
    )
    .await
    .unwrap();
    // red: tasks 3, 4, 6, 7; blue: 0, 3, 6; green: 0, 2, 5, 8.
    let tagged = |tag: &str, n: i64| {
        (
            ListQuery {
                tags: vec![tag.into()],
                ..Default::default()
            },
            n,
        )
    };
    let times: Vec<i64> = created.iter().map(|(_, at)| *at).collect();
    let (first, last) = (times[0], times[8]);
    let year = 365 * 24 * 3600 * 1_000_000;
    let mut cases = vec![
        tagged("red", 4),
        tagged("blue", 3),
        tagged("green", 4),
        tagged("never", 0),
    ];
    let ranges = [
        (Some(first), Some(last)),
        (Some(first + 1), Some(last - 1)),
        (Some(times[3]), None),
        (Some(times[4]), Some(times[4])),
        (None, Some(times[5])),
        (Some(0), Some(last + year)),
        (Some(first - year), Some(times[2])),
        (Some(last + 1), None),
        (Some(last), Some(first)),
    ];
    for (from, to) in ranges {
        let n = times
            .iter()
            .filter(|at| from.is_none_or(|f| **at >= f) && to.is_none_or(|t| **at <= t))
            .count();
        cases.push((
            ListQuery {
                created_from_us: from,
                created_to_us: to,
                ..Default::default()
            },
            n as i64,
        ));
    }
    let page = |q: &ListQuery| ListQuery {
        limit: 2,
        ..q.clone()
    };
    for (q, expected) in &cases {
        let (total, walked) = total_and_walk(&t, &page(q)).await;
        assert_eq!((total, walked), (*expected, *expected as usize), "{q:?}");
    }

    // replay --check compares the new counts, replay rebuilds them.
    sqlx::query("UPDATE task_counts SET n = n + 1 WHERE dimension IN ('tag', 'created.3')")
        .execute(t.store.pool())
        .await
        .unwrap();
    let check = t.store.replay(true, |_| {}).await.unwrap();
    assert!(
        check.mismatches.iter().any(|m| m.contains("created.3"))
            && check.mismatches.iter().any(|m| m.contains("\"red\"")),
        "{:?}",
        check.mismatches
    );
    t.store.replay(false, |_| {}).await.unwrap();
    for (q, expected) in &cases {
        assert_eq!(total_and_walk(&t, &page(q)).await.0, *expected, "{q:?}");
    }
    assert_check_finds_nothing(&t.store).await;
}

on_both_backends!(
    replay_runs_while_a_writer_keeps_committing_and_ends_equal_to_a_fresh_rebuild,
    replay_check_names_each_task_whose_row_tags_or_unique_id_differ,
    verify_from_a_position_checks_what_follows_and_picks_each_chain_up_there,
    verify_names_a_missing_position_and_the_chain_it_breaks,
    list_totals_are_exact_for_each_counted_filter_as_tasks_change,
    a_later_page_of_an_uncounted_filter_takes_the_total_the_caller_carries,
    list_totals_of_a_tag_or_a_creation_time_range_are_exact_and_rebuilt_by_replay,
    a_long_history_is_read_a_page_at_a_time_in_sequence_order,
    verify_and_replay_walk_across_page_ends_without_losing_an_event,
    replay_check_tells_a_stored_task_without_events_between_others_by_the_count,
);

async fn a_long_history_is_read_a_page_at_a_time_in_sequence_order(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let task = t.create(None).await;
    let other = t.create(None).await;
    for n in 0..6 {
        t.run(
            &task,
            Scope::Customer,
            TaskAction::SetMetadata {
                metadata: Metadata::parse(json!({ "n": n })).unwrap(),
            },
        )
        .await
        .unwrap();
    }
    let mut sequences = Vec::new();
    let mut after = 0;
    loop {
        let page = t
            .store
            .task_events_page(&t.account_id, task.as_str(), after, 3)
            .await
            .unwrap();
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        after = last.sequence;
        assert!(page.iter().all(|e| e.task_id == task.as_str()));
        sequences.extend(page.iter().map(|e| e.sequence));
    }
    assert_eq!(sequences, (1..=7).collect::<Vec<i64>>());
    let whole = t
        .store
        .task_events(&t.account_id, task.as_str(), None)
        .await
        .unwrap();
    let paged = t
        .store
        .task_events_page(&t.account_id, task.as_str(), 2, 100)
        .await
        .unwrap();
    assert_eq!(paged, whole[2..].to_vec());
    assert!(t
        .store
        .task_events_page("another-account", other.as_str(), 0, 10)
        .await
        .unwrap()
        .is_empty());
}

async fn verify_and_replay_walk_across_page_ends_without_losing_an_event(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let ctx = t.customer();
    // More tasks than a page of verify (4,000 events) or replay (5,000).
    for _ in 0..11 {
        let creates = (0..500).map(|_| t.ledger.create(&ctx, categorization(None), None));
        for created in futures::future::join_all(creates).await {
            created.expect("create a task");
        }
    }
    let verified = t.store.verify(|_| {}).await.unwrap();
    assert!(verified.is_intact(), "{:?}", verified.failures);
    assert_eq!((verified.events, verified.tasks), (5500, 5500));
    let tail = both_walks_from(&t, 1001).await;
    assert_eq!((tail.events, tail.tasks, tail.broken), (4500, 4500, 0));
    let check = assert_check_finds_nothing(&t.store).await;
    assert_eq!((check.events, check.tasks), (5500, 5500));
    let live = projection_snapshot(&t.store).await;
    let rebuilt = t.store.replay(false, |_| {}).await.unwrap();
    assert_eq!((rebuilt.events, rebuilt.tasks), (5500, 5500));
    assert_eq!(projection_snapshot(&t.store).await, live);

    // A task of the first page and one of the last: each page's tasks are compared while
    // the next page is read, and the last page's after the events end.
    let ids: Vec<String> = sqlx::query_scalar("SELECT task_id FROM tasks ORDER BY task_id")
        .fetch_all(t.store.pool())
        .await
        .unwrap();
    let (first, last) = (&ids[0], &ids[ids.len() - 1]);
    for id in [first, last] {
        sqlx::query(&format!(
            "UPDATE tasks SET body = '{{}}' WHERE task_id = '{id}'"
        ))
        .execute(t.store.pool())
        .await
        .unwrap();
    }
    let check = t.store.replay(true, |_| {}).await.unwrap();
    let mut damaged = vec![first.clone(), last.clone()];
    damaged.sort();
    assert_eq!(check.mismatches, damaged);
}

/// `replay --check` reads the stored rows of a page of tasks as one range of task ids: a
/// stored task without events lying inside a range is told by the count of views, and
/// confuses no comparison of the tasks around it.
async fn replay_check_tells_a_stored_task_without_events_between_others_by_the_count(
    backend: Backend,
) {
    let t = TestLedger::new(backend).await;
    let tasks = seed(&t, 12).await;
    assert_check_finds_nothing(&t.store).await;
    // Ids that sort just after two of the tasks, with a tag and a unique_id each.
    let orphans = [
        format!("{}0", tasks[3].as_str()),
        format!("{}0", tasks[8].as_str()),
    ];
    for (orphan, of) in orphans.iter().zip([&tasks[3], &tasks[8]]) {
        let of = of.as_str();
        for sql in [
            format!(
                "INSERT INTO tasks (task_id, account_id, version, body, task_type, status, \
                 project, batch, customer_review_status, unique_id, created_at_us, \
                 updated_at_us, completed_at_us) SELECT '{orphan}', account_id, version, body, \
                 task_type, status, project, batch, customer_review_status, 'orphan-{orphan}', \
                 created_at_us, updated_at_us, completed_at_us FROM tasks WHERE task_id = '{of}'"
            ),
            format!(
                "INSERT INTO task_tags (task_id, account_id, tag, created_at_us) \
                 SELECT '{orphan}', account_id, tag, created_at_us FROM task_tags \
                 WHERE task_id = '{of}'"
            ),
            format!(
                "INSERT INTO unique_ids (account_id, unique_id, task_id) \
                 SELECT account_id, 'orphan-{orphan}', '{orphan}' FROM tasks WHERE task_id = '{of}'"
            ),
        ] {
            sqlx::query(&sql).execute(t.store.pool()).await.unwrap();
        }
    }
    let check = t.store.replay(true, |_| {}).await.unwrap();
    let (counts, named): (Vec<String>, Vec<String>) = check
        .mismatches
        .into_iter()
        .partition(|m| m.starts_with("task_counts"));
    assert_eq!(
        named,
        vec!["14 task views are stored but the events describe 12".to_string()]
    );
    assert!(
        !counts.is_empty(),
        "the orphans' rows are not in the counts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_replay_on_postgres_is_refused_while_one_runs() {
    let t = TestLedger::new(Backend::Postgres).await;
    seed(&t, 3).await;
    // Another process's replay, as far as this one can tell: a session holding the lock.
    let mut other = t.store.pool().acquire().await.unwrap().detach();
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(taskledger::store::REPLAY_LOCK)
        .fetch_one(&mut other)
        .await
        .unwrap();
    assert!(locked);
    let refused = t.store.replay(false, |_| {}).await;
    assert!(
        matches!(refused, Err(taskledger::store::StoreError::ReplayRunning)),
        "{refused:?}"
    );
    // A check writes nothing and may run beside it.
    assert_check_finds_nothing(&t.store).await;
    // Released explicitly: closing the session would release it too, but only once the
    // server has ended that backend, which a busy machine may do after `close` returns.
    let unlocked: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
        .bind(taskledger::store::REPLAY_LOCK)
        .fetch_one(&mut other)
        .await
        .unwrap();
    assert!(unlocked);
    sqlx::Connection::close(other).await.unwrap();
    let report = t.store.replay(false, |_| {}).await.unwrap();
    assert_eq!(report.tasks, 3);
    // The lock went with the replay's session: the next replay runs too.
    assert_eq!(t.store.replay(false, |_| {}).await.unwrap().tasks, 3);
}
