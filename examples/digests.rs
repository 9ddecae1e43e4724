//! A third party keeping the ledger honest: reads every signed digest from the digest topic
//! and checks each one of its account against the published keys and, by a consistency
//! proof, against the account's previous digest (the logic is `taskledger::audit::watch`,
//! which uses only `taskledger-events`' verifiers). A truncated or rewritten log shows up as
//! a BROKEN line.
//!
//! ```sh
//! TASKLEDGER_URL=http://127.0.0.1:8080 TASKLEDGER_KEY=tl_... \
//!   cargo run --example digests -- 127.0.0.1:9092 taskledger.digests
//! ```

use rdkafka::Message;
use taskledger::audit::watch::{DigestWatcher, Verdict};
use taskledger_events::SignedDigest;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let brokers = args.next().unwrap_or_else(|| "127.0.0.1:9092".into());
    let topic = args.next().unwrap_or_else(|| "taskledger.digests".into());
    let url = std::env::var("TASKLEDGER_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let key = std::env::var("TASKLEDGER_KEY")?;
    let mut watcher = DigestWatcher::new(&url, &key);
    let consumer = taskledger::relay::stream_consumer(&brokers, &topic, true)?;
    loop {
        let message = consumer.recv().await?;
        let Some(payload) = message.payload() else {
            continue;
        };
        let digest: SignedDigest = serde_json::from_slice(payload)?;
        let (size, signed_at) = (digest.tree_size, digest.signed_at.clone());
        match watcher.check(digest).await? {
            Verdict::First { tree_size } => println!("ok: first digest, {tree_size} events"),
            Verdict::Extends { from, to } => {
                println!("ok: {to} events signed {signed_at} extend the {from} before")
            }
            Verdict::Broken(why) => println!("BROKEN at {size} events ({signed_at}): {why}"),
            Verdict::OtherAccount => {}
        }
    }
}
