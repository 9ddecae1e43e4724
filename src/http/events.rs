//! `GET /v1/events`: the account's events in global commit order, for consumers without Kafka.

use axum::extract::{RawQuery, State};
use axum::routing::get;
use axum::Json;
use serde::Serialize;
use taskledger_events::EventEnvelope;
use utoipa::{OpenApi, ToSchema};

use super::extract::{parse_limit, query_pairs, Caller};
use super::openapi::EventsParams;
use super::{ApiError, AppState, Routes};

pub(super) fn router() -> Routes {
    Routes::new().route("/v1/events", get(feed))
}

#[derive(OpenApi)]
#[openapi(paths(feed))]
pub(super) struct Docs;

const MAX_LIMIT: i64 = 1000;

#[derive(Serialize, ToSchema)]
#[schema(as = EventPage)]
pub struct EventsOut {
    #[schema(value_type = Vec<super::openapi::EventEnvelope>)]
    events: Vec<EventEnvelope>,
    /// Pass as `after` to continue; equal to the request's `after` when nothing is new.
    next_after: i64,
    has_more: bool,
}

/// The account's events after a global position, oldest first.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    operation_id = "list_events",
    description = "The account's events in global commit order: the same envelopes as the \
                   Kafka stream, for consumers without Kafka. Pass `next_after` back as \
                   `after` to continue.",
    params(EventsParams),
    responses((status = 200, description = "A page of events.", body = EventsOut))
)]
async fn feed(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<EventsOut>, ApiError> {
    let mut after = 0;
    let mut limit = 100;
    for (name, value) in query_pairs(query.as_deref()) {
        match name.as_str() {
            "after" => {
                after = value
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "after must be a global position (an integer >= 0); got {value:?}"
                        ))
                    })?
            }
            "limit" => limit = parse_limit(&value, MAX_LIMIT)?,
            _ => {}
        }
    }
    let mut events = state
        .ledger
        .store()
        .events_after(after, limit + 1, Some(caller.account_id()))
        .await?;
    let has_more = events.len() as i64 > limit;
    events.truncate(limit as usize);
    let next_after = events.last().map_or(after, |e| e.global_position);
    Ok(Json(EventsOut {
        events,
        next_after,
        has_more,
    }))
}
