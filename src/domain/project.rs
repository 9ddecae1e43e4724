//! The project aggregate: every rule of what may happen to a project lives in
//! [`Project::handle`]; [`Project::apply`] only assigns.

use serde_json::{Map, Value};
use taskledger_events::{ProjectCreated, ProjectEvent, ProjectParamsSet};

use super::{Identifier, PlatformError, TaskType};

/// What may be asked of a project.
#[derive(Debug, Clone, PartialEq)]
pub enum ProjectCommand {
    Create {
        name: Identifier,
        task_type: TaskType,
        /// `None` or an object; an empty object counts as no params.
        params: Option<Map<String, Value>>,
        is_test: bool,
        /// The task whose creation names this missing project.
        created_by_task: Option<String>,
    },
    SetParams {
        params: Map<String, Value>,
    },
}

/// What the rules need to know about a project, rebuilt from its events.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Project {
    exists: bool,
    /// The version of the latest params; 0 while it has none.
    params_version: u32,
}

impl Project {
    /// The state of an existing project as its view row holds it (the version of its
    /// latest params), so a command need not fold the project's stream.
    pub fn from_view(params_version: u32) -> Project {
        Project {
            exists: true,
            params_version,
        }
    }

    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a ProjectEvent>) -> Project {
        let mut project = Project::default();
        for e in events {
            project.apply(e);
        }
        project
    }

    pub fn handle(&self, command: ProjectCommand) -> Result<Vec<ProjectEvent>, PlatformError> {
        match command {
            ProjectCommand::Create {
                name,
                task_type,
                params,
                is_test,
                created_by_task,
            } => {
                if self.exists {
                    return Err(PlatformError::AlreadyExists(format!(
                        "A project named {:?} already exists.",
                        name.as_str()
                    )));
                }
                Ok(vec![ProjectEvent::ProjectCreated(ProjectCreated {
                    name: name.into_string(),
                    task_type: task_type.as_str().to_string(),
                    params: params.filter(|p| !p.is_empty()).map(Value::Object),
                    is_test,
                    created_by_task,
                })])
            }
            ProjectCommand::SetParams { params } => {
                if !self.exists {
                    return Err(PlatformError::NotFound("Project not found.".into()));
                }
                Ok(vec![ProjectEvent::ProjectParamsSet(ProjectParamsSet {
                    version: self.params_version + 1,
                    params: Value::Object(params),
                })])
            }
        }
    }

    pub fn apply(&mut self, event: &ProjectEvent) {
        match event {
            ProjectEvent::ProjectCreated(e) => {
                self.exists = true;
                self.params_version = u32::from(e.params.is_some());
            }
            ProjectEvent::ProjectParamsSet(e) => self.params_version = e.version,
        }
    }
}

/// The fields a task leaves out, taken from its project's latest params: the task's own
/// fields win. `task` is the create body's fields (common and type params alike).
pub fn inherit(task: &mut Map<String, Value>, project_params: &Map<String, Value>) {
    for (field, value) in project_params {
        if !task.contains_key(field) || task.get(field) == Some(&Value::Null) {
            task.insert(field.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn create(params: Option<Value>) -> ProjectCommand {
        ProjectCommand::Create {
            name: Identifier::parse("kittens").unwrap(),
            task_type: TaskType::Categorization,
            params: params.map(|p| p.as_object().unwrap().clone()),
            is_test: false,
            created_by_task: None,
        }
    }

    fn given(commands: Vec<ProjectCommand>) -> Project {
        let mut project = Project::default();
        for c in commands {
            for e in project.handle(c).unwrap() {
                project.apply(&e);
            }
        }
        project
    }

    #[test]
    fn creating_a_project_with_params_makes_them_version_1() {
        let events = given(vec![])
            .handle(create(Some(json!({"instruction": "Label"}))))
            .unwrap();
        let ProjectEvent::ProjectCreated(created) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(created.params, Some(json!({"instruction": "Label"})));
        let project = Project::from_events(&events);
        let set = project
            .handle(ProjectCommand::SetParams { params: Map::new() })
            .unwrap();
        assert!(matches!(&set[0], ProjectEvent::ProjectParamsSet(p) if p.version == 2));
    }

    #[test]
    fn a_project_created_without_params_gets_version_1_from_its_first_set_params() {
        let project = given(vec![create(None)]);
        let set = project
            .handle(ProjectCommand::SetParams {
                params: json!({"instruction": "x"}).as_object().unwrap().clone(),
            })
            .unwrap();
        assert!(matches!(&set[0], ProjectEvent::ProjectParamsSet(p) if p.version == 1));
    }

    #[test]
    fn a_project_rebuilt_from_its_view_decides_as_the_one_folded_from_its_events() {
        let mut commands = vec![create(None)];
        for n in 1..=3u32 {
            commands.push(ProjectCommand::SetParams {
                params: json!({ "n": n }).as_object().unwrap().clone(),
            });
        }
        let command = ProjectCommand::SetParams { params: Map::new() };
        assert_eq!(
            Project::from_view(3).handle(command.clone()).unwrap(),
            given(commands).handle(command).unwrap()
        );
        assert!(matches!(
            Project::from_view(3).handle(create(None)),
            Err(PlatformError::AlreadyExists(_))
        ));
    }

    #[test]
    fn creating_a_project_twice_is_refused_as_a_conflict() {
        let project = given(vec![create(None)]);
        assert!(matches!(
            project.handle(create(None)),
            Err(PlatformError::AlreadyExists(_))
        ));
    }

    #[test]
    fn setting_params_of_a_missing_project_is_not_found() {
        assert!(matches!(
            Project::default().handle(ProjectCommand::SetParams { params: Map::new() }),
            Err(PlatformError::NotFound(_))
        ));
    }

    #[test]
    fn a_task_keeps_its_own_fields_and_inherits_the_rest() {
        let mut task = json!({"instruction": "mine", "attachment": "a"})
            .as_object()
            .unwrap()
            .clone();
        let params = json!({"instruction": "project's", "categories": ["x"]});
        inherit(&mut task, params.as_object().unwrap());
        assert_eq!(
            Value::Object(task),
            json!({"instruction": "mine", "attachment": "a", "categories": ["x"]})
        );
    }
}
