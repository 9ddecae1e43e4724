//! The `taskledger` binary run as an operator would: one-shot commands, and `serve` processes
//! that tests SIGKILL.

use std::process::{Command, Output};

use serde_json::{json, Value};
use taskledger_events::Scope;

use super::{eventually, metric_value, ok_if, TestDb, PATIENCE};

/// A port that was free a moment ago, for processes that must be told their port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `taskledger <args>` on the database at `database_url` and returns what it did.
pub fn taskledger(database_url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_taskledger"))
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the taskledger binary")
}

/// A `taskledger serve` process on `port`, for tests that SIGKILL it; killed on drop.
pub struct ServerProcess {
    child: std::process::Child,
    pub url: String,
}

impl ServerProcess {
    /// Starts the binary on `db` with extra environment, and waits until it is ready.
    pub async fn start(db: &TestDb, port: u16, env: &[(&str, &str)]) -> ServerProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_taskledger"))
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
        // Owned from here, so a process that never comes up is killed on the way out.
        let mut server = ServerProcess { child, url };
        let ready = format!("{}/readyz", server.url);
        eventually(PATIENCE, "serve to answer /readyz", async || {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("serve exited before it was ready: {status}");
            }
            reqwest::get(&ready).await.map(|_| ())
        })
        .await;
        server
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

/// GET `url` as `key`: the JSON it answers. For servers that are not a [`super::TestApp`].
pub async fn get_json(client: &reqwest::Client, url: &str, key: &str) -> Value {
    client
        .get(url)
        .basic_auth(key, Some(""))
        .send()
        .await
        .expect("the server answers")
        .json()
        .await
        .expect("a JSON body")
}

/// POST `body` to `url` as `key`.
pub async fn post_as(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: &Value,
) -> reqwest::Response {
    client
        .post(url)
        .basic_auth(key, Some(""))
        .json(body)
        .send()
        .await
        .expect("the server answers")
}

/// A client of a server process, with a customer and a contributor key of one account.
pub struct ProcessClient {
    client: reqwest::Client,
    pub key: String,
    pub worker: String,
}

impl ProcessClient {
    pub async fn new(db: &TestDb) -> ProcessClient {
        let store = db.store().await;
        let (_, key) = store.create_key("acme", Scope::Customer).await.unwrap();
        let (_, worker) = store.create_key("acme", Scope::Contributor).await.unwrap();
        ProcessClient {
            // Straight to the server, whatever proxy the shell running the tests names.
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            key,
            worker,
        }
    }

    /// GET `/v1{path}` on `server` as the customer.
    pub async fn get(&self, server: &str, path: &str) -> Value {
        get_json(&self.client, &format!("{server}/v1{path}"), &self.key).await
    }

    /// Creates a task calling back `url` and completes it; returns its id.
    pub async fn completed_task(&self, server: &str, url: &str, i: usize) -> String {
        let body = json!({"attachment": format!("d{i}"), "callback_url": url});
        let created: Value = post_as(
            &self.client,
            &format!("{server}/v1/task/documenttranscription"),
            &self.key,
            &body,
        )
        .await
        .json()
        .await
        .expect("a JSON body");
        let id = created["task_id"].as_str().unwrap().to_string();
        let done = post_as(
            &self.client,
            &format!("{server}/v1/task/{id}/complete"),
            &self.worker,
            &json!({"response": {"text": "ok"}}),
        )
        .await;
        assert_eq!(done.status(), 200);
        id
    }

    /// Waits until every task says `callback_completed`.
    pub async fn wait_called_back(&self, server: &str, ids: &[String]) {
        for id in ids {
            eventually(
                PATIENCE,
                &format!("task {id} to be called back"),
                async || {
                    let task = self.get(server, &format!("/task/{id}")).await;
                    ok_if(task["callback_completed"] == true, task)
                },
            )
            .await;
        }
    }
}
