//! The `taskledger` binary run as an operator would: one-shot commands, and `serve` processes
//! that tests SIGKILL.

use std::process::{Command, Output};

use super::{eventually, metric_value, TestDb, PATIENCE};

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
