//! What the Merkle trees cost the append path, measured by `taskledger bench`: task creations
//! through the ledger with and without the trees, alternated in one run so that both see the
//! same machine (the noise of shared cores hits both alike).

use crate::bench::Measurement;
use crate::store::Store;

/// The two throughputs, each the total of its rounds.
pub struct TreeCost {
    pub with_trees: Measurement,
    pub without_trees: Measurement,
}

impl TreeCost {
    /// Throughput with the trees as a fraction of throughput without them.
    pub fn ratio(&self) -> f64 {
        self.with_trees.per_second() / self.without_trees.per_second()
    }
}

fn add(total: &mut Option<Measurement>, m: Measurement) {
    *total = Some(match total.take() {
        None => m,
        Some(t) => Measurement {
            operations: t.operations + m.operations,
            elapsed: t.elapsed + m.elapsed,
            p50: t.p50.max(m.p50),
            p99: t.p99.max(m.p99),
        },
    });
}

/// Runs `rounds` pairs of measurements of `commands` creations each, alternating which goes
/// first; then rebuilds the trees, since the runs without them left the bench account's tree
/// behind its events.
pub async fn tree_cost(
    store: &Store,
    commands: u64,
    concurrency: usize,
    max_batch: usize,
    rounds: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<TreeCost> {
    let without = store.clone().without_merkle_trees();
    let (mut with_total, mut without_total) = (None, None);
    for round in 0..rounds {
        for with_trees in [round % 2 == 0, round % 2 == 1] {
            let target = if with_trees { store } else { &without };
            let m =
                crate::bench::ledger(target, commands, concurrency, max_batch, progress).await?;
            add(
                if with_trees {
                    &mut with_total
                } else {
                    &mut without_total
                },
                m,
            );
        }
    }
    store.rebuild_trees(|_| {}).await?;
    Ok(TreeCost {
        with_trees: with_total.expect("at least one round"),
        without_trees: without_total.expect("at least one round"),
    })
}

/// `taskledger bench --merkle`: prints both throughputs and their ratio.
pub async fn report(
    db: &crate::config::DatabaseSettings,
    commands: u64,
    concurrency: usize,
    max_batch: usize,
) -> anyhow::Result<std::process::ExitCode> {
    use anyhow::Context;
    let store = Store::open(
        &db.database_url,
        (concurrency as u32 + 4).max(db.db_connections),
    )
    .await
    .with_context(|| format!("opening {}", crate::startup::redact(&db.database_url)))?;
    eprintln!("measuring the Merkle trees' cost: 2 rounds with and without, alternated");
    let cost = tree_cost(&store, commands, concurrency, max_batch, 2, &|_| {}).await?;
    for (name, m) in [
        ("ledger with the Merkle trees (2 rounds)", &cost.with_trees),
        (
            "ledger without the Merkle trees (2 rounds)",
            &cost.without_trees,
        ),
    ] {
        println!(
            "{name:<44} {:>8} in {:>7.2} s = {:>9.0}/s  p50 {:>7.2} ms  p99 {:>7.2} ms",
            m.operations,
            m.elapsed.as_secs_f64(),
            m.per_second(),
            m.p50.as_secs_f64() * 1e3,
            m.p99.as_secs_f64() * 1e3
        );
    }
    println!("with trees / without: {:.3}", cost.ratio());
    Ok(std::process::ExitCode::SUCCESS)
}
