//! Scenario files (JSON, field names as in the API) and the deterministic
//! generator behind `--generate namespaces=20,repos=20,images=60,seed=7`.
//!
//! Times are written as the API writes them (`2022-06-20 16:02:09`, Beijing
//! time) or relative to the simulator's start: `now`, `now-14d`, `now+36h`,
//! so a scenario does not age.

use super::world::{
    self, ExternalEndpoint, Image, Instance, Namespace, Repo, RetentionRule, RetentionTrigger,
    Token, World,
};
use chrono::{Duration, NaiveDateTime};
use kcr::decode::KCR_TIME_FORMAT;
use kcr_duration as duration;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("scenario {source_name}: {message}")]
    Invalid {
        source_name: String,
        message: String,
    },
    #[error("generator spec {spec:?}: {message}")]
    Spec { spec: String, message: String },
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub instances: Vec<ScInstance>,
    /// How long a new token takes to appear in DescribeInstanceToken (e.g. "3s").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_list_delay: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScInstance {
    #[serde(rename = "InstanceId")]
    pub instance_id: String,
    #[serde(rename = "InstanceName")]
    pub instance_name: String,
    #[serde(rename = "InstanceType", default = "default_type")]
    pub instance_type: String,
    #[serde(rename = "InstanceStatus", default = "default_status")]
    pub instance_status: String,
    #[serde(rename = "CreateTime", default = "default_time")]
    pub create_time: String,
    #[serde(rename = "ExpiredTime", default)]
    pub expired_time: Option<String>,
    #[serde(rename = "ChargeType", default = "default_charge")]
    pub charge_type: String,
    #[serde(rename = "ProjectId", default = "default_project")]
    pub project_id: String,
    #[serde(rename = "InternalEndpoint", default)]
    pub internal_endpoint: Option<String>,
    /// The registry's host name (default `<InstanceName>.ksyunkcr.com`). The
    /// simulator's `/v2/` serves every instance; a request whose host names
    /// an instance's `RegistryHost` (ports ignored) is that instance's.
    #[serde(
        rename = "RegistryHost",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub registry_host: Option<String>,
    /// Public access; absent = Closed, as a new KCR instance is.
    #[serde(
        rename = "ExternalEndpoint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub external_endpoint: Option<ScExternalEndpoint>,
    #[serde(rename = "NamespaceQuota", default = "default_ns_quota")]
    pub namespace_quota: u64,
    #[serde(rename = "RepoQuota", default = "default_repo_quota")]
    pub repo_quota: u64,
    #[serde(default)]
    pub tokens: Vec<ScToken>,
    #[serde(default)]
    pub namespaces: Vec<ScNamespace>,
}

/// `{"Status": "Opened"|"Closed", "PolicySet": [{"Entry": "CIDR", "Desc": "…"}]}`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScExternalEndpoint {
    #[serde(rename = "Status")]
    pub status: String,
    #[serde(rename = "PolicySet", default)]
    pub policy_set: Vec<ScPolicy>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScPolicy {
    #[serde(rename = "Entry")]
    pub entry: String,
    #[serde(rename = "Desc", default)]
    pub desc: String,
}

impl ScExternalEndpoint {
    /// Opened to loopback callers: how the demo and generated worlds let the
    /// daemon on this host reach their registry (a real instance starts Closed).
    pub fn loopback() -> Self {
        ScExternalEndpoint {
            status: "Opened".into(),
            policy_set: vec![ScPolicy {
                entry: "127.0.0.0/8".into(),
                desc: LOOPBACK_DESC.into(),
            }],
        }
    }
}

/// Says why a simulated world's endpoint is open.
pub const LOOPBACK_DESC: &str =
    "simulator: loopback may reach the registry (a new KCR instance refuses all outside access)";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScToken {
    #[serde(rename = "TokenId")]
    pub token_id: String,
    #[serde(rename = "Enable", default = "yes")]
    pub enable: bool,
    #[serde(rename = "Desc", default)]
    pub desc: Option<String>,
    #[serde(rename = "CreateTime", default = "default_time")]
    pub create_time: String,
    #[serde(rename = "ExpireTime", default)]
    pub expire_time: Option<String>,
    /// Optional login for the simulated registry; without it the token cannot log in.
    #[serde(rename = "Username", default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(rename = "Token", default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScNamespace {
    #[serde(rename = "Namespace")]
    pub namespace: String,
    #[serde(rename = "Public", default)]
    pub public: bool,
    #[serde(rename = "CreateTime", default = "default_time")]
    pub create_time: String,
    #[serde(default)]
    pub repos: Vec<ScRepo>,
    /// Server-side retention rules (`DescribeRetentionRule`'s items).
    #[serde(
        rename = "RetentionRules",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub retention_rules: Vec<RetentionRule>,
    #[serde(
        rename = "RetentionTrigger",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub retention_trigger: Option<RetentionTrigger>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScRepo {
    #[serde(rename = "RepoName")]
    pub repo_name: String,
    #[serde(rename = "Desc", default)]
    pub desc: Option<String>,
    #[serde(rename = "CreateTime", default = "default_time")]
    pub create_time: String,
    #[serde(rename = "UpdateTime", default)]
    pub update_time: Option<String>,
    #[serde(default)]
    pub images: Vec<ScImage>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScImage {
    #[serde(rename = "ImageId")]
    pub image_id: String,
    #[serde(rename = "Size", default)]
    pub size: u64,
    #[serde(rename = "CreateTime", default = "default_time")]
    pub create_time: String,
    #[serde(rename = "TagNames", default)]
    pub tag_names: Vec<String>,
}

fn default_type() -> String {
    "basic".into()
}
fn default_status() -> String {
    "Running".into()
}
fn default_time() -> String {
    "now".into()
}
fn default_charge() -> String {
    "HourlyInstantSettlement".into()
}
fn default_project() -> String {
    "0".into()
}
fn default_ns_quota() -> u64 {
    50
}
fn default_repo_quota() -> u64 {
    1000
}
fn yes() -> bool {
    true
}

/// `now`, `now-14d`, `now+2h` or an API time `YYYY-MM-DD HH:MM:SS`.
pub fn resolve_time(text: &str, now: NaiveDateTime) -> Result<NaiveDateTime, String> {
    let t = text.trim();
    if let Some(rest) = t.strip_prefix("now") {
        let rest = rest.trim();
        if rest.is_empty() {
            return Ok(now);
        }
        let (sign, d) = rest.split_at(1);
        let d = duration::parse(d).map_err(|e| e.to_string())?;
        let d = Duration::from_std(d).map_err(|_| format!("time {text:?} out of range"))?;
        return match sign {
            "-" => Ok(now - d),
            "+" => Ok(now + d),
            _ => Err(format!(
                "time {text:?}: expected now-<duration> or now+<duration>"
            )),
        };
    }
    NaiveDateTime::parse_from_str(t, KCR_TIME_FORMAT).map_err(|_| {
        format!("time {text:?}: expected \"YYYY-MM-DD HH:MM:SS\", \"now\" or \"now-14d\"")
    })
}

impl Scenario {
    pub fn from_json(source_name: &str, text: &str) -> Result<Scenario, ScenarioError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| ScenarioError::Invalid {
            source_name: source_name.to_owned(),
            message: format!("at {}: {}", e.path(), e.inner()),
        })
    }

    /// Build the simulator's world, reading relative times against `now` (Beijing wall time).
    pub fn into_world(self, source_name: &str, now: NaiveDateTime) -> Result<World, ScenarioError> {
        let err = |message: String| ScenarioError::Invalid {
            source_name: source_name.to_owned(),
            message,
        };
        let t = |s: &str, at: &str| resolve_time(s, now).map_err(|m| err(format!("{at}: {m}")));
        let mut instances = Vec::new();
        for (ii, i) in self.instances.into_iter().enumerate() {
            let at = format!("instances[{ii}]");
            if !world::valid_name(&i.instance_name, 30) {
                return Err(err(format!(
                    "{at}.InstanceName {:?} breaks the naming rule",
                    i.instance_name
                )));
            }
            let mut tokens = Vec::new();
            for (ti, tk) in i.tokens.into_iter().enumerate() {
                let at = format!("{at}.tokens[{ti}]");
                let create = t(&tk.create_time, &at)?;
                tokens.push(Token {
                    id: tk.token_id,
                    enable: tk.enable,
                    desc: tk.desc,
                    create_time: create,
                    expire_time: tk.expire_time.as_deref().map(|e| t(e, &at)).transpose()?,
                    username: tk.username.unwrap_or_else(|| format!("user{ti}")),
                    secret: tk.token,
                    listed_from: create,
                });
            }
            let mut namespaces = BTreeMap::new();
            for (ni, ns) in i.namespaces.into_iter().enumerate() {
                let at = format!("{at}.namespaces[{ni}]");
                if !world::valid_name(&ns.namespace, 63) {
                    return Err(err(format!(
                        "{at}.Namespace {:?} breaks the naming rule",
                        ns.namespace
                    )));
                }
                let mut repos = BTreeMap::new();
                for (ri, r) in ns.repos.into_iter().enumerate() {
                    let at = format!("{at}.repos[{ri}]");
                    let create = t(&r.create_time, &at)?;
                    let mut images = Vec::new();
                    for (mi, im) in r.images.into_iter().enumerate() {
                        images.push(Image {
                            digest: im.image_id,
                            size: im.size,
                            create_time: t(&im.create_time, &format!("{at}.images[{mi}]"))?,
                            tags: im.tag_names,
                            scanned: None,
                        });
                    }
                    let latest = images.iter().map(|i| i.create_time).max().unwrap_or(create);
                    let update = match &r.update_time {
                        Some(u) => t(u, &at)?,
                        None => latest.max(create),
                    };
                    let mut repo = Repo {
                        desc: r.desc,
                        create_time: create,
                        update_time: update,
                        images,
                    };
                    repo.sort_images();
                    if repos.insert(r.repo_name.clone(), repo).is_some() {
                        return Err(err(format!(
                            "{at}: repository {:?} appears twice",
                            r.repo_name
                        )));
                    }
                }
                let create = t(&ns.create_time, &at)?;
                if namespaces
                    .insert(
                        ns.namespace.clone(),
                        Namespace {
                            public: ns.public,
                            create_time: create,
                            repos,
                            retention_rules: ns.retention_rules,
                            retention_trigger: ns.retention_trigger,
                        },
                    )
                    .is_some()
                {
                    return Err(err(format!(
                        "{at}: namespace {:?} appears twice",
                        ns.namespace
                    )));
                }
            }
            let external_endpoint = match i.external_endpoint {
                None => ExternalEndpoint::default(),
                Some(e) => {
                    let opened = match e.status.as_str() {
                        "Opened" => true,
                        "Closed" => false,
                        other => {
                            return Err(err(format!(
                                "{at}.ExternalEndpoint.Status {other:?}: expected \"Opened\" or \"Closed\""
                            )));
                        }
                    };
                    let mut policies = Vec::new();
                    for (pi, pol) in e.policy_set.into_iter().enumerate() {
                        let net = pol
                            .entry
                            .parse::<ipnet::IpNet>()
                            .or_else(|_| pol.entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                            .map_err(|_| {
                                err(format!(
                                    "{at}.ExternalEndpoint.PolicySet[{pi}].Entry {:?} is not an address or CIDR",
                                    pol.entry
                                ))
                            })?;
                        policies.push((net, pol.desc));
                    }
                    ExternalEndpoint { opened, policies }
                }
            };
            instances.push(Instance {
                registry_host: i
                    .registry_host
                    .unwrap_or_else(|| format!("{}.ksyunkcr.com", i.instance_name)),
                external_endpoint,
                internal_endpoint: i
                    .internal_endpoint
                    .unwrap_or_else(|| format!("{}-vpc.ksyunkcr.com", i.instance_name)),
                id: i.instance_id,
                name: i.instance_name,
                instance_type: i.instance_type,
                status: i.instance_status,
                create_time: t(&i.create_time, &at)?,
                expired_time: i.expired_time.as_deref().map(|e| t(e, &at)).transpose()?,
                charge_type: i.charge_type,
                project_id: i.project_id,
                namespace_quota: i.namespace_quota,
                repo_quota: i.repo_quota,
                tokens,
                namespaces,
            });
        }
        let mut w = World::new(instances);
        if let Some(d) = self.token_list_delay {
            let d = duration::parse(&d).map_err(|e| err(format!("token_list_delay: {e}")))?;
            w.token_list_delay =
                Duration::from_std(d).map_err(|_| err("token_list_delay out of range".into()))?;
        }
        Ok(w)
    }
}

/// Parameters of the generator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenerateSpec {
    pub instances: u32,
    pub namespaces: u32,
    pub repos: u32,
    pub images: u32,
    pub tokens: u32,
    pub seed: u64,
}

impl Default for GenerateSpec {
    fn default() -> Self {
        GenerateSpec {
            instances: 1,
            namespaces: 5,
            repos: 5,
            images: 20,
            tokens: 3,
            seed: 1,
        }
    }
}

impl std::str::FromStr for GenerateSpec {
    type Err = ScenarioError;
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let bad = |message: String| ScenarioError::Spec {
            spec: spec.to_owned(),
            message,
        };
        let mut g = GenerateSpec::default();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("{part:?} is not key=value")))?;
            let n: u64 = v
                .trim()
                .parse()
                .map_err(|_| bad(format!("{k}: {v:?} is not a whole number")))?;
            let small = || u32::try_from(n).map_err(|_| bad(format!("{k}: {n} is too large")));
            match k.trim() {
                "instances" => g.instances = small()?,
                "namespaces" => g.namespaces = small()?,
                "repos" => g.repos = small()?,
                "images" => g.images = small()?,
                "tokens" => g.tokens = small()?,
                "seed" => g.seed = n,
                other => {
                    return Err(bad(format!(
                        "unknown key {other:?} (instances, namespaces, repos, images, tokens, seed)"
                    )));
                }
            }
        }
        if g.instances == 0 {
            return Err(bad("instances must be at least 1".into()));
        }
        Ok(g)
    }
}

fn hex_digest(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
        h.update([0u8]);
    }
    hex::encode(h.finalize())
}

/// A deterministic scenario: the same spec gives the same registry (times
/// relative to `now`, so retention ages stay meaningful).
pub fn generate(spec: &GenerateSpec) -> Scenario {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let seed = spec.seed.to_le_bytes();
    let mut instances = Vec::new();
    for ii in 0..spec.instances {
        let name = if spec.instances == 1 {
            "gen".to_owned()
        } else {
            format!("gen{ii}")
        };
        let id_hex = hex_digest(&[b"instance", &seed, &ii.to_le_bytes()]);
        let instance_id = world::uuid_from(u128::from_str_radix(&id_hex[..32], 16).expect("hex"));
        let tokens = (0..spec.tokens)
            .map(|ti| {
                let expire_days: i64 = rng.random_range(-5..90);
                ScToken {
                    token_id: world::uuid_from(
                        u128::from_str_radix(
                            &hex_digest(&[b"token", &seed, &ii.to_le_bytes(), &ti.to_le_bytes()])
                                [..32],
                            16,
                        )
                        .expect("hex"),
                    ),
                    enable: rng.random_bool(0.85),
                    desc: if ti % 2 == 0 {
                        Some(format!("generated token {ti}"))
                    } else {
                        None
                    },
                    create_time: format!("now-{}d", 100 - expire_days.min(99)),
                    expire_time: if ti % 5 == 4 {
                        None
                    } else {
                        Some(rel(expire_days * 24))
                    },
                    username: None,
                    token: None,
                }
            })
            .collect();
        let mut namespaces = Vec::new();
        for ni in 0..spec.namespaces {
            let ns_name = format!("team{ni}");
            let mut repos = Vec::new();
            for ri in 0..spec.repos {
                let repo_name = format!("app{ri}");
                let mut images = Vec::new();
                let mut age_hours: i64 = rng.random_range(0..48);
                for k in 0..spec.images {
                    let digest = hex_digest(&[
                        b"image",
                        &seed,
                        &ii.to_le_bytes(),
                        &ni.to_le_bytes(),
                        &ri.to_le_bytes(),
                        &k.to_le_bytes(),
                    ]);
                    let mut tags = Vec::new();
                    let sha7 = &digest[..7];
                    match rng.random_range(0..100u32) {
                        0..35 => tags.push(format!("main-{sha7}")),
                        35..60 => tags.push(format!("pr-{}", rng.random_range(1..5000u32))),
                        60..75 => tags.push(format!("sha-{sha7}")),
                        75..88 => tags.push(format!(
                            "v1.{}.{}",
                            spec.images - k,
                            rng.random_range(0..10u32)
                        )),
                        _ => {}
                    }
                    if rng.random_bool(0.1) {
                        tags.push(format!("feature-{}-{sha7}", rng.random_range(1..50u32)));
                    }
                    if k == 0 {
                        tags.push("latest".into());
                    }
                    tags.dedup();
                    images.push(ScImage {
                        image_id: format!("sha256:{digest}"),
                        size: rng.random_range(5_000_000..500_000_000u64),
                        create_time: rel(-age_hours),
                        tag_names: tags,
                    });
                    age_hours += rng.random_range(1..72);
                }
                repos.push(ScRepo {
                    repo_name,
                    desc: if ri % 3 == 0 {
                        None
                    } else {
                        Some(format!("service {ri}"))
                    },
                    create_time: rel(-(age_hours + 24)),
                    update_time: None,
                    images,
                });
            }
            namespaces.push(ScNamespace {
                namespace: ns_name,
                public: ni % 4 == 3,
                create_time: "now-400d".into(),
                repos,
                retention_rules: Vec::new(),
                retention_trigger: None,
            });
        }
        instances.push(ScInstance {
            instance_id,
            instance_name: name,
            instance_type: "premium".into(),
            instance_status: "Running".into(),
            create_time: "now-500d".into(),
            expired_time: None,
            charge_type: "HourlyInstantSettlement".into(),
            project_id: "0".into(),
            internal_endpoint: None,
            registry_host: None,
            external_endpoint: Some(ScExternalEndpoint::loopback()),
            namespace_quota: (u64::from(spec.namespaces) * 5 / 4).max(10),
            repo_quota: (u64::from(spec.namespaces) * u64::from(spec.repos) * 2).max(100),
            tokens,
            namespaces,
        });
    }
    Scenario {
        instances,
        token_list_delay: None,
    }
}

/// Hours relative to now, as a scenario time (`now-5h`, `now+3h`).
fn rel(hours: i64) -> String {
    if hours < 0 {
        format!("now-{}h", -hours)
    } else {
        format!("now+{hours}h")
    }
}

/// The built-in demo scenario (`endpoint = "sim:demo"`).
pub fn demo() -> Scenario {
    Scenario::from_json("demo", include_str!("demo.json"))
        .expect("the built-in demo scenario is valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> NaiveDateTime {
        NaiveDateTime::parse_from_str("2026-01-01 00:00:00", KCR_TIME_FORMAT).unwrap()
    }

    #[test]
    fn relative_and_absolute_times() {
        assert_eq!(resolve_time("now", now()).unwrap(), now());
        assert_eq!(
            resolve_time("now-1d", now()).unwrap().to_string(),
            "2025-12-31 00:00:00"
        );
        assert_eq!(
            resolve_time("now+36h", now()).unwrap().to_string(),
            "2026-01-02 12:00:00"
        );
        assert_eq!(
            resolve_time("2022-06-20 16:02:09", now())
                .unwrap()
                .to_string(),
            "2022-06-20 16:02:09"
        );
        assert!(resolve_time("yesterday", now()).is_err());
        assert!(resolve_time("now*3d", now()).is_err());
    }

    #[test]
    fn generator_is_deterministic_and_sized() {
        let spec: GenerateSpec = "namespaces=3,repos=2,images=7,seed=7".parse().unwrap();
        let a = serde_json::to_string(&generate(&spec)).unwrap();
        let b = serde_json::to_string(&generate(&spec)).unwrap();
        assert_eq!(a, b);
        let other: GenerateSpec = "namespaces=3,repos=2,images=7,seed=8".parse().unwrap();
        assert_ne!(a, serde_json::to_string(&generate(&other)).unwrap());
        let w = generate(&spec).into_world("gen", now()).unwrap();
        let i = &w.instances[0];
        assert_eq!(i.namespaces.len(), 3);
        assert_eq!(i.repo_count(), 6);
        assert!(
            i.namespaces
                .values()
                .flat_map(|n| n.repos.values())
                .all(|r| r.images.len() == 7)
        );
    }

    #[test]
    fn generator_spec_errors() {
        assert!(
            "namespaces=x"
                .parse::<GenerateSpec>()
                .unwrap_err()
                .to_string()
                .contains("not a whole number")
        );
        assert!(
            "colour=3"
                .parse::<GenerateSpec>()
                .unwrap_err()
                .to_string()
                .contains("unknown key")
        );
        assert!("instances=0".parse::<GenerateSpec>().is_err());
    }

    #[test]
    fn scenario_errors_name_the_path() {
        let e = Scenario::from_json(
            "s.json",
            r#"{"instances":[{"InstanceId":"a","InstanceName":"ok","Bogus":1}]}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("instances[0]"), "{e}");
        let s = Scenario::from_json(
            "s.json",
            r#"{"instances":[{"InstanceId":"a","InstanceName":"9bad"}]}"#,
        )
        .unwrap();
        assert!(
            s.into_world("s.json", now())
                .unwrap_err()
                .to_string()
                .contains("naming rule")
        );
    }

    #[test]
    fn demo_scenario_loads() {
        let w = demo().into_world("demo", now()).unwrap();
        assert!(!w.instances.is_empty());
    }
}
