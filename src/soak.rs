//! `taskledger soak`: does a trickle of hostile requests hurt everyone else?
//!
//! The app is served on a random port. A load of good requests (one tenant creating and
//! reading tasks) runs twice with the same size and concurrency: once alone, once with about
//! 1 % hostile requests from another tenant mixed in (NUL identifiers, 8 KB tags, deep JSON,
//! huge tag lists, oversize bodies and events, half-sent headers). The good requests' p99 of
//! both runs, their ratio, and the worst `/healthz` latency seen throughout are reported,
//! along with every hostile answer; then the ledger is verified and its projections checked.
//!
//! Timing is reported, never judged here: the command line compares the ratio with its
//! target, and the integration test only checks correctness.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use clap::{Args, Parser};
use serde_json::{json, Value};
use taskledger_events::Scope;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cli::{Cli, Command};
use crate::config::{DatabaseSettings, ServeSettings};
use crate::startup::Application;
use crate::store::Store;

#[derive(Debug, Clone, Args)]
pub struct SoakSettings {
    /// Good requests in each of the two runs.
    #[arg(long, default_value_t = 5_000)]
    pub requests: u64,
    /// Concurrent good clients.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Hostile requests per 100 good ones in the second run.
    #[arg(long, default_value_t = 1.0)]
    pub hostile_percent: f64,
    /// The header-read timeout of the soaked server, in seconds (half-sent headers are held
    /// open until it cuts them off).
    #[arg(long, default_value_t = 2)]
    pub header_read_timeout_secs: u64,
    /// The kinds of hostile request to send, in turn (all of them by default).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Hostile::ALL)]
    pub hostile: Vec<Hostile>,
    /// Exit 1 when the p99 ratio exceeds this (the target is 1.5).
    #[arg(long, default_value_t = 1.5)]
    pub max_p99_ratio: f64,
}

/// The latencies of one run of good requests.
#[derive(Debug, Clone)]
pub struct Run {
    pub requests: u64,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p99: Duration,
    /// Good requests that did not get a 2xx, with what they got instead.
    pub failures: Vec<String>,
}

/// Every kind of hostile request the soak sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Hostile {
    NulProject,
    LongTag,
    DeepJson,
    ManyTags,
    OversizeBody,
    OversizeEvent,
    NulListFilter,
    HalfSentHeaders,
}

impl Hostile {
    pub const ALL: [Hostile; 8] = [
        Hostile::NulProject,
        Hostile::LongTag,
        Hostile::DeepJson,
        Hostile::ManyTags,
        Hostile::OversizeBody,
        Hostile::OversizeEvent,
        Hostile::NulListFilter,
        Hostile::HalfSentHeaders,
    ];
}

/// What a hostile request got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Status(u16),
    /// The server closed the connection (half-sent headers).
    CutOff,
    /// Still open when the soak stopped waiting, or the request failed on our side.
    Unanswered(String),
}

impl Outcome {
    /// A hostile request is handled when it is refused with a 4xx or cut off.
    pub fn is_refusal(&self) -> bool {
        match self {
            Outcome::Status(s) => (400..500).contains(s),
            Outcome::CutOff => true,
            Outcome::Unanswered(_) => false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SoakReport {
    pub clean: Run,
    pub mixed: Run,
    pub hostile: Vec<(Hostile, Outcome)>,
    /// The slowest `/healthz` answer seen while both runs went on.
    pub healthz_worst: Duration,
    pub healthz_failures: u64,
    /// `verify` exited 0.
    pub verify_clean: bool,
    /// `replay --check` exited 0.
    pub replay_clean: bool,
}

impl SoakReport {
    pub fn p99_ratio(&self) -> f64 {
        self.mixed.p99.as_secs_f64() / self.clean.p99.as_secs_f64().max(1e-9)
    }

    /// Everything but timing: good requests succeeded, hostile ones were refused, the ledger
    /// is intact.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for f in self.clean.failures.iter().chain(&self.mixed.failures) {
            problems.push(format!("good request failed: {f}"));
        }
        for (kind, outcome) in &self.hostile {
            if !outcome.is_refusal() {
                problems.push(format!("hostile {kind:?} was not refused: {outcome:?}"));
            }
        }
        if self.healthz_failures > 0 {
            problems.push(format!("/healthz failed {} times", self.healthz_failures));
        }
        if !self.verify_clean {
            problems.push("verify found a broken event".into());
        }
        if !self.replay_clean {
            problems.push("replay --check found differing projections".into());
        }
        problems
    }
}

/// Runs the soak against the database `db` (use a scratch one: it fills it with tasks).
pub async fn run(db: &DatabaseSettings, settings: &SoakSettings) -> anyhow::Result<SoakReport> {
    let header_timeout = settings.header_read_timeout_secs.max(1).to_string();
    let cli = Cli::try_parse_from([
        "taskledger",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--header-read-timeout-secs",
        &header_timeout,
        // The soak measures the server under load, not the rate limiter in front of it.
        "--rate-limit-per-sec",
        "0",
    ])
    .context("building the soak's serve settings")?;
    let Command::Serve(serve) = cli.command else {
        unreachable!("parsed as serve");
    };
    // The server gets a runtime (and threads) of its own, so the load generator's work,
    // building megabyte bodies included, does not run on the workers being measured.
    let server = ServedApart::start(db, serve.clone()).await?;
    let port = server.port;
    let address = format!("127.0.0.1:{port}");

    let store = Store::open(&db.database_url, 4).await?;
    let (_, good_key) = store.create_key("soak-good", Scope::Customer).await?;
    let (_, hostile_key) = store.create_key("soak-hostile", Scope::Customer).await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(settings.concurrency.max(1))
        .build()?;
    let target = Target {
        client,
        base: format!("http://{address}"),
        address,
        good_key,
        hostile_key,
        header_timeout: Duration::from_secs(settings.header_read_timeout_secs.max(1)),
        bodies: Arc::new(
            tokio::task::spawn_blocking(move || HostileBodies::build(serve.max_body_bytes)).await?,
        ),
    };

    // Untimed: the first requests pay for cold caches and a growing database, which would
    // flatter whichever run came second.
    let warmup = SoakSettings {
        requests: settings.requests / 10,
        ..settings.clone()
    };
    let warm = good_run(&target, &warmup, None).await;
    let health = HealthProbe::start(target.clone());
    let mut clean = good_run(&target, settings, None).await;
    clean.failures.extend(warm.failures);
    let hostile = Arc::new(Mutex::new(Vec::new()));
    let mixed = good_run(&target, settings, Some(hostile.clone())).await;
    let (healthz_worst, healthz_failures) = health.stop().await;

    server.stop().await?;

    // The operator's own commands, as they print and judge.
    let verify_clean = crate::cli::verify(&store, 1, None).await? == ExitCode::SUCCESS;
    let replay_clean = crate::cli::replay(&store, true).await? == ExitCode::SUCCESS;
    store.close().await;
    let hostile = std::mem::take(&mut *hostile.lock().expect("not poisoned"));
    Ok(SoakReport {
        clean,
        mixed,
        hostile,
        healthz_worst,
        healthz_failures,
        verify_clean,
        replay_clean,
    })
}

#[derive(Clone)]
struct Target {
    client: reqwest::Client,
    base: String,
    address: String,
    good_key: String,
    hostile_key: String,
    header_timeout: Duration,
    bodies: Arc<HostileBodies>,
}

/// The hostile request bodies, encoded once.
struct HostileBodies {
    nul_project: Bytes,
    long_tag: Bytes,
    deep_json: Bytes,
    many_tags: Bytes,
    oversize_body: Bytes,
    oversize_event: Bytes,
}

impl HostileBodies {
    fn build(max_body_bytes: usize) -> HostileBodies {
        let with = |field: &str, value: Value| {
            let mut body = json!({
                "instruction": "hostile",
                "attachment_type": "text",
                "attachment": "car",
                "categories": ["big", "small"],
            });
            body[field] = value;
            Bytes::from(body.to_string())
        };
        let tags: Vec<String> = (0..150_000).map(|n| format!("tag-{n}")).collect();
        // Written out by hand: serde_json refuses to build (or print) this deep a value.
        let deep = format!(
            "{{\"attachment_type\": \"text\", \"attachment\": \"car\", \
             \"categories\": [\"big\", \"small\"], \"metadata\": {{\"deep\": {}1{}}}}}",
            "[".repeat(127),
            "]".repeat(127)
        );
        HostileBodies {
            nul_project: with("project", json!("a\u{0}b")),
            long_tag: with("tags", json!(["t".repeat(8192)])),
            deep_json: Bytes::from(deep),
            many_tags: with("tags", json!(tags)),
            oversize_body: with("attachment", json!("x".repeat(max_body_bytes + 1))),
            oversize_event: with("attachment", json!("x".repeat(1_500_000))),
        }
    }
}

type HostileLog = Arc<Mutex<Vec<(Hostile, Outcome)>>>;

/// One run of good requests; with `hostile`, one hostile request is launched beside every
/// `100 / hostile_percent` good ones, each on its own task so it never holds a good client.
async fn good_run(target: &Target, settings: &SoakSettings, hostile: Option<HostileLog>) -> Run {
    let total = settings.requests;
    let every = if settings.hostile_percent > 0.0 {
        ((100.0 / settings.hostile_percent).round() as u64).max(1)
    } else {
        u64::MAX
    };
    let kinds: Arc<[Hostile]> = if settings.hostile.is_empty() {
        Hostile::ALL.into()
    } else {
        settings.hostile.clone().into()
    };
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    let hostile_tasks = Arc::new(Mutex::new(Vec::new()));
    for _ in 0..settings.concurrency.max(1) {
        let next = next.clone();
        let target = target.clone();
        let hostile = hostile.clone();
        let hostile_tasks = hostile_tasks.clone();
        let kinds = kinds.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = Vec::new();
            let mut last_task: Option<String> = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return (latencies, failures);
                }
                if let Some(log) = &hostile {
                    if i % every == every / 2 {
                        let kind = kinds[((i / every) as usize) % kinds.len()];
                        let target = target.clone();
                        let log = log.clone();
                        let task = tokio::spawn(async move {
                            let outcome = send_hostile(&target, kind).await;
                            log.lock().expect("not poisoned").push((kind, outcome));
                        });
                        hostile_tasks.lock().expect("not poisoned").push(task);
                    }
                }
                let t = Instant::now();
                let result = good_request(&target, i, last_task.as_deref()).await;
                latencies.push(t.elapsed());
                match result {
                    Ok(Some(task_id)) => last_task = Some(task_id),
                    Ok(None) => {}
                    Err(e) => failures.push(e),
                }
            }
        }));
    }
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    for w in workers {
        match w.await {
            Ok((l, f)) => {
                latencies.extend(l);
                failures.extend(f);
            }
            Err(e) => failures.push(format!("a client panicked: {e}")),
        }
    }
    let elapsed = started.elapsed();
    let pending = std::mem::take(&mut *hostile_tasks.lock().expect("not poisoned"));
    for task in pending {
        let _ = task.await;
    }
    latencies.sort();
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Run {
        requests: total,
        elapsed,
        p50: pick(0.50),
        p99: pick(0.99),
        failures,
    }
}

/// Two creates for every read: a create, or a read of this client's last task.
async fn good_request(
    target: &Target,
    i: u64,
    last_task: Option<&str>,
) -> Result<Option<String>, String> {
    let request = match (i % 3, last_task) {
        (2, Some(task)) => target
            .client
            .get(format!("{}/v1/task/{task}", target.base))
            .basic_auth(&target.good_key, Some("")),
        _ => target
            .client
            .post(format!("{}/v1/task/categorization", target.base))
            .basic_auth(&target.good_key, Some(""))
            .json(&json!({
                "instruction": "Would you say this item is big or small?",
                "attachment_type": "text",
                "attachment": format!("item {i}"),
                "categories": ["big", "small"],
                "project": "soak",
                "tags": ["soak", format!("client-{}", i % 7)],
                "metadata": {"score": 0.5, "n": i},
            })),
    };
    let response = request.send().await.map_err(|e| format!("#{i}: {e}"))?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        return Err(format!("#{i}: {status} {body}"));
    }
    Ok(body["task_id"].as_str().map(str::to_string))
}

async fn send_hostile(target: &Target, kind: Hostile) -> Outcome {
    let create = |body: &Bytes| {
        target
            .client
            .post(format!("{}/v1/task/categorization", target.base))
            .basic_auth(&target.hostile_key, Some(""))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone())
    };
    let bodies = &target.bodies;
    let request = match kind {
        Hostile::NulProject => create(&bodies.nul_project),
        Hostile::LongTag => create(&bodies.long_tag),
        Hostile::DeepJson => create(&bodies.deep_json),
        Hostile::ManyTags => create(&bodies.many_tags),
        Hostile::OversizeBody => create(&bodies.oversize_body),
        Hostile::OversizeEvent => create(&bodies.oversize_event),
        Hostile::NulListFilter => target
            .client
            .get(format!("{}/v1/tasks?project=%00", target.base))
            .basic_auth(&target.hostile_key, Some("")),
        Hostile::HalfSentHeaders => return half_sent_headers(target).await,
    };
    match request.send().await {
        Ok(response) => Outcome::Status(response.status().as_u16()),
        // An oversize body may be refused before it is all sent: the connection is cut.
        Err(e) if kind == Hostile::OversizeBody => {
            tracing::debug!(error = %e, "oversize body cut off");
            Outcome::CutOff
        }
        Err(e) => Outcome::Unanswered(e.to_string()),
    }
}

/// Sends part of a header block and waits for the server to hang up (bounded by a few
/// header-read timeouts).
async fn half_sent_headers(target: &Target) -> Outcome {
    let mut stream = match tokio::net::TcpStream::connect(&target.address).await {
        Ok(s) => s,
        Err(e) => return Outcome::Unanswered(format!("connect: {e}")),
    };
    let partial = "POST /v1/task/categorization HTTP/1.1\r\nHost: soak\r\nX-Slow: ";
    if let Err(e) = stream.write_all(partial.as_bytes()).await {
        return Outcome::Unanswered(format!("write: {e}"));
    }
    let mut buf = [0u8; 1024];
    let wait = target.header_timeout * 5 + Duration::from_secs(5);
    match tokio::time::timeout(wait, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                // hyper may answer 408 before closing; keep reading until it does.
                Ok(_) => continue,
            }
        }
    })
    .await
    {
        Ok(()) => Outcome::CutOff,
        Err(_) => Outcome::Unanswered(format!("still open after {wait:?}")),
    }
}

/// Polls `/healthz` until stopped, keeping the worst latency.
struct HealthProbe {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<(Duration, u64)>,
}

impl HealthProbe {
    fn start(target: Target) -> HealthProbe {
        let (stop, mut stopping) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut worst = Duration::ZERO;
            let mut failures = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopping.wait_for(|s| *s) => return (worst, failures),
                }
                let t = Instant::now();
                let ok = target
                    .client
                    .get(format!("{}/healthz", target.base))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                worst = worst.max(t.elapsed());
                if !ok {
                    failures += 1;
                }
            }
        });
        HealthProbe { stop, task }
    }

    async fn stop(self) -> (Duration, u64) {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or((Duration::MAX, 1))
    }
}

/// The API served from a runtime and threads of its own, so that a load generator's work does
/// not run on the workers being measured (the soak's and `bench --scale`'s).
pub(crate) struct ServedApart {
    pub port: u16,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

impl ServedApart {
    pub async fn start(db: &DatabaseSettings, serve: ServeSettings) -> anyhow::Result<ServedApart> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready, port) = tokio::sync::oneshot::channel::<u16>();
        let db = db.clone();
        let thread = std::thread::spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the server's runtime")?;
            runtime.block_on(async move {
                let app = Application::build(&db, &serve).await?;
                let _ = ready.send(app.port());
                app.run_until(async {
                    let _ = stopped.await;
                })
                .await
            })
        });
        let Ok(port) = port.await else {
            return Err(match thread.join() {
                Ok(Err(e)) => e,
                _ => anyhow::anyhow!("the measured server did not start"),
            });
        };
        Ok(ServedApart { port, stop, thread })
    }

    /// Drains and stops the server, returning what it ended with.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the measured server panicked"))?
    }
}
