//! `apply retention [--plan FILE]`: the retention job's plan (current
//! config, fresh inventory, now), or its intersection with a reviewed plan
//! file; rendered, asked, and applied through the runner like a daemon run.

use super::apply::ApplyRetentionArgs;
use super::common::retention_config;
use super::plan_file::read_plan_file;
use super::session::Session;
use super::{CliError, failed, io};
use crate::config::Config;
use crate::retention::{self, RetentionJob};
use chrono::Utc;
use std::io::Write;

pub(super) async fn apply_retention_cmd(
    c: &Config,
    args: &ApplyRetentionArgs,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let rc = retention_config(c)?;
    let file = match &args.plan {
        Some(path) => Some((path, read_plan_file(c, rc, path, Utc::now())?)),
        None => None,
    };
    let state = crate::failpoint::hit("retention.state.open", crate::state::StateError::Injected)
        .and_then(|()| crate::state::Store::open_config(&c.state))
        .map_err(super::state_failed)?;
    let session = Session::open(c, state).await?;
    let mut plan = session.plan(&RetentionJob, "planning").await?;
    super::plan::warn_unlisted(&plan.inventory);
    if let Some((path, report)) = &file {
        let changed = report.config_fingerprint.as_deref()
            != Some(retention::config_fingerprint(rc).as_str());
        if changed {
            let p = path.display();
            let why = match report.config_fingerprint {
                Some(_) => format!(
                    "the retention config changed since {p} was made (its fingerprint differs)"
                ),
                None => format!("{p} carries no config fingerprint"),
            };
            writeln!(
                out,
                "note: {why}: only what the current rules condemn is applied"
            )
            .map_err(io)?;
        }
        plan.review(report, &path.display().to_string(), c, changed);
    }
    for d in plan.review.iter().flat_map(|r| &r.dropped) {
        let kind = match d.reason.starts_with("stale") {
            true => "dropped (stale)",
            false => "dropped",
        };
        writeln!(
            out,
            "{kind}: {} {}/{}/{} {} {}: {}",
            d.action.action.as_str(),
            d.target.instance,
            d.target.namespace,
            d.target.repository,
            d.action.digest,
            d.action.tags.join(","),
            d.reason
        )
        .map_err(io)?;
    }
    // Never 0 when something could not be listed, even if nothing ran.
    let partial = |plan: &retention::RetentionPlan| match plan.plan.partial_reason() {
        Some(why) => Err(CliError::Failed(anyhow::anyhow!("retention: {why}"))),
        None => Ok(()),
    };
    if let Some(b) = plan.blocked(rc) {
        return Err(CliError::Blocked(format!("retention: {b}")));
    }
    writeln!(out, "retention: {}", plan.summary()).map_err(io)?;
    if plan.is_empty() {
        writeln!(out, "nothing to do").map_err(io)?;
        let none = retention::executor::Executed::default();
        writeln!(out, "retention: {}", retention::executed_summary(&none)).map_err(io)?;
        return partial(&plan);
    }
    let (ready, waiting) = plan
        .grace_preview(session.runner.state(), c, rc.grace)
        .map_err(|e| failed(e, "grace marks"))?;
    let relief = match plan.relief.len() {
        0 => String::new(),
        n => format!(" and {n} empty repositories/namespaces"),
    };
    let prompt = match waiting {
        0 => format!("apply {ready} actions{relief}?"),
        _ => format!("apply {ready} actions{relief} ({waiting} more wait for grace)?"),
    };
    // Nothing ready: the run only notes the grace marks (no question).
    let yes = args.yes || (ready == 0 && plan.relief.is_empty());
    let partial_after = partial(&plan);
    if !session.apply(RetentionJob, plan, yes, &prompt, out).await? {
        // Declined: nothing applied, but a partial listing still is one.
        return partial_after;
    }
    Ok(())
}
