//! `plan`: what a job would do, without changing anything.

use super::common::{emit, namespaces_config, retention_config, tokens_config};
use super::session::Session;
use super::tokens_text::{token_plans_json, token_plans_text};
use super::{CliError, OutputFormat};
use crate::config::Config;
use crate::namespaces::NamespacesJob;
use crate::retention::{self, RetentionJob};
use crate::tokens::TokensJob;
use clap::{Args, Subcommand, ValueEnum};
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Table,
    Json,
    Markdown,
    Html,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(subcommand)]
    pub job: PlanJob,
}

/// Each job with the formats it can write.
#[derive(Debug, Subcommand)]
pub enum PlanJob {
    /// Which images and tags the retention rules would delete, and why
    Retention(PlanRetentionArgs),
    /// What token rotation would do now, and when next
    Tokens(PlanTableArgs),
    /// Where namespace visibility drifts from the policy
    Namespaces(PlanTableArgs),
}

#[derive(Debug, Args)]
pub struct PlanRetentionArgs {
    #[arg(long, value_enum, default_value = "table")]
    pub format: ReportFormat,
    /// Write the report here instead of standard output (a JSON plan can be applied with apply retention --plan)
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PlanTableArgs {
    #[arg(long, value_enum, default_value = "table")]
    pub format: OutputFormat,
    /// Write the plan here instead of standard output
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

pub(super) async fn run(c: &Config, args: &PlanArgs, out: &mut dyn Write) -> Result<(), CliError> {
    match &args.job {
        PlanJob::Retention(a) => plan_retention_cmd(c, a, out).await,
        PlanJob::Tokens(a) => plan_tokens_cmd(c, a, out).await,
        PlanJob::Namespaces(a) => plan_namespaces_cmd(c, a, out).await,
    }
}

async fn plan_retention_cmd(
    c: &Config,
    args: &PlanRetentionArgs,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let rc = retention_config(c)?;
    let (state, uncompared) = plan_state(c, rc.in_use.is_some())?;
    let session = Session::open(c, state).await?;
    // As `apply retention` would see it: server-side rules block there.
    let plan = session.plan(&RetentionJob, "planning").await?;
    warn_unlisted(&plan.inventory);
    for r in &plan.plan.idle_rules {
        super::term::warn(&format!("rule {r:?} matches nothing in this registry"));
    }
    let report = &plan.report;
    let text = match args.format {
        ReportFormat::Table => retention::report::render_table(report),
        ReportFormat::Json => report.to_json(),
        ReportFormat::Markdown => retention::report::render_markdown(report),
        ReportFormat::Html => retention::report::render_html(report),
    };
    emit(args.output.as_deref(), &text, out)?;
    partial_result(&plan.plan)?;
    // A source of what runs could not be read: the plan may name images in
    // use, and apply would be blocked. Not 0 (DESIGN §4: an input that could
    // not be read is a partial run); 1 rather than 3, as a plan blocks nothing.
    match &plan.in_use_blocked {
        Some(why) => Err(CliError::Failed(anyhow::anyhow!("retention: {why}"))),
        None => Uncompared::result(uncompared),
    }
}

/// The state a plan reads (the in-use sources' last counts): without it a
/// plan is still made (it deletes nothing; `apply` reads the real state),
/// but an empty in-use answer is then not compared with the last count.
/// `in_use`: whether in-use sources are configured; only then does a state
/// that cannot be opened matter, and it is returned as [`Uncompared`]: the
/// command still writes its report, then exits 1 (a check was skipped).
pub(super) fn plan_state(
    c: &Config,
    in_use: bool,
) -> Result<(crate::state::Store, Option<Uncompared>), CliError> {
    match crate::state::Store::open_config(&c.state) {
        Ok(s) => Ok((s, None)),
        Err(e) => {
            let skipped = in_use.then(|| Uncompared(e.to_string()));
            if let Some(u) = &skipped {
                super::term::warn(&u.to_string());
            }
            let memory =
                crate::state::Store::in_memory().map_err(|e| CliError::Usage(e.to_string()))?;
            Ok((memory, skipped))
        }
    }
}

/// The state could not be opened while in-use sources are configured: their
/// answers were not compared with their last counts (an empty answer from a
/// broken exporter would pass), so the plan or explanation is incomplete.
#[derive(Debug)]
pub(super) struct Uncompared(String);

impl std::fmt::Display for Uncompared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot open the state ({}): an in-use source's empty answer is not compared with its last count",
            self.0
        )
    }
}

impl Uncompared {
    /// Exit 1 (DESIGN §4: never 0 when a check was skipped).
    pub(super) fn result(skipped: Option<Uncompared>) -> Result<(), CliError> {
        match skipped {
            Some(u) => Err(CliError::Failed(anyhow::anyhow!("retention: {u}"))),
            None => Ok(()),
        }
    }
}

/// Warn about every instance that could not be listed.
pub(super) fn warn_unlisted(inventory: &crate::inventory::Inventory) {
    for i in inventory.instances.iter().filter(|i| i.error.is_some()) {
        super::term::warn(&format!(
            "instance {}: {}",
            i.name,
            i.error.as_deref().unwrap_or_default()
        ));
    }
}

/// Exit 1 when anything could not be listed completely (DESIGN §4: never 0
/// when something was skipped); the report has already been written.
pub(super) fn partial_result(plan: &retention::Plan) -> Result<(), CliError> {
    match plan.partial_reason() {
        Some(why) => Err(CliError::Failed(anyhow::anyhow!("retention: {why}"))),
        None => Ok(()),
    }
}

pub(super) async fn plan_namespaces_cmd(
    c: &Config,
    args: &PlanTableArgs,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    namespaces_config(c)?;
    let session = Session::open(c, plan_state(c, false)?.0).await?;
    let plan = session
        .plan(&NamespacesJob, "listing namespaces")
        .await?
        .plan;
    let text = match args.format {
        OutputFormat::Json => {
            serde_json::to_string_pretty(&serde_json::json!({
                "schema": "kcr-housekeeper/namespace-plan/v1",
                "summary": crate::namespaces::summary(&plan),
                "blocked": plan.blocked,
                "namespaces": plan.decisions,
            }))
            .expect("serialises")
                + "\n"
        }
        OutputFormat::Table => {
            crate::namespaces::render_table(&plan) + &crate::namespaces::summary(&plan) + "\n"
        }
    };
    emit(args.output.as_deref(), &text, out)
}

pub(super) async fn plan_tokens_cmd(
    c: &Config,
    args: &PlanTableArgs,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    tokens_config(c)?;
    let session = Session::open(c, super::apply::open_state(c)?).await?;
    let plan = session.plan(&TokensJob, "planning tokens").await?;
    let text = match args.format {
        OutputFormat::Json => token_plans_json(&plan.plans),
        OutputFormat::Table => token_plans_text(&plan.plans),
    };
    emit(args.output.as_deref(), &text, out)
}
