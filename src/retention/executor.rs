//! Applies retention actions: one at a time, each checked against the
//! registry right before its delete (the rate-limiter slots for the check and
//! the delete are taken together, so nothing waits between them), audited
//! before the call is sent, idempotent (an effect already in place counts as
//! done), and stopped between actions on cancellation or when the API keeps
//! failing. A delete is never retried blindly: every retry is preceded by a
//! fresh check. KCR has no conditional delete, so a window of one round trip
//! between the check and the delete remains.
//!
//! Blocking and grace are decided before anything runs.

use super::planner::{ActionKind, PlannedAction};
use crate::failpoint;
use crate::kcr::{Client, DeleteImages, DeleteRepoTag, DescribeImages, Error};
use crate::metrics::Metrics;
use crate::state::{AuditStatus, Mutation, StateError, Store};
use chrono::Utc;
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Where an action applies.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
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

/// How one deletion settled (the shared [`crate::state::Settled`]).
pub type Outcome = crate::state::Settled;

#[derive(Debug, Default)]
pub struct Executed {
    pub results: Vec<(Target, PlannedAction, Outcome)>,
    /// Actions not yet planned for the whole grace period.
    pub waiting: usize,
    pub cancelled: bool,
    /// Actions never attempted because the run stopped early.
    pub not_attempted: usize,
    /// Why the run stopped before the end (too many failures in a row).
    pub stopped: Option<String>,
    /// Audit records that could not be written (the run fails).
    pub audit_errors: usize,
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
    /// Deletes sent whose effect nobody could confirm or rule out.
    pub fn unknown(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Unknown(_)))
    }
    /// Something went wrong: a failed action, an unknown outcome, a stop,
    /// an unwritten audit record.
    pub fn has_failures(&self) -> bool {
        self.failed() > 0 || self.unknown() > 0 || self.stopped.is_some() || self.audit_errors > 0
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

fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v.dedup();
    v
}

/// The image key within a run: where, and which digest.
type ImageKey = (Target, String);

/// What this run has already done to each image: the tags it removed. A
/// later action on the same image expects them gone, not a foreign change.
#[derive(Default)]
struct RunEffects {
    removed: HashMap<ImageKey, Vec<String>>,
}

impl RunEffects {
    /// The tags the image should have now, after this run's own actions.
    fn expected(&self, t: &Target, a: &PlannedAction) -> Vec<String> {
        let removed = self.removed.get(&(t.clone(), a.digest.clone()));
        let tags: Vec<String> = a
            .image_tags
            .iter()
            .filter(|tag| removed.is_none_or(|r| !r.contains(tag)))
            .cloned()
            .collect();
        sorted(&tags)
    }

    fn note_done(&mut self, t: &Target, a: &PlannedAction) {
        if a.action == ActionKind::DeleteTag {
            self.removed
                .entry((t.clone(), a.digest.clone()))
                .or_default()
                .extend(a.tags.iter().cloned());
        }
    }
}

/// A call's failure, and whether it counts towards the failures in a row.
struct CallError {
    text: String,
    /// May the call be made again (after a fresh check)?
    retryable: bool,
    /// Refused by IAM (`AccessDenied`): a missing permission, the same for
    /// every action after this one.
    denied: bool,
}

impl CallError {
    fn api(what: &str, e: &Error) -> CallError {
        CallError {
            text: format!("{what}: {e}"),
            retryable: e.is_retryable(),
            denied: e.code() == "AccessDenied",
        }
    }
    /// A test's injected fault: like a refusal, never retried (a delete is
    /// still followed by a check, to learn whether it happened).
    fn injected(what: &str, msg: String) -> CallError {
        CallError {
            text: format!("{what}: {msg}"),
            retryable: false,
            denied: false,
        }
    }
}

/// What the check found.
enum Check {
    /// The planned delete is still right: send it.
    Proceed,
    /// Settled without a call.
    Settled(Outcome),
    /// Exactly the planned tag is missing from the image: done, unless the
    /// tag now names another image (a lookup of the repository decides).
    TagMissing,
}

/// One action's progress through check → audit → delete (→ check → delete …).
struct Attempt<'e, 'a> {
    env: &'e ExecEnv<'a>,
    t: &'e Target,
    a: &'e PlannedAction,
    /// Tags the image must have for the delete to go ahead.
    expected: Vec<String>,
    /// Failed calls in a row, shared by the run.
    failures_in_row: &'e mut u32,
    /// The first call IAM refused, if any: the run stops after this action.
    denied: Option<String>,
    /// The client's mutation gate withheld the delete (the lease ended,
    /// the run was cancelled): nothing was sent, the run stops here.
    withheld: Option<String>,
}

impl Attempt<'_, '_> {
    fn failed_call(&mut self, e: CallError) -> CallError {
        *self.failures_in_row += 1;
        if e.denied && self.denied.is_none() {
            self.denied = Some(e.text.clone());
        }
        e
    }

    fn ok_call(&mut self) {
        *self.failures_in_row = 0;
    }

    /// The image by digest: `None` if it is gone. One request, never retried here.
    async fn read_image(
        &mut self,
        r: &mut crate::kcr::Reservation<'_>,
    ) -> Result<Option<Vec<String>>, CallError> {
        let (t, a) = (self.t, self.a);
        let req = DescribeImages {
            image_id: Some(a.digest.clone()),
            ..DescribeImages::all(&t.instance_id, &t.namespace, &t.repository)
        };
        if let Err(m) = failpoint::hit("retention.api.verify", |m| m) {
            return Err(self.failed_call(CallError::injected("verification", m)));
        }
        match self.env.client.call_once(r, &req).await {
            Ok(out) => {
                self.ok_call();
                let found = out.items.into_iter().find(|i| i.image_id == a.digest);
                // Not in a listing that says it holds more than it gave: no answer.
                if found.is_none() && out.total_count > 0 {
                    return Err(self.failed_call(CallError {
                        text: format!(
                            "verification: the image is not in a listing of {} images by its digest",
                            out.total_count
                        ),
                        retryable: true,
                        denied: false,
                    }));
                }
                Ok(found.map(|i| i.tag_names))
            }
            Err(e) => Err(self.failed_call(CallError::api("verification", &e))),
        }
    }

    /// Where the tag points now, if anywhere in the repository.
    async fn tag_holder(&mut self, tag: &str) -> Result<Option<String>, CallError> {
        let t = self.t;
        if let Err(m) = failpoint::hit("retention.api.tag_lookup", |m| m) {
            return Err(self.failed_call(CallError::injected("looking up the tag", m)));
        }
        let listing = self
            .env
            .client
            .list_all(DescribeImages::all(
                &t.instance_id,
                &t.namespace,
                &t.repository,
            ))
            .await;
        match listing {
            Ok(images) => {
                self.ok_call();
                Ok(images
                    .into_iter()
                    .find(|i| i.tag_names.iter().any(|n| n == tag))
                    .map(|i| i.image_id))
            }
            Err(e) => Err(self.failed_call(CallError::api("looking up the tag", &e))),
        }
    }

    /// Compare the registry with what this action expects.
    async fn check(&mut self, r: &mut crate::kcr::Reservation<'_>) -> Result<Check, CallError> {
        let a = self.a;
        let current = self.read_image(r).await?;
        let Some(tags) = current else {
            return Ok(Check::Settled(match a.action {
                ActionKind::DeleteImage => Outcome::AlreadyDone,
                // The tag is deleted by name: with its image gone, the name may point elsewhere.
                ActionKind::DeleteTag => {
                    Outcome::Stale("the image is gone; the tag may point elsewhere now".into())
                }
            }));
        };
        let tags = sorted(&tags);
        if tags == self.expected {
            return Ok(Check::Proceed);
        }
        // Exactly the planned tag(s) missing: an earlier attempt (or someone) removed them,
        // unless the tag now names another image.
        let without: Vec<String> = self
            .expected
            .iter()
            .filter(|t| !a.tags.contains(t))
            .cloned()
            .collect();
        if a.action == ActionKind::DeleteTag && tags == without {
            return Ok(Check::TagMissing);
        }
        Ok(Check::Settled(Outcome::Stale(format!(
            "tags changed since planning: now [{}]",
            tags.join(", ")
        ))))
    }

    async fn delete(&mut self, r: &mut crate::kcr::Reservation<'_>) -> Result<(), CallError> {
        let (t, a, client) = (self.t, self.a, self.env.client);
        let result = match a.action {
            ActionKind::DeleteImage => {
                if let Err(m) = failpoint::hit("retention.api.delete_image", |m| m) {
                    return Err(self.failed_call(CallError::injected("delete", m)));
                }
                let call = DeleteImages {
                    instance_id: t.instance_id.clone(),
                    namespace: t.namespace.clone(),
                    repo_name: t.repository.clone(),
                    image_id: a.digest.clone(),
                };
                client.call_once(r, &call).await.map(|_| ()).and_then(|()| {
                    // A reply lost after the registry applied the delete.
                    failpoint::hit("retention.api.delete_image.reply_lost", |m| {
                        lost_reply("DeleteImages", m)
                    })
                })
            }
            ActionKind::DeleteTag => {
                if let Err(m) = failpoint::hit("retention.api.delete_tag", |m| m) {
                    return Err(self.failed_call(CallError::injected("delete", m)));
                }
                let call = DeleteRepoTag {
                    instance_id: t.instance_id.clone(),
                    namespace: t.namespace.clone(),
                    repo_name: t.repository.clone(),
                    tag_name: a.tags[0].clone(),
                };
                client.call_once(r, &call).await.map(|_| ()).and_then(|()| {
                    failpoint::hit("retention.api.delete_tag.reply_lost", |m| {
                        lost_reply("DeleteRepoTag", m)
                    })
                })
            }
        };
        match result {
            Ok(()) => {
                self.ok_call();
                Ok(())
            }
            // Withheld by the gate: nothing sent, not a failure of the API.
            Err(e @ Error::Withheld { .. }) => {
                let text = format!("delete: {e}");
                self.withheld = Some(text.clone());
                Err(CallError {
                    text,
                    retryable: false,
                    denied: false,
                })
            }
            Err(e) => Err(self.failed_call(CallError::api("delete", &e))),
        }
    }

    /// Check, then delete; after a failed delete, check again before any retry.
    async fn run(&mut self) -> Outcome {
        let client = self.env.client;
        let mut last_delete_error: Option<CallError> = None;
        // The last delete that may have reached the registry without its
        // answer reaching us: until a check settles it, the outcome is unknown.
        let mut sent_unanswered: Option<String> = None;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let (error, from_delete) = match self.step(attempt, last_delete_error.take()).await {
                Ok(outcome) => {
                    return match (outcome, &sent_unanswered) {
                        // Our delete was sent, its answer lost, and the check
                        // finds the effect in place: ours (KCR cannot tell us
                        // otherwise; someone else deleting the same object
                        // within that round trip is the remaining doubt).
                        (Outcome::AlreadyDone, Some(_)) => Outcome::Applied,
                        (outcome, _) => outcome,
                    };
                }
                Err(e) => e,
            };
            if self.withheld.is_some() {
                // Not sent: an earlier attempt's delete may still be unknown.
                return match &sent_unanswered {
                    Some(delete) => Outcome::Unknown(format!("outcome unknown: {delete}")),
                    None => Outcome::Failed(error.text),
                };
            }
            if from_delete {
                sent_unanswered = error.retryable.then(|| error.text.clone());
            }
            let give_up = |why: String| match &sent_unanswered {
                Some(delete) if from_delete => {
                    Outcome::Unknown(format!("outcome unknown: {delete}"))
                }
                Some(delete) => Outcome::Unknown(format!(
                    "outcome unknown: {delete}; the check after it failed: {why}"
                )),
                None => Outcome::Failed(why),
            };
            // A refused check is final; a refused delete gets one more check (did it happen?).
            if !error.retryable && !from_delete {
                return give_up(error.text);
            }
            let stop = *self.failures_in_row >= client.max_consecutive_failures();
            let pause = if error.retryable {
                client.retry_pause(attempt)
            } else {
                Some(Duration::ZERO)
            };
            match pause {
                Some(pause) if !stop && !self.env.cancel.is_cancelled() => {
                    tracing::debug!(attempt, error = %error.text, ?pause, "retention action: checking again before a retry");
                    tokio::time::sleep(pause).await;
                    last_delete_error = Some(error);
                }
                _ => return give_up(error.text),
            }
        }
    }

    /// One pass: check (unless the first pass without verification), then
    /// delete. An error says whether the delete (rather than a check) failed.
    async fn step(
        &mut self,
        attempt: u32,
        last_delete_error: Option<CallError>,
    ) -> Result<Outcome, (CallError, bool)> {
        // Both slots now: the delete follows its check without waiting for the limiter.
        let mut r = self.env.client.reserve(2).await;
        let checked = if self.env.verify || attempt > 1 {
            self.check(&mut r).await.map_err(|e| (e, false))?
        } else {
            Check::Proceed
        };
        match checked {
            Check::Settled(outcome) => Ok(outcome),
            Check::TagMissing => {
                // The lookup is a listing with its own slots and permit.
                drop(r);
                let tag = self.a.tags[0].clone();
                Ok(match self.tag_holder(&tag).await.map_err(|e| (e, false))? {
                    None => Outcome::AlreadyDone,
                    Some(other) => Outcome::Stale(format!(
                        "the tag {tag} now points at another image, {other}"
                    )),
                })
            }
            Check::Proceed => match last_delete_error {
                // The delete was refused for good, and the check says it did not happen.
                Some(e) if !e.retryable => Ok(Outcome::Failed(e.text)),
                _ => {
                    self.delete(&mut r).await.map_err(|e| (e, true))?;
                    Ok(Outcome::Applied)
                }
            },
        }
    }
}

/// An applied call whose answer was lost on the way (a test's failpoint).
fn lost_reply(action: &'static str, detail: String) -> Error {
    Error::Transport {
        action,
        kind: crate::kcr::TransportKind::Reset,
        detail,
    }
}

fn mutation<'a>(
    env: &ExecEnv<'a>,
    t: &'a Target,
    a: &'a PlannedAction,
    target: &'a str,
) -> Mutation<'a> {
    Mutation {
        job: env.job,
        run_id: env.run_id,
        instance: &t.instance,
        action: a.action.as_str(),
        target,
        detail: &a.reason,
    }
}

pub fn audit_target(t: &Target, a: &PlannedAction) -> String {
    match a.action {
        ActionKind::DeleteImage => format!("{}/{}@{}", t.namespace, t.repository, a.digest),
        ActionKind::DeleteTag => format!(
            "{}/{}:{} ({})",
            t.namespace,
            t.repository,
            a.tags.first().map(String::as_str).unwrap_or_default(),
            a.digest
        ),
    }
}

/// An action no input may make the executor panic on: `delete_tag` names
/// exactly one tag, and every action names a digest. `Some(why)` when not.
pub fn malformed(a: &PlannedAction) -> Option<String> {
    if a.digest.is_empty() {
        return Some("the action names no digest".into());
    }
    match a.action {
        ActionKind::DeleteTag if a.tags.len() != 1 => Some(format!(
            "a delete_tag action names exactly one tag, not {}",
            a.tags.len()
        )),
        ActionKind::DeleteTag if a.tags[0].is_empty() => Some("empty tag name".into()),
        _ => None,
    }
}

/// The order actions run in: the plan's, but within each repository every
/// `delete_image` before any `delete_tag` (review finding 7). A key without
/// `kcrs:DeleteImages` is refused at a repository's first delete, before
/// any of its tags went: the run stops at the first refusal, so no
/// repository's plan is left half-applied that way. The other way round (a
/// key with DeleteImages but without DeleteRepoTag) a repository may be left
/// with its images deleted and its condemned tags in place; that is safe,
/// because every action is justified on its own (the planner condemns an
/// image only when all its tags are condemned, and a tag never because of
/// another action), so a subset of the plan never deletes what the rules
/// keep, and the next run plans the rest. Repositories stay in plan order.
pub fn execution_order(items: &mut [(Target, PlannedAction)]) {
    // Stable: the plan's order within each kind, repositories as they came.
    let mut first_seen: HashMap<Target, usize> = HashMap::new();
    for (i, (t, _)) in items.iter().enumerate() {
        first_seen.entry(t.clone()).or_insert(i);
    }
    items.sort_by_key(|(t, a)| (first_seen[t], a.action != ActionKind::DeleteImage));
}

/// Why a run of actions stops before its next action.
pub(super) enum Stop {
    /// Cancelled (shutdown, timeout, Ctrl-C): a safe point.
    Cancelled,
    /// `[kcr] max_consecutive_failures` actions failed in a row: why.
    Streak(String),
}

/// Checked before each action of a run of actions (deletions, relief).
/// This run's own failures decide (`failures_in_row`): a failure streak the
/// shared client carries from another job (the API since back) does not
/// stop it. `who` and `what` word the reason ("stopped", "API calls").
pub(super) fn stop_before(
    env: &ExecEnv<'_>,
    failures_in_row: u32,
    who: &str,
    what: &str,
) -> Option<Stop> {
    if env.cancel.is_cancelled() {
        return Some(Stop::Cancelled);
    }
    let limit = env.client.max_consecutive_failures();
    (failures_in_row >= limit).then(|| {
        Stop::Streak(format!(
            "{who} after {failures_in_row} failed {what} in a row ([kcr] max_consecutive_failures = {limit})"
        ))
    })
}

/// Apply `items` ([`execution_order`]). Stops between actions when
/// cancelled, after `[kcr] max_consecutive_failures` failed calls in a
/// row, and at the first call IAM refuses.
pub async fn execute(env: &ExecEnv<'_>, mut items: Vec<(Target, PlannedAction)>) -> Executed {
    execution_order(&mut items);
    let mut out = Executed::default();
    let mut bytes: HashMap<String, u64> = HashMap::new();
    let mut effects = RunEffects::default();
    let mut failures_in_row = 0u32;
    let total = items.len();
    for (i, (t, a)) in items.into_iter().enumerate() {
        if let Some(stop) = stop_before(env, failures_in_row, "stopped", "API calls") {
            match stop {
                Stop::Cancelled => out.cancelled = true,
                Stop::Streak(why) => out.stopped = Some(why),
            }
            out.not_attempted = total - i;
            break;
        }
        // Write-ahead: the record exists before anything is sent for the action.
        let target = audit_target(&t, &a);
        let begun =
            failpoint::hit("retention.state.audit_begin", StateError::Injected).and_then(|()| {
                env.state
                    .audited(&mutation(env, &t, &a, &target), Utc::now())
            });
        let mut denied = None;
        let mut withheld = None;
        let outcome = match (&begun, malformed(&a)) {
            (Err(e), _) => Outcome::Failed(format!("cannot write the audit record: {e}")),
            (Ok(_), Some(why)) => Outcome::Failed(why),
            (Ok(_), None) => {
                let mut attempt = Attempt {
                    env,
                    t: &t,
                    a: &a,
                    expected: effects.expected(&t, &a),
                    failures_in_row: &mut failures_in_row,
                    denied: None,
                    withheld: None,
                };
                let outcome = attempt.run().await;
                denied = attempt.denied;
                withheld = attempt.withheld;
                outcome
            }
        };
        // The delete was withheld (lease lost, run cancelled) and nothing of
        // it was sent: the action counts as not attempted, the run stops.
        if let (Some(why), Outcome::Failed(_)) = (&withheld, &outcome) {
            let recorded = begun.and_then(|audit| {
                failpoint::hit("retention.state.audit_finish", StateError::Injected)
                    .and_then(|()| audit.finish(AuditStatus::Failed, Some(why)))
            });
            if let Err(e) = recorded {
                // Expected once the lease is gone (the fence refuses): the
                // next leader closes the record.
                tracing::warn!(error = %e, target = %target, "cannot close the audit record of a withheld delete");
            }
            tracing::warn!(instance = %t.instance, action = a.action.as_str(), target = %target, why = %why, "retention action withheld: nothing sent; stopping");
            out.cancelled = true;
            out.not_attempted = total - i;
            break;
        }
        let (status, error) = outcome.audit();
        let recorded = begun.and_then(|audit| {
            failpoint::hit("retention.state.audit_finish", StateError::Injected)
                .and_then(|()| audit.finish(status, error))
        });
        if let Err(e) = recorded {
            out.audit_errors += 1;
            tracing::error!(error = %e, target = %target, "cannot write the audit record");
        }
        match &outcome {
            Outcome::Unknown(e) => {
                tracing::warn!(instance = %t.instance, action = a.action.as_str(), target = %audit_target(&t, &a), error = %e, "retention action: outcome unknown")
            }
            Outcome::Applied | Outcome::AlreadyDone => {
                effects.note_done(&t, &a);
                env.metrics
                    .retention
                    .deleted(&t.instance, a.action.as_str());
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
        // A missing permission refuses every later action alike: stop
        // rather than send them, and name the permission.
        // Withheld after an earlier attempt's delete went unanswered: that
        // one is recorded unknown above; nothing more may be sent.
        if withheld.is_some() {
            out.cancelled = true;
            out.not_attempted = total - i - 1;
            break;
        }
        if let Some(why) = denied {
            out.stopped = Some(format!(
                "stopped: a permission is missing ({why}); grant it (deploy/iam/) and run again"
            ));
            out.not_attempted = total - i - 1;
            break;
        }
    }
    for (inst, b) in bytes {
        env.metrics.retention.freed(&inst, b);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(kind: ActionKind, digest: &str) -> PlannedAction {
        PlannedAction {
            action: kind,
            digest: digest.into(),
            tags: match kind {
                ActionKind::DeleteTag => vec![format!("t-{digest}")],
                ActionKind::DeleteImage => Vec::new(),
            },
            image_tags: Vec::new(),
            size: 0,
            pushed_at: chrono::DateTime::<Utc>::UNIX_EPOCH,
            rules: Vec::new(),
            reason: String::new(),
        }
    }

    fn target(repo: &str) -> Target {
        Target {
            instance: "i".into(),
            instance_id: "id".into(),
            namespace: "ns".into(),
            repository: repo.into(),
        }
    }

    /// Review finding 7: within a repository, images before tags;
    /// repositories and each kind keep the plan's order.
    #[test]
    fn image_deletes_run_before_tag_deletes_within_each_repository() {
        use ActionKind::{DeleteImage as I, DeleteTag as T};
        let plan = [
            ("b", T, "1"),
            ("b", I, "2"),
            ("b", T, "3"),
            ("a", T, "4"),
            ("b", I, "5"),
            ("a", I, "6"),
            ("c", T, "7"),
        ];
        let mut items: Vec<_> = plan
            .iter()
            .map(|(r, k, d)| (target(r), action(*k, d)))
            .collect();
        execution_order(&mut items);
        let got: Vec<(String, &str, String)> = items
            .iter()
            .map(|(t, a)| (t.repository.clone(), a.action.as_str(), a.digest.clone()))
            .collect();
        let want: Vec<(String, &str, String)> = [
            ("b", I, "2"),
            ("b", I, "5"),
            ("b", T, "1"),
            ("b", T, "3"),
            ("a", I, "6"),
            ("a", T, "4"),
            ("c", T, "7"),
        ]
        .iter()
        .map(|(r, k, d)| (r.to_string(), k.as_str(), d.to_string()))
        .collect();
        assert_eq!(got, want);
    }
}
