//! The simulated registry's state and the actions that read and change it.
//!
//! Handlers take decoded parameters and the simulated clock (Beijing wall
//! time, as the API writes it) and return the JSON body of the answer. They
//! reproduce the documented quirks (`tokenId`, string `RepoCount`, `null`s).

use chrono::{Duration, NaiveDateTime};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};

use kcr::decode::KCR_TIME_FORMAT;
use kcr::signer::constant_time_eq;

/// An error answer: HTTP status, KCR code and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn missing(param: &str) -> Self {
        Self::new(
            400,
            "MissingParameter",
            format!("An value must be supplied for the input parameter {param}."),
        )
    }
    pub fn invalid(param: &str) -> Self {
        Self::new(
            400,
            "InvalidParameterValue",
            format!(
                "An invalid or out-of-range value was supplied for the input parameter {param}."
            ),
        )
    }
    pub fn invalid_because(param: &str, why: &str) -> Self {
        Self::new(
            400,
            "InvalidParameterValue",
            format!(
                "An invalid or out-of-range value was supplied for the input parameter {param}: {why}."
            ),
        )
    }
    pub fn no_such_action(action: &str) -> Self {
        Self::new(
            404,
            "NoSuchEntity",
            format!(
                "Request was rejected because it referenced an 'InnerApi' that does not exist: {action}."
            ),
        )
    }
}

pub type Answer = Result<Value, ApiError>;

#[derive(Clone, Debug)]
pub struct Token {
    pub id: String,
    pub enable: bool,
    pub desc: Option<String>,
    pub create_time: NaiveDateTime,
    pub expire_time: Option<NaiveDateTime>,
    pub username: String,
    /// `None` for tokens loaded from a scenario without a secret: they cannot log in.
    pub secret: Option<String>,
    /// New tokens appear in listings only from this time on (the API lags).
    pub listed_from: NaiveDateTime,
}

#[derive(Clone, Debug)]
pub struct Image {
    pub digest: String,
    pub size: u64,
    pub create_time: NaiveDateTime,
    pub tags: Vec<String>,
    pub scanned: Option<NaiveDateTime>,
}

#[derive(Clone, Debug)]
pub struct Repo {
    pub desc: Option<String>,
    pub create_time: NaiveDateTime,
    pub update_time: NaiveDateTime,
    pub images: Vec<Image>,
}

impl Repo {
    /// Listing order: newest first, ties by digest (stable across pages).
    pub fn sort_images(&mut self) {
        self.images.sort_by(|a, b| {
            b.create_time
                .cmp(&a.create_time)
                .then_with(|| a.digest.cmp(&b.digest))
        });
    }
}

#[derive(Clone, Debug)]
pub struct Namespace {
    pub public: bool,
    pub create_time: NaiveDateTime,
    pub repos: BTreeMap<String, Repo>,
    /// Server-side (Harbor) retention rules, as `DescribeRetentionRule` answers them.
    pub retention_rules: Vec<RetentionRule>,
    /// When the server-side retention runs (`GetRetentionTrigger`).
    pub retention_trigger: Option<RetentionTrigger>,
}

/// One server-side retention rule, field names and spelling as the Kingsoft
/// SDKs' `DescribeRetentionRule` answer (`TagPatten` included).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionRule {
    #[serde(rename = "Id")]
    pub id: i64,
    #[serde(rename = "Disabled", default)]
    pub disabled: bool,
    /// Which repositories the rule covers (`**` = all).
    #[serde(rename = "RegistryScope", default = "all_repos")]
    pub registry_scope: String,
    /// `byTagPatten` (by tag) or `byNum` (by count).
    #[serde(rename = "Type", default = "by_num")]
    pub rule_type: String,
    #[serde(rename = "UnTagged", default)]
    pub untagged: bool,
    /// Harbor's retention template (`latestPushedK`, `nDaysSinceLastPush`, …).
    #[serde(rename = "Template", default = "latest_pushed")]
    pub template: String,
    #[serde(rename = "TagPatten", default)]
    pub tag_patten: Option<String>,
    #[serde(rename = "Param", default)]
    pub param: Option<i64>,
}

fn all_repos() -> String {
    "**".into()
}
fn by_num() -> String {
    "byNum".into()
}
fn latest_pushed() -> String {
    "latestPushedK".into()
}

/// The server-side retention's schedule, as `GetRetentionTrigger` answers it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionTrigger {
    #[serde(rename = "DisplayText", default)]
    pub display_text: Option<String>,
    #[serde(rename = "Cron", default)]
    pub cron: Option<String>,
    #[serde(rename = "Optional", default)]
    pub optional: Vec<String>,
}

/// The instance's public (external) access: "新创建的KCR实例默认拒绝所有外部访问" —
/// closed, or open to the listed address ranges only.
#[derive(Clone, Debug, Default)]
pub struct ExternalEndpoint {
    pub opened: bool,
    /// `(Entry, Desc)`: an address range (CIDR) allowed through and why.
    pub policies: Vec<(ipnet::IpNet, String)>,
}

impl ExternalEndpoint {
    /// Opened, letting loopback callers through (the simulator's default worlds).
    pub fn loopback(desc: &str) -> Self {
        ExternalEndpoint {
            opened: true,
            policies: vec![("127.0.0.0/8".parse().expect("a CIDR"), desc.to_owned())],
        }
    }

    /// May `addr` reach the registry? Only when opened and some entry contains it.
    pub fn allows(&self, addr: std::net::IpAddr) -> bool {
        let addr = match addr {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, std::net::IpAddr::V4),
            v4 => v4,
        };
        self.opened && self.policies.iter().any(|(net, _)| net.contains(&addr))
    }
}

#[derive(Clone, Debug)]
pub struct Instance {
    pub id: String,
    pub name: String,
    pub instance_type: String,
    pub status: String,
    pub create_time: NaiveDateTime,
    pub expired_time: Option<NaiveDateTime>,
    pub charge_type: String,
    pub project_id: String,
    pub internal_endpoint: String,
    /// The registry's public host name (`docker login <RegistryHost>`).
    pub registry_host: String,
    pub external_endpoint: ExternalEndpoint,
    pub namespace_quota: u64,
    pub repo_quota: u64,
    pub tokens: Vec<Token>,
    pub namespaces: BTreeMap<String, Namespace>,
}

impl Instance {
    pub fn repo_count(&self) -> u64 {
        self.namespaces.values().map(|n| n.repos.len() as u64).sum()
    }
}

/// The whole simulated account.
#[derive(Clone, Debug, Default)]
pub struct World {
    pub instances: Vec<Instance>,
    /// Seconds a new token takes to appear in DescribeInstanceToken.
    pub token_list_delay: Duration,
}

/// Decoded request parameters.
pub type ParamMap = HashMap<String, String>;

fn fmt_time(t: &NaiveDateTime) -> String {
    t.format(KCR_TIME_FORMAT).to_string()
}

fn opt_time(t: &Option<NaiveDateTime>) -> Value {
    t.as_ref()
        .map_or(Value::Null, |t| Value::String(fmt_time(t)))
}

fn required<'a>(p: &'a ParamMap, key: &str) -> Result<&'a str, ApiError> {
    match p.get(key).map(String::as_str) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(ApiError::missing(key)),
    }
}

fn optional<'a>(p: &'a ParamMap, key: &str) -> Option<&'a str> {
    p.get(key).map(String::as_str).filter(|v| !v.is_empty())
}

fn parse_bool(p: &ParamMap, key: &str) -> Result<Option<bool>, ApiError> {
    match optional(p, key) {
        None => Ok(None),
        Some(v) => match v.to_ascii_lowercase().as_str() {
            "true" => Ok(Some(true)),
            "false" => Ok(Some(false)),
            _ => Err(ApiError::invalid(key)),
        },
    }
}

fn required_bool(p: &ParamMap, key: &str) -> Result<bool, ApiError> {
    parse_bool(p, key)?.ok_or_else(|| ApiError::missing(key))
}

/// `Key.1`, `Key.2`, … (N from 1 to 100, as the reference writes them; the
/// official Python SDK counts from 0, so `Key.0` is taken too). A bare `Key`
/// is refused: the reference types these parameters Array of String, and a
/// client sending the bare form would filter nothing on the real service.
fn list_param(p: &ParamMap, key: &str) -> Result<Vec<String>, ApiError> {
    let mut out = Vec::new();
    if optional(p, key).is_some() {
        return Err(ApiError::invalid_because(
            key,
            &format!("a list parameter: send {key}.1, {key}.2, …"),
        ));
    }
    let prefix = format!("{key}.");
    let mut indexed: Vec<(u32, &String)> = Vec::new();
    for (k, v) in p {
        if let Some(n) = k.strip_prefix(&prefix) {
            match n.parse::<u32>() {
                Ok(n) if n <= 100 => indexed.push((n, v)),
                _ => return Err(ApiError::invalid(k)),
            }
        }
    }
    indexed.sort();
    out.extend(indexed.into_iter().map(|(_, v)| v.clone()));
    Ok(out)
}

/// `Marker` (offset, default 0) and `MaxResults` (1–99, default `default_max`).
fn page_params(p: &ParamMap, default_max: u64) -> Result<(usize, u64), ApiError> {
    let marker = match optional(p, "Marker") {
        None => 0,
        Some(m) => m
            .parse::<usize>()
            .map_err(|_| ApiError::invalid("Marker"))?,
    };
    let max = match optional(p, "MaxResults") {
        None => default_max,
        Some(m) => match m.parse::<u64>() {
            Ok(n) if (1..=99).contains(&n) => n,
            _ => {
                return Err(ApiError::invalid_because(
                    "MaxResults",
                    "must be between 1 and 99",
                ));
            }
        },
    };
    Ok((marker, max))
}

/// One page of `items` with the envelope fields the API returns.
fn paged(items: Vec<Value>, marker: usize, max: u64, set: &str) -> Value {
    let total = items.len();
    let page: Vec<Value> = items.into_iter().skip(marker).take(max as usize).collect();
    let end = marker + page.len();
    let next = if end < total { end } else { 0 };
    json!({ "MaxResults": max, "Marker": next, "TotalCount": total, set: page })
}

/// Instance names: 2–30, namespace names: 2–63 lowercase letters and digits, not starting with a digit.
pub fn valid_name(name: &str, max_len: usize) -> bool {
    let len = name.len();
    (2..=max_len).contains(&len)
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && !name.as_bytes()[0].is_ascii_digit()
}

impl World {
    pub fn new(instances: Vec<Instance>) -> Self {
        World {
            instances,
            token_list_delay: Duration::zero(),
        }
    }

    fn instance_mut(&mut self, p: &ParamMap) -> Result<&mut Instance, ApiError> {
        let id = required(p, "InstanceId")?;
        self.instances
            .iter_mut()
            .find(|i| i.id == id)
            .ok_or_else(|| ApiError::invalid_because("InstanceId", "instance not found"))
    }

    fn instance(&self, p: &ParamMap) -> Result<&Instance, ApiError> {
        let id = required(p, "InstanceId")?;
        self.instances
            .iter()
            .find(|i| i.id == id)
            .ok_or_else(|| ApiError::invalid_because("InstanceId", "instance not found"))
    }

    /// Dispatch one action. `random` supplies fresh ids and secrets.
    pub fn handle(
        &mut self,
        action: &str,
        p: &ParamMap,
        now: NaiveDateTime,
        random: &mut dyn FnMut() -> u128,
    ) -> Answer {
        match action {
            "CreateInstance" => self.create_instance(p, now, random),
            "DescribeInstance" => self.describe_instance(p),
            "DescribeInstanceUsage" => self.describe_instance_usage(p),
            "DeleteInstance" => self.delete_instance(p),
            "CreateInstanceToken" => self.create_instance_token(p, now, random),
            "ModifyInstanceTokenStatus" => self.modify_token_status(p),
            "ModifyInstanceTokenInformation" => self.modify_token_information(p, now),
            "DescribeInstanceToken" => self.describe_instance_token(p, now),
            "DeleteInstanceToken" => self.delete_instance_token(p),
            "CreateNamespace" => self.create_namespace(p, now),
            "DescribeNamespace" => self.describe_namespace(p),
            "ModifyNamespaceType" => self.modify_namespace_type(p),
            "DescribeNamespaceExist" => self.describe_namespace_exist(p),
            "DeleteNamespace" => self.delete_namespace(p),
            "DescribeRepository" => self.describe_repository(p),
            "DeleteRepository" => self.delete_repository(p),
            "ModifyRepoDesc" => self.modify_repo_desc(p, now),
            "DescribeImages" => self.describe_images(p),
            "DeleteImages" => self.delete_images(p, now),
            "DeleteRepoTag" => self.delete_repo_tag(p, now),
            "StartImageScan" => self.start_image_scan(p, now),
            "DescribeImageScan" => self.describe_image_scan(p),
            "DescribeExternalEndpoint" => self.describe_external_endpoint(p),
            "DescribeRetentionRule" => self.describe_retention_rule(p),
            "GetRetentionTrigger" => self.get_retention_trigger(p),
            other => Err(ApiError::no_such_action(other)),
        }
    }

    // ------------------------------------------------------------ instances

    fn create_instance(
        &mut self,
        p: &ParamMap,
        now: NaiveDateTime,
        random: &mut dyn FnMut() -> u128,
    ) -> Answer {
        let name = required(p, "InstanceName")?;
        if !valid_name(name, 30) {
            return Err(ApiError::invalid("InstanceName"));
        }
        let instance_type = required(p, "InstanceType")?;
        let (ns_quota, repo_quota) = match instance_type {
            "basic" => (50, 1000),
            "premium" => (200, 5000),
            _ => return Err(ApiError::invalid("InstanceType")),
        };
        let charge_type = optional(p, "ChargeType").unwrap_or("HourlyInstantSettlement");
        let expired_time = match charge_type {
            "HourlyInstantSettlement" => None,
            "Monthly" => {
                let months: i64 = required(p, "PurchaseTime")?
                    .parse()
                    .ok()
                    .filter(|m| *m > 0)
                    .ok_or_else(|| ApiError::invalid("PurchaseTime"))?;
                Some(now + Duration::days(30 * months))
            }
            _ => return Err(ApiError::invalid("ChargeType")),
        };
        if self.instances.iter().any(|i| i.name == name) {
            return Err(ApiError::invalid_because(
                "InstanceName",
                "an instance with this name exists",
            ));
        }
        let id = uuid_from(random());
        self.instances.push(Instance {
            id: id.clone(),
            name: name.to_owned(),
            instance_type: instance_type.to_owned(),
            status: "Running".into(),
            create_time: now,
            expired_time,
            charge_type: charge_type.to_owned(),
            project_id: optional(p, "ProjectId").unwrap_or("0").to_owned(),
            internal_endpoint: format!("{name}-vpc.ksyunkcr.com"),
            registry_host: format!("{name}.ksyunkcr.com"),
            // A new instance refuses all outside access (the user guide).
            external_endpoint: ExternalEndpoint::default(),
            namespace_quota: ns_quota,
            repo_quota,
            tokens: Vec::new(),
            namespaces: BTreeMap::new(),
        });
        Ok(json!({ "InstanceId": id }))
    }

    fn describe_instance(&self, p: &ParamMap) -> Answer {
        let ids = list_param(p, "InstanceId")?;
        let projects = list_param(p, "ProjectId")?;
        let name = optional(p, "InstanceName");
        let (marker, max) = page_params(p, 20)?;
        let items = self
            .instances
            .iter()
            .filter(|i| ids.is_empty() || ids.contains(&i.id))
            // Without ProjectId.N only the default project is covered.
            .filter(|i| {
                if projects.is_empty() {
                    i.project_id == "0"
                } else {
                    projects.contains(&i.project_id)
                }
            })
            .filter(|i| name.is_none_or(|n| n == i.name))
            .map(|i| {
                json!({
                    "InstanceId": i.id,
                    "InstanceName": i.name,
                    "InstanceType": i.instance_type,
                    "InstanceStatus": i.status,
                    "InternalEndpoint": i.internal_endpoint,
                    "CreateTime": fmt_time(&i.create_time),
                    "ExpiredTime": opt_time(&i.expired_time),
                    "ChargeType": i.charge_type,
                    "ProjectId": i.project_id,
                })
            })
            .collect();
        Ok(paged(items, marker, max, "InstanceSet"))
    }

    fn describe_instance_usage(&self, p: &ParamMap) -> Answer {
        let i = self.instance(p)?;
        Ok(json!({
            "NamespaceQuota": i.namespace_quota,
            "NamespaceUsage": i.namespaces.len(),
            "RepoQuota": i.repo_quota,
            "RepoUsage": i.repo_count(),
        }))
    }

    fn delete_instance(&mut self, p: &ParamMap) -> Answer {
        parse_bool(p, "DeleteBucket")?;
        let i = self.instance(p)?;
        if i.charge_type != "HourlyInstantSettlement" {
            return Err(ApiError::invalid_because(
                "InstanceId",
                "only pay-as-you-go instances can be deleted",
            ));
        }
        let id = i.id.clone();
        self.instances.retain(|i| i.id != id);
        Ok(json!({}))
    }

    // ------------------------------------------------------------ tokens

    fn token_expiry(
        p: &ParamMap,
        now: NaiveDateTime,
        required_type: bool,
    ) -> Result<Option<Option<NaiveDateTime>>, ApiError> {
        let token_type = if required_type {
            Some(required(p, "TokenType")?)
        } else {
            optional(p, "TokenType")
        };
        let Some(token_type) = token_type else {
            return Ok(None);
        };
        let time = if required_type {
            Some(required(p, "TokenTime")?)
        } else {
            optional(p, "TokenTime")
        };
        let amount = || -> Result<i64, ApiError> {
            time.ok_or_else(|| ApiError::missing("TokenTime"))?
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=36_500 * 24).contains(n))
                .ok_or_else(|| ApiError::invalid("TokenTime"))
        };
        match token_type {
            "Hour" => Ok(Some(Some(now + Duration::hours(amount()?)))),
            "Day" => {
                let days = amount()?;
                if days > 36_500 {
                    return Err(ApiError::invalid("TokenTime"));
                }
                Ok(Some(Some(now + Duration::days(days))))
            }
            "NeverExpire" => Ok(Some(None)),
            _ => Err(ApiError::invalid("TokenType")),
        }
    }

    fn check_desc(p: &ParamMap, key: &str, limit: usize) -> Result<Option<String>, ApiError> {
        match p.get(key) {
            Some(d) if d.len() > limit => Err(ApiError::invalid_because(key, "too long")),
            Some(d) => Ok(Some(d.clone())),
            None => Ok(None),
        }
    }

    fn create_instance_token(
        &mut self,
        p: &ParamMap,
        now: NaiveDateTime,
        random: &mut dyn FnMut() -> u128,
    ) -> Answer {
        let expire = Self::token_expiry(p, now, true)?.expect("required type");
        let desc = Self::check_desc(p, "Desc", 256)?;
        let delay = self.token_list_delay;
        let id = uuid_from(random());
        let secret = format!("{:032x}{:032x}", random(), random());
        let inst = self.instance_mut(p)?;
        let compact_id = inst.id.replace('-', "");
        let username = format!("kcr{}", &compact_id[..compact_id.len().min(12)]);
        inst.tokens.push(Token {
            id: id.clone(),
            enable: true,
            desc,
            create_time: now,
            expire_time: expire,
            username: username.clone(),
            secret: Some(secret.clone()),
            listed_from: now + delay,
        });
        // Quirk: `tokenId` in lower camel case, unlike every other response.
        Ok(
            json!({ "Username": username, "tokenId": id, "Token": secret, "ExpireTime": opt_time(&expire) }),
        )
    }

    fn token_mut<'a>(inst: &'a mut Instance, p: &ParamMap) -> Result<&'a mut Token, ApiError> {
        let id = required(p, "TokenId")?;
        inst.tokens
            .iter_mut()
            .find(|t| t.id == id)
            .ok_or_else(|| ApiError::invalid_because("TokenId", "token not found"))
    }

    fn modify_token_status(&mut self, p: &ParamMap) -> Answer {
        let enable = required_bool(p, "Enable")?;
        let inst = self.instance_mut(p)?;
        Self::token_mut(inst, p)?.enable = enable;
        Ok(json!({}))
    }

    fn modify_token_information(&mut self, p: &ParamMap, now: NaiveDateTime) -> Answer {
        let expire = Self::token_expiry(p, now, false)?;
        let desc = Self::check_desc(p, "Desc", 256)?;
        let inst = self.instance_mut(p)?;
        let token = Self::token_mut(inst, p)?;
        if let Some(e) = expire {
            token.expire_time = e;
        }
        if let Some(d) = desc {
            token.desc = Some(d);
        }
        Ok(json!({}))
    }

    fn describe_instance_token(&self, p: &ParamMap, now: NaiveDateTime) -> Answer {
        let (marker, max) = page_params(p, 20)?;
        let inst = self.instance(p)?;
        let items = inst
            .tokens
            .iter()
            .filter(|t| t.listed_from <= now)
            .map(|t| {
                json!({
                    "TokenId": t.id,
                    "Enable": t.enable,
                    "Desc": t.desc,
                    "CreateTime": fmt_time(&t.create_time),
                    "ExpireTime": opt_time(&t.expire_time),
                })
            })
            .collect();
        Ok(paged(items, marker, max, "TokenSet"))
    }

    fn delete_instance_token(&mut self, p: &ParamMap) -> Answer {
        let inst = self.instance_mut(p)?;
        let id = Self::token_mut(inst, p)?.id.clone();
        inst.tokens.retain(|t| t.id != id);
        Ok(json!({}))
    }

    /// Registry login: a live (enabled, unexpired) token with this username and secret.
    pub fn login(&self, username: &str, secret: &str, now: NaiveDateTime) -> bool {
        self.login_instance(username, secret, now).is_some()
    }

    /// The instance whose live token these credentials are.
    pub fn login_instance(
        &self,
        username: &str,
        secret: &str,
        now: NaiveDateTime,
    ) -> Option<&Instance> {
        self.login_token(username, secret, now).map(|(i, _)| i)
    }

    /// The live (enabled, unexpired) token these credentials are, and its instance.
    pub fn login_token(
        &self,
        username: &str,
        secret: &str,
        now: NaiveDateTime,
    ) -> Option<(&Instance, &Token)> {
        self.instances.iter().find_map(|i| {
            i.tokens
                .iter()
                .find(|t| {
                    t.enable
                        && t.expire_time.is_none_or(|e| e > now)
                        && t.username == username
                        && t.secret
                            .as_deref()
                            .is_some_and(|s| constant_time_eq(s, secret))
                })
                .map(|t| (i, t))
        })
    }

    /// The instance a registry request is for: the one whose `RegistryHost`
    /// names the request's host (ports ignored, so a test can name
    /// `127.0.0.1` or `localhost`), else `None`.
    pub fn instance_for_host(&self, host: &str) -> Option<&Instance> {
        let bare = |h: &str| {
            let h = h.trim();
            let h = match h.rsplit_once(':') {
                Some((a, p)) if !a.ends_with(':') && p.bytes().all(|b| b.is_ascii_digit()) => a,
                _ => h,
            };
            h.trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase()
        };
        let want = bare(host);
        self.instances
            .iter()
            .find(|i| bare(&i.registry_host) == want)
    }

    // ------------------------------------------------------------ access and server-side retention

    fn describe_external_endpoint(&self, p: &ParamMap) -> Answer {
        let i = self.instance(p)?;
        let e = &i.external_endpoint;
        Ok(json!({
            "InstanceId": i.id,
            "Status": if e.opened { "Opened" } else { "Closed" },
            "PolicySet": e.policies.iter().map(|(net, desc)| json!({"Entry": net.to_string(), "Desc": desc})).collect::<Vec<_>>(),
        }))
    }

    fn namespace_of<'a>(&'a self, p: &ParamMap) -> Result<&'a Namespace, ApiError> {
        let i = self.instance(p)?;
        let ns = required(p, "Namespace")?;
        i.namespaces
            .get(ns)
            .ok_or_else(|| ApiError::invalid_because("Namespace", "namespace not found"))
    }

    /// `Data`: the namespace's rules (an empty list when it has none).
    fn describe_retention_rule(&self, p: &ParamMap) -> Answer {
        let ns = self.namespace_of(p)?;
        Ok(json!({ "Data": ns.retention_rules }))
    }

    /// `Data`: the trigger, or `null` when the namespace has none.
    fn get_retention_trigger(&self, p: &ParamMap) -> Answer {
        let ns = self.namespace_of(p)?;
        Ok(json!({ "Data": ns.retention_trigger }))
    }

    // ------------------------------------------------------------ namespaces

    fn namespace_name(p: &ParamMap) -> Result<&str, ApiError> {
        let ns = required(p, "Namespace")?;
        if !valid_name(ns, 63) {
            return Err(ApiError::invalid("Namespace"));
        }
        Ok(ns)
    }

    fn namespace_mut<'a>(
        inst: &'a mut Instance,
        p: &ParamMap,
    ) -> Result<&'a mut Namespace, ApiError> {
        let ns = required(p, "Namespace")?;
        inst.namespaces
            .get_mut(ns)
            .ok_or_else(|| ApiError::invalid_because("Namespace", "namespace not found"))
    }

    fn create_namespace(&mut self, p: &ParamMap, now: NaiveDateTime) -> Answer {
        let ns = Self::namespace_name(p)?.to_owned();
        let public = required_bool(p, "Public")?;
        let inst = self.instance_mut(p)?;
        if inst.namespaces.contains_key(&ns) {
            return Err(ApiError::invalid_because(
                "Namespace",
                "namespace already exists",
            ));
        }
        if inst.namespaces.len() as u64 >= inst.namespace_quota {
            return Err(ApiError::invalid_because(
                "Namespace",
                "namespace quota exhausted",
            ));
        }
        inst.namespaces.insert(
            ns,
            Namespace {
                public,
                create_time: now,
                repos: BTreeMap::new(),
                retention_rules: Vec::new(),
                retention_trigger: None,
            },
        );
        Ok(json!({}))
    }

    fn describe_namespace(&self, p: &ParamMap) -> Answer {
        let filter_public = parse_bool(p, "Public")?;
        let (marker, max) = page_params(p, 20)?;
        let inst = self.instance(p)?;
        let name = optional(p, "Namespace");
        let items = inst
            .namespaces
            .iter()
            .filter(|(n, _)| name.is_none_or(|want| want == n.as_str()))
            .filter(|(_, ns)| filter_public.is_none_or(|want| want == ns.public))
            .map(|(n, ns)| {
                json!({
                    "Namespace": n,
                    "Public": ns.public,
                    // Quirk: a count sent as a string.
                    "RepoCount": ns.repos.len().to_string(),
                    "CreateTime": fmt_time(&ns.create_time),
                })
            })
            .collect();
        Ok(paged(items, marker, max, "NamespaceSet"))
    }

    fn modify_namespace_type(&mut self, p: &ParamMap) -> Answer {
        let public = required_bool(p, "Public")?;
        let inst = self.instance_mut(p)?;
        Self::namespace_mut(inst, p)?.public = public;
        Ok(json!({}))
    }

    fn describe_namespace_exist(&self, p: &ParamMap) -> Answer {
        let ns = required(p, "Namespace")?;
        let inst = self.instance(p)?;
        Ok(json!({ "Exist": inst.namespaces.contains_key(ns) }))
    }

    fn delete_namespace(&mut self, p: &ParamMap) -> Answer {
        let inst = self.instance_mut(p)?;
        let ns = Self::namespace_mut(inst, p)?;
        if !ns.repos.is_empty() {
            return Err(ApiError::invalid_because(
                "Namespace",
                "namespace still has repositories",
            ));
        }
        let name = required(p, "Namespace")?;
        inst.namespaces.remove(name);
        Ok(json!({}))
    }

    // ------------------------------------------------------------ repositories

    fn repo_mut<'a>(inst: &'a mut Instance, p: &ParamMap) -> Result<&'a mut Repo, ApiError> {
        let repo = required(p, "RepoName")?;
        Self::namespace_mut(inst, p)?
            .repos
            .get_mut(repo)
            .ok_or_else(|| ApiError::invalid_because("RepoName", "repository not found"))
    }

    fn describe_repository(&self, p: &ParamMap) -> Answer {
        let (marker, max) = page_params(p, 20)?;
        let names = list_param(p, "RepoName")?;
        let inst = self.instance(p)?;
        let ns_name = required(p, "Namespace")?;
        let ns = inst
            .namespaces
            .get(ns_name)
            .ok_or_else(|| ApiError::invalid_because("Namespace", "namespace not found"))?;
        let items = ns
            .repos
            .iter()
            .filter(|(n, _)| names.is_empty() || names.contains(n))
            .map(|(n, r)| {
                json!({
                    "RepoName": n,
                    "Public": ns.public,
                    "CreateTime": fmt_time(&r.create_time),
                    "UpdateTime": fmt_time(&r.update_time),
                    "Desc": r.desc,
                })
            })
            .collect();
        Ok(paged(items, marker, max, "RepoSet"))
    }

    fn delete_repository(&mut self, p: &ParamMap) -> Answer {
        let repo = required(p, "RepoName")?;
        let inst = self.instance_mut(p)?;
        Self::namespace_mut(inst, p)?
            .repos
            .remove(repo)
            .ok_or_else(|| ApiError::invalid_because("RepoName", "repository not found"))?;
        Ok(json!({}))
    }

    fn modify_repo_desc(&mut self, p: &ParamMap, now: NaiveDateTime) -> Answer {
        let desc = required(p, "Desc")?;
        if desc.chars().count() > 256 {
            return Err(ApiError::invalid_because(
                "Desc",
                "longer than 256 characters",
            ));
        }
        let inst = self.instance_mut(p)?;
        let repo = Self::repo_mut(inst, p)?;
        repo.desc = Some(desc.to_owned());
        repo.update_time = now;
        Ok(json!({}))
    }

    fn describe_images(&mut self, p: &ParamMap) -> Answer {
        let (marker, max) = page_params(p, 20)?;
        let image_id = optional(p, "ImageId").map(str::to_owned);
        let inst = self.instance_mut(p)?;
        let repo = Self::repo_mut(inst, p)?;
        let items = repo
            .images
            .iter()
            .filter(|i| image_id.as_deref().is_none_or(|id| id == i.digest))
            .map(|i| {
                json!({
                    "ImageId": i.digest,
                    "Size": i.size,
                    "CreateTime": fmt_time(&i.create_time),
                    "TagNames": if i.tags.is_empty() { Value::Null } else { json!(i.tags) },
                })
            })
            .collect();
        Ok(paged(items, marker, max, "ImageSet"))
    }

    fn delete_images(&mut self, p: &ParamMap, now: NaiveDateTime) -> Answer {
        let digest = required(p, "ImageId")?.to_owned();
        let inst = self.instance_mut(p)?;
        let repo = Self::repo_mut(inst, p)?;
        let before = repo.images.len();
        // The image goes, and every tag that pointed at it.
        repo.images.retain(|i| i.digest != digest);
        if repo.images.len() == before {
            return Err(ApiError::invalid_because("ImageId", "image not found"));
        }
        repo.update_time = now;
        Ok(json!({}))
    }

    fn delete_repo_tag(&mut self, p: &ParamMap, now: NaiveDateTime) -> Answer {
        let tag = required(p, "TagName")?.to_owned();
        let inst = self.instance_mut(p)?;
        let repo = Self::repo_mut(inst, p)?;
        let image = repo
            .images
            .iter_mut()
            .find(|i| i.tags.contains(&tag))
            .ok_or_else(|| ApiError::invalid_because("TagName", "tag not found"))?;
        // The tag goes; the image stays, untagged if that was its last tag.
        image.tags.retain(|t| *t != tag);
        repo.update_time = now;
        Ok(json!({}))
    }

    fn image_mut<'a>(inst: &'a mut Instance, p: &ParamMap) -> Result<&'a mut Image, ApiError> {
        let digest = required(p, "ImageId")?.to_owned();
        Self::repo_mut(inst, p)?
            .images
            .iter_mut()
            .find(|i| i.digest == digest)
            .ok_or_else(|| ApiError::invalid_because("ImageId", "image not found"))
    }

    fn start_image_scan(&mut self, p: &ParamMap, now: NaiveDateTime) -> Answer {
        let inst = self.instance_mut(p)?;
        Self::image_mut(inst, p)?.scanned = Some(now);
        Ok(json!({}))
    }

    fn describe_image_scan(&mut self, p: &ParamMap) -> Answer {
        let inst = self.instance_mut(p)?;
        let image = Self::image_mut(inst, p)?;
        let Some(finished) = image.scanned else {
            return Err(ApiError::invalid_because(
                "ImageId",
                "image has not been scanned",
            ));
        };
        Ok(json!({
            "Status": "Success",
            "TotalCount": 0,
            "FinishTime": fmt_time(&finished),
            "Summary": {"High": 0, "Medium": 0, "Low": 0, "Negligible": 0, "Unknown": 0},
            "VulnerabilitySet": [],
        }))
    }
}

/// Format 128 random bits as a UUID-shaped string.
pub fn uuid_from(bits: u128) -> String {
    let h = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> ParamMap {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Review 2 #8: list parameters are `Key.N` (N from 1, or from 0 as the
    /// Python SDK sends them); the bare `Key` is refused, naming the form.
    #[test]
    fn list_parameters_are_indexed_and_a_bare_key_is_refused() {
        let p = params(&[("RepoName.2", "b"), ("RepoName.1", "a")]);
        assert_eq!(list_param(&p, "RepoName").unwrap(), ["a", "b"]);
        let p = params(&[("InstanceId.0", "i")]);
        assert_eq!(list_param(&p, "InstanceId").unwrap(), ["i"]);
        assert!(list_param(&params(&[]), "RepoName").unwrap().is_empty());
        let e = list_param(&params(&[("RepoName", "web")]), "RepoName").unwrap_err();
        assert_eq!((e.status, e.code), (400, "InvalidParameterValue"));
        assert!(e.message.contains("RepoName.1"), "{}", e.message);
    }
}
