//! Configuration: TOML read in two phases, as cargo-deny does. Phase one
//! ([`raw`]) deserialises with `deny_unknown_fields`, one section (and one
//! rule) at a time so that every problem is found; phase two (`validate`)
//! checks meaning and resolves secrets. Every error names the file, line,
//! column and key path, and all of them are reported together.
//!
//! Here: the core sections (kcr, instances, server, state, scheduler, log,
//! inventory) and the machinery — the `Validator` every section's check
//! uses, key paths located in the text, and `word`s (serde enums with
//! readable errors). Each job's section lives beside the job
//! (`src/<job>/config.rs`, as cargo-deny's checks own their config) and is
//! named here by re-export.
//!
//! Every key is documented, with its default, in `config/example.toml`.

mod locate;
pub mod raw;
mod state;
mod validate;
pub(crate) mod word;

use crate::kcr::Credentials;
use crate::pattern::Pattern;
use crate::schedule::Schedule;
use chrono_tz::Tz;
use secrecy::SecretString;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use locate::KeyPath;
pub(crate) use validate::Validator;
use word::word;

// Each job's section lives beside the job (as cargo-deny's checks own
// their config); named here too, so `config::RetentionConfig` still reads.
pub use crate::namespaces::config::{NamespaceRule, NamespacesConfig, Visibility};
pub use crate::quota::config::{QuotaConfig, StorageGranularity};
pub use crate::retention::config::{
    InUseConfig, OrderBy, PrometheusSource, Protect, RetentionConfig, RetentionRule, RuleAction,
};
pub use crate::tokens::config::{
    FileFormat, ManagedToken, Sink, SinkKind, TokenLifetime, TokensConfig,
};

/// Where the config is read from when no `--config` is given.
pub const DEFAULT_PATH: &str = "/etc/kcr-housekeeper/config.toml";
/// Overrides [`DEFAULT_PATH`].
pub const PATH_ENV: &str = "KCR_HOUSEKEEPER_CONFIG";

/// One problem, pointed at the config text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Key path such as `retention.rules[1].older_than`; empty for syntax errors.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: ", self.file)?;
        } else {
            write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.0 {
            writeln!(f, "{e}")?;
        }
        let n = self.0.len();
        write!(
            f,
            "{n} error{} in configuration",
            if n == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for ConfigErrors {}

/// How the process reaches KCR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A real (or external simulator) endpoint URL.
    Url(String),
    /// `sim:demo`: the simulator runs in-process with the demo scenario.
    SimDemo,
}

#[derive(Clone, Debug)]
pub struct KcrConfig {
    pub endpoint: Endpoint,
    pub region: String,
    /// `None` only for `sim:demo`, whose simulator makes its own.
    pub credentials: Option<Credentials>,
    pub timezone: Tz,
    pub requests_per_second: f64,
    pub max_in_flight: usize,
    pub timeout: Duration,
    /// Failed requests in a row after which work stops (no more retries, no more actions).
    pub max_consecutive_failures: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceConfig {
    pub id: String,
    pub name: String,
    /// The registry host (`prod.ksyunkcr.com`): needed only by managed
    /// tokens (the login and the docker-config key), required there.
    pub registry: Option<String>,
    /// `namespace/repository` globs this installation manages (`scope =
    /// ["team-a/*"]`); empty = the whole instance. Retention plans and
    /// relieves only inside it ([`crate::inventory::Inventory::within_scope`]).
    /// An AccessDenied outside it is expected (skipped, not partial); inside
    /// it is not.
    pub scope: Vec<Pattern>,
}

impl InstanceConfig {
    /// Whether `namespace/repository` is inside the declared scope.
    pub fn in_scope(&self, namespace: &str, repository: &str) -> bool {
        self.scope.is_empty()
            || self
                .scope
                .iter()
                .any(|p| p.is_match(&format!("{namespace}/{repository}")))
    }

    /// Whether any repository of `namespace` may be inside the declared
    /// scope: a glob's part before its first `/` matches the namespace, or
    /// the glob starts with `**` or is a regex (which may match anything).
    pub fn namespace_in_scope(&self, namespace: &str) -> bool {
        self.scope.is_empty()
            || self.scope.iter().any(|p| {
                let text = p.as_str();
                if text.starts_with("re:") || text.starts_with("**") {
                    return true;
                }
                let head = text.split('/').next().unwrap_or(text);
                Pattern::parse(head).is_ok_and(|h| h.is_match(namespace))
            })
    }
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_token: Option<SecretString>,
    /// Concurrent admin connections; more wait in the listen backlog.
    pub max_connections: usize,
    /// A connection must send a complete request header within this (also
    /// between keep-alive requests), else it is closed.
    pub header_timeout: std::time::Duration,
}

/// Where the state lives (`[state]`): exactly one of `path` or `url`.
#[derive(Clone, Debug)]
pub enum StateConfig {
    /// `path`: a SQLite file (the embedded default).
    Sqlite { path: PathBuf },
    /// `url = { env = … }`: a PostgreSQL database, shared by replicas. A
    /// secret (it may hold a password): `Debug` shows `[REDACTED]`.
    Postgres { url: SecretString },
}

impl StateConfig {
    /// The SQLite file, if the state is one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            StateConfig::Sqlite { path } => Some(path),
            StateConfig::Postgres { .. } => None,
        }
    }

    /// Whether two configs name the same state (a reload cannot move it).
    pub fn same_place(&self, other: &StateConfig) -> bool {
        use secrecy::ExposeSecret;
        match (self, other) {
            (StateConfig::Sqlite { path: a }, StateConfig::Sqlite { path: b }) => a == b,
            (StateConfig::Postgres { url: a }, StateConfig::Postgres { url: b }) => {
                a.expose_secret() == b.expose_secret()
            }
            _ => false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    pub timezone: Tz,
    pub jitter: Duration,
    pub run_on_start: bool,
    pub shutdown_timeout: Duration,
    /// A run still going after this is asked to stop and recorded as failed.
    pub job_timeout: Duration,
}

/// `[leader]`: the leader lease replicas sharing a PostgreSQL state elect
/// one leader with (DESIGN §11). With SQLite the one replica simply holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderConfig {
    /// How often the leader renews its lease (and a follower tries to take it).
    pub renew: Duration,
    /// How long a renewed lease lasts, on the database's clock.
    pub lease: Duration,
    /// This replica's holder id (not a secret: shown in `/jobs` and logs);
    /// `None`: hostname, process id and a random suffix, chosen at start.
    pub id: Option<String>,
}

impl LeaderConfig {
    /// What a state write or a KCR mutation needs left of the lease, beyond
    /// the call's own timeout: database round trips and clock-rate drift.
    pub const MARGIN: Duration = Duration::from_secs(1);

    /// The lease a write of a job must still see left before it is made:
    /// the KCR call that may follow it has to end before the lease does.
    pub fn needed(&self, call_timeout: Duration) -> Duration {
        call_timeout + Self::MARGIN
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, strum::EnumString, strum::VariantNames)]
#[strum(serialize_all = "kebab-case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}
word!(LogFormat, "log format");

#[derive(Clone, Debug)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Clone, Debug)]
pub struct InventoryConfig {
    pub max_age: Duration,
}

/// What a job does with its plan: only report it, or apply it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::EnumString, strum::VariantNames)]
#[strum(serialize_all = "kebab-case")]
pub enum Mode {
    DryRun,
    Enforce,
}
word!(Mode, "mode");

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::DryRun => "dry-run",
            Mode::Enforce => "enforce",
        }
    }
}

/// A checked configuration; everything in it has been validated.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from, for messages.
    pub source: String,
    pub kcr: KcrConfig,
    pub instances: Vec<InstanceConfig>,
    pub server: ServerConfig,
    pub state: StateConfig,
    pub scheduler: SchedulerConfig,
    pub leader: LeaderConfig,
    pub log: LogConfig,
    pub inventory: InventoryConfig,
    pub retention: Option<RetentionConfig>,
    pub tokens: Option<TokensConfig>,
    pub namespaces: Option<NamespacesConfig>,
    pub quota: Option<QuotaConfig>,
}

/// A job that is switched on, with its schedule.
#[derive(Clone, Debug)]
pub struct JobSchedule<'a> {
    pub job: &'static str,
    pub schedule: &'a Schedule,
    pub mode: Option<Mode>,
}

impl Config {
    /// The jobs switched on, in a fixed order.
    pub fn jobs(&self) -> Vec<JobSchedule<'_>> {
        let mut out = Vec::new();
        if let Some(r) = &self.retention {
            out.push(JobSchedule {
                job: "retention",
                schedule: &r.schedule,
                mode: Some(r.mode),
            });
        }
        if let Some(t) = &self.tokens {
            out.push(JobSchedule {
                job: "tokens",
                schedule: &t.schedule,
                mode: Some(t.mode),
            });
        }
        if let Some(n) = &self.namespaces {
            out.push(JobSchedule {
                job: "namespaces",
                schedule: &n.schedule,
                mode: Some(n.mode),
            });
        }
        if let Some(q) = &self.quota {
            out.push(JobSchedule {
                job: "quota",
                schedule: &q.schedule,
                mode: None,
            });
        }
        out
    }

    /// What `check` warns about: valid, but probably not what was meant.
    pub fn warnings(&self, now: chrono::DateTime<chrono::Utc>) -> Vec<String> {
        let mut out = Vec::new();
        let jitter = self.scheduler.jitter;
        for j in self.jobs() {
            // The shortest gap between the next firings (bounded look-ahead).
            let times = j.schedule.next_times(now, &self.scheduler.timezone, 64);
            let period = times
                .windows(2)
                .filter_map(|w| (w[1] - w[0]).to_std().ok())
                .min();
            if let Some(period) = period
                && jitter > period
            {
                out.push(format!(
                    "scheduler.jitter ({}) is longer than the {} job's schedule period ({}, \"{}\"): a run may start after the next one was due",
                    crate::duration::format(jitter),
                    j.job,
                    crate::duration::format(period),
                    j.schedule
                ));
            }
        }
        out
    }

    pub fn instance_by_name(&self, name: &str) -> Option<&InstanceConfig> {
        self.instances.iter().find(|i| i.name == name)
    }
}

/// Reads environment variables for `{ env = … }` secrets; injectable for tests.
pub trait Environment {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<F: Fn(&str) -> Option<String>> Environment for F {
    fn var(&self, name: &str) -> Option<String> {
        self(name)
    }
}

/// The config path: `--config`, else `$KCR_HOUSEKEEPER_CONFIG`, else the default.
pub fn resolve_path(flag: Option<&Path>, env: &dyn Environment) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| {
            env.var(PATH_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
}

/// Read and check a config file.
pub fn load(path: &Path, env: &dyn Environment) -> Result<Config, ConfigErrors> {
    load_with(path, env, validate::Secrets::Read)
}

/// Read and check a config file for a command that reads only the local
/// state (`history`, `audit`): every check of `load` except that secrets are
/// not read, so these work without the daemon's environment (its
/// `admin_token` or KCR keys). The config carries no credentials and no
/// admin token: never connect with it.
pub fn load_local(path: &Path, env: &dyn Environment) -> Result<Config, ConfigErrors> {
    load_with(path, env, validate::Secrets::LeftOut)
}

fn load_with(
    path: &Path,
    env: &dyn Environment,
    secrets: validate::Secrets,
) -> Result<Config, ConfigErrors> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: name.clone(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read config: {e}"),
        }])
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    validate::parse(&text, &name, base, env, secrets)
}

/// Check config text. Relative `{ file = … }` secrets are read from `base`.
pub fn parse(
    text: &str,
    file_name: &str,
    base: &Path,
    env: &dyn Environment,
) -> Result<Config, ConfigErrors> {
    validate::parse(text, file_name, base, env, validate::Secrets::Read)
}
