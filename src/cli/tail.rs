//! `tail`: the event topic as JSON lines.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use rdkafka::Message;

pub(super) async fn run(
    brokers: &str,
    topic: &str,
    from_beginning: bool,
    task: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let consumer = crate::relay::stream_consumer(brokers, topic, from_beginning)
        .with_context(|| format!("reading topic {topic} from {brokers}"))?;
    let mut out = std::io::stdout().lock();
    loop {
        let message = consumer.recv().await.context("consuming")?;
        if task.is_some_and(|t| message.key() != Some(t.as_bytes())) {
            continue;
        }
        if let Some(payload) = message.payload() {
            out.write_all(payload)?;
            out.write_all(b"\n")?;
            out.flush()?;
        }
    }
}
