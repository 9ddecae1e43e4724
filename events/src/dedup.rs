use std::collections::{HashSet, VecDeque};

use uuid::Uuid;

/// Drops the redeliveries that at-least-once delivery allows, by event id.
///
/// It remembers the last `capacity` ids: a redelivery follows its original closely (a relay
/// restart republishes at most its last unacknowledged batch, 2,000 events), so a window of
/// some thousands is plenty for the stream, at a bounded memory cost.
#[derive(Debug, Clone)]
pub struct Deduplicator {
    seen: HashSet<Uuid>,
    order: VecDeque<Uuid>,
    capacity: usize,
}

impl Deduplicator {
    pub fn new(capacity: usize) -> Deduplicator {
        Deduplicator {
            seen: HashSet::with_capacity(capacity.min(1 << 16)),
            order: VecDeque::with_capacity(capacity.min(1 << 16)),
            capacity: capacity.max(1),
        }
    }

    /// `true` the first time an id is offered (process the event), `false` for a repeat
    /// within the window (skip it).
    pub fn first_time(&mut self, event_id: Uuid) -> bool {
        if !self.seen.insert(event_id) {
            return false;
        }
        self.order.push_back(event_id);
        if self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.seen.remove(&oldest);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn a_repeat_within_the_window_is_dropped() {
        let mut d = Deduplicator::new(3);
        assert!(d.first_time(id(1)));
        assert!(d.first_time(id(2)));
        assert!(!d.first_time(id(1)));
        assert!(!d.first_time(id(2)));
    }

    #[test]
    fn the_window_forgets_the_oldest_ids_only() {
        let mut d = Deduplicator::new(2);
        for n in 1..=3 {
            assert!(d.first_time(id(n)));
        }
        assert!(d.first_time(id(1)), "1 fell out of the window");
        assert!(!d.first_time(id(3)), "3 is still remembered");
    }
}
