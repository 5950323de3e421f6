//! `credential-helper get|store|erase|list`: the Docker credential-helper
//! protocol over the rotated token's `file` sinks in `json` format (see
//! [`crate::tokens::helper`]). With `--file`, those files; without, every
//! such sink of the config's `[tokens]`.

use super::{CliError, io};
use crate::config::{FileFormat, Sink};
use crate::tokens::helper::{self, HelperError, SinkDocument};
use clap::{Args, ValueEnum};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HelperAction {
    Get,
    Store,
    Erase,
    List,
}

#[derive(Debug, Args)]
pub struct CredentialHelperArgs {
    pub action: HelperAction,
    /// A `file` sink in `json` format to answer from (repeatable); default:
    /// every such sink of the config
    #[arg(long, value_name = "FILE")]
    pub file: Vec<PathBuf>,
}

fn read_doc(path: &Path) -> Result<Option<SinkDocument>, CliError> {
    match std::fs::read_to_string(path) {
        // Not delivered yet: nothing to answer from it.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CliError::Failed(anyhow::anyhow!("{}: {e}", path.display()))),
        // The error names the position only: the document holds the secret.
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
            CliError::Failed(anyhow::anyhow!(
                "{}: not a json token sink (line {} column {})",
                path.display(),
                e.line(),
                e.column()
            ))
        }),
    }
}

/// The `json` file sink documents to answer from: `files`, or without them
/// every such sink of the config's `[tokens]`. A sink not written yet is
/// skipped; `command` names the command in the error when there is none.
pub(super) fn sink_documents(
    flag: Option<&Path>,
    files: &[PathBuf],
    command: &str,
) -> Result<Vec<SinkDocument>, CliError> {
    let paths: Vec<PathBuf> = if files.is_empty() {
        let c = super::load_config(flag)?;
        c.tokens
            .iter()
            .flat_map(|t| &t.managed)
            .flat_map(|m| &m.sinks)
            .filter_map(|s| match s {
                Sink::File {
                    path,
                    format: FileFormat::Json,
                } => Some(path.clone()),
                _ => None,
            })
            .collect()
    } else {
        files.to_vec()
    };
    if paths.is_empty() {
        return Err(CliError::Usage(format!(
            "{command}: no `file` sink with format = \"json\" in [tokens]; give --file"
        )));
    }
    let mut docs = Vec::new();
    for p in &paths {
        docs.extend(read_doc(p)?);
    }
    Ok(docs)
}

/// Read all of standard input.
pub(super) fn stdin_text() -> Result<String, CliError> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| CliError::Failed(anyhow::anyhow!("reading standard input: {e}")))?;
    Ok(input)
}

pub(super) fn run(
    flag: Option<&Path>,
    args: &CredentialHelperArgs,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let docs = sink_documents(flag, &args.file, "credential-helper")?;
    let input = match args.action {
        HelperAction::Get | HelperAction::Store | HelperAction::Erase => stdin_text()?,
        HelperAction::List => String::new(),
    };
    let action = match args.action {
        HelperAction::Get => "get",
        HelperAction::Store => "store",
        HelperAction::Erase => "erase",
        HelperAction::List => "list",
    };
    match helper::answer(action, &input, &docs, chrono::Utc::now()) {
        Ok(text) => out.write_all(text.as_bytes()).map_err(io),
        Err(HelperError::NotFound) => {
            writeln!(out, "{}", helper::NOT_FOUND).map_err(io)?;
            Err(CliError::Failed(anyhow::anyhow!(helper::NOT_FOUND)))
        }
        Err(e) => Err(CliError::Failed(anyhow::anyhow!(e.to_string()))),
    }
}
