//! The event store suite, run against PostgreSQL and SQLite alike.

use serde_json::json;
use taskledger::domain::{TaskAction, TaskError, TaskId};
use taskledger::ledger::LedgerError;
use taskledger::store::WriteError;
use taskledger_events::{Scope, TaskEvent, GENESIS_HASH};

use crate::helpers::{
    a_moment_between, assert_ledger_intact, categorization, context, on_both_backends,
    projection_snapshot, tamper_with_event, Backend, TestLedger,
};

async fn a_created_task_has_one_event_with_a_complete_envelope(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let ctx = t.customer();
    let committed = t
        .ledger
        .create(&ctx, categorization(Some("u-1")), None)
        .await
        .unwrap();
    assert_eq!(committed.envelopes.len(), 1);
    let e = &committed.envelopes[0];
    assert_eq!(e.event_type, "TaskCreated");
    assert_eq!(e.event_version, 1);
    assert_eq!(e.sequence, 1);
    assert_eq!(e.global_position, 1);
    assert_eq!(e.event_id.get_version_num(), 7);
    assert_eq!(e.account_id, t.account_id);
    assert_eq!(e.actor, ctx.actor);
    assert_eq!(e.request_id, ctx.request_id);
    assert_eq!(e.prev_hash, GENESIS_HASH);
    assert_eq!(e.hash, e.expected_hash().unwrap());

    let stored = t
        .store
        .task_events(&t.account_id, &e.task_id, None)
        .await
        .unwrap();
    assert_eq!(
        stored, committed.envelopes,
        "what is read back is what was recorded"
    );
    let view = t
        .store
        .task_view(&t.account_id, &e.task_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.body, committed.view.to_json());
    assert_eq!(view.version, 1);
    assert_eq!(
        t.store
            .unique_id_holder(&t.account_id, "u-1")
            .await
            .unwrap(),
        Some(e.task_id.clone())
    );
}

async fn every_command_appends_contiguous_sequences_chained_by_hash(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let task = t.create(Some("u-1")).await;
    let steps = vec![
        (
            Scope::Customer,
            TaskAction::SetMetadata {
                metadata: json!({"k": "v"}).try_into().unwrap(),
            },
        ),
        (
            Scope::Customer,
            TaskAction::AddTags {
                tags: vec!["b".into()].try_into().unwrap(),
            },
        ),
        (
            Scope::Customer,
            TaskAction::SetUniqueId {
                unique_id: "u-2".try_into().unwrap(),
                clear_unique_id_on_error: None,
            },
        ),
        (
            Scope::Contributor,
            TaskAction::Complete {
                response: json!({"category": "big"}).try_into().unwrap(),
            },
        ),
        (
            Scope::Customer,
            TaskAction::CustomerAudit {
                audited_by: "acme".into(),
                accepted: Some(true),
                comments: None,
            },
        ),
    ];
    for (scope, action) in steps {
        t.run(&task, scope, action).await.unwrap();
    }
    let events = t.events_of(&task).await;
    assert_eq!(events.len(), 6);
    let mut prev = GENESIS_HASH.to_string();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.sequence, i as i64 + 1);
        assert_eq!(e.global_position, i as i64 + 1);
        assert_eq!(e.prev_hash, prev);
        assert_eq!(e.hash, e.expected_hash().unwrap());
        prev = e.hash.clone();
    }
    assert!(events
        .windows(2)
        .all(|w| w[0].recorded_at <= w[1].recorded_at));
    let body = t.view_body(&task).await;
    assert_eq!(body["status"], "completed");
    assert_eq!(body["unique_id"], "u-2");
    assert_eq!(body["customer_review_status"], "accepted");
    assert_eq!(body["tags"], json!(["experiment_1", "b"]));
    assert_eq!(
        t.store
            .unique_id_holder(&t.account_id, "u-1")
            .await
            .unwrap(),
        None
    );
}

async fn commands_that_change_nothing_append_nothing(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let task = t.create(None).await;
    let cancel = async || {
        t.run(
            &task,
            Scope::Customer,
            TaskAction::Cancel {
                clear_unique_id: false,
            },
        )
        .await
        .unwrap()
    };
    cancel().await;
    let again = cancel().await;
    assert!(again.envelopes.is_empty());
    let same_metadata = t.set_metadata(&task, json!({})).await;
    assert!(same_metadata.envelopes.is_empty());
    let present_tag = t.add_tags(&task, &["experiment_1"]).await;
    assert!(present_tag.envelopes.is_empty());
    assert_eq!(t.store.count_events().await.unwrap(), 2);
}

async fn the_database_refuses_update_and_delete_on_events(backend: Backend) {
    let t = TestLedger::new(backend).await;
    t.create(None).await;
    let pool = t.store.pool();
    let update = sqlx::query("UPDATE events SET payload = '{}' WHERE global_position = 1")
        .execute(pool)
        .await;
    assert!(update.is_err(), "UPDATE must be refused");
    let delete = sqlx::query("DELETE FROM events").execute(pool).await;
    assert!(delete.is_err(), "DELETE must be refused");
    if backend == Backend::Postgres {
        let truncate = sqlx::query("TRUNCATE events").execute(pool).await;
        assert!(truncate.is_err(), "TRUNCATE must be refused");
    }
    let msg = delete.unwrap_err().to_string();
    assert!(msg.contains("append-only"), "{msg}");
    assert_eq!(t.store.count_events().await.unwrap(), 1);
}

async fn another_accounts_task_is_not_found(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let task = t.create(Some("shared-id")).await;
    let other = t.store.ensure_account("globex").await.unwrap();
    let ctx = context(&other, Scope::Customer);
    let result = t
        .ledger
        .execute(
            &ctx,
            &task,
            taskledger::domain::TaskCommand::new(Scope::Customer, TaskAction::ClearUniqueId),
            None,
        )
        .await;
    assert!(matches!(
        result,
        Err(LedgerError::Rejected(TaskError::NotFound))
    ));
    assert!(t
        .store
        .task_view(&other, task.as_str())
        .await
        .unwrap()
        .is_none());
    // unique_ids are per account: the other account may use the same value.
    t.ledger
        .create(&ctx, categorization(Some("shared-id")), None)
        .await
        .unwrap();
}

async fn a_taken_unique_id_is_refused_naming_its_task_until_released(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let first = t.create(Some("dup")).await;
    let refused = t
        .ledger
        .create(&t.customer(), categorization(Some("dup")), None)
        .await;
    match refused {
        Err(LedgerError::UniqueIdTaken { unique_id, task_id }) => {
            assert_eq!(unique_id, "dup");
            assert_eq!(task_id, first.as_str());
        }
        other => panic!("expected UniqueIdTaken, got {other:?}"),
    }
    // Nothing of the refused create was written.
    assert_eq!(t.store.count_events().await.unwrap(), 1);
    assert_eq!(
        projection_snapshot(&t.store)
            .await
            .iter()
            .filter(|r| r.starts_with("task "))
            .count(),
        1
    );

    let second = t.create(None).await;
    let refused = t
        .run(
            &second,
            Scope::Customer,
            TaskAction::SetUniqueId {
                unique_id: "dup".try_into().unwrap(),
                clear_unique_id_on_error: None,
            },
        )
        .await;
    assert!(matches!(refused, Err(LedgerError::UniqueIdTaken { .. })));

    t.run(
        &first,
        Scope::Customer,
        TaskAction::Cancel {
            clear_unique_id: true,
        },
    )
    .await
    .unwrap();
    t.run(
        &second,
        Scope::Customer,
        TaskAction::SetUniqueId {
            unique_id: "dup".try_into().unwrap(),
            clear_unique_id_on_error: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        t.store
            .unique_id_holder(&t.account_id, "dup")
            .await
            .unwrap(),
        Some(second.to_string())
    );
    // The refused commands gave their reserved positions back: no hole, head at the end.
    let report = t.store.verify(|_| {}).await.unwrap();
    assert!(report.is_intact(), "{:?}", report.failures.first());
    assert_eq!(t.store.head_position().await.unwrap(), report.events as i64);
}

async fn a_refused_command_in_a_batch_leaves_nothing_and_spares_the_others(backend: Backend) {
    let t = TestLedger::new(backend).await;
    t.create(Some("taken")).await;
    let before = projection_snapshot(&t.store).await;
    let write = async |unique_id: &str| {
        let create = categorization(Some(unique_id));
        let created = TaskEvent::TaskCreated(taskledger_events::TaskCreated {
            task_type: create.task_type.as_str().into(),
            instruction: create.instruction.map(|t| t.into_string()),
            callback_url: create.callback_url.map(|u| u.into_string()),
            project: create.project.map(|p| p.into_string()),
            batch: None,
            params: serde_json::Value::Object(create.params.into_map()),
            metadata: json!({}),
            tags: vec!["x".into()],
            unique_id: create.unique_id.map(|u| u.into_string()),
            clear_unique_id_on_error: false,
            project_param_version: None,
            is_test: false,
        });
        t.decided_write(&TaskId::generate(), vec![created]).await
    };
    let batch = vec![write("a").await, write("taken").await, write("b").await];
    let results = t.store.commit_batch(batch).await.unwrap();
    assert!(results[0].is_ok());
    assert!(matches!(results[1], Err(WriteError::UniqueIdTaken { .. })));
    assert!(results[2].is_ok());
    let after = projection_snapshot(&t.store).await;
    assert_eq!(after.iter().filter(|r| r.starts_with("task ")).count(), 3);
    assert_eq!(
        after.len(),
        before.len() + 6,
        "two tasks, two tags, two unique_ids"
    );
    // Positions stay contiguous across the refused command.
    let events = t.store.events_after(0, 10, None).await.unwrap();
    let positions: Vec<i64> = events.iter().map(|e| e.global_position).collect();
    assert_eq!(positions, vec![1, 2, 3]);
    assert_ledger_intact(&t.store).await;
}

async fn an_append_transaction_that_never_commits_leaves_nothing(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let task = t.create(None).await;
    let before = projection_snapshot(&t.store).await;
    let write = t
        .decided_write(
            &task,
            vec![TaskEvent::TaskTagsReplaced(
                taskledger_events::TaskTagsReplaced {
                    tags: vec!["never".into()],
                },
            )],
        )
        .await;
    let mut tx = t.store.begin_append().await.unwrap();
    let written = tx.write(write).await.unwrap();
    assert!(written.is_ok());
    // The process dies here: the transaction is dropped without a commit.
    drop(tx);
    assert_eq!(projection_snapshot(&t.store).await, before);
    assert_eq!(t.store.count_events().await.unwrap(), 1);
    assert_eq!(t.store.head_position().await.unwrap(), 1);
}

async fn replay_rebuilds_projections_equal_to_the_live_ones(backend: Backend) {
    let t = TestLedger::new(backend).await;
    for i in 0..6 {
        let task = t.create(Some(&format!("u-{i}"))).await;
        match i % 3 {
            0 => {
                t.run(
                    &task,
                    Scope::Contributor,
                    TaskAction::Complete {
                        response: json!({"category": "big"}).try_into().unwrap(),
                    },
                )
                .await
                .unwrap();
                t.run(
                    &task,
                    Scope::Contributor,
                    TaskAction::ContributorAudit {
                        audited_by: "qa".into(),
                        audit_result: taskledger::domain::AuditResult::Fixed,
                        audit_time_secs: Some(5),
                        response: Some(json!({"category": "small"}).try_into().unwrap()),
                    },
                )
                .await
                .unwrap();
            }
            1 => {
                t.run(
                    &task,
                    Scope::Customer,
                    TaskAction::Cancel {
                        clear_unique_id: true,
                    },
                )
                .await
                .unwrap();
            }
            _ => {
                t.run(
                    &task,
                    Scope::Customer,
                    TaskAction::SetTags {
                        tags: vec!["p".into(), "q".into()].try_into().unwrap(),
                    },
                )
                .await
                .unwrap();
                t.set_metadata(&task, json!({"n": i})).await;
            }
        }
    }
    let live = projection_snapshot(&t.store).await;
    let check = t.store.replay(true, |_| {}).await.unwrap();
    assert!(check.mismatches.is_empty(), "{:?}", check.mismatches);
    assert_eq!(check.tasks, 6);

    let report = t.store.replay(false, |_| {}).await.unwrap();
    assert_eq!(report.tasks, 6);
    assert!(report.mismatches.is_empty());
    assert_eq!(projection_snapshot(&t.store).await, live);

    // A projection damaged behind the ledger's back is detected, and replay repairs it.
    sqlx::query("UPDATE tasks SET body = '{}' WHERE task_id = (SELECT MIN(task_id) FROM tasks)")
        .execute(t.store.pool())
        .await
        .unwrap();
    let check = t.store.replay(true, |_| {}).await.unwrap();
    assert_eq!(check.mismatches.len(), 1);
    t.store.replay(false, |_| {}).await.unwrap();
    assert_eq!(projection_snapshot(&t.store).await, live);
}

async fn verify_names_the_first_event_altered_behind_the_databases_back(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let task = t.create(None).await;
    t.set_metadata(&task, json!({"a": 1})).await;
    t.set_metadata(&task, json!({"a": 2})).await;
    let intact = t.store.verify(|_| {}).await.unwrap();
    assert_eq!(intact.events, 3);
    assert!(intact.is_intact());

    tamper_with_event(&t.db, &t.store, 2, r#"{"metadata":{"a":1000}}"#).await;
    let report = t.store.verify(|_| {}).await.unwrap();
    let failure = report
        .failures
        .first()
        .expect("the tampered event is reported");
    assert_eq!(failure.global_position, 2);
    assert_eq!(failure.task_id, task.as_str());
    assert_eq!(failure.sequence, 2);
    assert!(failure.reason.contains("hash"), "{}", failure.reason);
}

async fn as_of_rebuilds_the_task_as_it_stood_then(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let task = t.create(None).await;
    t.set_metadata(&task, json!({"v": 1})).await;
    let between = a_moment_between().await;
    t.set_metadata(&task, json!({"v": 2})).await;
    let then = t
        .ledger
        .task_as_of(&t.account_id, &task, between)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(then.metadata, json!({"v": 1}));
    let before_creation = chrono::DateTime::from_timestamp(0, 0).unwrap();
    assert!(t
        .ledger
        .task_as_of(&t.account_id, &task, before_creation)
        .await
        .unwrap()
        .is_none());
}

on_both_backends!(
    a_created_task_has_one_event_with_a_complete_envelope,
    every_command_appends_contiguous_sequences_chained_by_hash,
    commands_that_change_nothing_append_nothing,
    the_database_refuses_update_and_delete_on_events,
    another_accounts_task_is_not_found,
    a_taken_unique_id_is_refused_naming_its_task_until_released,
    a_refused_command_in_a_batch_leaves_nothing_and_spares_the_others,
    an_append_transaction_that_never_commits_leaves_nothing,
    replay_rebuilds_projections_equal_to_the_live_ones,
    verify_names_the_first_event_altered_behind_the_databases_back,
    as_of_rebuilds_the_task_as_it_stood_then,
);
