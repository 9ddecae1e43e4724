//! Publishes a signed digest of every account whose tree grew, at least every
//! `DIGEST_INTERVAL_SECS`, to `KAFKA_DIGEST_TOPIC` (key: the account id), so third parties can
//! keep them and later hold the ledger to them. Runs beside the event relay; its checkpoint
//! (`digests:<topic>`) is the highest global position already covered by a published digest.

use std::path::PathBuf;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use crate::kafka::{client_config, ensure_topic};
use crate::store::Store;

use super::signing::SigningKeys;

/// Accounts signed per round; more wait for the next round, which comes at once.
const ROUND: i64 = 1000;

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
            let grown = self.store.trees_grown_after(checkpoint, ROUND).await?;
            if !grown.is_empty() {
                let keys = SigningKeys::load(&self.key_file)?;
                // Covered: the listed growth. What an account appends while its digest is
                // signed comes after every listed position, so it is listed next round.
                let covered = grown.last().map_or(checkpoint, |(_, last)| *last);
                for (account_id, _) in &grown {
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
                self.store
                    .advance_reader_checkpoint(&reader, covered)
                    .await?;
                tracing::debug!(accounts = grown.len(), "published digests");
                if grown.len() as i64 == ROUND {
                    continue;
                }
            }
            tokio::time::sleep(self.interval).await;
        }
    }
}
