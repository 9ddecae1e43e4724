//! `GET /v1/events`: the account's events in global commit order, for consumers without Kafka.

use axum::routing::get;
use axum::Json;
use serde::{Deserialize, Serialize};
use taskledger_events::{EventEnvelope, LedgerEvent, Scope, TaskEvent};
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::extract::{AccountRead, Limit, Position, QueryParams, Time};
use super::{ApiError, Routes};
use crate::store::EventFilter;

pub(super) fn router() -> Routes {
    Routes::new().route("/v1/events", get(list_events))
}

#[derive(OpenApi)]
#[openapi(paths(list_events))]
pub(super) struct Docs;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(default)]
struct EventsParams {
    /// A global position: events strictly after it.
    #[param(value_type = Option<i64>, nullable = false, minimum = 0, default = 0)]
    after: Option<Position>,
    /// 1 to 1000.
    #[param(value_type = Option<i64>, nullable = false, minimum = 1, maximum = 1000, default = 100)]
    limit: Option<Limit<1000>>,
    /// Only this task's events (or, for a key id, that key's `ApiKeyCreated`/`ApiKeyRevoked`).
    #[param(value_type = Option<String>, nullable = false, max_length = 128)]
    task_id: Option<FilterText>,
    /// Only these event types, comma-separated (e.g. `TaskCompleted,TaskAudited`).
    #[param(value_type = Option<String>, nullable = false)]
    event_type: Option<EventTypes>,
    /// Only events caused by this API key.
    #[param(value_type = Option<String>, nullable = false, max_length = 128)]
    actor_key_id: Option<FilterText>,
    /// Only events caused with this scope: `customer`, `contributor` or `system`.
    #[param(value_type = Option<String>, nullable = false)]
    actor_scope: Option<ActorScope>,
    /// Only events caused by the request with this `x-request-id`.
    #[param(value_type = Option<String>, nullable = false, max_length = 128)]
    request_id: Option<FilterText>,
    /// Only events recorded after this time (RFC 3339, exclusive).
    #[param(value_type = Option<String>, format = DateTime, nullable = false)]
    recorded_after: Option<Time>,
    /// Only events recorded before this time (RFC 3339, exclusive).
    #[param(value_type = Option<String>, format = DateTime, nullable = false)]
    recorded_before: Option<Time>,
}

/// A filter value: 1 to 128 characters without U+0000.
#[derive(Debug, Clone)]
struct FilterText(String);

impl<'de> Deserialize<'de> for FilterText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() || s.chars().count() > 128 || s.contains('\0') {
            return Err(serde::de::Error::custom(
                "must be 1 to 128 characters without U+0000",
            ));
        }
        Ok(FilterText(s))
    }
}

/// A comma list of known event types, each once.
#[derive(Debug, Clone, Default)]
struct EventTypes(Vec<String>);

impl<'de> Deserialize<'de> for EventTypes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let known = TaskEvent::CURRENT_VERSIONS
            .iter()
            .chain(LedgerEvent::other_stream_versions())
            .map(|(name, _)| *name);
        let mut types: Vec<String> = Vec::new();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let Some(known) = known.clone().find(|k| *k == name) else {
                return Err(serde::de::Error::custom(format!(
                    "{:?} is not an event type (one of {})",
                    name.chars().take(64).collect::<String>(),
                    known.collect::<Vec<_>>().join(", ")
                )));
            };
            if !types.iter().any(|t| t == known) {
                types.push(known.to_string());
            }
        }
        if types.is_empty() {
            return Err(serde::de::Error::custom(
                "must name at least one event type",
            ));
        }
        Ok(EventTypes(types))
    }
}

/// `customer`, `contributor` or `system`.
#[derive(Debug, Clone, Copy)]
struct ActorScope(Scope);

impl<'de> Deserialize<'de> for ActorScope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Scope::parse(&s).map(ActorScope).map_err(|_| {
            serde::de::Error::custom(format!(
                "must be customer, contributor or system; got {:?}",
                s.chars().take(64).collect::<String>()
            ))
        })
    }
}

#[derive(Serialize, ToSchema)]
#[schema(as = EventPage)]
pub struct EventsOut {
    events: Vec<EventEnvelope>,
    /// Pass as `after` to continue; equal to the request's `after` when nothing is new.
    next_after: i64,
    has_more: bool,
}

/// The account's events after a global position, oldest first.
#[utoipa::path(
    get,
    path = "/v1/events",
    description = "The account's events in global commit order: the same envelopes as the \
                   Kafka stream, for consumers without Kafka, API key events \
                   (`ApiKeyCreated`, `ApiKeyRevoked`) included. The filters combine; each \
                   reads an index in global order, so a page costs the same however large \
                   the ledger. Pass `next_after` back as `after` to continue.",
    params(EventsParams),
    responses((status = 200, description = "A page of events.", body = EventsOut))
)]
async fn list_events(
    AccountRead { state, caller }: AccountRead,
    QueryParams(query): QueryParams<EventsParams>,
) -> Result<Json<EventsOut>, ApiError> {
    let after = query.after.unwrap_or_default().0;
    let limit = query.limit.map_or(100, |Limit(n)| n);
    let filter = EventFilter {
        task_id: query.task_id.map(|t| t.0),
        event_types: query.event_type.unwrap_or_default().0,
        actor_key_id: query.actor_key_id.map(|t| t.0),
        actor_scope: query.actor_scope.map(|s| s.0.as_str().to_string()),
        request_id: query.request_id.map(|t| t.0),
        recorded_after_us: query.recorded_after.map(|Time(t)| t.timestamp_micros()),
        recorded_before_us: query.recorded_before.map(|Time(t)| t.timestamp_micros()),
    };
    let store = state.ledger.store();
    let mut events = if filter == EventFilter::default() {
        store
            .events_after(after, limit + 1, Some(caller.ledger().as_str()))
            .await?
    } else {
        store
            .search_events(&caller.ledger(), after, limit + 1, &filter)
            .await?
    };
    let has_more = events.len() as i64 > limit;
    events.truncate(limit as usize);
    let next_after = events.last().map_or(after, |e| e.global_position);
    Ok(Json(EventsOut {
        events,
        next_after,
        has_more,
    }))
}
