//! The namespace policy planner (pure): rules in order, the first `match`
//! wins, else `default`; drift is actual ≠ desired; over `max_changes_per_run`
//! the whole plan is blocked.

use super::config::{NamespacesConfig, Visibility};
use serde::Serialize;

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
    v.into()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespaces::config::NamespaceRule;
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
