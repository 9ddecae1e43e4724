//! When to try a delivery again.

use std::time::Duration;

/// The delays between attempts: `base · r^k`, with `r` chosen so the delays add up to the
/// span (never shrinking: `r ≥ 1`).
#[derive(Debug, Clone)]
pub struct RetrySchedule {
    base_ms: f64,
    ratio: f64,
    attempts: u32,
}

impl RetrySchedule {
    pub fn new(base_ms: u64, span_secs: u64, attempts: u32) -> RetrySchedule {
        let base_ms = base_ms.max(1) as f64;
        let gaps = attempts.saturating_sub(1);
        let span_ms = span_secs as f64 * 1000.0;
        let total = |r: f64| (0..gaps).map(|k| base_ms * r.powi(k as i32)).sum::<f64>();
        let ratio = if gaps <= 1 || total(1.0) >= span_ms {
            1.0
        } else {
            let (mut lo, mut hi) = (1.0, 2.0);
            while total(hi) < span_ms {
                hi *= 2.0;
            }
            for _ in 0..100 {
                let mid = (lo + hi) / 2.0;
                if total(mid) < span_ms {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            (lo + hi) / 2.0
        };
        RetrySchedule {
            base_ms,
            ratio,
            attempts,
        }
    }

    /// The pause after the `attempt`-th failed attempt (1-based), before jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let k = attempt.saturating_sub(1) as i32;
        Duration::from_millis((self.base_ms * self.ratio.powi(k)).min(1e12) as u64)
    }

    pub fn total(&self) -> Duration {
        (1..self.attempts).map(|a| self.delay(a)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_schedule_spans_about_a_day_over_twenty_attempts() {
        let s = RetrySchedule::new(10_000, 24 * 3600, 20);
        let total = s.total().as_secs_f64();
        assert!((total - 86_400.0).abs() < 60.0, "{total}");
        assert_eq!(s.delay(1), Duration::from_secs(10));
        assert!(s.delay(2) > s.delay(1) && s.delay(19) > s.delay(18));
    }

    #[test]
    fn a_schedule_never_shrinks_its_delays() {
        let s = RetrySchedule::new(1000, 1, 5);
        assert_eq!(s.delay(1), s.delay(4));
    }
}
