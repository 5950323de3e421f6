//! `apply`: apply a job once, now.

use super::common::{confirmed, namespaces_config, tokens_config};
use super::plan::namespace_plan;
use super::tokens_text::token_plans_text;
use super::{CliError, failed, io};
use crate::app;
use crate::config::Config;
use crate::jobs::{RunLog, Trigger};
use crate::metrics::Metrics;
use crate::state::RunResult;
use chrono::Utc;
use clap::{Args, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

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
    use crate::namespaces::Applied;
    namespaces_config(c)?;
    let conn = app::connect(c).await.map_err(|e| failed(e, "connecting"))?;
    let state =
        crate::state::Store::open_config(&c.state).map_err(|e| CliError::Usage(e.to_string()))?;
    let plan = namespace_plan(c, &conn).await?;
    out.write_all(crate::namespaces::render_table(&plan).as_bytes())
        .map_err(io)?;
    if let Some(b) = &plan.blocked {
        return Err(CliError::Blocked(b.clone()));
    }
    let n = plan.changes().count();
    if n == 0 {
        writeln!(out, "nothing to do").map_err(io)?;
        return Ok(());
    }
    if !confirmed(args.yes, &format!("change {n} namespaces?"), out)? {
        return Ok(());
    }
    let metrics = Arc::new(Metrics::new());
    let log = RunLog::start(&state, metrics.clone(), "namespaces", Trigger::Cli)
        .map_err(|e| failed(e, "recording the run"))?;
    let env = crate::namespaces::ExecEnv {
        client: &conn.client,
        config: c,
        state: &state,
        metrics: Some(&metrics),
        cancel: None,
        run_id: Some(log.run_id()),
    };
    let applied = crate::namespaces::execute(&env, &plan).await;
    let mut failures = 0;
    for (d, r) in &applied {
        let what = match r {
            Applied::Applied => "changed".to_string(),
            Applied::AlreadyDone => "already as desired".to_string(),
            Applied::Stale(why) => format!("skipped: {why}"),
            Applied::Failed(why) => {
                failures += 1;
                format!("FAILED: {why}")
            }
        };
        writeln!(
            out,
            "{}/{} → {}: {what}",
            d.instance, d.namespace, d.desired
        )
        .map_err(io)?;
    }
    let changed = applied
        .iter()
        .filter(|(_, r)| matches!(r, Applied::Applied | Applied::AlreadyDone))
        .count();
    let text = format!("{}; {changed} changed", crate::namespaces::summary(&plan));
    let (result, error) = match failures {
        0 => (RunResult::Success, None),
        n => (
            RunResult::Failure,
            Some(format!("{n} namespace changes failed")),
        ),
    };
    log.finish(
        result,
        text,
        error.clone(),
        error.as_ref().map(|_| "actions"),
    )
    .1
    .map_err(|e| failed(e, "recording the run"))?;
    if let Some(e) = error {
        return Err(CliError::Failed(anyhow::anyhow!(e)));
    }
    Ok(())
}

pub(super) fn token_engine<'a>(
    c: &'a Config,
    conn: &'a app::Connection,
    state: &'a crate::state::Store,
) -> crate::tokens::rotate::Engine<'a> {
    crate::tokens::rotate::Engine {
        client: &conn.client,
        config: c,
        state,
        metrics: None,
        run_id: None,
        cancel: None,
        clock: &|| Utc::now(),
        settings: crate::tokens::settings_for(c, &conn.client),
    }
}

pub(super) async fn apply_tokens_cmd(
    c: &Config,
    args: &ApplyYesArgs,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    tokens_config(c)?;
    let conn = app::connect(c).await.map_err(|e| failed(e, "connecting"))?;
    let state =
        crate::state::Store::open_config(&c.state).map_err(|e| CliError::Usage(e.to_string()))?;
    let mut engine = token_engine(c, &conn, &state);
    let plans = engine
        .plan()
        .await
        .map_err(|e| failed(e, "planning tokens"))?;
    out.write_all(token_plans_text(&plans).as_bytes())
        .map_err(io)?;
    if plans.iter().all(|p| p.steps.is_empty()) {
        writeln!(out, "nothing to do").map_err(io)?;
        if plans.iter().any(|p| p.backoff_until.is_some()) {
            return Err(CliError::Failed(anyhow::anyhow!(
                "a rotation is due but backs off after failed attempts (see above)"
            )));
        }
        return Ok(());
    }
    if !confirmed(args.yes, "apply these token steps?", out)? {
        return Ok(());
    }
    let metrics = Arc::new(Metrics::new());
    let log = RunLog::start(&state, metrics.clone(), "tokens", Trigger::Cli)
        .map_err(|e| failed(e, "recording the run"))?;
    engine.run_id = Some(log.run_id());
    let outcomes = match engine.run().await {
        Ok(o) => o,
        Err(e) => {
            let _ = log.finish(
                RunResult::Failure,
                String::new(),
                Some(e.to_string()),
                Some(e.code()),
            );
            return Err(failed(e, "rotating tokens"));
        }
    };
    let text = crate::tokens::outcome_summary(&outcomes);
    writeln!(out, "tokens: {text}").map_err(io)?;
    let failed_step = outcomes.iter().any(|o| o.error.is_some());
    let (result, error) = match failed_step {
        false => (RunResult::Success, None),
        true => (RunResult::Failure, Some("a token step failed".to_owned())),
    };
    let code = error.as_ref().map(|_| "actions");
    log.finish(result, text, error, code)
        .1
        .map_err(|e| failed(e, "recording the run"))?;
    if failed_step {
        return Err(CliError::Failed(anyhow::anyhow!("a token step failed")));
    }
    Ok(())
}
