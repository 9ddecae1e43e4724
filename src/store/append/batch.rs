//! Group commit: many commands in one transaction, written together when none is refused.

use std::collections::HashSet;

use super::{prepare, AppendTx, CommandWrite, Committed, Prepared, WriteError};
use crate::store::sql::Savepoint;
use crate::store::{now_micros, StoreError};

impl AppendTx {
    /// Records a batch of commands. First optimistically, all at once with multi-row
    /// statements and no per-command savepoint (a few round trips for the whole batch);
    /// if any command is refused there, the batch is rolled back and replayed one command
    /// per savepoint, so only the refused ones fail, exactly as if each ran alone.
    pub async fn write_all(
        &mut self,
        writes: Vec<CommandWrite>,
    ) -> Result<Vec<Result<Committed, WriteError>>, StoreError> {
        if writes.len() > 1 {
            if let Some(done) = self.try_write_together(&writes).await? {
                return Ok(done.into_iter().map(Ok).collect());
            }
        }
        let mut results = Vec::with_capacity(writes.len());
        for write in writes {
            results.push(self.write(write).await?);
        }
        Ok(results)
    }

    /// The optimistic path of [`AppendTx::write_all`]; `None` when a command was refused and
    /// nothing of the batch remains.
    async fn try_write_together(
        &mut self,
        writes: &[CommandWrite],
    ) -> Result<Option<Vec<Committed>>, StoreError> {
        if writes.iter().any(|w| !w.placement.is_empty()) {
            // A task creating its project or batch is recorded with them in a savepoint.
            return Ok(None);
        }
        let mut tasks = HashSet::new();
        if !writes.iter().all(|w| tasks.insert(w.task_id.as_str())) {
            // Two commands on one task: the second was decided on a stale version.
            return Ok(None);
        }
        let mut position = self.last_position;
        let mut recorded_us = self.last_recorded_us;
        let mut prepared: Vec<Prepared> = Vec::with_capacity(writes.len());
        for write in writes {
            let at = now_micros().max(recorded_us);
            match prepare(write.clone(), position, at)? {
                Ok(p) => {
                    if let Some(last) = p.sealed.last() {
                        position = last.envelope.global_position;
                        recorded_us = last.envelope.recorded_at.timestamp_micros();
                    }
                    prepared.push(p);
                }
                Err(_) => return Ok(None),
            }
        }
        let savepoint = Savepoint::open(self.conn(), "batch").await?;
        if self.apply(&prepared).await?.is_err() {
            savepoint.roll_back(self.conn()).await?;
            return Ok(None);
        }
        savepoint.release(self.conn()).await?;
        for p in &prepared {
            self.note_finished(
                &p.write.account_id,
                &p.view,
                p.sealed.iter().map(|s| &s.envelope),
            );
        }
        if position != self.last_position {
            self.last_position = position;
            self.last_recorded_us = recorded_us;
            self.dirty = true;
        }
        Ok(Some(
            prepared.into_iter().map(Prepared::into_committed).collect(),
        ))
    }
}
