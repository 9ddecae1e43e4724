//! A downstream consumer of the taskledger stream: decodes each record with
//! `taskledger-events` and drops the duplicates that at-least-once delivery allows
//! (the logic is `taskledger::consume`).
//!
//! ```sh
//! cargo run --example consume -- 127.0.0.1:9092 taskledger.task-events
//! ```

use taskledger::consume::{run, Seen};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let brokers = args.next().unwrap_or_else(|| "127.0.0.1:9092".into());
    let topic = args
        .next()
        .unwrap_or_else(|| "taskledger.task-events".into());
    run(&brokers, &topic, |seen| {
        if let Seen::New(line) = seen {
            println!("{line}");
        }
    })
    .await?;
    Ok(())
}
