//! Phase two: check meaning, resolve secrets, collect every error. The
//! [`Validator`] is the machinery every section's `validate` uses (the core
//! sections here, each job's in its own folder's `config.rs`): it collects
//! errors by key path, and `parse` points each at its file, line and column.

use super::locate::{self, KeyPath, Seg};
use super::raw::*;
use super::*;
use crate::duration;
use serde::de::DeserializeOwned;

/// The largest `TokenTime` CreateInstanceToken accepts, in days or in hours.
pub const MAX_TOKEN_TIME: u32 = 9999;

const KNOWN_SECTIONS: [&str; 11] = [
    "kcr",
    "instances",
    "server",
    "state",
    "scheduler",
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
}

pub(super) fn parse(
    text: &str,
    file: &str,
    base: &Path,
    env: &dyn Environment,
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
        let log_raw = take("log");
        let inventory_raw = take("inventory");
        let retention_raw = take("retention");
        let tokens_raw = take("tokens");
        let namespaces_raw = take("namespaces");
        let quota_raw = take("quota");

        let kcr = self.kcr(kcr_raw);
        let instances = self.instances(instances_raw);
        let server = self.server(server_raw);
        let state = self
            .section::<RawState>("state", state_raw)
            .map(|s| StateConfig {
                path: PathBuf::from(
                    s.path
                        .unwrap_or_else(|| "/var/lib/kcr-housekeeper/state.db".into()),
                ),
            });
        let scheduler = self.scheduler(scheduler_raw);
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
        let tokens = tokens_raw.map(|v| self.tokens(v, &instances));
        let namespaces = namespaces_raw.map(|v| self.namespaces(v));
        let quota = quota_raw.map(|v| self.quota(v));

        Some(Config {
            source: file.to_owned(),
            kcr: kcr?,
            instances,
            server: server?,
            state: state?,
            scheduler: scheduler?,
            log: log?,
            inventory: inventory?,
            retention: retention.transpose_none()?,
            tokens: tokens.transpose_none()?,
            namespaces: namespaces.transpose_none()?,
            quota: quota.transpose_none()?,
        })
    }

    /// A table section that may be absent (then: defaults).
    fn section<T: DeserializeOwned + Default>(
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
        let header_timeout = self.duration(
            p.key("header_timeout"),
            raw.header_timeout.as_deref(),
            Duration::from_secs(10),
        );
        if header_timeout.is_zero() {
            self.err(p.key("header_timeout"), "must be longer than 0s");
        }
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

    fn tokens(&mut self, value: toml::Value, instances: &[InstanceConfig]) -> Option<TokensConfig> {
        let p = KeyPath::root().key("tokens");
        let raw: RawTokens = self.de(&p, value)?;
        let schedule = self.schedule(p.key("schedule"), raw.schedule.as_deref(), "0 */10 * * * *");
        let mode = raw.mode.unwrap_or(Mode::Enforce);
        let list_lag = self.duration(
            p.key("list_lag"),
            raw.list_lag.as_deref(),
            Duration::from_secs(120),
        );
        let mut managed: Vec<ManagedToken> = Vec::new();
        for (i, item) in raw.managed.into_iter().enumerate() {
            let mp = p.key("managed").index(i);
            let Some(m) = self.de::<RawManagedToken>(&mp, item) else {
                continue;
            };
            let before = self.errors.len();
            if m.name.is_empty()
                || !m
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                self.err(mp.key("name"), format!("invalid name {:?}: use lowercase letters, digits and '-' (it is written into the token's Desc)", m.name));
            }
            let desc_len = crate::tokens::planner::desc_len(m.name.len());
            if desc_len > crate::tokens::planner::DESC_MAX {
                self.err(mp.key("name"), format!("name is {} bytes: the token's Desc (kcr-housekeeper/<name>/<install-id>/<rotation-id>) would be {desc_len} bytes, over the API's limit of {}; use at most {} bytes", m.name.len(), crate::tokens::planner::DESC_MAX, crate::tokens::planner::MAX_NAME_LEN));
            }
            if managed.iter().any(|o| o.name == m.name) {
                self.err(
                    mp.key("name"),
                    format!("duplicate managed token name {:?}", m.name),
                );
            }
            if let Some(i) = instances.iter().find(|i| i.name == m.instance) {
                if i.registry.is_none() {
                    self.err(
                        mp.key("instance"),
                        format!(
                            "managed token {:?}: instance {:?} has no `registry`; a managed token needs it (the login and the docker-config entry)",
                            m.name, m.instance
                        ),
                    );
                }
            } else {
                let known: Vec<&str> = instances.iter().map(|i| i.name.as_str()).collect();
                self.err(
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
            let lifetime_d = self.duration(
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
                self.err(mp.key("lifetime"), format!("{} cannot be expressed by the API: use whole hours or whole days (at least 1h)", duration::format(lifetime_d)));
                None
            };
            // CreateInstanceToken refuses a TokenTime above 9999 (days or hours).
            let lifetime = match lifetime {
                Some((n, unit, _)) if n > u64::from(MAX_TOKEN_TIME) => {
                    self.err(
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
            let rotate_before = self.duration(
                mp.key("rotate_before"),
                m.rotate_before.as_deref(),
                Duration::from_secs(10 * 86_400),
            );
            let overlap = self.duration(
                mp.key("overlap"),
                m.overlap.as_deref(),
                Duration::from_secs(86_400),
            );
            let delete_after = self.duration(
                mp.key("delete_after"),
                m.delete_after.as_deref(),
                Duration::from_secs(7 * 86_400),
            );
            if rotate_before >= lifetime_d {
                self.err(mp.key("rotate_before"), format!("rotate_before ({}) must be shorter than lifetime ({}), or every run would rotate", duration::format(rotate_before), duration::format(lifetime_d)));
            }
            if overlap >= lifetime_d {
                self.err(
                    mp.key("overlap"),
                    format!(
                        "overlap ({}) must be shorter than lifetime ({})",
                        duration::format(overlap),
                        duration::format(lifetime_d)
                    ),
                );
            }
            if m.sinks.is_empty() {
                self.err(
                    mp.key("sinks"),
                    "at least one sink is required: a new secret nobody receives is useless",
                );
            }
            let mut sinks = Vec::new();
            for (si, s) in m.sinks.iter().enumerate() {
                if let Some(sink) = self.sink(&mp.key("sinks").index(si), s) {
                    if sinks.contains(&sink) {
                        self.err(mp.key("sinks").index(si), "duplicate sink");
                    }
                    sinks.push(sink);
                }
            }
            if self.errors.len() > before {
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
            managed,
        })
    }

    fn sink(&mut self, sp: &KeyPath, s: &RawSink) -> Option<Sink> {
        let before = self.errors.len();
        let not_for = |this: &mut Self, key: &str, present: bool| {
            if present {
                this.err(
                    sp.key(key),
                    format!("`{key}` does not apply to kind {:?}", s.kind),
                );
            }
        };
        let path = |this: &mut Self| -> Option<PathBuf> {
            match &s.path {
                None => {
                    this.err(sp.key("path"), format!("kind {:?} needs `path`", s.kind));
                    None
                }
                Some(p) if !Path::new(p).is_absolute() => {
                    this.err(sp.key("path"), format!("{p:?} is not an absolute path"));
                    None
                }
                Some(p) => Some(PathBuf::from(p)),
            }
        };
        let sink = match s.kind.as_str() {
            kind @ ("docker-config" | "containers-auth") => {
                not_for(self, "format", s.format.is_some());
                not_for(self, "command", s.command.is_some());
                not_for(self, "timeout", s.timeout.is_some());
                not_for(self, "env", s.env.is_some());
                path(self).map(|path| match kind {
                    "docker-config" => Sink::DockerConfig { path },
                    _ => Sink::ContainersAuth { path },
                })
            }
            "file" => {
                not_for(self, "command", s.command.is_some());
                not_for(self, "timeout", s.timeout.is_some());
                not_for(self, "env", s.env.is_some());
                let format = match s.format.as_deref() {
                    None | Some("env") => FileFormat::Env,
                    Some("json") => FileFormat::Json,
                    Some("raw") => FileFormat::Raw,
                    Some(other) => {
                        self.err(
                            sp.key("format"),
                            format!(
                                "unknown format {other:?}; expected \"env\", \"json\" or \"raw\""
                            ),
                        );
                        FileFormat::Env
                    }
                };
                path(self).map(|path| Sink::File { path, format })
            }
            "exec" => {
                not_for(self, "path", s.path.is_some());
                not_for(self, "format", s.format.is_some());
                let timeout = self.duration(
                    sp.key("timeout"),
                    s.timeout.as_deref(),
                    Duration::from_secs(30),
                );
                let env = s.env.clone().unwrap_or_default();
                for (k, v) in &env {
                    let valid_name = k
                        .bytes()
                        .next()
                        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                    if !valid_name {
                        self.err(sp.key("env").key(k), format!("{k:?} is not a variable name: use letters, digits and '_', not starting with a digit"));
                    } else if crate::tokens::sinks::EXEC_OWN_ENV.contains(&k.as_str()) {
                        self.err(
                            sp.key("env").key(k),
                            format!("{k} is set by kcr-housekeeper itself"),
                        );
                    } else if v.contains('\0') {
                        self.err(sp.key("env").key(k), "the value contains a NUL character");
                    }
                }
                match &s.command {
                    Some(c) if !c.is_empty() && !c[0].is_empty() => Some(Sink::Exec {
                        command: c.clone(),
                        env,
                        timeout,
                    }),
                    _ => {
                        self.err(sp.key("command"), "kind \"exec\" needs `command`, a non-empty list such as [\"/usr/local/bin/publish\", \"arg\"]");
                        None
                    }
                }
            }
            other => {
                self.err(sp.key("kind"), format!("unknown sink kind {other:?}; expected \"docker-config\", \"containers-auth\", \"file\" or \"exec\""));
                None
            }
        };
        if self.errors.len() > before {
            None
        } else {
            sink
        }
    }

    fn visibility(&mut self, path: KeyPath, raw: &str) -> Visibility {
        match raw {
            "public" => Visibility::Public,
            "private" => Visibility::Private,
            "ignore" => Visibility::Ignore,
            other => {
                self.err(path, format!("unknown visibility {other:?}; expected \"public\", \"private\" or \"ignore\""));
                Visibility::Ignore
            }
        }
    }

    fn namespaces(&mut self, value: toml::Value) -> Option<NamespacesConfig> {
        let p = KeyPath::root().key("namespaces");
        let raw: RawNamespaces = self.de(&p, value)?;
        let schedule = self.schedule(p.key("schedule"), raw.schedule.as_deref(), "0 */10 * * * *");
        let mode = raw.mode.unwrap_or(Mode::DryRun);
        let default = self.visibility(
            p.key("default"),
            raw.default.as_deref().unwrap_or("private"),
        );
        let max_changes_per_run = self.count(
            p.key("max_changes_per_run"),
            raw.max_changes_per_run,
            10,
            0,
            u32::MAX.into(),
        ) as u32;
        let mut rules = Vec::new();
        for (i, r) in raw.rules.iter().enumerate() {
            let rp = p.key("rules").index(i);
            let visibility = self.visibility(rp.key("visibility"), &r.visibility);
            if !r.pattern.starts_with("re:")
                && !r.pattern.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b"*?[]!-^".contains(&b)
                })
            {
                self.err(
                    rp.key("match"),
                    format!(
                        "{:?} can never match: namespace names are lowercase letters and digits",
                        r.pattern
                    ),
                );
                continue;
            }
            match Pattern::parse(&r.pattern) {
                Ok(pattern) => rules.push(NamespaceRule {
                    pattern,
                    visibility,
                }),
                Err(e) => self.err(rp.key("match"), e),
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

    fn quota(&mut self, value: toml::Value) -> Option<QuotaConfig> {
        let p = KeyPath::root().key("quota");
        let raw: RawQuota = self.de(&p, value)?;
        let schedule = self.schedule(p.key("schedule"), raw.schedule.as_deref(), "0 */5 * * * *");
        let storage = match raw.storage.as_deref() {
            None | Some("namespace") => StorageGranularity::Namespace,
            Some("repository") => StorageGranularity::Repository,
            Some("none") => StorageGranularity::None,
            Some(other) => {
                self.err(p.key("storage"), format!("unknown storage granularity {other:?}; expected \"none\", \"namespace\" or \"repository\""));
                StorageGranularity::Namespace
            }
        };
        Some(QuotaConfig {
            schedule: schedule?,
            storage,
        })
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
