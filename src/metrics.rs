//! Prometheus metrics of one running application.
//!
//! Every [`Metrics`] owns its own [`Registry`] instead of the process-wide default one: the
//! integration tests start many applications in one process, and each must count only its own
//! traffic (and registering the same names twice globally would fail).

use std::time::Duration;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};

use crate::callbacks::CallbackObserver;
use crate::domain::TaskAction;
use crate::ledger::LedgerError;
use crate::relay::{RelayObserver, RelayState};
use crate::store::Committed;

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
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new(
                "taskledger_http_requests_total",
                "HTTP requests answered, by method, route template and status code.",
            ),
            &["method", "route", "status"],
        )
        .expect("valid metric options");
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "taskledger_http_request_duration_seconds",
                "Time from receiving a request to producing its response head.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["method", "route", "status"],
        )
        .expect("valid metric options");
        let commands = IntCounterVec::new(
            Opts::new(
                "taskledger_commands_total",
                "Task commands run by the ledger, by command and outcome \
                 (ok, noop, rejected, conflict, error).",
            ),
            &["command", "outcome"],
        )
        .expect("valid metric options");
        let events_appended = IntCounter::new(
            "taskledger_events_appended_total",
            "Events committed to the ledger by this process.",
        )
        .expect("valid metric options");
        let append_batch_size = Histogram::with_opts(
            HistogramOpts::new(
                "taskledger_append_batch_size",
                "Commands per group-commit transaction.",
            )
            .buckets(vec![
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0,
            ]),
        )
        .expect("valid metric options");
        let relay_state = IntGauge::new(
            "taskledger_relay_state",
            "Kafka relay of this process: 0 standby (another process relays, or relay off), \
             1 active, 2 retrying (broker unreachable), 3 failed (halted on a final error).",
        )
        .expect("valid metric options");
        let relay_published = IntCounter::new(
            "taskledger_relay_published_total",
            "Events this process published to Kafka and saw acknowledged.",
        )
        .expect("valid metric options");
        let relay_lag_events = IntGauge::new(
            "taskledger_relay_lag_events",
            "Events committed but not yet acknowledged by the broker.",
        )
        .expect("valid metric options");
        let relay_lag_seconds = Gauge::new(
            "taskledger_relay_lag_seconds",
            "Age of the oldest event not yet acknowledged by the broker (0 when caught up).",
        )
        .expect("valid metric options");
        let callback_attempts = IntCounterVec::new(
            Opts::new(
                "taskledger_callback_deliveries_total",
                "Callback attempts by outcome: delivered, retry (scheduled again), failed (gave up).",
            ),
            &["outcome"],
        )
        .expect("valid metric options");
        let callback_backlog = IntGauge::new(
            "taskledger_callback_backlog",
            "Callback deliveries not yet delivered or given up.",
        )
        .expect("valid metric options");
        let callback_oldest_pending = Gauge::new(
            "taskledger_callback_oldest_pending_seconds",
            "Age of the oldest pending callback delivery (0 when none).",
        )
        .expect("valid metric options");
        for collector in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_duration.clone()),
            Box::new(commands.clone()),
            Box::new(events_appended.clone()),
            Box::new(append_batch_size.clone()),
            Box::new(relay_state.clone()),
            Box::new(relay_published.clone()),
            Box::new(relay_lag_events.clone()),
            Box::new(relay_lag_seconds.clone()),
            Box::new(callback_attempts.clone()),
            Box::new(callback_backlog.clone()),
            Box::new(callback_oldest_pending.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique within a fresh registry");
        }
        Metrics {
            registry,
            http_requests,
            http_duration,
            commands,
            events_appended,
            append_batch_size,
            relay_state,
            relay_published,
            relay_lag_events,
            relay_lag_seconds,
            callback_attempts,
            callback_backlog,
            callback_oldest_pending,
        }
    }

    pub fn observe_http(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let status = status.to_string();
        let labels = [method, route, status.as_str()];
        self.http_requests.with_label_values(&labels).inc();
        self.http_duration
            .with_label_values(&labels)
            .observe(elapsed.as_secs_f64());
    }

    pub fn observe_command(&self, command: &str, result: &Result<Committed, LedgerError>) {
        self.commands
            .with_label_values(&[command, command_outcome(result)])
            .inc();
    }

    pub fn observe_batch(&self, commands: usize) {
        self.append_batch_size.observe(commands as f64);
    }

    pub fn observe_events_appended(&self, events: usize) {
        self.events_appended.inc_by(events as u64);
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

impl RelayObserver for Metrics {
    fn state(&self, state: RelayState) {
        self.relay_state.set(state as i64);
    }

    fn published(&self, events: u64) {
        self.relay_published.inc_by(events);
    }

    fn lag(&self, events: i64, seconds: f64) {
        self.relay_lag_events.set(events);
        self.relay_lag_seconds.set(seconds);
    }
}

impl CallbackObserver for Metrics {
    fn attempt(&self, outcome: &str) {
        self.callback_attempts.with_label_values(&[outcome]).inc();
    }

    fn backlog(&self, pending: i64, oldest_seconds: f64) {
        self.callback_backlog.set(pending);
        self.callback_oldest_pending.set(oldest_seconds);
    }
}

/// The `command` label of a task command. The match is exhaustive on purpose: a new command
/// must pick its label here rather than fall into a catch-all.
pub fn command_name(action: &TaskAction) -> &'static str {
    match action {
        TaskAction::Create(_) => "create",
        TaskAction::Cancel { .. } => "cancel",
        TaskAction::SetMetadata { .. } => "set_metadata",
        TaskAction::SetUniqueId { .. } => "set_unique_id",
        TaskAction::ClearUniqueId => "clear_unique_id",
        TaskAction::AddTags { .. } => "add_tags",
        TaskAction::SetTags { .. } => "set_tags",
        TaskAction::RemoveTags { .. } => "remove_tags",
        TaskAction::Complete { .. } => "complete",
        TaskAction::Error { .. } => "error",
        TaskAction::CustomerAudit { .. } => "customer_audit",
        TaskAction::ContributorAudit { .. } => "contributor_audit",
        TaskAction::RecordCallbackDelivered { .. } => "record_callback_delivered",
        TaskAction::RecordCallbackFailed { .. } => "record_callback_failed",
    }
}

/// The `outcome` label: `noop` separates accepted commands that changed nothing (the same
/// metadata again, cancelling a canceled task) from those that appended events.
pub fn command_outcome(result: &Result<Committed, LedgerError>) -> &'static str {
    match result {
        Ok(committed) if committed.envelopes.is_empty() => "noop",
        Ok(_) => "ok",
        Err(LedgerError::Rejected(_) | LedgerError::EventTooLarge { .. }) => "rejected",
        Err(LedgerError::UniqueIdTaken { .. } | LedgerError::IdempotencyClaimLost) => "conflict",
        Err(LedgerError::Contended | LedgerError::Unavailable(_) | LedgerError::Internal(_)) => {
            "error"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exposed_under_its_documented_name() {
        let metrics = Metrics::new();
        metrics.observe_http("GET", "/v1/task/{id}", 200, Duration::from_millis(3));
        metrics.observe_command(
            "cancel",
            &Err(LedgerError::UniqueIdTaken {
                unique_id: "u".into(),
                task_id: "t".into(),
            }),
        );
        metrics.observe_batch(3);
        metrics.observe_events_appended(2);
        let text = metrics.render();
        for expected in [
            r#"taskledger_http_requests_total{method="GET",route="/v1/task/{id}",status="200"} 1"#,
            r#"taskledger_http_request_duration_seconds_count{method="GET",route="/v1/task/{id}",status="200"} 1"#,
            r#"taskledger_commands_total{command="cancel",outcome="conflict"} 1"#,
            "taskledger_events_appended_total 2",
            "taskledger_append_batch_size_sum 3",
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
