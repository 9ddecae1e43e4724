//! The application served on a random port, with settings parsed by the binary's own command
//! line, and a client that speaks as one API key.

use clap::{CommandFactory, FromArgMatches};
use reqwest::Method;
use serde_json::{json, Value};
use taskledger::cli::{Cli, Command};
use taskledger::config::{DatabaseSettings, ServeSettings};
use taskledger::startup::Application;
use taskledger::store::Store;
use taskledger_events::Scope;

use super::{Backend, TestDb};

/// The settings `taskledger serve` would run with, given only the database and a random
/// port: parsed by the binary's own clap definitions so that a default can never differ
/// between the tests and the binary. The environment is left out, so that a variable set
/// in the shell running the tests (`KAFKA_BROKERS`, ...) cannot change them either.
pub fn serve_settings(database_url: &str) -> (DatabaseSettings, ServeSettings) {
    let command = Cli::command()
        .mut_args(|arg| arg.env(None::<&str>))
        .mut_subcommand("serve", |serve| serve.mut_args(|arg| arg.env(None::<&str>)));
    let matches = command
        .try_get_matches_from([
            "taskledger",
            "--database-url",
            database_url,
            "--db-connections",
            "8",
            "serve",
            "--listen",
            "127.0.0.1:0",
        ])
        .expect("the serve flags parse");
    let cli = Cli::from_arg_matches(&matches).expect("the serve flags parse");
    match cli.command {
        Command::Serve(serve) => (cli.db, serve),
        other => panic!("parsed {other:?}, not serve"),
    }
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

/// A server with the binary's default settings, changed by `configure`.
pub async fn spawn_app_with(
    backend: Backend,
    configure: impl FnOnce(&mut ServeSettings),
) -> TestApp {
    let db = TestDb::new(backend).await;
    let (database, mut serve) = serve_settings(&db.url);
    configure(&mut serve);
    // A signing key of its own, never one in the working directory shared by the suite.
    let key_dir = std::env::temp_dir().join(format!("tl-test-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&key_dir).expect("a directory for the signing key");
    (serve.audit.signing_key.signing_key_file).get_or_insert(key_dir.join("signing-key.json"));
    let app = Application::build(&database, &serve)
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

/// Requests made with one API key (HTTP Basic, the key as user name, like the reference's
/// clients), plus any extra headers.
pub struct As<'a> {
    app: &'a TestApp,
    key: &'a str,
    headers: Vec<(&'a str, &'a str)>,
}

impl<'a> As<'a> {
    /// Adds a header to every request of this client.
    pub fn header(mut self, name: &'a str, value: &'a str) -> As<'a> {
        self.headers.push((name, value));
        self
    }

    pub async fn send(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let mut request = self
            .app
            .client
            .request(method, self.app.url(path))
            .basic_auth(self.key, Some(""));
        if let Some(body) = body {
            request = request.json(&body);
        }
        for (name, value) in &self.headers {
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
        self.send(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Reply {
        self.send(Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(Method::DELETE, path, None).await
    }

    pub async fn delete_with(&self, path: &str, body: Value) -> Reply {
        self.send(Method::DELETE, path, Some(body)).await
    }

    /// The task's events, read in one request.
    pub async fn history(&self, id: &str) -> Vec<Value> {
        let reply = self.get(&format!("/v1/task/{id}/history")).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.body["events"].as_array().cloned().unwrap_or_default()
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// A client speaking as `key`: `app.as_key(&app.contributor_key).post(path, body)`.
    pub fn as_key<'a>(&'a self, key: &'a str) -> As<'a> {
        As {
            app: self,
            key,
            headers: Vec::new(),
        }
    }

    /// GET as acme's customer key.
    pub async fn get(&self, path: &str) -> Reply {
        self.as_key(&self.key).get(path).await
    }

    /// POST as acme's customer key.
    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.as_key(&self.key).post(path, body).await
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
        self.complete(&id).await;
        id
    }

    /// Completes a categorization task (category "big") with acme's contributor key.
    pub async fn complete(&self, id: &str) {
        let done = self
            .as_key(&self.contributor_key)
            .post(
                &format!("/v1/task/{id}/complete"),
                json!({"response": {"category": "big"}}),
            )
            .await;
        assert_eq!(done.status, 200, "{}", done.body);
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

    /// The task's events as acme's customer sees them, read in one request.
    pub async fn history(&self, id: &str) -> Vec<Value> {
        self.as_key(&self.key).history(id).await
    }

    /// A new test-mode customer key of acme.
    pub async fn test_key(&self) -> String {
        let (_, key) = self
            .store
            .create_key_in_mode("acme", taskledger_events::Scope::Customer, None, true)
            .await
            .unwrap();
        key
    }

    /// Damages a view behind the ledger's back with `damage`: `replay --check` must find it
    /// and `replay` must bring what `path` answers back to what it was.
    pub async fn assert_replay_repairs(&self, path: &str, damage: &str) {
        let before = self.get(path).await.body;
        sqlx::query(damage)
            .execute(self.store.pool())
            .await
            .unwrap();
        let checked = self.store.replay(true, |_| {}).await.unwrap();
        assert!(
            !checked.mismatches.is_empty(),
            "replay --check finds {damage:?}"
        );
        self.store.replay(false, |_| {}).await.unwrap();
        assert_eq!(self.get(path).await.body, before, "replay repairs {path}");
        crate::helpers::assert_ledger_intact(&self.store).await;
    }

    pub async fn history_len(&self, id: &str) -> usize {
        self.history(id).await.len()
    }
}

/// The value of a metric line (`name` with its labels, if any) in Prometheus text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(name))
        .and_then(|line| line.split_whitespace().last())
        .and_then(|v| v.parse().ok())
}

/// Where categorization tasks are created.
pub const CREATE: &str = "/v1/task/categorization";

/// The smallest valid categorization body.
pub fn task_body() -> Value {
    json!({"attachment_type": "text", "attachment": "car", "categories": ["big", "small"]})
}

/// POST `body` to `path` as `api_key` with the `Idempotency-Key` `key`.
pub async fn keyed(app: &TestApp, key: &str, api_key: &str, path: &str, body: Value) -> Reply {
    app.as_key(api_key)
        .header("Idempotency-Key", key)
        .post(path, body)
        .await
}
