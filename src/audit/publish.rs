//! Publishes a signed digest of every account whose tree grew, at least every
//! `DIGEST_INTERVAL_SECS`, to `KAFKA_DIGEST_TOPIC` (key: the account id), so third parties can
//! keep them and later hold the ledger to them. Runs beside the event relay; its checkpoint
//! (`digests:<topic>`) is the global position up to which every account with events has had
//! a digest published.

use std::path::PathBuf;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use crate::kafka::{client_config, ensure_topic};
use crate::store::Store;

use super::signing::SigningKeys;

/// Global positions covered per round; more wait for the next round, which comes at once.
const ROUND: i64 = 100_000;

pub struct DigestPublisher {
    pub store: Store,
    pub brokers: String,
    pub topic: String,
    pub replication: i32,
    pub interval: Duration,
    pub key_file: PathBuf,
}

impl DigestPublisher {
    /// Runs forever; failures are logged and retried.
    pub async fn run(self) {
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.publish_all().await {
                Ok(()) => backoff = Duration::from_millis(200),
                Err(e) => {
                    tracing::warn!(error = %e, topic = %self.topic, "digest publication retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.interval);
                }
            }
        }
    }

    async fn publish_all(&self) -> anyhow::Result<()> {
        ensure_topic(&self.brokers, &self.topic, 1, self.replication).await?;
        let producer: FutureProducer = client_config(&self.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()?;
        let reader = format!("digests:{}", self.topic);
        loop {
            let checkpoint = self.store.reader_checkpoint(&reader).await?;
            // Every position up to the head is committed (appends are serialized), so the
            // accounts with events in (checkpoint, until] are all the growth to sign for.
            let head = self.store.head_position().await?;
            let until = head.min(checkpoint.saturating_add(ROUND));
            if until > checkpoint {
                let accounts = self
                    .store
                    .accounts_with_events_between(checkpoint, until)
                    .await?;
                let keys = SigningKeys::load(&self.key_file)?;
                for account_id in &accounts {
                    let digest = super::sign_digest(&self.store, &keys, account_id).await?;
                    let value = serde_json::to_string(&digest)?;
                    producer
                        .send(
                            FutureRecord::to(&self.topic)
                                .key(account_id)
                                .payload(&value),
                            Timeout::After(Duration::from_secs(30)),
                        )
                        .await
                        .map_err(|(e, _)| e)?;
                }
                self.store.advance_reader_checkpoint(&reader, until).await?;
                tracing::debug!(accounts = accounts.len(), until, "published digests");
                if until < head {
                    continue;
                }
            }
            tokio::time::sleep(self.interval).await;
        }
    }
}
