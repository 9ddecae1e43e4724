//! Request parts turned into domain values, every failure an [`ApiError`] with our body.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::StatusCode;
use base64::Engine;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde::de::{self, DeserializeOwned, Deserializer};
use serde::Deserialize;
use serde_json::{Map, Value};
use taskledger_events::Actor;

use super::request_id::X_REQUEST_ID;
use super::{ApiError, AppState};
use crate::domain::limits::{MAX_FILTER_VALUES, MAX_JSON_DEPTH};
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
    /// The caller's command context, acting in the caller's ledger ([`Caller::ledger`]).
    pub fn context(&self) -> CommandContext {
        self.context_in(self.ledger())
    }

    /// The caller's command context acting in `ledger`: a contributor's in the account's
    /// test ledger, for a test task it acts on by id.
    pub fn context_in(&self, ledger: String) -> CommandContext {
        CommandContext {
            actor: Actor {
                account_id: ledger,
                key_id: Some(self.principal.key_id.clone()),
                scope: self.principal.scope,
            },
            request_id: self.request_id.clone(),
        }
    }

    /// The account itself (its keys, its callback secret): the same in both modes.
    pub fn account_id(&self) -> &str {
        &self.principal.account_id
    }

    /// The ledger the caller reads and writes: the account's, or for a test-mode key the
    /// account's test ledger (`<account_id>:test`). Every task, list, count, feed and
    /// Merkle-tree read is keyed by it, which is what keeps test and live data apart.
    pub fn ledger(&self) -> String {
        taskledger_events::ledger_of(&self.principal.account_id, self.principal.is_test)
    }

    /// Whether the caller holds a test-mode key: it reads and writes test data only.
    pub fn is_test(&self) -> bool {
        self.principal.is_test
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
            .keys
            .authenticate(&key)
            .await?
            .ok_or_else(|| unauthorized("The API key is not valid or was revoked."))?;
        let caller = Caller {
            principal,
            request_id: parts
                .headers
                .get(&X_REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        };
        parts.extensions.insert(caller.clone());
        Ok(caller)
    }
}

/// What every read of the caller's own data takes: the app state and the authenticated
/// caller, extracted in that order as the read handlers always did.
pub struct AccountRead {
    pub state: AppState,
    pub caller: Caller,
}

impl FromRequestParts<AppState> for AccountRead {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Ok(AccountRead {
            state: state.clone(),
            caller: Caller::from_request_parts(parts, state).await?,
        })
    }
}

/// A task id from the path; a malformed one is simply not found.
pub fn task_id(raw: &str) -> Result<TaskId, ApiError> {
    TaskId::parse(raw).ok_or_else(not_found)
}

pub fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "Task with that ID not found.")
}

/// A request body parsed into `T`, whatever the Content-Type says (clients of the reference
/// send JSON with and without it). The documented leniency lives here and only here: a
/// form-encoded body becomes an object of strings (`curl -d k=v`), and no body (or `null`) is
/// `T::default()` (the reference SDK sends `{}` and `[]` that way). Every failure is a 400
/// naming the field: a wrong type, a value over its limit, or nesting past
/// [`MAX_JSON_DEPTH`], which is refused before anything is built.
pub struct LenientJson<T>(pub T);

/// A type [`LenientJson`] can read.
pub trait LenientBody: DeserializeOwned + Default + Send + 'static {
    /// How errors about the body as a whole (or a bare array's items) name it.
    const ROOT: &'static str;
    /// Whether the body's top-level keys are the fields errors should name (an object of
    /// fields), rather than the body being one value named [`Self::ROOT`] (the metadata).
    const KEYS_ARE_FIELDS: bool = true;
}

/// Bodies up to this size are parsed on the async worker; larger ones on the blocking pool,
/// so a multi-megabyte body cannot hold up other requests.
pub(super) const INLINE_PARSE_BYTES: usize = 64 * 1024;

impl<T: LenientBody> FromRequest<AppState> for LenientJson<T> {
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
                    format!(
                        "The request body is too large: the limit is {} bytes \
                         (TASKLEDGER_MAX_BODY_BYTES).",
                        state.settings.max_body_bytes
                    ),
                )
            } else {
                ApiError::bad_request(format!("The request body could not be read: {rejection}"))
            }
        })?;
        if bytes.len() <= INLINE_PARSE_BYTES {
            return parse_body(&bytes, form).map(LenientJson);
        }
        tokio::task::spawn_blocking(move || parse_body::<T>(&bytes, form))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "body parse task failed");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error.")
            })?
            .map(LenientJson)
    }
}

fn parse_body<T: LenientBody>(bytes: &[u8], form: bool) -> Result<T, ApiError> {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace());
    let Some(start) = start else {
        return Ok(T::default());
    };
    let value = if form && !matches!(bytes[start], b'{' | b'[') {
        form_object(bytes)
    } else {
        // One level for the body itself: an object body may hold values MAX_JSON_DEPTH deep.
        check_depth(bytes, MAX_JSON_DEPTH + 1).map_err(|key| {
            ApiError::bad_request(format!(
                "{} is nested deeper than the limit of {MAX_JSON_DEPTH} levels",
                key.filter(|_| T::KEYS_ARE_FIELDS)
                    .unwrap_or_else(|| T::ROOT.to_string())
            ))
        })?;
        match serde_json::from_slice::<Value>(bytes) {
            Ok(value) => value,
            Err(_) if form => form_object(bytes),
            Err(e) => {
                return Err(ApiError::bad_request(format!(
                    "The request body is not valid JSON: {e}"
                )))
            }
        }
    };
    if value.is_null() {
        return Ok(T::default());
    }
    from_value(T::ROOT, value)
}

/// Deserializes `T` from a JSON value; the error names the field (`root` for the value
/// itself or an item of a bare array).
pub fn from_value<T: DeserializeOwned>(root: &str, value: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| field_error(root, &e))
}

fn field_error(root: &str, e: &serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let field = if path == "." {
        root.to_string()
    } else if path.starts_with('[') {
        format!("{root}{path}")
    } else {
        path
    };
    ApiError::bad_request(field_message(&field, &e.inner().to_string()))
}

/// `"{field} must be ..."` for our own parse errors, `"{field}: ..."` for serde's.
///
/// Serde quotes the refused value whole; a message is cut to [`MAX_MESSAGE_CHARS`] so a
/// megabyte of input does not come back in the answer.
pub fn field_message(field: &str, error: &str) -> String {
    let message =
        if error.starts_with("must ") || error.starts_with("is ") || error.starts_with('(') {
            format!("{field} {error}")
        } else {
            format!("{field}: {error}")
        };
    if message.chars().count() <= MAX_MESSAGE_CHARS {
        return message;
    }
    let cut: String = message.chars().take(MAX_MESSAGE_CHARS).collect();
    format!("{cut}...")
}

const MAX_MESSAGE_CHARS: usize = 512;

/// Refuses JSON nested deeper than `max` without building it (serde_json would stop at 128
/// with a message naming nothing). On failure, the top-level key under which it happened,
/// if the body is an object. Linear in the body; brackets inside strings do not count.
fn check_depth(bytes: &[u8], max: usize) -> Result<(), Option<String>> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut top_is_object = false;
    let mut string_start = 0;
    let mut last_top_string: Option<(usize, usize)> = None;
    let mut key: Option<(usize, usize)> = None;
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
                if depth == 1 {
                    last_top_string = Some((string_start, i + 1));
                }
            }
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                string_start = i;
            }
            b':' if depth == 1 => key = last_top_string,
            b'{' | b'[' => {
                if depth == 0 {
                    top_is_object = b == b'{';
                }
                depth += 1;
                if depth > max {
                    let name = key.filter(|_| top_is_object).map(|(s, e)| {
                        serde_json::from_slice::<String>(&bytes[s..e])
                            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes[s..e]).into())
                    });
                    return Err(name);
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Form pairs as an object of strings; a repeated key becomes an array of its values.
pub(super) fn form_object(bytes: &[u8]) -> Value {
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

/// A query string parsed into `T`: repeated keys (`tags=a&tags=b`) become arrays, unknown
/// keys are ignored, and every failure is a 400 naming the parameter.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        from_value("query", form_object(query.as_bytes())).map(QueryParams)
    }
}

/// A boolean given as `true`/`false` in any case, in a query or a form body, or as JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flag(pub bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Bool(b) => Ok(Flag(b)),
            Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(Flag(true)),
            Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(Flag(false)),
            other => Err(de::Error::custom(format!(
                "must be a boolean (true or false); got {other}"
            ))),
        }
    }
}

/// A time in any documented format (see [`parse_time`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Time(pub DateTime<Utc>);

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_time(&s).map(Time).map_err(de::Error::custom)
    }
}

/// A position given in a query (a global position, or a sequence within a task): an
/// integer >= 0.
#[derive(Debug, Clone, Copy, Default)]
pub struct Position(pub i64);

impl<'de> Deserialize<'de> for Position {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(Position)
            .ok_or_else(|| {
                de::Error::custom(format!(
                    "must be a position (an integer >= 0); got {:?}",
                    s.chars().take(64).collect::<String>()
                ))
            })
    }
}

/// A page size from 1 to `MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit<const MAX: i64>(pub i64);

impl<'de, const MAX: i64> Deserialize<'de> for Limit<MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX).contains(n))
            .map(Limit)
            .ok_or_else(|| {
                de::Error::custom(format!("must be an integer from 1 to {MAX}; got {s:?}"))
            })
    }
}

/// A repeatable query parameter: one value, or several (`k=a&k=b`), at most
/// [`MAX_FILTER_VALUES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Many<T>(pub Vec<T>);

impl<T> Default for Many<T> {
    fn default() -> Self {
        Many(Vec::new())
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Many<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let items = match Value::deserialize(d)? {
            Value::Array(items) => items,
            one => vec![one],
        };
        if items.len() > MAX_FILTER_VALUES {
            return Err(de::Error::custom(format!(
                "must be given at most {MAX_FILTER_VALUES} times"
            )));
        }
        items
            .into_iter()
            .map(|item| serde_json::from_value(item).map_err(de::Error::custom))
            .collect::<Result<_, _>>()
            .map(Many)
    }
}

/// `2021-04-25`, RFC 3339 with an offset, or `YYYY-MM-DD HH:MM:SS[.ffffff]` (also with a
/// `T`) without a zone, read as UTC.
pub fn parse_time(value: &str) -> Result<DateTime<Utc>, String> {
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
    Err(format!(
        "must be a date (2021-04-25), an ISO 8601 time with offset \
         (2021-04-25T03:14:15-07:00) or 'YYYY-MM-DD HH:MM:SS' in UTC; got {:?}",
        value.chars().take(64).collect::<String>()
    ))
}

#[cfg(test)]
#[path = "extract_tests.rs"]
mod tests;
