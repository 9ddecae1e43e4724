//! The `taskledger` command line.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use taskledger_events::Scope;

use crate::config::{DatabaseSettings, ServeSettings};
use crate::startup::{redact, Application};
use crate::store::Store;

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
    /// Recompute every event hash chain; exit 1 naming the first broken event.
    Verify {
        /// Check only the events at or after this global position (each task's chain is
        /// picked up from its event just before it): a nightly run can resume where the last
        /// one ended.
        #[arg(long, default_value_t = 1)]
        from: i64,
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

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key (and its account if new); the key is printed alone on the last line.
    Create {
        #[arg(long)]
        account: String,
        #[arg(long, default_value = "customer", value_parser = ["customer", "contributor"])]
        scope: String,
    },
    /// List keys (never the keys themselves).
    List,
    /// Revoke a key by its id.
    Revoke { key_id: String },
    /// Show the account's callback secret (alone on the last line), or rotate it first.
    CallbackSecret {
        #[arg(long)]
        account: String,
        #[arg(long)]
        rotate: bool,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let db = &cli.db;
    match cli.command {
        Command::Bench {
            commands,
            concurrency,
            max_batch,
        } => {
            let store = Store::open(
                &db.database_url,
                (concurrency as u32 + 4).max(db.db_connections),
            )
            .await
            .with_context(|| format!("opening the ledger at {}", redact(&db.database_url)))?;
            let bar = progress_bar(commands, "anchor: database commits");
            let anchor =
                crate::bench::anchor(&store, commands, concurrency, &|n| bar.set_position(n))
                    .await?;
            bar.finish_and_clear();
            let bar = progress_bar(commands, "ledger: task creations");
            let ledger = crate::bench::ledger(&store, commands, concurrency, max_batch, &|n| {
                bar.set_position(n)
            })
            .await?;
            bar.finish_and_clear();
            let line = |name: &str, m: &crate::bench::Measurement| {
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
        Command::Tail {
            kafka_brokers,
            kafka_topic,
            from_beginning,
            task,
        } => {
            tail(
                &kafka_brokers,
                &kafka_topic,
                from_beginning,
                task.as_deref(),
            )
            .await
        }
        Command::Serve(serve) => {
            let app = Application::build(db, &serve).await?;
            app.run_until_stopped().await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            open(db).await?;
            eprintln!("migrated {}", redact(&db.database_url));
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys(keys) => {
            let store = open(db).await?;
            run_keys(&store, keys).await
        }
        Command::Replay { check } => {
            let store = open(db).await?;
            let total = store.count_events().await?;
            let bar = progress_bar(total, if check { "checking" } else { "replaying" });
            let report = store.replay(check, |n| bar.set_position(n)).await?;
            bar.finish_and_clear();
            println!(
                "{} {} events into {} tasks",
                if check { "checked" } else { "replayed" },
                report.events,
                report.tasks
            );
            if report.mismatches.is_empty() {
                return Ok(ExitCode::SUCCESS);
            }
            for task in &report.mismatches {
                println!("differs: {task}");
            }
            Ok(ExitCode::FAILURE)
        }
        Command::Verify { from } => {
            let store = open(db).await?;
            let total = store.count_events().await?;
            let bar = progress_bar(total, "verifying");
            let report = store.verify_from(from, |n| bar.set_position(n)).await?;
            bar.finish_and_clear();
            if report.is_intact() {
                println!(
                    "ok: {} events in {} tasks verified",
                    report.events, report.tasks
                );
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "BROKEN: {} findings in {} events ({} named below)",
                report.broken,
                report.events,
                report.failures.len()
            );
            for failure in &report.failures {
                println!("BROKEN: {failure}");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn tail(
    brokers: &str,
    topic: &str,
    from_beginning: bool,
    task: Option<&str>,
) -> anyhow::Result<ExitCode> {
    use rdkafka::Message;
    use std::io::Write;

    let consumer = crate::relay::stream_consumer(brokers, topic, from_beginning)
        .with_context(|| format!("reading topic {topic} from {brokers}"))?;
    let mut out = std::io::stdout().lock();
    loop {
        let message = consumer.recv().await.context("consuming")?;
        if task.is_some_and(|t| message.key() != Some(t.as_bytes())) {
            continue;
        }
        if let Some(payload) = message.payload() {
            out.write_all(payload)?;
            out.write_all(b"\n")?;
            out.flush()?;
        }
    }
}

async fn run_keys(store: &Store, command: KeysCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::Create { account, scope } => {
            let scope = Scope::parse(&scope)?;
            let (key, secret) = store.create_key(&account, scope).await?;
            eprintln!(
                "created {} key {} for account {}; it is shown only once:",
                key.scope.as_str(),
                key.key_id,
                key.account_name
            );
            println!("{secret}");
        }
        KeysCommand::List => {
            for key in store.list_keys().await? {
                println!(
                    "{}\t{}\t{}\t{}",
                    key.key_id,
                    key.account_name,
                    key.scope.as_str(),
                    if key.revoked { "revoked" } else { "active" }
                );
            }
        }
        KeysCommand::CallbackSecret { account, rotate } => {
            let Some(secret) = store.callback_secret(&account, rotate).await? else {
                eprintln!("no account {account}");
                return Ok(ExitCode::FAILURE);
            };
            if rotate {
                eprintln!("rotated the callback secret of {account}; the new one:");
            }
            println!("{secret}");
        }
        KeysCommand::Revoke { key_id } => {
            if !store.revoke_key(&key_id).await? {
                eprintln!("no active key {key_id}");
                return Ok(ExitCode::FAILURE);
            }
            println!("revoked {key_id}");
        }
    }
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
