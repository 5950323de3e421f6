//! The namespace visibility policy (DESIGN §6 namespaces): rules in order,
//! the first `match` wins, else `default`; drift is actual ≠ desired.
//! `enforce` re-reads each drifting namespace and applies ModifyNamespaceType;
//! private → public only with `allow_make_public` (otherwise reported, never
//! applied); more changes than `max_changes_per_run` block the whole run.
//! The planner is pure; the executor audits every change.
//!
//! The job's house: `config.rs` (`[namespaces]`: raw → valid), `planner.rs`
//! (pure), `executor.rs` (re-read, audit, change), `report.rs` (summary and
//! table), and here the job with its listing and gauges.

pub mod config;
pub mod executor;
pub mod planner;
pub mod report;

pub use executor::{Applied, execute};
pub use planner::{Change, Decision, Listed, NamespacePlan, plan};
pub use report::{render_table, summary};

use crate::config::{Config, NamespacesConfig};
use crate::jobs::{JobContext, JobError, Outcome};
use crate::kcr::{Client, DescribeNamespace};
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("listing the namespaces of instance {instance}: {source}")]
    Listing {
        instance: String,
        source: Box<crate::kcr::Error>,
    },
}

/// Every namespace of every configured instance; an error rather than a partial list.
pub async fn list(client: &Client, config: &Config) -> Result<Vec<Listed>, NamespaceError> {
    let mut out = Vec::new();
    for inst in &config.instances {
        let namespaces = client
            .list_all(DescribeNamespace::all(&inst.id))
            .await
            .map_err(|e| NamespaceError::Listing {
                instance: inst.name.clone(),
                source: Box::new(e),
            })?;
        out.extend(namespaces.into_iter().map(|n| Listed {
            instance: inst.name.clone(),
            namespace: n.namespace,
            public: n.public,
        }));
    }
    Ok(out)
}

/// `kcr_namespace_public` and `kcr_namespace_policy_drift` as of after the run.
pub fn export_metrics(m: &Metrics, plan: &NamespacePlan, applied: &[(Decision, Applied)]) {
    m.namespaces.observed(plan.decisions.iter().map(|d| {
        let done = applied.iter().any(|(a, r)| {
            a.instance == d.instance
                && a.namespace == d.namespace
                && matches!(r, Applied::Applied | Applied::AlreadyDone)
        });
        let public = if done {
            d.desired == "public"
        } else {
            d.public
        };
        (
            d.instance.as_str(),
            d.namespace.as_str(),
            public,
            d.drift && !done,
        )
    }));
}

fn namespaces_config(ctx: &JobContext) -> Result<&NamespacesConfig, JobError> {
    ctx.config
        .namespaces
        .as_ref()
        .ok_or_else(|| JobError::Config("no [namespaces] section in the configuration".into()))
}

/// The namespace job: plan (list every namespace, pure policy), then apply
/// (in enforce mode or a one-shot apply: re-read, audit, change each drift).
pub struct NamespacesJob;

/// What the namespace job plans, and whether its apply changes anything.
pub struct NamespacesPlan {
    pub plan: NamespacePlan,
    /// Enforce mode, or a one-shot `apply`.
    pub enforce: bool,
}

impl crate::jobs::Steps for NamespacesJob {
    const NAME: &'static str = "namespaces";
    type Plan = NamespacesPlan;

    async fn plan(&self, ctx: &JobContext) -> Result<NamespacesPlan, JobError> {
        let nc = namespaces_config(ctx)?;
        let listed = list(&ctx.client, &ctx.config).await.inspect_err(|e| {
            let NamespaceError::Listing { instance, .. } = e;
            ctx.metrics.api.reached(instance, false);
        })?;
        Ok(NamespacesPlan {
            plan: plan(nc, &listed),
            enforce: ctx.enforcing(nc.mode),
        })
    }

    async fn apply(&self, ctx: &JobContext, p: NamespacesPlan) -> Result<Outcome, JobError> {
        let plan = p.plan;
        let text = summary(&plan);
        if !p.enforce {
            export_metrics(&ctx.metrics, &plan, &[]);
            return Ok(Outcome::Success(format!("dry-run: {text}")));
        }
        if let Some(b) = &plan.blocked {
            export_metrics(&ctx.metrics, &plan, &[]);
            return Ok(Outcome::Blocked(b.clone()));
        }
        let applied = execute(ctx, &plan).await;
        export_metrics(&ctx.metrics, &plan, &applied);
        for (d, r) in &applied {
            let what = match r {
                Applied::Applied => "changed".to_string(),
                Applied::AlreadyDone => "already as desired".to_string(),
                Applied::Stale(why) => format!("skipped: {why}"),
                Applied::Failed(why) => format!("FAILED: {why}"),
                Applied::Unknown(why) => format!("UNKNOWN: {why}"),
            };
            ctx.watch.note(format!(
                "{}/{} → {}: {what}",
                d.instance, d.namespace, d.desired
            ));
        }
        let failed: Vec<String> = applied
            .iter()
            .filter_map(|(d, r)| match r {
                Applied::Failed(why) | Applied::Unknown(why) => {
                    Some(format!("{}/{}: {why}", d.instance, d.namespace))
                }
                _ => None,
            })
            .collect();
        let done = applied
            .iter()
            .filter(|(_, r)| matches!(r, Applied::Applied | Applied::AlreadyDone))
            .count();
        let text = format!("enforce: {text}; {done} changed");
        if ctx.cancel.is_cancelled() {
            return Err(JobError::Stopped(format!(
                "{text}; cancelled before the end"
            )));
        }
        if !failed.is_empty() {
            return Err(JobError::Actions {
                summary: format!("{text}; failed: {}", failed.join(", ")),
                code: "actions",
            });
        }
        Ok(Outcome::Success(text))
    }
}
