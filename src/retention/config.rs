//! `[retention]`: the section as written (`Raw*`, phase one: serde with
//! `deny_unknown_fields`), the checked `RetentionConfig`, and `validate`
//! between them (phase two). Errors go through the config's `Validator`,
//! which points each at file, line and key.

use crate::config::word::word;
use crate::config::{KeyPath, Mode, Validator};
use crate::pattern::Pattern;
use crate::schedule::Schedule;
use serde::Deserialize;
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, strum::EnumString, strum::VariantNames)]
#[strum(serialize_all = "kebab-case")]
pub enum RuleAction {
    #[default]
    Delete,
    Keep,
}
word!(RuleAction, "action");

#[derive(Clone, Debug)]
pub struct RetentionRule {
    pub name: String,
    pub action: RuleAction,
    /// Empty = all.
    pub namespaces: Vec<Pattern>,
    /// Empty = all.
    pub repositories: Vec<Pattern>,
    pub exclude_repositories: Vec<Pattern>,
    /// `None` = every tagged image.
    pub tags: Option<Vec<Pattern>>,
    pub untagged: bool,
    pub older_than: Option<Duration>,
    pub keep_latest: Option<u32>,
    pub newer_than: Option<Duration>,
    pub group_by: Option<String>,
    /// How matched images are ranked for `keep_latest`.
    pub order_by: OrderBy,
}

/// The order a rule ranks its matched images in (rank 0 first).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, strum::EnumString, strum::VariantNames)]
#[strum(serialize_all = "kebab-case")]
pub enum OrderBy {
    /// Newest push first, ties by digest.
    #[default]
    Pushed,
    /// Highest SemVer 2.0 version among the image's matching tags first;
    /// images with no version tag after every version, newest push first.
    Semver,
}
word!(OrderBy, "order");

#[derive(Clone, Debug)]
pub struct Protect {
    pub tags: Vec<Pattern>,
    pub newest_images_per_repository: u32,
}

#[derive(Clone, Debug)]
pub struct RetentionConfig {
    pub schedule: Schedule,
    pub mode: Mode,
    pub min_age: Duration,
    pub grace: Duration,
    pub max_deletions_per_run: u64,
    pub max_deletion_ratio: f64,
    pub verify_before_delete: bool,
    /// Enforce even in namespaces that have enabled server-side (KCR) retention rules.
    pub allow_server_side_rules: bool,
    /// `apply --plan` refuses a plan file older than this.
    pub max_plan_age: Duration,
    /// Quota relief: delete repositories holding no image whose UpdateTime
    /// is older than this (`None`: off).
    pub delete_empty_repositories: Option<Duration>,
    /// Quota relief: delete namespaces holding no repository created longer
    /// ago than this (`None`: off).
    pub delete_empty_namespaces: Option<Duration>,
    pub protect: Protect,
    pub rules: Vec<RetentionRule>,
    /// Where to learn which images are running (`[retention.in_use]`).
    pub in_use: Option<InUseConfig>,
}

/// `[retention.in_use]`: sources of image references in use; an image any
/// of them names is never deleted, and a source that fails blocks enforce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InUseConfig {
    pub prometheus: Option<PrometheusSource>,
    /// One image reference per line.
    pub file: Option<PathBuf>,
    /// A program printing image references, one per line.
    pub exec: Option<Vec<String>>,
    /// For the Prometheus query and the program.
    pub timeout: Duration,
    /// Accept a source answering nothing where it named images last time
    /// (the cluster really runs nothing from these registries) instead of
    /// failing closed; the remembered count is then reset to 0.
    pub allow_empty: bool,
}

#[derive(Clone, PartialEq, Eq)]
pub struct PrometheusSource {
    /// Base URL (`http://prometheus:9090`); it may carry a basic-auth user
    /// and password, so messages and `Debug` show it without them.
    pub url: String,
    /// `None`: the kube-state-metrics default.
    pub query: Option<String>,
    pub lookback: Duration,
}

impl std::fmt::Debug for PrometheusSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrometheusSource")
            .field("url", &super::in_use::shown_url(&self.url))
            .field("query", &self.query)
            .field("lookback", &self.lookback)
            .finish()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    pub schedule: Option<String>,
    pub mode: Option<Mode>,
    pub min_age: Option<String>,
    pub grace: Option<String>,
    pub max_deletions_per_run: Option<i64>,
    pub max_deletion_ratio: Option<f64>,
    pub verify_before_delete: Option<bool>,
    pub max_plan_age: Option<String>,
    pub delete_empty_repositories: Option<RawRelief>,
    pub delete_empty_namespaces: Option<RawRelief>,
    pub allow_server_side_rules: Option<bool>,
    #[serde(default)]
    pub protect: RawProtect,
    /// Each rule is read on its own so that one bad rule does not hide another.
    #[serde(default)]
    pub rules: Vec<toml::Value>,
    pub in_use: Option<RawInUse>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInUse {
    pub prometheus: Option<RawPrometheus>,
    pub file: Option<String>,
    pub exec: Option<Vec<String>>,
    pub timeout: Option<String>,
    pub allow_empty: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrometheus {
    pub url: String,
    pub query: Option<String>,
    pub lookback: Option<String>,
}

/// `{ older_than = "30d" }`: quota relief for empty repositories or namespaces.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRelief {
    pub older_than: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProtect {
    pub tags: Option<Vec<String>>,
    pub newest_images_per_repository: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: String,
    pub action: Option<RuleAction>,
    pub namespaces: Option<Vec<String>>,
    pub repositories: Option<Vec<String>>,
    pub exclude_repositories: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
    pub untagged: Option<bool>,
    pub older_than: Option<String>,
    pub keep_latest: Option<i64>,
    pub newer_than: Option<String>,
    pub group_by: Option<String>,
    pub order_by: Option<OrderBy>,
}

pub(crate) fn validate(v: &mut Validator, value: toml::Value) -> Option<RetentionConfig> {
    let p = KeyPath::root().key("retention");
    let raw: RawRetention = v.de(&p, value)?;
    let schedule = v.schedule(p.key("schedule"), raw.schedule.as_deref(), "0 30 3 * * *");
    let mode = raw.mode.unwrap_or(Mode::DryRun);
    let min_age = v.duration(
        p.key("min_age"),
        raw.min_age.as_deref(),
        Duration::from_secs(3600),
    );
    let grace = v.duration(p.key("grace"), raw.grace.as_deref(), Duration::ZERO);
    let max_plan_age = v.positive_duration(
        p.key("max_plan_age"),
        raw.max_plan_age.as_deref(),
        Duration::from_secs(24 * 3600),
    );
    let max_deletions_per_run = v.count(
        p.key("max_deletions_per_run"),
        raw.max_deletions_per_run,
        1000,
        0,
        u32::MAX.into(),
    );
    let max_deletion_ratio = raw.max_deletion_ratio.unwrap_or(0.9);
    if !(max_deletion_ratio > 0.0 && max_deletion_ratio <= 1.0) {
        v.err(
            p.key("max_deletion_ratio"),
            format!("{max_deletion_ratio} is out of range; expected more than 0 and at most 1"),
        );
    }
    let mut relief = |key: &str, raw: &Option<RawRelief>| {
        raw.as_ref().map(|r| {
            let d = v.duration(p.key(key).key("older_than"), Some(&r.older_than), Duration::ZERO);
            if d.is_zero() {
                v.err(
                    p.key(key).key("older_than"),
                    "must be more than 0s: an empty repository or namespace just made is someone's next push",
                );
            }
            d
        })
    };
    let delete_empty_repositories =
        relief("delete_empty_repositories", &raw.delete_empty_repositories);
    let delete_empty_namespaces = relief("delete_empty_namespaces", &raw.delete_empty_namespaces);
    let pp = p.key("protect");
    let protect = Protect {
        tags: v.patterns(
            &pp.key("tags"),
            raw.protect.tags.as_deref().unwrap_or_default(),
        ),
        newest_images_per_repository: v.count(
            pp.key("newest_images_per_repository"),
            raw.protect.newest_images_per_repository,
            1,
            0,
            u32::MAX.into(),
        ) as u32,
    };
    let mut rules: Vec<RetentionRule> = Vec::new();
    let mut names = HashSet::new();
    for (i, item) in raw.rules.into_iter().enumerate() {
        let rp = p.key("rules").index(i);
        let Some(r) = v.de::<RawRule>(&rp, item) else {
            continue;
        };
        if r.name.trim().is_empty() {
            v.err(rp.key("name"), "empty rule name");
        } else if !names.insert(r.name.clone()) {
            v.err(rp.key("name"), format!("duplicate rule name {:?}", r.name));
        }
        if let Some(rule) = rule(v, &rp, r) {
            rules.push(rule);
        }
    }
    let in_use = raw.in_use.and_then(|u| in_use(v, &p.key("in_use"), u));
    Some(RetentionConfig {
        schedule: schedule?,
        mode,
        min_age,
        grace,
        max_deletions_per_run,
        max_deletion_ratio,
        verify_before_delete: raw.verify_before_delete.unwrap_or(true),
        allow_server_side_rules: raw.allow_server_side_rules.unwrap_or(false),
        max_plan_age,
        delete_empty_repositories,
        delete_empty_namespaces,
        protect,
        rules,
        in_use,
    })
}

fn in_use(v: &mut Validator, p: &KeyPath, raw: RawInUse) -> Option<InUseConfig> {
    let before = v.error_count();
    let timeout = v.positive_duration(
        p.key("timeout"),
        raw.timeout.as_deref(),
        Duration::from_secs(30),
    );
    let prometheus = raw.prometheus.map(|pr| {
        let pp = p.key("prometheus");
        let lookback = v.duration(
            pp.key("lookback"),
            pr.lookback.as_deref(),
            Duration::from_secs(7 * 86_400),
        );
        if lookback < Duration::from_secs(60) {
            v.err(pp.key("lookback"), "must be at least 1m");
        }
        let url = pr.url.trim_end_matches('/').to_owned();
        if reqwest::Url::parse(&url)
            .map(|u| !matches!(u.scheme(), "http" | "https") || u.host_str().is_none())
            .unwrap_or(true)
        {
            v.err(
                pp.key("url"),
                format!(
                    "{:?} is not an http(s) URL such as \"http://prometheus:9090\"",
                    pr.url
                ),
            );
        }
        if pr.query.as_ref().is_some_and(|q| q.trim().is_empty()) {
            v.err(
                pp.key("query"),
                "empty query; remove `query` for the kube-state-metrics default",
            );
        }
        PrometheusSource {
            url,
            query: pr.query,
            lookback,
        }
    });
    let file = raw.file.and_then(|f| v.absolute_path(p.key("file"), &f));
    let exec = raw.exec.and_then(|c| {
        if c.first().is_some_and(|p| !p.is_empty()) {
            Some(c)
        } else {
            v.err(
                p.key("exec"),
                "needs a non-empty list such as [\"/usr/local/bin/running-images\"]",
            );
            None
        }
    });
    if prometheus.is_none() && file.is_none() && exec.is_none() && v.error_count() == before {
        v.err(
            p.clone(),
            "names no source: set `prometheus`, `file` or `exec` (or remove the section)",
        );
    }
    if v.error_count() > before {
        return None;
    }
    Some(InUseConfig {
        prometheus,
        file,
        exec,
        timeout,
        allow_empty: raw.allow_empty.unwrap_or(false),
    })
}

fn rule(v: &mut Validator, rp: &KeyPath, r: RawRule) -> Option<RetentionRule> {
    let before = v.error_count();
    let action = r.action.unwrap_or_default();
    let namespaces = v.patterns(
        &rp.key("namespaces"),
        r.namespaces.as_deref().unwrap_or_default(),
    );
    let repositories = v.patterns(
        &rp.key("repositories"),
        r.repositories.as_deref().unwrap_or_default(),
    );
    let exclude_repositories = v.patterns(
        &rp.key("exclude_repositories"),
        r.exclude_repositories.as_deref().unwrap_or_default(),
    );
    let tags = r.tags.as_ref().map(|t| v.patterns(&rp.key("tags"), t));
    let untagged = r.untagged.unwrap_or(false);
    let older_than = v.opt_duration(rp.key("older_than"), r.older_than.as_deref());
    let newer_than = v.opt_duration(rp.key("newer_than"), r.newer_than.as_deref());
    let keep_latest = match r.keep_latest {
        None => None,
        Some(n) if (0..=i64::from(u32::MAX)).contains(&n) => Some(n as u32),
        Some(n) => {
            v.err(
                rp.key("keep_latest"),
                format!("{n} is out of range; expected 1 or more"),
            );
            None
        }
    };
    if untagged && r.tags.is_some() {
        v.err(
            rp.key("untagged"),
            "`untagged = true` matches images without tags; it cannot be combined with `tags`",
        );
    }
    for (key, list, absent) in [
        ("namespaces", &r.namespaces, "every namespace"),
        ("repositories", &r.repositories, "every repository"),
    ] {
        if list.as_ref().is_some_and(|l| l.is_empty()) {
            v.err(
                rp.key(key),
                format!("empty list matches nothing; remove `{key}` to match {absent}"),
            );
        }
    }
    if r.keep_latest == Some(0) {
        v.err(
            rp.key("keep_latest"),
            match action {
                RuleAction::Delete => "0 keeps nothing: every matched image would rank past it; remove `keep_latest` to judge by `older_than` alone",
                RuleAction::Keep => "0 keeps nothing; use 1 or more, or remove `keep_latest`",
            },
        );
    }
    if let Some(t) = &r.tags
        && t.is_empty()
    {
        v.err(
            rp.key("tags"),
            "empty list matches nothing; remove `tags` to match every tagged image",
        );
    }
    match action {
        RuleAction::Delete => {
            if r.older_than.is_none() && r.keep_latest.is_none() {
                v.err(
                    rp.clone(),
                    "a delete rule needs a bound: `older_than`, `keep_latest` or both",
                );
            }
            if r.newer_than.is_some() {
                v.err(
                    rp.key("newer_than"),
                    "`newer_than` belongs to keep rules; delete rules use `older_than`",
                );
            }
        }
        RuleAction::Keep => {
            if r.older_than.is_some() {
                v.err(
                    rp.key("older_than"),
                    "`older_than` belongs to delete rules; keep rules use `newer_than`",
                );
            }
        }
    }
    if let Some(g) = &r.group_by {
        if untagged {
            v.err(
                rp.key("group_by"),
                "`group_by` needs tag patterns; untagged images have no tags to group",
            );
        } else {
            match &tags {
                None => v.err(
                    rp.key("group_by"),
                    format!(
                        "`group_by = {g:?}` needs `tags` with a regex that has a (?P<{g}>…) group"
                    ),
                ),
                Some(ts) => {
                    for (i, t) in ts.iter().enumerate() {
                        if !t.has_group(g) {
                            v.err(rp.key("tags").index(i), format!("pattern {:?} has no capture group named {g:?} (needed by group_by)", t.as_str()));
                        }
                    }
                }
            }
        }
    }
    let order_by = r.order_by.unwrap_or_default();
    if order_by == OrderBy::Semver && untagged {
        v.err(
            rp.key("order_by"),
            "`order_by = \"semver\"` ranks images by their version tags; untagged images have none",
        );
    }
    if v.error_count() > before {
        return None;
    }
    Some(RetentionRule {
        name: r.name,
        action,
        namespaces,
        repositories,
        exclude_repositories,
        tags,
        untagged,
        older_than,
        keep_latest,
        newer_than,
        group_by: r.group_by,
        order_by,
    })
}
