//! `GET /v1/events`: the account's events in global commit order, for consumers without Kafka.

use axum::routing::get;
use axum::Json;
use serde::{Deserialize, Serialize};
use taskledger_events::EventEnvelope;
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::extract::{AccountRead, Limit, Position, QueryParams};
use super::{ApiError, Routes};

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
                   Kafka stream, for consumers without Kafka. Pass `next_after` back as \
                   `after` to continue.",
    params(EventsParams),
    responses((status = 200, description = "A page of events.", body = EventsOut))
)]
async fn list_events(
    AccountRead { state, caller }: AccountRead,
    QueryParams(query): QueryParams<EventsParams>,
) -> Result<Json<EventsOut>, ApiError> {
    let after = query.after.unwrap_or_default().0;
    let limit = query.limit.map_or(100, |Limit(n)| n);
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
