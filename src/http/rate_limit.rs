//! Per-key rate limits: a token bucket for every API key that authenticates.
//!
//! A key may send `burst` requests at once and `per_sec` a second after that; over it the
//! answer is 429 with `Retry-After`. Every authenticated answer, refused or not, carries
//! `X-RateLimit-Limit` (the burst), `X-RateLimit-Remaining` and `X-RateLimit-Reset` (seconds
//! until the bucket is full again).
//!
//! The buckets live in this process (see the README's "Limits" for why): a sharded map, so
//! keys on different shards never wait for each other and a shard's lock is held only for a
//! few arithmetic operations, never across an await. Only keys that authenticated get a
//! bucket, so a flood of made-up keys cannot grow the map; a bucket that has refilled
//! completely is the same as no bucket and is dropped when its shard grows, which bounds
//! memory to the keys active in the last `burst / per_sec` seconds.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::extract::Caller;
use super::{ApiError, AppState};

/// Shards of the bucket map: enough that busy keys rarely share a lock.
const SHARDS: usize = 64;
/// A shard with this many buckets drops those that have refilled before taking a new one.
const SWEEP_AT: usize = 1024;
/// And keeps at most this many, dropping the longest idle: a bound however the keys behave.
const SHARD_CAP: usize = 4096;

/// Where the buckets read the time: the monotonic clock, or one a test moves by hand.
pub trait Clock: Send + Sync {
    /// Time since some fixed start; never goes back.
    fn now(&self) -> Duration;
}

/// The process's monotonic clock.
pub struct MonotonicClock(Instant);

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock(Instant::now())
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// How many requests a key may make: `burst` at once, `per_sec` sustained.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_sec: f64,
    pub burst: u32,
}

/// What one request's check decided, and the headers that say so.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
    /// Seconds until one request is allowed again (0 when this one was).
    pub retry_after_secs: u64,
}

impl Decision {
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        let mut set = |name: &'static str, value: u64| {
            headers.insert(name, HeaderValue::from(value));
        };
        set("x-ratelimit-limit", u64::from(self.limit));
        set("x-ratelimit-remaining", u64::from(self.remaining));
        set("x-ratelimit-reset", self.reset_secs);
        if !self.allowed {
            set("retry-after", self.retry_after_secs);
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Duration,
}

/// Every key's bucket.
pub struct RateLimiter {
    limit: RateLimit,
    clock: Arc<dyn Clock>,
    hasher: RandomState,
    shards: Vec<Mutex<HashMap<String, Bucket>>>,
}

impl RateLimiter {
    pub fn new(limit: RateLimit, clock: Arc<dyn Clock>) -> RateLimiter {
        RateLimiter {
            limit,
            clock,
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, key_id: &str) -> &Mutex<HashMap<String, Bucket>> {
        &self.shards[(self.hasher.hash_one(key_id) as usize) % SHARDS]
    }

    /// Takes one token from `key_id`'s bucket if it has one.
    pub fn check(&self, key_id: &str) -> Decision {
        let now = self.clock.now();
        let RateLimit { per_sec, burst } = self.limit;
        let capacity = f64::from(burst);
        let mut shard = self
            .shard(key_id)
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !shard.contains_key(key_id) {
            self.make_room(&mut shard, now);
        }
        let bucket = shard.entry(key_id.to_string()).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        let elapsed = now.saturating_sub(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_sec).min(capacity);
        bucket.at = now;
        let allowed = bucket.tokens >= 1.0;
        if allowed {
            bucket.tokens -= 1.0;
        }
        let tokens = bucket.tokens;
        Decision {
            allowed,
            limit: burst,
            remaining: tokens.floor() as u32,
            reset_secs: ((capacity - tokens) / per_sec).ceil() as u64,
            retry_after_secs: if allowed {
                0
            } else {
                ((1.0 - tokens) / per_sec).ceil().max(1.0) as u64
            },
        }
    }

    /// Before a new bucket: drops the buckets that have refilled (the same as none), and,
    /// past the cap, the longest idle ones.
    fn make_room(&self, shard: &mut HashMap<String, Bucket>, now: Duration) {
        if shard.len() < SWEEP_AT {
            return;
        }
        let RateLimit { per_sec, burst } = self.limit;
        let full_after = Duration::from_secs_f64(f64::from(burst) / per_sec);
        shard.retain(|_, b| now.saturating_sub(b.at) < full_after);
        if shard.len() >= SHARD_CAP {
            let mut ages: Vec<(Duration, String)> =
                shard.iter().map(|(k, b)| (b.at, k.clone())).collect();
            ages.sort_unstable();
            for (_, key) in ages.into_iter().take(shard.len() - SHARD_CAP / 2) {
                shard.remove(&key);
            }
        }
    }

    /// Buckets held, for tests of the memory bound.
    pub fn buckets(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

/// The layer of every route: a request whose key authenticates takes a token from the key's
/// bucket; one that does not authenticate passes untouched (its route answers 401, or serves
/// it if the route is public) and never makes a bucket.
pub async fn layer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(limiter) = state.rate_limiter.clone() else {
        return next.run(request).await;
    };
    if !request
        .headers()
        .contains_key(axum::http::header::AUTHORIZATION)
    {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    // Authenticating here also leaves the caller in the request's extensions, so the route
    // does not authenticate it a second time.
    let Ok(caller) = Caller::from_request_parts(&mut parts, &state).await else {
        return next.run(Request::from_parts(parts, body)).await;
    };
    let decision = limiter.check(&caller.principal.key_id);
    let mut response = if decision.allowed {
        next.run(Request::from_parts(parts, body)).await
    } else {
        state
            .metrics
            .observe_rate_limited(&caller.principal.account_name);
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "Too many requests for this API key: the limit is {} at once and {} a second \
                 (TASKLEDGER_RATE_LIMIT_BURST, TASKLEDGER_RATE_LIMIT_PER_SEC); retry after {} s.",
                decision.limit, limiter.limit.per_sec, decision.retry_after_secs
            ),
        )
        .into_response()
    };
    decision.write_headers(response.headers_mut());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock that moves only when told to.
    #[derive(Default)]
    struct HandClock(Mutex<Duration>);

    impl HandClock {
        fn advance(&self, by: Duration) {
            *self.0.lock().unwrap() += by;
        }
    }

    impl Clock for HandClock {
        fn now(&self) -> Duration {
            *self.0.lock().unwrap()
        }
    }

    fn limiter(per_sec: f64, burst: u32) -> (RateLimiter, Arc<HandClock>) {
        let clock = Arc::new(HandClock::default());
        (
            RateLimiter::new(RateLimit { per_sec, burst }, clock.clone()),
            clock,
        )
    }

    #[test]
    fn a_key_gets_its_burst_then_429s_until_the_bucket_refills() {
        let (limiter, clock) = limiter(2.0, 3);
        for remaining in [2, 1, 0] {
            let d = limiter.check("k1");
            assert!(d.allowed);
            assert_eq!((d.limit, d.remaining), (3, remaining));
        }
        let refused = limiter.check("k1");
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after_secs, 1);
        assert_eq!(refused.reset_secs, 2, "3 tokens at 2 a second");
        clock.advance(Duration::from_millis(500));
        assert!(limiter.check("k1").allowed, "one token after half a second");
        assert!(!limiter.check("k1").allowed);
        clock.advance(Duration::from_secs(60));
        let full = limiter.check("k1");
        assert!(full.allowed);
        assert_eq!(full.remaining, 2, "never more than the burst");
    }

    #[test]
    fn one_keys_empty_bucket_never_limits_another_key() {
        let (limiter, _) = limiter(1.0, 2);
        while limiter.check("busy").allowed {}
        for _ in 0..2 {
            assert!(limiter.check("quiet").allowed);
        }
    }

    #[test]
    fn refilled_buckets_are_dropped_so_memory_stays_bounded() {
        let (limiter, clock) = limiter(10.0, 10);
        for i in 0..(SHARDS * SWEEP_AT * 2) {
            limiter.check(&format!("key-{i}"));
            if i % 1000 == 0 {
                clock.advance(Duration::from_secs(2));
            }
        }
        assert!(
            limiter.buckets() <= SHARDS * SHARD_CAP,
            "{} buckets",
            limiter.buckets()
        );
        clock.advance(Duration::from_secs(2));
        for i in 0..SHARDS * SWEEP_AT {
            limiter.check(&format!("later-{i}"));
        }
        assert!(limiter.buckets() < SHARDS * SWEEP_AT * 2);
    }
}
