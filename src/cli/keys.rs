//! `keys`: API keys and callback secrets.

use std::process::ExitCode;

use clap::Subcommand;
use taskledger_events::Scope;

use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key (and its account if new); the key is printed alone on the last line.
    Create {
        #[arg(long)]
        account: String,
        #[arg(long, default_value = "customer", value_parser = ["customer", "contributor"])]
        scope: String,
        /// Who holds the key, e.g. "Dana Reyes (QA lead)"; recorded in the ledger.
        #[arg(long, value_parser = key_holder_name)]
        name: Option<String>,
        /// A test-mode key: what it creates is test data, kept apart from the live data.
        #[arg(long)]
        test: bool,
    },
    /// List keys (never the keys themselves).
    List,
    /// Revoke a key by its id.
    Revoke { key_id: String },
    /// Show the account's callback secret (alone on the last line), or rotate it first.
    CallbackSecret {
        #[arg(long)]
        account: String,
        #[arg(long)]
        rotate: bool,
    },
}

pub(super) async fn run(store: &Store, command: KeysCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::Create {
            account,
            scope,
            name,
            test,
        } => create(store, &account, &scope, name.as_deref(), test).await,
        KeysCommand::List => list(store).await,
        KeysCommand::CallbackSecret { account, rotate } => {
            callback_secret(store, &account, rotate).await
        }
        KeysCommand::Revoke { key_id } => revoke(store, &key_id).await,
    }
}

/// A key holder's name: 1 to 200 characters, no control characters.
fn key_holder_name(value: &str) -> Result<String, String> {
    let count = value.chars().count();
    if count == 0 || count > 200 || value.chars().any(char::is_control) {
        return Err("must be 1 to 200 characters without control characters".into());
    }
    Ok(value.to_string())
}

async fn create(
    store: &Store,
    account: &str,
    scope: &str,
    name: Option<&str>,
    test: bool,
) -> anyhow::Result<ExitCode> {
    let scope = Scope::parse(scope)?;
    let (key, secret) = store.create_key_in_mode(account, scope, name, test).await?;
    eprintln!(
        "created {}{} key {} for account {}; it is shown only once:",
        if key.is_test { "test-mode " } else { "" },
        key.scope.as_str(),
        key.key_id,
        key.account_name
    );
    println!("{secret}");
    Ok(ExitCode::SUCCESS)
}

async fn list(store: &Store) -> anyhow::Result<ExitCode> {
    for key in store.all_keys().await? {
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}",
            key.key_id,
            key.account_name,
            key.scope,
            if key.is_test != 0 { "test" } else { "live" },
            if key.revoked_at_us.is_some() {
                "revoked"
            } else {
                "active"
            },
            key.name.as_deref().unwrap_or("-")
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn callback_secret(store: &Store, account: &str, rotate: bool) -> anyhow::Result<ExitCode> {
    let Some(secret) = store.callback_secret(account, rotate).await? else {
        eprintln!("no account {account}");
        return Ok(ExitCode::FAILURE);
    };
    if rotate {
        eprintln!("rotated the callback secret of {account}; the new one:");
    }
    println!("{secret}");
    Ok(ExitCode::SUCCESS)
}

async fn revoke(store: &Store, key_id: &str) -> anyhow::Result<ExitCode> {
    if !store.revoke_key(key_id).await? {
        eprintln!("no active key {key_id}");
        return Ok(ExitCode::FAILURE);
    }
    println!("revoked {key_id}");
    Ok(ExitCode::SUCCESS)
}
