//! Pure folds from taskledger events to what the API reads: the task view (the API's task
//! object), its list-index row and the unique_id index change. No I/O happens here, so the
//! live write path, `replay` and `?as_of=` share one definition of what a task looks like.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use taskledger_events::{AuditSource, TaskEvent};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Pending,
    Completed,
    Canceled,
    Error,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Completed => "completed",
            TaskStatus::Canceled => "canceled",
            TaskStatus::Error => "error",
        }
    }

    pub const ALL: [TaskStatus; 4] = [
        TaskStatus::Pending,
        TaskStatus::Completed,
        TaskStatus::Canceled,
        TaskStatus::Error,
    ];

    pub fn parse(s: &str) -> Option<TaskStatus> {
        TaskStatus::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// The customer's verdict on a completed task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ReviewStatus {
    Pending,
    Accepted,
    Rejected,
    Fixed,
    /// A customer review that commented without accepting or rejecting.
    Commented,
}

impl ReviewStatus {
    pub const ALL: [ReviewStatus; 5] = [
        ReviewStatus::Pending,
        ReviewStatus::Accepted,
        ReviewStatus::Rejected,
        ReviewStatus::Fixed,
        ReviewStatus::Commented,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReviewStatus::Pending => "pending",
            ReviewStatus::Accepted => "accepted",
            ReviewStatus::Rejected => "rejected",
            ReviewStatus::Fixed => "fixed",
            ReviewStatus::Commented => "commented",
        }
    }

    pub fn parse(s: &str) -> Option<ReviewStatus> {
        ReviewStatus::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Audit))]
pub struct AuditView {
    pub audited_by: String,
    /// RFC 3339 UTC with milliseconds.
    #[serde(with = "millis")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    #[cfg_attr(feature = "schema", schemars(with = "String", extend("format" = "date-time")))]
    pub audited_at: DateTime<Utc>,
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub audit_time_secs: Option<u64>,
    /// accepted, rejected or fixed.
    pub audit_result: String,
    pub audit_source: AuditSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub comments: Option<String>,
}

/// The API's task object. Field order and omission rules are the wire format: keys that
/// the reference leaves out when empty (`tags`, `unique_id`, ...) are absent, not null.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Task))]
pub struct TaskView {
    /// 24 lowercase hex characters, time-ordered.
    #[cfg_attr(feature = "openapi", schema(example = "0190a1b2c3d4e5f601234567"))]
    pub task_id: String,
    /// RFC 3339 UTC with milliseconds.
    #[serde(with = "millis")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    #[cfg_attr(feature = "schema", schemars(with = "String", extend("format" = "date-time")))]
    pub created_at: DateTime<Utc>,
    #[serde(with = "millis")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    #[cfg_attr(feature = "schema", schemars(with = "String", extend("format" = "date-time")))]
    pub updated_at: DateTime<Utc>,
    /// Present once completed.
    #[serde(default, with = "opt_millis", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = Option<String>, format = DateTime, nullable = false)
    )]
    #[cfg_attr(feature = "schema", schemars(with = "String", extend("format" = "date-time")))]
    pub completed_at: Option<DateTime<Utc>>,
    #[serde(rename = "type")]
    pub task_type: String,
    pub status: TaskStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub instruction: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub callback_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub project: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub batch: Option<String>,
    /// The version of the project's params the task inherited what it left out from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub project_param_version: Option<u32>,
    /// The type-specific creation fields (attachment_type, attachment, categories,
    /// geometries, ...) as given.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub params: Value,
    /// Present once completed (the contributor's answer) or errored (the error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>, nullable = false))]
    pub response: Option<Value>,
    /// True once a callback was delivered.
    pub callback_completed: bool,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub metadata: Value,
    pub audits: Vec<AuditView>,
    /// Present once the task is completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub customer_review_status: Option<ReviewStatus>,
    /// Absent when the task has none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Absent when the task has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub unique_id: Option<String>,
    /// Whether the unique_id is released when the task errors (set at creation or by
    /// `POST /v1/task/{id}/unique_id`).
    #[serde(default)]
    pub clear_unique_id_on_error: bool,
    /// Test data, created with a test-mode key; only test-mode keys see it. Kept last (with
    /// the field above) so migration 0035 could add both to every stored body.
    #[serde(default)]
    pub is_test: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FoldError {
    /// An event other than `TaskCreated` arrived for a task with no view yet.
    NotCreated { event_type: &'static str },
    /// A second `TaskCreated` for the same task.
    AlreadyCreated,
}

impl std::fmt::Display for FoldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FoldError::NotCreated { event_type } => {
                write!(f, "{event_type} for a task that was never created")
            }
            FoldError::AlreadyCreated => write!(f, "TaskCreated for a task that already exists"),
        }
    }
}

impl std::error::Error for FoldError {}

/// Applies one event, recorded at `recorded_at`, to the task's view.
pub fn fold(
    view: Option<TaskView>,
    task_id: &str,
    recorded_at: DateTime<Utc>,
    event: &TaskEvent,
) -> Result<TaskView, FoldError> {
    let mut view = match (view, event) {
        (None, TaskEvent::TaskCreated(created)) => {
            return Ok(TaskView {
                task_id: task_id.to_string(),
                created_at: recorded_at,
                updated_at: recorded_at,
                completed_at: None,
                task_type: created.task_type.clone(),
                status: TaskStatus::Pending,
                instruction: created.instruction.clone(),
                callback_url: created.callback_url.clone(),
                project: created.project.clone(),
                batch: created.batch.clone(),
                project_param_version: created.project_param_version,
                params: created.params.clone(),
                response: None,
                callback_completed: false,
                metadata: created.metadata.clone(),
                audits: Vec::new(),
                customer_review_status: None,
                tags: created.tags.clone(),
                unique_id: created.unique_id.clone(),
                clear_unique_id_on_error: created.clear_unique_id_on_error,
                is_test: created.is_test,
            })
        }
        (Some(_), TaskEvent::TaskCreated(_)) => return Err(FoldError::AlreadyCreated),
        (None, other) => {
            return Err(FoldError::NotCreated {
                event_type: other.event_type(),
            })
        }
        (Some(view), _) => view,
    };
    view.updated_at = recorded_at;
    match event {
        TaskEvent::TaskCreated(_) => unreachable!("handled above"),
        TaskEvent::TaskCanceled(_) => view.status = TaskStatus::Canceled,
        TaskEvent::TaskMetadataSet(e) => view.metadata = e.metadata.clone(),
        TaskEvent::TaskUniqueIdSet(e) => {
            view.unique_id = Some(e.unique_id.clone());
            if let Some(flag) = e.clear_unique_id_on_error {
                view.clear_unique_id_on_error = flag;
            }
        }
        TaskEvent::TaskUniqueIdCleared(_) => view.unique_id = None,
        TaskEvent::TaskTagsAdded(e) => add_tags(&mut view.tags, &e.tags),
        TaskEvent::TaskTagsReplaced(e) => view.tags = e.tags.clone(),
        TaskEvent::TaskTagsRemoved(e) => remove_tags(&mut view.tags, &e.tags),
        TaskEvent::TaskCompleted(e) => {
            view.status = TaskStatus::Completed;
            view.completed_at = Some(recorded_at);
            view.response = Some(e.response.clone());
            view.customer_review_status = Some(ReviewStatus::Pending);
        }
        TaskEvent::TaskErrored(e) => {
            view.status = TaskStatus::Error;
            view.response = Some(e.error.clone());
        }
        TaskEvent::TaskAudited(e) => {
            view.audits.push(AuditView {
                audited_by: e.audited_by.clone(),
                audited_at: recorded_at,
                audit_time_secs: e.audit_time_secs,
                audit_result: e.audit_result.clone(),
                audit_source: e.audit_source,
                comments: e.comments.clone(),
            });
            match e.audit_source {
                AuditSource::Customer => {
                    view.customer_review_status = ReviewStatus::parse(&e.audit_result);
                }
                AuditSource::Refonte if e.audit_result == "fixed" => {
                    if let Some(response) = &e.response {
                        view.response = Some(response.clone());
                    }
                    view.customer_review_status = Some(ReviewStatus::Fixed);
                }
                AuditSource::Refonte => {}
            }
        }
        TaskEvent::CallbackDelivered(_) => view.callback_completed = true,
        TaskEvent::CallbackFailed(_) => {}
    }
    Ok(view)
}

/// Appends the tags not present yet, in order. Sets keep this linear in the tag counts.
pub fn add_tags(tags: &mut Vec<String>, added: &[String]) {
    let mut present: HashSet<String> = tags.iter().cloned().collect();
    for tag in added {
        if present.insert(tag.clone()) {
            tags.push(tag.clone());
        }
    }
}

/// Drops every tag in `removed`, keeping the order of the rest.
pub fn remove_tags(tags: &mut Vec<String>, removed: &[String]) {
    let removed: HashSet<&str> = removed.iter().map(String::as_str).collect();
    tags.retain(|t| !removed.contains(t.as_str()));
}

/// Folds a whole history, oldest first.
pub fn fold_all<'a>(
    task_id: &str,
    events: impl IntoIterator<Item = (DateTime<Utc>, &'a TaskEvent)>,
) -> Result<Option<TaskView>, FoldError> {
    let mut view = None;
    for (recorded_at, event) in events {
        view = Some(fold(view, task_id, recorded_at, event)?);
    }
    Ok(view)
}

impl TaskView {
    /// The exact bytes stored and served for this view.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a task view always serializes")
    }

    /// The reference's reduced document for `limited_response=true`.
    pub fn limited(&self) -> Value {
        let mut doc = json!({
            "task_id": self.task_id,
            "status": self.status,
            "metadata": self.metadata,
        });
        if let Some(project) = &self.project {
            doc["project"] = json!(project);
        }
        doc
    }
}

/// The row of the list index: one column per list filter, times in microseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListRow {
    pub task_id: String,
    pub task_type: String,
    pub status: &'static str,
    pub project: Option<String>,
    pub batch: Option<String>,
    pub customer_review_status: Option<String>,
    pub unique_id: Option<String>,
    pub tags: Vec<String>,
    pub created_at_us: i64,
    pub updated_at_us: i64,
    pub completed_at_us: Option<i64>,
}

impl ListRow {
    pub fn of(view: &TaskView) -> ListRow {
        ListRow {
            task_id: view.task_id.clone(),
            task_type: view.task_type.clone(),
            status: view.status.as_str(),
            project: view.project.clone(),
            batch: view.batch.clone(),
            customer_review_status: view.customer_review_status.map(|r| r.as_str().to_string()),
            unique_id: view.unique_id.clone(),
            tags: view.tags.clone(),
            created_at_us: view.created_at.timestamp_micros(),
            updated_at_us: view.updated_at.timestamp_micros(),
            completed_at_us: view.completed_at.map(|t| t.timestamp_micros()),
        }
    }
}

/// How the account's unique_id index must change when a task's view goes from `before` to
/// `after`: the old value released, the new one reserved.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UniqueIdChange {
    pub release: Option<String>,
    pub reserve: Option<String>,
}

impl UniqueIdChange {
    pub fn between(before: Option<&TaskView>, after: &TaskView) -> UniqueIdChange {
        let old = before.and_then(|v| v.unique_id.clone());
        if old == after.unique_id {
            return UniqueIdChange::default();
        }
        UniqueIdChange {
            release: old,
            reserve: after.unique_id.clone(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.release.is_none() && self.reserve.is_none()
    }
}

mod millis {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

mod opt_millis {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::millis::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| {
            DateTime::parse_from_rfc3339(&s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests;
