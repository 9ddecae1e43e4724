//! The published `scaleapi` SDK, unmodified, against the real server: it is installed into a
//! virtual environment under `target/` on first use (PyPI is needed once).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::helpers::{on_both_backends, spawn_app, Backend};

static VENV_LOCK: Mutex<()> = Mutex::new(());

/// The venv's python with the pinned SDK installed; built once and reused.
pub(crate) fn sdk_python() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join("target").join("sdk-venv");
    let python = venv.join("bin").join("python");
    let requirements = root.join("tests").join("sdk").join("requirements.txt");
    let _guard = VENV_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let ready = venv.join(".installed");
    let wanted = std::fs::read_to_string(&requirements).expect("tests/sdk/requirements.txt");
    if std::fs::read_to_string(&ready).ok().as_deref() == Some(wanted.as_str()) {
        return python;
    }
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.output().expect("run python");
        assert!(
            out.status.success(),
            "{cmd:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(std::process::Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv));
    run(std::process::Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&requirements));
    std::fs::write(&ready, wanted).unwrap();
    python
}

async fn the_published_sdk_runs_its_workflows_unmodified(backend: Backend) {
    let python = tokio::task::spawn_blocking(sdk_python).await.unwrap();
    let app = spawn_app(backend).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/compat.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .env("TASKLEDGER_URL", format!("{}/v1", app.address))
        .env("TASKLEDGER_CUSTOMER_KEY", &app.key)
        .env("TASKLEDGER_OTHER_ACCOUNT_KEY", &app.other_key)
        .env("TASKLEDGER_CONTRIBUTOR_KEY", &app.contributor_key)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "SDK checks failed:\n{stdout}\n{stderr}"
    );
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(summary.ends_with(" 0 failed"), "{stdout}");
    assert!(!stdout.contains("SKIP"), "every check must run:\n{stdout}");
    assert!(
        stdout.lines().filter(|l| l.starts_with("PASS")).count() >= 30,
        "{stdout}"
    );
}

on_both_backends!(the_published_sdk_runs_its_workflows_unmodified);
