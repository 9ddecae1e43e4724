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
