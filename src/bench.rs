//! `taskledger bench`: command throughput through the whole write path, measured against an
//! anchor taken in the same run on the same database: how many small transactions the
//! database itself commits per second at the same concurrency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use taskledger_events::{Actor, Scope};

use crate::domain::{CreateTask, Params, TaskType, Text};
use crate::ledger::{CommandContext, Ledger};
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct Measurement {
    pub operations: u64,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p99: Duration,
}

impl Measurement {
    pub fn per_second(&self) -> f64 {
        self.operations as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs `total` operations over `concurrency` workers; each returns its latency.
pub(crate) async fn measure<F, Fut>(
    total: u64,
    concurrency: usize,
    progress: &(dyn Fn(u64) + Sync),
    op: F,
) -> Result<Measurement, String>
where
    F: Fn(u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let next = next.clone();
        let done = done.clone();
        let op = op.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok((latencies, Instant::now()));
                }
                let t = Instant::now();
                if let Err(e) = op(i).await {
                    // Stop every worker: a failed operation voids the measurement.
                    next.store(total, Ordering::Relaxed);
                    return Err(e);
                }
                latencies.push(t.elapsed());
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut all = Vec::with_capacity(total as usize);
    // The last worker's own finish time, not when this loop noticed it.
    let mut last_finish = started;
    let mut pending = workers;
    while !pending.is_empty() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        progress(done.load(Ordering::Relaxed));
        let mut still = Vec::new();
        for w in pending {
            if w.is_finished() {
                let (latencies, finished) = w.await.map_err(|e| e.to_string())??;
                all.extend(latencies);
                last_finish = last_finish.max(finished);
            } else {
                still.push(w);
            }
        }
        pending = still;
    }
    let elapsed = last_finish - started;
    all.sort();
    let pick = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Ok(Measurement {
        operations: total,
        elapsed,
        p50: pick(0.50),
        p99: pick(0.99),
    })
}

/// The anchor: one-row INSERT transactions committed by the database, `concurrency` at a time.
pub async fn anchor(
    store: &Store,
    total: u64,
    concurrency: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<Measurement> {
    sqlx::query("DROP TABLE IF EXISTS bench_anchor")
        .execute(store.pool())
        .await?;
    sqlx::query("CREATE TABLE bench_anchor (id BIGINT PRIMARY KEY, payload TEXT NOT NULL)")
        .execute(store.pool())
        .await?;
    let payload = json!({"attachment": "car", "categories": ["big", "small"]}).to_string();
    let pool = store.pool().clone();
    let m = measure(total, concurrency, progress, move |i| {
        let pool = pool.clone();
        let payload = payload.clone();
        async move {
            let mut tx = pool.begin().await.map_err(|e| e.to_string())?;
            sqlx::query("INSERT INTO bench_anchor (id, payload) VALUES ($1, $2)")
                .bind(i as i64)
                .bind(payload)
                .execute(&mut *tx)
                .await
                .map_err(|e| e.to_string())?;
            tx.commit().await.map_err(|e| e.to_string())
        }
    })
    .await
    .map_err(|e| anyhow::anyhow!("anchor transaction failed: {e}"))?;
    sqlx::query("DROP TABLE bench_anchor")
        .execute(store.pool())
        .await?;
    Ok(m)
}

/// Task creations through the full command path (aggregate, projections, group commit).
pub async fn ledger(
    store: &Store,
    total: u64,
    concurrency: usize,
    max_batch: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<Measurement> {
    let account_id = store.ensure_account("bench").await?;
    let ledger = Ledger::start(
        store.clone(),
        crate::ledger::LedgerSettings::with_max_batch(max_batch),
        crate::metrics::Metrics::new(),
    );
    let ctx = CommandContext {
        actor: Actor {
            account_id,
            key_id: Some("bench".into()),
            scope: Scope::Customer,
        },
        request_id: None,
    };
    let params = Params::parse(
        json!({"attachment_type": "text", "attachment": "car", "categories": ["big", "small"]})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    )
    .expect("the bench's params are within the limits");
    let instruction = Text::parse("Is this big?").expect("a short instruction");
    measure(total, concurrency, progress, move |_| {
        let ledger = ledger.clone();
        let ctx = ctx.clone();
        let create = CreateTask {
            task_type: TaskType::Categorization,
            instruction: Some(instruction.clone()),
            params: params.clone(),
            ..CreateTask::default()
        };
        async move {
            ledger
                .create(&ctx, create, None)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await
    .map_err(|e| anyhow::anyhow!("task creation failed: {e}"))
}
