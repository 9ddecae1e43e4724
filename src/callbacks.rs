//! The callback reactor: signed, retried webhook deliveries driven by the event log.
//!
//! A scheduler (one per ledger, under a lease) follows the global order from a durable
//! checkpoint and records a delivery for every event that warrants one (a task with a
//! `callback_url` completed, errored, or audited by the workforce), with the task as of that
//! event. Dispatchers (every process) claim due deliveries under a lease, POST them, and either
//! record the outcome as an event or schedule the next attempt. Nothing is held in memory
//! only: a crash or restart resumes from the tables, at least once, and every attempt of a
//! delivery carries the same `refonte-callback-id` so receivers can de-duplicate.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use taskledger_events::{Actor, AuditSource, Scope, TaskEvent};
use taskledger_projections::fold_all;
use tokio::sync::{watch, Semaphore};

use crate::domain::{TaskAction, TaskCommand, TaskId};
use crate::ledger::{CommandContext, Ledger};
use crate::store::{Delivery, Store, StoreError};

/// Callback settings, from flags or the environment.
#[derive(Debug, Clone, Args)]
pub struct CallbackSettings {
    /// Attempts per delivery before it is recorded as failed.
    #[arg(long, env = "CALLBACK_MAX_ATTEMPTS", default_value_t = 20)]
    pub callback_max_attempts: u32,

    /// The first back-off, in milliseconds; later ones grow geometrically so that all the
    /// attempts span `CALLBACK_RETRY_SPAN_SECS`.
    #[arg(long, env = "CALLBACK_RETRY_BASE_MS", default_value_t = 10_000)]
    pub callback_retry_base_ms: u64,

    /// How long the whole retry schedule lasts, in seconds.
    #[arg(long, env = "CALLBACK_RETRY_SPAN_SECS", default_value_t = 24 * 60 * 60)]
    pub callback_retry_span_secs: u64,

    /// Time allowed for one attempt, in milliseconds.
    #[arg(long, env = "CALLBACK_TIMEOUT_MS", default_value_t = 10_000)]
    pub callback_timeout_ms: u64,

    /// Allow callbacks to loopback, private and link-local addresses (tests, laptops).
    #[arg(long, env = "CALLBACK_ALLOW_PRIVATE_NETWORKS", default_value_t = false, action = clap::ArgAction::Set)]
    pub callback_allow_private_networks: bool,

    /// Deliveries attempted at once by this process.
    #[arg(long, env = "CALLBACK_CONCURRENCY", default_value_t = 16)]
    pub callback_concurrency: usize,
}

/// What the reactor reports; implemented by the metrics registry.
pub trait CallbackObserver: Send + Sync + 'static {
    /// `delivered`, `retry` or `failed`.
    fn attempt(&self, outcome: &str);
    fn backlog(&self, pending: i64, oldest_seconds: f64);
}

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

/// The signature header value: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
/// Receivers recompute it with their secret and reject old timestamps (replays).
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// Loopback, private, link-local, unspecified, multicast and shared (CGNAT) addresses.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

pub struct Reactor {
    store: Store,
    ledger: Ledger,
    settings: CallbackSettings,
    schedule: RetrySchedule,
    observer: Arc<dyn CallbackObserver>,
    wake: watch::Receiver<u64>,
}

const READER: &str = "callbacks";
const POLL: Duration = Duration::from_millis(200);

/// Why one attempt did not deliver.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("the receiver answered {0}")]
    Status(u16),
    #[error("{0}")]
    Transport(String),
    /// The URL can never be delivered to (bad URL, private address): no retry helps.
    #[error("{0}")]
    Refused(String),
}

impl Reactor {
    pub fn new(
        ledger: Ledger,
        settings: CallbackSettings,
        observer: Arc<dyn CallbackObserver>,
    ) -> Reactor {
        let schedule = RetrySchedule::new(
            settings.callback_retry_base_ms,
            settings.callback_retry_span_secs,
            settings.callback_max_attempts,
        );
        Reactor {
            store: ledger.store().clone(),
            wake: ledger.commits(),
            ledger,
            settings,
            schedule,
            observer,
        }
    }

    /// Runs the scheduler and the dispatcher until the process ends.
    pub async fn run(self) {
        let this = Arc::new(self);
        let scheduler = tokio::spawn(this.clone().schedule_forever());
        this.dispatch_forever().await;
        scheduler.abort();
    }

    async fn schedule_forever(self: Arc<Self>) {
        let mut wake = self.wake.clone();
        loop {
            let Ok(Some(mut lease)) = self.store.try_lead(READER).await else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            while lease.still_held().await {
                match self.schedule_next().await {
                    Ok(0) => crate::relay::idle(&mut wake).await,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "callback scheduler retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    }

    /// Schedules the deliveries of the next events after the checkpoint; returns how many
    /// events it moved past.
    async fn schedule_next(&self) -> Result<usize, StoreError> {
        let checkpoint = self.store.reader_checkpoint(READER).await?;
        let events = self.store.events_after(checkpoint, 200, None).await?;
        let Some(last) = events.last().map(|e| e.global_position) else {
            return Ok(0);
        };
        for envelope in &events {
            let due = match envelope.event() {
                Ok(TaskEvent::TaskCompleted(_) | TaskEvent::TaskErrored(_)) => true,
                Ok(TaskEvent::TaskAudited(a)) => a.audit_source == AuditSource::Refonte,
                _ => false,
            };
            if !due {
                continue;
            }
            let history = self
                .store
                .task_events(&envelope.account_id, &envelope.task_id, None)
                .await?;
            let upto: Vec<(chrono::DateTime<chrono::Utc>, TaskEvent)> = history
                .iter()
                .filter(|e| e.sequence <= envelope.sequence)
                .filter_map(|e| e.event().ok().map(|ev| (e.recorded_at, ev)))
                .collect();
            let view = fold_all(&envelope.task_id, upto.iter().map(|(t, e)| (*t, e)))
                .ok()
                .flatten();
            let Some(view) = view else { continue };
            let Some(url) = view.callback_url.clone() else {
                continue;
            };
            let body = json!({
                "task": view,
                "response": view.response.clone().unwrap_or(Value::Null),
                "task_id": view.task_id,
            });
            self.store
                .schedule_delivery(&Delivery {
                    delivery_id: envelope.event_id.to_string(),
                    account_id: envelope.account_id.clone(),
                    task_id: envelope.task_id.clone(),
                    for_sequence: envelope.sequence,
                    url,
                    body: body.to_string(),
                    attempts: 0,
                    created_at_us: 0,
                })
                .await?;
        }
        self.store.advance_reader_checkpoint(READER, last).await?;
        Ok(events.len())
    }

    async fn dispatch_forever(self: Arc<Self>) {
        let permits = Arc::new(Semaphore::new(self.settings.callback_concurrency.max(1)));
        // Long enough for one attempt and recording its outcome; a process that died holding
        // a lease delays that delivery by at most this long.
        let lease_us = (self.settings.callback_timeout_ms as i64 + 5_000) * 1000;
        let mut tick = 0u32;
        loop {
            tick = tick.wrapping_add(1);
            if tick % 5 == 1 {
                self.report_backlog().await;
            }
            let permit = permits
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            match self.store.claim_due_delivery(lease_us).await {
                Ok(Some(delivery)) => {
                    let this = self.clone();
                    tokio::spawn(async move {
                        this.attempt(delivery).await;
                        drop(permit);
                    });
                }
                Ok(None) => {
                    drop(permit);
                    tokio::time::sleep(POLL).await;
                }
                Err(e) => {
                    drop(permit);
                    tracing::warn!(error = %e, "callback dispatcher cannot reach the store");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn report_backlog(&self) {
        if let Ok(b) = self.store.delivery_backlog().await {
            let oldest = b.oldest_pending_created_at_us.map_or(0.0, |t| {
                (chrono::Utc::now().timestamp_micros() - t).max(0) as f64 / 1e6
            });
            self.observer.backlog(b.pending, oldest);
        }
    }

    async fn attempt(&self, delivery: Delivery) {
        let attempt = delivery.attempts + 1;
        let result = self.post(&delivery, attempt).await;
        let outcome = match result {
            Ok(status) => {
                let recorded = self
                    .record(
                        &delivery,
                        TaskAction::RecordCallbackDelivered {
                            delivery_id: delivery.delivery_id.clone(),
                            for_sequence: delivery.for_sequence,
                            attempts: attempt,
                            status_code: status,
                        },
                    )
                    .await;
                if recorded {
                    self.store
                        .delivery_done(&delivery.delivery_id, "delivered", attempt, None)
                        .await
                        .map(|_| "delivered")
                } else {
                    // Not recorded: leave it leased; it is retried once the lease expires.
                    Ok("retry")
                }
            }
            Err(e)
                if attempt >= self.settings.callback_max_attempts
                    || matches!(e, AttemptError::Refused(_)) =>
            {
                let message = e.to_string();
                tracing::warn!(delivery_id = %delivery.delivery_id, attempt, error = %message, "callback failed for good");
                let recorded = self
                    .record(
                        &delivery,
                        TaskAction::RecordCallbackFailed {
                            delivery_id: delivery.delivery_id.clone(),
                            for_sequence: delivery.for_sequence,
                            attempts: attempt,
                            last_error: message.clone(),
                        },
                    )
                    .await;
                if recorded {
                    self.store
                        .delivery_done(&delivery.delivery_id, "failed", attempt, Some(&message))
                        .await
                        .map(|_| "failed")
                } else {
                    Ok("retry")
                }
            }
            Err(e) => {
                let delay = self.schedule.delay(attempt);
                let jitter = rand::random_range(0.8..1.2);
                let next = chrono::Utc::now().timestamp_micros()
                    + (delay.as_micros() as f64 * jitter) as i64;
                tracing::info!(delivery_id = %delivery.delivery_id, attempt, error = %e, retry_in_ms = delay.as_millis() as u64, "callback attempt failed");
                self.store
                    .delivery_retry(&delivery.delivery_id, attempt, next, &e.to_string())
                    .await
                    .map(|_| "retry")
            }
        };
        match outcome {
            Ok(outcome) => self.observer.attempt(outcome),
            Err(e) => {
                tracing::warn!(error = %e, "recording a callback attempt failed; it will be retried")
            }
        }
    }

    /// Records a delivery's outcome as an event of its task; `false` if that failed.
    async fn record(&self, delivery: &Delivery, action: TaskAction) -> bool {
        let Some(task_id) = TaskId::parse(&delivery.task_id) else {
            return false;
        };
        let ctx = CommandContext {
            actor: Actor {
                account_id: delivery.account_id.clone(),
                key_id: None,
                scope: Scope::System,
            },
            request_id: Some(format!("callback-{}", delivery.delivery_id)),
        };
        match self
            .ledger
            .execute(
                &ctx,
                &task_id,
                TaskCommand::new(Scope::System, action),
                None,
            )
            .await
        {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, delivery_id = %delivery.delivery_id, "recording a callback outcome failed");
                false
            }
        }
    }

    /// One POST; the status of a 2xx answer.
    async fn post(&self, delivery: &Delivery, attempt: u32) -> Result<u16, AttemptError> {
        let url = url::Url::parse(&delivery.url)
            .map_err(|e| AttemptError::Refused(format!("invalid callback_url: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(AttemptError::Refused(
                "callback_url must be http or https".into(),
            ));
        }
        let host = url
            .host_str()
            .ok_or_else(|| AttemptError::Refused("callback_url has no host".into()))?
            .to_string();
        let port = url.port_or_known_default().unwrap_or(80);
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
            .await
            .map_err(|e| AttemptError::Transport(format!("cannot resolve {host}: {e}")))?
            .collect();
        let Some(first) = addrs.first().copied() else {
            return Err(AttemptError::Transport(format!("{host} has no address")));
        };
        if !self.settings.callback_allow_private_networks
            && addrs.iter().any(|a| is_private(a.ip()))
        {
            return Err(AttemptError::Refused(format!(
                "{host} resolves to a private or loopback address; set CALLBACK_ALLOW_PRIVATE_NETWORKS=true to allow it"
            )));
        }
        let secret = self
            .store
            .callback_secret_of(&delivery.account_id)
            .await
            .map_err(|e| AttemptError::Transport(e.to_string()))?
            .unwrap_or_default();
        // Pin the connection to the address just checked, so a second DNS answer cannot
        // redirect it to a private one.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_millis(self.settings.callback_timeout_ms))
            .resolve(&host, first)
            .user_agent(concat!("taskledger/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| AttemptError::Transport(e.to_string()))?;
        let now = chrono::Utc::now().timestamp();
        let response = client
            .post(url)
            .header("content-type", "application/json")
            .header("refonte-callback-auth", &secret)
            .header(
                "refonte-callback-signature",
                signature(&secret, now, delivery.body.as_bytes()),
            )
            .header("refonte-callback-id", &delivery.delivery_id)
            .header("refonte-callback-attempt", attempt.to_string())
            .body(delivery.body.clone())
            .send()
            .await
            .map_err(|e| AttemptError::Transport(e.to_string()))?;
        let status = response.status();
        if status.is_success() {
            Ok(status.as_u16())
        } else {
            Err(AttemptError::Status(status.as_u16()))
        }
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

    #[test]
    fn the_signature_is_an_hmac_of_timestamp_and_body() {
        // Known answer, from Python's hmac module:
        // hmac.new(b"secret", b"1700000000.{}", hashlib.sha256).hexdigest()
        assert_eq!(
            signature("secret", 1_700_000_000, b"{}"),
            "t=1700000000,v1=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
        );
    }

    #[test]
    fn private_loopback_and_link_local_addresses_are_recognised() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_private(private.parse().unwrap()), "{private}");
        }
        for public in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(!is_private(public.parse().unwrap()), "{public}");
        }
    }
}
