//! Reads for the task-state topic: the earlier history of the tasks a relay batch touches.

use taskledger_events::EventEnvelope;

use super::read::{EventRow, EVENT_COLUMNS};
use super::{Store, StoreError};

impl Store {
    /// The events of `task_ids` before global position `before`, by task then sequence: what
    /// the relay folds to know each task's view just before its first event of a batch. One
    /// query on the `(task_id, sequence)` index for the whole batch.
    pub async fn task_histories_before(
        &self,
        task_ids: &[&str],
        before: i64,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        if task_ids.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders: Vec<String> = (2..task_ids.len() + 2).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE global_position < $1 AND task_id IN ({}) \
             ORDER BY task_id, sequence",
            placeholders.join(", ")
        );
        let mut query = sqlx::query_as::<_, EventRow>(&sql).bind(before);
        for task_id in task_ids {
            query = query.bind(*task_id);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(EventRow::envelope).collect()
    }
}
