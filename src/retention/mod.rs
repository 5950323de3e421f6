//! Retention: a pure planner (DESIGN §6), an executor that re-verifies and
//! audits every deletion, report renderers, and the job that ties them
//! together (dry-run by default; enforce applies).

pub mod executor;
pub mod planner;
pub mod report;

pub use planner::{ActionKind, Plan, PlannedAction, Verdict, plan, plan_explained};

use crate::config::{Config, Mode, RetentionConfig};
use crate::jobs::{Job, JobContext, JobError, Outcome};
use chrono::{DateTime, Utc};
use executor::{ExecEnv, Executed, Target};
use futures::future::BoxFuture;
use report::{Report, ReportInstance};

/// The actions of (instance, namespace, repository, actions) groups with where
/// they apply. Actions of instances the config does not have are left out.
pub fn targets<'a, A: IntoIterator<Item = PlannedAction>>(
    repos: impl IntoIterator<Item = (&'a str, &'a str, &'a str, A)>,
    config: &Config,
) -> Vec<(Target, PlannedAction)> {
    let mut out = Vec::new();
    for (instance, namespace, repository, actions) in repos {
        let Some(inst) = config.instance_by_name(instance) else {
            continue;
        };
        for a in actions {
            let target = Target {
                instance: inst.name.clone(),
                instance_id: inst.id.clone(),
                namespace: namespace.to_owned(),
                repository: repository.to_owned(),
            };
            out.push((target, a));
        }
    }
    out
}

pub fn plan_targets(plan: &Plan, config: &Config) -> Vec<(Target, PlannedAction)> {
    let repos = plan.repositories.iter();
    targets(
        repos.map(|r| {
            (
                r.instance.as_str(),
                r.namespace.as_str(),
                r.repository.as_str(),
                r.actions.iter().map(|a| plan.materialize(a)),
            )
        }),
        config,
    )
}

pub fn report_instances(config: &Config) -> Vec<ReportInstance> {
    config
        .instances
        .iter()
        .map(|i| ReportInstance {
            name: i.name.clone(),
            id: i.id.clone(),
        })
        .collect()
}

/// A one-line summary of a plan.
pub fn plan_summary(plan: &Plan) -> String {
    let mut s = format!(
        "{} delete_image, {} delete_tag, {} reclaimable",
        plan.count(ActionKind::DeleteImage),
        plan.count(ActionKind::DeleteTag),
        report::human_bytes(plan.reclaimable_bytes())
    );
    let blocked = plan
        .repositories
        .iter()
        .filter(|r| r.blocked.is_some())
        .count();
    let skipped = plan
        .repositories
        .iter()
        .filter(|r| r.skipped.is_some())
        .count();
    if blocked > 0 {
        s.push_str(&format!(", {blocked} repositories blocked"));
    }
    if skipped > 0 {
        s.push_str(&format!(", {skipped} repositories skipped"));
    }
    s
}

pub fn executed_summary(e: &Executed) -> String {
    let mut s = format!(
        "{} applied or already done, {} stale, {} failed",
        e.done(),
        e.stale(),
        e.failed()
    );
    if e.waiting > 0 {
        s.push_str(&format!(", {} waiting for grace", e.waiting));
    }
    if e.cancelled {
        s.push_str(", cancelled before the end");
    }
    s
}

/// Store the report in every format the HTTP server serves.
pub fn store_report(ctx: &JobContext, report: &Report, now: DateTime<Utc>) -> Result<(), JobError> {
    ctx.state.put_report(
        "retention",
        Some(ctx.run_id),
        now,
        "json",
        report.to_json().as_bytes(),
    )?;
    ctx.state.put_report(
        "retention",
        Some(ctx.run_id),
        now,
        "html",
        report::render_html(report).as_bytes(),
    )?;
    ctx.state.put_report(
        "retention",
        Some(ctx.run_id),
        now,
        "markdown",
        report::render_markdown(report).as_bytes(),
    )?;
    Ok(())
}

fn export_plan_metrics(ctx: &JobContext, plan: &Plan) {
    // One pass over the actions: (delete_image, delete_tag, bytes) per instance.
    let mut per_instance: std::collections::HashMap<&str, (u64, u64, u64)> =
        std::collections::HashMap::new();
    for (repo, a) in plan.actions() {
        let e = per_instance.entry(repo.instance.as_str()).or_default();
        match a.kind {
            ActionKind::DeleteImage => e.0 += 1,
            ActionKind::DeleteTag => e.1 += 1,
        }
        e.2 += a.freed_bytes();
    }
    for inst in &ctx.config.instances {
        let (images, tags, bytes) = per_instance
            .get(inst.name.as_str())
            .copied()
            .unwrap_or_default();
        let planned = &ctx.metrics.retention_planned;
        planned
            .with_label_values(&[&inst.name, ActionKind::DeleteImage.as_str()])
            .set(images as f64);
        planned
            .with_label_values(&[&inst.name, ActionKind::DeleteTag.as_str()])
            .set(tags as f64);
        ctx.metrics
            .retention_reclaimable
            .with_label_values(&[&inst.name])
            .set(bytes as f64);
    }
}

pub struct RetentionJob;

impl RetentionJob {
    async fn run_inner(&self, ctx: &JobContext, rc: &RetentionConfig) -> Result<Outcome, JobError> {
        let now = Utc::now();
        let inventory = ctx
            .inventory
            .get(
                &ctx.client,
                &ctx.config.instances,
                ctx.config.inventory.max_age,
            )
            .await;
        for inst in &inventory.instances {
            ctx.metrics
                .up
                .with_label_values(&[&inst.name])
                .set(i64::from(inst.error.is_none()));
        }
        let plan = plan(&inventory, rc, now);
        export_plan_metrics(ctx, &plan);
        let report = Report::from_plan(&plan, rc.mode.as_str(), report_instances(&ctx.config));
        store_report(ctx, &report, now)?;
        let summary = plan_summary(&plan);
        if rc.mode == Mode::DryRun {
            return Ok(Outcome::Success(format!("dry-run: {summary}")));
        }
        if let Some(b) = &plan.blocked {
            return Ok(Outcome::Blocked(b.clone()));
        }
        let (ready, waiting) =
            executor::apply_grace(&ctx.state, plan_targets(&plan, &ctx.config), rc.grace, now)?;
        let env = ExecEnv {
            client: &ctx.client,
            state: &ctx.state,
            metrics: &ctx.metrics,
            cancel: &ctx.cancel,
            job: "retention",
            run_id: Some(ctx.run_id),
            verify: rc.verify_before_delete,
            tick: &|| {},
        };
        let mut executed = executor::execute(&env, ready).await;
        executed.waiting = waiting;
        if executed.done() > 0 {
            ctx.inventory.invalidate().await;
        }
        let text = format!(
            "enforce: planned {summary}; {}",
            executed_summary(&executed)
        );
        if executed.cancelled {
            return Err(JobError::Cancelled);
        }
        if executed.failed() > 0 {
            return Err(JobError::Failed(text));
        }
        Ok(Outcome::Success(text))
    }
}

impl Job for RetentionJob {
    fn name(&self) -> &'static str {
        "retention"
    }

    fn run<'a>(&'a self, ctx: &'a JobContext) -> BoxFuture<'a, Result<Outcome, JobError>> {
        Box::pin(async move {
            let Some(rc) = ctx.config.retention.clone() else {
                return Err(JobError::Failed(
                    "no [retention] section in the configuration".into(),
                ));
            };
            self.run_inner(ctx, &rc).await
        })
    }
}
