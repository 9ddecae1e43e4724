//! The `taskledger` command line: one module per family of subcommands, one function each.

mod audit;
mod bench;
mod check;
mod keys;
mod schemas;
mod tail;

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::{DatabaseSettings, ServeSettings};
use crate::startup::{redact, Application};
use crate::store::Store;

pub use audit::SigningKeyCommand;
pub use bench::ScaleArgs;
pub(crate) use check::{replay, verify};
pub use keys::KeysCommand;

#[derive(Debug, Parser)]
#[command(
    name = "taskledger",
    version,
    about = "An event-sourced ledger of data-labeling tasks"
)]
pub struct Cli {
    #[command(flatten)]
    pub db: DatabaseSettings,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
// Parsed once at start-up and matched once: the size of the biggest variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run the HTTP API (migrates the database first).
    Serve(ServeSettings),
    /// Bring the database schema up to date.
    Migrate,
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Rebuild every projection from the events.
    Replay {
        /// Only compare the rebuilt projections with the stored ones; exit 1 on a difference.
        #[arg(long)]
        check: bool,
    },
    /// Recompute every event hash chain; exit 1 with the count of findings and the first 100.
    Verify {
        /// Check only the events at or after this global position (each task's chain is
        /// picked up from its event just before it): a nightly run can resume where the last
        /// one ended.
        #[arg(long, default_value_t = 1)]
        from: i64,
        /// Also write the findings for Prometheus's textfile collector to this file
        /// (`taskledger_verify_findings`, `..._events_checked`, `..._last_run_timestamp_seconds`).
        #[arg(long)]
        metrics_file: Option<std::path::PathBuf>,
        /// Instead, hold the ledger to a signed digest (a file from `taskledger digest` or
        /// the digest topic): its signature, the events it covers, and today's tree's
        /// consistency with it.
        #[arg(long, value_name = "FILE")]
        digest: Option<std::path::PathBuf>,
        #[command(flatten)]
        signing_key: crate::audit::SigningKeySettings,
    },
    /// Print an account's current signed digest as JSON.
    Digest {
        /// The account's name (or id).
        #[arg(long)]
        account: String,
        #[command(flatten)]
        signing_key: crate::audit::SigningKeySettings,
    },
    /// Show or rotate the ledger's Ed25519 signing key (kept in a file, not in the database).
    SigningKey {
        #[command(subcommand)]
        command: SigningKeyCommand,
        #[command(flatten)]
        signing_key: crate::audit::SigningKeySettings,
    },
    /// Measure command throughput against the database's own commit rate (writes bench data
    /// into the database: use a scratch one).
    Bench {
        /// Operations per measurement.
        #[arg(long, default_value_t = 10_000)]
        commands: u64,
        /// Concurrent clients.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// The most commands per append transaction.
        #[arg(long, default_value_t = 256)]
        max_batch: usize,
        /// Also measure what the Merkle trees cost: task creations with and without them,
        /// alternated over `--merkle-rounds` rounds (then the trees are rebuilt).
        #[arg(long)]
        merkle: bool,
        /// Rounds of `--merkle`: each runs `--commands` creations with the trees and as many
        /// without, in alternating order.
        #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u64).range(1..=100))]
        merkle_rounds: u64,
        /// Instead: fill the database to `--tasks` tasks and print every scale figure beside
        /// its anchor (list pages, replay, verify, HTTP create and GET, long tasks, memory).
        #[command(flatten)]
        scale: bench::ScaleArgs,
    },
    /// Serve on a random port and measure good requests' latency with and without ~1 %
    /// hostile ones mixed in, then verify and check the ledger (use a scratch database).
    Soak(crate::soak::SoakSettings),
    /// Print the JSON Schemas of the envelope and every event version (the `GET /v1/schemas`
    /// document), or with `--write` write them as the files of `events/schemas/`.
    Schemas {
        /// Write one file per schema into `--dir` instead of printing the document.
        #[arg(long)]
        write: bool,
        #[arg(long, default_value = "events/schemas")]
        dir: std::path::PathBuf,
    },
    /// Consume the event topic and print each envelope as one JSON line.
    Tail {
        #[arg(long, env = "KAFKA_BROKERS")]
        kafka_brokers: String,
        #[arg(long, env = "KAFKA_TOPIC", default_value = "taskledger.task-events")]
        kafka_topic: String,
        /// Start at the oldest record instead of waiting for new ones.
        #[arg(long)]
        from_beginning: bool,
        /// Only this task's events.
        #[arg(long)]
        task: Option<String>,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let db = &cli.db;
    match cli.command {
        Command::Serve(serve) => serve_api(db, &serve).await,
        Command::Migrate => migrate(db).await,
        Command::Keys(command) => keys::run(&open(db).await?, command).await,
        Command::Replay { check } => check::replay(&open(db).await?, check).await,
        Command::Verify {
            digest: Some(file),
            signing_key,
            ..
        } => {
            let key_file = signing_key.path(&db.database_url);
            audit::verify_digest(&open(db).await?, &key_file, &file).await
        }
        Command::Verify {
            from, metrics_file, ..
        } => check::verify(&open(db).await?, from, metrics_file.as_deref()).await,
        Command::Digest {
            account,
            signing_key,
        } => {
            let key_file = signing_key.path(&db.database_url);
            audit::digest(&open(db).await?, &key_file, &account).await
        }
        Command::SigningKey {
            command,
            signing_key,
        } => audit::signing_key(&signing_key.path(&db.database_url), command),
        Command::Schemas { write, dir } => schemas::run(write, &dir),
        Command::Bench { scale, .. } if scale.scale => bench::scale(db, &scale).await,
        Command::Bench {
            commands,
            concurrency,
            max_batch,
            merkle,
            merkle_rounds,
            ..
        } => {
            let code = bench::throughput(db, commands, concurrency, max_batch).await?;
            if !merkle {
                return Ok(code);
            }
            crate::audit::bench::report(
                db,
                commands,
                concurrency,
                max_batch,
                merkle_rounds as usize,
            )
            .await
        }
        Command::Soak(settings) => bench::soak(db, &settings).await,
        Command::Tail {
            kafka_brokers,
            kafka_topic,
            from_beginning,
            task,
        } => {
            tail::run(
                &kafka_brokers,
                &kafka_topic,
                from_beginning,
                task.as_deref(),
            )
            .await
        }
    }
}

async fn serve_api(db: &DatabaseSettings, serve: &ServeSettings) -> anyhow::Result<ExitCode> {
    let app = Application::build(db, serve).await?;
    app.run_until_stopped().await?;
    Ok(ExitCode::SUCCESS)
}

async fn migrate(db: &DatabaseSettings) -> anyhow::Result<ExitCode> {
    open(db).await?;
    eprintln!("migrated {}", redact(&db.database_url));
    Ok(ExitCode::SUCCESS)
}

async fn open(db: &DatabaseSettings) -> anyhow::Result<Store> {
    Store::open(&db.database_url, db.db_connections.min(4))
        .await
        .with_context(|| format!("opening the ledger at {}", redact(&db.database_url)))
}

/// A bar on a terminal; hidden when stderr is not one (CI logs, pipes).
fn progress_bar(total: u64, what: &'static str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg} {wide_bar} {pos}/{len} events ({per_sec}, eta {eta})")
            .expect("a valid template"),
    );
    bar.set_message(what);
    bar
}
