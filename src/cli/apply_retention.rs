//! `apply retention [--plan FILE]`.

use super::apply::ApplyRetentionArgs;
use super::common::{Bar, collect_inventory, confirmed, retention_config};
use super::plan_file::read_plan_file;
use super::stop::StopSignals;
use super::{CliError, failed, io};
use crate::config::Config;
use crate::jobs::{RunLog, Trigger};
use crate::state::RunResult::Failure;
use crate::{app, retention};
use chrono::Utc;
use std::io::Write;

/// `apply retention [--plan FILE]`: a fresh plan (current config, fresh
/// inventory, now), or its intersection with a reviewed plan file; then
/// caps, grace and execution.
pub(super) async fn apply_retention_cmd(
    c: &Config,
    args: &ApplyRetentionArgs,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    use crate::failpoint;
    use retention::executor::{self, ExecEnv, Outcome};
    let rc = retention_config(c)?;
    let now = Utc::now();
    let file = match &args.plan {
        Some(path) => Some((path, read_plan_file(c, rc, path, now)?)),
        None => None,
    };
    let conn = app::connect(c).await.map_err(|e| failed(e, "connecting"))?;
    let state = failpoint::hit("retention.state.open", crate::state::StateError::Injected)
        .and_then(|()| crate::state::Store::open(&c.state.path))
        .map_err(|e| CliError::Usage(e.to_string()))?;
    failpoint::hit("retention.api.list", |m| {
        failed(anyhow::anyhow!(m), "listing")
    })?;
    let inventory = collect_inventory(&conn.client, c, now).await;
    let in_use = retention::read_in_use(rc, c, Some(&state), now).await;
    let mut fresh = retention::planner::plan_in_use(&inventory, rc, now, &in_use, false);
    // A namespace where KCR's own retention is enabled is blocked (unless allowed).
    retention::check_server_side(&conn.client, &inventory, rc, &mut fresh, true).await;
    // Partial: an instance, a namespace or a repository could not be listed;
    // what was listed is applied.
    let partial: Vec<String> = fresh.incomplete();
    let (items, dropped, summary) = match &file {
        Some((path, report)) => {
            let current = retention::config_fingerprint(rc);
            let changed = match &report.config_fingerprint {
                Some(f) if *f == current => false,
                Some(_) => {
                    writeln!(
                        out,
                        "note: the retention config changed since {} was made (its fingerprint differs): only what the current rules condemn is applied",
                        path.display()
                    )
                    .map_err(io)?;
                    true
                }
                None => {
                    writeln!(
                        out,
                        "note: {} carries no config fingerprint: only what the current rules condemn is applied",
                        path.display()
                    )
                    .map_err(io)?;
                    true
                }
            };
            let (items, dropped) = retention::intersect(report, &fresh, &inventory, c, changed);
            let count =
                |k: retention::ActionKind| items.iter().filter(|(_, a)| a.action == k).count();
            let summary = format!(
                "{} delete_image, {} delete_tag: the actions of {} that a fresh plan also holds ({} of the file's {} dropped)",
                count(retention::ActionKind::DeleteImage),
                count(retention::ActionKind::DeleteTag),
                path.display(),
                dropped.len(),
                report.actions().count()
            );
            (items, dropped, summary)
        }
        None => (
            retention::plan_targets(&fresh, c),
            Vec::new(),
            retention::plan_summary(&fresh),
        ),
    };
    for d in &dropped {
        let kind = if d.reason.starts_with("stale") {
            "dropped (stale)"
        } else {
            "dropped"
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
    // The caps apply to what runs, exactly as to a fresh run: the fresh
    // plan's own run cap only when it is what runs (a plan file runs the
    // intersection, capped below; ratio-blocked repositories have no
    // actions in the fresh plan, so none in the intersection either).
    // A failed in-use source blocks everything, a reviewed plan file too:
    // nothing may be deleted without knowing what runs.
    if let Some(b) = in_use.blocked() {
        return Err(CliError::Blocked(format!("retention: {b}")));
    }
    if file.is_none()
        && let Some(b) = &fresh.blocked
    {
        return Err(CliError::Blocked(format!("retention: {b}")));
    }
    if items.len() as u64 > rc.max_deletions_per_run {
        return Err(CliError::Blocked(format!(
            "retention: {} actions exceed max_deletions_per_run {}",
            items.len(),
            rc.max_deletions_per_run
        )));
    }
    writeln!(out, "retention: {summary}").map_err(io)?;
    let partial_error = || {
        CliError::Failed(anyhow::anyhow!(
            "partial: {} could not be listed completely: {}",
            partial.len(),
            partial.join("; ")
        ))
    };
    if items.is_empty() {
        writeln!(out, "nothing to do").map_err(io)?;
        let executed = executor::Executed::default();
        writeln!(out, "retention: {}", retention::executed_summary(&executed)).map_err(io)?;
        return if partial.is_empty() {
            Ok(())
        } else {
            Err(partial_error())
        };
    }
    // Grace: marks are kept for the whole fresh plan (as a fresh run keeps
    // them); what runs is the part of `items` planned long enough.
    let (ready, waiting) = {
        let all = retention::plan_targets(&fresh, c);
        let (ready_all, _) = executor::apply_grace(&state, all, rc.grace, now)
            .map_err(|e| failed(e, "grace marks"))?;
        let keys: std::collections::HashSet<String> = ready_all
            .iter()
            .map(|(t, a)| executor::grace_key(t, a))
            .collect();
        let (ready, waiting): (Vec<_>, Vec<_>) = items
            .into_iter()
            .partition(|(t, a)| keys.contains(&executor::grace_key(t, a)));
        (ready, waiting.len())
    };
    let prompt = if waiting > 0 {
        format!(
            "apply {} actions ({waiting} more wait for grace)?",
            ready.len()
        )
    } else {
        format!("apply {} actions?", ready.len())
    };
    if !ready.is_empty() && !confirmed(args.yes, &prompt, out)? {
        // Declined: nothing applied, but a partial listing still is one.
        return if partial.is_empty() {
            Ok(())
        } else {
            Err(partial_error())
        };
    }
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    let cancel = tokio_util::sync::CancellationToken::new();
    failpoint::hit(
        "retention.state.run_start",
        crate::state::StateError::Injected,
    )
    .map_err(|e| failed(e, "recording the run"))?;
    // Before the run row exists: from here on a stop signal closes it.
    let signals = StopSignals::install(&cancel)?;
    let log = RunLog::start(&state, metrics.clone(), "retention", Trigger::Cli)
        .map_err(|e| failed(e, "recording the run"))?;
    let run_id = log.run_id();
    let bar = Bar::new("deleting", "actions", ready.len() as u64);
    let tick = || bar.inc();
    let env = ExecEnv {
        client: &conn.client,
        state: &state,
        metrics: &metrics,
        cancel: &cancel,
        job: "retention",
        run_id: Some(run_id),
        // A reviewed plan is always re-verified: the registry may have moved on.
        verify: rc.verify_before_delete || file.is_some(),
        tick: &tick,
    };
    let total = ready.len();
    let executed = tokio::select! {
        biased;
        e = executor::execute(&env, ready) => Some(e),
        _ = signals.hard.cancelled() => None,
    };
    bar.finish();
    let Some(mut executed) = executed else {
        // Stopped in the middle of an action: its record and the run are
        // closed here, so nothing stays `started` or open.
        let closed = state.close_interrupted_audit_of_run(run_id);
        let text = format!(
            "stopped during an action by a second signal ({total} actions were to run); the outcome of the action in flight is unknown (audited interrupted)"
        );
        let (_, finished) = log.finish(
            crate::state::RunResult::Failure,
            text.clone(),
            Some("interrupted".into()),
            Some("cancelled"),
        );
        closed
            .and(finished)
            .map_err(|e| failed(e, "recording the run"))?;
        writeln!(out, "retention: {text}").map_err(io)?;
        return Err(signals.error(format!("retention: interrupted; {text}")));
    };
    executed.waiting = waiting;
    for (t, a, o) in &executed.results {
        if let Outcome::Stale(why) | Outcome::Failed(why) | Outcome::Unknown(why) = o {
            let kind = match o {
                Outcome::Stale(_) => "dropped (stale)",
                Outcome::Unknown(_) => "UNKNOWN",
                _ => "FAILED",
            };
            writeln!(
                out,
                "{kind}: {} {}/{}/{} {} {}: {why}",
                a.action.as_str(),
                t.instance,
                t.namespace,
                t.repository,
                a.digest,
                a.tags.join(",")
            )
            .map_err(io)?;
        }
    }
    let text = retention::executed_summary(&executed);
    writeln!(out, "retention: {text}").map_err(io)?;
    // The stored error text stays as before; the code labels the failure
    // as the daemon's job does (jobs::JobError::code).
    let (result, error, code) = if executed.cancelled {
        (Failure, Some("interrupted"), Some("cancelled"))
    } else if executed.has_failures() {
        (Failure, Some("failed"), Some("actions"))
    } else if !partial.is_empty() {
        (Failure, Some("failed"), Some("partial"))
    } else {
        (crate::state::RunResult::Success, None, None)
    };
    failpoint::hit(
        "retention.state.run_finish",
        crate::state::StateError::Injected,
    )
    .and_then(|()| {
        log.finish(result, text.clone(), error.map(str::to_owned), code)
            .1
    })
    .map_err(|e| failed(e, "recording the run"))?;
    if executed.cancelled {
        return Err(signals.error(format!("retention: interrupted; {text}")));
    }
    if executed.has_failures() {
        return Err(CliError::Failed(anyhow::anyhow!("retention: {text}")));
    }
    if !partial.is_empty() {
        return Err(partial_error());
    }
    Ok(())
}
