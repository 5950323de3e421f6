//! Command-line interface (clap): the global flags, the commands, and the
//! dispatch. Each command lives in its own file with its arguments and its
//! run function; `main.rs` only parses, calls [`run`], and turns the outcome
//! into an exit code.

mod apply;
mod apply_retention;
mod audit;
mod check;
mod common;
mod demo;
mod doctor;
mod explain;
mod history;
mod plan;
mod plan_file;
mod quota;
mod run;
#[cfg(feature = "sim")]
mod sim;
#[cfg(not(feature = "sim"))]
#[path = "sim_missing.rs"]
mod sim;
mod stop;
mod tokens_text;

pub use apply::ApplyArgs;
pub use audit::AuditArgs;
pub use check::rule_warnings;
pub use demo::{DemoArgs, demo_config};
pub use doctor::{CheckArgs, DoctorArgs};
pub use explain::ExplainArgs;
pub use history::{HistoryArgs, HistoryJob};
pub use plan::{PlanArgs, ReportFormat};
pub use quota::QuotaArgs;
pub use sim::SimArgs;

use crate::config::{self, Config, ConfigErrors, LogFormat, ProcessEnv};
use clap::{Parser, Subcommand, ValueEnum};
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
    /// Run the KCR simulator (for tests, demos and benchmarks)
    Sim(Box<SimArgs>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

/// Jobs that can be planned and applied on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlannableJob {
    Retention,
    Tokens,
    Namespaces,
}

/// How a command ended, and so the exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Exit 2: bad usage or config.
    #[error("{0}")]
    Config(ConfigErrors),
    /// Exit 2.
    #[error("{0}")]
    Usage(String),
    /// Exit 1: the work failed.
    #[error("{0:#}")]
    Failed(anyhow::Error),
    /// Exit 3: a safety limit blocked the whole run.
    #[error("{0}")]
    Blocked(String),
    /// Exit 130: stopped by Ctrl-C (SIGINT) between two actions.
    #[error("{0}")]
    Interrupted(String),
    /// Exit 143: stopped by SIGTERM (as by Ctrl-C, with SIGTERM's code).
    #[error("{0}")]
    Terminated(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Failed(_) => 1,
            CliError::Config(_) | CliError::Usage(_) => 2,
            CliError::Blocked(_) => 3,
            CliError::Interrupted(_) => 130,
            CliError::Terminated(_) => 143,
        }
    }
}

fn load_config(flag: Option<&Path>) -> Result<Config, CliError> {
    let path = config::resolve_path(flag, &ProcessEnv);
    config::load(&path, &ProcessEnv).map_err(CliError::Config)
}

/// Set up logging once; `KCR_HOUSEKEEPER_LOG` overrides the level.
pub fn init_logging(format: LogFormat, level: &str) {
    let mut level = std::env::var("KCR_HOUSEKEEPER_LOG").unwrap_or_else(|_| level.to_owned());
    // The scheduler crate narrates its own start-up at info; keep it quiet unless asked for.
    if !level.contains("tokio_cron_scheduler") {
        level.push_str(",tokio_cron_scheduler=warn");
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&level).unwrap_or_else(|_| "info".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

/// Run the parsed command; the outcome says the exit code.
pub async fn run(cli: Cli, out: &mut dyn Write) -> Result<(), CliError> {
    let flag = cli.config.as_deref();
    match cli.command {
        Command::Run => run::run(flag).await,
        Command::Demo(args) => demo::run(args, out).await,
        Command::Audit(args) => audit::run(&load_config(flag)?, &args, out),
        Command::Check(args) => {
            let c = load_config(flag)?;
            check::run(&c, out)?;
            if args.online {
                doctor::run(&c, OutputFormat::Table, out).await?;
            }
            Ok(())
        }
        Command::Doctor(args) => doctor::run(&load_config(flag)?, args.format, out).await,
        Command::Plan(args) => plan::run(&load_config(flag)?, &args, out).await,
        Command::Apply(args) => apply::run(&load_config(flag)?, &args, out).await,
        Command::Explain(args) => explain::run(&load_config(flag)?, &args, out).await,
        Command::History(args) => history::run(&load_config(flag)?, &args, out),
        Command::Quota(args) => quota::run(&load_config(flag)?, &args, out).await,
        Command::Sim(args) => sim::run(*args, out).await,
    }
}

pub(crate) fn io(e: std::io::Error) -> CliError {
    CliError::Failed(anyhow::Error::new(e).context("writing output"))
}

pub(crate) fn failed(e: impl Into<anyhow::Error>, what: &str) -> CliError {
    CliError::Failed(e.into().context(what.to_owned()))
}
