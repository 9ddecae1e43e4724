//! The task aggregate: every rule of what may happen to a task lives in [`Task::handle`].

mod batch;
mod command;
mod id;
pub mod limits;
mod project;
mod task;
mod task_type;
pub mod values;

pub use batch::{Batch, BatchCommand, BatchCounts, BatchStatus};
pub use command::{CreateTask, TaskAction, TaskCommand};
pub use id::TaskId;
pub use project::{inherit, Project, ProjectCommand};
pub use task::{LedgerEvent, Task};
pub use task_type::{rules_markdown, Requirement, TaskType, TypeRules, TYPE_RULES};
pub use taskledger_projections::{ReviewStatus, TaskStatus};
pub use values::{
    AuditResult, CallbackUrl, Identifier, Json, Metadata, Params, Tag, Tags, Text, UniqueId,
    ValueError,
};

/// Why the aggregate refused a command. Each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// 400: the command breaks a rule; the message names the field or the state.
    #[error("{0}")]
    Invalid(String),
    /// 404: no such task in this account.
    #[error("Task with that ID not found.")]
    NotFound,
    /// 403: the key's scope may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// 409: a create for a task id that exists.
    #[error("a task with this id already exists")]
    AlreadyExists,
}

impl TaskError {
    pub fn invalid(message: impl Into<String>) -> TaskError {
        TaskError::Invalid(message.into())
    }
}

/// Why a project or batch command was refused. Each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlatformError {
    /// 400: the command breaks a rule; the message names the field or the state.
    #[error("{0}")]
    Invalid(String),
    /// 404: no such project or batch in this account and mode.
    #[error("{0}")]
    NotFound(String),
    /// 409: the name is taken in this account and mode.
    #[error("{0}")]
    AlreadyExists(String),
    /// 413: an event of the command would not fit in one record of the event topic.
    #[error("{0}")]
    TooLarge(String),
}
