//! `taskledger bench --scale`: fills a scratch database to N tasks and measures every figure
//! of the scale goals beside its anchor, taken in the same run on the same machine: list
//! pages at a small ledger and at N, replay (alone, then with writers running), replay
//! --check, verify (speed and the peak memory of its process), HTTP create and GET against
//! the database's own rates, single-client create, a command on a long task against a fresh
//! one, the relay's backlog rate when a broker is given, and this process's memory.
//!
//! Figures are printed, never judged: speed goals are read off the table by a person (the
//! test suite runs it small for correctness only).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Parser;
use serde_json::{json, Value};
use taskledger_events::{Scope, TaskEvent, TaskMetadataSet};

use crate::bench::{measure, Measurement};
use crate::cli::{Cli, Command};
use crate::config::DatabaseSettings;
use crate::domain::{
    CreateTask, Identifier, Json, Metadata, Params, TaskAction, TaskCommand, TaskId, TaskType, Text,
};
use crate::ledger::{CommandContext, Ledger, LedgerSettings};
use crate::metrics::Metrics;
use crate::soak::ServedApart;
use crate::store::{Backend, CommandWrite, Store};

/// What `bench --scale` is asked to do.
#[derive(Debug, Clone)]
pub struct ScaleSettings {
    /// Tasks in the ledger for the "at N" figures.
    pub tasks: u64,
    /// Tasks in the ledger for the "at 1 k" figures.
    pub small_tasks: u64,
    /// Concurrent HTTP clients (and anchor clients).
    pub clients: usize,
    /// Operations per throughput measurement.
    pub ops: u64,
    /// Events on the long task.
    pub long_task_events: u64,
    /// Kafka brokers for the relay's backlog rate; none skips it.
    pub kafka_brokers: Option<String>,
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Figure {
    pub what: String,
    pub anchor: String,
    pub measured: String,
    pub ratio: String,
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn per_s(n: f64) -> String {
    format!("{n:.0}/s")
}

fn mb(kb: u64) -> String {
    format!("{:.0} MB", kb as f64 / 1024.0)
}

/// `VmHWM` and `VmRSS` (kB) of a process, from /proc; 0 where /proc is not there.
fn memory_kb(pid: &str) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// The account the bench writes as, with its two identities.
#[derive(Clone)]
struct Actors {
    customer: CommandContext,
    contributor: CommandContext,
}

fn actor(account_id: &str, scope: Scope) -> CommandContext {
    CommandContext {
        actor: taskledger_events::Actor {
            account_id: account_id.to_string(),
            key_id: Some(format!("bench-{}", scope.as_str())),
            scope,
        },
        request_id: None,
    }
}

/// A task of the fill: every list filter finds some (10 projects, 100 batches, 5 tags;
/// every 10th completed, every 20th accepted by the customer).
fn fill_task(i: u64) -> CreateTask {
    let params = Params::parse(
        json!({"attachment_type": "text", "attachment": format!("item {i}"),
               "categories": ["big", "small"]})
        .as_object()
        .cloned()
        .unwrap_or_default(),
    )
    .expect("the bench's params are within the limits");
    CreateTask {
        task_type: TaskType::Categorization,
        instruction: Some(Text::parse("Is this big?").expect("a short instruction")),
        project: Some(Identifier::parse(format!("p{}", i % 10)).expect("an identifier")),
        batch: Some(Identifier::parse(format!("b{}", i % 100)).expect("an identifier")),
        tags: crate::domain::Tags::parse([format!("t{}", i % 5)]).expect("a tag"),
        params,
        ..CreateTask::default()
    }
}

/// Creates tasks `from..to` through the ledger, 64 at a time.
async fn fill(ledger: &Ledger, actors: &Actors, from: u64, to: u64) -> anyhow::Result<Measurement> {
    let (ledger, actors) = (ledger.clone(), actors.clone());
    let started = Instant::now();
    let last_report = Arc::new(AtomicU64::new(0));
    let report = move |done: u64| {
        let step = 100_000;
        if done / step > last_report.load(Ordering::Relaxed) {
            last_report.store(done / step, Ordering::Relaxed);
            tracing::info!(
                done = from + done,
                elapsed_s = started.elapsed().as_secs(),
                "filling"
            );
        }
    };
    measure(to.saturating_sub(from), 64, &report, move |n| {
        let (ledger, actors) = (ledger.clone(), actors.clone());
        async move {
            let i = from + n;
            let done = ledger
                .create(&actors.customer, fill_task(i), None)
                .await
                .map_err(|e| e.to_string())?;
            if i.is_multiple_of(10) {
                let task =
                    TaskId::parse(&done.view.task_id).ok_or_else(|| "a task id".to_string())?;
                let response = Json::parse(json!({"category": "big"})).map_err(|e| e.0)?;
                let complete =
                    TaskCommand::new(Scope::Contributor, TaskAction::Complete { response });
                ledger
                    .execute(&actors.contributor, &task, complete, None)
                    .await
                    .map_err(|e| e.to_string())?;
                if i.is_multiple_of(20) {
                    let audit = TaskAction::CustomerAudit {
                        audited_by: "bench".into(),
                        accepted: Some(true),
                        comments: None,
                    };
                    ledger
                        .execute(
                            &actors.customer,
                            &task,
                            TaskCommand::new(Scope::Customer, audit),
                            None,
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                }
            }
            Ok(())
        }
    })
    .await
    .map_err(|e| anyhow::anyhow!("filling the ledger failed: {e}"))
}

/// The API on a runtime of its own ([`ServedApart`]), and its address.
struct Served {
    base: String,
    server: ServedApart,
}

async fn serve(db: &DatabaseSettings) -> anyhow::Result<Served> {
    // The bench measures the server, not the rate limiter in front of it.
    let cli = Cli::try_parse_from([
        "taskledger",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--rate-limit-per-sec",
        "0",
    ])
    .context("building the bench's serve settings")?;
    let Command::Serve(serve) = cli.command else {
        unreachable!("parsed as serve");
    };
    let server = ServedApart::start(db, serve).await?;
    Ok(Served {
        base: format!("http://127.0.0.1:{}", server.port),
        server,
    })
}

#[derive(Clone)]
struct Http {
    client: reqwest::Client,
    base: String,
    key: String,
}

impl Http {
    async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, String> {
        let reply = self
            .client
            .get(format!("{}{path}", self.base))
            .basic_auth(&self.key, Some(""))
            .query(query)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = reply.status();
        let body: Value = reply.json().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("GET {path}: {status} {body}"));
        }
        Ok(body)
    }
}

/// The list filters measured, as query pairs.
fn filters(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<(&'static str, Vec<(&'static str, String)>)> {
    let t = |d: DateTime<Utc>| d.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    vec![
        ("no filter", vec![]),
        ("status", vec![("status", "completed".into())]),
        ("type", vec![("type", "categorization".into())]),
        ("project", vec![("project", "p3".into())]),
        ("batch", vec![("batch", "b7".into())]),
        (
            "customer_review_status",
            vec![("customer_review_status", "accepted".into())],
        ),
        (
            "time range",
            vec![("start_time", t(from)), ("end_time", t(to))],
        ),
        ("tags", vec![("tags", "t2".into())]),
    ]
}

/// Median latency of the first page and of the next page (its `next_token`), each asked
/// `repeats` times in a row, `limit` tasks a page, after `repeats` unmeasured asks of each:
/// the steady cost, not the first ask on each of the server's pooled connections. That one
/// prepares the statement and loads the table's catalog entries into the connection's
/// backend: at 1 M tasks, planning the no-filter page on a new connection touched 277
/// buffers and took about 1 ms, and 0.09 ms on the next ask, while the page itself took
/// 0.07 ms. The no-filter pages, measured first, paid it on every connection.
async fn page_latencies(
    http: &Http,
    query: &[(&'static str, String)],
    limit: i64,
    repeats: usize,
) -> anyhow::Result<(Duration, Option<Duration>, i64)> {
    let mut query: Vec<(&str, String)> = query.to_vec();
    query.push(("limit", limit.to_string()));
    let mut first = Vec::new();
    let mut page = Value::Null;
    for _ in 0..repeats {
        http.get("/v1/tasks", &query)
            .await
            .map_err(anyhow::Error::msg)?;
    }
    for _ in 0..repeats {
        let t = Instant::now();
        page = http
            .get("/v1/tasks", &query)
            .await
            .map_err(anyhow::Error::msg)?;
        first.push(t.elapsed());
    }
    let total = page["total"].as_i64().unwrap_or(-1);
    let Some(token) = page["next_token"].as_str().map(str::to_string) else {
        return Ok((median(first), None, total));
    };
    query.push(("next_token", token));
    let mut next = Vec::new();
    for _ in 0..repeats {
        http.get("/v1/tasks", &query)
            .await
            .map_err(anyhow::Error::msg)?;
    }
    for _ in 0..repeats {
        let t = Instant::now();
        http.get("/v1/tasks", &query)
            .await
            .map_err(anyhow::Error::msg)?;
        next.push(t.elapsed());
    }
    Ok((median(first), Some(median(next)), total))
}

/// Per filter: its name, first and next page latencies, total, and the page size asked.
type Pages = Vec<(&'static str, Duration, Option<Duration>, i64, i64)>;

/// Tasks a page, unless a filter matches fewer on the small ledger.
const PAGE: i64 = 100;

/// Every filter's pages. `like` (the small ledger's pages) sets each filter's page size to
/// what its page held there, so that both ledgers' pages return as many tasks: a filter that
/// matches 10 tasks of 1,000 is compared on pages of 10, not on 10 against 100.
async fn all_pages(
    http: &Http,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    like: Option<&Pages>,
) -> anyhow::Result<Pages> {
    let mut out = Vec::new();
    for (i, (name, query)) in filters(from, to).into_iter().enumerate() {
        let limit = like
            .and_then(|pages| pages.get(i))
            .map_or(PAGE, |p| p.3.clamp(1, PAGE));
        let (first, next, total) = page_latencies(http, &query, limit, 15).await?;
        out.push((name, first, next, total, limit));
    }
    Ok(out)
}

/// Grows a fresh task to `events` events, a thousand per append, straight through the store.
async fn long_task(
    store: &Store,
    ledger: &Ledger,
    actors: &Actors,
    events: u64,
) -> anyhow::Result<TaskId> {
    let done = ledger
        .create(&actors.customer, fill_task(0), None)
        .await
        .context("creating the long task")?;
    let task = TaskId::parse(&done.view.task_id).context("a task id")?;
    let account = actors.customer.actor.account_id.clone();
    let mut have = 1u64;
    while have < events {
        let n = (events - have).min(1000);
        let history = store.task_events(&account, task.as_str(), None).await?;
        let last = history.last().context("the task has events")?;
        let prior_view = ledger.task_as_of(&account, &task, Utc::now()).await?;
        let write = CommandWrite {
            account_id: account.clone(),
            task_id: task.to_string(),
            actor: actors.customer.actor.clone(),
            request_id: None,
            expected_sequence: last.sequence,
            prev_hash: last.hash.clone(),
            prior_view,
            events: (0..n)
                .map(|k| {
                    TaskEvent::TaskMetadataSet(TaskMetadataSet {
                        metadata: json!({ "grow": have + k }),
                    })
                })
                .collect(),
            idempotency: None,
            placement: Vec::new(),
        };
        let mut results = store.commit_batch(vec![write]).await?;
        results
            .pop()
            .context("one result")?
            .map_err(|e| anyhow::anyhow!("growing the long task: {e}"))?;
        have += n;
    }
    Ok(task)
}

/// The median and p99 of latencies.
fn percentiles(mut all: Vec<Duration>) -> (Duration, Duration) {
    all.sort();
    let p99 = all[((all.len() as f64 * 0.99) as usize).min(all.len() - 1)];
    (median(all), p99)
}

/// Latencies of `n` metadata changes on `task`, one at a time.
async fn command_latencies(
    ledger: &Ledger,
    actors: &Actors,
    task: &TaskId,
    n: u64,
) -> anyhow::Result<Vec<Duration>> {
    let mut all = Vec::new();
    for k in 0..n {
        let metadata = Metadata::parse(json!({ "k": k })).map_err(|e| anyhow::anyhow!(e.0))?;
        let command = TaskCommand::new(Scope::Customer, TaskAction::SetMetadata { metadata });
        let t = Instant::now();
        ledger
            .execute(&actors.customer, task, command, None)
            .await?;
        all.push(t.elapsed());
    }
    Ok(all)
}

/// Runs `taskledger verify` as a child on the database: its wall time and the peak memory
/// its /proc status showed, sampled every 20 ms until it exited.
async fn verify_child(url: &str) -> anyhow::Result<(Duration, u64, bool)> {
    let exe = std::env::current_exe().context("the taskledger binary")?;
    let started = Instant::now();
    let mut child = tokio::process::Command::new(exe)
        .arg("verify")
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting taskledger verify")?;
    let pid = child.id().context("the child's pid")?.to_string();
    let mut peak = 0;
    let status = loop {
        peak = peak.max(memory_kb(&pid).0);
        if let Some(status) = child.try_wait()? {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Ok((started.elapsed(), peak, status.success()))
}

/// Replay while 8 writers keep creating: its time, and the writers' p99, worst and errors.
async fn replay_online(
    store: &Store,
    ledger: &Ledger,
    actors: &Actors,
) -> anyhow::Result<(Duration, Duration, Duration, u64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..8u64 {
        let (stop, latencies, errors) = (stop.clone(), latencies.clone(), errors.clone());
        let (ledger, actors) = (ledger.clone(), actors.clone());
        writers.push(tokio::spawn(async move {
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                match ledger
                    .create(&actors.customer, fill_task(i * 7 + 1), None)
                    .await
                {
                    Ok(_) => latencies.lock().expect("not poisoned").push(t.elapsed()),
                    Err(e) => {
                        tracing::error!(error = %e, "a create failed during replay");
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += 8;
            }
        }));
    }
    // The writers get going before the replay starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    store.replay(false, |_| {}).await?;
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await?;
    }
    let mut all = std::mem::take(&mut *latencies.lock().expect("not poisoned"));
    all.sort();
    let p99 = all
        .get(((all.len() as f64 * 0.99) as usize).min(all.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default();
    let worst = all.last().copied().unwrap_or_default();
    Ok((took, p99, worst, errors.load(Ordering::Relaxed)))
}

/// HTTP creates by `clients` clients.
async fn http_creates(http: &Http, ops: u64, clients: usize) -> anyhow::Result<Measurement> {
    let body = json!({"instruction": "Is this big?", "attachment_type": "text",
                      "attachment": "car", "categories": ["big", "small"], "project": "http"});
    let http = http.clone();
    measure(ops, clients, &|_| {}, move |_| {
        let (http, body) = (http.clone(), body.clone());
        async move {
            let reply = http
                .client
                .post(format!("{}/v1/task/categorization", http.base))
                .basic_auth(&http.key, Some(""))
                .json(&body)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !reply.status().is_success() {
                return Err(format!("create answered {}", reply.status()));
            }
            reply.bytes().await.map(|_| ()).map_err(|e| e.to_string())
        }
    })
    .await
    .map_err(|e| anyhow::anyhow!("HTTP create failed: {e}"))
}

async fn http_gets(
    http: &Http,
    ids: Arc<Vec<String>>,
    ops: u64,
    clients: usize,
) -> anyhow::Result<Measurement> {
    let http = http.clone();
    measure(ops, clients, &|_| {}, move |i| {
        let (http, ids) = (http.clone(), ids.clone());
        async move {
            let id = &ids[i as usize % ids.len()];
            let reply = http
                .client
                .get(format!("{}/v1/task/{id}", http.base))
                .basic_auth(&http.key, Some(""))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !reply.status().is_success() {
                return Err(format!("GET answered {}", reply.status()));
            }
            reply.bytes().await.map(|_| ()).map_err(|e| e.to_string())
        }
    })
    .await
    .map_err(|e| anyhow::anyhow!("HTTP GET failed: {e}"))
}

/// The primary-key select anchor: the stored view by id, through the ledger's own (Any) pool.
async fn select_anchor(
    store: &Store,
    account: &str,
    ids: Arc<Vec<String>>,
    ops: u64,
    clients: usize,
) -> anyhow::Result<Measurement> {
    let pool = store.pool().clone();
    let account = account.to_string();
    measure(ops, clients, &|_| {}, move |i| {
        let (pool, ids, account) = (pool.clone(), ids.clone(), account.clone());
        async move {
            let _: Option<(String,)> =
                sqlx::query_as("SELECT body FROM tasks WHERE task_id = $1 AND account_id = $2")
                    .bind(&ids[i as usize % ids.len()])
                    .bind(&account)
                    .fetch_optional(&pool)
                    .await
                    .map_err(|e| e.to_string())?;
            Ok(())
        }
    })
    .await
    .map_err(|e| anyhow::anyhow!("the select anchor failed: {e}"))
}

/// The same select through sqlx's native PostgreSQL pool: what the Any driver costs.
async fn native_select_anchor(
    url: &str,
    account: &str,
    ids: Arc<Vec<String>>,
    ops: u64,
    clients: usize,
) -> anyhow::Result<Measurement> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(clients as u32)
        .connect(url)
        .await?;
    let account = account.to_string();
    let inner = pool.clone();
    let run = |ops: u64| {
        let (inner, ids, account) = (inner.clone(), ids.clone(), account.clone());
        async move {
            measure(ops, clients, &|_| {}, move |i| {
                let (pool, ids, account) = (inner.clone(), ids.clone(), account.clone());
                async move {
                    let _: Option<(String,)> = sqlx::query_as(
                        "SELECT body FROM tasks WHERE task_id = $1 AND account_id = $2",
                    )
                    .bind(&ids[i as usize % ids.len()])
                    .bind(&account)
                    .fetch_optional(&pool)
                    .await
                    .map_err(|e| e.to_string())?;
                    Ok(())
                }
            })
            .await
            .map_err(|e| anyhow::anyhow!("the native select anchor failed: {e}"))
        }
    };
    // Untimed first: the Any pool it is compared with is warm (connections open, statements
    // prepared).
    run(ops / 4 + 1).await?;
    let m = run(ops).await;
    pool.close().await;
    m
}

/// Waits for a relay on a fresh topic to publish the whole ledger: events per second.
async fn relay_backlog(store: &Store, brokers: &str) -> anyhow::Result<(u64, Duration)> {
    let topic = format!("taskledger.bench-{}", uuid::Uuid::now_v7().simple());
    let settings = crate::relay::RelaySettings {
        kafka_topic: topic.clone(),
        kafka_partitions: 6,
        kafka_replication: 1,
        kafka_message_max_bytes: 1_000_000,
        kafka_message_timeout_ms: 30_000,
        kafka_state_topic: format!("{topic}.state"),
        ce_source: "urn:taskledger:bench".to_string(),
    };
    let head = store.head_position().await?;
    let (_wake, wake_rx) = tokio::sync::watch::channel(0u64);
    let relay = crate::relay::Relay::new(
        store.clone(),
        brokers.to_string(),
        settings,
        Metrics::new(),
        wake_rx,
    );
    let started = Instant::now();
    let running = tokio::spawn(relay.run());
    let reader = format!("relay:{topic}");
    loop {
        if store.reader_checkpoint(&reader).await? >= head {
            break;
        }
        if started.elapsed() > Duration::from_secs(3600) {
            running.abort();
            anyhow::bail!("the relay did not publish the backlog within an hour");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed();
    running.abort();
    Ok((head as u64, took))
}

/// Gives PostgreSQL's planner statistics of the tables just filled, as autovacuum would in
/// time: a table filled from empty within a minute may have none yet, and the planner then
/// walks the events by a sort instead of the (task, sequence) index.
/// Brings the database to the state autovacuum keeps it in: statistics, and the tables
/// vacuumed. A plain ANALYZE would leave a fill's million inserts for autovacuum to vacuum
/// while the next figures are taken, and whichever figure met it would carry its cost.
async fn analyze(store: &Store) -> anyhow::Result<()> {
    if store.backend() == Backend::Postgres {
        sqlx::query("VACUUM (ANALYZE)")
            .execute(store.pool())
            .await?;
    }
    Ok(())
}

/// Runs every measurement and returns the table's lines.
pub async fn run(db: &DatabaseSettings, s: &ScaleSettings) -> anyhow::Result<Vec<Figure>> {
    let clients = s.clients.max(1);
    let store = Store::open(&db.database_url, clients as u32 + 8).await?;
    let ledger = Ledger::start(store.clone(), LedgerSettings::default(), Metrics::new());
    let account_id = store.ensure_account("scale-bench").await?;
    let actors = Actors {
        customer: actor(&account_id, Scope::Customer),
        contributor: actor(&account_id, Scope::Contributor),
    };
    let (_, key) = store.create_key("scale-bench", Scope::Customer).await?;
    let served = serve(db).await?;
    let http = Http {
        client: reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(clients)
            .build()?,
        base: served.base.clone(),
        key,
    };
    let mut out = Vec::new();
    // Where this process's peak grew: the peak after each figure that raised it by 5 MB or
    // more, so a run over the memory goal shows which load took it there.
    let mut grew: Vec<(usize, u64)> = Vec::new();
    let mut figure = |what: String, anchor: String, measured: String, ratio: String| {
        out.push(Figure {
            what,
            anchor,
            measured,
            ratio,
        });
        let peak = memory_kb("self").0;
        if grew
            .last()
            .is_none_or(|(_, before)| peak >= before + 5 * 1024)
        {
            grew.push((out.len(), peak));
        }
    };

    // List pages on a small ledger, then on the large one.
    let from = Utc::now();
    fill(&ledger, &actors, 0, s.small_tasks).await?;
    analyze(&store).await?;
    let small = all_pages(&http, from, Utc::now(), None).await?;
    let filled = fill(&ledger, &actors, s.small_tasks, s.tasks).await?;
    analyze(&store).await?;
    let large = all_pages(&http, from, Utc::now(), Some(&small)).await?;
    for ((name, f1, n1, t1, _), (_, f2, n2, t2, limit)) in small.iter().zip(&large) {
        let ratio = |a: Duration, b: Duration| format!("{:.2}", b.as_secs_f64() / a.as_secs_f64());
        figure(
            format!("list, {name}, first page of {limit} (total {t1} / {t2})"),
            ms(*f1),
            ms(*f2),
            ratio(*f1, *f2),
        );
        if let (Some(n1), Some(n2)) = (n1, n2) {
            figure(
                format!("list, {name}, next page"),
                ms(*n1),
                ms(*n2),
                ratio(*n1, *n2),
            );
        }
    }
    figure(
        format!(
            "fill: task creations (+ completes, audits), 64 clients, {} tasks",
            s.tasks - s.small_tasks
        ),
        String::new(),
        per_s(filled.per_second()),
        String::new(),
    );

    // The ledger's write ceiling on this database against its own commit rate.
    let anchor64 = crate::bench::anchor(&store, s.ops, 64, &|_| {}).await?;
    let ledger64 = crate::bench::ledger(&store, s.ops, 64, 256, &|_| {}).await?;
    figure(
        "ceiling: creations in-process, 64 clients vs one-row transactions".into(),
        per_s(anchor64.per_second()),
        per_s(ledger64.per_second()),
        format!("{:.2}", ledger64.per_second() / anchor64.per_second()),
    );

    // Single-client create.
    let anchor1 = crate::bench::anchor(&store, s.ops / 4 + 1, 1, &|_| {}).await?;
    let ledger1 = crate::bench::ledger(&store, s.ops / 4 + 1, 1, 256, &|_| {}).await?;
    figure(
        "single-client create, in-process vs one-row transactions".into(),
        per_s(anchor1.per_second()),
        per_s(ledger1.per_second()),
        format!("{:.2}", ledger1.per_second() / anchor1.per_second()),
    );

    // HTTP create at `clients` clients against the per-command anchor.
    let anchor_n = crate::bench::anchor(&store, s.ops, clients, &|_| {}).await?;
    let creates = http_creates(&http, s.ops, clients).await?;
    figure(
        format!(
            "HTTP create, {clients} clients vs one-row transactions (p99 {})",
            ms(creates.p99)
        ),
        per_s(anchor_n.per_second()),
        per_s(creates.per_second()),
        format!("{:.2}", creates.per_second() / anchor_n.per_second()),
    );

    // HTTP GET against the primary-key select.
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT task_id FROM tasks WHERE account_id = $1 AND project = 'http' LIMIT 1000",
    )
    .bind(&account_id)
    .fetch_all(store.pool())
    .await?;
    let ids = Arc::new(ids);
    let select = select_anchor(&store, &account_id, ids.clone(), s.ops * 2, clients).await?;
    let gets = http_gets(&http, ids.clone(), s.ops * 2, clients).await?;
    figure(
        format!("HTTP GET one task, {clients} clients vs primary-key select (Any pool)"),
        per_s(select.per_second()),
        per_s(gets.per_second()),
        format!("{:.2}", gets.per_second() / select.per_second()),
    );
    if store.backend() == Backend::Postgres {
        let native = native_select_anchor(
            &db.database_url,
            &account_id,
            ids.clone(),
            s.ops * 2,
            clients,
        )
        .await?;
        figure(
            format!("primary-key select, {clients} clients: native PgPool vs Any pool"),
            per_s(select.per_second()),
            per_s(native.per_second()),
            format!("{:.2}", native.per_second() / select.per_second()),
        );
    }

    // A command on a long task against one on a fresh task.
    let long = long_task(&store, &ledger, &actors, s.long_task_events).await?;
    let fresh = ledger.create(&actors.customer, fill_task(1), None).await?;
    let fresh = TaskId::parse(&fresh.view.task_id).context("a task id")?;
    // Untimed: the first command on the long task folds its history and leaves a snapshot.
    command_latencies(&ledger, &actors, &long, 1).await?;
    command_latencies(&ledger, &actors, &fresh, 1).await?;
    // Alternated one by one, so a change in the machine's load falls on both alike: on a
    // shared machine two runs one after the other measured 1.4x and 6.2x.
    let (mut fresh_all, mut long_all) = (Vec::new(), Vec::new());
    for _ in 0..40 {
        fresh_all.push(command_latencies(&ledger, &actors, &fresh, 5).await?);
        long_all.push(command_latencies(&ledger, &actors, &long, 5).await?);
    }
    let (fresh_p50, fresh_p99) = percentiles(fresh_all.concat());
    let (long_p50, long_p99) = percentiles(long_all.concat());
    figure(
        format!(
            "command p50 on a {}-event task vs a fresh task (p99 {} vs {})",
            s.long_task_events,
            ms(long_p99),
            ms(fresh_p99)
        ),
        ms(fresh_p50),
        ms(long_p50),
        format!("{:.2}", long_p50.as_secs_f64() / fresh_p50.as_secs_f64()),
    );

    // Replay alone (its speed: the machine's two cores are its own), then online (what the
    // writers meet: the 8 writers take as much of the machine as they can get), then check
    // and verify.
    analyze(&store).await?;
    let head_alone = store.head_position().await?;
    let started = Instant::now();
    store.replay(false, |_| {}).await?;
    let alone_took = started.elapsed();
    figure(
        format!("replay alone, {head_alone} events"),
        format!("creation rate {}", per_s(filled.per_second())),
        per_s(head_alone as f64 / alone_took.as_secs_f64()),
        format!(
            "{:.1}",
            head_alone as f64 / alone_took.as_secs_f64() / filled.per_second()
        ),
    );
    let head_before = store.head_position().await?;
    let (replay_took, writer_p99, writer_worst, writer_errors) =
        replay_online(&store, &ledger, &actors).await?;
    figure(
        format!("replay, {head_before} events, 8 writers running (writer p99 {}, worst {}, {writer_errors} errors)", ms(writer_p99), ms(writer_worst)),
        format!("creation rate {}", per_s(filled.per_second())),
        per_s(head_before as f64 / replay_took.as_secs_f64()),
        format!("{:.1}", head_before as f64 / replay_took.as_secs_f64() / filled.per_second()),
    );
    let head = store.head_position().await?;
    let started = Instant::now();
    let check = store.replay(true, |_| {}).await?;
    let check_took = started.elapsed();
    figure(
        format!(
            "replay --check, {head} events ({} differences)",
            check.mismatches.len()
        ),
        String::new(),
        per_s(head as f64 / check_took.as_secs_f64()),
        String::new(),
    );
    let (verify_took, verify_peak, verify_ok) = verify_child(&db.database_url).await?;
    figure(
        format!(
            "verify (child process), {head} events ({})",
            if verify_ok { "intact" } else { "FAILED" }
        ),
        String::new(),
        format!(
            "{}, peak RSS {}",
            per_s(head as f64 / verify_took.as_secs_f64()),
            mb(verify_peak)
        ),
        String::new(),
    );

    if let Some(brokers) = &s.kafka_brokers {
        // A broker that fails costs this one figure, not the run's others.
        let measured = match relay_backlog(&store, brokers).await {
            Ok((published, took)) => (
                format!("relay: backlog of {published} events to a fresh topic"),
                per_s(published as f64 / took.as_secs_f64()),
            ),
            Err(e) => ("relay: backlog".to_string(), format!("FAILED: {e}")),
        };
        figure(measured.0, String::new(), measured.1, String::new());
    }

    let (hwm, rss) = memory_kb("self");
    figure(
        "this process (server, ledger and load generators): peak RSS / RSS at the end".into(),
        String::new(),
        format!("{} / {}", mb(hwm), mb(rss)),
        String::new(),
    );
    let steps: Vec<String> = grew
        .iter()
        .map(|(figure, peak)| format!("{} after figure {figure}", mb(*peak)))
        .collect();
    out.push(Figure {
        what: "this process: where its peak RSS grew (figures counted from 1)".into(),
        anchor: String::new(),
        measured: steps.join(", "),
        ratio: String::new(),
    });
    served.server.stop().await?;
    store.close().await;
    if !verify_ok || !check.mismatches.is_empty() || writer_errors > 0 {
        anyhow::bail!(
            "the ledger is not intact after the bench (verify, replay --check or a writer failed)"
        );
    }
    Ok(out)
}
