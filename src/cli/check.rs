//! `replay` and `verify`: the ledger checked against itself.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use super::progress_bar;
use crate::store::Store;

/// Rebuilds every projection from the events, or with `check` only compares.
pub(crate) async fn replay(store: &Store, check: bool) -> anyhow::Result<ExitCode> {
    // The head is one row; counting the events would scan the whole ledger first.
    let total = u64::try_from(store.head_position().await?).unwrap_or(0);
    let bar = progress_bar(total, if check { "checking" } else { "replaying" });
    let report = store.replay(check, |n| bar.set_position(n)).await?;
    bar.finish_and_clear();
    if !check {
        let bar = progress_bar(total, "rebuilding the Merkle trees");
        let leaves = store.rebuild_trees(|n| bar.inc(n)).await?;
        bar.finish_and_clear();
        println!("rebuilt the accounts' Merkle trees over {leaves} events");
    }
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

/// Recomputes every hash chain.
pub(crate) async fn verify(
    store: &Store,
    from: i64,
    metrics_file: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    // What `--from` leaves to check, from the head row: no scan of the events before it.
    let total = u64::try_from(store.head_position().await? - from.max(1) + 1).unwrap_or(0);
    let bar = progress_bar(total, "verifying");
    let report = store.verify_from(from, |n| bar.set_position(n)).await?;
    bar.finish_and_clear();
    if let Some(path) = metrics_file {
        write_verify_metrics(path, &report)?;
    }
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

/// Writes the report for Prometheus's node-exporter textfile collector: a temporary file
/// renamed into place, so a scrape never reads half of it.
fn write_verify_metrics(path: &Path, report: &crate::store::VerifyReport) -> anyhow::Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs();
    let text = format!(
        "# HELP taskledger_verify_findings Findings of the last taskledger verify (0: every \
         hash chain and position intact).\n\
         # TYPE taskledger_verify_findings gauge\n\
         taskledger_verify_findings {}\n\
         # HELP taskledger_verify_events_checked Events the last taskledger verify checked.\n\
         # TYPE taskledger_verify_events_checked gauge\n\
         taskledger_verify_events_checked {}\n\
         # HELP taskledger_verify_last_run_timestamp_seconds When the last taskledger verify \
         finished.\n\
         # TYPE taskledger_verify_last_run_timestamp_seconds gauge\n\
         taskledger_verify_last_run_timestamp_seconds {now}\n",
        report.broken, report.events
    );
    let file_name = path
        .file_name()
        .with_context(|| format!("--metrics-file {} names no file", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.tmp", file_name.to_string_lossy()));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}
