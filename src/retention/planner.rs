//! The retention planner: inventory + rules + `now` → plan. Pure: no I/O, no
//! clock. Implements DESIGN §6 clause by clause; every action and every kept
//! image carries the rule and a human reason, and the same input always gives
//! the same plan.

use crate::config::{RetentionConfig, RetentionRule, RuleAction};
use crate::inventory::{ImageInfo, Inventory};
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    DeleteImage,
    DeleteTag,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::DeleteImage => "delete_image",
            ActionKind::DeleteTag => "delete_tag",
        }
    }
}

/// One mutation the plan asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedAction {
    pub action: ActionKind,
    pub digest: String,
    /// `delete_image`: every tag the image had; `delete_tag`: the one tag.
    pub tags: Vec<String>,
    /// Bytes freed: the image size for `delete_image`, 0 for `delete_tag`.
    pub size: u64,
    pub pushed_at: DateTime<Utc>,
    pub rules: Vec<String>,
    pub reason: String,
}

/// Why a tag (or an untagged image) is kept or condemned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// No rule judges it: kept.
    Unmatched,
    /// A veto: protect.tags, min_age or the newest-images guard.
    Protected { reason: String },
    /// A keep rule keeps it.
    Kept { rule: String, reason: String },
    /// Delete rules match it, but not every bound holds.
    Spared { rules: Vec<String>, reason: String },
    /// Delete rules condemn it and nothing vetoes.
    Condemned { rules: Vec<String>, reason: String },
}

impl Verdict {
    pub fn is_condemned(&self) -> bool {
        matches!(self, Verdict::Condemned { .. })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagDecision {
    pub tag: String,
    #[serde(flatten)]
    pub verdict: Verdict,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageOutcome {
    Kept,
    DeleteImage,
    DeleteTags,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDecision {
    pub digest: String,
    pub size: u64,
    pub pushed_at: DateTime<Utc>,
    pub outcome: ImageOutcome,
    pub tags: Vec<TagDecision>,
    /// For an image without tags: the verdict on the image itself.
    pub untagged: Option<Verdict>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepositoryPlan {
    pub instance: String,
    pub namespace: String,
    pub repository: String,
    pub images: usize,
    /// Empty when blocked or skipped.
    pub actions: Vec<PlannedAction>,
    pub decisions: Vec<ImageDecision>,
    /// The ratio guard stopped every action in this repository.
    pub blocked: Option<String>,
    /// The listing failed or changed mid-way: nothing planned.
    pub skipped: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub generated_at: DateTime<Utc>,
    pub repositories: Vec<RepositoryPlan>,
    /// `max_deletions_per_run` exceeded: the whole run is blocked.
    pub blocked: Option<String>,
    /// Rules that judged nothing in this inventory (worth a warning).
    pub idle_rules: Vec<String>,
}

impl Plan {
    pub fn actions(&self) -> impl Iterator<Item = (&RepositoryPlan, &PlannedAction)> {
        self.repositories
            .iter()
            .flat_map(|r| r.actions.iter().map(move |a| (r, a)))
    }
    pub fn count(&self, kind: ActionKind) -> usize {
        self.actions().filter(|(_, a)| a.action == kind).count()
    }
    pub fn reclaimable_bytes(&self) -> u64 {
        self.actions().map(|(_, a)| a.size).sum()
    }
}

fn age_text(d: ChronoDuration) -> String {
    let secs = d.num_seconds();
    if secs < 0 {
        "in the future".into()
    } else if secs >= 86_400 {
        format!("{}d", secs / 86_400)
    } else if secs >= 3600 {
        format!("{}h", secs / 3600)
    } else {
        format!("{}m", secs / 60)
    }
}

fn dur_text(d: Duration) -> String {
    crate::duration::format(d)
}

fn chrono(d: Duration) -> ChronoDuration {
    ChronoDuration::from_std(d).unwrap_or(ChronoDuration::MAX)
}

fn rule_applies(rule: &RetentionRule, namespace: &str, repository: &str) -> bool {
    (rule.namespaces.is_empty() || rule.namespaces.iter().any(|p| p.is_match(namespace)))
        && (rule.repositories.is_empty()
            || rule.repositories.iter().any(|p| p.is_match(repository)))
        && !rule
            .exclude_repositories
            .iter()
            .any(|p| p.is_match(repository))
}

/// The group a tag belongs to under `group_by`, if the tag matches.
fn tag_group<'t>(rule: &RetentionRule, group: &str, tag: &'t str) -> Option<&'t str> {
    rule.tags
        .as_ref()?
        .iter()
        .find_map(|p| p.capture(tag, group))
}

fn tag_matches(rule: &RetentionRule, tag: &str) -> bool {
    match &rule.tags {
        None => true,
        Some(ps) => ps.iter().any(|p| p.is_match(tag)),
    }
}

/// What the rules said about one tag (or an untagged image) before vetoes.
#[derive(Default, Clone)]
struct Judgement {
    kept: Option<(String, String)>,
    condemned: Vec<(String, String)>,
    spared: Vec<(String, String)>,
}

impl Judgement {
    fn judge(&mut self, rule: &RetentionRule, rank: usize, age: ChronoDuration) {
        match rule.action {
            RuleAction::Delete => {
                let mut holds = Vec::new();
                let mut fails = None;
                if let Some(k) = rule.keep_latest {
                    if rank >= k as usize {
                        holds.push(format!("rank {rank} ≥ keep_latest {k}"));
                    } else {
                        fails = Some(format!("rank {rank} < keep_latest {k}"));
                    }
                }
                if let Some(d) = rule.older_than {
                    if age > chrono(d) {
                        holds.push(format!(
                            "age {} > older_than {}",
                            age_text(age),
                            dur_text(d)
                        ));
                    } else if fails.is_none() {
                        fails = Some(format!(
                            "age {} ≤ older_than {}",
                            age_text(age),
                            dur_text(d)
                        ));
                    }
                }
                match fails {
                    None => self.condemned.push((
                        rule.name.clone(),
                        format!("rule {}: {}", rule.name, holds.join(", ")),
                    )),
                    Some(f) => self
                        .spared
                        .push((rule.name.clone(), format!("rule {}: {f}", rule.name))),
                }
            }
            RuleAction::Keep => {
                if self.kept.is_some() {
                    return;
                }
                let reason = if rule.keep_latest.is_none() && rule.newer_than.is_none() {
                    Some("keeps every matched tag".to_owned())
                } else {
                    let by_rank = rule
                        .keep_latest
                        .filter(|k| rank < *k as usize)
                        .map(|k| format!("rank {rank} < keep_latest {k}"));
                    let by_age = rule
                        .newer_than
                        .filter(|d| age < chrono(*d))
                        .map(|d| format!("age {} < newer_than {}", age_text(age), dur_text(d)));
                    by_rank.or(by_age)
                };
                if let Some(r) = reason {
                    self.kept = Some((rule.name.clone(), format!("rule {}: {r}", rule.name)));
                }
            }
        }
    }

    fn verdict(self, veto: Option<String>) -> Verdict {
        if let Some(reason) = veto {
            return Verdict::Protected { reason };
        }
        if let Some((rule, reason)) = self.kept {
            return Verdict::Kept { rule, reason };
        }
        if !self.condemned.is_empty() {
            let (rules, reasons): (Vec<String>, Vec<String>) = self.condemned.into_iter().unzip();
            return Verdict::Condemned {
                rules,
                reason: reasons.join("; "),
            };
        }
        if !self.spared.is_empty() {
            let (rules, reasons): (Vec<String>, Vec<String>) = self.spared.into_iter().unzip();
            return Verdict::Spared {
                rules,
                reason: reasons.join("; "),
            };
        }
        Verdict::Unmatched
    }
}

/// Plan one repository. `images` must be newest first, ties by digest.
pub fn plan_repository(
    cfg: &RetentionConfig,
    rules: &[&RetentionRule],
    images: &[ImageInfo],
    now: DateTime<Utc>,
    used: &mut [bool],
) -> (Vec<ImageDecision>, Vec<PlannedAction>) {
    let n = images.len();
    let mut tag_judgements: Vec<Vec<Judgement>> = images
        .iter()
        .map(|i| vec![Judgement::default(); i.tags.len()])
        .collect();
    let mut untagged_judgements: Vec<Judgement> = vec![Judgement::default(); n];
    let ages: Vec<ChronoDuration> = images
        .iter()
        .map(|i| now.signed_duration_since(i.pushed_at))
        .collect();

    for (ri, rule) in rules.iter().enumerate() {
        if rule.untagged {
            let mut rank = 0;
            for (i, img) in images.iter().enumerate() {
                if img.tags.is_empty() {
                    untagged_judgements[i].judge(rule, rank, ages[i]);
                    rank += 1;
                    used[ri] = true;
                }
            }
        } else if let Some(group) = &rule.group_by {
            let mut counts: HashMap<&str, usize> = HashMap::new();
            for (i, img) in images.iter().enumerate() {
                let mut seen: Vec<&str> = Vec::new();
                for (t, tag) in img.tags.iter().enumerate() {
                    if let Some(g) = tag_group(rule, group, tag) {
                        let rank = counts.get(g).copied().unwrap_or(0);
                        tag_judgements[i][t].judge(rule, rank, ages[i]);
                        used[ri] = true;
                        if !seen.contains(&g) {
                            seen.push(g);
                        }
                    }
                }
                for g in seen {
                    *counts.entry(g).or_insert(0) += 1;
                }
            }
        } else {
            let mut rank = 0;
            for (i, img) in images.iter().enumerate() {
                let mut matched = false;
                for (t, tag) in img.tags.iter().enumerate() {
                    if tag_matches(rule, tag) {
                        tag_judgements[i][t].judge(rule, rank, ages[i]);
                        matched = true;
                    }
                }
                if matched {
                    rank += 1;
                    used[ri] = true;
                }
            }
        }
    }

    let mut decisions = Vec::with_capacity(n);
    let mut actions = Vec::new();
    let newest = cfg.protect.newest_images_per_repository as usize;
    let min_age = chrono(cfg.min_age);
    for (i, img) in images.iter().enumerate() {
        let image_veto = if i < newest {
            Some(format!(
                "among the {newest} newest image{} of the repository",
                if newest == 1 { "" } else { "s" }
            ))
        } else if ages[i] < min_age {
            Some(format!(
                "pushed {} ago, younger than min_age {}",
                age_text(ages[i]),
                dur_text(cfg.min_age)
            ))
        } else {
            None
        };
        let judgements = std::mem::take(&mut tag_judgements[i]);
        let tags: Vec<TagDecision> = img
            .tags
            .iter()
            .zip(judgements)
            .map(|(tag, j)| {
                let veto = image_veto.clone().or_else(|| {
                    cfg.protect
                        .tags
                        .iter()
                        .find(|p| p.is_match(tag))
                        .map(|p| format!("matches protect.tags {:?}", p.as_str()))
                });
                TagDecision {
                    tag: tag.clone(),
                    verdict: j.verdict(veto),
                }
            })
            .collect();
        let untagged = img
            .tags
            .is_empty()
            .then(|| std::mem::take(&mut untagged_judgements[i]).verdict(image_veto.clone()));
        let condemned: Vec<&TagDecision> =
            tags.iter().filter(|t| t.verdict.is_condemned()).collect();
        let outcome = if let Some(v) = &untagged {
            if let Verdict::Condemned { rules, reason } = v {
                actions.push(PlannedAction {
                    action: ActionKind::DeleteImage,
                    digest: img.digest.clone(),
                    tags: Vec::new(),
                    size: img.size,
                    pushed_at: img.pushed_at,
                    rules: rules.clone(),
                    reason: format!("untagged; {reason}"),
                });
                ImageOutcome::DeleteImage
            } else {
                ImageOutcome::Kept
            }
        } else if !condemned.is_empty() && condemned.len() == tags.len() {
            let mut rules: Vec<String> = Vec::new();
            for t in &condemned {
                if let Verdict::Condemned { rules: r, .. } = &t.verdict {
                    for name in r {
                        if !rules.contains(name) {
                            rules.push(name.clone());
                        }
                    }
                }
            }
            let reason = condemned
                .iter()
                .map(|t| match &t.verdict {
                    Verdict::Condemned { reason, .. } => format!("{}: {reason}", t.tag),
                    _ => unreachable!("filtered to condemned"),
                })
                .collect::<Vec<_>>()
                .join("; ");
            actions.push(PlannedAction {
                action: ActionKind::DeleteImage,
                digest: img.digest.clone(),
                tags: img.tags.clone(),
                size: img.size,
                pushed_at: img.pushed_at,
                rules,
                reason: format!("every tag condemned; {reason}"),
            });
            ImageOutcome::DeleteImage
        } else if !condemned.is_empty() {
            for t in &condemned {
                if let Verdict::Condemned { rules, reason } = &t.verdict {
                    actions.push(PlannedAction {
                        action: ActionKind::DeleteTag,
                        digest: img.digest.clone(),
                        tags: vec![t.tag.clone()],
                        size: 0,
                        pushed_at: img.pushed_at,
                        rules: rules.clone(),
                        reason: reason.clone(),
                    });
                }
            }
            ImageOutcome::DeleteTags
        } else {
            ImageOutcome::Kept
        };
        decisions.push(ImageDecision {
            digest: img.digest.clone(),
            size: img.size,
            pushed_at: img.pushed_at,
            outcome,
            tags,
            untagged,
        });
    }
    (decisions, actions)
}

/// Plan the whole inventory (actions only; see [`plan_explained`]).
pub fn plan(inventory: &Inventory, cfg: &RetentionConfig, now: DateTime<Utc>) -> Plan {
    plan_with(inventory, cfg, now, false)
}

/// Plan, keeping every image's and tag's verdict for `explain` and reports.
pub fn plan_explained(inventory: &Inventory, cfg: &RetentionConfig, now: DateTime<Utc>) -> Plan {
    plan_with(inventory, cfg, now, true)
}

fn plan_with(
    inventory: &Inventory,
    cfg: &RetentionConfig,
    now: DateTime<Utc>,
    explain: bool,
) -> Plan {
    let mut used = vec![false; cfg.rules.len()];
    let mut repositories = Vec::new();
    let mut instances: Vec<_> = inventory.instances.iter().collect();
    instances.sort_by(|a, b| a.name.cmp(&b.name));
    for inst in instances {
        let mut namespaces: Vec<_> = inst.namespaces.iter().collect();
        namespaces.sort_by(|a, b| a.name.cmp(&b.name));
        for ns in namespaces {
            let mut repos: Vec<_> = ns.repositories.iter().collect();
            repos.sort_by(|a, b| a.name.cmp(&b.name));
            for repo in repos {
                let mut rp = RepositoryPlan {
                    instance: inst.name.clone(),
                    namespace: ns.name.clone(),
                    repository: repo.name.clone(),
                    images: repo.images.len(),
                    actions: Vec::new(),
                    decisions: Vec::new(),
                    blocked: None,
                    skipped: repo.skipped.clone(),
                };
                if rp.skipped.is_none() {
                    let applicable: Vec<(usize, &RetentionRule)> = cfg
                        .rules
                        .iter()
                        .enumerate()
                        .filter(|(_, r)| rule_applies(r, &ns.name, &repo.name))
                        .collect();
                    let rules: Vec<&RetentionRule> = applicable.iter().map(|(_, r)| *r).collect();
                    let mut local_used = vec![false; rules.len()];
                    let mut images = repo.images.clone();
                    crate::inventory::sort_images(&mut images);
                    let (decisions, actions) =
                        plan_repository(cfg, &rules, &images, now, &mut local_used);
                    for ((idx, _), u) in applicable.iter().zip(local_used) {
                        used[*idx] |= u;
                    }
                    let deletes = actions
                        .iter()
                        .filter(|a| a.action == ActionKind::DeleteImage)
                        .count();
                    let limit = cfg.max_deletion_ratio * rp.images as f64;
                    if deletes as f64 > limit {
                        rp.blocked = Some(format!(
                            "{deletes} of {} images would be deleted, over max_deletion_ratio {}",
                            rp.images, cfg.max_deletion_ratio
                        ));
                    } else {
                        rp.actions = actions;
                    }
                    if explain {
                        rp.decisions = decisions;
                    }
                }
                repositories.push(rp);
            }
        }
    }
    let total: usize = repositories.iter().map(|r| r.actions.len()).sum();
    let blocked = (total as u64 > cfg.max_deletions_per_run).then(|| {
        format!(
            "{total} actions planned, over max_deletions_per_run {}: nothing will be deleted",
            cfg.max_deletions_per_run
        )
    });
    let idle_rules = cfg
        .rules
        .iter()
        .zip(&used)
        .filter(|(_, u)| !**u)
        .map(|(r, _)| r.name.clone())
        .collect();
    Plan {
        generated_at: now,
        repositories,
        blocked,
        idle_rules,
    }
}
