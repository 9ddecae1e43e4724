//! What the followers of the global order (relay, callback scheduler) need to know of the
//! next event without decoding it: they must see past an event too corrupt to read.

use super::{Store, StoreError};

/// The first event after a position, undecoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct NextEvent {
    pub global_position: i64,
    pub recorded_at_us: i64,
}

impl Store {
    /// The first event after `after`, without reading its payload.
    pub async fn next_event_after(&self, after: i64) -> Result<Option<NextEvent>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT global_position, recorded_at_us FROM events WHERE global_position > $1 \
             ORDER BY global_position LIMIT 1",
        )
        .bind(after)
        .fetch_optional(&self.pool)
        .await?)
    }
}
