//! The operators' pack in `deploy/`: the alert rules pass `promtool`, the dashboard and the
//! alerts query only metrics that exist (a running server's `/metrics`, and the file
//! `verify --metrics-file` writes), and the example deployment is well-formed with the right
//! images and settings. The deployment is not run: there is no container engine here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::helpers::process::taskledger;
use crate::helpers::{on_both_backends, spawn_app_with, tamper_with_event, Backend, TestLedger};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(deploy())
        .output()
        .expect("promtool must be installed (scripts/test installs Debian's prometheus package)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn promtool_accepts_the_alert_rules_their_unit_tests_and_the_prometheus_config() {
    let rules = promtool(&["check", "rules", "prometheus/alerts.yml"]);
    assert!(rules.contains("SUCCESS: 9 rules found"), "{rules}");
    promtool(&["test", "rules", "prometheus/alerts_test.yml"]);
    promtool(&["check", "config", "prometheus/prometheus.yml"]);
}

#[test]
fn every_alert_has_a_summary_and_a_runbook_paragraph_in_the_readme() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let rules = yaml("prometheus/alerts.yml");
    let rules = rules["groups"][0]["rules"].as_sequence().unwrap();
    assert_eq!(rules.len(), 9);
    for rule in rules {
        let name = str_of(&rule["alert"], "alert");
        let annotations = &rule["annotations"];
        assert!(
            !str_of(&annotations["summary"], "summary").is_empty(),
            "{name}"
        );
        assert_eq!(
            str_of(&annotations["runbook"], "runbook"),
            format!("README.md#{}", name.to_lowercase())
        );
        let heading = format!("\n#### {name}\n");
        let at = readme
            .find(&heading)
            .unwrap_or_else(|| panic!("the README has no runbook for {name}"));
        let paragraph = readme[at + heading.len()..].split("\n#").next().unwrap();
        assert!(
            paragraph.len() > 200,
            "{name}'s runbook is a real paragraph"
        );
        assert!(["critical", "warning"].contains(&str_of(&rule["labels"]["severity"], "severity")));
    }
}

/// Every `taskledger_*` name in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|token| token.starts_with("taskledger_"))
        .map(str::to_string)
        .collect()
}

/// The sample names of a Prometheus text exposition.
fn exposed(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

fn dashboard() -> Value {
    let text =
        std::fs::read_to_string(deploy().join("grafana/dashboards/taskledger.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn dashboard_exprs() -> Vec<String> {
    dashboard()["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect()
}

fn alert_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(deploy().join("prometheus/alerts.yml")).unwrap();
    let rules: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    rules["groups"][0]["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r["expr"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_and_the_alerts_query_only_metrics_that_exist() {
    // A burst of 2 that refills once in 1000 s: the third request is throttled, so the
    // rate-limit series exists too.
    let app = spawn_app_with(Backend::Sqlite, |serve| {
        serve.limits.rate_limit_per_sec = 0.001;
        serve.limits.rate_limit_burst = 2;
    })
    .await;
    // One request and one command, so the per-route and per-outcome series exist.
    let id = app.create(json!({})).await.task_id();
    app.get(&format!("/v1/task/{id}")).await;
    assert_eq!(app.get(&format!("/v1/task/{id}")).await.status, 429);
    let mut names = exposed(&app.metrics().await);

    // The verify metrics come from the textfile collector, as `verify --metrics-file` writes.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("taskledger_verify.prom");
    let db_url = app._db.url.clone();
    let verify = taskledger(
        &db_url,
        &["verify", "--metrics-file", file.to_str().unwrap()],
    );
    assert!(verify.status.success(), "{verify:?}");
    names.extend(exposed(&std::fs::read_to_string(&file).unwrap()));

    let queried: BTreeSet<String> = dashboard_exprs()
        .iter()
        .chain(alert_exprs().iter())
        .flat_map(|e| metric_names(e))
        .collect();
    let missing: Vec<&String> = queried.difference(&names).collect();
    assert!(
        missing.is_empty(),
        "queried but not exposed: {missing:?}\nexposed: {names:?}"
    );

    // The dashboard shows what an operator needs.
    let dashboard_names: BTreeSet<String> = dashboard_exprs()
        .iter()
        .flat_map(|e| metric_names(e))
        .collect();
    for needed in [
        "taskledger_http_requests_total",
        "taskledger_http_request_duration_seconds_bucket",
        "taskledger_commands_total",
        "taskledger_append_batch_size_bucket",
        "taskledger_relay_lag_seconds",
        "taskledger_callback_deliveries_total",
        "taskledger_db_pool_connections",
    ] {
        assert!(
            dashboard_names.contains(needed),
            "the dashboard lacks {needed}"
        );
    }
    for panel in dashboard()["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            assert_eq!(
                target["datasource"]["uid"], "prometheus",
                "{}",
                panel["title"]
            );
        }
    }
}

async fn verify_writes_its_findings_for_the_textfile_collector(backend: Backend) {
    let t = TestLedger::new(backend).await;
    let task = t.create(None).await;
    t.set_metadata(&task, json!({"x": 1})).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("verify.prom");
    let path = file.to_str().unwrap();
    let ok = taskledger(&t.db.url, &["verify", "--metrics-file", path]);
    assert!(ok.status.success(), "{ok:?}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("\ntaskledger_verify_findings 0\n"), "{text}");
    assert!(
        text.contains("\ntaskledger_verify_events_checked 2\n"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE taskledger_verify_findings gauge"),
        "{text}"
    );

    tamper_with_event(&t.db, &t.store, 2, r#"{"metadata":{"x":2}}"#).await;
    let broken = taskledger(&t.db.url, &["verify", "--metrics-file", path]);
    assert_eq!(broken.status.code(), Some(1));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("\ntaskledger_verify_findings 1\n"), "{text}");
    let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(leftovers, 1, "no temporary file is left beside it");
}

on_both_backends!(verify_writes_its_findings_for_the_textfile_collector);

fn yaml(path: &str) -> serde_yaml::Value {
    let text = std::fs::read_to_string(deploy().join(path)).unwrap();
    let mut value: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    value.apply_merge().unwrap();
    value
}

fn str_of<'a>(value: &'a serde_yaml::Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value:?}"))
}

/// The environment variables `taskledger serve` reads, from its own `--help`.
fn serve_env_vars() -> BTreeSet<String> {
    let help = Command::new(env!("CARGO_BIN_EXE_taskledger"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    let mut vars: BTreeSet<String> = text
        .split("[env: ")
        .skip(1)
        .map(|rest| rest.split(['=', ']']).next().unwrap().to_string())
        .collect();
    // Read by the logger, not by a flag.
    vars.extend(["RUST_LOG".to_string(), "TASKLEDGER_LOG_FORMAT".to_string()]);
    vars
}

#[test]
fn the_example_deployment_is_well_formed_with_the_right_images_and_settings() {
    let compose = yaml("docker-compose.yml");
    let services = &compose["services"];
    let image = |name: &str| str_of(&services[name]["image"], name).to_string();
    for (service, repository) in [
        ("postgres", "postgres:"),
        ("kafka", "apache/kafka:"),
        ("prometheus", "prom/prometheus:"),
        ("grafana", "grafana/grafana:"),
        ("node-exporter", "prom/node-exporter:"),
    ] {
        let image = image(service);
        assert!(image.starts_with(repository), "{service}: {image}");
        assert!(
            !image.ends_with(":latest"),
            "{service} pins a version: {image}"
        );
    }

    // Two serve nodes on the one database and broker, with settings the binary reads.
    let known = serve_env_vars();
    let pg = &services["postgres"]["environment"];
    let database_url = format!(
        "postgres://{}:{}@postgres:5432/{}",
        str_of(&pg["POSTGRES_USER"], "user"),
        str_of(&pg["POSTGRES_PASSWORD"], "password"),
        str_of(&pg["POSTGRES_DB"], "db"),
    );
    let advertised = str_of(
        &services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"],
        "listeners",
    );
    for node in ["taskledger-1", "taskledger-2"] {
        let service = &services[node];
        assert_eq!(service["command"][0], "serve", "{node}");
        let env = service["environment"].as_mapping().unwrap();
        for (name, _) in env {
            let name = str_of(name, "a variable");
            assert!(
                known.contains(name),
                "{node} sets {name}, which taskledger does not read"
            );
        }
        assert_eq!(str_of(&env["DATABASE_URL"], "DATABASE_URL"), database_url);
        let brokers = str_of(&env["KAFKA_BROKERS"], "KAFKA_BROKERS");
        assert!(
            advertised.contains(&format!("PLAINTEXT://{brokers}")),
            "{advertised}"
        );
        assert_eq!(str_of(&env["TASKLEDGER_LISTEN"], "listen"), "0.0.0.0:8080");
        assert!(env.contains_key("KAFKA_STATE_TOPIC"));
        assert!(env.contains_key("TASKLEDGER_CE_SOURCE"));
        assert_eq!(
            service["depends_on"]["postgres"]["condition"],
            "service_healthy"
        );
    }
    assert!(deploy().join("Dockerfile").exists());

    // Prometheus scrapes both nodes and loads the rules; Grafana gets the data source and the
    // dashboard from the mounted provisioning.
    let prometheus = yaml("prometheus/prometheus.yml");
    let targets: Vec<&str> = prometheus["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|c| c["static_configs"][0]["targets"].as_sequence().unwrap())
        .map(|t| str_of(t, "target"))
        .collect();
    for target in [
        "taskledger-1:8080",
        "taskledger-2:8080",
        "node-exporter:9100",
    ] {
        assert!(targets.contains(&target), "{targets:?}");
        let host = target.split(':').next().unwrap();
        assert!(services[host].is_mapping(), "{host} is a service");
    }
    assert_eq!(prometheus["rule_files"][0], "alerts.yml");
    let mounts = |service: &str| -> Vec<(String, String)> {
        services[service]["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| {
                let mut parts = str_of(v, "volume").split(':');
                (parts.next().unwrap().into(), parts.next().unwrap().into())
            })
            .collect()
    };
    for (service, host, container) in [
        ("prometheus", "./prometheus", "/etc/prometheus"),
        (
            "grafana",
            "./grafana/provisioning",
            "/etc/grafana/provisioning",
        ),
        (
            "grafana",
            "./grafana/dashboards",
            "/var/lib/grafana/dashboards",
        ),
    ] {
        assert!(
            mounts(service).contains(&(host.to_string(), container.to_string())),
            "{service} mounts {host} at {container}"
        );
        assert!(deploy().join(host).is_dir(), "{host} exists");
    }
    let provider = yaml("grafana/provisioning/dashboards/taskledger.yml");
    assert_eq!(
        provider["providers"][0]["options"]["path"],
        "/var/lib/grafana/dashboards"
    );
    let datasource = yaml("grafana/provisioning/datasources/prometheus.yml");
    assert_eq!(datasource["datasources"][0]["uid"], "prometheus");
    assert_eq!(
        datasource["datasources"][0]["url"],
        "http://prometheus:9090"
    );

    // `verify` runs on demand and leaves its findings where the node exporter reads them.
    let verify = &services["verify"];
    let command: Vec<&str> = verify["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| str_of(c, "arg"))
        .collect();
    assert_eq!(command[..2], ["verify", "--metrics-file"]);
    assert!(command[2].starts_with("/textfile/"));
    assert!(mounts("node-exporter").contains(&("verify-textfile".into(), "/textfile".into())));
}
