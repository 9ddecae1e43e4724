//! `digest`, `verify --digest` and `signing-key`: the ledger checked against what it signed.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use taskledger_events::merkle::{parse_hash, verify_consistency};
use taskledger_events::SignedDigest;

use crate::audit::signing::SigningKeys;
use crate::audit::tree::Plan;
use crate::store::{ChangedLeaves, Store};

#[derive(Debug, Subcommand)]
pub enum SigningKeyCommand {
    /// Print the public keys (current and retired) as JSON; the file's path on stderr.
    Show,
    /// Retire the current key (it stays published) and make a new one current.
    Rotate,
}

pub(super) fn signing_key(path: &Path, command: SigningKeyCommand) -> anyhow::Result<ExitCode> {
    let keys = match command {
        SigningKeyCommand::Show => SigningKeys::load(path)?,
        SigningKeyCommand::Rotate => {
            let keys = SigningKeys::rotate(path)?;
            eprintln!(
                "rotated: {} now signs; the retired keys stay published",
                keys.current_key_id()
            );
            keys
        }
    };
    eprintln!("signing key file: {}", path.display());
    println!("{}", serde_json::json!({ "keys": keys.public_keys() }));
    Ok(ExitCode::SUCCESS)
}

/// Prints the account's current signed digest as one line of JSON.
pub(super) async fn digest(
    store: &Store,
    key_file: &Path,
    account: &str,
) -> anyhow::Result<ExitCode> {
    let Some(account_id) = store.find_account(account).await? else {
        eprintln!("no account {account}");
        return Ok(ExitCode::FAILURE);
    };
    let keys = SigningKeys::load(key_file)?;
    // A ledger upgraded from before the trees, not yet served: its trees first.
    store.ensure_trees().await?;
    let digest = crate::audit::sign_digest(store, &keys, &account_id).await?;
    println!("{}", serde_json::to_string(&digest)?);
    Ok(ExitCode::SUCCESS)
}

/// Holds the ledger to a digest it signed: the signature, the events of the digest's tree
/// (recomputed from the events themselves, not from the stored tree), and the consistency of
/// today's tree with it. Exit 1 naming the first thing that broke.
pub(super) async fn verify_digest(
    store: &Store,
    key_file: &Path,
    digest_file: &Path,
) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(digest_file)
        .with_context(|| format!("reading {}", digest_file.display()))?;
    let digest: SignedDigest = serde_json::from_str(text.trim())
        .with_context(|| format!("{} is not a signed digest", digest_file.display()))?;
    let broken = |what: String| {
        println!("BROKEN: {what}");
        Ok(ExitCode::FAILURE)
    };
    let keys = SigningKeys::load(key_file)?;
    let Some(public) = keys.public_key(&digest.key_id) else {
        return broken(format!(
            "the digest is signed by key {}, which this ledger never published",
            digest.key_id
        ));
    };
    if let Err(e) = digest.verify(&public) {
        return broken(format!("the digest's signature: {e}"));
    }
    let root = parse_hash(&digest.root_hash).context("the digest's root_hash")?;
    let account = &digest.account_id;
    let size = digest.tree_size;
    let events = store.recompute_tree(account, size).await?;
    if events.events < size {
        return broken(format!(
            "TRUNCATED: account {account} has {} events in the ledger, but the digest signed \
             at {} covers {size}: events were removed",
            events.events, digest.signed_at
        ));
    }
    if events.root_at != Some(root) {
        let changed = events
            .first_changed_leaves
            .as_ref()
            .filter(|changed| changed.first_leaf < size);
        let named = match (changed, &events.unstored_at, &events.first_bad_hash) {
            (Some(changed), _, _) => format!("; {}", among(changed)),
            // Every stored block of the digest's leaves still matches its events.
            (None, Some(unstored), _) => format!(
                "; no stored block of those events differs from them, so {}",
                among(unstored)
            ),
            (_, _, Some(event_id)) => {
                format!("; event {event_id}'s hash does not match its content")
            }
            _ => String::new(),
        };
        return broken(format!(
            "REWRITTEN: the first {size} events of account {account} no longer hash to the root \
             the digest signed at {}{named}",
            digest.signed_at
        ));
    }
    let head = store.tree_head(account).await?;
    if head.root != events.root || head.tree_size != events.events {
        return broken(format!(
            "the stored tree of account {account} ({} leaves) does not match its {} events; \
             `taskledger replay` rebuilds it",
            head.tree_size, events.events
        ));
    }
    let proof = store
        .tree_answer(account, &Plan::consistency(size, head.tree_size)?)
        .await?;
    if let Err(e) = verify_consistency(size, head.tree_size, &proof, &root, &head.root) {
        return broken(format!(
            "the current tree ({} leaves) is not consistent with the digest: {e}",
            head.tree_size
        ));
    }
    println!(
        "ok: the digest of account {account} ({size} events, signed {} by {}) holds; the \
         ledger's {} events extend it",
        digest.signed_at, digest.key_id, head.tree_size
    );
    Ok(ExitCode::SUCCESS)
}

/// Names changed leaves: the event itself, or the events it is one of.
fn among(changed: &ChangedLeaves) -> String {
    match &changed.event_ids[..] {
        [event_id] => format!(
            "event {event_id} (leaf {}) no longer matches the leaf it was appended as",
            changed.first_leaf
        ),
        ids => format!(
            "one of the {} events at leaves {} to {} no longer matches the leaf it was \
             appended as: {}",
            ids.len(),
            changed.first_leaf,
            changed.first_leaf + ids.len() as u64 - 1,
            ids.join(", ")
        ),
    }
}
