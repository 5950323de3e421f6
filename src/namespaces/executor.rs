//! Applying a namespace plan: re-read each drifting namespace, write the
//! audit record, then ModifyNamespaceType.

use super::planner::{Decision, NamespacePlan};
use crate::jobs::JobContext;
use crate::kcr::{DescribeNamespace, ModifyNamespaceType};
use crate::state::{AuditGuard, Mutation};

/// How one change ended.
/// How one namespace change settled (the shared [`crate::state::Settled`];
/// a visibility change is re-read, so it never stays `Unknown`).
pub type Applied = crate::state::Settled;

/// Apply the plan's changes (not when blocked) with the run's client,
/// state and metrics. Stops between changes when cancelled.
pub async fn execute(env: &JobContext, plan: &NamespacePlan) -> Vec<(Decision, Applied)> {
    let mut out = Vec::new();
    if plan.blocked.is_some() {
        return out;
    }
    env.watch.begin(plan.changes().count() as u64);
    for d in plan.changes() {
        if env.cancel.is_cancelled() {
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
        let (status, error) = result.audit();
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
        if matches!(result, Applied::Applied) {
            env.metrics.namespaces.changed(&d.instance, d.desired);
        }
        env.watch.tick();
        tracing::info!(instance = %d.instance, namespace = %d.namespace, to = d.desired, outcome = %outcome, public = target_public, "namespace policy");
        out.push((d.clone(), result));
    }
    env.watch.end();
    out
}

fn mutation<'a>(env: &JobContext, d: &'a Decision, detail: &'a str) -> Mutation<'a> {
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
async fn apply_one(env: &JobContext, d: &Decision, detail: &str) -> (Applied, Option<AuditGuard>) {
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
