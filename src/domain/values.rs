//! The values a command carries, each parsed once at the edge into a type that cannot hold a
//! bad value: no U+0000 (PostgreSQL text refuses it), nothing over its limit in
//! [`super::limits`], JSON no deeper than [`MAX_JSON_DEPTH`]. Parse errors say what the value
//! must be; the caller names the field (`"{field} {error}"`).

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::limits::*;

/// Why a value was refused; reads as the rest of a sentence that starts with the field name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValueError(pub String);

impl ValueError {
    fn new(message: impl Into<String>) -> ValueError {
        ValueError(message.into())
    }
}

/// A short, quoted preview of a refused value, so an 8 KB value does not come back whole.
pub fn preview(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return format!("{s:?}");
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}... ({} bytes)", &s[..end], s.len())
}

fn check_text(s: &str, max: usize) -> Result<(), ValueError> {
    if s.len() > max {
        return Err(ValueError::new(format!(
            "must be at most {max} bytes; got {} bytes",
            s.len()
        )));
    }
    if s.contains('\0') {
        return Err(ValueError::new("must not contain U+0000 (NUL)"));
    }
    Ok(())
}

/// Implements the string newtype plumbing: serde through `String`, `as_str`, `Display`.
macro_rules! string_newtype {
    ($name:ident) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = ValueError;
            fn try_from(s: String) -> Result<Self, ValueError> {
                $name::parse(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = ValueError;
            fn try_from(s: &str) -> Result<Self, ValueError> {
                $name::parse(s.to_string())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $name::parse(s).map_err(de::Error::custom)
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
    };
}

/// `project` or `batch`: any string up to [`MAX_IDENTIFIER_BYTES`] without U+0000.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identifier(String);

impl Identifier {
    pub fn parse(s: impl Into<String>) -> Result<Identifier, ValueError> {
        let s = s.into();
        check_text(&s, MAX_IDENTIFIER_BYTES)?;
        Ok(Identifier(s))
    }
}
string_newtype!(Identifier);

/// A task's unique_id: not blank, up to [`MAX_IDENTIFIER_BYTES`], no U+0000.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UniqueId(String);

impl UniqueId {
    pub fn parse(s: impl Into<String>) -> Result<UniqueId, ValueError> {
        let s = s.into();
        if s.trim().is_empty() {
            return Err(ValueError::new("must be a non-empty string"));
        }
        check_text(&s, MAX_IDENTIFIER_BYTES)?;
        Ok(UniqueId(s))
    }
}
string_newtype!(UniqueId);

/// One tag: not blank, up to [`MAX_IDENTIFIER_BYTES`], no U+0000.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tag(String);

impl Tag {
    pub fn parse(s: impl Into<String>) -> Result<Tag, ValueError> {
        let s = s.into();
        if s.trim().is_empty() {
            return Err(ValueError::new("must be non-empty strings"));
        }
        check_text(&s, MAX_IDENTIFIER_BYTES)
            .map_err(|e| ValueError::new(format!("{} (tag {})", e.0, preview(&s))))?;
        Ok(Tag(s))
    }
}
string_newtype!(Tag);

/// Free text (`instruction`, `comments`): up to [`MAX_TEXT_BYTES`], no U+0000.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text(String);

impl Text {
    pub fn parse(s: impl Into<String>) -> Result<Text, ValueError> {
        let s = s.into();
        check_text(&s, MAX_TEXT_BYTES)?;
        Ok(Text(s))
    }
}
string_newtype!(Text);

/// Distinct tags in the order first given, at most [`MAX_TAGS`]. A single string is one tag
/// (a form body's lone `tags=x`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tags(Vec<Tag>);

impl Tags {
    /// De-duplicates with a set, so the cost is linear in the number of tags.
    pub fn new(tags: impl IntoIterator<Item = Tag>) -> Result<Tags, ValueError> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (given, tag) in tags.into_iter().enumerate() {
            if given >= MAX_TAGS {
                return Err(too_many_tags());
            }
            if seen.insert(tag.0.clone()) {
                out.push(tag);
            }
        }
        Ok(Tags(out))
    }

    pub fn parse<S: Into<String>>(tags: impl IntoIterator<Item = S>) -> Result<Tags, ValueError> {
        let mut parsed = Vec::new();
        for (given, tag) in tags.into_iter().enumerate() {
            if given >= MAX_TAGS {
                return Err(too_many_tags());
            }
            parsed.push(Tag::parse(tag)?);
        }
        Tags::new(parsed)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Tag> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_strings(self) -> Vec<String> {
        self.0.into_iter().map(Tag::into_string).collect()
    }
}

fn too_many_tags() -> ValueError {
    ValueError::new(format!("must hold at most {MAX_TAGS} tags"))
}

impl<'de> Deserialize<'de> for Tags {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TagsVisitor;

        impl<'de> Visitor<'de> for TagsVisitor {
            type Value = Tags;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a JSON array of strings")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Tags, E> {
                Tags::parse([v]).map_err(E::custom)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tags, A::Error> {
                let mut tags = Vec::new();
                // Stops at the first tag past the limit, so a huge array costs no more work.
                while let Some(item) = seq.next_element::<Value>()? {
                    if tags.len() >= MAX_TAGS {
                        return Err(de::Error::custom(too_many_tags()));
                    }
                    let Value::String(s) = item else {
                        return Err(de::Error::custom(format!(
                            "must be non-empty strings; got {item}"
                        )));
                    };
                    tags.push(Tag::parse(s).map_err(de::Error::custom)?);
                }
                Tags::new(tags).map_err(de::Error::custom)
            }
        }

        d.deserialize_any(TagsVisitor)
    }
}

/// An http or https URL with a host, up to [`MAX_URL_BYTES`], with no NUL, raw or
/// percent-encoded (it would reach the callback tables and a receiver's logs). The text is
/// kept as given, since the task shows it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackUrl {
    url: url::Url,
    text: String,
}

impl CallbackUrl {
    pub fn parse(s: impl Into<String>) -> Result<CallbackUrl, ValueError> {
        let text = s.into();
        let invalid = || {
            ValueError::new(format!(
                "{} is not a valid http or https URL of at most {MAX_URL_BYTES} bytes \
                 without NUL",
                preview(&text)
            ))
        };
        if text.len() > MAX_URL_BYTES
            || text.contains('\0')
            || text.to_ascii_lowercase().contains("%00")
        {
            return Err(invalid());
        }
        let url = url::Url::parse(&text).map_err(|_| invalid())?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(invalid());
        }
        Ok(CallbackUrl { url, text })
    }

    pub fn url(&self) -> &url::Url {
        &self.url
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn into_string(self) -> String {
        self.text
    }
}

impl<'de> Deserialize<'de> for CallbackUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        CallbackUrl::parse(String::deserialize(d)?).map_err(de::Error::custom)
    }
}

/// Counts the bytes a value serializes to without building the text.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn serialized_len(value: &Value) -> usize {
    let mut count = ByteCount(0);
    serde_json::to_writer(&mut count, value).expect("a JSON value serializes");
    count.0
}

/// Nesting depth of arrays and objects (a scalar is 0, `{"a": 1}` is 1) and whether any key
/// or string holds U+0000. One pass, iterative so no input can exhaust the stack.
fn shape(value: &Value) -> (usize, bool) {
    let mut deepest = 0;
    let mut nul = false;
    let mut stack = vec![(value, 0usize)];
    while let Some((v, depth)) = stack.pop() {
        match v {
            Value::String(s) => nul |= s.contains('\0'),
            Value::Array(items) => {
                deepest = deepest.max(depth + 1);
                stack.extend(items.iter().map(|i| (i, depth + 1)));
            }
            Value::Object(map) => {
                deepest = deepest.max(depth + 1);
                for (k, v) in map {
                    nul |= k.contains('\0');
                    stack.push((v, depth + 1));
                }
            }
            _ => {}
        }
    }
    (deepest, nul)
}

/// Checks a JSON value against the depth, size and NUL rules.
pub fn check_json(value: &Value, max_bytes: usize) -> Result<(), ValueError> {
    let (depth, nul) = shape(value);
    if depth > MAX_JSON_DEPTH {
        return Err(ValueError::new(format!(
            "is nested {depth} levels deep; the limit is {MAX_JSON_DEPTH}"
        )));
    }
    if nul {
        return Err(ValueError::new(
            "must not contain U+0000 (NUL) in a key or string",
        ));
    }
    let size = serialized_len(value);
    if size > max_bytes {
        return Err(ValueError::new(format!(
            "is {size} bytes serialized; the limit is {max_bytes}"
        )));
    }
    Ok(())
}

/// Any JSON value within [`MAX_JSON_DEPTH`] and [`MAX_JSON_BYTES`], without U+0000:
/// `response`, an error, an audit's `response`.
#[derive(Debug, Clone, PartialEq)]
pub struct Json(Value);

impl Json {
    pub fn parse(value: Value) -> Result<Json, ValueError> {
        check_json(&value, MAX_JSON_BYTES)?;
        Ok(Json(value))
    }

    pub fn value(&self) -> &Value {
        &self.0
    }

    pub fn into_value(self) -> Value {
        self.0
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Json::parse(Value::deserialize(d)?).map_err(de::Error::custom)
    }
}

/// A task's metadata: a JSON object of at most [`MAX_METADATA_BYTES`] serialized.
#[derive(Debug, Clone, PartialEq)]
pub struct Metadata(Value);

impl Default for Metadata {
    fn default() -> Metadata {
        Metadata(Value::Object(Map::new()))
    }
}

impl Metadata {
    pub fn parse(value: Value) -> Result<Metadata, ValueError> {
        if !value.is_object() {
            return Err(ValueError::new("must be a JSON object"));
        }
        check_json(&value, MAX_METADATA_BYTES)?;
        Ok(Metadata(value))
    }

    pub fn value(&self) -> &Value {
        &self.0
    }

    pub fn into_value(self) -> Value {
        self.0
    }
}

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Metadata::parse(Value::deserialize(d)?).map_err(de::Error::custom)
    }
}

/// A create's type-specific fields: each within the JSON rules (the error names the field),
/// all together at most [`MAX_JSON_BYTES`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Params(Map<String, Value>);

impl Params {
    /// Errors carry their own field name: `(field, error)`.
    pub fn parse(map: Map<String, Value>) -> Result<Params, (String, ValueError)> {
        for (key, value) in &map {
            if key.contains('\0') {
                return Err((
                    "params".into(),
                    ValueError::new("must not have a field name with U+0000 (NUL)"),
                ));
            }
            check_json(value, MAX_JSON_BYTES).map_err(|e| (key.clone(), e))?;
        }
        let value = Value::Object(map);
        let size = serialized_len(&value);
        if size > MAX_JSON_BYTES {
            return Err((
                "params".into(),
                ValueError::new(format!(
                    "(the type's own fields) are {size} bytes serialized; the limit is \
                     {MAX_JSON_BYTES}"
                )),
            ));
        }
        let Value::Object(map) = value else {
            unreachable!("built as an object above")
        };
        Ok(Params(map))
    }

    pub fn get(&self, field: &str) -> Option<&Value> {
        self.0.get(field)
    }

    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }

    pub fn into_map(self) -> Map<String, Value> {
        self.0
    }
}

/// The outcome a contributor's audit gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AuditResult {
    Accepted,
    Fixed,
    Rejected,
}

impl AuditResult {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditResult::Accepted => "accepted",
            AuditResult::Fixed => "fixed",
            AuditResult::Rejected => "rejected",
        }
    }
}

// `value.try_into()`, for callers that build commands from values they trust less than the
// type does (tests, the bench, tools).

impl TryFrom<Value> for Metadata {
    type Error = ValueError;
    fn try_from(value: Value) -> Result<Self, ValueError> {
        Metadata::parse(value)
    }
}

impl TryFrom<Value> for Json {
    type Error = ValueError;
    fn try_from(value: Value) -> Result<Self, ValueError> {
        Json::parse(value)
    }
}

impl TryFrom<Vec<String>> for Tags {
    type Error = ValueError;
    fn try_from(tags: Vec<String>) -> Result<Self, ValueError> {
        Tags::parse(tags)
    }
}

impl TryFrom<Map<String, Value>> for Params {
    type Error = ValueError;
    fn try_from(map: Map<String, Value>) -> Result<Self, ValueError> {
        Params::parse(map).map_err(|(field, e)| ValueError(format!("{field} {e}")))
    }
}

impl TryFrom<&str> for CallbackUrl {
    type Error = ValueError;
    fn try_from(s: &str) -> Result<Self, ValueError> {
        CallbackUrl::parse(s)
    }
}

#[cfg(test)]
#[path = "values_tests.rs"]
mod tests;
