//! Structured logs through `tracing`, on stderr so a command's stdout stays its output.

use tracing_subscriber::{fmt, EnvFilter};

/// `RUST_LOG` picks levels (default `info`); `TASKLEDGER_LOG_FORMAT=json` gives JSON lines.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("TASKLEDGER_LOG_FORMAT").is_ok_and(|f| f == "json");
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests spawning several apps) is harmless; ignore it.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
