//! The dispatcher: claims due deliveries, attempts them, and records how each went.
//!
//! Fair by account: at most `CALLBACK_ACCOUNT_CONCURRENCY` attempts of one account are in
//! flight in this process, and among the due deliveries the account with the fewest attempts
//! in flight goes first. An account whose receivers hang (or accept connections and never
//! answer) holds at most its own share of the `CALLBACK_CONCURRENCY` slots, so the other
//! accounts' callbacks wait for no more than one attempt's timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};

use super::net::{self, Attempt, AttemptError, Policy};
use super::retry::RetrySchedule;
use super::{record, CallbackSettings, Recorded};
use crate::domain::TaskAction;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::store::{now_micros, Delivery, DeliveryState, DueDelivery, Store, StoreError};

/// How long an idle dispatcher waits before looking for due deliveries again.
const POLL: Duration = Duration::from_millis(200);

/// How many accounts (the oldest due delivery of each) one claim chooses among.
const CANDIDATES: i64 = 64;

/// How often `/metrics` learns the callback backlog.
const BACKLOG_REPORT_EVERY: Duration = Duration::from_secs(5);

/// Attempts in flight per account, capped. Pure bookkeeping: the dispatcher asks it which
/// accounts to leave out and which due delivery to take.
#[derive(Debug)]
pub struct InFlight {
    cap: usize,
    per_account: HashMap<String, usize>,
}

impl InFlight {
    pub fn new(cap: usize) -> InFlight {
        InFlight {
            cap: cap.max(1),
            per_account: HashMap::new(),
        }
    }

    fn count(&self, account: &str) -> usize {
        self.per_account.get(account).copied().unwrap_or(0)
    }

    /// The accounts at their cap: none of their deliveries may start now.
    pub fn full_accounts(&self) -> Vec<String> {
        self.per_account
            .iter()
            .filter(|(_, n)| **n >= self.cap)
            .map(|(account, _)| account.clone())
            .collect()
    }

    /// The delivery to attempt next among `due` (longest due first): one of an account below
    /// its cap, the account with the fewest attempts in flight winning, then the longest due.
    pub fn pick<'a>(&self, due: &'a [DueDelivery]) -> Option<&'a DueDelivery> {
        due.iter()
            .enumerate()
            .filter(|(_, d)| self.count(&d.account_id) < self.cap)
            .min_by_key(|(i, d)| (self.count(&d.account_id), *i))
            .map(|(_, d)| d)
    }

    pub fn start(&mut self, account: &str) {
        *self.per_account.entry(account.to_string()).or_default() += 1;
    }

    pub fn finish(&mut self, account: &str) {
        if let Some(n) = self.per_account.get_mut(account) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_account.remove(account);
            }
        }
    }
}

/// One account's slot, given back when the attempt ends however it ends.
struct Slot {
    in_flight: Arc<Mutex<InFlight>>,
    freed: Arc<Notify>,
    account: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.in_flight
            .lock()
            .expect("in-flight bookkeeping never panics")
            .finish(&self.account);
        self.freed.notify_one();
    }
}

pub struct Dispatcher {
    store: Store,
    ledger: Ledger,
    settings: CallbackSettings,
    schedule: RetrySchedule,
    metrics: Metrics,
    in_flight: Arc<Mutex<InFlight>>,
    freed: Arc<Notify>,
}

impl Dispatcher {
    pub fn new(ledger: Ledger, settings: CallbackSettings, metrics: Metrics) -> Dispatcher {
        let schedule = RetrySchedule::new(
            settings.callback_retry_base_ms,
            settings.callback_retry_span_secs,
            settings.callback_max_attempts,
        );
        Dispatcher {
            store: ledger.store().clone(),
            ledger,
            in_flight: Arc::new(Mutex::new(InFlight::new(
                settings.callback_account_concurrency,
            ))),
            freed: Arc::new(Notify::new()),
            settings,
            schedule,
            metrics,
        }
    }

    pub async fn run(self) {
        let this = Arc::new(self);
        let permits = Arc::new(Semaphore::new(this.settings.callback_concurrency.max(1)));
        // Long enough for one attempt and recording its outcome; a process that died holding
        // a lease delays that delivery by at most this long.
        let lease_us = (this.settings.callback_timeout_ms as i64 + 5_000) * 1000;
        // On its own clock, not per claim: counting the backlog reads every pending row's
        // index entry, which a busy dispatcher must not pay for each delivery it claims.
        let reporter = this.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(BACKLOG_REPORT_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                reporter.report_backlog().await;
            }
        });
        loop {
            let permit = permits
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            match this.claim(lease_us).await {
                Ok(Some((delivery, slot))) => {
                    let attempt = this.clone();
                    tokio::spawn(async move {
                        attempt.attempt(delivery).await;
                        drop(slot);
                        drop(permit);
                    });
                }
                Ok(None) => {
                    drop(permit);
                    // A freed account slot may make a waiting delivery eligible at once.
                    tokio::select! {
                        _ = this.freed.notified() => {}
                        _ = tokio::time::sleep(POLL) => {}
                    }
                }
                Err(e) => {
                    drop(permit);
                    tracing::warn!(error = %e, "callback dispatcher cannot reach the store");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Claims the next delivery this process may attempt, with its account's slot.
    async fn claim(&self, lease_us: i64) -> Result<Option<(Delivery, Slot)>, StoreError> {
        let full = self.lock().full_accounts();
        let mut due = self.store.due_deliveries(&full, CANDIDATES).await?;
        loop {
            let Some(pick) = self.lock().pick(&due).cloned() else {
                return Ok(None);
            };
            if let Some(delivery) = self
                .store
                .claim_delivery(&pick.delivery_id, lease_us)
                .await?
            {
                self.lock().start(&delivery.account_id);
                let slot = Slot {
                    in_flight: self.in_flight.clone(),
                    freed: self.freed.clone(),
                    account: delivery.account_id.clone(),
                };
                return Ok(Some((delivery, slot)));
            }
            // Another process took it first: choose again among the rest.
            due.retain(|d| d.delivery_id != pick.delivery_id);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InFlight> {
        self.in_flight
            .lock()
            .expect("in-flight bookkeeping never panics")
    }

    async fn report_backlog(&self) {
        if let Ok(b) = self.store.delivery_backlog().await {
            let oldest = b
                .oldest_pending_created_at_us
                .map_or(0.0, |t| (now_micros() - t).max(0) as f64 / 1e6);
            self.metrics.set_callback_backlog(b.pending, oldest);
        }
    }

    async fn attempt(&self, delivery: Delivery) {
        let attempt = delivery.attempts + 1;
        let result = self.post(&delivery, attempt).await;
        let outcome = match result {
            Ok(status) => {
                let action = TaskAction::RecordCallbackDelivered {
                    delivery_id: delivery.delivery_id.clone(),
                    for_sequence: delivery.for_sequence,
                    attempts: attempt,
                    status_code: status,
                };
                self.finish(&delivery, action, DeliveryState::Delivered, attempt, None)
                    .await
            }
            Err(e)
                if attempt >= self.settings.callback_max_attempts
                    || matches!(e, AttemptError::Refused(_)) =>
            {
                let message = e.to_string();
                tracing::warn!(delivery_id = %delivery.delivery_id, attempt, error = %message, "callback failed for good");
                let action = TaskAction::RecordCallbackFailed {
                    delivery_id: delivery.delivery_id.clone(),
                    for_sequence: delivery.for_sequence,
                    attempts: attempt,
                    last_error: message.clone(),
                };
                self.finish(
                    &delivery,
                    action,
                    DeliveryState::Failed,
                    attempt,
                    Some(&message),
                )
                .await
            }
            Err(e) => {
                let delay = self.schedule.delay(attempt);
                let jitter = rand::random_range(0.8..1.2);
                let next = now_micros() + (delay.as_micros() as f64 * jitter) as i64;
                tracing::info!(delivery_id = %delivery.delivery_id, attempt, error = %e, retry_in_ms = delay.as_millis() as u64, "callback attempt failed");
                self.store
                    .delivery_retry(
                        &delivery.delivery_id,
                        lease_of(&delivery),
                        attempt,
                        next,
                        &e.to_string(),
                    )
                    .await
                    .map(|held| if held { "retry" } else { lease_lost(&delivery) })
            }
        };
        match outcome {
            Ok(outcome) => self.metrics.observe_callback_attempt(outcome),
            Err(e) => {
                tracing::warn!(error = %e, "recording a callback attempt failed; it will be retried")
            }
        }
    }

    /// Records the delivery's end in its task's history, then in the delivery table; the
    /// metrics outcome.
    async fn finish(
        &self,
        delivery: &Delivery,
        action: TaskAction,
        state: DeliveryState,
        attempts: u32,
        error: Option<&str>,
    ) -> Result<&'static str, StoreError> {
        let label = match state {
            DeliveryState::Delivered => "delivered",
            _ => "failed",
        };
        match record(&self.ledger, delivery, action).await {
            Recorded::Appended | Recorded::Already => {}
            // Left leased: attempted again once the lease expires.
            Recorded::Later => return Ok("retry"),
            // Attempting again would repeat the same POST forever without ever recording it;
            // the error is logged, and the delivery ends here.
            Recorded::Never => {}
        }
        self.store
            .delivery_done(
                &delivery.delivery_id,
                lease_of(delivery),
                state,
                attempts,
                error,
            )
            .await
            .map(|held| if held { label } else { lease_lost(delivery) })
    }

    /// One POST, signed with the account's current secret.
    async fn post(&self, delivery: &Delivery, attempt: u32) -> Result<u16, AttemptError> {
        let secret = self
            .store
            .callback_secret_of(&delivery.account_id)
            .await
            .map_err(|e| AttemptError::Transport(e.to_string()))?
            .unwrap_or_default();
        net::post(
            &Attempt {
                url: &delivery.url,
                body: &delivery.body,
                delivery_id: &delivery.delivery_id,
                attempt,
                secret: &secret,
            },
            Policy {
                timeout: Duration::from_millis(self.settings.callback_timeout_ms),
                allow_private_networks: self.settings.callback_allow_private_networks,
            },
        )
        .await
    }
}

/// The fencing token of a claimed delivery (its lease's end, as the claim wrote it).
fn lease_of(delivery: &Delivery) -> i64 {
    // A claimed row always carries its lease; i64::MIN matches no row, so a delivery that
    // somehow has none records nothing rather than something unfenced.
    delivery.lease_until_us.unwrap_or(i64::MIN)
}

/// The attempt outlived its lease and another dispatcher took the delivery over: its outcome
/// is theirs to record. The receiver may have had this POST too, which at-least-once allows
/// (the `refonte-callback-id` header carries the delivery id for de-duplication).
fn lease_lost(delivery: &Delivery) -> &'static str {
    tracing::warn!(delivery_id = %delivery.delivery_id, "callback lease lost before its outcome was recorded; the new holder records it");
    "lease_lost"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due(list: &[(&str, &str)]) -> Vec<DueDelivery> {
        list.iter()
            .map(|(id, account)| DueDelivery {
                delivery_id: id.to_string(),
                account_id: account.to_string(),
            })
            .collect()
    }

    #[test]
    fn an_account_at_its_cap_is_left_out_and_its_deliveries_wait() {
        let mut f = InFlight::new(2);
        f.start("a");
        f.start("a");
        assert_eq!(f.full_accounts(), vec!["a".to_string()]);
        let list = due(&[("a1", "a"), ("a2", "a"), ("b1", "b")]);
        assert_eq!(f.pick(&list).unwrap().delivery_id, "b1");
        assert!(f.pick(&due(&[("a3", "a")])).is_none());
    }

    #[test]
    fn the_account_with_fewest_attempts_in_flight_goes_first_then_the_longest_due() {
        let mut f = InFlight::new(4);
        f.start("a");
        let list = due(&[("a1", "a"), ("b1", "b"), ("c1", "c")]);
        assert_eq!(f.pick(&list).unwrap().delivery_id, "b1");
        f.start("b");
        f.start("c");
        f.start("c");
        assert_eq!(f.pick(&list).unwrap().delivery_id, "a1");
    }

    #[test]
    fn a_finished_attempt_frees_its_accounts_slot() {
        let mut f = InFlight::new(1);
        f.start("a");
        assert!(f.pick(&due(&[("a1", "a")])).is_none());
        f.finish("a");
        assert!(f.full_accounts().is_empty());
        assert_eq!(f.pick(&due(&[("a1", "a")])).unwrap().delivery_id, "a1");
    }

    #[test]
    fn a_cap_of_zero_still_lets_one_attempt_through() {
        let f = InFlight::new(0);
        assert_eq!(f.pick(&due(&[("a1", "a")])).unwrap().delivery_id, "a1");
    }
}
