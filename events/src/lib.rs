//! The taskledger event contract.
//!
//! Every change to a task is recorded as one of the [`TaskEvent`] facts below, wrapped in an
//! [`EventEnvelope`] that says who caused it, when, and where it sits in the ledger. The same
//! envelope is served by `GET /v1/events` and published on the Kafka stream, so downstream
//! consumers can depend on this crate alone to decode what they read.
//!
//! # Stability
//!
//! * An event's `event_type` name never changes once published.
//! * A payload change that old readers could misread gets a new `event_version`; stored events
//!   keep the version they were written with and are upcast on decode ([`TaskEvent::decode`]),
//!   so the ledger itself is never rewritten.
//! * Consumers must ignore envelope fields they do not know; new fields may be added.
//! * Every event carries a `hash` over its content and its predecessor's hash; the hash input
//!   is versioned (`hash_version`), so events hashed by an earlier release keep verifying
//!   ([`EventEnvelope::hash_matches`]).
//!
//! # Keys and audits
//!
//! Creating and revoking an API key are recorded too, as [`KeyEvent`]s in the same envelope
//! (decode any event with [`EventEnvelope::ledger_event`]). Each account's events form an
//! RFC 6962 Merkle tree whose root the ledger signs ([`SignedDigest`]); [`merkle`] and
//! [`verify_signature`] check digests and proofs without any of the service's code.
//!
//! # Numbers
//!
//! The crate's `serde_json` is built with `float_roundtrip`: a float parses to the exact
//! `f64` its text denotes, and is written back in the shortest form that parses to it again,
//! so a payload's canonical text, and therefore its hash, is the same in every reader.

mod canonical;
mod dedup;
mod digest;
mod envelope;
mod event;
mod key;
pub mod merkle;
mod platform;
#[cfg(feature = "schema")]
pub mod schema;
mod seal;
mod tagged;

pub use canonical::is_canonical_json;
pub use dedup::Deduplicator;
pub use digest::{
    digest_message, parse_public_key, verify_signature, DigestError, SignedDigest,
    DIGEST_MESSAGE_TAG, ED25519,
};
pub use envelope::{
    account_of_ledger, canonical_json, is_test_ledger, ledger_of, write_canonical_json, Actor,
    EventEnvelope, Scope, UnknownScope, GENESIS_HASH, TEST_LEDGER_SUFFIX,
};
pub use event::{
    AuditSource, CallbackDelivered, CallbackFailed, DecodeError, TaskAudited, TaskCanceled,
    TaskCompleted, TaskCreated, TaskErrored, TaskEvent, TaskMetadataSet, TaskTagsAdded,
    TaskTagsRemoved, TaskTagsReplaced, TaskUniqueIdCleared, TaskUniqueIdSet, UniqueIdClearReason,
};
pub use key::{ApiKeyCreated, ApiKeyRevoked, KeyEvent, LedgerEvent};
pub use platform::{
    BatchCompleted, BatchCreated, BatchEvent, BatchFinalized, BatchMetadataSet, ProjectCreated,
    ProjectEvent, ProjectParamsSet,
};
pub use seal::{
    seal_events, EnvelopeContext, HashFields, SealedEvent, UnknownHashVersion,
    CURRENT_HASH_VERSION, HASH_V1, HASH_V2,
};
