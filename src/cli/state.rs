//! `state copy`: move an installation's state from its SQLite file to a
//! PostgreSQL database (then set `[state] url`). The target must be empty;
//! every table is copied in one transaction and the row counts compared.

use super::{CliError, failed, io};
use crate::state::{CopyError, Store};
use clap::{Args, Subcommand};
use secrecy::SecretString;
use std::io::Write;
use std::path::PathBuf;

/// The variable `--to` is read from when not given (as in `[state] url`).
pub const DATABASE_URL_ENV: &str = "KCR_HOUSEKEEPER_DATABASE_URL";

#[derive(Debug, Args)]
pub struct StateArgs {
    #[command(subcommand)]
    pub command: StateCommand,
}

#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Copy every table of a SQLite state file into an empty PostgreSQL database
    /// (stop the daemon first; exit 2 if the target is not empty)
    Copy(CopyArgs),
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// The SQLite state file (`[state] path`)
    #[arg(long, value_name = "FILE")]
    pub from: PathBuf,
    /// The PostgreSQL URL (postgresql://USER:PASSWORD@HOST:PORT/DATABASE?sslmode=require);
    /// prefer the environment variable: a command line is visible to other users
    #[arg(
        long,
        value_name = "URL",
        env = DATABASE_URL_ENV,
        hide_env_values = true
    )]
    pub to: Option<String>,
}

pub(super) fn run(args: &StateArgs, out: &mut dyn Write) -> Result<(), CliError> {
    match &args.command {
        StateCommand::Copy(a) => copy(a, out),
    }
}

fn copy(args: &CopyArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let Some(url) = args.to.as_deref().filter(|u| !u.trim().is_empty()) else {
        return Err(CliError::Usage(format!(
            "state copy: give the target with --to URL or {DATABASE_URL_ENV}"
        )));
    };
    let url = url.trim();
    if !(url.starts_with("postgresql://") || url.starts_with("postgres://")) {
        // Never repeated: it may hold a password.
        return Err(CliError::Usage(
            "state copy: --to must be a postgresql:// URL".into(),
        ));
    }
    if !args.from.is_file() {
        return Err(CliError::Usage(format!(
            "state copy: {}: no such state file",
            args.from.display()
        )));
    }
    let source = Store::open(&args.from).map_err(|e| CliError::Usage(e.to_string()))?;
    let target = match Store::connect(&SecretString::from(url.to_owned())) {
        Ok(t) => t,
        Err(e @ crate::state::StateError::Url) => return Err(CliError::Usage(e.to_string())),
        Err(e) => return Err(failed(e, "connecting to the target database")),
    };
    let counts = match source.copy_to(&target) {
        Ok(c) => c,
        Err(e @ CopyError::NotEmpty { .. }) => return Err(CliError::Usage(e.to_string())),
        Err(e) => return Err(failed(e, "copying the state")),
    };
    let total: i64 = counts.iter().map(|(_, n)| n).sum();
    let mut text = String::new();
    for (table, n) in &counts {
        text.push_str(&format!("{table:<18} {n:>8}\n"));
    }
    text.push_str(&format!(
        "copied {total} rows from {} to {} (row counts verified)\n\
         next: set [state] url = {{ env = \"{DATABASE_URL_ENV}\" }} and start the daemon\n",
        args.from.display(),
        target.location()
    ));
    out.write_all(text.as_bytes()).map_err(io)
}
