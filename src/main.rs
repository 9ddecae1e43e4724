use std::process::ExitCode;

use clap::Parser;
use taskledger::cli::{self, Cli};

#[tokio::main]
async fn main() -> ExitCode {
    taskledger::telemetry::init();
    match cli::run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
