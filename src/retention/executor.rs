//! Applies a retention plan: one action at a time, each re-verified against
//! the registry first (when `verify_before_delete`), idempotent (an object
//! already gone counts as done), audited, counted, and stopped between actions
//! on cancellation. Blocking and grace are decided before anything runs.

use super::planner::{ActionKind, PlannedAction};
use crate::kcr::{Client, DeleteImages, DeleteRepoTag, DescribeImages, Error};
use crate::metrics::Metrics;
use crate::state::{NewAudit, Store};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Where an action applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub instance: String,
    pub instance_id: String,
    pub namespace: String,
    pub repository: String,
}

pub struct ExecEnv<'a> {
    pub client: &'a Client,
    pub state: &'a Store,
    pub metrics: &'a Metrics,
    pub cancel: &'a CancellationToken,
    pub job: &'a str,
    pub run_id: Option<i64>,
    pub verify: bool,
    /// Called after each action (a progress bar on a terminal).
    pub tick: &'a (dyn Fn() + Sync),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// The object was already gone: counted as done.
    AlreadyDone,
    /// Dropped by verification: the registry no longer matches the plan.
    Stale(String),
    Failed(String),
}

#[derive(Debug, Default)]
pub struct Executed {
    pub results: Vec<(Target, PlannedAction, Outcome)>,
    /// Actions not yet planned for the whole grace period.
    pub waiting: usize,
    pub cancelled: bool,
}

impl Executed {
    pub fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.results.iter().filter(|(_, _, o)| f(o)).count()
    }
    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Failed(_)))
    }
    pub fn done(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Applied | Outcome::AlreadyDone))
    }
    pub fn stale(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Stale(_)))
    }
}

/// The identity of an action across runs, for grace marks.
pub fn grace_key(t: &Target, a: &PlannedAction) -> String {
    format!(
        "{}/{}/{}@{}:{}:{}",
        t.instance_id,
        t.namespace,
        t.repository,
        a.digest,
        a.action.as_str(),
        a.tags.join(",")
    )
}

/// Keep only actions planned continuously for `grace` (marks are updated for all).
pub fn apply_grace(
    state: &Store,
    items: Vec<(Target, PlannedAction)>,
    grace: Duration,
    now: DateTime<Utc>,
) -> Result<(Vec<(Target, PlannedAction)>, usize), crate::state::StateError> {
    let keys: Vec<String> = items.iter().map(|(t, a)| grace_key(t, a)).collect();
    let marks = state.update_grace_marks(&keys, now)?;
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    let (ready, waiting): (Vec<_>, Vec<_>) = items
        .into_iter()
        .zip(keys)
        .partition(|(_, k)| marks.get(k).is_some_and(|first| now - *first >= grace));
    Ok((ready.into_iter().map(|(i, _)| i).collect(), waiting.len()))
}

fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v
}

/// The image as the registry has it now: `None` if it is gone.
async fn current_tags(
    client: &Client,
    t: &Target,
    digest: &str,
) -> Result<Option<Vec<String>>, Error> {
    let req = DescribeImages {
        image_id: Some(digest.to_owned()),
        ..DescribeImages::all(&t.instance_id, &t.namespace, &t.repository)
    };
    let images = client.list_all(req).await?;
    Ok(images
        .into_iter()
        .find(|i| i.image_id == digest)
        .map(|i| i.tag_names))
}

/// Is the action's effect already in place?
async fn already_done(client: &Client, t: &Target, a: &PlannedAction) -> Result<bool, Error> {
    let now = current_tags(client, t, &a.digest).await?;
    Ok(match a.action {
        ActionKind::DeleteImage => now.is_none(),
        ActionKind::DeleteTag => now.is_some_and(|tags| !tags.contains(&a.tags[0])),
    })
}

/// Verify, then (write-ahead audit record, then) mutate. Returns the outcome
/// and the audit record started for the call, if one was.
async fn apply_one(env: &ExecEnv<'_>, t: &Target, a: &PlannedAction) -> (Outcome, Option<i64>) {
    match verify(env, t, a).await {
        Some(outcome) => (outcome, None),
        None => {
            let target = audit_target(t, a);
            let id = match env
                .state
                .audit_begin(&audit_record(env, t, a, &target, ""), Utc::now())
            {
                Ok(id) => id,
                // No mutation that cannot be audited.
                Err(e) => {
                    return (
                        Outcome::Failed(format!("cannot write the audit record: {e}")),
                        None,
                    );
                }
            };
            (mutate(env, t, a).await, Some(id))
        }
    }
}

/// `Some(outcome)` when verification settles the action without a call.
async fn verify(env: &ExecEnv<'_>, t: &Target, a: &PlannedAction) -> Option<Outcome> {
    if env.verify {
        match current_tags(env.client, t, &a.digest).await {
            Err(e) => return Some(Outcome::Failed(format!("verification: {e}"))),
            Ok(None) if a.action == ActionKind::DeleteImage => return Some(Outcome::AlreadyDone),
            // The tag is deleted by name: with its image gone, the name may now point elsewhere.
            Ok(None) => {
                return Some(Outcome::Stale(
                    "the image is gone; the tag may point elsewhere now".into(),
                ));
            }
            Ok(Some(tags)) if sorted(&tags) != sorted(&a.image_tags) => {
                // Exactly the planned tag missing: an earlier attempt already removed it.
                let done: Vec<String> = a
                    .image_tags
                    .iter()
                    .filter(|t| !a.tags.contains(t))
                    .cloned()
                    .collect();
                if a.action == ActionKind::DeleteTag && sorted(&tags) == sorted(&done) {
                    return Some(Outcome::AlreadyDone);
                }
                return Some(Outcome::Stale(format!(
                    "tags changed since planning: now [{}]",
                    tags.join(", ")
                )));
            }
            Ok(Some(_)) => {}
        }
    }
    None
}

async fn mutate(env: &ExecEnv<'_>, t: &Target, a: &PlannedAction) -> Outcome {
    let result = match a.action {
        ActionKind::DeleteImage => env
            .client
            .call(&DeleteImages {
                instance_id: t.instance_id.clone(),
                namespace: t.namespace.clone(),
                repo_name: t.repository.clone(),
                image_id: a.digest.clone(),
            })
            .await
            .map(|_| ()),
        ActionKind::DeleteTag => env
            .client
            .call(&DeleteRepoTag {
                instance_id: t.instance_id.clone(),
                namespace: t.namespace.clone(),
                repo_name: t.repository.clone(),
                tag_name: a.tags[0].clone(),
            })
            .await
            .map(|_| ()),
    };
    match result {
        Ok(()) => Outcome::Applied,
        // A retried delete may find its first attempt succeeded: check before calling it a failure.
        Err(e) => match already_done(env.client, t, a).await {
            Ok(true) => Outcome::AlreadyDone,
            _ => Outcome::Failed(e.to_string()),
        },
    }
}

fn audit_record<'a>(
    env: &ExecEnv<'a>,
    t: &'a Target,
    a: &'a PlannedAction,
    target: &'a str,
    outcome: &'a str,
) -> NewAudit<'a> {
    NewAudit {
        job: env.job,
        run_id: env.run_id,
        instance: &t.instance,
        action: a.action.as_str(),
        target,
        detail: &a.reason,
        outcome,
    }
}

fn audit_target(t: &Target, a: &PlannedAction) -> String {
    match a.action {
        ActionKind::DeleteImage => format!("{}/{}@{}", t.namespace, t.repository, a.digest),
        ActionKind::DeleteTag => format!(
            "{}/{}:{} ({})",
            t.namespace, t.repository, a.tags[0], a.digest
        ),
    }
}

/// Apply `items` in order. Stops between actions when cancelled.
pub async fn execute(env: &ExecEnv<'_>, items: Vec<(Target, PlannedAction)>) -> Executed {
    let mut out = Executed::default();
    let mut bytes: HashMap<String, u64> = HashMap::new();
    for (t, a) in items {
        if env.cancel.is_cancelled() {
            out.cancelled = true;
            break;
        }
        let (outcome, started) = apply_one(env, &t, &a).await;
        let outcome_text = match &outcome {
            Outcome::Applied => Some("applied".to_owned()),
            Outcome::AlreadyDone => Some("already-done".to_owned()),
            Outcome::Failed(e) => Some(format!("failed: {e}")),
            Outcome::Stale(_) => None,
        };
        let recorded = match (started, &outcome_text) {
            (Some(id), Some(text)) => env.state.audit_finish(id, text, None),
            // Settled by verification, without a call.
            (None, Some(text)) => env
                .state
                .audit(
                    &audit_record(env, &t, &a, &audit_target(&t, &a), text),
                    Utc::now(),
                )
                .map(|_| ()),
            (_, None) => Ok(()),
        };
        if let Err(e) = recorded {
            tracing::error!(error = %e, "cannot write the audit record");
        }
        match &outcome {
            Outcome::Applied | Outcome::AlreadyDone => {
                env.metrics
                    .retention_deleted
                    .with_label_values(&[&t.instance, a.action.as_str()])
                    .inc();
                if a.action == ActionKind::DeleteImage && outcome == Outcome::Applied {
                    *bytes.entry(t.instance.clone()).or_default() += a.size;
                }
                tracing::info!(instance = %t.instance, action = a.action.as_str(), target = %audit_target(&t, &a), outcome = ?outcome, "retention action");
            }
            Outcome::Stale(why) => {
                tracing::info!(instance = %t.instance, action = a.action.as_str(), target = %audit_target(&t, &a), why = %why, "retention action dropped: stale")
            }
            Outcome::Failed(e) => {
                tracing::warn!(instance = %t.instance, action = a.action.as_str(), target = %audit_target(&t, &a), error = %e, "retention action failed")
            }
        }
        out.results.push((t, a, outcome));
        (env.tick)();
    }
    for (inst, b) in bytes {
        env.metrics
            .retention_deleted_bytes
            .with_label_values(&[&inst])
            .inc_by(b);
    }
    out
}
