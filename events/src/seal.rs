//! Building and hashing envelopes.
//!
//! An event's hash covers every envelope field but `hash` itself, and the payload exactly as
//! stored: the canonical JSON text ([`canonical_json`]) that the store writes is the text that
//! was hashed, so checking a stored event never depends on re-serializing what was parsed.
//!
//! The hash input is versioned, and each event records its version (`hash_version`), so a
//! ledger written by an earlier release still verifies:
//!
//! * v1 (tag `taskledger-event-v1`): every field as a 64-bit big-endian length followed by its
//!   UTF-8 bytes; an absent `key_id` or `request_id` is written as the empty string, so it
//!   hashed like an empty one.
//! * v2 (tag `taskledger-event-v2`, written today): the same fields in the same order, but an
//!   absent optional field is written as the length `u64::MAX` with no bytes, which no present
//!   field can have: absent and empty differ.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{canonical_json, Actor, EventEnvelope, TaskEvent};

/// The hash input of events written before versions were recorded.
pub const HASH_V1: u32 = 1;
/// The hash input written today: tells an absent `key_id`/`request_id` from an empty one.
pub const HASH_V2: u32 = 2;
/// The version [`seal_events`] writes.
pub const CURRENT_HASH_VERSION: u32 = HASH_V2;

/// The length written for an absent optional field in v2; no present field is that long.
const ABSENT: u64 = u64::MAX;

/// The envelope names a hash version this build does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownHashVersion(pub u32);

impl std::fmt::Display for UnknownHashVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "unknown hash version {} (this build knows 1 to {CURRENT_HASH_VERSION})",
            self.0
        )
    }
}

impl std::error::Error for UnknownHashVersion {}

/// The fields an event's hash covers, borrowed from wherever they are kept: an envelope, or
/// a stored row that `verify` checks without copying it into an envelope first.
#[derive(Debug, Clone, Copy)]
pub struct HashFields<'a> {
    pub hash_version: u32,
    pub prev_hash: &'a str,
    pub event_id: Uuid,
    pub event_type: &'a str,
    pub event_version: u32,
    pub task_id: &'a str,
    pub account_id: &'a str,
    pub sequence: i64,
    pub global_position: i64,
    pub recorded_at_us: i64,
    pub actor_account_id: &'a str,
    pub actor_key_id: Option<&'a str>,
    pub actor_scope: &'a str,
    pub request_id: Option<&'a str>,
    /// The payload exactly as stored.
    pub payload_json: &'a str,
}

impl HashFields<'_> {
    /// Writes the exact bytes whose SHA-256 is the event's hash into `out` (cleared first),
    /// in the format named by `hash_version`. Numbers are formatted in place: `verify` writes
    /// the input of every event of the ledger, so nothing is allocated per field.
    pub fn write_input(&self, out: &mut Vec<u8>) -> Result<(), UnknownHashVersion> {
        use std::io::Write;
        let tag = match self.hash_version {
            HASH_V1 => "taskledger-event-v1",
            HASH_V2 => "taskledger-event-v2",
            other => return Err(UnknownHashVersion(other)),
        };
        out.clear();
        let text = |out: &mut Vec<u8>, text: &str| {
            out.extend_from_slice(&(text.len() as u64).to_be_bytes());
            out.extend_from_slice(text.as_bytes());
        };
        let optional = |out: &mut Vec<u8>, field: Option<&str>| match (field, self.hash_version) {
            (Some(t), _) => text(out, t),
            (None, HASH_V1) => out.extend_from_slice(&0u64.to_be_bytes()),
            (None, _) => out.extend_from_slice(&ABSENT.to_be_bytes()),
        };
        // A number's decimal text, its length written once the text is.
        let number = |out: &mut Vec<u8>, n: i64| {
            let at = out.len();
            out.extend_from_slice(&[0; 8]);
            write!(out, "{n}").expect("writing to a Vec cannot fail");
            let len = (out.len() - at - 8) as u64;
            out[at..at + 8].copy_from_slice(&len.to_be_bytes());
        };
        let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
        text(out, tag);
        text(out, self.prev_hash);
        text(out, self.event_id.hyphenated().encode_lower(&mut id));
        text(out, self.event_type);
        number(out, i64::from(self.event_version));
        text(out, self.task_id);
        text(out, self.account_id);
        number(out, self.sequence);
        number(out, self.global_position);
        number(out, self.recorded_at_us);
        text(out, self.actor_account_id);
        optional(out, self.actor_key_id);
        text(out, self.actor_scope);
        optional(out, self.request_id);
        text(out, self.payload_json);
        Ok(())
    }

    /// Whether `hash` (hex) is the SHA-256 of the input, written into `scratch`.
    pub fn hash_is(&self, hash: &str, scratch: &mut Vec<u8>) -> Result<bool, UnknownHashVersion> {
        self.write_input(scratch)?;
        let mut hex = [0u8; 64];
        hex::encode_to_slice(Sha256::digest(&scratch[..]), &mut hex)
            .expect("a SHA-256 is 32 bytes");
        Ok(hex.as_slice() == hash.as_bytes())
    }
}

impl EventEnvelope {
    /// The fields the hash covers, with the payload as the stored JSON text `payload_json`.
    pub fn hash_fields<'a>(&'a self, payload_json: &'a str) -> HashFields<'a> {
        HashFields {
            hash_version: self.hash_version,
            prev_hash: &self.prev_hash,
            event_id: self.event_id,
            event_type: &self.event_type,
            event_version: self.event_version,
            task_id: &self.task_id,
            account_id: &self.account_id,
            sequence: self.sequence,
            global_position: self.global_position,
            recorded_at_us: self.recorded_at.timestamp_micros(),
            actor_account_id: &self.actor.account_id,
            actor_key_id: self.actor.key_id.as_deref(),
            actor_scope: self.actor.scope.as_str(),
            request_id: self.request_id.as_deref(),
            payload_json,
        }
    }

    /// The exact bytes whose SHA-256 is `hash`, with the payload as the stored JSON text
    /// `payload_json`, in the format named by `hash_version` (see [`HashFields`]).
    pub fn hash_input_of(&self, payload_json: &str) -> Result<Vec<u8>, UnknownHashVersion> {
        let mut out = Vec::with_capacity(256 + payload_json.len());
        self.hash_fields(payload_json).write_input(&mut out)?;
        Ok(out)
    }

    /// [`EventEnvelope::hash_input_of`] the payload in its canonical form: what a consumer
    /// holding only the parsed envelope (from `GET /v1/events` or the stream) can rebuild.
    pub fn hash_input(&self) -> Result<Vec<u8>, UnknownHashVersion> {
        self.hash_input_of(&canonical_json(&self.payload))
    }

    /// The hex SHA-256 the envelope's `hash` must equal, for the stored payload text.
    pub fn expected_hash_of(&self, payload_json: &str) -> Result<String, UnknownHashVersion> {
        Ok(hex::encode(Sha256::digest(
            self.hash_input_of(payload_json)?,
        )))
    }

    /// The hex SHA-256 the envelope's `hash` must equal, from the parsed envelope alone.
    pub fn expected_hash(&self) -> Result<String, UnknownHashVersion> {
        self.expected_hash_of(&canonical_json(&self.payload))
    }

    /// Whether `hash` is the hash of the envelope's content: the check a consumer runs.
    pub fn hash_matches(&self) -> bool {
        self.is_test == crate::is_test_ledger(&self.account_id)
            && self.expected_hash().is_ok_and(|h| h == self.hash)
    }
}

/// What the events of one command share, and what precedes them in their task and in the
/// ledger.
#[derive(Debug, Clone)]
pub struct EnvelopeContext<'a> {
    pub task_id: &'a str,
    pub account_id: &'a str,
    pub actor: &'a Actor,
    pub request_id: Option<&'a str>,
    pub recorded_at: DateTime<Utc>,
    /// The task's last sequence (0 for a new task).
    pub last_sequence: i64,
    /// The hash of the task's last event ([`crate::GENESIS_HASH`] for a new task).
    pub prev_hash: &'a str,
    /// The ledger's last global position.
    pub last_position: i64,
}

/// An envelope ready to be stored, with its payload text: the bytes to store, which are
/// exactly the bytes that were hashed.
#[derive(Debug, Clone, PartialEq)]
pub struct SealedEvent {
    pub envelope: EventEnvelope,
    pub payload_json: String,
}

/// Wraps a command's events in envelopes that follow `ctx` (contiguous sequences and
/// positions, each hash chained to the one before) and hashes them with the current hash
/// input.
///
/// Each envelope's payload is the one parsed back from its canonical text, so the envelope
/// equals what a reader of the stored event gets. Fails only for a payload whose canonical
/// text does not parse back (nested deeper than the JSON parser allows).
pub fn seal_events(
    ctx: &EnvelopeContext<'_>,
    events: &[TaskEvent],
) -> Result<Vec<SealedEvent>, serde_json::Error> {
    let mut prev_hash = ctx.prev_hash.to_string();
    let mut sealed = Vec::with_capacity(events.len());
    for (i, event) in (1i64..).zip(events) {
        let payload_json = canonical_json(&event.payload());
        let mut envelope = EventEnvelope {
            event_id: Uuid::now_v7(),
            event_type: event.event_type().to_string(),
            event_version: event.event_version(),
            task_id: ctx.task_id.to_string(),
            account_id: ctx.account_id.to_string(),
            sequence: ctx.last_sequence + i,
            global_position: ctx.last_position + i,
            recorded_at: ctx.recorded_at,
            actor: ctx.actor.clone(),
            request_id: ctx.request_id.map(str::to_string),
            payload: serde_json::from_str(&payload_json)?,
            prev_hash,
            hash: String::new(),
            hash_version: CURRENT_HASH_VERSION,
            is_test: crate::is_test_ledger(ctx.account_id),
        };
        envelope.hash = envelope
            .expected_hash_of(&payload_json)
            .expect("the current hash version is known");
        prev_hash = envelope.hash.clone();
        sealed.push(SealedEvent {
            envelope,
            payload_json,
        });
    }
    Ok(sealed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Scope, TaskCanceled, TaskMetadataSet, GENESIS_HASH};
    use serde_json::{json, Value};

    fn envelope(version: u32) -> EventEnvelope {
        crate::envelope::sample_envelope(version)
    }

    /// The v1 hash input exactly as the first release computed it, written out
    /// independently of the code under test.
    fn first_release_hash(e: &EventEnvelope) -> String {
        let recorded_at = e.recorded_at.timestamp_micros().to_string();
        let fields = [
            "taskledger-event-v1".to_string(),
            e.prev_hash.clone(),
            e.event_id.to_string(),
            e.event_type.clone(),
            e.event_version.to_string(),
            e.task_id.clone(),
            e.account_id.clone(),
            e.sequence.to_string(),
            e.global_position.to_string(),
            recorded_at,
            e.actor.account_id.clone(),
            e.actor.key_id.clone().unwrap_or_default(),
            e.actor.scope.as_str().to_string(),
            e.request_id.clone().unwrap_or_default(),
            canonical_json(&e.payload),
        ];
        let mut input = Vec::new();
        for f in fields {
            input.extend_from_slice(&(f.len() as u64).to_be_bytes());
            input.extend_from_slice(f.as_bytes());
        }
        hex::encode(Sha256::digest(input))
    }

    /// The v2 input written out independently of the code under test: every field
    /// length-prefixed, an absent key or request id as the length `u64::MAX` alone.
    fn v2_input_as_documented(e: &EventEnvelope) -> Vec<u8> {
        let fields = [
            Some("taskledger-event-v2".to_string()),
            Some(e.prev_hash.clone()),
            Some(e.event_id.to_string()),
            Some(e.event_type.clone()),
            Some(e.event_version.to_string()),
            Some(e.task_id.clone()),
            Some(e.account_id.clone()),
            Some(e.sequence.to_string()),
            Some(e.global_position.to_string()),
            Some(e.recorded_at.timestamp_micros().to_string()),
            Some(e.actor.account_id.clone()),
            e.actor.key_id.clone(),
            Some(e.actor.scope.as_str().to_string()),
            e.request_id.clone(),
            Some(canonical_json(&e.payload)),
        ];
        let mut input = Vec::new();
        for f in fields {
            match f {
                Some(f) => {
                    input.extend_from_slice(&(f.len() as u64).to_be_bytes());
                    input.extend_from_slice(f.as_bytes());
                }
                None => input.extend_from_slice(&u64::MAX.to_be_bytes()),
            }
        }
        input
    }

    #[test]
    fn the_v2_input_written_in_place_is_the_documented_one_for_any_number_and_absent_field() {
        let mut e = envelope(HASH_V2);
        e.event_id = Uuid::parse_str("0190A1B2-C3D4-7E5F-8012-3456789ABCDE").unwrap();
        for (sequence, position, micros) in [
            (1, 1, 0),
            (i64::MAX, i64::MAX, -1_700_000_000_000_000),
            (42, 9_999_999_999, 1_700_000_000_123_456),
        ] {
            for (key_id, request_id) in [(None, None), (Some("k1"), Some("")), (Some(""), None)] {
                e.sequence = sequence;
                e.global_position = position;
                e.recorded_at = DateTime::from_timestamp_micros(micros).unwrap();
                e.actor.key_id = key_id.map(str::to_string);
                e.request_id = request_id.map(str::to_string);
                let mut reused = b"left over from the last event".to_vec();
                let payload = canonical_json(&e.payload);
                e.hash_fields(&payload).write_input(&mut reused).unwrap();
                assert_eq!(reused, v2_input_as_documented(&e));
                assert_eq!(e.hash_input().unwrap(), reused);
                let hash = hex::encode(Sha256::digest(&reused));
                assert_eq!(
                    e.hash_fields(&payload).hash_is(&hash, &mut reused),
                    Ok(true)
                );
                assert_eq!(
                    e.hash_fields(&payload)
                        .hash_is(&"0".repeat(64), &mut reused),
                    Ok(false)
                );
            }
        }
    }

    #[test]
    fn the_v2_hash_input_changes_with_any_field() {
        let base = envelope(HASH_V2);
        type Change = Box<dyn Fn(&mut EventEnvelope)>;
        let changed: Vec<Change> = vec![
            Box::new(|e| e.global_position = 8),
            Box::new(|e| e.sequence = 3),
            Box::new(|e| e.actor.key_id = None),
            Box::new(|e| e.actor.scope = Scope::Contributor),
            Box::new(|e| e.request_id = Some("r".into())),
            Box::new(|e| e.payload = json!({"x": 1})),
            Box::new(|e| e.prev_hash = "1".repeat(64)),
            Box::new(|e| e.event_version = 2),
        ];
        for change in changed {
            let mut other = base.clone();
            change(&mut other);
            assert_ne!(base.hash_input().unwrap(), other.hash_input().unwrap());
        }
    }

    #[test]
    fn v2_tells_a_missing_key_id_or_request_id_from_an_empty_one() {
        let mut missing = envelope(HASH_V2);
        missing.actor.key_id = None;
        missing.request_id = None;
        let mut empty_key = missing.clone();
        empty_key.actor.key_id = Some(String::new());
        let mut empty_request = missing.clone();
        empty_request.request_id = Some(String::new());
        let missing_hash = missing.expected_hash().unwrap();
        assert_ne!(missing_hash, empty_key.expected_hash().unwrap());
        assert_ne!(missing_hash, empty_request.expected_hash().unwrap());
        assert_ne!(
            empty_key.expected_hash().unwrap(),
            empty_request.expected_hash().unwrap()
        );
    }

    #[test]
    fn v1_hashes_a_missing_key_id_like_an_empty_one_as_the_first_release_did() {
        let mut missing = envelope(HASH_V1);
        missing.actor.key_id = None;
        let mut empty = missing.clone();
        empty.actor.key_id = Some(String::new());
        assert_eq!(
            missing.expected_hash().unwrap(),
            empty.expected_hash().unwrap()
        );
    }

    #[test]
    fn an_event_hashed_by_the_first_release_still_verifies() {
        let mut old = envelope(HASH_V1);
        old.request_id = Some("req-1".into());
        old.payload = json!({"metadata": {"score": 9.3e30, "p": 7.65e-25, "n": u64::MAX}});
        old.hash = first_release_hash(&old);
        assert!(old.hash_matches());
        // Read back from JSON without the field, as published before it existed.
        let mut published = serde_json::to_value(&old).unwrap();
        published.as_object_mut().unwrap().remove("hash_version");
        let read: EventEnvelope = serde_json::from_value(published).unwrap();
        assert!(read.hash_matches());
        // The same event claimed as v2 does not verify: the version is part of the input.
        let mut relabeled = old.clone();
        relabeled.hash_version = HASH_V2;
        assert!(!relabeled.hash_matches());
    }

    #[test]
    fn is_test_is_covered_by_the_hashed_account_id() {
        let mut test = envelope(HASH_V2);
        test.account_id = crate::ledger_of("acme", true);
        test.is_test = true;
        test.hash = test.expected_hash().unwrap();
        assert!(test.hash_matches());
        let mut flipped = test.clone();
        flipped.is_test = false;
        assert!(
            !flipped.hash_matches(),
            "a test event claimed live does not verify"
        );
        let mut moved = flipped.clone();
        moved.account_id = "acme".into();
        assert!(!moved.hash_matches(), "nor one moved to the live ledger");
        let live = envelope(HASH_V2);
        let mut claimed = live.clone();
        claimed.hash = claimed.expected_hash().unwrap();
        assert!(claimed.hash_matches());
        claimed.is_test = true;
        assert!(
            !claimed.hash_matches(),
            "a live event claimed test does not verify"
        );
    }

    #[test]
    fn an_unknown_hash_version_is_an_error_not_a_match() {
        let mut e = envelope(7);
        e.hash = String::new();
        assert_eq!(e.expected_hash(), Err(UnknownHashVersion(7)));
        assert!(!e.hash_matches());
    }

    #[test]
    fn sealed_events_chain_their_hashes_and_hash_the_text_they_store() {
        let actor = Actor {
            account_id: "acme".into(),
            key_id: Some("k1".into()),
            scope: Scope::Customer,
        };
        let ctx = EnvelopeContext {
            task_id: "t1",
            account_id: "acme",
            actor: &actor,
            request_id: Some("r1"),
            recorded_at: DateTime::from_timestamp_micros(1_700_000_000_000_000).unwrap(),
            last_sequence: 4,
            prev_hash: GENESIS_HASH,
            last_position: 10,
        };
        let events = [
            TaskEvent::TaskMetadataSet(TaskMetadataSet {
                metadata: json!({"b": 9.3e30, "a": 7.65e-25}),
            }),
            TaskEvent::TaskCanceled(TaskCanceled {}),
        ];
        let sealed = seal_events(&ctx, &events).unwrap();
        assert_eq!(sealed.len(), 2);
        assert_eq!(
            sealed[0].payload_json,
            r#"{"metadata":{"a":7.65e-25,"b":9.3e+30}}"#
        );
        assert_eq!(sealed[0].envelope.prev_hash, GENESIS_HASH);
        assert_eq!(sealed[1].envelope.prev_hash, sealed[0].envelope.hash);
        for (i, s) in (1i64..).zip(&sealed) {
            let e = &s.envelope;
            assert_eq!(e.sequence, 4 + i);
            assert_eq!(e.global_position, 10 + i);
            assert_eq!(e.hash_version, CURRENT_HASH_VERSION);
            assert_eq!(e.hash, e.expected_hash_of(&s.payload_json).unwrap());
            assert!(e.hash_matches(), "a consumer recomputes the same hash");
            let stored: Value = serde_json::from_str(&s.payload_json).unwrap();
            assert_eq!(stored, e.payload);
        }
    }

    #[test]
    fn numbers_survive_the_canonical_text_exactly() {
        // (as sent, as stored and hashed): floats in the shortest text that parses back to
        // the same f64, integers in plain decimal.
        for (text, stored) in [
            ("9.3e30", "9.3e+30"),
            ("7.65e-25", "7.65e-25"),
            ("1e308", "1e+308"),
            ("-0.0", "-0.0"),
            ("5e-324", "5e-324"),
            ("2.2250738585072014e-308", "2.2250738585072014e-308"),
            ("18446744073709551615", "18446744073709551615"),
            ("9007199254740993", "9007199254740993"),
            ("-9223372036854775808", "-9223372036854775808"),
            ("0.10", "0.1"),
        ] {
            let parsed: Value = serde_json::from_str(text).unwrap();
            let canonical = canonical_json(&parsed);
            assert_eq!(canonical, stored, "{text}");
            let back: Value = serde_json::from_str(&canonical).unwrap();
            assert_eq!(back, parsed, "{text}");
            assert_eq!(canonical_json(&back), canonical, "{text}");
            if parsed.is_f64() {
                let expected: f64 = text.parse().unwrap();
                let f = parsed.as_f64().unwrap();
                assert_eq!(f.to_bits(), expected.to_bits(), "{text} parses exactly");
            }
        }
    }
}
