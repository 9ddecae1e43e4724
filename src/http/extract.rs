//! Request parts turned into domain values, every failure an [`ApiError`] with our body.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::StatusCode;
use base64::Engine;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde_json::{Map, Value};
use taskledger_events::Actor;

use super::{ApiError, AppState};
use crate::domain::TaskId;
use crate::ledger::CommandContext;
use crate::store::Principal;

/// The caller, authenticated by HTTP Basic (key as user name, empty password) or Bearer.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    pub request_id: Option<String>,
}

impl Caller {
    pub fn context(&self) -> CommandContext {
        CommandContext {
            actor: Actor {
                account_id: self.principal.account_id.clone(),
                key_id: Some(self.principal.key_id.clone()),
                scope: self.principal.scope,
            },
            request_id: self.request_id.clone(),
        }
    }

    pub fn account_id(&self) -> &str {
        &self.principal.account_id
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, message)
}

/// The API key of a request, from `Authorization: Basic` or `Bearer`.
pub fn api_key(parts: &Parts) -> Result<String, ApiError> {
    let header = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or_else(|| {
            unauthorized("Please provide a valid API key (HTTP Basic user name or Bearer token).")
        })?
        .to_str()
        .map_err(|_| unauthorized("The Authorization header is not valid."))?;
    let (scheme, value) = header
        .split_once(' ')
        .ok_or_else(|| unauthorized("The Authorization header is not valid."))?;
    let key = if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .map_err(|_| unauthorized("The Basic credentials are not valid base64."))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| unauthorized("The Basic credentials are not valid UTF-8."))?;
        decoded.split(':').next().unwrap_or_default().to_string()
    } else if scheme.eq_ignore_ascii_case("bearer") {
        value.trim().to_string()
    } else {
        return Err(unauthorized("Use HTTP Basic or Bearer authentication."));
    };
    if key.is_empty() {
        return Err(unauthorized("Please provide a valid API key."));
    }
    Ok(key)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        let key = api_key(parts)?;
        let principal = state
            .ledger
            .store()
            .authenticate(&key)
            .await?
            .ok_or_else(|| unauthorized("The API key is not valid or was revoked."))?;
        let caller = Caller {
            principal,
            request_id: parts
                .headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        };
        parts.extensions.insert(caller.clone());
        Ok(caller)
    }
}

/// A task id from the path; a malformed one is simply not found.
pub fn task_id(raw: &str) -> Result<TaskId, ApiError> {
    TaskId::parse(raw).ok_or_else(not_found)
}

pub fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "Task with that ID not found.")
}

/// A JSON body, read whatever the Content-Type says (clients of the reference send JSON with
/// and without it); a form-encoded body becomes an object of strings, like `curl -d k=v`.
pub struct Body(pub Value);

impl FromRequest<AppState> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let form = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "The request body is too large.",
                )
            } else {
                ApiError::bad_request(format!("The request body could not be read: {rejection}"))
            }
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Body(Value::Null));
        }
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(value) => Ok(Body(value)),
            Err(_) if form => Ok(Body(form_object(&bytes))),
            Err(e) => Err(ApiError::bad_request(format!(
                "The request body is not valid JSON: {e}"
            ))),
        }
    }
}

fn form_object(bytes: &[u8]) -> Value {
    let mut map = Map::new();
    for (k, v) in url::form_urlencoded::parse(bytes) {
        let v = Value::String(v.into_owned());
        match map.get_mut(k.as_ref()) {
            Some(Value::Array(items)) => items.push(v),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, v]);
            }
            None => {
                map.insert(k.into_owned(), v);
            }
        }
    }
    Value::Object(map)
}

impl Body {
    pub fn object(self, what: &str) -> Result<Map<String, Value>, ApiError> {
        match self.0 {
            Value::Object(map) => Ok(map),
            Value::Null => Ok(Map::new()),
            _ => Err(ApiError::bad_request(format!(
                "The request body must be a JSON object ({what})."
            ))),
        }
    }

    /// A body that must be a JSON array of strings (the tags endpoints). No body at all is
    /// an empty array: the reference SDK sends `[]` as an empty body.
    pub fn string_array(self, what: &str) -> Result<Vec<String>, ApiError> {
        let items = match self.0 {
            Value::Array(items) => items,
            Value::Null => Vec::new(),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "The request body must be a JSON array of strings ({what})."
                )))
            }
        };
        items
            .into_iter()
            .map(|item| match item {
                Value::String(s) => Ok(s),
                other => Err(ApiError::bad_request(format!(
                    "{what} must be non-empty strings; got {other}"
                ))),
            })
            .collect()
    }
}

/// Optional typed fields of a JSON object, with 400s naming the field.
pub fn opt_string(map: &Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ApiError::bad_request(format!(
            "{field} must be a string; got {other}"
        ))),
    }
}

pub fn opt_bool(map: &Map<String, Value>, field: &str) -> Result<Option<bool>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) => parse_bool(field, s).map(Some),
        Some(other) => Err(ApiError::bad_request(format!(
            "{field} must be a boolean; got {other}"
        ))),
    }
}

pub fn opt_string_array(
    map: &Map<String, Value>,
    field: &str,
) -> Result<Option<Vec<String>>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Ok(s.clone()),
                other => Err(ApiError::bad_request(format!(
                    "{field} must hold strings; got {other}"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(Value::String(s)) => Ok(Some(vec![s.clone()])),
        Some(other) => Err(ApiError::bad_request(format!(
            "{field} must be an array of strings; got {other}"
        ))),
    }
}

/// The query string as ordered pairs; keys may repeat (`tags=a&tags=b`).
pub fn query_pairs(parts_query: Option<&str>) -> Vec<(String, String)> {
    parts_query
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// A page size `limit` from 1 to `max`.
pub fn parse_limit(value: &str, max: i64) -> Result<i64, ApiError> {
    value
        .parse::<i64>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "limit must be an integer from 1 to {max}; got {value:?}"
            ))
        })
}

pub fn parse_bool(name: &str, value: &str) -> Result<bool, ApiError> {
    if value.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if value.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err(ApiError::bad_request(format!(
            "{name} must be true or false; got {value:?}"
        )))
    }
}

/// `2021-04-25`, RFC 3339 with an offset, or `YYYY-MM-DD HH:MM:SS[.ffffff]` (also with a
/// `T`) without a zone, read as UTC.
pub fn parse_time(name: &str, value: &str) -> Result<DateTime<Utc>, ApiError> {
    let value = value.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(value) {
        return Ok(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(value, format) {
            return Ok(t.and_utc());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(value, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc());
    }
    Err(ApiError::bad_request(format!(
        "{name} must be a date (2021-04-25), an ISO 8601 time with offset \
         (2021-04-25T03:14:15-07:00) or 'YYYY-MM-DD HH:MM:SS' in UTC; got {value:?}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_time_format_parses_to_utc() {
        let cases = [
            ("2021-04-25", "2021-04-25T00:00:00+00:00"),
            ("2021-04-25T03:14:15-07:00", "2021-04-25T10:14:15+00:00"),
            ("2021-04-25T03:14:15Z", "2021-04-25T03:14:15+00:00"),
            ("2021-04-25 03:14:15", "2021-04-25T03:14:15+00:00"),
            (
                "2021-04-25 03:14:15.123456",
                "2021-04-25T03:14:15.123456+00:00",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(
                parse_time("t", input).unwrap().to_rfc3339(),
                expected,
                "{input}"
            );
        }
    }

    #[test]
    fn malformed_times_and_booleans_are_400s_naming_the_parameter() {
        for bad in ["yesterday", "2021-13-01", "2021-04-25 25:00:00", ""] {
            let e = parse_time("start_time", bad).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(e.message.contains("start_time"), "{}", e.message);
        }
        assert!(parse_bool("x", "TRUE").unwrap());
        assert!(!parse_bool("x", "False").unwrap());
        assert!(parse_bool("limited_response", "yes")
            .unwrap_err()
            .message
            .contains("limited_response"));
    }

    #[test]
    fn a_form_body_becomes_an_object_with_repeated_keys_as_arrays() {
        let v = form_object(b"callback_url=http%3A%2F%2Fx&categories=a&categories=b");
        assert_eq!(
            v,
            serde_json::json!({"callback_url": "http://x", "categories": ["a", "b"]})
        );
    }
}
