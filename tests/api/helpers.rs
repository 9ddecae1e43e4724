use serde_json::{json, Map, Value};
use sqlx::Connection;
use taskledger::callbacks::CallbackSettings;
use taskledger::config::{DatabaseSettings, ServeSettings};
use taskledger::domain::{CreateTask, TaskAction, TaskCommand, TaskId};
use taskledger::ledger::{CommandContext, Ledger, LedgerSettings};
use taskledger::metrics::Metrics;
use taskledger::relay::RelaySettings;
use taskledger::startup::Application;
use taskledger::store::Store;
use taskledger_events::{Actor, Scope};
use tempfile::TempDir;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// Runs a test body once per backend, as `postgres::name` and `sqlite::name`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(crate::helpers::Backend::Postgres).await
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(crate::helpers::Backend::Sqlite).await
                }
            )*
        }
    };
}
pub(crate) use on_both_backends;

/// A database of its own for one test: a fresh PostgreSQL database or a SQLite file in a
/// temporary directory.
pub struct TestDb {
    pub url: String,
    pub backend: Backend,
    _dir: Option<TempDir>,
}

pub fn pg_admin_url() -> String {
    std::env::var("TASKLEDGER_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string())
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Postgres => {
                let admin = pg_admin_url();
                let mut conn = sqlx::PgConnection::connect(&format!("{admin}/postgres"))
                    .await
                    .expect("PostgreSQL must be running for the integration tests");
                let name = format!("tl_test_{}", uuid::Uuid::now_v7().simple());
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .expect("create the test database");
                TestDb {
                    url: format!("{admin}/{name}"),
                    backend,
                    _dir: None,
                }
            }
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("a temporary directory");
                let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
                TestDb {
                    url,
                    backend,
                    _dir: Some(dir),
                }
            }
        }
    }

    pub async fn store(&self) -> Store {
        Store::open(&self.url, 8).await.expect("open the store")
    }
}

/// A store with a ledger (its own committer) and an account with a customer and a
/// contributor identity.
pub struct TestLedger {
    pub db: TestDb,
    pub store: Store,
    pub ledger: Ledger,
    pub account_id: String,
}

impl TestLedger {
    pub async fn new(backend: Backend) -> TestLedger {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        let ledger = Ledger::start(
            store.clone(),
            LedgerSettings::with_max_batch(64),
            Metrics::new(),
        );
        let account_id = store.ensure_account("acme").await.unwrap();
        TestLedger {
            db,
            store,
            ledger,
            account_id,
        }
    }

    pub fn customer(&self) -> CommandContext {
        context(&self.account_id, Scope::Customer)
    }

    /// Creates a categorization task and returns its id.
    pub async fn create(&self, unique_id: Option<&str>) -> TaskId {
        let committed = self
            .ledger
            .create(&self.customer(), categorization(unique_id), None)
            .await
            .expect("create a task");
        TaskId::parse(&committed.view.task_id).unwrap()
    }

    pub async fn run(
        &self,
        task: &TaskId,
        scope: Scope,
        action: TaskAction,
    ) -> Result<taskledger::store::Committed, taskledger::ledger::LedgerError> {
        let ctx = context(&self.account_id, scope);
        self.ledger
            .execute(&ctx, task, TaskCommand::new(scope, action), None)
            .await
    }
}

pub fn context(account_id: &str, scope: Scope) -> CommandContext {
    CommandContext {
        actor: Actor {
            account_id: account_id.to_string(),
            key_id: Some(format!("key_test_{}", scope.as_str())),
            scope,
        },
        request_id: Some(format!("req-{}", uuid::Uuid::now_v7())),
    }
}

pub fn categorization(unique_id: Option<&str>) -> CreateTask {
    let params: Map<String, Value> = json!({
        "attachment_type": "text",
        "attachment": "car",
        "categories": ["big", "small"],
    })
    .as_object()
    .cloned()
    .unwrap();
    CreateTask {
        task_type: "categorization".into(),
        instruction: Some("Would you say this item is big or small?".into()),
        callback_url: Some("http://www.example.com/callback".into()),
        project: Some("kittens".into()),
        unique_id: unique_id.map(str::to_string),
        tags: Some(vec!["experiment_1".into()]),
        params,
        ..CreateTask::default()
    }
}

/// Every projection row, in a stable order, to compare two states of a database.
pub async fn projection_snapshot(store: &Store) -> Vec<String> {
    use sqlx::Row;
    let mut out = Vec::new();
    let rows = sqlx::query(
        "SELECT task_id, account_id, version, body, task_type, status, project, batch, \
         customer_review_status, unique_id, created_at_us, updated_at_us, completed_at_us \
         FROM tasks ORDER BY task_id",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    for r in rows {
        out.push(format!(
            "task {} {} {} {} {} {} {:?} {:?} {:?} {:?} {} {} {:?}",
            r.get::<String, _>(0),
            r.get::<String, _>(1),
            r.get::<i64, _>(2),
            r.get::<String, _>(3),
            r.get::<String, _>(4),
            r.get::<String, _>(5),
            r.get::<Option<String>, _>(6),
            r.get::<Option<String>, _>(7),
            r.get::<Option<String>, _>(8),
            r.get::<Option<String>, _>(9),
            r.get::<i64, _>(10),
            r.get::<i64, _>(11),
            r.get::<Option<i64>, _>(12),
        ));
    }
    let tags = sqlx::query("SELECT task_id, account_id, tag FROM task_tags ORDER BY task_id, tag")
        .fetch_all(store.pool())
        .await
        .unwrap();
    for r in tags {
        out.push(format!(
            "tag {} {} {}",
            r.get::<String, _>(0),
            r.get::<String, _>(1),
            r.get::<String, _>(2)
        ));
    }
    let ids = sqlx::query(
        "SELECT account_id, unique_id, task_id FROM unique_ids ORDER BY account_id, unique_id",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    for r in ids {
        out.push(format!(
            "unique_id {} {} {}",
            r.get::<String, _>(0),
            r.get::<String, _>(1),
            r.get::<String, _>(2)
        ));
    }
    out
}

/// Alters an event behind the database's back: the append-only trigger is switched off the
/// way an attacker with table-owner rights could.
pub async fn tamper_with_event(db: &TestDb, store: &Store, position: i64, payload: &str) {
    let sql: &[&str] = match db.backend {
        Backend::Postgres => &[
            "ALTER TABLE events DISABLE TRIGGER events_no_update",
            "UPDATE events SET payload = $1 WHERE global_position = $2",
        ],
        Backend::Sqlite => &[
            "DROP TRIGGER events_no_update",
            "UPDATE events SET payload = $1 WHERE global_position = $2",
        ],
    };
    sqlx::raw_sql(sql[0]).execute(store.pool()).await.unwrap();
    let done = sqlx::query(sql[1])
        .bind(payload)
        .bind(position)
        .execute(store.pool())
        .await
        .unwrap();
    assert_eq!(done.rows_affected(), 1);
}

/// A running server on a random port, with keys of two accounts.
pub struct TestApp {
    pub address: String,
    /// Kept so the database outlives the server.
    pub _db: TestDb,
    pub store: Store,
    pub client: reqwest::Client,
    /// acme's customer key.
    pub key: String,
    /// acme's contributor key.
    pub contributor_key: String,
    /// globex's customer key: another account.
    pub other_key: String,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

pub async fn spawn_app_with(
    backend: Backend,
    configure: impl FnOnce(&mut ServeSettings),
) -> TestApp {
    let db = TestDb::new(backend).await;
    let mut serve = ServeSettings {
        listen: "127.0.0.1:0".into(),
        kafka_brokers: None,
        relay: RelaySettings {
            kafka_topic: "taskledger.task-events".into(),
            kafka_partitions: 3,
            kafka_replication: 1,
            kafka_message_timeout_ms: 30_000,
            kafka_message_max_bytes: 1_000_000,
        },
        callbacks: CallbackSettings {
            callback_max_attempts: 20,
            callback_retry_base_ms: 10_000,
            callback_retry_span_secs: 24 * 60 * 60,
            callback_timeout_ms: 10_000,
            callback_allow_private_networks: true,
            callback_concurrency: 16,
        },
        max_body_bytes: 10 * 1024 * 1024,
        idempotency_ttl_secs: 24 * 60 * 60,
        max_batch: 64,
        limits: taskledger::config::ServerLimits {
            header_read_timeout_secs: 30,
            body_read_timeout_secs: 30,
            request_timeout_secs: 60,
            max_connections: 1024,
        },
    };
    configure(&mut serve);
    let app = Application::build(
        &DatabaseSettings {
            database_url: db.url.clone(),
            db_connections: 8,
        },
        &serve,
    )
    .await
    .expect("build the application");
    let address = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until(std::future::pending()));
    let store = db.store().await;
    let (_, key) = store.create_key("acme", Scope::Customer).await.unwrap();
    let (_, contributor_key) = store.create_key("acme", Scope::Contributor).await.unwrap();
    let (_, other_key) = store.create_key("globex", Scope::Customer).await.unwrap();
    TestApp {
        address,
        _db: db,
        store,
        client: reqwest::Client::new(),
        key,
        contributor_key,
        other_key,
    }
}

/// A response's status and JSON body (Null when the body is not JSON).
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    /// Asserts an error reply: the status, the reference's body, and the message mentions
    /// `needle` (a field or parameter name).
    pub fn assert_error(&self, status: u16, needle: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.body["status_code"], status, "{}", self.body);
        let message = self.body["error"].as_str().expect("an error message");
        assert!(
            message.to_lowercase().contains(&needle.to_lowercase()),
            "{message:?} should mention {needle:?}"
        );
    }

    pub fn task_id(&self) -> String {
        assert_eq!(self.status, 200, "{}", self.body);
        self.body["task_id"]
            .as_str()
            .expect("a task_id")
            .to_string()
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// Sends a request with HTTP Basic auth (key as user name), like the reference's clients.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = self
            .client
            .request(method, self.url(path))
            .basic_auth(key, Some(""));
        if let Some(body) = body {
            request = request.json(&body);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        Reply {
            status,
            headers,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(reqwest::Method::GET, path, &self.key, None, &[])
            .await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(reqwest::Method::POST, path, &self.key, Some(body), &[])
            .await
    }

    pub async fn contributor_post(&self, path: &str, body: Value) -> Reply {
        self.send(
            reqwest::Method::POST,
            path,
            &self.contributor_key,
            Some(body),
            &[],
        )
        .await
    }

    /// Creates a categorization task with extra fields merged in; returns the reply.
    pub async fn create(&self, extra: Value) -> Reply {
        let mut body = json!({
            "instruction": "Would you say this item is big or small?",
            "callback_url": "http://www.example.com/callback",
            "attachment_type": "text",
            "attachment": "car",
            "categories": ["big", "small"],
        });
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            body[k] = v;
        }
        self.post("/v1/task/categorization", body).await
    }

    /// Creates a task and completes it with the contributor key.
    pub async fn completed(&self, extra: Value) -> String {
        let id = self.create(extra).await.task_id();
        let done = self
            .contributor_post(
                &format!("/v1/task/{id}/complete"),
                json!({"response": {"category": "big"}}),
            )
            .await;
        assert_eq!(done.status, 200, "{}", done.body);
        id
    }

    /// The server's `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("the server answers")
            .text()
            .await
            .expect("a text body")
    }

    pub async fn history_len(&self, id: &str) -> usize {
        let reply = self.get(&format!("/v1/task/{id}/history")).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.body["events"].as_array().unwrap().len()
    }
}

/// A port that was free a moment ago, for processes that must be told their port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value of a metric line (`name` with its labels, if any) in Prometheus text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(name))
        .and_then(|line| line.split_whitespace().last())
        .and_then(|v| v.parse().ok())
}

/// A `taskledger serve` process on `port`, for tests that SIGKILL it; killed on drop.
pub struct ServerProcess {
    child: std::process::Child,
    pub url: String,
}

impl ServerProcess {
    /// Starts the binary on `db` with extra environment, and waits until it is ready.
    pub async fn start(db: &TestDb, port: u16, env: &[(&str, &str)]) -> ServerProcess {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_taskledger"))
            .arg("serve")
            .env("DATABASE_URL", &db.url)
            .env("TASKLEDGER_LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start taskledger serve");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while reqwest::get(format!("{url}/readyz")).await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "serve did not come up"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        ServerProcess { child, url }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = reqwest::get(format!("{}/metrics", self.url))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        metric_value(&text, name)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Asserts the ledger is whole: every hash chain and position verifies, and every projection
/// equals what replaying the events gives.
pub async fn assert_ledger_intact(store: &Store) {
    let verified = store.verify(|_| {}).await.unwrap();
    assert!(
        verified.first_failure.is_none(),
        "{:?}",
        verified.first_failure
    );
    let replayed = store.replay(true, |_| {}).await.unwrap();
    assert!(replayed.mismatches.is_empty(), "{:?}", replayed.mismatches);
}
