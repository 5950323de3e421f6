//! Phase two: check meaning, resolve secrets, collect every error. The
//! `Validator` is the machinery every section's `validate` uses (the core
//! sections here, each job's in its own folder's `config.rs`): it collects
//! errors by key path, and `parse` points each at its file, line and column.

use super::locate::{self, KeyPath, Seg};
use super::raw::*;
use super::*;
use crate::duration;
use serde::de::DeserializeOwned;

const KNOWN_SECTIONS: [&str; 12] = [
    "kcr",
    "instances",
    "server",
    "state",
    "scheduler",
    "leader",
    "log",
    "inventory",
    "retention",
    "tokens",
    "namespaces",
    "quota",
];

/// Collects every error of one config file by key path; the helpers read
/// one value each, record what is wrong and return a default so checking
/// goes on.
pub(crate) struct Validator<'a> {
    errors: Vec<(KeyPath, String)>,
    base: &'a Path,
    env: &'a dyn Environment,
    /// False for commands that read only the local state: secrets are
    /// checked for form but not read, and left out of the config.
    read_secrets: bool,
}

/// Whether a parse reads the secrets the config names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Secrets {
    Read,
    /// Neither read nor required; the config carries none (no credentials,
    /// no admin token).
    LeftOut,
}

pub(super) fn parse(
    text: &str,
    file: &str,
    base: &Path,
    env: &dyn Environment,
    secrets: Secrets,
) -> Result<Config, ConfigErrors> {
    let at = |offset: usize, key: String, message: String| {
        let (line, column) = locate::line_col(text, offset);
        ConfigError {
            file: file.to_owned(),
            line,
            column,
            key,
            message,
        }
    };
    let doc = match toml_edit::Document::parse(text) {
        Ok(d) => d,
        Err(e) => {
            let offset = e.span().map_or(0, |s| s.start);
            let message = e.message().trim().to_owned();
            return Err(ConfigErrors(vec![at(
                offset,
                String::new(),
                format!("TOML syntax error: {message}"),
            )]));
        }
    };
    let table: toml::Table = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => {
            let offset = e.span().map_or(0, |s| s.start);
            return Err(ConfigErrors(vec![at(
                offset,
                String::new(),
                format!("TOML error: {}", e.message().trim()),
            )]));
        }
    };
    let mut v = Validator {
        errors: Vec::new(),
        base,
        env,
        read_secrets: secrets == Secrets::Read,
    };
    let config = v.config(table, file);
    if v.errors.is_empty() {
        if let Some(c) = config {
            return Ok(c);
        }
        v.errors
            .push((KeyPath::root(), "configuration incomplete".into()));
    }
    let mut errors: Vec<ConfigError> = v
        .errors
        .into_iter()
        .map(|(path, message)| at(locate::locate(&doc, &path), path.to_string(), message))
        .collect();
    errors.sort_by(|a, b| (a.line, a.column, &a.key).cmp(&(b.line, b.column, &b.key)));
    errors.dedup();
    Err(ConfigErrors(errors))
}

fn convert_path(p: &serde_path_to_error::Path) -> KeyPath {
    use serde_path_to_error::Segment;
    KeyPath(
        p.iter()
            .filter_map(|s| match s {
                Segment::Seq { index } => Some(Seg::Index(*index)),
                Segment::Map { key } => Some(Seg::Key(key.clone())),
                Segment::Enum { variant } => Some(Seg::Key(variant.clone())),
                Segment::Unknown => None,
            })
            .collect(),
    )
}

/// Take the key at `path` out of `value`; false if it is not there.
fn remove_at(value: &mut toml::Value, path: &KeyPath) -> bool {
    let Some((Seg::Key(last), parents)) = path.0.split_last() else {
        return false;
    };
    let mut cur = value;
    for seg in parents {
        let next = match (seg, cur) {
            (Seg::Key(k), toml::Value::Table(t)) => t.get_mut(k),
            (Seg::Index(i), toml::Value::Array(a)) => a.get_mut(*i),
            _ => None,
        };
        match next {
            Some(n) => cur = n,
            None => return false,
        }
    }
    match cur {
        toml::Value::Table(t) => t.remove(last).is_some(),
        _ => false,
    }
}

fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h == "localhost"
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Validator<'_> {
    pub(crate) fn err(&mut self, path: KeyPath, msg: impl Into<String>) {
        self.errors.push((path, msg.into()));
    }

    /// Deserialise one value, recording (not returning) what went wrong. A
    /// bad key is reported, taken out and the rest read again, so one mistake
    /// does not hide the next.
    pub(crate) fn de<T: DeserializeOwned>(
        &mut self,
        path: &KeyPath,
        mut value: toml::Value,
    ) -> Option<T> {
        let mut removed: Vec<String> = Vec::new();
        loop {
            let e = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
                Ok(t) => return Some(t),
                Err(e) => e,
            };
            let mut inner = convert_path(e.path());
            // toml adds "\nin `key`" to custom errors; the key path says it already.
            let msg = e.inner().to_string();
            let msg = match msg.rsplit_once("\nin `") {
                Some((head, _)) => head.trim().to_owned(),
                None => msg.trim().to_owned(),
            };
            if let Some(rest) = msg.strip_prefix("unknown field `")
                && let Some(name) = rest.split('`').next()
                && inner.0.last() != Some(&Seg::Key(name.to_owned()))
            {
                inner.0.push(Seg::Key(name.to_owned()));
            }
            // "missing field" for a key we took out ourselves is not news.
            let echo = msg
                .strip_prefix("missing field `")
                .and_then(|r| r.split('`').next())
                .is_some_and(|name| removed.iter().any(|r| r == name));
            if !echo {
                self.err(path.join(&inner), msg);
            }
            match inner.0.last() {
                Some(Seg::Key(k)) if remove_at(&mut value, &inner) && removed.len() < 64 => {
                    removed.push(k.clone())
                }
                _ => return None,
            }
        }
    }

    pub(crate) fn duration(
        &mut self,
        path: KeyPath,
        raw: Option<&str>,
        default: Duration,
    ) -> Duration {
        match raw {
            None => default,
            Some(s) => duration::parse(s).unwrap_or_else(|e| {
                self.err(path, e.to_string());
                default
            }),
        }
    }

    /// A duration that must be more than zero (timeouts, ages).
    pub(crate) fn positive_duration(
        &mut self,
        path: KeyPath,
        raw: Option<&str>,
        default: Duration,
    ) -> Duration {
        let d = self.duration(path.clone(), raw, default);
        if d.is_zero() {
            self.err(path, "must be more than 0s");
        }
        d
    }

    /// A required key read as `Option` (so that one wrong value does not
    /// drop the table around it): missing → "missing field `key`" at the
    /// table, unless its value was refused already.
    pub(crate) fn required<T>(
        &mut self,
        table: &KeyPath,
        key: &str,
        value: Option<T>,
    ) -> Option<T> {
        let at = table.key(key);
        if value.is_none() && !self.errors.iter().any(|(p, _)| *p == at) {
            self.err(table.clone(), format!("missing field `{key}`"));
        }
        value
    }

    /// A path that must be absolute (the daemon's working directory is not
    /// the config's): `None`, with the error, otherwise.
    pub(crate) fn absolute_path(&mut self, path: KeyPath, raw: &str) -> Option<PathBuf> {
        if Path::new(raw).is_absolute() {
            Some(PathBuf::from(raw))
        } else {
            self.err(path, format!("{raw:?} is not an absolute path"));
            None
        }
    }

    /// How many errors so far: a part is valid when checking it added none.
    pub(crate) fn error_count(&self) -> usize {
        self.errors.len()
    }

    pub(crate) fn opt_duration(&mut self, path: KeyPath, raw: Option<&str>) -> Option<Duration> {
        let s = raw?;
        match duration::parse(s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.err(path, e.to_string());
                None
            }
        }
    }

    pub(crate) fn timezone(&mut self, path: KeyPath, raw: Option<&str>, default: Tz) -> Tz {
        match raw {
            None => default,
            Some(s) => s.parse::<Tz>().unwrap_or_else(|_| {
                self.err(path, format!("unknown time zone {s:?}; use an IANA name such as \"UTC\" or \"Asia/Shanghai\""));
                default
            }),
        }
    }

    pub(crate) fn schedule(
        &mut self,
        path: KeyPath,
        raw: Option<&str>,
        default: &str,
    ) -> Option<Schedule> {
        match Schedule::parse(raw.unwrap_or(default)) {
            Ok(s) => Some(s),
            Err(e) => {
                self.err(path, e);
                None
            }
        }
    }

    pub(crate) fn count(
        &mut self,
        path: KeyPath,
        raw: Option<i64>,
        default: u64,
        min: u64,
        max: u64,
    ) -> u64 {
        match raw {
            None => default,
            Some(n) if n >= 0 && (n as u64) >= min && (n as u64) <= max => n as u64,
            Some(n) => {
                self.err(
                    path,
                    format!("{n} is out of range; expected {min} to {max}"),
                );
                default
            }
        }
    }

    pub(crate) fn patterns(&mut self, path: &KeyPath, raw: &[String]) -> Vec<Pattern> {
        let mut out = Vec::new();
        for (i, p) in raw.iter().enumerate() {
            match Pattern::parse(p) {
                Ok(p) => out.push(p),
                Err(e) => self.err(path.index(i), e),
            }
        }
        out
    }

    /// A secret read even for local commands (the `[state] url`: reading
    /// the state is what they do).
    pub(crate) fn secret_always(&mut self, path: KeyPath, raw: &RawSecret) -> Option<String> {
        let was = std::mem::replace(&mut self.read_secrets, true);
        let secret = self.secret(path, raw);
        self.read_secrets = was;
        secret
    }

    pub(crate) fn secret(&mut self, path: KeyPath, raw: &RawSecret) -> Option<String> {
        match raw {
            RawSecret::Literal => {
                self.err(path, "literal secrets are refused; use { env = \"VARIABLE\" } or { file = \"/path\" }");
                None
            }
            RawSecret::Env(name) => {
                if name.is_empty() {
                    self.err(path, "empty environment variable name");
                    return None;
                }
                if !self.read_secrets {
                    return None;
                }
                match self.env.var(name) {
                    Some(v) if !v.trim().is_empty() => Some(v.trim().to_owned()),
                    Some(_) => {
                        self.err(path, format!("environment variable {name} is empty"));
                        None
                    }
                    None => {
                        self.err(path, format!("environment variable {name} is not set"));
                        None
                    }
                }
            }
            RawSecret::File(_) if !self.read_secrets => None,
            RawSecret::File(file) => {
                let full = self.base.join(file);
                match std::fs::read_to_string(&full) {
                    Ok(v) if !v.trim().is_empty() => Some(v.trim().to_owned()),
                    Ok(_) => {
                        self.err(path, format!("secret file {} is empty", full.display()));
                        None
                    }
                    Err(e) => {
                        self.err(
                            path,
                            format!("cannot read secret file {}: {e}", full.display()),
                        );
                        None
                    }
                }
            }
        }
    }

    fn config(&mut self, mut table: toml::Table, file: &str) -> Option<Config> {
        let root = KeyPath::root();
        for key in table.keys() {
            if !KNOWN_SECTIONS.contains(&key.as_str()) {
                self.errors.push((
                    root.key(key),
                    format!(
                        "unknown section `{key}`; expected one of {}",
                        KNOWN_SECTIONS.join(", ")
                    ),
                ));
            }
        }
        let mut take = |name: &str| table.remove(name);
        let kcr_raw = take("kcr");
        let instances_raw = take("instances");
        let server_raw = take("server");
        let state_raw = take("state");
        let scheduler_raw = take("scheduler");
        let leader_raw = take("leader");
        let log_raw = take("log");
        let inventory_raw = take("inventory");
        let retention_raw = take("retention");
        let tokens_raw = take("tokens");
        let namespaces_raw = take("namespaces");
        let quota_raw = take("quota");

        let kcr = self.kcr(kcr_raw);
        let instances = self.instances(instances_raw);
        let server = self.server(server_raw);
        let state = self.state(state_raw);
        let scheduler = self.scheduler(scheduler_raw);
        let leader = self.leader(leader_raw, kcr.as_ref().map(|k| k.timeout));
        let log = self.log(log_raw);
        let inventory = self
            .section::<RawInventory>("inventory", inventory_raw)
            .map(|i| InventoryConfig {
                max_age: self.duration(
                    root.key("inventory").key("max_age"),
                    i.max_age.as_deref(),
                    Duration::from_secs(300),
                ),
            });
        let retention = retention_raw.map(|v| crate::retention::config::validate(self, v));
        let tokens = tokens_raw.map(|v| crate::tokens::config::validate(self, v, &instances));
        let namespaces = namespaces_raw.map(|v| crate::namespaces::config::validate(self, v));
        let quota = quota_raw.map(|v| crate::quota::config::validate(self, v));

        Some(Config {
            source: file.to_owned(),
            kcr: kcr?,
            instances,
            server: server?,
            state: state?,
            scheduler: scheduler?,
            leader: leader?,
            log: log?,
            inventory: inventory?,
            retention: retention.transpose_none()?,
            tokens: tokens.transpose_none()?,
            namespaces: namespaces.transpose_none()?,
            quota: quota.transpose_none()?,
        })
    }

    /// A table section that may be absent (then: defaults).
    pub(crate) fn section<T: DeserializeOwned + Default>(
        &mut self,
        name: &str,
        value: Option<toml::Value>,
    ) -> Option<T> {
        match value {
            None => Some(T::default()),
            Some(v) => self.de(&KeyPath::root().key(name), v),
        }
    }

    fn kcr(&mut self, value: Option<toml::Value>) -> Option<KcrConfig> {
        let p = KeyPath::root().key("kcr");
        let raw: RawKcr = self.section("kcr", value)?;
        let endpoint_text = raw
            .endpoint
            .clone()
            .unwrap_or_else(|| "https://kcrs.api.ksyun.com".into());
        let endpoint = if let Some(name) = endpoint_text.strip_prefix("sim:") {
            if cfg!(not(feature = "sim")) {
                self.err(p.key("endpoint"), crate::app::NO_SIMULATOR);
            } else if name != "demo" {
                self.err(
                    p.key("endpoint"),
                    format!(
                        "unknown built-in simulator {endpoint_text:?}; only \"sim:demo\" exists"
                    ),
                );
            }
            Endpoint::SimDemo
        } else {
            match reqwest::Url::parse(&endpoint_text) {
                Ok(u) if u.scheme() == "https" && u.host_str().is_some() => {}
                Ok(u) if u.scheme() == "http" && u.host_str().is_some_and(is_loopback_host) => {}
                Ok(u) if u.scheme() == "http" => self.err(
                    p.key("endpoint"),
                    "plain http is allowed only to a loopback address; use https",
                ),
                Ok(_) => self.err(
                    p.key("endpoint"),
                    format!("endpoint {endpoint_text:?} must be an https URL or \"sim:demo\""),
                ),
                Err(e) => self.err(
                    p.key("endpoint"),
                    format!("invalid endpoint URL {endpoint_text:?}: {e}"),
                ),
            }
            Endpoint::Url(endpoint_text)
        };
        let credentials = if endpoint == Endpoint::SimDemo {
            None
        } else {
            let key_id = match &raw.access_key_id {
                None => {
                    self.err(
                        p.key("access_key_id"),
                        "required (e.g. access_key_id = { env = \"KSYUN_ACCESS_KEY_ID\" })",
                    );
                    None
                }
                Some(RawAccessKeyId::Literal(s)) if s.trim().is_empty() => {
                    self.err(p.key("access_key_id"), "empty access key id");
                    None
                }
                Some(RawAccessKeyId::Literal(s)) => Some(s.trim().to_owned()),
                Some(RawAccessKeyId::Reference(r)) => self.secret(p.key("access_key_id"), r),
            };
            let secret = match &raw.secret_access_key {
                None => {
                    self.err(
                        p.key("secret_access_key"),
                        "required (e.g. secret_access_key = { env = \"KSYUN_SECRET_ACCESS_KEY\" })",
                    );
                    None
                }
                Some(r) => self.secret(p.key("secret_access_key"), r),
            };
            match (key_id, secret) {
                (Some(k), Some(s)) => Some(Credentials::new(k, s)),
                _ => None,
            }
        };
        let region = raw.region.unwrap_or_else(|| "cn-beijing-6".into());
        if region.is_empty()
            || !region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            self.err(p.key("region"), format!("invalid region {region:?}"));
        }
        let rps = raw.requests_per_second.unwrap_or(10.0);
        if !(rps > 0.0 && rps <= 1000.0) {
            self.err(
                p.key("requests_per_second"),
                format!("{rps} is out of range; expected more than 0 and at most 1000"),
            );
        }
        let timeout = self.positive_duration(
            p.key("timeout"),
            raw.timeout.as_deref(),
            Duration::from_secs(30),
        );
        Some(KcrConfig {
            endpoint,
            region,
            credentials,
            timezone: self.timezone(
                p.key("timezone"),
                raw.timezone.as_deref(),
                chrono_tz::Asia::Shanghai,
            ),
            requests_per_second: rps,
            max_in_flight: self.count(p.key("max_in_flight"), raw.max_in_flight, 8, 1, 256)
                as usize,
            timeout,
            max_consecutive_failures: self.count(
                p.key("max_consecutive_failures"),
                raw.max_consecutive_failures,
                10,
                1,
                10_000,
            ) as u32,
        })
    }

    fn instances(&mut self, value: Option<toml::Value>) -> Vec<InstanceConfig> {
        let p = KeyPath::root().key("instances");
        let items = match value {
            None => {
                self.err(p, "at least one [[instances]] entry is required");
                return Vec::new();
            }
            Some(toml::Value::Array(items)) => items,
            Some(_) => {
                self.err(p, "expected an array of tables ([[instances]])");
                return Vec::new();
            }
        };
        let mut out: Vec<InstanceConfig> = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let ip = p.index(i);
            let Some(raw) = self.de::<RawInstance>(&ip, item) else {
                continue;
            };
            if raw.id.trim().is_empty() {
                self.err(ip.key("id"), "empty instance id");
            }
            if raw.name.is_empty()
                || !raw
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            {
                self.err(
                    ip.key("name"),
                    format!(
                        "invalid name {:?}: use lowercase letters, digits, '-' and '_'",
                        raw.name
                    ),
                );
            }
            if let Some(r) = &raw.registry
                && (r.is_empty() || r.contains("://") || r.contains('/'))
            {
                self.err(
                    ip.key("registry"),
                    format!(
                        "registry {r:?} must be a host name (and port), without scheme or path"
                    ),
                );
            }
            if out.iter().any(|o| o.name == raw.name) {
                self.err(
                    ip.key("name"),
                    format!("duplicate instance name {:?}", raw.name),
                );
            }
            if out.iter().any(|o| o.id == raw.id) {
                self.err(ip.key("id"), format!("duplicate instance id {:?}", raw.id));
            }
            let scope = match &raw.scope {
                Some(globs) if globs.is_empty() => {
                    self.err(
                        ip.key("scope"),
                        "empty scope: leave the key out for the whole instance",
                    );
                    Vec::new()
                }
                Some(globs) => {
                    // A bare namespace would match no `namespace/repository`
                    // and silently make every refusal there "expected".
                    for (i, g) in globs.iter().enumerate() {
                        if !g.starts_with("re:") && !g.contains('/') && !g.starts_with("**") {
                            self.err(
                                ip.key("scope").index(i),
                                format!(
                                    "scope entries are namespace/repository globs; write \"{g}/**\" for the whole namespace {g:?}"
                                ),
                            );
                        }
                    }
                    self.patterns(&ip.key("scope"), globs)
                }
                None => Vec::new(),
            };
            out.push(InstanceConfig {
                id: raw.id,
                name: raw.name,
                registry: raw.registry,
                scope,
            });
        }
        if out.is_empty()
            && !self
                .errors
                .iter()
                .any(|(k, _)| k.0.first() == Some(&Seg::Key("instances".into())))
        {
            self.err(p, "at least one [[instances]] entry is required");
        }
        out
    }

    fn server(&mut self, value: Option<toml::Value>) -> Option<ServerConfig> {
        let p = KeyPath::root().key("server");
        let raw: RawServer = self.section("server", value)?;
        let listen_text = raw.listen.unwrap_or_else(|| "127.0.0.1:9187".into());
        let listen = listen_text.parse::<SocketAddr>().unwrap_or_else(|_| {
            self.err(
                p.key("listen"),
                format!("{listen_text:?} is not an address:port such as \"127.0.0.1:9187\""),
            );
            SocketAddr::from(([127, 0, 0, 1], 9187))
        });
        let admin_token = match &raw.admin_token {
            None => None,
            Some(r) => {
                let t = self.secret(p.key("admin_token"), r);
                if let Some(t) = &t
                    && t.len() < 16
                {
                    self.err(
                        p.key("admin_token"),
                        "admin token is shorter than 16 characters",
                    );
                }
                t.map(SecretString::from)
            }
        };
        let max_connections =
            self.count(p.key("max_connections"), raw.max_connections, 64, 1, 4096) as usize;
        let header_timeout = self.positive_duration(
            p.key("header_timeout"),
            raw.header_timeout.as_deref(),
            Duration::from_secs(10),
        );
        Some(ServerConfig {
            listen,
            admin_token,
            max_connections,
            header_timeout,
        })
    }

    fn scheduler(&mut self, value: Option<toml::Value>) -> Option<SchedulerConfig> {
        let p = KeyPath::root().key("scheduler");
        let raw: RawScheduler = self.section("scheduler", value)?;
        Some(SchedulerConfig {
            timezone: self.timezone(p.key("timezone"), raw.timezone.as_deref(), chrono_tz::UTC),
            jitter: self.duration(
                p.key("jitter"),
                raw.jitter.as_deref(),
                Duration::from_secs(30),
            ),
            run_on_start: raw.run_on_start.unwrap_or(false),
            shutdown_timeout: self.duration(
                p.key("shutdown_timeout"),
                raw.shutdown_timeout.as_deref(),
                Duration::from_secs(30),
            ),
            job_timeout: self.duration(
                p.key("job_timeout"),
                raw.job_timeout.as_deref(),
                Duration::from_secs(3600),
            ),
        })
    }

    /// `[leader]`. The lease must outlast a renewal period plus a KCR call
    /// and two margins: a leader renews every `renew`, and a mutation (and
    /// every state write of a job) is made only with more than `[kcr]
    /// timeout` + margin of lease left — which must still hold just before
    /// the next renewal, with a margin for that renewal's round trip. When
    /// `lease` is not set it defaults to 15s, raised to that minimum if
    /// `[kcr] timeout` needs more.
    fn leader(
        &mut self,
        value: Option<toml::Value>,
        call_timeout: Option<Duration>,
    ) -> Option<LeaderConfig> {
        let p = KeyPath::root().key("leader");
        let raw: RawLeader = self.section("leader", value)?;
        let renew =
            self.positive_duration(p.key("renew"), raw.renew.as_deref(), Duration::from_secs(5));
        let call = call_timeout.unwrap_or(Duration::from_secs(30));
        let least = call + renew + 2 * LeaderConfig::MARGIN;
        let lease = match raw.lease.as_deref() {
            None => least.max(Duration::from_secs(15)),
            Some(text) => {
                let lease =
                    self.positive_duration(p.key("lease"), Some(text), Duration::from_secs(15));
                if !lease.is_zero() && lease < 2 * renew {
                    self.err(
                        p.key("lease"),
                        format!(
                            "lease ({}) must be at least twice leader.renew ({}): a leader renews several times per lease",
                            duration::format(lease),
                            duration::format(renew)
                        ),
                    );
                } else if !lease.is_zero() && lease < least {
                    self.err(
                        p.key("lease"),
                        format!(
                            "lease ({}) must be at least kcr.timeout ({}) + leader.renew ({}) + {} ({}): a mutation is sent only while more than its call's timeout + {} of the lease is left, and that must hold until the next renewal; shorten kcr.timeout or lengthen the lease",
                            duration::format(lease),
                            duration::format(call),
                            duration::format(renew),
                            duration::format(2 * LeaderConfig::MARGIN),
                            duration::format(least),
                            duration::format(LeaderConfig::MARGIN)
                        ),
                    );
                }
                lease
            }
        };
        let id = raw.id.map(|id| id.trim().to_owned());
        if let Some(id) = &id
            && (id.is_empty()
                || id.len() > 200
                || id.chars().any(|c| c.is_control() || c.is_whitespace()))
        {
            self.err(
                p.key("id"),
                "must be 1 to 200 characters without spaces or control characters",
            );
        }
        Some(LeaderConfig { renew, lease, id })
    }

    fn log(&mut self, value: Option<toml::Value>) -> Option<LogConfig> {
        let p = KeyPath::root().key("log");
        let raw: RawLog = self.section("log", value)?;
        let format = raw.format.unwrap_or_default();
        let level = raw.level.unwrap_or_else(|| "info".into());
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&level) {
            self.err(p.key("level"), format!("invalid log level {level:?}: {e}"));
        }
        Some(LogConfig { format, level })
    }
}

/// `Option<Option<T>>` for an optional section: absent → `Some(None)`,
/// present and valid → `Some(Some(t))`, present and invalid → `None`.
trait TransposeNone<T> {
    fn transpose_none(self) -> Option<Option<T>>;
}

impl<T> TransposeNone<T> for Option<Option<T>> {
    fn transpose_none(self) -> Option<Option<T>> {
        match self {
            None => Some(None),
            Some(Some(t)) => Some(Some(t)),
            Some(None) => None,
        }
    }
}
