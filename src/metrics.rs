//! Prometheus metrics of one running application.
//!
//! Every [`Metrics`] owns its own [`Registry`] instead of the process-wide default one: the
//! integration tests start many applications in one process, and each must count only its own
//! traffic (and registering the same names twice globally would fail).
//!
//! A leaf: it knows metric names and plain label values, nothing of the ledger, the relay or
//! the callbacks, which call it.

use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The route label of requests that matched no route, so probes of random URLs cannot blow up
/// the label cardinality.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Handles on every metric of one application. Cheap to clone: the clones share the counters.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    commands: IntCounterVec,
    events_appended: IntCounter,
    append_batch_size: Histogram,
    relay_state: IntGauge,
    relay_published: IntCounter,
    relay_lag_events: IntGauge,
    relay_lag_seconds: Gauge,
    callback_attempts: IntCounterVec,
    callback_backlog: IntGauge,
    callback_oldest_pending: Gauge,
    callback_undecodable: IntCounter,
    append_fallbacks: IntCounter,
    rate_limited: IntCounterVec,
    store_up: IntGauge,
    pool_connections: IntGaugeVec,
    pool_max_connections: IntGauge,
}

/// Registers a new metric where it is made, so none can be left out of `/metrics`, and
/// returns its handle.
fn registered<M: Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.expect("valid metric options");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique within a fresh registry");
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        Metrics {
            http_requests: registered(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "taskledger_http_requests_total",
                        "HTTP requests answered, by method, route template and status code.",
                    ),
                    &["method", "route", "status"],
                ),
            ),
            http_duration: registered(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "taskledger_http_request_duration_seconds",
                        "Time from receiving a request to producing its response head.",
                    )
                    .buckets(vec![
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    ]),
                    &["method", "route", "status"],
                ),
            ),
            commands: registered(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "taskledger_commands_total",
                        "Task commands run by the ledger, by command and outcome \
                         (ok, noop, rejected, conflict, error).",
                    ),
                    &["command", "outcome"],
                ),
            ),
            events_appended: registered(
                &registry,
                IntCounter::new(
                    "taskledger_events_appended_total",
                    "Events committed to the ledger by this process.",
                ),
            ),
            append_batch_size: registered(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "taskledger_append_batch_size",
                        "Commands per group-commit transaction.",
                    )
                    .buckets(vec![
                        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0,
                    ]),
                ),
            ),
            relay_state: registered(
                &registry,
                IntGauge::new(
                    "taskledger_relay_state",
                    "Kafka relay of this process: 0 standby (another process relays, or relay off), \
                     1 active, 2 retrying (broker unreachable), 3 failed (halted on a final error).",
                ),
            ),
            relay_published: registered(
                &registry,
                IntCounter::new(
                    "taskledger_relay_published_total",
                    "Events this process published to Kafka and saw acknowledged.",
                ),
            ),
            relay_lag_events: registered(
                &registry,
                IntGauge::new(
                    "taskledger_relay_lag_events",
                    "Events committed but not yet acknowledged by the broker.",
                ),
            ),
            relay_lag_seconds: registered(
                &registry,
                Gauge::new(
                    "taskledger_relay_lag_seconds",
                    "Age of the oldest event not yet acknowledged by the broker (0 when caught up).",
                ),
            ),
            callback_attempts: registered(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "taskledger_callback_deliveries_total",
                        "Callback attempts by outcome: delivered, retry (scheduled again), failed (gave up; \
                         also a delivery refused before any attempt, e.g. a URL that cannot be stored), lease_lost (the \
                         attempt outlived its lease; the dispatcher that took it over records the outcome).",
                    ),
                    &["outcome"],
                ),
            ),
            callback_backlog: registered(
                &registry,
                IntGauge::new(
                    "taskledger_callback_backlog",
                    "Callback deliveries not yet delivered or given up.",
                ),
            ),
            callback_oldest_pending: registered(
                &registry,
                Gauge::new(
                    "taskledger_callback_oldest_pending_seconds",
                    "Age of the oldest pending callback delivery (0 when none).",
                ),
            ),
            callback_undecodable: registered(
                &registry,
                IntCounter::new(
                    "taskledger_callback_undecodable_events_total",
                    "Events the callback scheduler could not decode (or whose task it could not rebuild), \
                     so it could not tell whether they warrant a callback; each is logged at error level.",
                ),
            ),
            append_fallbacks: registered(
                &registry,
                IntCounter::new(
                    "taskledger_append_batch_fallbacks_total",
                    "Group-commit transactions that failed as a whole and were retried one \
                     command per transaction.",
                ),
            ),
            rate_limited: registered(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "taskledger_rate_limited_total",
                        "Requests refused with 429 because their API key was over its rate \
                         limit, by account name.",
                    ),
                    &["account"],
                ),
            ),
            store_up: registered(
                &registry,
                IntGauge::new(
                    "taskledger_store_up",
                    "1 when the ledger store answered this scrape's ping (what /readyz checks), \
                     0 when it did not.",
                ),
            ),
            pool_connections: registered(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "taskledger_db_pool_connections",
                        "Database pool connections by state (idle, in_use), at scrape time.",
                    ),
                    &["state"],
                ),
            ),
            pool_max_connections: registered(
                &registry,
                IntGauge::new(
                    "taskledger_db_pool_max_connections",
                    "The most connections the database pool opens.",
                ),
            ),
            registry,
        }
        .with_known_labels()
    }

    /// Every outcome of a closed set starts at 0, so dashboards and alerts find each series
    /// before its first occurrence.
    fn with_known_labels(self) -> Metrics {
        for outcome in ["delivered", "retry", "failed"] {
            self.callback_attempts.with_label_values(&[outcome]);
        }
        self
    }

    /// A request of `account`'s was refused by its key's rate limit.
    pub fn observe_rate_limited(&self, account: &str) {
        self.rate_limited.with_label_values(&[account]).inc();
    }

    /// A group-commit transaction failed as a whole and its commands are retried one each.
    pub fn observe_append_fallback(&self) {
        self.append_fallbacks.inc();
    }

    /// What a scrape saw of the store: whether it answered, and the pool's connections.
    pub fn set_store(&self, up: bool, idle: i64, in_use: i64, max: i64) {
        self.store_up.set(i64::from(up));
        self.pool_connections.with_label_values(&["idle"]).set(idle);
        self.pool_connections
            .with_label_values(&["in_use"])
            .set(in_use);
        self.pool_max_connections.set(max);
    }

    pub fn observe_http(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let status = status.to_string();
        let labels = [method, route, status.as_str()];
        self.http_requests.with_label_values(&labels).inc();
        self.http_duration
            .with_label_values(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// One task command run: `command` names it, `outcome` is ok, noop, rejected, conflict
    /// or error.
    pub fn observe_command(&self, command: &str, outcome: &str) {
        self.commands.with_label_values(&[command, outcome]).inc();
    }

    pub fn observe_batch(&self, commands: usize) {
        self.append_batch_size.observe(commands as f64);
    }

    pub fn observe_events_appended(&self, events: usize) {
        self.events_appended.inc_by(events as u64);
    }

    /// The relay's state: 0 standby, 1 active, 2 retrying, 3 failed.
    pub fn set_relay_state(&self, state: i64) {
        self.relay_state.set(state);
    }

    pub fn observe_relay_published(&self, events: u64) {
        self.relay_published.inc_by(events);
    }

    pub fn set_relay_lag(&self, events: i64, seconds: f64) {
        self.relay_lag_events.set(events);
        self.relay_lag_seconds.set(seconds);
    }

    /// One callback attempt's outcome: delivered, retry or failed.
    pub fn observe_callback_attempt(&self, outcome: &str) {
        self.callback_attempts.with_label_values(&[outcome]).inc();
    }

    pub fn set_callback_backlog(&self, pending: i64, oldest_seconds: f64) {
        self.callback_backlog.set(pending);
        self.callback_oldest_pending.set(oldest_seconds);
    }

    pub fn observe_callback_undecodable_event(&self) {
        self.callback_undecodable.inc();
    }

    /// Everything in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exposed_under_its_documented_name() {
        let metrics = Metrics::new();
        metrics.observe_http("GET", "/v1/task/{id}", 200, Duration::from_millis(3));
        metrics.observe_command("cancel", "conflict");
        metrics.set_relay_state(2);
        metrics.observe_callback_attempt("retry");
        metrics.observe_callback_undecodable_event();
        metrics.observe_batch(3);
        metrics.observe_events_appended(2);
        let text = metrics.render();
        for expected in [
            r#"taskledger_http_requests_total{method="GET",route="/v1/task/{id}",status="200"} 1"#,
            r#"taskledger_http_request_duration_seconds_count{method="GET",route="/v1/task/{id}",status="200"} 1"#,
            r#"taskledger_commands_total{command="cancel",outcome="conflict"} 1"#,
            "taskledger_events_appended_total 2",
            "taskledger_append_batch_size_sum 3",
            "taskledger_relay_state 2",
            r#"taskledger_callback_deliveries_total{outcome="retry"} 1"#,
            "taskledger_callback_undecodable_events_total 1",
        ] {
            assert!(text.contains(expected), "{expected} missing from\n{text}");
        }
    }

    #[test]
    fn two_applications_do_not_share_counters() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.observe_events_appended(5);
        assert!(b.render().contains("taskledger_events_appended_total 0"));
    }
}
