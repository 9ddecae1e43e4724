use super::*;
use taskledger_events::*;

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(1_700_000_000_000 + ms).unwrap()
}

fn created() -> TaskEvent {
    TaskEvent::TaskCreated(TaskCreated {
        task_type: "categorization".into(),
        instruction: Some("Is this big?".into()),
        callback_url: Some("http://example.com/cb".into()),
        project: Some("kittens".into()),
        batch: None,
        params: json!({"attachment": "car", "attachment_type": "text", "categories": ["big", "small"]}),
        metadata: json!({}),
        tags: vec!["a".into()],
        unique_id: Some("u-1".into()),
        clear_unique_id_on_error: false,
        project_param_version: None,
        is_test: false,
    })
}

#[test]
fn a_created_task_is_pending_with_its_fields_and_absent_optional_keys() {
    let view = fold(None, "t1", at(0), &created()).unwrap();
    let json: Value = serde_json::from_str(&view.to_json()).unwrap();
    assert_eq!(json["status"], "pending");
    assert_eq!(json["type"], "categorization");
    assert_eq!(json["created_at"], "2023-11-14T22:13:20.000Z");
    assert_eq!(json["params"]["categories"], json!(["big", "small"]));
    assert_eq!(json["callback_completed"], false);
    assert!(json.get("batch").is_none());
    assert!(json.get("completed_at").is_none());
    assert!(json.get("response").is_none());
}

#[test]
fn completing_then_a_customer_rejection_sets_review_status_and_audit() {
    let events = [
        (at(0), created()),
        (
            at(10),
            TaskEvent::TaskCompleted(TaskCompleted {
                response: json!({"category": "big"}),
            }),
        ),
        (
            at(20),
            TaskEvent::TaskAudited(TaskAudited {
                audited_by: "acme".into(),
                audit_source: AuditSource::Customer,
                audit_result: "rejected".into(),
                audit_time_secs: None,
                comments: Some("wrong".into()),
                response: None,
            }),
        ),
    ];
    let view = fold_all("t1", events.iter().map(|(t, e)| (*t, e)))
        .unwrap()
        .unwrap();
    assert_eq!(view.status, TaskStatus::Completed);
    assert_eq!(view.completed_at, Some(at(10)));
    assert_eq!(view.updated_at, at(20));
    assert_eq!(view.customer_review_status, Some(ReviewStatus::Rejected));
    assert_eq!(view.audits.len(), 1);
    assert_eq!(view.audits[0].audited_at, at(20));
}

#[test]
fn a_fixed_workforce_audit_replaces_the_response() {
    let fixed = TaskEvent::TaskAudited(TaskAudited {
        audited_by: "qa".into(),
        audit_source: AuditSource::Refonte,
        audit_result: "fixed".into(),
        audit_time_secs: Some(30),
        comments: None,
        response: Some(json!({"category": "small"})),
    });
    let done = TaskEvent::TaskCompleted(TaskCompleted {
        response: json!({"category": "big"}),
    });
    let events = [(at(0), created()), (at(1), done), (at(2), fixed)];
    let view = fold_all("t1", events.iter().map(|(t, e)| (*t, e)))
        .unwrap()
        .unwrap();
    assert_eq!(view.response, Some(json!({"category": "small"})));
    assert_eq!(view.customer_review_status, Some(ReviewStatus::Fixed));
}

#[test]
fn tags_and_unique_id_keys_disappear_when_emptied() {
    let mut view = fold(None, "t1", at(0), &created()).unwrap();
    view = fold(
        Some(view),
        "t1",
        at(1),
        &TaskEvent::TaskTagsRemoved(TaskTagsRemoved {
            tags: vec!["a".into()],
        }),
    )
    .unwrap();
    view = fold(
        Some(view),
        "t1",
        at(2),
        &TaskEvent::TaskUniqueIdCleared(TaskUniqueIdCleared {
            unique_id: "u-1".into(),
            reason: UniqueIdClearReason::Requested,
        }),
    )
    .unwrap();
    let json: Value = serde_json::from_str(&view.to_json()).unwrap();
    assert!(json.get("tags").is_none());
    assert!(json.get("unique_id").is_none());
}

#[test]
fn the_unique_id_change_releases_the_old_value_and_reserves_the_new() {
    let before = fold(None, "t1", at(0), &created()).unwrap();
    let after = fold(
        Some(before.clone()),
        "t1",
        at(1),
        &TaskEvent::TaskUniqueIdSet(TaskUniqueIdSet {
            unique_id: "u-2".into(),
            previous: Some("u-1".into()),
            clear_unique_id_on_error: None,
        }),
    )
    .unwrap();
    assert_eq!(
        UniqueIdChange::between(Some(&before), &after),
        UniqueIdChange {
            release: Some("u-1".into()),
            reserve: Some("u-2".into())
        }
    );
    assert!(UniqueIdChange::between(Some(&after), &after).is_empty());
    assert_eq!(
        UniqueIdChange::between(None, &before).reserve.as_deref(),
        Some("u-1")
    );
}

#[test]
fn events_before_creation_or_a_second_creation_are_refused() {
    let cancel = TaskEvent::TaskCanceled(TaskCanceled {});
    assert_eq!(
        fold(None, "t1", at(0), &cancel),
        Err(FoldError::NotCreated {
            event_type: "TaskCanceled"
        })
    );
    let view = fold(None, "t1", at(0), &created()).unwrap();
    assert_eq!(
        fold(Some(view), "t1", at(1), &created()),
        Err(FoldError::AlreadyCreated)
    );
}

#[test]
fn the_list_row_carries_every_filter_column_in_microseconds() {
    let view = fold(None, "t1", at(5), &created()).unwrap();
    let row = ListRow::of(&view);
    assert_eq!(row.status, "pending");
    assert_eq!(row.created_at_us, at(5).timestamp_micros());
    assert_eq!(row.project.as_deref(), Some("kittens"));
    assert_eq!(row.tags, vec!["a".to_string()]);
    assert_eq!(row.completed_at_us, None);
}

#[test]
fn tags_are_added_without_duplicates_and_removed_keeping_the_order_of_the_rest() {
    let mut tags: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    add_tags(&mut tags, &["c", "d", "a", "e", "d"].map(String::from));
    assert_eq!(tags, ["a", "b", "c", "d", "e"]);
    remove_tags(&mut tags, &["b", "zz", "d"].map(String::from));
    assert_eq!(tags, ["a", "c", "e"]);
    // Large inputs keep their meaning: adding the same 100 000 twice adds them once.
    let many: Vec<String> = (0..100_000).map(|i| format!("t{i}")).collect();
    let mut all = Vec::new();
    add_tags(&mut all, &many);
    add_tags(&mut all, &many);
    assert_eq!(all.len(), many.len());
    remove_tags(&mut all, &many);
    assert!(all.is_empty());
}

#[test]
fn review_and_task_statuses_parse_back_from_their_names() {
    for status in ReviewStatus::ALL {
        assert_eq!(ReviewStatus::parse(status.as_str()), Some(status));
        assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
    }
    for status in TaskStatus::ALL {
        assert_eq!(TaskStatus::parse(status.as_str()), Some(status));
    }
    assert_eq!(ReviewStatus::parse("maybe"), None);
    assert_eq!(TaskStatus::parse("done"), None);
}
