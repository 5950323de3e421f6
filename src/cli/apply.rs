//! `apply`: apply a job once, now.

use super::common::{namespaces_config, tokens_config};
use super::session::Session;
use super::tokens_text::token_plans_text;
use super::{CliError, io};
use crate::config::Config;
use crate::namespaces::NamespacesJob;
use crate::tokens::TokensJob;
use clap::{Args, Subcommand};
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(subcommand)]
    pub job: ApplyJob,
}

#[derive(Debug, Subcommand)]
pub enum ApplyJob {
    /// Delete what the retention rules condemn (a fresh plan, or a reviewed one)
    Retention(ApplyRetentionArgs),
    /// Rotate, disable and delete managed tokens as planned (planned and applied in one step)
    Tokens(ApplyYesArgs),
    /// Change namespace visibility to the policy (re-reads every namespace before changing it)
    Namespaces(ApplyYesArgs),
}

#[derive(Debug, Args)]
pub struct ApplyRetentionArgs {
    /// Do not ask for confirmation
    #[arg(long)]
    pub yes: bool,
    /// Execute exactly this reviewed JSON plan (after re-verifying each action)
    #[arg(long, value_name = "FILE")]
    pub plan: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ApplyYesArgs {
    /// Do not ask for confirmation
    #[arg(long)]
    pub yes: bool,
}

pub(super) async fn run(c: &Config, args: &ApplyArgs, out: &mut dyn Write) -> Result<(), CliError> {
    match &args.job {
        ApplyJob::Retention(a) => super::apply_retention::apply_retention_cmd(c, a, out).await,
        ApplyJob::Tokens(a) => apply_tokens_cmd(c, a, out).await,
        ApplyJob::Namespaces(a) => apply_namespaces_cmd(c, a, out).await,
    }
}

pub(super) async fn apply_namespaces_cmd(
    c: &Config,
    args: &ApplyYesArgs,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    namespaces_config(c)?;
    let session = Session::open(c, open_state(c)?).await?;
    let plan = session.plan(&NamespacesJob, "listing namespaces").await?;
    out.write_all(crate::namespaces::render_table(&plan.plan).as_bytes())
        .map_err(io)?;
    if let Some(b) = &plan.plan.blocked {
        return Err(CliError::Blocked(b.clone()));
    }
    let n = plan.plan.changes().count();
    if n == 0 {
        writeln!(out, "nothing to do").map_err(io)?;
        return Ok(());
    }
    let prompt = format!("change {n} namespaces?");
    session
        .apply(NamespacesJob, plan, args.yes, &prompt, out)
        .await
        .map(drop)
}

pub(super) async fn apply_tokens_cmd(
    c: &Config,
    args: &ApplyYesArgs,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    tokens_config(c)?;
    let session = Session::open(c, open_state(c)?).await?;
    let plan = session.plan(&TokensJob, "planning tokens").await?;
    out.write_all(token_plans_text(&plan.plans).as_bytes())
        .map_err(io)?;
    if plan.is_empty() {
        writeln!(out, "nothing to do").map_err(io)?;
        if plan.backing_off() {
            return Err(CliError::Failed(anyhow::anyhow!(
                "a rotation is due but backs off after failed attempts (see above)"
            )));
        }
        return Ok(());
    }
    let prompt = "apply these token steps?";
    session
        .apply(TokensJob, plan, args.yes, prompt, out)
        .await
        .map(drop)
}

/// The state database, which a job that keeps a journal needs.
pub(super) fn open_state(c: &Config) -> Result<crate::state::Store, CliError> {
    crate::state::Store::open_config(&c.state).map_err(super::state_failed)
}
