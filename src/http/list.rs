//! `GET /v1/tasks`: filters, keyset pagination with an opaque `next_token`.

use axum::extract::{RawQuery, State};
use axum::response::Response;
use axum::routing::get;
use base64::Engine;
use serde_json::{json, Value};
use taskledger_projections::TaskView;
use utoipa::OpenApi;

use super::extract::{parse_bool, parse_limit, parse_time, query_pairs, Caller};
use super::openapi::{ListParams, TaskPage};
use super::tasks::task_json;
use super::{ApiError, AppState, Routes};
use crate::domain::validate::TASK_TYPES;
use crate::store::ListQuery;

pub(super) fn router() -> Routes {
    Routes::new().route("/v1/tasks", get(list))
}

#[derive(OpenApi)]
#[openapi(paths(list))]
pub(super) struct Docs;

const STATUSES: &[&str] = &["pending", "completed", "canceled", "error"];
const REVIEW_STATUSES: &[&str] = &["pending", "accepted", "rejected", "fixed"];

struct Options {
    query: ListQuery,
    include_attachment_url: bool,
    limited_response: bool,
}

fn parse(pairs: Vec<(String, String)>) -> Result<Options, ApiError> {
    let mut q = ListQuery {
        limit: 100,
        ..ListQuery::default()
    };
    let mut include_attachment_url = false;
    let mut limited_response = false;
    let micros = |name: &str, v: &str| parse_time(name, v).map(|t| Some(t.timestamp_micros()));
    for (name, value) in pairs {
        match name.as_str() {
            "start_time" => q.created_from_us = micros(&name, &value)?,
            "end_time" => q.created_to_us = micros(&name, &value)?,
            "completed_after" => q.completed_after_us = micros(&name, &value)?,
            "completed_before" => q.completed_before_us = micros(&name, &value)?,
            "updated_after" => q.updated_after_us = micros(&name, &value)?,
            "updated_before" => q.updated_before_us = micros(&name, &value)?,
            "status" => q.statuses.extend(one_of(&name, &value, STATUSES)?),
            "type" => q.task_types.extend(one_of(&name, &value, TASK_TYPES)?),
            "customer_review_status" => {
                q.review_statuses
                    .extend(one_of(&name, &value, REVIEW_STATUSES)?)
            }
            "project" => q.project = Some(value),
            "batch" => q.batch = Some(value),
            "unique_id" => q.unique_ids.push(value),
            "tags" => q.tags.push(value),
            "limit" => q.limit = parse_limit(&value, 100)?,
            "next_token" if !value.is_empty() => q.after = Some(decode_token(&value)?),
            "include_attachment_url" => include_attachment_url = parse_bool(&name, &value)?,
            "limited_response" => limited_response = parse_bool(&name, &value)?,
            // Parameters we do not know are ignored, as clients send extras.
            _ => {}
        }
    }
    Ok(Options {
        query: q,
        include_attachment_url,
        limited_response,
    })
}

/// A comma-separated list whose every item must be known.
fn one_of(name: &str, value: &str, allowed: &[&str]) -> Result<Vec<String>, ApiError> {
    value
        .split(',')
        .map(str::trim)
        .map(|v| {
            if allowed.contains(&v) {
                Ok(v.to_string())
            } else {
                Err(ApiError::bad_request(format!(
                    "{name} must be one of {}; got {v:?}",
                    allowed.join(", ")
                )))
            }
        })
        .collect()
}

fn encode_token(created_us: i64, task_id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({ "c": created_us, "t": task_id }).to_string())
}

fn decode_token(token: &str) -> Result<(i64, String), ApiError> {
    let invalid = || ApiError::bad_request("next_token is not valid");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| invalid())?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    match (value["c"].as_i64(), value["t"].as_str()) {
        (Some(c), Some(t)) => Ok((c, t.to_string())),
        _ => Err(invalid()),
    }
}

/// The account's tasks, newest first, with keyset pagination.
#[utoipa::path(
    get,
    path = "/v1/tasks",
    tag = "tasks",
    operation_id = "list_tasks",
    description = "Tasks matching every given filter, newest `created_at` first (ties by task \
                   id). Pass `next_token` back to get the next page; it stays valid while tasks \
                   are added.",
    params(ListParams),
    responses((status = 200, description = "A page of tasks.", body = TaskPage))
)]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let options = parse(query_pairs(query.as_deref()))?;
    let page = state
        .ledger
        .store()
        .list_tasks(caller.account_id(), &options.query)
        .await?;
    let docs: Vec<String> = if options.include_attachment_url || options.limited_response {
        page.bodies
            .iter()
            .map(|body| reshape(body, &options))
            .collect::<Result<_, _>>()?
    } else {
        page.bodies
    };
    let next_token = match &page.next {
        Some((c, t)) => Value::String(encode_token(*c, t)),
        None => Value::Null,
    };
    // The stored task objects are spliced in as they are, byte for byte.
    let body = format!(
        "{{\"docs\":[{}],\"total\":{},\"limit\":{},\"offset\":0,\"has_more\":{},\"next_token\":{}}}",
        docs.join(","),
        page.total,
        options.query.limit,
        page.next.is_some(),
        next_token
    );
    Ok(task_json(body))
}

fn reshape(body: &str, options: &Options) -> Result<String, ApiError> {
    let view: TaskView = serde_json::from_str(body)
        .map_err(|e| ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut doc = if options.limited_response {
        view.limited()
    } else {
        serde_json::to_value(&view).expect("a view serializes")
    };
    if options.include_attachment_url {
        if let Some(url) = view.params.get("attachment").and_then(Value::as_str) {
            doc["attachment_url"] = Value::String(url.to_string());
        }
    }
    Ok(doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &str) -> Vec<(String, String)> {
        query_pairs(Some(q))
    }

    #[test]
    fn a_next_token_round_trips_and_garbage_is_a_400() {
        let token = encode_token(1_700_000_000_000_000, "0190a1b2c3d4e5f601234567");
        assert_eq!(
            decode_token(&token).unwrap(),
            (
                1_700_000_000_000_000,
                "0190a1b2c3d4e5f601234567".to_string()
            )
        );
        assert!(decode_token("not-a-token").is_err());
    }

    #[test]
    fn limits_outside_1_to_100_are_refused() {
        for bad in ["0", "101", "-1", "ten", ""] {
            let e = parse(pairs(&format!("limit={bad}"))).err().unwrap();
            assert!(e.message.contains("limit"), "{bad}: {}", e.message);
        }
        assert_eq!(parse(pairs("limit=100")).ok().unwrap().query.limit, 100);
    }

    #[test]
    fn repeated_and_comma_separated_filters_accumulate() {
        let o = parse(pairs(
            "tags=a&tags=b&unique_id=x&unique_id=y&customer_review_status=accepted,fixed&status=pending",
        ))
        .ok()
        .unwrap();
        assert_eq!(o.query.tags, vec!["a", "b"]);
        assert_eq!(o.query.unique_ids, vec!["x", "y"]);
        assert_eq!(o.query.review_statuses, vec!["accepted", "fixed"]);
        assert_eq!(o.query.statuses, vec!["pending"]);
    }

    #[test]
    fn unknown_enum_values_are_400s_naming_the_parameter() {
        for q in [
            "status=done",
            "type=painting",
            "customer_review_status=maybe",
        ] {
            let e = parse(pairs(q)).err().unwrap();
            assert!(
                e.message.contains(q.split('=').next().unwrap()),
                "{}",
                e.message
            );
        }
    }
}
