//! `[tokens]`: the section as written (`Raw*`, phase one: serde with
//! `deny_unknown_fields`), the checked `TokensConfig`, and `validate` between
//! them (phase two). Errors go through the config's `Validator`, which
//! points each at file, line and key.

use crate::config::word::word;
use crate::config::{InstanceConfig, KeyPath, Mode, Validator};
use crate::duration;
use crate::schedule::Schedule;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// The largest `TokenTime` CreateInstanceToken accepts, in days or in hours.
pub const MAX_TOKEN_TIME: u32 = 9999;

/// A lifetime as CreateInstanceToken can express it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenLifetime {
    Hours(u32),
    Days(u32),
}

impl TokenLifetime {
    pub fn duration(self) -> Duration {
        match self {
            TokenLifetime::Hours(h) => Duration::from_secs(u64::from(h) * 3600),
            TokenLifetime::Days(d) => Duration::from_secs(u64::from(d) * 86_400),
        }
    }
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, strum::EnumString, strum::VariantNames, strum::IntoStaticStr,
)]
#[strum(serialize_all = "kebab-case")]
pub enum FileFormat {
    Env,
    Json,
    Raw,
}
word!(FileFormat, "format");

/// The kinds of sink, as `kind = "…"` names them.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, strum::EnumString, strum::VariantNames, strum::IntoStaticStr,
)]
#[strum(serialize_all = "kebab-case")]
pub enum SinkKind {
    DockerConfig,
    ContainersAuth,
    File,
    Exec,
}
word!(SinkKind, "sink kind");

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sink {
    DockerConfig {
        path: PathBuf,
    },
    /// podman/skopeo/buildah `auth.json` (containers-auth.json(5)): the same
    /// `auths` map as a Docker config, merged the same way.
    ContainersAuth {
        path: PathBuf,
    },
    File {
        path: PathBuf,
        format: FileFormat,
    },
    Exec {
        command: Vec<String>,
        /// Set for the program on top of `PATH`, `HOME` and `LANG`; the rest
        /// of the daemon's environment is never passed on.
        env: std::collections::BTreeMap<String, String>,
        timeout: Duration,
    },
}

#[derive(Clone, Debug)]
pub struct ManagedToken {
    pub name: String,
    /// The `[[instances]]` entry by name.
    pub instance: String,
    pub lifetime: TokenLifetime,
    pub rotate_before: Duration,
    pub overlap: Duration,
    pub delete_after: Duration,
    pub verify: bool,
    pub sinks: Vec<Sink>,
}

#[derive(Clone, Debug)]
pub struct TokensConfig {
    pub schedule: Schedule,
    pub mode: Mode,
    /// How long a new token may take to appear in DescribeInstanceToken.
    pub list_lag: Duration,
    /// The consumers this replica's sinks reach (default: the host name).
    /// Replicas whose sinks reach the same consumers share a group; only the
    /// replica that creates a token knows its secret, so a group that never
    /// received the current token gets a new one when its replica leads.
    pub delivery_group: String,
    pub managed: Vec<ManagedToken>,
}

/// The longest `delivery_group`.
pub const MAX_GROUP_LEN: usize = 128;

/// This host's name, the default `delivery_group` (`localhost` if it has none).
pub fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| valid_group(h))
        .unwrap_or_else(|| "localhost".into())
}

fn valid_group(g: &str) -> bool {
    !g.is_empty()
        && g.len() <= MAX_GROUP_LEN
        && g.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTokens {
    pub schedule: Option<String>,
    pub mode: Option<Mode>,
    pub list_lag: Option<String>,
    pub delivery_group: Option<String>,
    #[serde(default)]
    pub managed: Vec<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawManagedToken {
    pub name: String,
    pub instance: String,
    pub lifetime: Option<String>,
    pub rotate_before: Option<String>,
    pub overlap: Option<String>,
    pub delete_after: Option<String>,
    pub verify: Option<bool>,
    #[serde(default)]
    pub sinks: Vec<RawSink>,
}

/// All sink kinds' keys; validation checks which belong to the `kind` given.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    /// Required; an `Option` so that a wrong word does not hide the rest of the token.
    pub kind: Option<SinkKind>,
    pub path: Option<String>,
    pub format: Option<FileFormat>,
    pub command: Option<Vec<String>>,
    pub timeout: Option<String>,
    pub env: Option<std::collections::BTreeMap<String, String>>,
}

pub(crate) fn validate(
    v: &mut Validator,
    value: toml::Value,
    instances: &[InstanceConfig],
) -> Option<TokensConfig> {
    let p = KeyPath::root().key("tokens");
    let raw: RawTokens = v.de(&p, value)?;
    let schedule = v.schedule(p.key("schedule"), raw.schedule.as_deref(), "0 */10 * * * *");
    let mode = raw.mode.unwrap_or(Mode::Enforce);
    let list_lag = v.duration(
        p.key("list_lag"),
        raw.list_lag.as_deref(),
        Duration::from_secs(120),
    );
    let delivery_group = match raw.delivery_group {
        None => host_name(),
        Some(g) if valid_group(&g) => g,
        Some(g) => {
            v.err(
                p.key("delivery_group"),
                format!("invalid delivery group {g:?}: use 1 to {MAX_GROUP_LEN} letters, digits, '-', '_' or '.'"),
            );
            g
        }
    };
    let mut managed: Vec<ManagedToken> = Vec::new();
    for (i, item) in raw.managed.into_iter().enumerate() {
        let mp = p.key("managed").index(i);
        let Some(m) = v.de::<RawManagedToken>(&mp, item) else {
            continue;
        };
        let before = v.error_count();
        if m.name.is_empty()
            || !m
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            v.err(mp.key("name"), format!("invalid name {:?}: use lowercase letters, digits and '-' (it is written into the token's Desc)", m.name));
        }
        let desc_len = super::planner::desc_len(m.name.len());
        if desc_len > super::planner::DESC_MAX {
            v.err(mp.key("name"), format!("name is {} bytes: the token's Desc (kcr-housekeeper/<name>/<install-id>/<rotation-id>) would be {desc_len} bytes, over the API's limit of {}; use at most {} bytes", m.name.len(), super::planner::DESC_MAX, super::planner::MAX_NAME_LEN));
        }
        if managed.iter().any(|o| o.name == m.name) {
            v.err(
                mp.key("name"),
                format!("duplicate managed token name {:?}", m.name),
            );
        }
        if let Some(i) = instances.iter().find(|i| i.name == m.instance) {
            if i.registry.is_none() {
                v.err(
                    mp.key("instance"),
                    format!(
                        "managed token {:?}: instance {:?} has no `registry`; a managed token needs it (the login and the docker-config entry)",
                        m.name, m.instance
                    ),
                );
            }
        } else {
            let known: Vec<&str> = instances.iter().map(|i| i.name.as_str()).collect();
            v.err(
                mp.key("instance"),
                format!(
                    "unknown instance {:?}; known: {}",
                    m.instance,
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                ),
            );
        }
        let lifetime_d = v.duration(
            mp.key("lifetime"),
            m.lifetime.as_deref(),
            Duration::from_secs(30 * 86_400),
        );
        let secs = lifetime_d.as_secs();
        let whole = lifetime_d.subsec_nanos() == 0 && secs > 0;
        let lifetime = if whole && secs.is_multiple_of(86_400) {
            Some((
                secs / 86_400,
                "days",
                TokenLifetime::Days as fn(u32) -> TokenLifetime,
            ))
        } else if whole && secs.is_multiple_of(3600) {
            Some((
                secs / 3600,
                "hours",
                TokenLifetime::Hours as fn(u32) -> TokenLifetime,
            ))
        } else {
            v.err(mp.key("lifetime"), format!("{} cannot be expressed by the API: use whole hours or whole days (at least 1h)", duration::format(lifetime_d)));
            None
        };
        // CreateInstanceToken refuses a TokenTime above 9999 (days or hours).
        let lifetime = match lifetime {
            Some((n, unit, _)) if n > u64::from(MAX_TOKEN_TIME) => {
                v.err(
                    mp.key("lifetime"),
                    format!(
                        "{} is {n} {unit}; the API accepts at most {MAX_TOKEN_TIME} {unit}",
                        duration::format(lifetime_d)
                    ),
                );
                None
            }
            Some((n, _, make)) => Some(make(n as u32)),
            None => None,
        };
        let rotate_before = v.duration(
            mp.key("rotate_before"),
            m.rotate_before.as_deref(),
            Duration::from_secs(10 * 86_400),
        );
        let overlap = v.duration(
            mp.key("overlap"),
            m.overlap.as_deref(),
            Duration::from_secs(86_400),
        );
        let delete_after = v.duration(
            mp.key("delete_after"),
            m.delete_after.as_deref(),
            Duration::from_secs(7 * 86_400),
        );
        if rotate_before >= lifetime_d {
            v.err(mp.key("rotate_before"), format!("rotate_before ({}) must be shorter than lifetime ({}), or every run would rotate", duration::format(rotate_before), duration::format(lifetime_d)));
        }
        if overlap >= lifetime_d {
            v.err(
                mp.key("overlap"),
                format!(
                    "overlap ({}) must be shorter than lifetime ({})",
                    duration::format(overlap),
                    duration::format(lifetime_d)
                ),
            );
        }
        if m.sinks.is_empty() {
            v.err(
                mp.key("sinks"),
                "at least one sink is required: a new secret nobody receives is useless",
            );
        }
        let mut sinks = Vec::new();
        for (si, s) in m.sinks.iter().enumerate() {
            if let Some(sink) = sink(v, &mp.key("sinks").index(si), s) {
                if sinks.contains(&sink) {
                    v.err(mp.key("sinks").index(si), "duplicate sink");
                }
                sinks.push(sink);
            }
        }
        if v.error_count() > before {
            continue;
        }
        managed.push(ManagedToken {
            name: m.name,
            instance: m.instance,
            lifetime: lifetime?,
            rotate_before,
            overlap,
            delete_after,
            verify: m.verify.unwrap_or(true),
            sinks,
        });
    }
    Some(TokensConfig {
        schedule: schedule?,
        mode,
        list_lag,
        delivery_group,
        managed,
    })
}

fn sink(v: &mut Validator, sp: &KeyPath, s: &RawSink) -> Option<Sink> {
    let before = v.error_count();
    let kind = v.required(sp, "kind", s.kind)?;
    let kind_name = <&'static str>::from(kind);
    let not_for = |this: &mut Validator, key: &str, present: bool| {
        if present {
            this.err(
                sp.key(key),
                format!("`{key}` does not apply to kind {kind_name:?}"),
            );
        }
    };
    let path = |this: &mut Validator| -> Option<PathBuf> {
        match &s.path {
            None => {
                this.err(sp.key("path"), format!("kind {kind_name:?} needs `path`"));
                None
            }
            Some(p) => this.absolute_path(sp.key("path"), p),
        }
    };
    let sink = match kind {
        SinkKind::DockerConfig | SinkKind::ContainersAuth => {
            not_for(v, "format", s.format.is_some());
            not_for(v, "command", s.command.is_some());
            not_for(v, "timeout", s.timeout.is_some());
            not_for(v, "env", s.env.is_some());
            path(v).map(|path| match kind {
                SinkKind::DockerConfig => Sink::DockerConfig { path },
                _ => Sink::ContainersAuth { path },
            })
        }
        SinkKind::File => {
            not_for(v, "command", s.command.is_some());
            not_for(v, "timeout", s.timeout.is_some());
            not_for(v, "env", s.env.is_some());
            let format = s.format.unwrap_or(FileFormat::Env);
            path(v).map(|path| Sink::File { path, format })
        }
        SinkKind::Exec => {
            not_for(v, "path", s.path.is_some());
            not_for(v, "format", s.format.is_some());
            let timeout = v.duration(
                sp.key("timeout"),
                s.timeout.as_deref(),
                Duration::from_secs(30),
            );
            let env = s.env.clone().unwrap_or_default();
            for (k, value) in &env {
                let valid_name = k
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                    && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !valid_name {
                    v.err(sp.key("env").key(k), format!("{k:?} is not a variable name: use letters, digits and '_', not starting with a digit"));
                } else if super::sinks::EXEC_OWN_ENV.contains(&k.as_str()) {
                    v.err(
                        sp.key("env").key(k),
                        format!("{k} is set by kcr-housekeeper itself"),
                    );
                } else if value.contains('\0') {
                    v.err(sp.key("env").key(k), "the value contains a NUL character");
                }
            }
            match &s.command {
                Some(c) if !c.is_empty() && !c[0].is_empty() => Some(Sink::Exec {
                    command: c.clone(),
                    env,
                    timeout,
                }),
                _ => {
                    v.err(sp.key("command"), "kind \"exec\" needs `command`, a non-empty list such as [\"/usr/local/bin/publish\", \"arg\"]");
                    None
                }
            }
        }
    };
    if v.error_count() > before { None } else { sink }
}
