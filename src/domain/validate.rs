//! Field rules shared by several commands. Each returns the 400 message naming the field.

use serde_json::{Map, Value};

use super::TaskError;

pub const METADATA_MAX_BYTES: usize = 10 * 1024;

pub const TASK_TYPES: &[&str] = &[
    "categorization",
    "imageannotation",
    "videoannotation",
    "lidarsegmentation",
    "documenttranscription",
    "comparison",
    "textcollection",
];

pub fn metadata(value: &Value) -> Result<(), TaskError> {
    if !value.is_object() {
        return Err(TaskError::invalid("metadata must be a JSON object"));
    }
    let size = value.to_string().len();
    if size > METADATA_MAX_BYTES {
        return Err(TaskError::invalid(format!(
            "metadata is {size} bytes serialized; the limit is {METADATA_MAX_BYTES}"
        )));
    }
    Ok(())
}

/// Checks every tag and returns them de-duplicated, first occurrence kept.
pub fn tags(tags: &[String]) -> Result<Vec<String>, TaskError> {
    let mut out: Vec<String> = Vec::with_capacity(tags.len());
    for tag in tags {
        if tag.trim().is_empty() {
            return Err(TaskError::invalid("tags must be non-empty strings"));
        }
        if !out.contains(tag) {
            out.push(tag.clone());
        }
    }
    Ok(out)
}

pub fn unique_id(value: &str) -> Result<(), TaskError> {
    if value.trim().is_empty() {
        return Err(TaskError::invalid("unique_id must be a non-empty string"));
    }
    Ok(())
}

pub fn callback_url(value: &str) -> Result<(), TaskError> {
    let parsed = url::Url::parse(value).map_err(|_| {
        TaskError::invalid(format!(
            "callback_url {value:?} is not a valid http or https URL"
        ))
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(TaskError::invalid(format!(
            "callback_url {value:?} is not a valid http or https URL"
        )));
    }
    Ok(())
}

/// The rules of each task type's own fields.
pub fn params(task_type: &str, params: &Map<String, Value>) -> Result<(), TaskError> {
    match task_type {
        "categorization" => {
            non_empty_string(params, "attachment")?;
            non_empty_string(params, "attachment_type")?;
            match params.get("categories") {
                Some(Value::Array(items)) if !items.is_empty() => {
                    if items.iter().all(is_category) {
                        Ok(())
                    } else {
                        Err(TaskError::invalid(
                            "categories must hold non-empty strings or objects",
                        ))
                    }
                }
                _ => Err(TaskError::invalid("categories must be a non-empty array")),
            }
        }
        "imageannotation" => {
            non_empty_string(params, "attachment")?;
            optional_string(params, "attachment_type")?;
            let Some(Value::Object(geometries)) = params.get("geometries") else {
                return Err(TaskError::invalid(
                    "geometries must be an object with at least one geometry",
                ));
            };
            let usable = geometries.values().any(
                |g| matches!(g.get("objects_to_annotate"), Some(Value::Array(o)) if !o.is_empty()),
            );
            if usable {
                Ok(())
            } else {
                Err(TaskError::invalid(
                    "geometries must hold at least one geometry with a non-empty objects_to_annotate",
                ))
            }
        }
        _ => {
            optional_string(params, "attachment_type")?;
            let has_attachment =
                matches!(params.get("attachment"), Some(Value::String(s)) if !s.trim().is_empty());
            let has_attachments =
                matches!(params.get("attachments"), Some(Value::Array(a)) if !a.is_empty());
            let has_fields = task_type == "textcollection"
                && matches!(params.get("fields"), Some(Value::Array(f)) if !f.is_empty());
            if has_attachment || has_attachments || has_fields {
                Ok(())
            } else if task_type == "textcollection" {
                Err(TaskError::invalid(
                    "attachment, attachments or fields is required",
                ))
            } else {
                Err(TaskError::invalid(
                    "attachment (a non-empty string) or attachments (a non-empty array) is required",
                ))
            }
        }
    }
}

fn is_category(value: &Value) -> bool {
    match value {
        Value::String(s) => !s.trim().is_empty(),
        Value::Object(_) => true,
        _ => false,
    }
}

fn non_empty_string(params: &Map<String, Value>, field: &str) -> Result<(), TaskError> {
    match params.get(field) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(()),
        _ => Err(TaskError::invalid(format!(
            "{field} is required and must be a non-empty string"
        ))),
    }
}

fn optional_string(params: &Map<String, Value>, field: &str) -> Result<(), TaskError> {
    match params.get(field) {
        None | Some(Value::String(_)) => Ok(()),
        Some(_) => Err(TaskError::invalid(format!("{field} must be a string"))),
    }
}
