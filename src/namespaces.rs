//! The namespace visibility policy (DESIGN §6 namespaces): rules in order,
//! the first `match` wins, else `default`; drift is actual ≠ desired.
//! `enforce` re-reads each drifting namespace and applies ModifyNamespaceType;
//! private → public only with `allow_make_public` (otherwise reported, never
//! applied); more changes than `max_changes_per_run` block the whole run.
//! The planner is pure; the executor audits every change.

use crate::config::{Config, Mode, NamespacesConfig, Visibility};
use crate::jobs::{Job, JobContext, JobError, Outcome};
use crate::kcr::{Client, DescribeNamespace, ModifyNamespaceType};
use crate::metrics::Metrics;
use crate::state::{AuditGuard, AuditStatus, Mutation, Store};
use futures::future::BoxFuture;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// A namespace as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub instance: String,
    pub namespace: String,
    pub public: bool,
}

/// What the plan does about a drifting namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    /// Applied in `enforce` mode.
    Apply,
    /// private → public without `allow_make_public`: reported only.
    NotAllowed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub instance: String,
    pub namespace: String,
    pub public: bool,
    /// `public`, `private` or `ignore`.
    pub desired: &'static str,
    /// The rule's pattern, or `default`.
    pub rule: String,
    pub drift: bool,
    pub change: Option<Change>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NamespacePlan {
    pub decisions: Vec<Decision>,
    /// `max_changes_per_run` exceeded: nothing will be changed.
    pub blocked: Option<String>,
}

impl NamespacePlan {
    pub fn changes(&self) -> impl Iterator<Item = &Decision> {
        self.decisions
            .iter()
            .filter(|d| d.change == Some(Change::Apply))
    }
}

fn visibility_str(v: Visibility) -> &'static str {
    match v {
        Visibility::Public => "public",
        Visibility::Private => "private",
        Visibility::Ignore => "ignore",
    }
}

/// Plan the policy over every listed namespace. Pure; output sorted by instance and name.
pub fn plan(cfg: &NamespacesConfig, listed: &[Listed]) -> NamespacePlan {
    let mut decisions: Vec<Decision> = listed
        .iter()
        .map(|n| {
            let (desired, rule) = cfg
                .rules
                .iter()
                .find(|r| r.pattern.is_match(&n.namespace))
                .map_or((cfg.default, "default".to_string()), |r| {
                    (r.visibility, r.pattern.as_str().to_string())
                });
            let drift = match desired {
                Visibility::Public => !n.public,
                Visibility::Private => n.public,
                Visibility::Ignore => false,
            };
            let change = drift.then(|| {
                if desired == Visibility::Public && !cfg.allow_make_public {
                    Change::NotAllowed
                } else {
                    Change::Apply
                }
            });
            Decision {
                instance: n.instance.clone(),
                namespace: n.namespace.clone(),
                public: n.public,
                desired: visibility_str(desired),
                rule,
                drift,
                change,
            }
        })
        .collect();
    decisions.sort_by(|a, b| (&a.instance, &a.namespace).cmp(&(&b.instance, &b.namespace)));
    let mut plan = NamespacePlan {
        decisions,
        blocked: None,
    };
    let n = plan.changes().count();
    if n as u64 > u64::from(cfg.max_changes_per_run) {
        plan.blocked = Some(format!(
            "{n} namespace changes planned, over max_changes_per_run {}: nothing will be changed",
            cfg.max_changes_per_run
        ));
    }
    plan
}

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

/// How one change ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    Applied,
    /// Re-read: already as desired.
    AlreadyDone,
    /// Re-read: gone or changed since planning; not touched.
    Stale(String),
    Failed(String),
}

impl Applied {
    /// Its audit status and error.
    fn status(&self) -> (AuditStatus, Option<&str>) {
        match self {
            Applied::Applied => (AuditStatus::Applied, None),
            Applied::AlreadyDone => (AuditStatus::AlreadyDone, None),
            Applied::Stale(why) => (AuditStatus::Stale, Some(why)),
            Applied::Failed(why) => (AuditStatus::Failed, Some(why)),
        }
    }
}

pub struct ExecEnv<'a> {
    pub client: &'a Client,
    pub config: &'a Config,
    pub state: &'a Store,
    pub metrics: Option<&'a Metrics>,
    pub cancel: Option<&'a CancellationToken>,
    pub run_id: Option<i64>,
}

/// Apply the plan's changes (not when blocked). Stops between changes when cancelled.
pub async fn execute(env: &ExecEnv<'_>, plan: &NamespacePlan) -> Vec<(Decision, Applied)> {
    let mut out = Vec::new();
    if plan.blocked.is_some() {
        return out;
    }
    for d in plan.changes() {
        if env.cancel.is_some_and(|c| c.is_cancelled()) {
            break;
        }
        let detail = format!(
            "{} → {} (rule {})",
            if d.public { "public" } else { "private" },
            d.desired,
            d.rule
        );
        let (result, audit) = apply_one(env, d, &detail).await;
        let target_public = d.desired == "public";
        let (status, error) = result.status();
        let recorded = match audit {
            Some(audit) => audit.finish(status, error),
            // Decided on the re-read, nothing sent: a failed re-read and an
            // effect already in place are recorded; a stale change is not.
            None if !matches!(result, Applied::Stale(_)) => env
                .state
                .audit_unsent(
                    &mutation(env, d, &detail),
                    status,
                    error,
                    chrono::Utc::now(),
                )
                .map(|_| ()),
            None => Ok(()),
        };
        if let Err(e) = recorded {
            tracing::error!(error = %e, "cannot write the audit record");
        }
        let outcome = match error {
            Some(why) => format!("{status}: {why}"),
            None => status.to_string(),
        };
        if matches!(result, Applied::Applied)
            && let Some(m) = env.metrics
        {
            m.namespaces.changed(&d.instance, d.desired);
        }
        tracing::info!(instance = %d.instance, namespace = %d.namespace, to = d.desired, outcome = %outcome, public = target_public, "namespace policy");
        out.push((d.clone(), result));
    }
    out
}

fn mutation<'a>(env: &ExecEnv<'_>, d: &'a Decision, detail: &'a str) -> Mutation<'a> {
    Mutation {
        job: "namespaces",
        run_id: env.run_id,
        instance: &d.instance,
        action: "modify_namespace_type",
        target: &d.namespace,
        detail,
    }
}

/// Re-read, then (write-ahead audit record, then) change. Returns the
/// outcome and the audit record started for the call, if one was.
async fn apply_one(env: &ExecEnv<'_>, d: &Decision, detail: &str) -> (Applied, Option<AuditGuard>) {
    let Some(inst) = env.config.instance_by_name(&d.instance) else {
        return (Applied::Stale("instance no longer configured".into()), None);
    };
    let want_public = d.desired == "public";
    // Re-read right before changing: act only on what the plan saw.
    let now = env
        .client
        .list_all(DescribeNamespace {
            namespace: Some(d.namespace.clone()),
            ..DescribeNamespace::all(&inst.id)
        })
        .await;
    match now {
        Err(e) => return (Applied::Failed(format!("re-read: {}", e.code())), None),
        Ok(list) => match list.iter().find(|n| n.namespace == d.namespace) {
            None => return (Applied::Stale("the namespace is gone".into()), None),
            Some(n) if n.public == want_public => return (Applied::AlreadyDone, None),
            Some(n) if n.public != d.public => {
                return (
                    Applied::Stale("its visibility changed since planning".into()),
                    None,
                );
            }
            Some(_) => {}
        },
    }
    let audit = match env
        .state
        .audited(&mutation(env, d, detail), chrono::Utc::now())
    {
        Ok(audit) => audit,
        Err(e) => {
            return (
                Applied::Failed(format!("cannot write the audit record: {e}")),
                None,
            );
        }
    };
    let result = match env
        .client
        .call(&ModifyNamespaceType {
            instance_id: inst.id.clone(),
            namespace: d.namespace.clone(),
            public: want_public,
        })
        .await
    {
        Ok(_) => Applied::Applied,
        Err(e) => Applied::Failed(e.code().to_string()),
    };
    (result, Some(audit))
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

/// One line for logs and run summaries.
pub fn summary(plan: &NamespacePlan) -> String {
    let drift = plan.decisions.iter().filter(|d| d.drift).count();
    let apply = plan.changes().count();
    let not_allowed = plan
        .decisions
        .iter()
        .filter(|d| d.change == Some(Change::NotAllowed))
        .count();
    format!(
        "{} namespaces, {drift} drifting: {apply} to change, {not_allowed} to make public not allowed (allow_make_public = false)",
        plan.decisions.len()
    )
}

pub fn render_table(plan: &NamespacePlan) -> String {
    let mut out = format!(
        "{:<12} {:<24} {:<8} {:<8} {:<16} {}\n",
        "INSTANCE", "NAMESPACE", "ACTUAL", "DESIRED", "RULE", "ACTION"
    );
    for d in &plan.decisions {
        let action = match d.change {
            None if d.drift => "-",
            None => "ok",
            Some(Change::Apply) if plan.blocked.is_some() => "blocked",
            Some(Change::Apply) => "change",
            Some(Change::NotAllowed) => "report only (allow_make_public = false)",
        };
        out.push_str(&format!(
            "{:<12} {:<24} {:<8} {:<8} {:<16} {}\n",
            d.instance,
            d.namespace,
            if d.public { "public" } else { "private" },
            d.desired,
            d.rule,
            action
        ));
    }
    if let Some(b) = &plan.blocked {
        out.push_str(&format!("BLOCKED: {b}\n"));
    }
    out
}

pub struct NamespacesJob;

impl NamespacesJob {
    async fn run_inner(
        &self,
        ctx: &JobContext,
        nc: &NamespacesConfig,
    ) -> Result<Outcome, JobError> {
        let listed = list(&ctx.client, &ctx.config).await.inspect_err(|e| {
            let NamespaceError::Listing { instance, .. } = e;
            ctx.metrics.api.reached(instance, false);
        })?;
        let plan = plan(nc, &listed);
        let text = summary(&plan);
        if nc.mode == Mode::DryRun {
            export_metrics(&ctx.metrics, &plan, &[]);
            return Ok(Outcome::Success(format!("dry-run: {text}")));
        }
        if let Some(b) = &plan.blocked {
            export_metrics(&ctx.metrics, &plan, &[]);
            return Ok(Outcome::Blocked(b.clone()));
        }
        let env = ExecEnv {
            client: &ctx.client,
            config: &ctx.config,
            state: &ctx.state,
            metrics: Some(&ctx.metrics),
            cancel: Some(&ctx.cancel),
            run_id: Some(ctx.run_id),
        };
        let applied = execute(&env, &plan).await;
        export_metrics(&ctx.metrics, &plan, &applied);
        if ctx.cancel.is_cancelled() {
            return Err(JobError::Cancelled);
        }
        let failed: Vec<String> = applied
            .iter()
            .filter_map(|(d, r)| match r {
                Applied::Failed(why) => Some(format!("{}/{}: {why}", d.instance, d.namespace)),
                _ => None,
            })
            .collect();
        let done = applied
            .iter()
            .filter(|(_, r)| matches!(r, Applied::Applied | Applied::AlreadyDone))
            .count();
        let text = format!("enforce: {text}; {done} changed");
        if !failed.is_empty() {
            return Err(JobError::Actions {
                summary: format!("{text}; failed: {}", failed.join(", ")),
                code: "actions",
            });
        }
        Ok(Outcome::Success(text))
    }
}

impl Job for NamespacesJob {
    fn name(&self) -> &'static str {
        "namespaces"
    }

    fn run<'a>(&'a self, ctx: &'a JobContext) -> BoxFuture<'a, Result<Outcome, JobError>> {
        Box::pin(async move {
            let Some(nc) = ctx.config.namespaces.clone() else {
                return Err(JobError::Config(
                    "no [namespaces] section in the configuration".into(),
                ));
            };
            self.run_inner(ctx, &nc).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NamespaceRule;
    use crate::pattern::Pattern;

    fn cfg(allow: bool, cap: u32) -> NamespacesConfig {
        let c = crate::config::parse(
            "[kcr]\nendpoint = \"sim:demo\"\n[[instances]]\nid = \"i\"\nname = \"p\"\nregistry = \"r\"\n[namespaces]\n",
            "t.toml",
            std::path::Path::new("."),
            &|_: &str| None,
        )
        .unwrap();
        let mut n = c.namespaces.unwrap();
        n.allow_make_public = allow;
        n.max_changes_per_run = cap;
        n.rules = vec![
            NamespaceRule {
                pattern: Pattern::parse("public*").unwrap(),
                visibility: Visibility::Public,
            },
            NamespaceRule {
                pattern: Pattern::parse("shared").unwrap(),
                visibility: Visibility::Ignore,
            },
        ];
        n
    }

    fn ns(name: &str, public: bool) -> Listed {
        Listed {
            instance: "p".into(),
            namespace: name.into(),
            public,
        }
    }

    fn rows(p: &NamespacePlan) -> Vec<(&str, bool, &str, Option<Change>)> {
        p.decisions
            .iter()
            .map(|d| (d.namespace.as_str(), d.drift, d.desired, d.change))
            .collect()
    }

    #[test]
    fn first_rule_wins_else_default_and_public_needs_permission() {
        let listed = [
            ns("publicdocs", false),
            ns("publicok", true),
            ns("apps", true),
            ns("apps2", false),
            ns("shared", true),
        ];
        let p = plan(&cfg(false, 10), &listed);
        assert_eq!(
            rows(&p),
            vec![
                ("apps", true, "private", Some(Change::Apply)),
                ("apps2", false, "private", None),
                ("publicdocs", true, "public", Some(Change::NotAllowed)),
                ("publicok", false, "public", None),
                ("shared", false, "ignore", None),
            ]
        );
        assert_eq!(p.blocked, None);
        let p = plan(&cfg(true, 10), &listed);
        assert_eq!(
            p.changes().count(),
            2,
            "with allow_make_public both are applied"
        );
    }

    #[test]
    fn over_the_cap_the_run_is_blocked() {
        let listed = [ns("a1", true), ns("a2", true), ns("a3", true)];
        assert!(plan(&cfg(false, 3), &listed).blocked.is_none());
        let p = plan(&cfg(false, 2), &listed);
        assert!(p.blocked.unwrap().contains("3 namespace changes"));
        // Changes not allowed do not count against the cap.
        let listed = [ns("a1", true), ns("public1", false), ns("public2", false)];
        assert!(plan(&cfg(false, 1), &listed).blocked.is_none());
    }
}
