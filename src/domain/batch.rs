//! The batch aggregate: `staging`, then `in_progress` once finalized, then `completed` once
//! finalized with every task finished. Every rule lives in [`Batch::handle`]; [`Batch::apply`]
//! only assigns. How many of its tasks are pending is not the aggregate's state (it would
//! grow a batch's history with each task): the counts projection gives it to the command.

use serde_json::Value;
use taskledger_events::{
    BatchCompleted, BatchCreated, BatchEvent, BatchFinalized, BatchMetadataSet,
};

use super::{Identifier, PlatformError};

/// Where a batch is in its life.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum BatchStatus {
    #[default]
    Staging,
    InProgress,
    Completed,
}

impl BatchStatus {
    pub const ALL: [BatchStatus; 3] = [
        BatchStatus::Staging,
        BatchStatus::InProgress,
        BatchStatus::Completed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Staging => "staging",
            BatchStatus::InProgress => "in_progress",
            BatchStatus::Completed => "completed",
        }
    }

    pub fn parse(s: &str) -> Option<BatchStatus> {
        BatchStatus::ALL.into_iter().find(|b| b.as_str() == s)
    }
}

/// How many of a batch's tasks are in each status, from the counts projection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchCounts {
    pub pending: u64,
    pub completed: u64,
    pub error: u64,
    pub canceled: u64,
}

/// What may be asked of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchCommand {
    Create {
        name: Identifier,
        project: Identifier,
        callback: Option<String>,
        metadata: Value,
        calibration_batch: bool,
        self_label_batch: bool,
        is_test: bool,
        created_by_task: Option<String>,
    },
    SetMetadata {
        metadata: Value,
    },
    Finalize {
        counts: BatchCounts,
    },
    /// A task of the batch finished; `counts` are the batch's counts after it.
    TaskFinished {
        counts: BatchCounts,
    },
    /// A task asks to join the batch, from `project`.
    AdmitTask {
        project: String,
    },
}

/// What the rules need to know about a batch, rebuilt from its events.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Batch {
    exists: bool,
    name: String,
    project: String,
    status: BatchStatus,
}

impl Batch {
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a BatchEvent>) -> Batch {
        let mut batch = Batch::default();
        for e in events {
            batch.apply(e);
        }
        batch
    }

    /// The state of an existing batch as its view row holds it: what
    /// [`BatchCommand::AdmitTask`] needs, without folding the batch's stream on every task.
    pub fn from_view(name: &str, project: &str, status: BatchStatus) -> Batch {
        Batch {
            exists: true,
            name: name.to_string(),
            project: project.to_string(),
            status,
        }
    }

    pub fn status(&self) -> BatchStatus {
        self.status
    }

    pub fn handle(&self, command: BatchCommand) -> Result<Vec<BatchEvent>, PlatformError> {
        if let BatchCommand::Create {
            name,
            project,
            callback,
            metadata,
            calibration_batch,
            self_label_batch,
            is_test,
            created_by_task,
        } = command
        {
            if self.exists {
                return Err(PlatformError::AlreadyExists(format!(
                    "A batch named {:?} already exists.",
                    name.as_str()
                )));
            }
            if !metadata.is_object() {
                return Err(PlatformError::Invalid(
                    "metadata must be a JSON object".into(),
                ));
            }
            return Ok(vec![BatchEvent::BatchCreated(BatchCreated {
                name: name.into_string(),
                project: project.into_string(),
                callback: callback.filter(|c| !c.is_empty()),
                metadata,
                calibration_batch,
                self_label_batch,
                is_test,
                created_by_task,
            })]);
        }
        if !self.exists {
            return Err(PlatformError::NotFound("Batch not found.".into()));
        }
        match command {
            BatchCommand::Create { .. } => unreachable!("handled above"),
            BatchCommand::SetMetadata { metadata } => {
                if !metadata.is_object() {
                    return Err(PlatformError::Invalid(
                        "metadata must be a JSON object".into(),
                    ));
                }
                Ok(vec![BatchEvent::BatchMetadataSet(BatchMetadataSet {
                    metadata,
                })])
            }
            BatchCommand::Finalize { counts } => {
                // Finalizing again is not an error and records nothing, as the reference
                // answers a finalized batch.
                if self.status != BatchStatus::Staging {
                    return Ok(vec![]);
                }
                let mut events = vec![BatchEvent::BatchFinalized(BatchFinalized {})];
                if counts.pending == 0 {
                    events.push(completed(counts));
                }
                Ok(events)
            }
            BatchCommand::TaskFinished { counts } => {
                if self.status == BatchStatus::InProgress && counts.pending == 0 {
                    Ok(vec![completed(counts)])
                } else {
                    Ok(vec![])
                }
            }
            BatchCommand::AdmitTask { project } => {
                if self.status != BatchStatus::Staging {
                    return Err(PlatformError::Invalid(format!(
                        "Batch {:?} is {}: tasks may join a batch only while it is staging.",
                        self.name,
                        self.status.as_str()
                    )));
                }
                if project != self.project {
                    return Err(PlatformError::Invalid(format!(
                        "Batch {:?} belongs to project {:?}, not {:?}.",
                        self.name, self.project, project
                    )));
                }
                Ok(vec![])
            }
        }
    }

    pub fn apply(&mut self, event: &BatchEvent) {
        match event {
            BatchEvent::BatchCreated(e) => {
                self.exists = true;
                self.name = e.name.clone();
                self.project = e.project.clone();
                self.status = BatchStatus::Staging;
            }
            BatchEvent::BatchMetadataSet(_) => {}
            BatchEvent::BatchFinalized(_) => self.status = BatchStatus::InProgress,
            BatchEvent::BatchCompleted(_) => self.status = BatchStatus::Completed,
        }
    }
}

fn completed(counts: BatchCounts) -> BatchEvent {
    BatchEvent::BatchCompleted(BatchCompleted {
        completed: counts.completed,
        error: counts.error,
        canceled: counts.canceled,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn create() -> BatchCommand {
        BatchCommand::Create {
            name: Identifier::parse("b1").unwrap(),
            project: Identifier::parse("kittens").unwrap(),
            callback: None,
            metadata: json!({}),
            calibration_batch: false,
            self_label_batch: false,
            is_test: false,
            created_by_task: None,
        }
    }

    fn given(commands: Vec<BatchCommand>) -> Batch {
        let mut batch = Batch::default();
        for c in commands {
            for e in batch.handle(c).unwrap() {
                batch.apply(&e);
            }
        }
        batch
    }

    fn pending(n: u64) -> BatchCounts {
        BatchCounts {
            pending: n,
            completed: 2,
            ..BatchCounts::default()
        }
    }

    fn types(events: &[BatchEvent]) -> Vec<&'static str> {
        events.iter().map(BatchEvent::event_type).collect()
    }

    #[test]
    fn a_new_batch_is_staging() {
        assert_eq!(given(vec![create()]).status(), BatchStatus::Staging);
    }

    #[test]
    fn finalizing_with_pending_tasks_moves_to_in_progress_only() {
        let events = given(vec![create()])
            .handle(BatchCommand::Finalize { counts: pending(1) })
            .unwrap();
        assert_eq!(types(&events), ["BatchFinalized"]);
    }

    #[test]
    fn finalizing_when_every_task_is_finished_completes_the_batch_at_once() {
        let events = given(vec![create()])
            .handle(BatchCommand::Finalize { counts: pending(0) })
            .unwrap();
        assert_eq!(types(&events), ["BatchFinalized", "BatchCompleted"]);
        assert_eq!(Batch::from_events(&events).status(), BatchStatus::Completed);
    }

    #[test]
    fn finalizing_twice_records_nothing_the_second_time() {
        let batch = given(vec![
            create(),
            BatchCommand::Finalize { counts: pending(1) },
        ]);
        assert_eq!(
            batch.handle(BatchCommand::Finalize { counts: pending(1) }),
            Ok(vec![])
        );
    }

    #[test]
    fn the_last_task_finishing_completes_a_finalized_batch_once() {
        let batch = given(vec![
            create(),
            BatchCommand::Finalize { counts: pending(1) },
        ]);
        let events = batch
            .handle(BatchCommand::TaskFinished { counts: pending(0) })
            .unwrap();
        assert_eq!(types(&events), ["BatchCompleted"]);
        let done = given(vec![
            create(),
            BatchCommand::Finalize { counts: pending(1) },
            BatchCommand::TaskFinished { counts: pending(0) },
        ]);
        assert_eq!(done.status(), BatchStatus::Completed);
        assert_eq!(
            done.handle(BatchCommand::TaskFinished { counts: pending(0) }),
            Ok(vec![])
        );
    }

    #[test]
    fn a_task_finishing_in_a_staging_batch_completes_nothing() {
        let batch = given(vec![create()]);
        assert_eq!(
            batch.handle(BatchCommand::TaskFinished { counts: pending(0) }),
            Ok(vec![])
        );
    }

    #[test]
    fn a_task_may_not_join_a_batch_that_is_no_longer_staging() {
        let batch = given(vec![
            create(),
            BatchCommand::Finalize { counts: pending(1) },
        ]);
        let Err(PlatformError::Invalid(message)) = batch.handle(BatchCommand::AdmitTask {
            project: "kittens".into(),
        }) else {
            panic!("admitted")
        };
        assert!(
            message.contains("\"b1\"") && message.contains("in_progress"),
            "{message}"
        );
    }

    #[test]
    fn a_batch_belongs_to_one_project() {
        let batch = given(vec![create()]);
        assert!(batch
            .handle(BatchCommand::AdmitTask {
                project: "kittens".into()
            })
            .is_ok());
        let Err(PlatformError::Invalid(message)) = batch.handle(BatchCommand::AdmitTask {
            project: "puppies".into(),
        }) else {
            panic!("admitted")
        };
        assert!(
            message.contains("kittens") && message.contains("puppies"),
            "{message}"
        );
    }

    #[test]
    fn creating_a_batch_twice_is_a_conflict_and_commands_on_a_missing_one_are_not_found() {
        assert!(matches!(
            given(vec![create()]).handle(create()),
            Err(PlatformError::AlreadyExists(_))
        ));
        assert!(matches!(
            Batch::default().handle(BatchCommand::SetMetadata {
                metadata: json!({})
            }),
            Err(PlatformError::NotFound(_))
        ));
    }

    #[test]
    fn batch_metadata_must_be_an_object() {
        assert!(matches!(
            given(vec![create()]).handle(BatchCommand::SetMetadata {
                metadata: json!([1])
            }),
            Err(PlatformError::Invalid(_))
        ));
    }
}
