//! `[namespaces]`: the section as written (`Raw*`, phase one: serde with
//! `deny_unknown_fields`), the checked `NamespacesConfig`, and `validate` between
//! them (phase two). Errors go through the config's `Validator`, which
//! points each at file, line and key.

use crate::config::word::word;
use crate::config::{KeyPath, Mode, Validator};
use crate::pattern::Pattern;
use crate::schedule::Schedule;
use serde::Deserialize;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, strum::EnumString, strum::VariantNames, strum::IntoStaticStr,
)]
#[strum(serialize_all = "kebab-case")]
pub enum Visibility {
    Public,
    Private,
    Ignore,
}
word!(Visibility, "visibility");

#[derive(Clone, Debug)]
pub struct NamespaceRule {
    pub pattern: Pattern,
    pub visibility: Visibility,
}

#[derive(Clone, Debug)]
pub struct NamespacesConfig {
    pub schedule: Schedule,
    pub mode: Mode,
    pub default: Visibility,
    pub allow_make_public: bool,
    pub max_changes_per_run: u32,
    pub rules: Vec<NamespaceRule>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNamespaces {
    pub schedule: Option<String>,
    pub mode: Option<Mode>,
    pub default: Option<Visibility>,
    pub allow_make_public: Option<bool>,
    pub max_changes_per_run: Option<i64>,
    #[serde(default)]
    pub rules: Vec<RawNamespaceRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNamespaceRule {
    #[serde(rename = "match")]
    pub pattern: String,
    /// Required; an `Option` so that a wrong word does not hide the other rules.
    pub visibility: Option<Visibility>,
}

pub(crate) fn validate(v: &mut Validator, value: toml::Value) -> Option<NamespacesConfig> {
    let p = KeyPath::root().key("namespaces");
    let raw: RawNamespaces = v.de(&p, value)?;
    let schedule = v.schedule(p.key("schedule"), raw.schedule.as_deref(), "0 */10 * * * *");
    let mode = raw.mode.unwrap_or(Mode::DryRun);
    let default = raw.default.unwrap_or(Visibility::Private);
    let max_changes_per_run = v.count(
        p.key("max_changes_per_run"),
        raw.max_changes_per_run,
        10,
        0,
        u32::MAX.into(),
    ) as u32;
    let mut rules = Vec::new();
    for (i, r) in raw.rules.iter().enumerate() {
        let rp = p.key("rules").index(i);
        let visibility = v.required(&rp, "visibility", r.visibility);
        if !r.pattern.starts_with("re:")
            && !r
                .pattern
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"*?[]!-^".contains(&b))
        {
            v.err(
                rp.key("match"),
                format!(
                    "{:?} can never match: namespace names are lowercase letters and digits",
                    r.pattern
                ),
            );
            continue;
        }
        match Pattern::parse(&r.pattern) {
            Ok(pattern) => {
                if let Some(visibility) = visibility {
                    rules.push(NamespaceRule {
                        pattern,
                        visibility,
                    })
                }
            }
            Err(e) => v.err(rp.key("match"), e),
        }
    }
    Some(NamespacesConfig {
        schedule: schedule?,
        mode,
        default,
        allow_make_public: raw.allow_make_public.unwrap_or(false),
        max_changes_per_run,
        rules,
    })
}
