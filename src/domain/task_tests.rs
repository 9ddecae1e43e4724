//! Given/when/then tests of every rule of the task aggregate (`/work/shared/spec/api.md`).

use cqrs_es::test::{AggregateResultValidator, AggregateTestExecutor, TestFramework};
use serde_json::Map;

use super::*;
use crate::domain::{
    CallbackUrl, Identifier, Json, Metadata, Params, Tags, TaskType, Text, UniqueId,
};

// Refusals of malformed values (a blank unique_id or tag, a non-object or oversized metadata,
// an unknown task type or audit result, a bad callback_url, ...) are the parsers' and are
// tested in `values_tests.rs`: a command cannot carry such a value.

const UNIQUE_ID: &str = "order-42";
const TEN_KB: usize = crate::domain::limits::MAX_METADATA_BYTES;

// ----------------------------------------------------------------------------------------
// Commands
// ----------------------------------------------------------------------------------------

fn customer(action: TaskAction) -> TaskCommand {
    TaskCommand::new(Scope::Customer, action)
}

fn contributor(action: TaskAction) -> TaskCommand {
    TaskCommand::new(Scope::Contributor, action)
}

fn system(action: TaskAction) -> TaskCommand {
    TaskCommand::new(Scope::System, action)
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("test params must be a JSON object, got {other}"),
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn categorization_params() -> Value {
    json!({
        "attachment_type": "image",
        "attachment": "https://example.com/cat.jpg",
        "categories": ["cat", "dog"],
    })
}

fn new_task(task_type: &str, params: Value) -> CreateTask {
    CreateTask {
        task_type: TaskType::parse(task_type).unwrap(),
        params: Params::parse(object(params)).unwrap(),
        ..CreateTask::default()
    }
}

fn edited(params: &Params, edit: impl FnOnce(&mut Map<String, Value>)) -> Params {
    let mut map = params.as_map().clone();
    edit(&mut map);
    Params::parse(map).unwrap()
}

fn tags_of(items: &[&str]) -> Tags {
    Tags::parse(items.iter().copied()).unwrap()
}

fn metadata(value: Value) -> Metadata {
    Metadata::parse(value).unwrap()
}

fn categorization() -> CreateTask {
    new_task("categorization", categorization_params())
}

/// A customer's create of a categorization task, changed by `edit`.
fn create_with(edit: impl FnOnce(&mut CreateTask)) -> TaskCommand {
    let mut create = categorization();
    edit(&mut create);
    customer(TaskAction::Create(create))
}

fn cancel(clear_unique_id: bool) -> TaskAction {
    TaskAction::Cancel { clear_unique_id }
}

fn set_metadata(value: Value) -> TaskAction {
    TaskAction::SetMetadata {
        metadata: metadata(value),
    }
}

fn set_unique_id(unique_id: &str) -> TaskAction {
    TaskAction::SetUniqueId {
        unique_id: UniqueId::parse(unique_id).unwrap(),
        clear_unique_id_on_error: None,
    }
}

fn add_tags(tags: &[&str]) -> TaskAction {
    TaskAction::AddTags {
        tags: tags_of(tags),
    }
}

fn set_tags(tags: &[&str]) -> TaskAction {
    TaskAction::SetTags {
        tags: tags_of(tags),
    }
}

fn remove_tags(tags: &[&str]) -> TaskAction {
    TaskAction::RemoveTags {
        tags: tags_of(tags),
    }
}

fn complete(response: Value) -> TaskAction {
    TaskAction::Complete {
        response: Json::parse(response).unwrap(),
    }
}

fn error(error: Value) -> TaskAction {
    TaskAction::Error {
        error: Json::parse(error).unwrap(),
    }
}

fn customer_audit(accepted: bool, comments: Option<&str>) -> TaskAction {
    customer_review(Some(accepted), comments)
}

fn customer_review(accepted: Option<bool>, comments: Option<&str>) -> TaskAction {
    TaskAction::CustomerAudit {
        audited_by: "customer@example.com".into(),
        accepted,
        comments: comments.map(|c| Text::parse(c).unwrap()),
    }
}

fn contributor_audit(audit_result: &str, response: Option<Value>) -> TaskAction {
    TaskAction::ContributorAudit {
        audited_by: "qa@example.com".into(),
        audit_result: serde_json::from_value(json!(audit_result)).unwrap(),
        audit_time_secs: Some(30),
        response: response.map(|r| Json::parse(r).unwrap()),
    }
}

fn record_delivered() -> TaskAction {
    TaskAction::RecordCallbackDelivered {
        delivery_id: "delivery-1".into(),
        for_sequence: 2,
        attempts: 3,
        status_code: 204,
    }
}

fn record_failed() -> TaskAction {
    TaskAction::RecordCallbackFailed {
        delivery_id: "delivery-1".into(),
        for_sequence: 2,
        attempts: 20,
        last_error: "connection refused".into(),
    }
}

/// A metadata object whose compact serialization is exactly `bytes` long.
fn metadata_of_size(bytes: usize) -> Value {
    let value = json!({ "k": "x".repeat(bytes - r#"{"k":""}"#.len()) });
    assert_eq!(value.to_string().len(), bytes);
    value
}

// ----------------------------------------------------------------------------------------
// Events
// ----------------------------------------------------------------------------------------

/// The `TaskCreated` of a bare create: no common fields, metadata `{}`.
fn created_fact(task_type: &str, params: Value) -> TaskCreated {
    TaskCreated {
        task_type: task_type.into(),
        instruction: None,
        callback_url: None,
        project: None,
        batch: None,
        params,
        metadata: json!({}),
        tags: vec![],
        unique_id: None,
        clear_unique_id_on_error: false,
        project_param_version: None,
        is_test: false,
    }
}

/// A categorization task was created.
fn created() -> TaskEvent {
    created_with(|_| {})
}

fn created_with(edit: impl FnOnce(&mut TaskCreated)) -> TaskEvent {
    let mut fact = created_fact("categorization", categorization_params());
    edit(&mut fact);
    TaskEvent::TaskCreated(fact)
}

fn created_with_unique_id() -> TaskEvent {
    created_with(|c| c.unique_id = Some(UNIQUE_ID.into()))
}

fn created_with_tags(tags: &[&str]) -> TaskEvent {
    created_with(|c| c.tags = strings(tags))
}

fn canceled() -> TaskEvent {
    TaskEvent::TaskCanceled(TaskCanceled {})
}

fn completed() -> TaskEvent {
    TaskEvent::TaskCompleted(TaskCompleted {
        response: json!({ "category": "cat" }),
    })
}

fn errored() -> TaskEvent {
    TaskEvent::TaskErrored(TaskErrored {
        error: json!({ "error": "the image is blank" }),
    })
}

fn unique_id_cleared(reason: UniqueIdClearReason) -> TaskEvent {
    TaskEvent::TaskUniqueIdCleared(TaskUniqueIdCleared {
        unique_id: UNIQUE_ID.into(),
        reason,
    })
}

// ----------------------------------------------------------------------------------------
// Given / then
// ----------------------------------------------------------------------------------------

fn ledger(events: impl IntoIterator<Item = TaskEvent>) -> Vec<LedgerEvent> {
    events.into_iter().map(LedgerEvent).collect()
}

fn no_task() -> AggregateTestExecutor<Task> {
    TestFramework::<Task>::with(()).given_no_previous_events()
}

fn task(history: impl IntoIterator<Item = TaskEvent>) -> AggregateTestExecutor<Task> {
    TestFramework::<Task>::with(()).given(ledger(history))
}

fn pending_task() -> AggregateTestExecutor<Task> {
    task([created()])
}

fn completed_task() -> AggregateTestExecutor<Task> {
    task([created(), completed()])
}

trait Then {
    fn then_expect(self, events: impl IntoIterator<Item = TaskEvent>);
    fn then_expect_nothing(self);
    /// A 400 whose message names `field` (or the state that forbids the command).
    fn then_expect_invalid(self, mentioning: &str);
    fn then_expect_forbidden(self);
}

impl Then for AggregateResultValidator<Task> {
    fn then_expect(self, events: impl IntoIterator<Item = TaskEvent>) {
        self.then_expect_events(ledger(events));
    }

    fn then_expect_nothing(self) {
        self.then_expect_events(vec![]);
    }

    fn then_expect_invalid(self, mentioning: &str) {
        match self.inspect_result() {
            Err(TaskError::Invalid(message)) => assert!(
                message.contains(mentioning),
                "the message {message:?} should mention {mentioning:?}"
            ),
            other => panic!("expected Invalid mentioning {mentioning:?}, got {other:?}"),
        }
    }

    fn then_expect_forbidden(self) {
        match self.inspect_result() {
            Err(TaskError::Forbidden(_)) => {}
            other => panic!("expected Forbidden, got {other:?}"),
        }
    }
}

// ----------------------------------------------------------------------------------------
// Create
// ----------------------------------------------------------------------------------------

fn assert_created(task_type: &str, params: Value) {
    no_task()
        .when(customer(TaskAction::Create(new_task(
            task_type,
            params.clone(),
        ))))
        .then_expect([TaskEvent::TaskCreated(created_fact(task_type, params))]);
}

#[test]
fn a_categorization_task_is_created_with_its_fields_in_params_and_empty_metadata() {
    assert_created("categorization", categorization_params());
}

#[test]
fn categories_may_be_objects() {
    assert_created(
        "categorization",
        json!({
            "attachment_type": "text",
            "attachment": "Is this spam?",
            "categories": [{"label": "spam"}, "ham"],
        }),
    );
}

#[test]
fn an_imageannotation_task_is_created_when_one_geometry_has_objects_to_annotate() {
    assert_created(
        "imageannotation",
        json!({
            "attachment": "https://example.com/street.jpg",
            "geometries": {
                "box": {"objects_to_annotate": ["car", "bus"]},
                "polygon": {"objects_to_annotate": []},
            },
        }),
    );
}

#[test]
fn a_videoannotation_task_is_created_with_attachments_and_geometries() {
    assert_created(
        "videoannotation",
        json!({"attachments": ["https://example.com/f1.jpg", "https://example.com/f2.jpg"],
               "geometries": {"box": {"objects_to_annotate": ["car"]}}}),
    );
}

#[test]
fn a_lidarsegmentation_task_is_created_with_frames_and_labels() {
    assert_created(
        "lidarsegmentation",
        json!({"attachments": ["https://example.com/scan.json"], "attachment_type": "json",
               "labels": ["road", "car"]}),
    );
}

#[test]
fn a_documenttranscription_task_is_created_with_an_attachment() {
    assert_created(
        "documenttranscription",
        json!({"attachment": "https://example.com/invoice.pdf"}),
    );
}

#[test]
fn a_comparison_task_is_created_with_attachments() {
    assert_created(
        "comparison",
        json!({"attachments": ["https://example.com/a.jpg", "https://example.com/b.jpg"]}),
    );
}

#[test]
fn a_textcollection_task_is_created_with_fields_alone() {
    assert_created(
        "textcollection",
        json!({"fields": [{"field_id": "name", "type": "text"}]}),
    );
}

#[test]
fn creating_with_every_common_field_records_them_all() {
    let command = create_with(|c| {
        c.instruction = Some(Text::parse("Is it a cat?").unwrap());
        c.callback_url = Some(CallbackUrl::parse("https://example.com/callback").unwrap());
        c.project = Some(Identifier::parse("pets").unwrap());
        c.batch = Some(Identifier::parse("pets-1").unwrap());
        c.unique_id = Some(UniqueId::parse(UNIQUE_ID).unwrap());
        c.metadata = Some(metadata(json!({"source": "upload"})));
        c.tags = tags_of(&["cats"]);
        c.clear_unique_id_on_error = true;
    });
    no_task().when(command).then_expect([created_with(|c| {
        c.instruction = Some("Is it a cat?".into());
        c.callback_url = Some("https://example.com/callback".into());
        c.project = Some("pets".into());
        c.batch = Some("pets-1".into());
        c.unique_id = Some(UNIQUE_ID.into());
        c.metadata = json!({"source": "upload"});
        c.tags = strings(&["cats"]);
        c.clear_unique_id_on_error = true;
    })]);
}

#[test]
fn a_categorization_task_without_attachment_is_refused() {
    no_task()
        .when(create_with(|c| {
            c.params = edited(&c.params, |p| {
                p.remove("attachment");
            });
        }))
        .then_expect_invalid("attachment");
}

#[test]
fn a_categorization_task_without_attachment_type_is_refused() {
    no_task()
        .when(create_with(|c| {
            c.params = edited(&c.params, |p| {
                p.remove("attachment_type");
            });
        }))
        .then_expect_invalid("attachment_type");
}

#[test]
fn a_categorization_task_with_empty_categories_is_refused() {
    no_task()
        .when(create_with(|c| {
            c.params = edited(&c.params, |p| {
                p.insert("categories".into(), json!([]));
            });
        }))
        .then_expect_invalid("categories");
}

#[test]
fn a_categorization_task_whose_categories_are_not_an_array_is_refused() {
    for categories in [json!("cat,dog"), json!({"cat": 1}), Value::Null] {
        no_task()
            .when(create_with(|c| {
                c.params = edited(&c.params, |p| {
                    p.insert("categories".into(), categories);
                });
            }))
            .then_expect_invalid("categories");
    }
}

#[test]
fn an_imageannotation_task_without_geometries_is_refused() {
    no_task()
        .when(customer(TaskAction::Create(new_task(
            "imageannotation",
            json!({"attachment": "https://example.com/street.jpg"}),
        ))))
        .then_expect_invalid("geometries");
}

#[test]
fn an_imageannotation_task_whose_geometries_all_have_empty_objects_to_annotate_is_refused() {
    no_task()
        .when(customer(TaskAction::Create(new_task(
            "imageannotation",
            json!({
                "attachment": "https://example.com/street.jpg",
                "geometries": {
                    "box": {"objects_to_annotate": []},
                    "polygon": {"min_vertices": 3},
                },
            }),
        ))))
        .then_expect_invalid("objects_to_annotate");
}

#[test]
fn other_task_types_without_attachment_or_attachments_are_refused() {
    let types = [
        "videoannotation",
        "lidarsegmentation",
        "documenttranscription",
        "comparison",
    ];
    let bad_params = [
        json!({}),
        json!({"attachment": "  "}),
        json!({"attachments": []}),
        json!({"fields": [{"field_id": "name"}]}),
    ];
    for task_type in types {
        for params in &bad_params {
            no_task()
                .when(customer(TaskAction::Create(new_task(
                    task_type,
                    params.clone(),
                ))))
                .then_expect_invalid("attachment");
        }
    }
}

#[test]
fn a_textcollection_task_without_attachment_attachments_or_fields_is_refused() {
    no_task()
        .when(customer(TaskAction::Create(new_task(
            "textcollection",
            json!({"fields": []}),
        ))))
        .then_expect_invalid("fields");
}

#[test]
fn http_and_https_callback_urls_are_accepted() {
    for url in [
        "http://example.com/callback",
        "https://example.com:8443/hooks?task=1",
    ] {
        no_task()
            .when(create_with(|c| {
                c.callback_url = Some(CallbackUrl::parse(url).unwrap())
            }))
            .then_expect([created_with(|c| c.callback_url = Some(url.into()))]);
    }
}

#[test]
fn metadata_of_exactly_10_kb_is_accepted_at_create() {
    no_task()
        .when(create_with(|c| {
            c.metadata = Some(metadata(metadata_of_size(TEN_KB)))
        }))
        .then_expect([created_with(|c| c.metadata = metadata_of_size(TEN_KB))]);
}

#[test]
fn duplicate_tags_at_create_are_dropped_keeping_the_first_order() {
    no_task()
        .when(create_with(|c| {
            c.tags = tags_of(&["b", "a", "b", "c", "a"])
        }))
        .then_expect([created_with_tags(&["b", "a", "c"])]);
}

#[test]
fn only_customer_keys_may_create_tasks() {
    for scope in [Scope::Contributor, Scope::System] {
        no_task()
            .when(TaskCommand::new(
                scope,
                TaskAction::Create(categorization()),
            ))
            .then_expect_forbidden();
    }
}

#[test]
fn creating_a_task_that_already_exists_is_a_conflict() {
    pending_task()
        .when(customer(TaskAction::Create(categorization())))
        .then_expect_error(TaskError::AlreadyExists);
}

// ----------------------------------------------------------------------------------------
// Commands on a task that does not exist
// ----------------------------------------------------------------------------------------

#[test]
fn every_command_but_create_on_a_missing_task_is_not_found() {
    let commands = [
        customer(cancel(false)),
        customer(set_metadata(json!({}))),
        customer(set_unique_id(UNIQUE_ID)),
        customer(TaskAction::ClearUniqueId),
        customer(add_tags(&["a"])),
        customer(set_tags(&["a"])),
        customer(remove_tags(&["a"])),
        contributor(complete(json!({}))),
        contributor(error(json!("oops"))),
        customer(customer_audit(true, None)),
        contributor(contributor_audit("accepted", None)),
        system(record_delivered()),
        system(record_failed()),
    ];
    for command in commands {
        no_task()
            .when(command)
            .then_expect_error(TaskError::NotFound);
    }
}

// ----------------------------------------------------------------------------------------
// Cancel
// ----------------------------------------------------------------------------------------

#[test]
fn canceling_a_pending_task_records_task_canceled() {
    pending_task()
        .when(customer(cancel(false)))
        .then_expect([canceled()]);
}

#[test]
fn canceling_without_clear_unique_id_keeps_the_unique_id() {
    task([created_with_unique_id()])
        .when(customer(cancel(false)))
        .then_expect([canceled()]);
}

#[test]
fn canceling_with_clear_unique_id_also_releases_the_unique_id() {
    task([created_with_unique_id()])
        .when(customer(cancel(true)))
        .then_expect([canceled(), unique_id_cleared(UniqueIdClearReason::Canceled)]);
}

#[test]
fn canceling_with_clear_unique_id_when_there_is_none_only_cancels() {
    pending_task()
        .when(customer(cancel(true)))
        .then_expect([canceled()]);
}

#[test]
fn canceling_a_canceled_task_appends_nothing() {
    task([created_with_unique_id(), canceled()])
        .when(customer(cancel(false)))
        .then_expect_nothing();
}

#[test]
fn canceling_a_canceled_task_with_clear_unique_id_only_clears_the_unique_id() {
    task([created_with_unique_id(), canceled()])
        .when(customer(cancel(true)))
        .then_expect([unique_id_cleared(UniqueIdClearReason::Canceled)]);
}

#[test]
fn a_completed_task_cannot_be_canceled() {
    task([created_with_unique_id(), completed()])
        .when(customer(cancel(true)))
        .then_expect_invalid("completed");
}

#[test]
fn an_errored_task_cannot_be_canceled() {
    task([created(), errored()])
        .when(customer(cancel(false)))
        .then_expect_invalid("error");
}

// ----------------------------------------------------------------------------------------
// Customer-only commands
// ----------------------------------------------------------------------------------------

#[test]
fn contributor_and_system_keys_cannot_use_customer_commands() {
    let actions = [
        cancel(false),
        set_metadata(json!({"a": 1})),
        set_unique_id(UNIQUE_ID),
        TaskAction::ClearUniqueId,
        add_tags(&["a"]),
        set_tags(&["a"]),
        remove_tags(&["a"]),
    ];
    for scope in [Scope::Contributor, Scope::System] {
        for action in actions.clone() {
            task([created_with_unique_id()])
                .when(TaskCommand::new(scope, action))
                .then_expect_forbidden();
        }
    }
}

// ----------------------------------------------------------------------------------------
// setMetadata
// ----------------------------------------------------------------------------------------

#[test]
fn set_metadata_replaces_the_metadata() {
    task([created_with(|c| c.metadata = json!({"old": true}))])
        .when(customer(set_metadata(json!({"new": [1, 2]}))))
        .then_expect([TaskEvent::TaskMetadataSet(TaskMetadataSet {
            metadata: json!({"new": [1, 2]}),
        })]);
}

#[test]
fn setting_the_same_metadata_again_appends_nothing() {
    task([created_with(|c| c.metadata = json!({"a": 1, "b": "two"}))])
        .when(customer(set_metadata(json!({"b": "two", "a": 1}))))
        .then_expect_nothing();
}

#[test]
fn setting_the_metadata_last_set_appends_nothing() {
    let metadata = json!({"stage": 2});
    task([
        created(),
        TaskEvent::TaskMetadataSet(TaskMetadataSet {
            metadata: metadata.clone(),
        }),
    ])
    .when(customer(set_metadata(metadata)))
    .then_expect_nothing();
}

#[test]
fn set_metadata_accepts_exactly_10_kb() {
    pending_task()
        .when(customer(set_metadata(metadata_of_size(TEN_KB))))
        .then_expect([TaskEvent::TaskMetadataSet(TaskMetadataSet {
            metadata: metadata_of_size(TEN_KB),
        })]);
}

// ----------------------------------------------------------------------------------------
// unique_id
// ----------------------------------------------------------------------------------------

#[test]
fn setting_a_unique_id_records_the_one_it_replaces() {
    task([created_with_unique_id()])
        .when(customer(set_unique_id("order-43")))
        .then_expect([TaskEvent::TaskUniqueIdSet(TaskUniqueIdSet {
            unique_id: "order-43".into(),
            previous: Some(UNIQUE_ID.into()),
            clear_unique_id_on_error: None,
        })]);
}

#[test]
fn setting_the_first_unique_id_has_no_previous() {
    pending_task()
        .when(customer(set_unique_id(UNIQUE_ID)))
        .then_expect([TaskEvent::TaskUniqueIdSet(TaskUniqueIdSet {
            unique_id: UNIQUE_ID.into(),
            previous: None,
            clear_unique_id_on_error: None,
        })]);
}

#[test]
fn setting_the_same_unique_id_appends_nothing() {
    task([created_with_unique_id()])
        .when(customer(set_unique_id(UNIQUE_ID)))
        .then_expect_nothing();
}

#[test]
fn clearing_the_unique_id_records_reason_requested() {
    task([created_with_unique_id()])
        .when(customer(TaskAction::ClearUniqueId))
        .then_expect([unique_id_cleared(UniqueIdClearReason::Requested)]);
}

#[test]
fn clearing_when_there_is_no_unique_id_appends_nothing() {
    task([
        created_with_unique_id(),
        unique_id_cleared(UniqueIdClearReason::Requested),
    ])
    .when(customer(TaskAction::ClearUniqueId))
    .then_expect_nothing();
}

// ----------------------------------------------------------------------------------------
// Tags
// ----------------------------------------------------------------------------------------

#[test]
fn adding_tags_records_only_the_new_ones_deduplicated_in_order() {
    task([created_with_tags(&["a", "b"])])
        .when(customer(add_tags(&["c", "a", "d", "c"])))
        .then_expect([TaskEvent::TaskTagsAdded(TaskTagsAdded {
            tags: strings(&["c", "d"]),
        })]);
}

#[test]
fn adding_only_present_tags_appends_nothing() {
    task([created_with_tags(&["a", "b"])])
        .when(customer(add_tags(&["b", "a", "b"])))
        .then_expect_nothing();
}

#[test]
fn setting_tags_replaces_them_deduplicated_in_order() {
    task([created_with_tags(&["a", "b"])])
        .when(customer(set_tags(&["z", "a", "z"])))
        .then_expect([TaskEvent::TaskTagsReplaced(TaskTagsReplaced {
            tags: strings(&["z", "a"]),
        })]);
}

#[test]
fn setting_an_empty_tag_list_removes_every_tag() {
    task([created_with_tags(&["a"])])
        .when(customer(set_tags(&[])))
        .then_expect([TaskEvent::TaskTagsReplaced(TaskTagsReplaced {
            tags: vec![],
        })]);
}

#[test]
fn setting_the_same_tag_list_appends_nothing() {
    task([created_with_tags(&["a", "b"])])
        .when(customer(set_tags(&["a", "b", "a"])))
        .then_expect_nothing();
}

#[test]
fn removing_tags_records_only_the_present_ones() {
    task([created_with_tags(&["a", "b", "c"])])
        .when(customer(remove_tags(&["c", "x", "a", "c"])))
        .then_expect([TaskEvent::TaskTagsRemoved(TaskTagsRemoved {
            tags: strings(&["c", "a"]),
        })]);
}

#[test]
fn removing_absent_tags_appends_nothing() {
    task([created_with_tags(&["a"])])
        .when(customer(remove_tags(&["x", "y"])))
        .then_expect_nothing();
}

#[test]
fn tag_changes_build_on_the_tags_of_earlier_events() {
    task([
        created_with_tags(&["a"]),
        TaskEvent::TaskTagsAdded(TaskTagsAdded {
            tags: strings(&["b", "c"]),
        }),
        TaskEvent::TaskTagsRemoved(TaskTagsRemoved {
            tags: strings(&["a"]),
        }),
    ])
    .when(customer(add_tags(&["a", "b", "c"])))
    .then_expect([TaskEvent::TaskTagsAdded(TaskTagsAdded {
        tags: strings(&["a"]),
    })]);
}

// ----------------------------------------------------------------------------------------
// Complete
// ----------------------------------------------------------------------------------------

#[test]
fn a_contributor_completes_a_pending_task_with_its_response() {
    pending_task()
        .when(contributor(complete(json!({"category": "cat"}))))
        .then_expect([completed()]);
}

#[test]
fn customer_and_system_keys_cannot_complete_a_task() {
    for scope in [Scope::Customer, Scope::System] {
        pending_task()
            .when(TaskCommand::new(
                scope,
                complete(json!({"category": "cat"})),
            ))
            .then_expect_forbidden();
    }
}

#[test]
fn only_pending_tasks_can_be_completed() {
    for (history, status) in [
        (vec![created(), completed()], "completed"),
        (vec![created(), canceled()], "canceled"),
        (vec![created(), errored()], "error"),
    ] {
        task(history)
            .when(contributor(complete(json!({"category": "cat"}))))
            .then_expect_invalid(status);
    }
}

#[test]
fn a_response_that_is_not_an_object_is_refused() {
    for response in [json!("cat"), json!(["cat"]), json!(1), Value::Null] {
        pending_task()
            .when(contributor(complete(response)))
            .then_expect_invalid("response");
    }
}

// ----------------------------------------------------------------------------------------
// Error
// ----------------------------------------------------------------------------------------

#[test]
fn a_string_error_is_recorded_wrapped_in_an_object() {
    pending_task()
        .when(contributor(error(json!("the image is blank"))))
        .then_expect([errored()]);
}

#[test]
fn an_object_error_is_recorded_as_given() {
    let reported = json!({"error": "blurry", "code": 7});
    pending_task()
        .when(contributor(error(reported.clone())))
        .then_expect([TaskEvent::TaskErrored(TaskErrored { error: reported })]);
}

#[test]
fn an_empty_error_is_refused() {
    for reported in [json!(""), json!("   "), json!({}), json!(42), Value::Null] {
        pending_task()
            .when(contributor(error(reported)))
            .then_expect_invalid("error");
    }
}

#[test]
fn customer_and_system_keys_cannot_error_a_task() {
    for scope in [Scope::Customer, Scope::System] {
        pending_task()
            .when(TaskCommand::new(scope, error(json!("nope"))))
            .then_expect_forbidden();
    }
}

#[test]
fn only_pending_tasks_can_be_errored() {
    for (history, status) in [
        (vec![created(), completed()], "completed"),
        (vec![created(), canceled()], "canceled"),
        (vec![created(), errored()], "error"),
    ] {
        task(history)
            .when(contributor(error(json!("too late"))))
            .then_expect_invalid(status);
    }
}

#[test]
fn erroring_a_task_created_with_clear_unique_id_on_error_releases_its_unique_id() {
    task([created_with(|c| {
        c.unique_id = Some(UNIQUE_ID.into());
        c.clear_unique_id_on_error = true;
    })])
    .when(contributor(error(json!("the image is blank"))))
    .then_expect([errored(), unique_id_cleared(UniqueIdClearReason::Errored)]);
}

#[test]
fn erroring_releases_the_unique_id_set_after_creation() {
    task([
        created_with(|c| c.clear_unique_id_on_error = true),
        TaskEvent::TaskUniqueIdSet(TaskUniqueIdSet {
            unique_id: UNIQUE_ID.into(),
            previous: None,
            clear_unique_id_on_error: None,
        }),
    ])
    .when(contributor(error(json!("the image is blank"))))
    .then_expect([errored(), unique_id_cleared(UniqueIdClearReason::Errored)]);
}

fn set_unique_id_clearing_on_error(unique_id: &str, flag: bool) -> TaskAction {
    TaskAction::SetUniqueId {
        unique_id: UniqueId::parse(unique_id).unwrap(),
        clear_unique_id_on_error: Some(flag),
    }
}

#[test]
fn setting_the_same_unique_id_with_clear_unique_id_on_error_records_only_the_flag() {
    task([created_with_unique_id()])
        .when(customer(set_unique_id_clearing_on_error(UNIQUE_ID, true)))
        .then_expect([TaskEvent::TaskUniqueIdSet(TaskUniqueIdSet {
            unique_id: UNIQUE_ID.into(),
            previous: None,
            clear_unique_id_on_error: Some(true),
        })]);
}

#[test]
fn setting_clear_unique_id_on_error_to_what_it_already_is_records_nothing() {
    task([created_with(|c| {
        c.unique_id = Some(UNIQUE_ID.into());
        c.clear_unique_id_on_error = true;
    })])
    .when(customer(set_unique_id_clearing_on_error(UNIQUE_ID, true)))
    .then_expect([]);
}

#[test]
fn erroring_releases_a_unique_id_whose_clear_flag_was_set_with_it() {
    task([
        created_with_unique_id(),
        TaskEvent::TaskUniqueIdSet(TaskUniqueIdSet {
            unique_id: "order-43".into(),
            previous: Some(UNIQUE_ID.into()),
            clear_unique_id_on_error: Some(true),
        }),
    ])
    .when(contributor(error(json!("the image is blank"))))
    .then_expect([
        errored(),
        TaskEvent::TaskUniqueIdCleared(TaskUniqueIdCleared {
            unique_id: "order-43".into(),
            reason: UniqueIdClearReason::Errored,
        }),
    ]);
}

#[test]
fn a_unique_id_set_with_the_flag_false_is_kept_when_the_task_errors() {
    task([
        created_with(|c| c.clear_unique_id_on_error = true),
        TaskEvent::TaskUniqueIdSet(TaskUniqueIdSet {
            unique_id: "order-43".into(),
            previous: None,
            clear_unique_id_on_error: Some(false),
        }),
    ])
    .when(contributor(error(json!("the image is blank"))))
    .then_expect([errored()]);
}

#[test]
fn erroring_keeps_the_unique_id_when_clear_unique_id_on_error_is_false() {
    task([created_with_unique_id()])
        .when(contributor(error(json!("the image is blank"))))
        .then_expect([errored()]);
}

#[test]
fn erroring_with_clear_unique_id_on_error_but_no_unique_id_only_errors() {
    task([created_with(|c| c.clear_unique_id_on_error = true)])
        .when(contributor(error(json!("the image is blank"))))
        .then_expect([errored()]);
}

// ----------------------------------------------------------------------------------------
// Audits
// ----------------------------------------------------------------------------------------

fn customer_audited(audit_result: &str, comments: Option<&str>) -> TaskEvent {
    TaskEvent::TaskAudited(TaskAudited {
        audited_by: "customer@example.com".into(),
        audit_source: AuditSource::Customer,
        audit_result: audit_result.into(),
        audit_time_secs: None,
        comments: comments.map(str::to_string),
        response: None,
    })
}

fn refonte_audited(audit_result: &str, response: Option<Value>) -> TaskEvent {
    TaskEvent::TaskAudited(TaskAudited {
        audited_by: "qa@example.com".into(),
        audit_source: AuditSource::Refonte,
        audit_result: audit_result.into(),
        audit_time_secs: Some(30),
        comments: None,
        response,
    })
}

#[test]
fn a_customer_accepting_a_completed_task_records_a_customer_audit() {
    completed_task()
        .when(customer(customer_audit(true, None)))
        .then_expect([customer_audited("accepted", None)]);
}

#[test]
fn a_customer_rejecting_a_completed_task_records_rejected_with_comments() {
    completed_task()
        .when(customer(customer_audit(false, Some("wrong animal"))))
        .then_expect([customer_audited("rejected", Some("wrong animal"))]);
}

#[test]
fn a_customer_commenting_without_accepting_or_rejecting_records_commented() {
    completed_task()
        .when(customer(customer_review(
            None,
            Some("check the second box"),
        )))
        .then_expect([customer_audited("commented", Some("check the second box"))]);
}

#[test]
fn a_customer_review_with_neither_a_verdict_nor_comments_is_refused() {
    for comments in [None, Some("   ")] {
        completed_task()
            .when(customer(customer_review(None, comments)))
            .then_expect_invalid("accepted");
    }
}

#[test]
fn a_task_can_be_audited_again() {
    task([created(), completed(), customer_audited("rejected", None)])
        .when(customer(customer_audit(true, None)))
        .then_expect([customer_audited("accepted", None)]);
}

#[test]
fn only_completed_tasks_can_be_audited() {
    for history in [
        vec![created()],
        vec![created(), canceled()],
        vec![created(), errored()],
    ] {
        task(history.clone())
            .when(customer(customer_audit(true, None)))
            .then_expect_invalid("completed");
        task(history)
            .when(contributor(contributor_audit("accepted", None)))
            .then_expect_invalid("completed");
    }
}

#[test]
fn a_contributor_fix_with_an_object_response_records_a_refonte_audit() {
    let fixed = json!({"category": "dog"});
    completed_task()
        .when(contributor(contributor_audit("fixed", Some(fixed.clone()))))
        .then_expect([refonte_audited("fixed", Some(fixed))]);
}

#[test]
fn a_contributor_accepting_or_rejecting_without_a_response_records_a_refonte_audit() {
    for result in ["accepted", "rejected"] {
        completed_task()
            .when(contributor(contributor_audit(result, None)))
            .then_expect([refonte_audited(result, None)]);
    }
}

#[test]
fn a_contributor_fix_without_an_object_response_is_refused() {
    for response in [None, Some(json!("dog")), Some(json!(["dog"]))] {
        completed_task()
            .when(contributor(contributor_audit("fixed", response)))
            .then_expect_invalid("response");
    }
}

#[test]
fn a_contributor_accepting_or_rejecting_with_a_response_is_refused() {
    for result in ["accepted", "rejected"] {
        completed_task()
            .when(contributor(contributor_audit(
                result,
                Some(json!({"category": "dog"})),
            )))
            .then_expect_invalid("response");
    }
}

#[test]
fn a_customer_key_cannot_submit_a_contributor_audit() {
    completed_task()
        .when(customer(contributor_audit("accepted", None)))
        .then_expect_forbidden();
}

#[test]
fn a_contributor_key_cannot_submit_a_customer_audit() {
    completed_task()
        .when(contributor(customer_audit(true, None)))
        .then_expect_forbidden();
}

// ----------------------------------------------------------------------------------------
// Callback outcomes
// ----------------------------------------------------------------------------------------

#[test]
fn the_system_records_a_delivered_callback() {
    completed_task()
        .when(system(record_delivered()))
        .then_expect([TaskEvent::CallbackDelivered(CallbackDelivered {
            delivery_id: "delivery-1".into(),
            for_sequence: 2,
            attempts: 3,
            status_code: 204,
        })]);
}

#[test]
fn the_system_records_a_failed_callback() {
    completed_task()
        .when(system(record_failed()))
        .then_expect([TaskEvent::CallbackFailed(CallbackFailed {
            delivery_id: "delivery-1".into(),
            for_sequence: 2,
            attempts: 20,
            last_error: "connection refused".into(),
        })]);
}

#[test]
fn an_outcome_already_recorded_for_a_delivery_is_not_recorded_again() {
    let delivered = TaskEvent::CallbackDelivered(CallbackDelivered {
        delivery_id: "delivery-1".into(),
        for_sequence: 2,
        attempts: 3,
        status_code: 204,
    });
    for action in [record_delivered(), record_failed()] {
        task(vec![
            created(),
            TaskEvent::TaskCompleted(TaskCompleted {
                response: json!({"category": "big"}),
            }),
            delivered.clone(),
        ])
        .when(system(action))
        .then_expect_nothing();
    }
}

#[test]
fn customer_and_contributor_keys_cannot_record_callback_outcomes() {
    for scope in [Scope::Customer, Scope::Contributor] {
        for action in [record_delivered(), record_failed()] {
            completed_task()
                .when(TaskCommand::new(scope, action))
                .then_expect_forbidden();
        }
    }
}

// ----------------------------------------------------------------------------------------
// Rebuilding from events
// ----------------------------------------------------------------------------------------

fn a_long_history() -> Vec<TaskEvent> {
    vec![
        created_with(|c| {
            c.unique_id = Some("first".into());
            c.tags = strings(&["a", "b"]);
            c.clear_unique_id_on_error = true;
        }),
        TaskEvent::TaskMetadataSet(TaskMetadataSet {
            metadata: json!({"stage": 1}),
        }),
        TaskEvent::TaskUniqueIdSet(TaskUniqueIdSet {
            unique_id: UNIQUE_ID.into(),
            previous: Some("first".into()),
            clear_unique_id_on_error: None,
        }),
        TaskEvent::TaskTagsAdded(TaskTagsAdded {
            tags: strings(&["c"]),
        }),
        TaskEvent::TaskTagsRemoved(TaskTagsRemoved {
            tags: strings(&["a"]),
        }),
        completed(),
        customer_audited("accepted", None),
    ]
}

#[test]
fn a_missing_task_rebuilt_from_no_events_does_not_exist() {
    assert!(!Task::from_events(std::iter::empty()).exists());
    assert!(Task::from_events(&[created()]).exists());
}

#[test]
fn from_events_rebuilds_the_state_the_test_framework_replays() {
    let history = a_long_history();
    let mut replayed = Task::default();
    for event in ledger(history.clone()) {
        replayed.apply(event);
    }
    assert_eq!(Task::from_events(&history), replayed);
}

#[test]
fn a_task_rebuilt_from_events_decides_as_the_given_history_does() {
    let history = a_long_history();
    let rebuilt = Task::from_events(&history);
    let commands = [
        contributor(complete(json!({"category": "dog"}))),
        contributor(error(json!("late"))),
        customer(cancel(true)),
        customer(set_metadata(json!({"stage": 1}))),
        customer(set_unique_id(UNIQUE_ID)),
        customer(TaskAction::ClearUniqueId),
        customer(add_tags(&["b", "c", "d"])),
        customer(remove_tags(&["a"])),
        customer(customer_audit(false, None)),
        contributor(contributor_audit("fixed", Some(json!({"category": "dog"})))),
        customer(TaskAction::Create(categorization())),
    ];
    for command in commands {
        let given = task(history.clone())
            .when(command.clone())
            .inspect_result()
            .map(|events| events.into_iter().map(|e| e.0).collect::<Vec<_>>());
        assert_eq!(rebuilt.decide(command.clone()), given, "{command:?}");
    }
    assert!(matches!(
        rebuilt.decide(contributor(complete(json!({"category": "dog"})))),
        Err(TaskError::Invalid(message)) if message.contains("completed")
    ));
}

#[test]
fn ledger_events_report_the_contract_type_and_version() {
    let event = LedgerEvent(completed());
    assert_eq!(event.event_type(), "TaskCompleted");
    assert_eq!(event.event_version(), "1");
    assert_eq!(LedgerEvent::from(canceled()), LedgerEvent(canceled()));
}

// ----------------------------------------------------------------------------------------
// The tag limit of a task
// ----------------------------------------------------------------------------------------

fn numbered_tags(from: usize, to: usize) -> Vec<String> {
    (from..to).map(|i| format!("t{i}")).collect()
}

#[test]
fn adding_tags_up_to_the_limit_is_accepted_and_past_it_is_refused() {
    use crate::domain::limits::MAX_TAGS;
    let half = numbered_tags(0, MAX_TAGS / 2);
    let history = || task([created_with(|c| c.tags = numbered_tags(0, MAX_TAGS / 2))]);
    let rest = numbered_tags(MAX_TAGS / 2, MAX_TAGS);
    history()
        .when(customer(TaskAction::AddTags {
            tags: Tags::parse(rest.clone()).unwrap(),
        }))
        .then_expect([TaskEvent::TaskTagsAdded(TaskTagsAdded { tags: rest })]);
    let over = numbered_tags(MAX_TAGS / 2, MAX_TAGS + 1);
    history()
        .when(customer(TaskAction::AddTags {
            tags: Tags::parse(over).unwrap(),
        }))
        .then_expect_invalid(&MAX_TAGS.to_string());
    // Tags already present do not count twice.
    history()
        .when(customer(TaskAction::AddTags {
            tags: Tags::parse(half).unwrap(),
        }))
        .then_expect_nothing();
}
