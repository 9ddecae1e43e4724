//! The soak, run small: correctness only. Its timing (p99 with and without the hostile
//! requests) is a measurement for `taskledger soak`, never asserted here.

use clap::Parser;
use taskledger::cli::{Cli, Command};
use taskledger::soak::Hostile;

use crate::helpers::{on_both_backends, Backend, TestDb};

async fn hostile_requests_mixed_into_a_load_are_all_refused_and_the_ledger_stays_intact(
    backend: Backend,
) {
    let db = TestDb::new(backend).await;
    let cli = Cli::parse_from([
        "taskledger",
        "--database-url",
        &db.url,
        "soak",
        "--requests",
        "80",
        "--concurrency",
        "4",
        // One hostile request per 10 good ones: 8 in the mixed run, one of each kind.
        "--hostile-percent",
        "10",
        "--header-read-timeout-secs",
        "1",
    ]);
    let Command::Soak(settings) = cli.command else {
        panic!("parsed as soak");
    };
    let report = taskledger::soak::run(&cli.db, &settings)
        .await
        .expect("the soak runs");
    assert_eq!(report.problems(), Vec::<String>::new(), "{report:#?}");
    for kind in Hostile::ALL {
        assert!(
            report.hostile.iter().any(|(k, _)| *k == kind),
            "{kind:?} was sent: {report:#?}"
        );
    }
    assert_eq!(report.clean.requests + report.mixed.requests, 160);
    assert!(report.verify_clean && report.replay_clean);
}

on_both_backends!(hostile_requests_mixed_into_a_load_are_all_refused_and_the_ledger_stays_intact,);
