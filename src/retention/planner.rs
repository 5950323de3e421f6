//! The retention planner: inventory + rules + `now` → plan. Pure: no I/O, no
//! clock. Implements DESIGN §6 clause by clause; every action and every kept
//! image carries the rule and a human reason, and the same input always gives
//! the same plan.

use super::in_use::InUse;
use crate::config::{OrderBy, RetentionConfig, RetentionRule, RuleAction};
use crate::inventory::{Digest, ImageInfo, Inventory, Tag, Tags};
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

/// One mutation the plan asks for, compact: it shares the image's tags with
/// the inventory and keeps the evidence (rule, rank) rather than the text, so
/// a plan of a million images stays small. [`Plan::materialize`] writes the
/// rules and the human reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Action {
    pub kind: ActionKind,
    /// `delete_tag`: the index in `image_tags` of the tag to delete.
    tag: u32,
    pub digest: Digest,
    /// Every tag the image had when planned.
    pub image_tags: Tags,
    /// The image's size.
    pub size: u64,
    pub pushed_at: DateTime<Utc>,
    /// The condemning judgements, in tag order then rule order.
    why: Box<[Evidence]>,
}

/// One rule's condemning judgement of one tag (`UNTAGGED` for the image itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Evidence {
    tag: u32,
    rule: u32,
    rank: u32,
}

const UNTAGGED: u32 = u32::MAX;

impl Action {
    /// `delete_image`: every tag the image had; `delete_tag`: the one tag.
    pub fn tags(&self) -> &[Tag] {
        match self.kind {
            ActionKind::DeleteImage => &self.image_tags,
            ActionKind::DeleteTag => std::slice::from_ref(&self.image_tags[self.tag as usize]),
        }
    }

    /// Bytes the action frees: the image size for `delete_image`, 0 for `delete_tag`.
    pub fn freed_bytes(&self) -> u64 {
        match self.kind {
            ActionKind::DeleteImage => self.size,
            ActionKind::DeleteTag => 0,
        }
    }
}

fn evidence(tag: u32, j: &Judgement) -> impl Iterator<Item = Evidence> + '_ {
    j.condemned
        .iter()
        .map(move |&(rule, rank)| Evidence { tag, rule, rank })
}

/// What a reason needs to know about a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleBounds {
    pub name: String,
    pub action: RuleAction,
    pub keep_latest: Option<u32>,
    pub older_than: Option<Duration>,
    pub newer_than: Option<Duration>,
    pub order_by: OrderBy,
}

impl From<&RetentionRule> for RuleBounds {
    fn from(r: &RetentionRule) -> Self {
        RuleBounds {
            name: r.name.clone(),
            action: r.action,
            keep_latest: r.keep_latest,
            older_than: r.older_than,
            newer_than: r.newer_than,
            order_by: r.order_by,
        }
    }
}

/// One mutation, written out: what reports, plan files and the executor use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedAction {
    pub action: ActionKind,
    pub digest: String,
    /// `delete_image`: every tag the image had; `delete_tag`: the one tag.
    pub tags: Vec<String>,
    /// Every tag the image had when planned: verification drops the action if they changed.
    #[serde(default)]
    pub image_tags: Vec<String>,
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
    pub digest: Digest,
    pub size: u64,
    pub pushed_at: DateTime<Utc>,
    pub outcome: ImageOutcome,
    pub tags: Vec<TagDecision>,
    /// For an image without tags: the verdict on the image itself.
    pub untagged: Option<Verdict>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepositoryPlan {
    pub instance: String,
    pub namespace: String,
    pub repository: String,
    pub images: usize,
    /// Empty when blocked or skipped.
    pub actions: Vec<Action>,
    /// When the ratio guard blocked the repository: the actions it stopped
    /// (listed for review, never applied).
    pub blocked_actions: Vec<Action>,
    pub decisions: Vec<ImageDecision>,
    /// The ratio guard stopped every action in this repository.
    pub blocked: Option<String>,
    /// The listing failed or changed mid-way: nothing planned.
    pub skipped: Option<String>,
    /// Images rules condemn (whole or some tags) that are kept because they
    /// are in use (`[retention.in_use]`).
    pub in_use: Vec<InUseVeto>,
}

/// An image the in-use veto kept from deletion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InUseVeto {
    pub digest: Digest,
    pub tags: Tags,
    /// `in use (source: …, last seen …)`.
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub generated_at: DateTime<Utc>,
    /// The config's rules, by index: what the actions' evidence refers to.
    pub rules: Vec<RuleBounds>,
    pub repositories: Vec<RepositoryPlan>,
    /// `max_deletions_per_run` exceeded: the whole run is blocked.
    pub blocked: Option<String>,
    /// Listings that failed above the repository level (`instance: why`,
    /// `instance/namespace: why`): nothing below them is known.
    pub skipped: Vec<String>,
    /// Rules that judged nothing in this inventory (worth a warning). A rule
    /// whose scope was not listed completely is never called idle.
    pub idle_rules: Vec<String>,
    /// Server-side (KCR) retention found in the namespaces in scope
    /// ([`apply_server_side`]); empty until then.
    pub server_side: Vec<ServerSide>,
}

/// What KCR's own (server-side) retention does in one namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSide {
    pub instance: String,
    /// `*` for an instance whose endpoint does not offer DescribeRetentionRule.
    pub namespace: String,
    pub state: ServerSideState,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerSideState {
    /// Enabled rules (one line each) and, when known, when they run
    /// (`runs 0 0 * * *`) or why that is unknown (`trigger unreadable: AccessDenied`).
    Enabled {
        rules: Vec<String>,
        trigger: Option<String>,
    },
    /// The endpoint does not offer DescribeRetentionRule: unknown, blocks nothing.
    NotSupported(String),
    /// The rules could not be read (an API error): unknown, and in enforce
    /// mode blocks the namespace as an enabled rule would.
    Unreadable(String),
}

impl ServerSide {
    /// Does this keep our enforce mode out of the namespace (unless allowed)?
    pub fn blocks(&self) -> bool {
        matches!(
            self.state,
            ServerSideState::Enabled { .. } | ServerSideState::Unreadable(_)
        )
    }

    /// One line for reports and `explain`.
    pub fn line(&self) -> String {
        let at = format!("{}/{}", self.instance, self.namespace);
        match &self.state {
            ServerSideState::Enabled { rules, trigger } => format!(
                "{at}: {} enabled server-side retention rule{} ({}){}",
                rules.len(),
                if rules.len() == 1 { "" } else { "s" },
                rules.join("; "),
                trigger
                    .as_deref()
                    .map(|t| format!(", {t}"))
                    .unwrap_or_default()
            ),
            ServerSideState::NotSupported(code) => format!(
                "{at}: server-side retention unknown (the endpoint does not offer DescribeRetentionRule: {code})"
            ),
            ServerSideState::Unreadable(why) => {
                format!("{at}: server-side retention rules could not be read: {why}")
            }
        }
    }
}

/// Record the server-side retention found and, when `block` (enforce mode
/// without `allow_server_side_rules`), block every repository with actions
/// in a namespace whose server-side rules are enabled or unreadable: two
/// engines deleting in one namespace cannot both honour their keep rules.
/// Unreadable rules in a namespace with actions also make an enforcing run
/// partial ([`Plan::skipped`]).
pub fn apply_server_side(
    plan: &mut Plan,
    found: Vec<ServerSide>,
    block: bool,
    max_deletions_per_run: u64,
) {
    if block {
        let mut partial: Vec<String> = Vec::new();
        for rp in &mut plan.repositories {
            let hit = found
                .iter()
                .find(|s| s.blocks() && s.instance == rp.instance && s.namespace == rp.namespace);
            if let Some(s) = hit
                && !rp.actions.is_empty()
            {
                rp.blocked = Some(format!(
                    "{}; set [retention] allow_server_side_rules = true to let both engines delete here",
                    s.line()
                ));
                rp.actions.clear();
                // Rules that could not be read leave it unknown whether
                // deleting here is safe: the run is partial, not a success.
                if let ServerSideState::Unreadable(_) = s.state {
                    let line = s.line();
                    if !partial.contains(&line) {
                        partial.push(line);
                    }
                }
            }
        }
        plan.skipped.extend(partial);
        // A run-level block (budget, a failed in-use source) stands: fewer
        // actions never lift it here (the safe direction).
        let _ = max_deletions_per_run;
    }
    plan.server_side = found;
}

impl Plan {
    pub fn actions(&self) -> impl Iterator<Item = (&RepositoryPlan, &Action)> {
        self.repositories
            .iter()
            .flat_map(|r| r.actions.iter().map(move |a| (r, a)))
    }
    pub fn count(&self, kind: ActionKind) -> usize {
        self.actions().filter(|(_, a)| a.kind == kind).count()
    }
    pub fn reclaimable_bytes(&self) -> u64 {
        self.actions().map(|(_, a)| a.freed_bytes()).sum()
    }

    /// Everything that could not be listed completely: instances and
    /// namespaces first, then repositories (`instance/namespace/repository: why`),
    /// but for refusals the config declares expected (outside an instance's
    /// `scope`), which reports list and runs accept.
    /// Not empty means the run is partial (exit 1, run result `failure`).
    pub fn incomplete(&self) -> Vec<String> {
        let unexpected = |s: &&String| !crate::inventory::is_expected_skip(s);
        let mut out: Vec<String> = self
            .skipped
            .iter()
            .filter(|s| {
                let why = s.split_once(": ").map_or(s.as_str(), |(_, why)| why);
                !crate::inventory::is_expected_skip(why)
            })
            .cloned()
            .collect();
        out.extend(self.repositories.iter().filter_map(|r| {
            r.skipped
                .as_ref()
                .filter(unexpected)
                .map(|s| format!("{}/{}/{}: {s}", r.instance, r.namespace, r.repository))
        }));
        out
    }

    /// Why the run is partial, in one line, if it is.
    pub fn partial_reason(&self) -> Option<String> {
        let all = self.incomplete();
        match all.len() {
            0 => None,
            n => Some(format!(
                "partial: {n} listing{} failed, nothing planned below {}: {}",
                if n == 1 { "" } else { "s" },
                if n == 1 { "it" } else { "them" },
                all.join("; ")
            )),
        }
    }

    /// Write an action out with its rules and human reason.
    pub fn materialize(&self, a: &Action) -> PlannedAction {
        let age = self.generated_at.signed_duration_since(a.pushed_at);
        let mut rules: Vec<String> = Vec::new();
        for e in a.why.iter() {
            let name = &self.rules[e.rule as usize].name;
            if !rules.contains(name) {
                rules.push(name.clone());
            }
        }
        let reasons = |tag: u32| {
            a.why
                .iter()
                .filter(|e| e.tag == tag)
                .map(|e| reason(&self.rules[e.rule as usize], e.rank as usize, age))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let reason = match a.kind {
            ActionKind::DeleteImage if a.image_tags.is_empty() => {
                format!("untagged; {}", reasons(UNTAGGED))
            }
            ActionKind::DeleteImage => {
                let per_tag: Vec<String> = a
                    .image_tags
                    .iter()
                    .enumerate()
                    .map(|(t, tag)| format!("{tag}: {}", reasons(t as u32)))
                    .collect();
                format!("every tag condemned; {}", per_tag.join("; "))
            }
            ActionKind::DeleteTag => reasons(a.tag),
        };
        PlannedAction {
            action: a.kind,
            digest: a.digest.to_string(),
            tags: a.tags().iter().map(|t| t.to_string()).collect(),
            image_tags: a.image_tags.iter().map(|t| t.to_string()).collect(),
            size: a.freed_bytes(),
            pushed_at: a.pushed_at,
            rules,
            reason,
        }
    }

    /// Every action written out, in plan order.
    pub fn planned_actions(&self) -> impl Iterator<Item = (&RepositoryPlan, PlannedAction)> {
        self.actions().map(|(r, a)| (r, self.materialize(a)))
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

pub fn namespace_applies(rule: &RetentionRule, namespace: &str) -> bool {
    rule.namespaces.is_empty() || rule.namespaces.iter().any(|p| p.is_match(namespace))
}

/// Whether a rule's scope covers `namespace/repository` (DESIGN §6.1).
pub fn rule_applies(rule: &RetentionRule, namespace: &str, repository: &str) -> bool {
    namespace_applies(rule, namespace)
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

/// A rule's judgement of one tag: which rule (index into the config's rules)
/// and the rank it saw. Reasons are written only when needed.
type Mark = (u32, u32);

/// What the rules said about one tag (or an untagged image) before vetoes.
#[derive(Default, Clone)]
struct Judgement {
    kept: Option<Mark>,
    condemned: Vec<Mark>,
    spared: Vec<Mark>,
}

fn delete_holds(rule: &RuleBounds, rank: usize, age: ChronoDuration) -> bool {
    rule.keep_latest.is_none_or(|k| rank >= k as usize)
        && rule.older_than.is_none_or(|d| age > chrono(d))
}

fn keep_holds(rule: &RuleBounds, rank: usize, age: ChronoDuration) -> bool {
    (rule.keep_latest.is_none() && rule.newer_than.is_none())
        || rule.keep_latest.is_some_and(|k| rank < k as usize)
        || rule.newer_than.is_some_and(|d| age < chrono(d))
}

/// The human reason for a rule's judgement.
fn reason(rule: &RuleBounds, rank: usize, age: ChronoDuration) -> String {
    let mut parts = Vec::new();
    // The rank as the rule counts it: by push time, or in version order.
    let rank = RankText(rank, rule.order_by);
    match rule.action {
        RuleAction::Delete => {
            let condemned = delete_holds(rule, rank.0, age);
            if let Some(k) = rule.keep_latest {
                match (rank.0 >= k as usize, condemned) {
                    (true, true) => parts.push(format!("{rank}, beyond keep_latest {k}")),
                    (false, false) => parts.push(format!("{rank}, within keep_latest {k}")),
                    _ => {}
                }
            }
            if let Some(d) = rule.older_than {
                match (age > chrono(d), condemned) {
                    (true, true) => parts.push(format!(
                        "age {} > older_than {}",
                        age_text(age),
                        dur_text(d)
                    )),
                    (false, false) if parts.is_empty() => parts.push(format!(
                        "age {} ≤ older_than {}",
                        age_text(age),
                        dur_text(d)
                    )),
                    _ => {}
                }
            }
        }
        RuleAction::Keep => {
            if rule.keep_latest.is_none() && rule.newer_than.is_none() {
                parts.push("keeps every matched tag".into());
            } else if let Some(k) = rule.keep_latest.filter(|k| rank.0 < *k as usize) {
                parts.push(format!("{rank}, within keep_latest {k}"));
            } else if let Some(d) = rule.newer_than {
                parts.push(format!(
                    "age {} < newer_than {}",
                    age_text(age),
                    dur_text(d)
                ));
            }
        }
    }
    format!("rule {}: {}", rule.name, parts.join(", "))
}

/// A 0-based rank as people count it, from 1: `newest`, `2nd newest`,
/// `4th highest version`. The planner keeps counting from 0 (rank `r` is
/// condemned when `r >= keep_latest`); only the text changes.
struct RankText(usize, OrderBy);

impl std::fmt::Display for RankText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.1 {
            OrderBy::Pushed => "newest",
            OrderBy::Semver => "highest version",
        };
        match self.0 + 1 {
            1 => f.write_str(what),
            n => write!(f, "{n}{} {what}", ordinal_suffix(n)),
        }
    }
}

/// `st`, `nd`, `rd` or `th`: 1st, 2nd, 3rd, 4th, 11th, 12th, 13th, 21st, 112th.
fn ordinal_suffix(n: usize) -> &'static str {
    match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    }
}

impl Judgement {
    fn judge(&mut self, ri: usize, rule: &RuleBounds, rank: usize, age: ChronoDuration) {
        let mark = (ri as u32, rank as u32);
        match rule.action {
            RuleAction::Delete if delete_holds(rule, rank, age) => self.condemned.push(mark),
            RuleAction::Delete => self.spared.push(mark),
            RuleAction::Keep if self.kept.is_none() && keep_holds(rule, rank, age) => {
                self.kept = Some(mark)
            }
            RuleAction::Keep => {}
        }
    }

    /// Condemned after vetoes (a keep rule or a veto wins).
    fn condemned(&self, vetoed: bool) -> bool {
        !vetoed && self.kept.is_none() && !self.condemned.is_empty()
    }

    fn rule_names(marks: &[Mark], rules: &[RuleBounds]) -> Vec<String> {
        marks
            .iter()
            .map(|(ri, _)| rules[*ri as usize].name.clone())
            .collect()
    }

    fn reasons(marks: &[Mark], rules: &[RuleBounds], age: ChronoDuration) -> String {
        marks
            .iter()
            .map(|(ri, rank)| reason(&rules[*ri as usize], *rank as usize, age))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn verdict(&self, veto: Option<String>, rules: &[RuleBounds], age: ChronoDuration) -> Verdict {
        if let Some(reason) = veto {
            return Verdict::Protected { reason };
        }
        if let Some((ri, rank)) = self.kept {
            let rule = &rules[ri as usize];
            return Verdict::Kept {
                rule: rule.name.clone(),
                reason: reason(rule, rank as usize, age),
            };
        }
        if !self.condemned.is_empty() {
            return Verdict::Condemned {
                rules: Self::rule_names(&self.condemned, rules),
                reason: Self::reasons(&self.condemned, rules, age),
            };
        }
        if !self.spared.is_empty() {
            return Verdict::Spared {
                rules: Self::rule_names(&self.spared, rules),
                reason: Self::reasons(&self.spared, rules, age),
            };
        }
        Verdict::Unmatched
    }
}

/// Why an image (every tag on it) is protected, if it is.
fn image_veto(cfg: &RetentionConfig, index: usize, age: ChronoDuration) -> Option<String> {
    let newest = cfg.protect.newest_images_per_repository as usize;
    if index < newest {
        Some(format!(
            "among the {newest} newest image{} of the repository",
            if newest == 1 { "" } else { "s" }
        ))
    } else if age < chrono(cfg.min_age) {
        Some(format!(
            "pushed {} ago, younger than min_age {}",
            age_text(age),
            dur_text(cfg.min_age)
        ))
    } else {
        None
    }
}

fn tag_veto(cfg: &RetentionConfig, tag: &str) -> Option<String> {
    cfg.protect
        .tags
        .iter()
        .find(|p| p.is_match(tag))
        .map(|p| format!("matches protect.tags {:?}", p.as_str()))
}

/// A tag's SemVer 2.0 version: `1.2.3`, `v1.2.3`, `1.2.3-rc.1`, `1.2.3+build`.
/// Compare versions with [`semver::Version::cmp_precedence`], which ignores
/// build metadata as SemVer 2.0 says (the `Ord` of `Version` does not).
pub fn tag_version(tag: &str) -> Option<semver::Version> {
    semver::Version::parse(tag.strip_prefix('v').unwrap_or(tag)).ok()
}

/// `order_by = "semver"`: sort image indices (into `images`, newest push
/// first) highest version first; images without a version after every
/// version; ties (equal precedence, or no version) by push order.
fn version_order(order: &mut [(usize, Option<semver::Version>)]) {
    order.sort_by(|(ia, va), (ib, vb)| {
        let by_version = match (va, vb) {
            (Some(a), Some(b)) => b.cmp_precedence(a),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        };
        by_version.then(ia.cmp(ib))
    });
}

/// The highest version (by precedence) among `tags`.
fn max_version<'t>(tags: impl Iterator<Item = &'t str>) -> Option<semver::Version> {
    tags.filter_map(tag_version)
        .max_by(|a, b| a.cmp_precedence(b))
}

/// Rank a rule's matched images (DESIGN §6.2–3) and call `judge(image,
/// tag, rank)` for every tag the rule matches (`tag` = `u32::MAX` for an
/// untagged image under an `untagged` rule). `images` must be newest first,
/// ties by digest.
fn rank_tags(rule: &RetentionRule, images: &[ImageInfo], mut judge: impl FnMut(usize, u32, usize)) {
    let semver = rule.order_by == OrderBy::Semver;
    if rule.untagged {
        let untagged = images.iter().enumerate().filter(|(_, i)| i.tags.is_empty());
        for (rank, (i, _)) in untagged.enumerate() {
            judge(i, UNTAGGED, rank);
        }
    } else if let (Some(group), false) = (&rule.group_by, semver) {
        // By push time: the images are newest first, so an image's rank in
        // a group is how many newer images that group has already seen —
        // one pass, no per-image allocation (the general path below cost the
        // 10^6-image benchmark about 20 %).
        let mut counts: HashMap<&str, usize> = HashMap::new();
        let mut seen: Vec<&str> = Vec::new();
        for (i, img) in images.iter().enumerate() {
            seen.clear();
            for (t, tag) in img.tags.iter().enumerate() {
                if let Some(g) = tag_group(rule, group, tag) {
                    judge(i, t as u32, counts.get(g).copied().unwrap_or(0));
                    if !seen.contains(&g) {
                        seen.push(g);
                    }
                }
            }
            for &g in &seen {
                *counts.entry(g).or_insert(0) += 1;
            }
        }
    } else if let Some(group) = &rule.group_by {
        // In version order: each image's matching tags, with their group.
        let grouped: Vec<Vec<(u32, &str)>> = images
            .iter()
            .map(|img| {
                img.tags
                    .iter()
                    .enumerate()
                    .filter_map(|(t, tag)| tag_group(rule, group, tag).map(|g| (t as u32, g)))
                    .collect()
            })
            .collect();
        // Per group: its images in rank order.
        let mut groups: HashMap<&str, Vec<(usize, Option<semver::Version>)>> = HashMap::new();
        for (i, tags) in grouped.iter().enumerate() {
            let mut seen: Vec<&str> = Vec::new();
            for &(_, g) in tags {
                if !seen.contains(&g) {
                    seen.push(g);
                    let version = semver
                        .then(|| {
                            max_version(
                                tags.iter()
                                    .filter(|(_, tg)| *tg == g)
                                    .map(|(t, _)| images[i].tags[*t as usize].as_str()),
                            )
                        })
                        .flatten();
                    groups.entry(g).or_default().push((i, version));
                }
            }
        }
        let mut rank_in: HashMap<(&str, usize), usize> = HashMap::new();
        for (g, members) in groups.iter_mut() {
            if semver {
                version_order(members);
            }
            for (rank, (i, _)) in members.iter().enumerate() {
                rank_in.insert((g, *i), rank);
            }
        }
        for (i, tags) in grouped.iter().enumerate() {
            for &(t, g) in tags {
                judge(i, t, rank_in[&(g, i)]);
            }
        }
    } else if semver {
        let mut order: Vec<(usize, Option<semver::Version>)> = images
            .iter()
            .enumerate()
            .filter(|(_, img)| img.tags.iter().any(|t| tag_matches(rule, t)))
            .map(|(i, img)| {
                let matching = img.tags.iter().filter(|t| tag_matches(rule, t));
                (i, max_version(matching.map(|t| t.as_str())))
            })
            .collect();
        version_order(&mut order);
        for (rank, (i, _)) in order.into_iter().enumerate() {
            for (t, tag) in images[i].tags.iter().enumerate() {
                if tag_matches(rule, tag) {
                    judge(i, t as u32, rank);
                }
            }
        }
    } else {
        let mut rank = 0;
        for (i, img) in images.iter().enumerate() {
            let mut matched = false;
            for (t, tag) in img.tags.iter().enumerate() {
                if tag_matches(rule, tag) {
                    judge(i, t as u32, rank);
                    matched = true;
                }
            }
            if matched {
                rank += 1;
            }
        }
    }
}

/// Every (image, tag, rank) a rule judges, in the order the planner judges
/// them: what `keep_latest` is compared with. `images` newest first, ties by
/// digest; `tag` is `u32::MAX` for an untagged image.
pub fn rule_ranks(rule: &RetentionRule, images: &[ImageInfo]) -> Vec<(usize, u32, usize)> {
    let mut out = Vec::new();
    rank_tags(rule, images, |i, t, r| out.push((i, t, r)));
    out
}

/// Why an image of the repository being planned is in use, if it is.
pub type InUseOf<'a> = dyn Fn(&ImageInfo) -> Option<String> + 'a;

/// Plan one repository. `images` must be newest first, ties by digest.
/// `rules` are the applicable rules with their index in the config (and in
/// `bounds`); `used[i]` is set when config rule `i` judged anything.
/// Decisions are built only when `explain`; `in_use` says why an image is
/// in use, if it is.
pub fn plan_repository(
    cfg: &RetentionConfig,
    rules: &[(usize, &RetentionRule)],
    bounds: &[RuleBounds],
    images: &[ImageInfo],
    now: DateTime<Utc>,
    used: &mut [bool],
    (explain, in_use): (bool, &InUseOf<'_>),
) -> (Vec<ImageDecision>, Vec<Action>, Vec<InUseVeto>) {
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

    for &(ri, rule) in rules {
        let b = &bounds[ri];
        rank_tags(rule, images, |i, t, rank| {
            used[ri] = true;
            let j = match t {
                UNTAGGED => &mut untagged_judgements[i],
                t => &mut tag_judgements[i][t as usize],
            };
            j.judge(ri, b, rank, ages[i]);
        });
    }

    let mut decisions = Vec::with_capacity(if explain { n } else { 0 });
    let mut actions = Vec::new();
    let mut vetoed = Vec::new();
    for (i, img) in images.iter().enumerate() {
        let age = ages[i];
        // In use first: of every veto it is the one an operator most needs to see.
        let running = in_use(img);
        if let Some(reason) = &running {
            let judged = tag_judgements[i]
                .iter()
                .chain(std::iter::once(&untagged_judgements[i]))
                .any(|j| j.condemned(false));
            if judged {
                vetoed.push(InUseVeto {
                    digest: img.digest.clone(),
                    tags: img.tags.clone(),
                    reason: reason.clone(),
                });
            }
        }
        let veto = running.or_else(|| image_veto(cfg, i, age));
        let judgements = &tag_judgements[i];
        let untagged = &untagged_judgements[i];
        let action = |kind, tag, why: Box<[Evidence]>| Action {
            kind,
            tag,
            digest: img.digest.clone(),
            image_tags: img.tags.clone(),
            size: img.size,
            pushed_at: img.pushed_at,
            why,
        };
        // Which tags end condemned: no image veto, no protect.tags, no keep rule.
        let condemned: Vec<bool> = img
            .tags
            .iter()
            .zip(judgements)
            .map(|(tag, j)| j.condemned(veto.is_some()) && tag_veto(cfg, tag).is_none())
            .collect();
        let outcome = if img.tags.is_empty() {
            if untagged.condemned(veto.is_some()) {
                let why = evidence(UNTAGGED, untagged).collect();
                actions.push(action(ActionKind::DeleteImage, UNTAGGED, why));
                ImageOutcome::DeleteImage
            } else {
                ImageOutcome::Kept
            }
        } else if condemned.iter().all(|c| *c) {
            let why = judgements
                .iter()
                .enumerate()
                .flat_map(|(t, j)| evidence(t as u32, j))
                .collect();
            actions.push(action(ActionKind::DeleteImage, UNTAGGED, why));
            ImageOutcome::DeleteImage
        } else if condemned.iter().any(|c| *c) {
            for (t, j) in judgements.iter().enumerate().filter(|(t, _)| condemned[*t]) {
                let why = evidence(t as u32, j).collect();
                actions.push(action(ActionKind::DeleteTag, t as u32, why));
            }
            ImageOutcome::DeleteTags
        } else {
            ImageOutcome::Kept
        };
        if explain {
            let tags = img
                .tags
                .iter()
                .zip(judgements)
                .map(|(tag, j)| TagDecision {
                    tag: tag.to_string(),
                    verdict: j.verdict(veto.clone().or_else(|| tag_veto(cfg, tag)), bounds, age),
                })
                .collect();
            decisions.push(ImageDecision {
                digest: img.digest.clone(),
                size: img.size,
                pushed_at: img.pushed_at,
                outcome,
                tags,
                untagged: img
                    .tags
                    .is_empty()
                    .then(|| untagged.verdict(veto.clone(), bounds, age)),
            });
        }
    }
    (decisions, actions, vetoed)
}

/// The ratio in millionths, exactly as written in the config for up to six decimals.
fn ratio_millionths(ratio: f64) -> u128 {
    (ratio.clamp(0.0, 1.0) * 1_000_000.0).round() as u128
}

/// Whether `deletes` of `images` is more than `ratio` × `images`, compared in
/// integers: a float product (0.57 × 100 = 56.99…) would block 57 of 100.
pub fn over_ratio(deletes: usize, images: usize, ratio: f64) -> bool {
    deletes as u128 * 1_000_000 > ratio_millionths(ratio) * images as u128
}

/// Plan the whole inventory (actions only; see [`plan_explained`]).
pub fn plan(inventory: &Inventory, cfg: &RetentionConfig, now: DateTime<Utc>) -> Plan {
    plan_with(inventory, cfg, now, &InUse::default(), false)
}

/// Plan with what the in-use sources said (`[retention.in_use]`): images in
/// use are vetoed; a failed source blocks the plan. `explain` keeps every
/// verdict, as [`plan_explained`] does.
pub fn plan_in_use(
    inventory: &Inventory,
    cfg: &RetentionConfig,
    now: DateTime<Utc>,
    in_use: &InUse,
    explain: bool,
) -> Plan {
    plan_with(inventory, cfg, now, in_use, explain)
}

/// Plan, keeping every image's and tag's verdict for `explain` and reports.
pub fn plan_explained(inventory: &Inventory, cfg: &RetentionConfig, now: DateTime<Utc>) -> Plan {
    plan_with(inventory, cfg, now, &InUse::default(), true)
}

fn plan_with(
    inventory: &Inventory,
    cfg: &RetentionConfig,
    now: DateTime<Utc>,
    in_use: &InUse,
    explain: bool,
) -> Plan {
    let mut used = vec![false; cfg.rules.len()];
    let bounds: Vec<RuleBounds> = cfg.rules.iter().map(RuleBounds::from).collect();
    // Rules whose scope holds something not listed completely: never "idle".
    let mut unknown = vec![false; cfg.rules.len()];
    let mut skipped = Vec::new();
    let mut repositories = Vec::new();
    let mut instances: Vec<_> = inventory.instances.iter().collect();
    instances.sort_by(|a, b| a.name.cmp(&b.name));
    for inst in instances {
        if let Some(e) = &inst.error {
            skipped.push(format!("{}: {e}", inst.name));
            unknown.iter_mut().for_each(|u| *u = true);
        }
        let mut namespaces: Vec<_> = inst.namespaces.iter().collect();
        namespaces.sort_by(|a, b| a.name.cmp(&b.name));
        for ns in namespaces {
            if let Some(e) = &ns.error {
                skipped.push(format!("{}/{}: {e}", inst.name, ns.name));
                for (ri, r) in cfg.rules.iter().enumerate() {
                    if namespace_applies(r, &ns.name) {
                        unknown[ri] = true;
                    }
                }
            }
            let mut repos: Vec<_> = ns.repositories.iter().collect();
            repos.sort_by(|a, b| a.name.cmp(&b.name));
            for repo in repos {
                // Outside the instance's declared scope: not managed here.
                if repo.skipped.as_deref() == Some(crate::inventory::UNMANAGED) {
                    continue;
                }
                // Images nobody needs were not listed: nothing to plan, and
                // never to be taken for an empty repository. A rule that
                // covers one anyway (a config other than the listing's)
                // finds it skipped.
                let unlisted = repo.unlisted.then(|| {
                    "images not listed: no rule of the listing's config covers this repository"
                        .to_owned()
                });
                if unlisted.is_some()
                    && !cfg
                        .rules
                        .iter()
                        .any(|r| rule_applies(r, &ns.name, &repo.name))
                {
                    continue;
                }
                if repo.skipped.is_some() || unlisted.is_some() {
                    for (ri, r) in cfg.rules.iter().enumerate() {
                        if rule_applies(r, &ns.name, &repo.name) {
                            unknown[ri] = true;
                        }
                    }
                }
                let mut rp = RepositoryPlan {
                    instance: inst.name.clone(),
                    namespace: ns.name.clone(),
                    repository: repo.name.clone(),
                    images: repo.images.len(),
                    actions: Vec::new(),
                    blocked_actions: Vec::new(),
                    decisions: Vec::new(),
                    blocked: None,
                    skipped: repo.skipped.clone().or(unlisted),
                    in_use: Vec::new(),
                };
                if rp.skipped.is_none() {
                    let applicable: Vec<(usize, &RetentionRule)> = cfg
                        .rules
                        .iter()
                        .enumerate()
                        .filter(|(_, r)| rule_applies(r, &ns.name, &repo.name))
                        .collect();
                    // The inventory keeps images newest first; sort a copy only if it does not.
                    let sorted = repo
                        .images
                        .is_sorted_by(|a, b| (b.pushed_at, &a.digest) <= (a.pushed_at, &b.digest));
                    let images: std::borrow::Cow<'_, [ImageInfo]> = if sorted {
                        std::borrow::Cow::Borrowed(&repo.images)
                    } else {
                        let mut v = repo.images.clone();
                        crate::inventory::sort_images(&mut v);
                        std::borrow::Cow::Owned(v)
                    };
                    let running = |img: &ImageInfo| {
                        in_use
                            .image(&inst.name, &ns.name, &repo.name, img)
                            .map(|s| s.reason())
                    };
                    let (decisions, actions, vetoed) = plan_repository(
                        cfg,
                        &applicable,
                        &bounds,
                        &images,
                        now,
                        &mut used,
                        (explain, &running),
                    );
                    rp.in_use = vetoed;
                    let deletes = actions
                        .iter()
                        .filter(|a| a.kind == ActionKind::DeleteImage)
                        .count();
                    if over_ratio(deletes, rp.images, cfg.max_deletion_ratio) {
                        rp.blocked = Some(format!(
                            "{deletes} of {} images would be deleted, over max_deletion_ratio {}",
                            rp.images, cfg.max_deletion_ratio
                        ));
                        rp.blocked_actions = actions;
                    } else {
                        rp.actions = actions;
                    }
                    rp.decisions = decisions;
                }
                repositories.push(rp);
            }
        }
    }
    let total: usize = repositories.iter().map(|r| r.actions.len()).sum();
    let blocked = in_use.blocked().or_else(|| {
        (total as u64 > cfg.max_deletions_per_run).then(|| {
            format!(
                "{total} actions planned, over max_deletions_per_run {}: nothing will be deleted",
                cfg.max_deletions_per_run
            )
        })
    });
    let idle_rules = cfg
        .rules
        .iter()
        .zip(used.iter().zip(&unknown))
        .filter(|(_, (u, unknown))| !**u && !**unknown)
        .map(|(r, _)| r.name.clone())
        .collect();
    Plan {
        generated_at: now,
        rules: bounds,
        repositories,
        blocked,
        skipped,
        idle_rules,
        server_side: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reasons count ranks from 1, as people do; the planner's rank stays 0-based.
    #[test]
    fn ranks_are_written_counting_from_one() {
        let text = |rank, order| RankText(rank, order).to_string();
        for (rank, want) in [
            (0, "newest"),
            (1, "2nd newest"),
            (2, "3rd newest"),
            (3, "4th newest"),
            (10, "11th newest"),
            (11, "12th newest"),
            (12, "13th newest"),
            (20, "21st newest"),
            (21, "22nd newest"),
            (22, "23rd newest"),
            (100, "101st newest"),
            (110, "111th newest"),
        ] {
            assert_eq!(text(rank, OrderBy::Pushed), want);
        }
        assert_eq!(text(0, OrderBy::Semver), "highest version");
        assert_eq!(text(1, OrderBy::Semver), "2nd highest version");
    }
}
