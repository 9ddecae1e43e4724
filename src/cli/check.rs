//! `replay` and `verify`: the ledger checked against itself.

use std::process::ExitCode;

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
pub(crate) async fn verify(store: &Store, from: i64) -> anyhow::Result<ExitCode> {
    // What `--from` leaves to check, from the head row: no scan of the events before it.
    let total = u64::try_from(store.head_position().await? - from.max(1) + 1).unwrap_or(0);
    let bar = progress_bar(total, "verifying");
    let report = store.verify_from(from, |n| bar.set_position(n)).await?;
    bar.finish_and_clear();
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
