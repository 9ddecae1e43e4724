//! What the Merkle trees cost the append path, measured by `taskledger bench`: task creations
//! through the ledger with and without the trees, alternated in one run so that both see the
//! same machine (the noise of shared cores hits both alike).

use crate::bench::Measurement;
use crate::store::Store;

/// The two throughputs, each the total of its rounds, and each round's ratio.
pub struct TreeCost {
    pub with_trees: Measurement,
    pub without_trees: Measurement,
    /// Per round, throughput with the trees over throughput without them.
    pub round_ratios: Vec<f64>,
}

impl TreeCost {
    /// Throughput with the trees as a fraction of throughput without them, over all rounds.
    pub fn ratio(&self) -> f64 {
        self.with_trees.per_second() / self.without_trees.per_second()
    }

    /// The median of the rounds' ratios: a round that met a checkpoint or an autovacuum on
    /// one side only moves it less than the total.
    pub fn median_ratio(&self) -> f64 {
        let mut sorted = self.round_ratios.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        }
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
    let mut round_ratios = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let mut rates = [0.0; 2];
        for with_trees in [round % 2 == 0, round % 2 == 1] {
            if with_trees {
                // A round without the trees left the bench account's events ahead of its
                // tree: the first append with them would fold that gap in, timed.
                if let Some(account) = store.find_account("bench").await? {
                    store.catch_up_tree(&account).await?;
                }
            }
            let target = if with_trees { store } else { &without };
            let m =
                crate::bench::ledger(target, commands, concurrency, max_batch, progress).await?;
            rates[usize::from(with_trees)] = m.per_second();
            add(
                if with_trees {
                    &mut with_total
                } else {
                    &mut without_total
                },
                m,
            );
        }
        round_ratios.push(rates[1] / rates[0]);
    }
    store.rebuild_trees(|_| {}).await?;
    Ok(TreeCost {
        with_trees: with_total.expect("at least one round"),
        without_trees: without_total.expect("at least one round"),
        round_ratios,
    })
}

/// `taskledger bench --merkle`: prints both throughputs and their ratio.
pub async fn report(
    db: &crate::config::DatabaseSettings,
    commands: u64,
    concurrency: usize,
    max_batch: usize,
    rounds: usize,
) -> anyhow::Result<std::process::ExitCode> {
    use anyhow::Context;
    let store = Store::open(
        &db.database_url,
        (concurrency as u32 + 4).max(db.db_connections),
    )
    .await
    .with_context(|| format!("opening {}", crate::startup::redact(&db.database_url)))?;
    eprintln!("measuring the Merkle trees' cost: {rounds} rounds with and without, alternated");
    let cost = tree_cost(&store, commands, concurrency, max_batch, rounds, &|_| {}).await?;
    for (name, m) in [
        (
            format!("ledger with the Merkle trees ({rounds} rounds)"),
            &cost.with_trees,
        ),
        (
            format!("ledger without the Merkle trees ({rounds} rounds)"),
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
    let rounds: Vec<String> = cost
        .round_ratios
        .iter()
        .map(|r| format!("{r:.3}"))
        .collect();
    println!("with trees / without, per round: {}", rounds.join(" "));
    println!(
        "appends that worked their trees' heads out from the database: {}",
        store.tree_heads_read()
    );
    println!(
        "with trees / without: {:.3} (median of the rounds {:.3})",
        cost.ratio(),
        cost.median_ratio()
    );
    Ok(std::process::ExitCode::SUCCESS)
}
