//! Settings shared by every subcommand, from flags or the environment.

use clap::Args;

/// Where the ledger lives when nothing is configured: a SQLite file in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://taskledger.db";

#[derive(Debug, Clone, Args)]
pub struct DatabaseSettings {
    /// postgres://user@host/db, or sqlite://path (the embedded default).
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, global = true)]
    pub database_url: String,

    /// Connections in the database pool.
    #[arg(
        long,
        env = "TASKLEDGER_DB_CONNECTIONS",
        default_value_t = 16,
        value_parser = clap::value_parser!(u32).range(1..),
        global = true
    )]
    pub db_connections: u32,
}

#[derive(Debug, Clone, Args)]
pub struct ServeSettings {
    /// Address the HTTP API listens on (port 0 picks a free port).
    #[arg(long, env = "TASKLEDGER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,

    /// Kafka bootstrap servers for the event relay; the relay is off without them.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,

    #[command(flatten)]
    pub relay: crate::relay::RelaySettings,

    #[command(flatten)]
    pub callbacks: crate::callbacks::CallbackSettings,

    #[command(flatten)]
    pub audit: crate::audit::AuditSettings,

    /// Largest accepted request body, in bytes; larger ones answer 413.
    #[arg(long, env = "TASKLEDGER_MAX_BODY_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// How long an Idempotency-Key's answer is kept and replayed, in seconds.
    #[arg(long, env = "IDEMPOTENCY_TTL_SECS", default_value_t = 24 * 60 * 60)]
    pub idempotency_ttl_secs: u64,

    /// The most commands one append transaction may carry (group commit).
    #[arg(long, env = "TASKLEDGER_MAX_BATCH", default_value_t = 256)]
    pub max_batch: usize,

    #[command(flatten)]
    pub limits: ServerLimits,
}

/// How the server protects itself from clients that are slow, stalled or too many.
#[derive(Debug, Clone, Args)]
pub struct ServerLimits {
    /// Seconds a connection may take to send a request's headers (also how long an idle
    /// keep-alive connection is kept); a client that never finishes them is disconnected.
    #[arg(long, env = "TASKLEDGER_HEADER_READ_TIMEOUT_SECS",
        value_parser = clap::value_parser!(u64).range(1..),
        default_value_t = 30)]
    pub header_read_timeout_secs: u64,

    /// Seconds a request body may pause between two of its pieces; a stalled body answers 408.
    #[arg(long, env = "TASKLEDGER_BODY_READ_TIMEOUT_SECS",
        value_parser = clap::value_parser!(u64).range(1..),
        default_value_t = 30)]
    pub body_read_timeout_secs: u64,

    /// Seconds a request may take from its headers to its answer, body reading included;
    /// a longer one answers 503.
    #[arg(long, env = "TASKLEDGER_REQUEST_TIMEOUT_SECS",
        value_parser = clap::value_parser!(u64).range(1..),
        default_value_t = 60)]
    pub request_timeout_secs: u64,

    /// Connections served at once; further ones wait in the listen backlog until one closes.
    #[arg(long, env = "TASKLEDGER_MAX_CONNECTIONS",
        value_parser = clap::value_parser!(u32).range(1..),
        default_value_t = 1024)]
    pub max_connections: u32,

    /// Requests a second each API key may make, sustained (its token bucket's refill rate,
    /// fractions allowed: 0.5 is one every two seconds); over it the answer is 429. 0 turns
    /// rate limiting off. Per process: see the README's "Limits".
    #[arg(long, env = "TASKLEDGER_RATE_LIMIT_PER_SEC", default_value_t = 1000.0,
        value_parser = parse_rate)]
    pub rate_limit_per_sec: f64,

    /// Requests each API key may make at once (its token bucket's size).
    #[arg(long, env = "TASKLEDGER_RATE_LIMIT_BURST",
        value_parser = clap::value_parser!(u32).range(1..),
        default_value_t = 2000)]
    pub rate_limit_burst: u32,
}

impl ServerLimits {
    /// The per-key rate limit, or `None` when it is turned off.
    pub fn rate_limit(&self) -> Option<crate::http::rate_limit::RateLimit> {
        (self.rate_limit_per_sec > 0.0).then_some(crate::http::rate_limit::RateLimit {
            per_sec: self.rate_limit_per_sec,
            burst: self.rate_limit_burst,
        })
    }
}

/// A rate: a finite number of requests a second, 0 or more.
fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate >= 0.0 => Ok(rate),
        _ => Err(format!(
            "{text:?} is not a rate: give requests a second, a number 0 or more (0 is off)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_rate;

    #[test]
    fn a_rate_is_a_finite_number_zero_or_more() {
        assert_eq!(parse_rate("0"), Ok(0.0));
        assert_eq!(parse_rate("0.5"), Ok(0.5));
        assert_eq!(parse_rate(" 1000 "), Ok(1000.0));
        for bad in ["-1", "abc", "inf", "NaN", ""] {
            let refused = parse_rate(bad).unwrap_err();
            assert!(refused.contains("not a rate"), "{bad}: {refused}");
        }
    }
}
