//! The task types this ledger accepts, one enum instead of a hand-kept list.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::values::{preview, Params, ValueError};

/// The task types this ledger accepts, each with the rules of its own fields.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum TaskType {
    #[default]
    Categorization,
    ImageAnnotation,
    VideoAnnotation,
    LidarSegmentation,
    DocumentTranscription,
    Comparison,
    TextCollection,
}

impl TaskType {
    pub const ALL: [TaskType; 7] = [
        TaskType::Categorization,
        TaskType::ImageAnnotation,
        TaskType::VideoAnnotation,
        TaskType::LidarSegmentation,
        TaskType::DocumentTranscription,
        TaskType::Comparison,
        TaskType::TextCollection,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskType::Categorization => "categorization",
            TaskType::ImageAnnotation => "imageannotation",
            TaskType::VideoAnnotation => "videoannotation",
            TaskType::LidarSegmentation => "lidarsegmentation",
            TaskType::DocumentTranscription => "documenttranscription",
            TaskType::Comparison => "comparison",
            TaskType::TextCollection => "textcollection",
        }
    }

    pub fn parse(s: &str) -> Result<TaskType, ValueError> {
        TaskType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                ValueError(format!(
                    "Unknown task type {}; expected one of {}",
                    preview(s),
                    TaskType::ALL.map(TaskType::as_str).join(", ")
                ))
            })
    }

    /// The rules of the type's own fields; the message names the field.
    pub fn check_params(self, params: &Params) -> Result<(), String> {
        let params = params.as_map();
        match self {
            TaskType::Categorization => {
                non_empty_string(params, "attachment")?;
                non_empty_string(params, "attachment_type")?;
                match params.get("categories") {
                    Some(Value::Array(items)) if !items.is_empty() => {
                        if items.iter().all(is_category) {
                            Ok(())
                        } else {
                            Err("categories must hold non-empty strings or objects".into())
                        }
                    }
                    _ => Err("categories must be a non-empty array".into()),
                }
            }
            TaskType::ImageAnnotation => {
                non_empty_string(params, "attachment")?;
                optional_string(params, "attachment_type")?;
                let Some(Value::Object(geometries)) = params.get("geometries") else {
                    return Err("geometries must be an object with at least one geometry".into());
                };
                let usable = geometries.values().any(
                    |g| matches!(g.get("objects_to_annotate"), Some(Value::Array(o)) if !o.is_empty()),
                );
                if usable {
                    Ok(())
                } else {
                    Err(
                        "geometries must hold at least one geometry with a non-empty \
                         objects_to_annotate"
                            .into(),
                    )
                }
            }
            _ => {
                optional_string(params, "attachment_type")?;
                let has_attachment = matches!(params.get("attachment"),
                    Some(Value::String(s)) if !s.trim().is_empty());
                let has_attachments =
                    matches!(params.get("attachments"), Some(Value::Array(a)) if !a.is_empty());
                let has_fields = self == TaskType::TextCollection
                    && matches!(params.get("fields"), Some(Value::Array(f)) if !f.is_empty());
                if has_attachment || has_attachments || has_fields {
                    Ok(())
                } else if self == TaskType::TextCollection {
                    Err("attachment, attachments or fields is required".into())
                } else {
                    Err(
                        "attachment (a non-empty string) or attachments (a non-empty array) \
                         is required"
                            .into(),
                    )
                }
            }
        }
    }
}

impl fmt::Display for TaskType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn is_category(value: &Value) -> bool {
    match value {
        Value::String(s) => !s.trim().is_empty(),
        Value::Object(_) => true,
        _ => false,
    }
}

fn non_empty_string(params: &Map<String, Value>, field: &str) -> Result<(), String> {
    match params.get(field) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(()),
        _ => Err(format!(
            "{field} is required and must be a non-empty string"
        )),
    }
}

fn optional_string(params: &Map<String, Value>, field: &str) -> Result<(), String> {
    match params.get(field) {
        None | Some(Value::String(_)) => Ok(()),
        Some(_) => Err(format!("{field} must be a string")),
    }
}

impl TryFrom<&str> for TaskType {
    type Error = ValueError;
    fn try_from(s: &str) -> Result<Self, ValueError> {
        TaskType::parse(s)
    }
}
