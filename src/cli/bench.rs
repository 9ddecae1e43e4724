//! `bench` and `soak`: measurements, printed for a person to read.

use std::process::ExitCode;

use anyhow::Context;

use super::progress_bar;
use crate::bench::Measurement;
use crate::config::DatabaseSettings;
use crate::soak::{SoakReport, SoakSettings};
use crate::startup::redact;
use crate::store::Store;

/// Command throughput against the database's own commit rate.
pub(super) async fn throughput(
    db: &DatabaseSettings,
    commands: u64,
    concurrency: usize,
    max_batch: usize,
) -> anyhow::Result<ExitCode> {
    let store = Store::open(
        &db.database_url,
        (concurrency as u32 + 4).max(db.db_connections),
    )
    .await
    .with_context(|| format!("opening the ledger at {}", redact(&db.database_url)))?;
    let bar = progress_bar(commands, "anchor: database commits");
    let anchor =
        crate::bench::anchor(&store, commands, concurrency, &|n| bar.set_position(n)).await?;
    bar.finish_and_clear();
    let bar = progress_bar(commands, "ledger: task creations");
    let ledger = crate::bench::ledger(&store, commands, concurrency, max_batch, &|n| {
        bar.set_position(n)
    })
    .await?;
    bar.finish_and_clear();
    let line = |name: &str, m: &Measurement| {
        println!(
            "{name:<44} {:>8} in {:>7.2} s = {:>9.0}/s  p50 {:>7.2} ms  p99 {:>7.2} ms",
            m.operations,
            m.elapsed.as_secs_f64(),
            m.per_second(),
            m.p50.as_secs_f64() * 1e3,
            m.p99.as_secs_f64() * 1e3
        )
    };
    println!(
        "{} concurrent clients on {}",
        concurrency,
        redact(&db.database_url)
    );
    line("anchor: one-row transactions, committed", &anchor);
    line("ledger: task creations through the ledger", &ledger);
    println!(
        "ledger / anchor: {:.2}",
        ledger.per_second() / anchor.per_second()
    );
    Ok(ExitCode::SUCCESS)
}

/// Good requests' latency with and without hostile ones; exit 1 on any incorrect answer,
/// a damaged ledger, or a p99 ratio over the target.
pub(super) async fn soak(
    db: &DatabaseSettings,
    settings: &SoakSettings,
) -> anyhow::Result<ExitCode> {
    println!(
        "soak on {}: {} good requests per run, {} clients, {} % hostile in the second run",
        redact(&db.database_url),
        settings.requests,
        settings.concurrency,
        settings.hostile_percent
    );
    let report = crate::soak::run(db, settings).await?;
    print_soak(&report);
    let ratio = report.p99_ratio();
    let problems = report.problems();
    for p in &problems {
        println!("PROBLEM: {p}");
    }
    let within = ratio <= settings.max_p99_ratio;
    println!(
        "p99 with hostile / without: {ratio:.2} ({} the target of {:.2})",
        if within { "within" } else { "OVER" },
        settings.max_p99_ratio
    );
    Ok(if problems.is_empty() && within {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_soak(report: &SoakReport) {
    for (name, run) in [
        ("clean: good requests alone", &report.clean),
        ("mixed: with hostile requests", &report.mixed),
    ] {
        println!(
            "{name:<32} {:>7} in {:>7.2} s  p50 {:>7.2} ms  p99 {:>7.2} ms  failed {}",
            run.requests,
            run.elapsed.as_secs_f64(),
            run.p50.as_secs_f64() * 1e3,
            run.p99.as_secs_f64() * 1e3,
            run.failures.len()
        );
    }
    let mut kinds: Vec<String> = crate::soak::Hostile::ALL
        .iter()
        .map(|kind| {
            let outcomes: Vec<String> = report
                .hostile
                .iter()
                .filter(|(k, _)| k == kind)
                .map(|(_, o)| match o {
                    crate::soak::Outcome::Status(s) => s.to_string(),
                    crate::soak::Outcome::CutOff => "cut off".into(),
                    crate::soak::Outcome::Unanswered(e) => format!("unanswered ({e})"),
                })
                .collect();
            let mut distinct = outcomes.clone();
            distinct.sort();
            distinct.dedup();
            format!("{kind:?} x{}: {}", outcomes.len(), distinct.join(", "))
        })
        .collect();
    kinds.retain(|k| !k.contains(" x0:"));
    println!("hostile requests: {}", report.hostile.len());
    for k in kinds {
        println!("  {k}");
    }
    println!(
        "/healthz worst latency: {:.2} ms ({} failures)",
        report.healthz_worst.as_secs_f64() * 1e3,
        report.healthz_failures
    );
    println!(
        "verify: {}; replay --check: {}",
        if report.verify_clean {
            "clean"
        } else {
            "BROKEN"
        },
        if report.replay_clean {
            "clean"
        } else {
            "DIFFERS"
        }
    );
}

/// `bench --scale`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ScaleArgs {
    /// Measure the scale figures instead of command throughput.
    #[arg(long)]
    pub scale: bool,
    /// Tasks in the ledger for the "at N" figures.
    #[arg(long, default_value_t = 1_000_000)]
    pub tasks: u64,
    /// Tasks in the ledger for the "at 1 k" figures.
    #[arg(long, default_value_t = 1_000)]
    pub small_tasks: u64,
    /// Concurrent HTTP clients (and anchor clients).
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Operations per throughput measurement.
    #[arg(long, default_value_t = 5_000)]
    pub ops: u64,
    /// Events on the long task.
    #[arg(long, default_value_t = 10_000)]
    pub long_task_events: u64,
    /// Kafka brokers: also measure the relay publishing the whole ledger as a backlog.
    #[arg(long)]
    pub relay_brokers: Option<String>,
}

/// Every scale figure beside its anchor, as a Markdown table.
pub(super) async fn scale(db: &DatabaseSettings, args: &ScaleArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.tasks > args.small_tasks,
        "--tasks must be more than --small-tasks"
    );
    let settings = crate::scale_bench::ScaleSettings {
        tasks: args.tasks,
        small_tasks: args.small_tasks,
        clients: args.clients,
        ops: args.ops,
        long_task_events: args.long_task_events.max(2),
        kafka_brokers: args.relay_brokers.clone(),
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "bench --scale on {}: {} tasks, {} clients, {} operations per measurement; \
         load average at start: {}",
        redact(&db.database_url),
        args.tasks,
        args.clients,
        args.ops,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let figures = crate::scale_bench::run(db, &settings).await?;
    println!();
    println!(
        "| figure | anchor (same run{}) | measured | ratio |",
        if args.small_tasks > 0 {
            format!("; list pages at {} tasks", args.small_tasks)
        } else {
            String::new()
        }
    );
    println!("|---|---|---|---|");
    for f in figures {
        println!(
            "| {} | {} | {} | {} |",
            f.what, f.anchor, f.measured, f.ratio
        );
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average at the end: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(ExitCode::SUCCESS)
}
