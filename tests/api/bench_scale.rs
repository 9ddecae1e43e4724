//! `taskledger bench --scale`, run small: every figure is printed beside its anchor and the
//! ledger it filled is intact afterwards. Correctness only: no figure is judged here.

use crate::helpers::process::taskledger;
use crate::helpers::{on_both_backends, Backend, TestDb};

async fn bench_scale_prints_every_figure_beside_its_anchor_and_leaves_the_ledger_intact(
    backend: Backend,
) {
    let db = TestDb::new(backend).await;
    let out = taskledger(
        &db.url,
        &[
            "bench",
            "--scale",
            "--tasks",
            "260",
            "--small-tasks",
            "120",
            "--clients",
            "4",
            "--ops",
            "60",
            "--long-task-events",
            "150",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut figures = vec![
        "| list, no filter, first page of 100 (total 120 / 260) |",
        "| list, no filter, next page |",
        "| list, status, first page of 12 (total 12 / 26) |",
        "| list, type, first page of 100 (total 120 / 260) |",
        "| list, project, first page of 12 (total 12 / 26) |",
        "| list, batch, first page of 2 (total 2 / 3) |",
        "| list, customer_review_status, first page of 6 (total 6 / 13) |",
        "| list, time range, first page of 100 (total 120 / 260) |",
        "| list, tags, first page of 24 (total 24 / 52) |",
        "| ceiling: creations in-process, 64 clients vs one-row transactions |",
        "| single-client create, in-process vs one-row transactions |",
        "| HTTP create, 4 clients vs one-row transactions",
        "| HTTP GET one task, 4 clients vs primary-key select (Any pool) |",
        "| command p50 on a 150-event task vs a fresh task",
        "0 errors) |",
        "(0 differences) |",
        "events (intact) |",
        "| this process (server, ledger and load generators): peak RSS / RSS at the end |",
    ];
    if backend == Backend::Postgres {
        figures.push("| primary-key select, 4 clients: native PgPool vs Any pool |");
    }
    for figure in figures {
        assert!(
            stdout.contains(figure),
            "{figure:?} missing from:\n{stdout}"
        );
    }
}

on_both_backends!(bench_scale_prints_every_figure_beside_its_anchor_and_leaves_the_ledger_intact);
