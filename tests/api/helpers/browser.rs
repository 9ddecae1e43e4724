//! A real headless Chromium (Debian's `chromium`), driven over the Chrome DevTools Protocol.
//!
//! The protocol runs over `--remote-debugging-pipe` (what Puppeteer uses): Chromium reads
//! commands on its fd 3 and writes answers and events on its fd 4, each a JSON text ended by
//! a NUL byte. That needs no WebSocket, no driver process and no protocol crate to compile:
//! the few commands the console tests send are plain JSON below.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::{eventually, PATIENCE};

pub const CHROMIUM: &str = "/usr/bin/chromium";

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// One Chromium process with one page, and every protocol event it reported.
pub struct Browser {
    child: Child,
    to_browser: Mutex<std::io::PipeWriter>,
    pending: Pending,
    events: Arc<Mutex<Vec<Value>>>,
    next_id: AtomicU64,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium headless on a fresh profile, opens a blank page of `width` x `height`
    /// and turns on the page, network and runtime events.
    pub async fn start(width: u32, height: u32) -> Browser {
        let profile = tempfile::tempdir().expect("a profile directory");
        let (chrome_reads, we_write) = std::io::pipe().expect("a pipe");
        let (we_read, chrome_writes) = std::io::pipe().expect("a pipe");
        let (read_fd, write_fd) = (chrome_reads.as_raw_fd(), chrome_writes.as_raw_fd());
        let mut command = Command::new(CHROMIUM);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-default-apps",
                "--disable-extensions",
                "--mute-audio",
                "--remote-debugging-pipe",
                &format!("--user-data-dir={}", profile.path().display()),
                &format!("--window-size={width},{height}"),
                "about:blank",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: between fork and exec only dup2, which is async-signal-safe, runs; it puts
        // the pipe ends where Chromium looks for them (the originals close on exec).
        unsafe {
            command.pre_exec(move || {
                if libc::dup2(read_fd, 3) < 0 || libc::dup2(write_fd, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap_or_else(|e| {
            panic!("start {CHROMIUM} (apt-get install chromium; scripts/test installs it): {e}")
        });
        drop((chrome_reads, chrome_writes));

        let pending: Pending = Arc::default();
        let events: Arc<Mutex<Vec<Value>>> = Arc::default();
        {
            let (pending, events) = (pending.clone(), events.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(we_read);
                let mut message = Vec::new();
                while reader.read_until(0, &mut message).unwrap_or(0) > 0 {
                    message.pop_if(|b| *b == 0);
                    if let Ok(value) = serde_json::from_slice::<Value>(&message) {
                        match value["id"].as_u64() {
                            Some(id) => {
                                if let Some(reply) = pending.lock().unwrap().remove(&id) {
                                    let _ = reply.send(value);
                                }
                            }
                            None => events.lock().unwrap().push(value),
                        }
                    }
                    message.clear();
                }
            });
        }
        let mut browser = Browser {
            child,
            to_browser: Mutex::new(we_write),
            pending,
            events,
            next_id: AtomicU64::new(1),
            session: String::new(),
            _profile: profile,
        };
        let target = browser
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let attached = browser
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        browser.session = attached["sessionId"].as_str().unwrap().to_string();
        for domain in [
            "Page.enable",
            "Network.enable",
            "Runtime.enable",
            "Log.enable",
        ] {
            browser.send(domain, json!({})).await;
        }
        browser.resize(width, height).await;
        browser
    }

    async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        {
            let mut pipe = self.to_browser.lock().unwrap();
            let mut bytes = serde_json::to_vec(&message).unwrap();
            bytes.push(0);
            pipe.write_all(&bytes).expect("write to Chromium");
        }
        let reply = tokio::time::timeout(PATIENCE, rx)
            .await
            .unwrap_or_else(|_| panic!("Chromium did not answer {method}"))
            .unwrap_or_else(|_| panic!("Chromium exited before answering {method}"));
        assert!(
            reply.get("error").is_none(),
            "{method} failed: {}",
            reply["error"]
        );
        reply["result"].clone()
    }

    /// A protocol command to the page.
    pub async fn send(&self, method: &str, params: Value) -> Value {
        self.call(Some(&self.session), method, params).await
    }

    pub async fn resize(&self, width: u32, height: u32) {
        self.send(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600}),
        )
        .await;
    }

    pub async fn goto(&self, url: &str) {
        let done = self.send("Page.navigate", json!({"url": url})).await;
        assert!(done.get("errorText").is_none(), "navigate to {url}: {done}");
    }

    /// The value of a JavaScript expression in the page (promises awaited).
    pub async fn eval(&self, expression: &str) -> Value {
        let result = self
            .send(
                "Runtime.evaluate",
                json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
            )
            .await;
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression} threw: {}",
            result["exceptionDetails"]
        );
        result["result"]["value"].clone()
    }

    /// Waits until `expression` is true in the page; `what` names it if it never is.
    pub async fn wait_for(&self, what: &str, expression: &str) {
        let probe =
            format!("(() => {{ try {{ return !!({expression}); }} catch {{ return false; }} }})()");
        eventually(PATIENCE, what, async || {
            let holds = self.eval(&probe).await;
            if holds == json!(true) {
                Ok(())
            } else {
                let text = self
                    .eval("document.querySelector('main')?.innerText ?? ''")
                    .await;
                Err(text
                    .as_str()
                    .unwrap_or_default()
                    .chars()
                    .take(400)
                    .collect::<String>())
            }
        })
        .await;
    }

    /// Types text into the focused element, as keystrokes would.
    pub async fn type_text(&self, text: &str) {
        self.send("Input.insertText", json!({"text": text})).await;
    }

    /// Presses and releases a key (`Enter`, `Tab`, ...) on the focused element.
    pub async fn press(&self, key: &str) {
        let (code, text) = match key {
            "Enter" => (13, "\r"),
            "Tab" => (9, ""),
            " " => (32, " "),
            other => panic!("no key code for {other}"),
        };
        let mut down =
            json!({"type": "keyDown", "key": key, "code": key, "windowsVirtualKeyCode": code});
        if !text.is_empty() {
            down["text"] = json!(text);
        }
        self.send("Input.dispatchKeyEvent", down).await;
        self.send(
            "Input.dispatchKeyEvent",
            json!({"type": "keyUp", "key": key, "code": key, "windowsVirtualKeyCode": code}),
        )
        .await;
    }

    /// Saves a PNG of the page under the build's `target/console-screenshots/` and returns
    /// its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let shot = self
            .send("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Every URL the page asked for so far (from the network events).
    pub fn requested_urls(&self) -> Vec<String> {
        self.events_named("Network.requestWillBeSent")
            .iter()
            .filter_map(|e| e["params"]["request"]["url"].as_str().map(String::from))
            .collect()
    }

    /// The protocol events of one kind so far.
    pub fn events_named(&self, method: &str) -> Vec<Value> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["method"] == method)
            .cloned()
            .collect()
    }

    /// Asserts the page raised no uncaught exception, asked for nothing outside `origin`,
    /// and did not even try: a request the Content-Security-Policy blocks never reaches the
    /// network events, but Chromium logs the refusal.
    pub fn assert_stayed_within(&self, origin: &str) {
        let thrown = self.events_named("Runtime.exceptionThrown");
        assert!(thrown.is_empty(), "the page threw: {thrown:?}");
        let refused: Vec<_> = self
            .events_named("Log.entryAdded")
            .into_iter()
            .filter(|e| {
                let entry = &e["params"]["entry"];
                entry["source"] == "security"
                    || entry["text"]
                        .as_str()
                        .is_some_and(|t| t.contains("Content Security Policy"))
            })
            .collect();
        assert!(refused.is_empty(), "the page broke its policy: {refused:?}");
        let urls = self.requested_urls();
        assert!(!urls.is_empty(), "no request was seen at all");
        let prefix = format!("{origin}/");
        // `data:` URLs never reach a network: Chromium's own controls (the date picker's
        // icon) use them, and the console's CSP keeps the page itself from doing so.
        let outside: Vec<_> = urls
            .iter()
            .filter(|u| !u.starts_with(&prefix) && *u != "about:blank" && !u.starts_with("data:"))
            .collect();
        assert!(outside.is_empty(), "requests left {origin}: {outside:?}");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `target/console-screenshots` of this build (`CARGO_TARGET_DIR` when it is set).
pub fn screenshot_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("console-screenshots")
}
