//! Retention: a pure planner (DESIGN §6), an executor that re-verifies and
//! audits every deletion, report renderers, and the job that ties them
//! together (dry-run by default; enforce applies).
//!
//! The job's house: `config.rs` (`[retention]`: raw → valid), `planner.rs`
//! (pure), `executor.rs`, `report.rs`; beside them the planner's inputs
//! (`in_use.rs`, `server_side.rs`) and quota relief (`relief.rs`).

pub mod config;
pub mod executor;
pub mod in_use;
pub mod planner;
pub mod relief;
pub mod report;
pub mod server_side;

pub use planner::{
    ActionKind, Plan, PlannedAction, ServerSide, ServerSideState, Verdict, apply_server_side, plan,
    plan_explained,
};

use crate::config::{Config, RetentionConfig};
use crate::jobs::{JobContext, JobError, Outcome};
use chrono::{DateTime, Utc};
use executor::{ExecEnv, Executed, Target};
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

/// Read KCR's own retention for the namespaces `rc` covers and fold it into
/// the plan ([`apply_server_side`]): shown always; blocking when `enforcing`
/// (apply, or the job in enforce mode) unless `allow_server_side_rules`.
/// Returns what was found (for `kcr_server_retention_rules`).
pub async fn check_server_side(
    client: &crate::kcr::Client,
    inventory: &crate::inventory::Inventory,
    instances: &[crate::config::InstanceConfig],
    rc: &RetentionConfig,
    plan: &mut Plan,
    enforcing: bool,
) -> Vec<ServerSide> {
    let found = server_side::read(client, inventory, instances, rc).await;
    apply_server_side(
        plan,
        found.clone(),
        enforcing && !rc.allow_server_side_rules,
        rc.max_deletions_per_run,
    );
    found
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
    let skipped = plan.incomplete().len();
    if blocked > 0 {
        s.push_str(&format!(", {blocked} repositories blocked"));
    }
    if skipped > 0 {
        s.push_str(&format!(", {skipped} listings skipped"));
    }
    let in_use: usize = plan.repositories.iter().map(|r| r.in_use.len()).sum();
    if in_use > 0 {
        s.push_str(&format!(", {in_use} images kept because they are in use"));
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
    if e.unknown() > 0 {
        s.push_str(&format!(
            ", {} outcome unknown (sent, answer lost, not confirmed since)",
            e.unknown()
        ));
    }
    if e.waiting > 0 {
        s.push_str(&format!(", {} waiting for grace", e.waiting));
    }
    if e.not_attempted > 0 {
        s.push_str(&format!(", {} not attempted", e.not_attempted));
    }
    if let Some(why) = &e.stopped {
        s.push_str(&format!(", {why}"));
    }
    if e.cancelled {
        s.push_str(", cancelled before the end");
    }
    if e.audit_errors > 0 {
        s.push_str(&format!(
            ", {} audit records could not be written",
            e.audit_errors
        ));
    }
    s
}

/// A fingerprint of what decides a retention plan (rules, protection,
/// limits): a plan file records it, and `apply --plan` reports a mismatch.
pub fn config_fingerprint(rc: &RetentionConfig) -> String {
    let canonical = format!(
        "min_age={:?}\nmax_deletions_per_run={}\nmax_deletion_ratio={}\nprotect={:?}\nrules={:?}{}",
        rc.min_age,
        rc.max_deletions_per_run,
        rc.max_deletion_ratio,
        rc.protect,
        rc.rules,
        // Only when set, so fingerprints of configs without relief stay as they were.
        match (rc.delete_empty_repositories, rc.delete_empty_namespaces) {
            (None, None) => String::new(),
            (r, n) => format!("\nrelief={r:?},{n:?}"),
        }
    );
    format!(
        "sha256:{}",
        crate::kcr::signer::sha256_hex(canonical.as_bytes())
    )
}

/// Why an action of a reviewed plan file is not executed.
pub const NO_LONGER_CONDEMNED: &str = "no longer condemned by the current rules";
pub const NOT_IN_CURRENT_PLAN: &str = "not in the current plan";
/// An action of a plan file left out of the run, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dropped {
    pub target: Target,
    pub action: PlannedAction,
    /// Starts with [`NO_LONGER_CONDEMNED`] or [`NOT_IN_CURRENT_PLAN`], or
    /// says the image changed (`stale: …`).
    pub reason: String,
}

/// What a reviewed plan file may still do: the actions both the file and a
/// fresh plan (current config, fresh inventory, now) hold, as the fresh plan
/// has them, in the fresh plan's order; every other file action dropped
/// with its reason. `config_changed`: the file's config fingerprint differs
/// from the current one.
pub fn intersect(
    file: &report::Report,
    fresh: &Plan,
    inventory: &crate::inventory::Inventory,
    config: &Config,
    config_changed: bool,
) -> (Vec<(Target, PlannedAction)>, Vec<Dropped>) {
    use std::collections::{HashMap, HashSet};
    type Key = (String, String, String, ActionKind, String, Vec<String>);
    let key = |inst: &str, ns: &str, repo: &str, a: &PlannedAction| -> Key {
        let mut tags = a.tags.clone();
        tags.sort();
        (
            inst.to_owned(),
            ns.to_owned(),
            repo.to_owned(),
            a.action,
            a.digest.clone(),
            tags,
        )
    };
    let mut in_file: HashSet<Key> = HashSet::new();
    let mut dropped = Vec::new();
    let fresh_keys: HashSet<Key> = fresh
        .planned_actions()
        .map(|(r, a)| key(&r.instance, &r.namespace, &r.repository, &a))
        .collect();
    let fresh_repos: HashMap<(&str, &str, &str), &planner::RepositoryPlan> = fresh
        .repositories
        .iter()
        .map(|r| {
            (
                (
                    r.instance.as_str(),
                    r.namespace.as_str(),
                    r.repository.as_str(),
                ),
                r,
            )
        })
        .collect();
    for (r, a) in file.actions() {
        let k = key(&r.instance, &r.namespace, &r.repository, a);
        if fresh_keys.contains(&k) {
            in_file.insert(k);
            continue;
        }
        let Some(inst) = config.instance_by_name(&r.instance) else {
            continue;
        };
        let target = Target {
            instance: inst.name.clone(),
            instance_id: inst.id.clone(),
            namespace: r.namespace.clone(),
            repository: r.repository.clone(),
        };
        let repo_plan = fresh_repos.get(&(
            r.instance.as_str(),
            r.namespace.as_str(),
            r.repository.as_str(),
        ));
        let inst_listed = inventory.instances.iter().find(|i| i.name == r.instance);
        let ns_listed =
            inst_listed.and_then(|i| i.namespaces.iter().find(|n| n.name == r.namespace));
        // A listing that failed above the repository: nothing is known of it.
        let unlisted = inst_listed
            .and_then(|i| i.error.as_deref())
            .map(|why| format!("instance {}: {why}", r.instance))
            .or_else(|| {
                ns_listed
                    .and_then(|n| n.error.as_deref())
                    .map(|why| format!("namespace {}: {why}", r.namespace))
            });
        let listed = ns_listed.and_then(|n| n.repositories.iter().find(|x| x.name == r.repository));
        let image = listed.and_then(|x| x.images.iter().find(|i| i.digest.to_string() == a.digest));
        let reason = if !inst.in_scope(&r.namespace, &r.repository) {
            // Not managed here: the instance's declared scope leaves it out.
            format!("{NOT_IN_CURRENT_PLAN}: outside the instance's scope (not managed)")
        } else if let Some(why) = unlisted.as_deref() {
            format!("{NOT_IN_CURRENT_PLAN}: the repository could not be listed ({why})")
        } else if let Some(why) = repo_plan.and_then(|p| p.skipped.as_deref()) {
            format!("{NOT_IN_CURRENT_PLAN}: the repository could not be listed ({why})")
        } else if let Some(why) = repo_plan.and_then(|p| p.blocked.as_deref()) {
            format!("{NOT_IN_CURRENT_PLAN}: the repository is blocked ({why})")
        } else if listed.is_none() {
            format!("{NOT_IN_CURRENT_PLAN}: the repository is not in the registry now")
        } else if image.is_none() {
            // Gone, or never there (an action made up by hand): either way
            // not something this run may claim as done.
            format!("{NOT_IN_CURRENT_PLAN}: the image is not in the registry now")
        } else if let (ActionKind::DeleteTag, Some(tag), Some(i)) =
            (a.action, a.tags.first(), image)
            && !i.tags.iter().any(|t| t.as_str() == tag.as_str())
        {
            format!("{NOT_IN_CURRENT_PLAN}: the image has no tag {tag:?} now")
        } else if image.is_some_and(|i| {
            let mut now: Vec<String> = i.tags.iter().map(|t| t.to_string()).collect();
            now.sort();
            let mut then = a.image_tags.clone();
            then.sort();
            now != then
        }) {
            let now: Vec<String> = image
                .map(|i| i.tags.iter().map(|t| t.to_string()).collect())
                .unwrap_or_default();
            format!(
                "stale: tags changed since planning: now [{}]",
                now.join(", ")
            )
        } else if config_changed {
            NO_LONGER_CONDEMNED.to_owned()
        } else {
            NOT_IN_CURRENT_PLAN.to_owned()
        };
        dropped.push(Dropped {
            target,
            action: a.clone(),
            reason,
        });
    }
    let kept = plan_targets(fresh, config)
        .into_iter()
        .filter(|(t, a)| in_file.contains(&key(&t.instance, &t.namespace, &t.repository, a)))
        .collect();
    (kept, dropped)
}

/// What the `[retention.in_use]` sources say now (nothing when none is
/// configured). A source that failed is in [`in_use::InUse::failures`] and
/// blocks the plan made with it.
pub async fn read_in_use(
    rc: &RetentionConfig,
    config: &Config,
    state: Option<&crate::state::Store>,
    now: DateTime<Utc>,
) -> in_use::InUse {
    match &rc.in_use {
        Some(u) => in_use::fetch(u, &config.instances, state, now).await,
        None => in_use::InUse::default(),
    }
}

/// Store the report in every format the HTTP server serves.
pub fn store_report(ctx: &JobContext, report: &Report, now: DateTime<Utc>) -> Result<(), JobError> {
    crate::failpoint::hit(
        "retention.state.report_store",
        crate::state::StateError::Injected,
    )?;
    ctx.state.put_report(
        "retention",
        ctx.run_id,
        now,
        "json",
        report.to_json().as_bytes(),
    )?;
    ctx.state.put_report(
        "retention",
        ctx.run_id,
        now,
        "html",
        report::render_html(report).as_bytes(),
    )?;
    ctx.state.put_report(
        "retention",
        ctx.run_id,
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
    let mut vetoes: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for r in &plan.repositories {
        *vetoes.entry(r.instance.as_str()).or_default() += r.in_use.len();
    }
    for inst in &ctx.config.instances {
        ctx.metrics.retention.in_use_vetoes(
            &inst.name,
            vetoes.get(inst.name.as_str()).copied().unwrap_or(0),
        );
        let (images, tags, bytes) = per_instance
            .get(inst.name.as_str())
            .copied()
            .unwrap_or_default();
        ctx.metrics
            .retention
            .planned(&inst.name, images, tags, bytes);
    }
}

/// A retention plan as the job made it, with what its apply will carry out.
pub struct RetentionPlan {
    pub now: DateTime<Utc>,
    pub inventory: std::sync::Arc<crate::inventory::Inventory>,
    pub plan: Plan,
    /// A failed in-use source: nothing may be deleted, a reviewed plan file
    /// neither (the fresh plan is blocked with it too).
    pub in_use_blocked: Option<String>,
    /// Empty repositories and namespaces to delete (quota relief).
    pub relief: Vec<relief::ReliefAction>,
    /// The report of this plan (stored with the run).
    pub report: Report,
    /// Does apply change anything (enforce mode, or a one-shot `apply`)?
    pub enforce: bool,
    /// What apply carries out: every planned action, or (after
    /// [`RetentionPlan::review`]) those of a reviewed plan file this plan
    /// also holds.
    pub selected: Vec<(Target, PlannedAction)>,
    /// Set by [`RetentionPlan::review`].
    pub review: Option<Review>,
}

/// A reviewed plan file applied through a fresh plan.
pub struct Review {
    /// The file's actions left out, and why.
    pub dropped: Vec<Dropped>,
    /// What runs, in one line.
    pub summary: String,
}

impl RetentionPlan {
    /// Keep only what the reviewed plan `file` (from `path`) holds too
    /// ([`intersect`]); the file's quota relief is not applied. `changed`:
    /// the retention config changed since the file was made.
    pub fn review(&mut self, file: &Report, path: &str, config: &Config, changed: bool) {
        let (items, dropped) = intersect(file, &self.plan, &self.inventory, config, changed);
        let count = |k: ActionKind| items.iter().filter(|(_, a)| a.action == k).count();
        let summary = format!(
            "{} delete_image, {} delete_tag: the actions of {path} that a fresh plan also holds ({} of the file's {} dropped)",
            count(ActionKind::DeleteImage),
            count(ActionKind::DeleteTag),
            dropped.len(),
            file.actions().count()
        );
        self.selected = items;
        self.relief.clear();
        self.review = Some(Review { dropped, summary });
    }

    /// What the plan does, in one line.
    pub fn summary(&self) -> String {
        if let Some(r) = &self.review {
            return r.summary.clone();
        }
        let mut summary = plan_summary(&self.plan);
        if !self.relief.is_empty() {
            summary.push_str(&format!(
                ", {} empty repositories/namespaces to delete",
                self.relief.len()
            ));
        }
        summary
    }

    /// Nothing to delete (the caps are checked apart: [`RetentionPlan::blocked`]).
    pub fn is_empty(&self) -> bool {
        self.selected.is_empty() && self.relief.is_empty()
    }

    /// Why nothing may be deleted: a failed in-use source, a blocked fresh
    /// plan (a reviewed file runs only the intersection, whose repositories
    /// blocked by the ratio have no actions), or more deletions than
    /// `max_deletions_per_run` (relief counts too).
    pub fn blocked(&self, rc: &RetentionConfig) -> Option<String> {
        if let Some(b) = &self.in_use_blocked {
            return Some(b.clone());
        }
        if self.review.is_none()
            && let Some(b) = &self.plan.blocked
        {
            return Some(b.clone());
        }
        let total = self.selected.len() + self.relief.len();
        (total as u64 > rc.max_deletions_per_run).then(|| {
            let relief = match self.relief.len() {
                0 => String::new(),
                n => format!(" (with {n} quota relief)"),
            };
            format!(
                "{total} actions exceed max_deletions_per_run {}{relief}: nothing will be deleted",
                rc.max_deletions_per_run
            )
        })
    }

    fn grace_keys(&self, config: &Config) -> (Vec<String>, Vec<String>) {
        let id = |a: &relief::ReliefAction| {
            config
                .instance_by_name(&a.instance)
                .map(|i| i.id.clone())
                .unwrap_or_default()
        };
        let actions = plan_targets(&self.plan, config)
            .iter()
            .map(|(t, a)| executor::grace_key(t, a))
            .collect();
        let relief = self.relief.iter().map(|a| a.grace_key(&id(a))).collect();
        (actions, relief)
    }

    /// How many selected actions (and relief actions) have been planned for
    /// the whole grace period, and how many wait, given when each was
    /// first planned (`first`; an action not marked yet starts now).
    fn grace_split(
        &self,
        config: &Config,
        grace: std::time::Duration,
        first: impl Fn(&str) -> Option<DateTime<Utc>>,
    ) -> Graced {
        let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
        let ready = |k: &str| self.now - first(k).unwrap_or(self.now) >= grace;
        let mut g = Graced::default();
        for (t, a) in &self.selected {
            match ready(&executor::grace_key(t, a)) {
                true => g.ready.push((t.clone(), a.clone())),
                false => g.waiting += 1,
            }
        }
        let (_, relief_keys) = self.grace_keys(config);
        for (a, k) in self.relief.iter().zip(relief_keys) {
            match ready(&k) {
                true => g.relief_ready.push(a.clone()),
                false => g.relief_waiting += 1,
            }
        }
        g
    }

    /// As apply would split the selected actions by grace, without touching
    /// the marks: `(ready, waiting)` (for the CLI's question).
    pub fn grace_preview(
        &self,
        state: &crate::state::Store,
        config: &Config,
        grace: std::time::Duration,
    ) -> Result<(usize, usize), crate::state::StateError> {
        let marks = state.grace_marks()?;
        let g = self.grace_split(config, grace, |k| marks.get(k).copied());
        Ok((g.ready.len(), g.waiting))
    }

    /// Note every planned action (and relief) as planned now — marks of
    /// what is no longer planned are forgotten, grace needs continuity —
    /// and split what runs by grace.
    fn apply_grace(
        &self,
        state: &crate::state::Store,
        config: &Config,
        grace: std::time::Duration,
    ) -> Result<Graced, crate::state::StateError> {
        let (mut keys, relief) = self.grace_keys(config);
        keys.extend(relief);
        crate::failpoint::hit(
            "retention.state.grace_marks",
            crate::state::StateError::Injected,
        )?;
        let marks = state.update_grace_marks(&keys, self.now)?;
        Ok(self.grace_split(config, grace, |k| marks.get(k).copied()))
    }
}

#[derive(Default)]
struct Graced {
    ready: Vec<(Target, PlannedAction)>,
    waiting: usize,
    relief_ready: Vec<relief::ReliefAction>,
    relief_waiting: usize,
}

fn retention_config(ctx: &JobContext) -> Result<&RetentionConfig, JobError> {
    ctx.config
        .retention
        .as_ref()
        .ok_or_else(|| JobError::Config("no [retention] section in the configuration".into()))
}

/// A line for each action that did not go as planned.
fn note_outcomes(ctx: &JobContext, executed: &Executed) {
    for (t, a, o) in &executed.results {
        let (kind, why) = match o {
            executor::Outcome::Stale(why) => ("dropped (stale)", why),
            executor::Outcome::Unknown(why) => ("UNKNOWN", why),
            executor::Outcome::Failed(why) => ("FAILED", why),
            _ => continue,
        };
        ctx.watch.note(format!(
            "{kind}: {} {}/{}/{} {} {}: {why}",
            a.action.as_str(),
            t.instance,
            t.namespace,
            t.repository,
            a.digest,
            a.tags.join(",")
        ));
    }
}

/// The retention job: plan (inventory, in-use sources, KCR's own rules,
/// quota relief, report), then apply (report stored; in enforce mode or a
/// one-shot apply: caps, grace, deletions, relief).
pub struct RetentionJob;

impl crate::jobs::Steps for RetentionJob {
    const NAME: &'static str = "retention";
    type Plan = RetentionPlan;

    async fn plan(&self, ctx: &JobContext) -> Result<RetentionPlan, JobError> {
        let rc = retention_config(ctx)?;
        let now = ctx.now();
        crate::failpoint::hit("retention.api.list", JobError::Partial)?;
        let inventory = ctx
            .inventory
            .for_config_watched(&ctx.client, &ctx.config, ctx.watch.listing())
            .await;
        ctx.metrics.inventory.snapshot(&inventory);
        for inst in &inventory.instances {
            ctx.metrics.api.reached(&inst.name, inst.error.is_none());
        }
        // Plan only what the instances' declared scope manages.
        let inventory = inventory.within_scope(&ctx.config.instances);
        let in_use = read_in_use(rc, &ctx.config, Some(&ctx.state), now).await;
        let mut plan = planner::plan_in_use(&inventory, rc, now, &in_use, false);
        let enforce = ctx.enforcing(rc.mode);
        // A namespace where KCR's own retention is enabled blocks an
        // enforcing run (unless allowed).
        let found = check_server_side(
            &ctx.client,
            &inventory,
            &ctx.config.instances,
            rc,
            &mut plan,
            enforce,
        )
        .await;
        server_side::export(&ctx.metrics, &inventory, &ctx.config.instances, rc, &found);
        let relief = relief::plan_relief(&inventory, &ctx.config.instances, rc, now);
        export_plan_metrics(ctx, &plan);
        let mut report = Report::from_plan(&plan, rc.mode.as_str(), report_instances(&ctx.config));
        report.config_fingerprint = Some(config_fingerprint(rc));
        report.timezone = Some(ctx.config.kcr.timezone.name().into());
        report.relief = relief.clone();
        let selected = plan_targets(&plan, &ctx.config);
        Ok(RetentionPlan {
            now,
            inventory,
            in_use_blocked: in_use.blocked(),
            plan,
            relief,
            report,
            enforce,
            selected,
            review: None,
        })
    }

    async fn apply(&self, ctx: &JobContext, p: RetentionPlan) -> Result<Outcome, JobError> {
        let rc = retention_config(ctx)?;
        store_report(ctx, &p.report, p.now)?;
        let summary = p.summary();
        // A listing that failed makes the run partial: a failure with the
        // reason, after doing what the complete listings allow.
        let partial = p.plan.partial_reason();
        if !p.enforce {
            let mut text = format!("dry-run: {summary}");
            if let Some(b) = &p.plan.blocked {
                text.push_str(&format!("; enforce would be blocked: {b}"));
            }
            return match partial {
                Some(why) => Err(JobError::Partial(format!("{text}; {why}"))),
                None => Ok(Outcome::Success(text)),
            };
        }
        if let Some(b) = p.blocked(rc) {
            return Ok(Outcome::Blocked(b));
        }
        let g = p.apply_grace(&ctx.state, &ctx.config, rc.grace)?;
        ctx.watch.begin(g.ready.len() as u64);
        let tick = || ctx.watch.tick();
        let env = ExecEnv {
            client: &ctx.client,
            state: &ctx.state,
            metrics: &ctx.metrics,
            cancel: &ctx.cancel,
            job: "retention",
            run_id: ctx.run_id,
            // A reviewed plan is always re-verified: the registry may have moved on.
            verify: rc.verify_before_delete || p.review.is_some(),
            tick: &tick,
        };
        let mut executed = executor::execute(&env, g.ready).await;
        ctx.watch.end();
        executed.waiting = g.waiting;
        note_outcomes(ctx, &executed);
        let relieved = if executed.stopped.is_some() || executed.cancelled {
            relief::Relieved::skipped(g.relief_ready.len())
        } else {
            relief::execute(&env, &ctx.config, g.relief_ready).await
        };
        let relief_done = relieved.done();
        let relief_failed = relieved.failures();
        if executed.done() > 0 || relief_done > 0 {
            ctx.inventory.invalidate().await;
        }
        let mut text = format!(
            "enforce: planned {summary}; {}",
            executed_summary(&executed)
        );
        if !relieved.results.is_empty() || relieved.not_attempted > 0 || g.relief_waiting > 0 {
            text.push_str(&format!(
                "; quota relief: {relief_done} deleted, {} failed, {} waiting for grace",
                relief_failed.len(),
                g.relief_waiting
            ));
            if relieved.not_attempted > 0 {
                text.push_str(&format!(", {} not attempted", relieved.not_attempted));
            }
            if relieved.audit_errors > 0 {
                text.push_str(&format!(
                    ", {} audit records not written",
                    relieved.audit_errors
                ));
            }
        }
        if let Some(why) = &relieved.stopped {
            text.push_str(&format!("; {why}"));
        }
        for f in &relief_failed {
            text.push_str(&format!("; FAILED {f}"));
        }
        if executed.cancelled || relieved.cancelled {
            return Err(JobError::Stopped(text));
        }
        if executed.has_failures() || relieved.has_failures() {
            return Err(JobError::Actions {
                summary: text,
                code: "actions",
            });
        }
        if let Some(why) = partial {
            return Err(JobError::Partial(format!("{text}; {why}")));
        }
        Ok(Outcome::Success(text))
    }
}
