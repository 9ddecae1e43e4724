use serde_json::{Map, Value};
use taskledger_events::Scope;

/// A request to change one task, with the scope of the key that asked for it: the aggregate
/// decides what each scope may do, so no route can forget a check.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskCommand {
    pub scope: Scope,
    pub action: TaskAction,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TaskAction {
    Create(CreateTask),
    Cancel {
        clear_unique_id: bool,
    },
    SetMetadata {
        metadata: Value,
    },
    SetUniqueId {
        unique_id: String,
    },
    ClearUniqueId,
    AddTags {
        tags: Vec<String>,
    },
    SetTags {
        tags: Vec<String>,
    },
    RemoveTags {
        tags: Vec<String>,
    },
    Complete {
        response: Value,
    },
    Error {
        error: Value,
    },
    CustomerAudit {
        audited_by: String,
        accepted: bool,
        comments: Option<String>,
    },
    ContributorAudit {
        audited_by: String,
        audit_result: String,
        audit_time_secs: Option<u64>,
        response: Option<Value>,
    },
    RecordCallbackDelivered {
        delivery_id: String,
        for_sequence: i64,
        attempts: u32,
        status_code: u16,
    },
    RecordCallbackFailed {
        delivery_id: String,
        for_sequence: i64,
        attempts: u32,
        last_error: String,
    },
}

/// The body of `POST /v1/task/{type}`: the common fields typed, the type's own fields in
/// `params` exactly as given.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CreateTask {
    pub task_type: String,
    pub instruction: Option<String>,
    pub callback_url: Option<String>,
    pub project: Option<String>,
    pub batch: Option<String>,
    pub unique_id: Option<String>,
    pub metadata: Option<Value>,
    pub tags: Option<Vec<String>>,
    pub clear_unique_id_on_error: bool,
    pub params: Map<String, Value>,
}

impl TaskCommand {
    pub fn new(scope: Scope, action: TaskAction) -> TaskCommand {
        TaskCommand { scope, action }
    }

    pub fn is_create(&self) -> bool {
        matches!(self.action, TaskAction::Create(_))
    }
}

impl TaskAction {
    /// The command's name, as the metrics `command` label. The match is exhaustive on
    /// purpose: a new command must pick its name here rather than fall into a catch-all.
    pub fn name(&self) -> &'static str {
        match self {
            TaskAction::Create(_) => "create",
            TaskAction::Cancel { .. } => "cancel",
            TaskAction::SetMetadata { .. } => "set_metadata",
            TaskAction::SetUniqueId { .. } => "set_unique_id",
            TaskAction::ClearUniqueId => "clear_unique_id",
            TaskAction::AddTags { .. } => "add_tags",
            TaskAction::SetTags { .. } => "set_tags",
            TaskAction::RemoveTags { .. } => "remove_tags",
            TaskAction::Complete { .. } => "complete",
            TaskAction::Error { .. } => "error",
            TaskAction::CustomerAudit { .. } => "customer_audit",
            TaskAction::ContributorAudit { .. } => "contributor_audit",
            TaskAction::RecordCallbackDelivered { .. } => "record_callback_delivered",
            TaskAction::RecordCallbackFailed { .. } => "record_callback_failed",
        }
    }
}
