//! Command-line interface (clap): the global flags, the commands, and the
//! dispatch. Each command lives in its own file with its arguments and its
//! run function; `main.rs` only parses, calls [`run`], and turns the outcome
//! into an exit code.

mod apply;
mod apply_retention;
mod audit;
mod check;
mod common;
mod credential_helper;
mod credential_provider;
mod demo;
mod doctor;
mod error;
mod explain;
mod history;
mod man;
mod plan;
mod plan_file;
mod quota;
mod run;
mod session;
#[cfg(feature = "sim")]
mod sim;
#[cfg(not(feature = "sim"))]
#[path = "sim_missing.rs"]
mod sim;
mod state;
mod stop;
mod term;
mod tokens_text;

pub use apply::{ApplyArgs, ApplyJob, ApplyRetentionArgs, ApplyYesArgs};
pub use audit::AuditArgs;
pub use check::rule_warnings;
pub use credential_helper::CredentialHelperArgs;
pub use credential_provider::CredentialProviderArgs;
pub use demo::{DemoArgs, demo_config};
pub use doctor::{CheckArgs, DoctorArgs};
pub use error::{CliError, print_error};
pub use explain::ExplainArgs;
pub use history::{HistoryArgs, HistoryJob};
pub use man::{CompletionsArgs, ManArgs};
pub use plan::{PlanArgs, PlanJob, PlanRetentionArgs, PlanTableArgs, ReportFormat};
pub use quota::QuotaArgs;
pub use sim::SimArgs;
pub use state::{CopyArgs, StateArgs, StateCommand};
pub use term::{ColorChoice, init_logging};

use crate::config::{self, Config, LogFormat, ProcessEnv};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Parser)]
#[command(
    name = "kcr-housekeeper",
    version,
    about = "Keeps a Kingsoft Cloud Container Registry tidy and safe"
)]
pub struct Cli {
    /// Config file [default: $KCR_HOUSEKEEPER_CONFIG, else /etc/kcr-housekeeper/config.toml]
    #[arg(long, short, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Colour in output and logs [NO_COLOR=1 turns auto off]
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "auto",
        value_name = "WHEN"
    )]
    pub color: ColorChoice,
    /// Print errors only: no warnings, logs or progress bars
    #[arg(long, short, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// More logs: -v info, -vv debug, -vvv trace (beats KCR_HOUSEKEEPER_LOG)
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: scheduled jobs, metrics and the admin HTTP server
    Run,
    /// Run the daemon on the built-in simulator with the demo config (no account needed)
    Demo(DemoArgs),
    /// Validate the config; print the jobs and their next three fire times
    Check(CheckArgs),
    /// Check credentials, instance, permissions, registry access, state and quota (✔/✘ with fixes)
    Doctor(DoctorArgs),
    /// Show what a job would do, without changing anything
    Plan(PlanArgs),
    /// Apply a job once, now (asks for confirmation on a terminal unless --yes)
    Apply(ApplyArgs),
    /// Why each image and tag of NAMESPACE/REPOSITORY is kept or deleted
    Explain(ExplainArgs),
    /// List audit records (every mutation the jobs applied)
    Audit(AuditArgs),
    /// List job runs: the daemon's and one-shot applies', newest first
    History(HistoryArgs),
    /// Show quota usage per instance: namespaces and repositories used / limit
    Quota(QuotaArgs),
    /// The state database: copy a SQLite state into PostgreSQL
    State(StateArgs),
    /// Run the KCR simulator (for tests, demos and benchmarks)
    Sim(Box<SimArgs>),
    /// Print a shell completion script (e.g. completions bash > /etc/bash_completion.d/kcr-housekeeper)
    Completions(CompletionsArgs),
    /// Print the man page (roff), e.g. man > kcr-housekeeper.1; --dir writes one page per command
    Man(ManArgs),
    /// Docker credential helper (get|store|erase|list) answering from the rotated token's json file sinks
    CredentialHelper(CredentialHelperArgs),
    /// Kubelet image credential provider (credentialprovider.kubelet.k8s.io/v1) answering from the same json file sinks
    CredentialProvider(CredentialProviderArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

fn load_config(flag: Option<&Path>) -> Result<Config, CliError> {
    let path = config::resolve_path(flag, &ProcessEnv);
    config::load(&path, &ProcessEnv).map_err(CliError::Config)
}

/// The config for a command that reads only the local state: its secrets
/// are not read (see [`config::load_local`]).
fn load_local_config(flag: Option<&Path>) -> Result<Config, CliError> {
    let path = config::resolve_path(flag, &ProcessEnv);
    config::load_local(&path, &ProcessEnv).map_err(CliError::Config)
}

/// Parse the command line; `version` is what `--version` prints (the
/// binary's build facts).
pub fn parse(version: &'static str) -> Cli {
    use clap::FromArgMatches;
    let matches = Cli::command().version(version).get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// Run the parsed command; the outcome says the exit code.
pub async fn run(cli: Cli, out: &mut dyn Write) -> Result<(), CliError> {
    term::set(term::Term {
        color: cli.color,
        verbosity: if cli.quiet { -1 } else { cli.verbose as i8 },
    });
    // `run` and `demo` switch to their config's [log] settings; this covers the rest.
    if !matches!(cli.command, Command::Run | Command::Demo(_)) {
        init_logging(LogFormat::Text, "warn");
    }
    let flag = cli.config.as_deref();
    if let Some(path) = flag {
        let ignored = match &cli.command {
            Command::Demo(_) => Some("demo runs its built-in config on the built-in simulator"),
            Command::Sim(_) => Some("sim takes its world from --scenario or --generate"),
            Command::Completions(_) | Command::Man(_) => {
                Some("it prints the same for every config")
            }
            Command::State(_) => {
                Some("state copy takes its source and target from --from and --to")
            }
            _ => None,
        };
        if let Some(why) = ignored {
            return Err(CliError::Usage(format!(
                "--config {}: not used here: {why}; to run your config use `kcr-housekeeper run --config FILE`",
                path.display()
            )));
        }
    }
    let with = |c: &Config, r: Result<(), CliError>| r.map_err(|e| e.with_endpoint(c));
    match cli.command {
        Command::Run => run::run(flag).await,
        Command::Demo(args) => demo::run(args, out).await,
        Command::Audit(args) => audit::run(&load_local_config(flag)?, &args, out),
        Command::Check(args) => {
            let c = load_config(flag)?;
            if args.format == OutputFormat::Json {
                // stdout carries the doctor's JSON alone.
                check::run(&c, &mut std::io::stderr())?;
            } else {
                check::run(&c, out)?;
            }
            if args.online {
                with(&c, doctor::run(&c, args.format, out).await)?;
            }
            Ok(())
        }
        Command::Doctor(args) => {
            let c = load_config(flag)?;
            with(&c, doctor::run(&c, args.format, out).await)
        }
        Command::Plan(args) => {
            let c = load_config(flag)?;
            with(&c, plan::run(&c, &args, out).await)
        }
        Command::Apply(args) => {
            let c = load_config(flag)?;
            with(&c, apply::run(&c, &args, out).await)
        }
        Command::Explain(args) => {
            let c = load_config(flag)?;
            with(&c, explain::run(&c, &args, out).await)
        }
        Command::History(args) => history::run(&load_local_config(flag)?, &args, out),
        Command::Quota(args) => {
            let c = load_config(flag)?;
            with(&c, quota::run(&c, &args, out).await)
        }
        Command::Sim(args) => sim::run(*args, out).await,
        Command::State(args) => state::run(&args, out),
        Command::Completions(args) => man::completions(args, &mut Cli::command(), out),
        Command::Man(args) => man::run(args, Cli::command(), out),
        Command::CredentialHelper(args) => credential_helper::run(flag, &args, out),
        Command::CredentialProvider(args) => credential_provider::run(flag, &args, out),
    }
}

/// A failed write to the output; a closed pipe ends the command quietly.
pub(crate) fn io(e: std::io::Error) -> CliError {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        return CliError::BrokenPipe;
    }
    CliError::Failed(anyhow::Error::new(e).context("writing output"))
}

/// Opening the state failed: a database that cannot be reached (refused,
/// timed out, authentication failed) is a runtime dependency failing, exit 1,
/// with its cause (review finding 6; the URL's password never appears);
/// anything else (a bad URL, an unusable SQLite path) is the config's, exit 2.
pub(crate) fn state_failed(e: crate::state::StateError) -> CliError {
    use crate::state::StateError;
    match e {
        StateError::Postgres { .. }
        | StateError::Timeout { .. }
        | StateError::WorkerGone { .. } => CliError::Failed(anyhow::Error::new(e)),
        e => CliError::Usage(e.to_string()),
    }
}

pub(crate) fn failed(e: impl Into<anyhow::Error>, what: &str) -> CliError {
    CliError::Failed(e.into().context(what.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command's help, recursively.
    fn helps(cmd: &mut clap::Command, path: &str, out: &mut Vec<(String, String)>) {
        out.push((path.to_owned(), cmd.render_long_help().to_string()));
        for sub in cmd.get_subcommands_mut() {
            let p = format!("{path} {}", sub.get_name());
            helps(sub, &p, out);
        }
    }

    #[test]
    fn help_never_points_at_a_document_users_do_not_have() {
        let mut all = Vec::new();
        helps(&mut Cli::command(), "kcr-housekeeper", &mut all);
        assert!(all.len() > 15, "{}", all.len());
        for (path, help) in all {
            assert!(!help.contains("DESIGN"), "{path}: {help}");
            assert!(!help.contains('§'), "{path}: {help}");
        }
    }

    #[test]
    fn the_command_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
