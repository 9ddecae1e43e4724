//! Every limit on what a request may carry, in one place: the parsers of `super::values`
//! enforce them, the OpenAPI document and the README quote them, and the tests use them.
//!
//! The identifier limit sits far below what a PostgreSQL B-tree index row can hold (about
//! 2700 bytes), so no value that passes here can fail in the store. The JSON limits keep the
//! largest event (a create with every field at its maximum) well under the default
//! `KAFKA_MESSAGE_MAX_BYTES` of 1 000 000.

/// `project`, `batch`, `unique_id` and each tag, in UTF-8 bytes.
pub const MAX_IDENTIFIER_BYTES: usize = 255;
/// Tags on one task, and tags in one tags request.
pub const MAX_TAGS: usize = 100;
/// Free text: `instruction`, an audit's `comments`.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;
/// `callback_url`.
pub const MAX_URL_BYTES: usize = 2048;
/// `metadata`, serialized.
pub const MAX_METADATA_BYTES: usize = 10 * 1024;
/// `params` (a create's type-specific fields), `response`, an error, an audit's `response`,
/// each serialized.
pub const MAX_JSON_BYTES: usize = 256 * 1024;
/// Nesting of arrays and objects in any JSON value, the request body itself included: a
/// top-level object holding a scalar is depth 1.
pub const MAX_JSON_DEPTH: usize = 32;
/// A list page's `next_token`.
pub const MAX_TOKEN_BYTES: usize = 1024;
/// Values of one repeatable list filter (`tags`, `unique_id`, `status`, ...).
pub const MAX_FILTER_VALUES: usize = 100;
