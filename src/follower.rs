//! Following the global order: lead, read after the checkpoint, advance.
//!
//! The Kafka relay and the callback scheduler both walk every event in global order, each
//! under a lease of its own (one active follower per role among the processes sharing a
//! ledger) and each from a durable checkpoint that moves only over events it has fully
//! handled. This is that walk, once; what each does with a batch is theirs.

use std::time::Duration;

use taskledger_events::EventEnvelope;
use tokio::sync::watch;

use crate::store::{Leadership, Store, StoreError};

/// How long an idle follower waits before looking again when no local commit wakes it (the
/// commits of other processes are seen this way).
const IDLE_POLL: Duration = Duration::from_millis(250);

/// How long a follower waits before trying again for a lease another process holds, or a
/// store that did not answer.
const LEAD_RETRY: Duration = Duration::from_secs(1);

/// The payload characters one round of a follower reads at most (beyond its first event):
/// events may be up to a megabyte each, and one account's large events must not make the
/// relay or the callbacks hold thousands of them at once.
pub const ROUND_PAYLOAD_CHARS: i64 = 8_000_000;

pub struct Follower {
    store: Store,
    reader: String,
    wake: watch::Receiver<u64>,
}

impl Follower {
    /// `reader` names the role: its lease and its checkpoint. `wake` changes after every
    /// local commit (see `Ledger::commits`).
    pub fn new(store: Store, reader: impl Into<String>, wake: watch::Receiver<u64>) -> Follower {
        Follower {
            store,
            reader: reader.into(),
            wake,
        }
    }

    pub fn reader(&self) -> &str {
        &self.reader
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Waits until this process leads the role.
    pub async fn lead(&self) -> Leadership {
        loop {
            match self.store.try_lead(&self.reader).await {
                Ok(Some(lease)) => return lease,
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(reader = %self.reader, error = %e, "cannot reach the store to lead")
                }
            }
            tokio::time::sleep(LEAD_RETRY).await;
        }
    }

    /// The last position fully handled (0 before the first).
    pub async fn checkpoint(&self) -> Result<i64, StoreError> {
        self.store.reader_checkpoint(&self.reader).await
    }

    /// Up to `limit` events after the checkpoint, in global order.
    pub async fn next_batch(&self, limit: i64) -> Result<Vec<EventEnvelope>, StoreError> {
        let checkpoint = self.checkpoint().await?;
        self.batch_after(checkpoint, limit).await
    }

    /// Up to `limit` events after `position`, in global order: the round after one still
    /// being handled, read ahead of the checkpoint.
    pub async fn batch_after(
        &self,
        position: i64,
        limit: i64,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        self.store
            .events_after_within(position, limit, ROUND_PAYLOAD_CHARS)
            .await
    }

    /// Every event up to `position` is handled.
    pub async fn advance(&self, position: i64) -> Result<(), StoreError> {
        self.store
            .advance_reader_checkpoint(&self.reader, position)
            .await
    }

    /// Waits for a local commit, or the poll interval (commits of other processes).
    pub async fn idle(&mut self) {
        match tokio::time::timeout(IDLE_POLL, self.wake.changed()).await {
            Ok(Ok(())) | Err(_) => {}
            // No committer in this process (its ledger is gone): poll.
            Ok(Err(_)) => tokio::time::sleep(IDLE_POLL).await,
        }
    }

    /// Sleeps after a failure before the next try.
    pub async fn pause(&self) {
        tokio::time::sleep(LEAD_RETRY).await;
    }
}
