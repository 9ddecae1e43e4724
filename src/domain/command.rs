use taskledger_events::Scope;

use super::values::{
    AuditResult, CallbackUrl, Identifier, Json, Metadata, Params, Tags, Text, UniqueId,
};
use super::TaskType;

/// A request to change one task, with the scope of the key that asked for it: the aggregate
/// decides what each scope may do, so no route can forget a check.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskCommand {
    pub scope: Scope,
    pub action: TaskAction,
}

/// Each action carries parsed values (see [`super::values`]): the limits and formats hold by
/// construction, and the aggregate decides only what depends on the task's state.
// A command lives for one request, so the size of its largest variant (a create with its
// parsed URL) costs nothing worth a Box at every construction site.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum TaskAction {
    Create(CreateTask),
    Cancel {
        clear_unique_id: bool,
    },
    SetMetadata {
        metadata: Metadata,
    },
    SetUniqueId {
        unique_id: UniqueId,
        /// Set the task's `clear_unique_id_on_error` too; `None` leaves it as it is.
        clear_unique_id_on_error: Option<bool>,
    },
    ClearUniqueId,
    AddTags {
        tags: Tags,
    },
    SetTags {
        tags: Tags,
    },
    RemoveTags {
        tags: Tags,
    },
    Complete {
        response: Json,
    },
    Error {
        error: Json,
    },
    CustomerAudit {
        audited_by: String,
        /// `None`: a review that only comments.
        accepted: Option<bool>,
        comments: Option<Text>,
    },
    ContributorAudit {
        audited_by: String,
        audit_result: AuditResult,
        audit_time_secs: Option<u64>,
        response: Option<Json>,
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

/// A create: the common fields typed, the type's own fields in `params` exactly as given.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CreateTask {
    pub task_type: TaskType,
    pub instruction: Option<Text>,
    pub callback_url: Option<CallbackUrl>,
    pub project: Option<Identifier>,
    pub batch: Option<Identifier>,
    pub unique_id: Option<UniqueId>,
    pub metadata: Option<Metadata>,
    pub tags: Tags,
    pub clear_unique_id_on_error: bool,
    pub params: Params,
    /// The project params version the task inherited from.
    pub project_param_version: Option<u32>,
    /// Created with a test-mode key; set by the ledger from the command's ledger.
    pub is_test: bool,
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
