use std::process::ExitCode;

use clap::Parser;
use taskledger::cli::{self, Cli};

// Every request allocates and frees many small strings and JSON values on several threads:
// glibc's malloc spent about a fifth of the command path's CPU on them (perf, under the
// bench's 64 writers), mostly in consolidating and unlinking free chunks.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
