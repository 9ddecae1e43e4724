use std::collections::HashSet;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use taskledger_events::*;
use taskledger_projections::{add_tags, remove_tags, TaskStatus};

use super::limits::MAX_TAGS;
use super::{AuditResult, CreateTask, Tags, TaskAction, TaskCommand, TaskError};

/// The cqrs-es event type: the contract's [`TaskEvent`] (a foreign type, hence the wrapper).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LedgerEvent(pub TaskEvent);

impl DomainEvent for LedgerEvent {
    fn event_type(&self) -> String {
        self.0.event_type().to_string()
    }

    fn event_version(&self) -> String {
        self.0.event_version().to_string()
    }
}

impl From<TaskEvent> for LedgerEvent {
    fn from(event: TaskEvent) -> Self {
        LedgerEvent(event)
    }
}

/// What the rules need to know about a task; rebuilt from its events before every command.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    status: Option<TaskStatus>,
    metadata: Value,
    unique_id: Option<String>,
    tags: Vec<String>,
    clear_unique_id_on_error: bool,
    /// Callback deliveries whose outcome is recorded; a delivery retried after a crash must
    /// not record its outcome twice.
    callbacks_recorded: Vec<String>,
}

impl Aggregate for Task {
    const TYPE: &'static str = "task";
    type Command = TaskCommand;
    type Event = LedgerEvent;
    type Error = TaskError;
    type Services = ();

    async fn handle(
        &mut self,
        command: TaskCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), TaskError> {
        let events = self.decide(command)?;
        for event in events {
            sink.write(LedgerEvent(event), self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: LedgerEvent) {
        match event.0 {
            TaskEvent::TaskCreated(e) => {
                self.status = Some(TaskStatus::Pending);
                self.metadata = e.metadata;
                self.unique_id = e.unique_id;
                self.tags = e.tags;
                self.clear_unique_id_on_error = e.clear_unique_id_on_error;
            }
            TaskEvent::TaskCanceled(_) => self.status = Some(TaskStatus::Canceled),
            TaskEvent::TaskMetadataSet(e) => self.metadata = e.metadata,
            TaskEvent::TaskUniqueIdSet(e) => {
                self.unique_id = Some(e.unique_id);
                if let Some(flag) = e.clear_unique_id_on_error {
                    self.clear_unique_id_on_error = flag;
                }
            }
            TaskEvent::TaskUniqueIdCleared(_) => self.unique_id = None,
            TaskEvent::TaskTagsAdded(e) => add_tags(&mut self.tags, &e.tags),
            TaskEvent::TaskTagsReplaced(e) => self.tags = e.tags,
            TaskEvent::TaskTagsRemoved(e) => remove_tags(&mut self.tags, &e.tags),
            TaskEvent::TaskCompleted(_) => self.status = Some(TaskStatus::Completed),
            TaskEvent::TaskErrored(_) => self.status = Some(TaskStatus::Error),
            TaskEvent::CallbackDelivered(e) => self.callbacks_recorded.push(e.delivery_id),
            TaskEvent::CallbackFailed(e) => self.callbacks_recorded.push(e.delivery_id),
            TaskEvent::TaskAudited(_) => {}
        }
    }
}

impl Task {
    /// Rebuilds the state from a task's history.
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a TaskEvent>) -> Task {
        let mut task = Task::default();
        for event in events {
            task.apply(LedgerEvent(event.clone()));
        }
        task
    }

    pub fn exists(&self) -> bool {
        self.status.is_some()
    }

    /// Decides the events of a command without touching `self` (the sink applies them), so
    /// the handler can run it synchronously too.
    fn decide(&self, command: TaskCommand) -> Result<Vec<TaskEvent>, TaskError> {
        let TaskCommand { scope, action } = command;
        if let TaskAction::Create(create) = action {
            require_scope(scope, Scope::Customer, "create tasks")?;
            if self.exists() {
                return Err(TaskError::AlreadyExists);
            }
            return Ok(vec![created(create)?]);
        }
        let Some(status) = self.status else {
            return Err(TaskError::NotFound);
        };
        match action {
            TaskAction::Create(_) => unreachable!("handled above"),
            TaskAction::Cancel { clear_unique_id } => {
                require_scope(scope, Scope::Customer, "cancel tasks")?;
                let mut events = Vec::new();
                // Canceling a canceled task again is not an error, and appends no cancel.
                if status != TaskStatus::Canceled {
                    require_pending(status, "canceled")?;
                    events.push(TaskEvent::TaskCanceled(TaskCanceled {}));
                }
                if clear_unique_id {
                    events.extend(self.clear_unique_id(UniqueIdClearReason::Canceled));
                }
                Ok(events)
            }
            TaskAction::SetMetadata { metadata } => {
                require_scope(scope, Scope::Customer, "set metadata")?;
                let metadata = metadata.into_value();
                if metadata == self.metadata {
                    return Ok(vec![]);
                }
                Ok(vec![TaskEvent::TaskMetadataSet(TaskMetadataSet {
                    metadata,
                })])
            }
            TaskAction::SetUniqueId {
                unique_id,
                clear_unique_id_on_error,
            } => {
                require_scope(scope, Scope::Customer, "set unique_id")?;
                let same_id = self.unique_id.as_deref() == Some(unique_id.as_str());
                let flag =
                    clear_unique_id_on_error.filter(|flag| *flag != self.clear_unique_id_on_error);
                if same_id && flag.is_none() {
                    return Ok(vec![]);
                }
                Ok(vec![TaskEvent::TaskUniqueIdSet(TaskUniqueIdSet {
                    unique_id: unique_id.into_string(),
                    // Keeping the same id only changes the flag: nothing is released.
                    previous: if same_id {
                        None
                    } else {
                        self.unique_id.clone()
                    },
                    clear_unique_id_on_error: flag,
                })])
            }
            TaskAction::ClearUniqueId => {
                require_scope(scope, Scope::Customer, "clear unique_id")?;
                Ok(self
                    .clear_unique_id(UniqueIdClearReason::Requested)
                    .into_iter()
                    .collect())
            }
            TaskAction::AddTags { tags } => {
                require_scope(scope, Scope::Customer, "change tags")?;
                let (_, new) = self.partition_tags(tags);
                if new.is_empty() {
                    return Ok(vec![]);
                }
                let total = self.tags.len() + new.len();
                if total > MAX_TAGS {
                    return Err(TaskError::invalid(format!(
                        "tags: a task holds at most {MAX_TAGS} tags; this would make {total}"
                    )));
                }
                Ok(vec![TaskEvent::TaskTagsAdded(TaskTagsAdded { tags: new })])
            }
            TaskAction::SetTags { tags } => {
                require_scope(scope, Scope::Customer, "change tags")?;
                let tags = tags.into_strings();
                if tags == self.tags {
                    return Ok(vec![]);
                }
                Ok(vec![TaskEvent::TaskTagsReplaced(TaskTagsReplaced { tags })])
            }
            TaskAction::RemoveTags { tags } => {
                require_scope(scope, Scope::Customer, "change tags")?;
                let (gone, _) = self.partition_tags(tags);
                if gone.is_empty() {
                    return Ok(vec![]);
                }
                Ok(vec![TaskEvent::TaskTagsRemoved(TaskTagsRemoved {
                    tags: gone,
                })])
            }
            TaskAction::Complete { response } => {
                require_scope(scope, Scope::Contributor, "complete tasks")?;
                require_pending(status, "completed")?;
                let response = response.into_value();
                if !response.is_object() {
                    return Err(TaskError::invalid("response must be a JSON object"));
                }
                Ok(vec![TaskEvent::TaskCompleted(TaskCompleted { response })])
            }
            TaskAction::Error { error } => {
                require_scope(scope, Scope::Contributor, "error tasks")?;
                require_pending(status, "errored")?;
                let error = match error.into_value() {
                    Value::Object(map) if !map.is_empty() => Value::Object(map),
                    Value::String(s) if !s.trim().is_empty() => json!({ "error": s }),
                    _ => {
                        return Err(TaskError::invalid(
                            "error must be a non-empty string or object",
                        ))
                    }
                };
                let mut events = vec![TaskEvent::TaskErrored(TaskErrored { error })];
                if self.clear_unique_id_on_error {
                    events.extend(self.clear_unique_id(UniqueIdClearReason::Errored));
                }
                Ok(events)
            }
            TaskAction::CustomerAudit {
                audited_by,
                accepted,
                comments,
            } => {
                require_scope(scope, Scope::Customer, "submit customer audits")?;
                require_completed(status)?;
                let audit_result = match (accepted, &comments) {
                    (Some(true), _) => "accepted",
                    (Some(false), _) => "rejected",
                    (None, Some(c)) if !c.as_str().trim().is_empty() => "commented",
                    (None, _) => {
                        return Err(TaskError::invalid(
                            "accepted (true or false) is required, or comments alone for a \
                             review that only comments",
                        ))
                    }
                };
                Ok(vec![TaskEvent::TaskAudited(TaskAudited {
                    audited_by,
                    audit_source: AuditSource::Customer,
                    audit_result: audit_result.into(),
                    audit_time_secs: None,
                    comments: comments.map(|c| c.into_string()),
                    response: None,
                })])
            }
            TaskAction::ContributorAudit {
                audited_by,
                audit_result,
                audit_time_secs,
                response,
            } => {
                require_scope(scope, Scope::Contributor, "submit workforce audits")?;
                require_completed(status)?;
                let response = response.map(|r| r.into_value());
                match (audit_result, &response) {
                    (AuditResult::Fixed, Some(Value::Object(_))) => {}
                    (AuditResult::Fixed, _) => {
                        return Err(TaskError::invalid(
                            "response (an object) is required when audit_result is fixed",
                        ))
                    }
                    (AuditResult::Accepted | AuditResult::Rejected, None) => {}
                    (AuditResult::Accepted | AuditResult::Rejected, Some(_)) => {
                        return Err(TaskError::invalid(
                            "response is only accepted when audit_result is fixed",
                        ))
                    }
                }
                Ok(vec![TaskEvent::TaskAudited(TaskAudited {
                    audited_by,
                    audit_source: AuditSource::Refonte,
                    audit_result: audit_result.as_str().to_string(),
                    audit_time_secs,
                    comments: None,
                    response,
                })])
            }
            TaskAction::RecordCallbackDelivered {
                delivery_id,
                for_sequence,
                attempts,
                status_code,
            } => self.record_callback(scope, delivery_id, |delivery_id| {
                TaskEvent::CallbackDelivered(CallbackDelivered {
                    delivery_id,
                    for_sequence,
                    attempts,
                    status_code,
                })
            }),
            TaskAction::RecordCallbackFailed {
                delivery_id,
                for_sequence,
                attempts,
                last_error,
            } => self.record_callback(scope, delivery_id, |delivery_id| {
                TaskEvent::CallbackFailed(CallbackFailed {
                    delivery_id,
                    for_sequence,
                    attempts,
                    last_error,
                })
            }),
        }
    }

    /// A delivery's outcome, recorded at most once: the same delivery reported again appends
    /// nothing.
    fn record_callback(
        &self,
        scope: Scope,
        delivery_id: String,
        event: impl FnOnce(String) -> TaskEvent,
    ) -> Result<Vec<TaskEvent>, TaskError> {
        require_scope(scope, Scope::System, "record callbacks")?;
        if self.callbacks_recorded.contains(&delivery_id) {
            return Ok(vec![]);
        }
        Ok(vec![event(delivery_id)])
    }

    /// The given tags, in the order given: those the task has, and those it has not.
    fn partition_tags(&self, tags: Tags) -> (Vec<String>, Vec<String>) {
        let present: HashSet<&str> = self.tags.iter().map(String::as_str).collect();
        tags.into_strings()
            .into_iter()
            .partition(|t| present.contains(t.as_str()))
    }

    fn clear_unique_id(&self, reason: UniqueIdClearReason) -> Option<TaskEvent> {
        self.unique_id.clone().map(|unique_id| {
            TaskEvent::TaskUniqueIdCleared(TaskUniqueIdCleared { unique_id, reason })
        })
    }
}

fn created(create: CreateTask) -> Result<TaskEvent, TaskError> {
    create
        .task_type
        .check_params(&create.params)
        .map_err(TaskError::Invalid)?;
    Ok(TaskEvent::TaskCreated(TaskCreated {
        task_type: create.task_type.as_str().to_string(),
        instruction: create.instruction.map(|t| t.into_string()),
        callback_url: create.callback_url.map(|u| u.into_string()),
        project: create.project.map(|p| p.into_string()),
        batch: create.batch.map(|b| b.into_string()),
        params: Value::Object(create.params.into_map()),
        metadata: create.metadata.unwrap_or_default().into_value(),
        tags: create.tags.into_strings(),
        unique_id: create.unique_id.map(|u| u.into_string()),
        clear_unique_id_on_error: create.clear_unique_id_on_error,
        project_param_version: create.project_param_version,
        is_test: create.is_test,
    }))
}

fn require_scope(actual: Scope, needed: Scope, what: &str) -> Result<(), TaskError> {
    if actual == needed {
        Ok(())
    } else {
        Err(TaskError::Forbidden(format!(
            "Only {} keys may {what}; this key's scope is {}",
            needed.as_str(),
            actual.as_str()
        )))
    }
}

fn require_pending(status: TaskStatus, becoming: &str) -> Result<(), TaskError> {
    if status == TaskStatus::Pending {
        Ok(())
    } else {
        Err(TaskError::invalid(format!(
            "Task is {} and cannot be {becoming}; only pending tasks can be",
            status.as_str()
        )))
    }
}

fn require_completed(status: TaskStatus) -> Result<(), TaskError> {
    if status == TaskStatus::Completed {
        Ok(())
    } else {
        Err(TaskError::invalid(format!(
            "Task is {}; only completed tasks can be audited",
            status.as_str()
        )))
    }
}

#[cfg(test)]
#[path = "task_tests.rs"]
mod tests;
