//! `doctor` (and `check --online`): what an operator needs to know before
//! the daemon's first run goes wrong, per instance, each with ✔/✘ and a
//! one-line fix. Only reads: credentials, the instance (DescribeInstance),
//! its prepaid expiry, a probe of every read each enabled job calls, the
//! mutations each mode needs and the `deploy/iam/` policy that grants them,
//! the registry's reachability from here for managed tokens (an anonymous
//! `/v2/`), server-side retention rules, the state path, quota usage, and
//! (information only) `docker-config` sinks docker would ignore.

use crate::config::{Config, InstanceConfig, Mode, StorageGranularity};
use crate::kcr::{
    Client, DescribeExternalEndpoint, DescribeImages, DescribeInstance, DescribeInstanceToken,
    DescribeInstanceUsage, DescribeNamespace, DescribeRepository, DescribeRetentionRule, Error,
    Supported,
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::time::Duration;

/// Days of prepaid time left under which the expiry check fails.
pub const EXPIRY_WARN_DAYS: i64 = 14;
/// Quota usage at or above which the quota check fails.
pub const QUOTA_WARN_RATIO: f64 = 0.9;
/// How long the anonymous registry probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Fail,
    /// Worth knowing; not checked (mutations cannot be probed) or not applicable.
    Info,
}

impl Status {
    pub fn mark(self) -> &'static str {
        match self {
            Status::Ok => "✔",
            Status::Fail => "✘",
            Status::Info => "ℹ",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Check {
    pub check: String,
    pub status: Status,
    pub detail: String,
    /// One line: what to do about a ✘.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn ok(check: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            check: check.into(),
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }
    fn fail(check: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            check: check.into(),
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
    fn info(check: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            check: check.into(),
            status: Status::Info,
            detail: detail.into(),
            fix: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InstanceReport {
    pub name: String,
    pub id: String,
    pub checks: Vec<Check>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub ok: bool,
    pub instances: Vec<InstanceReport>,
    /// Checks of this host rather than of an instance (the state path).
    pub local: Vec<Check>,
}

impl Report {
    fn new(instances: Vec<InstanceReport>, local: Vec<Check>) -> Report {
        let ok = instances
            .iter()
            .flat_map(|i| &i.checks)
            .chain(&local)
            .all(|c| c.status != Status::Fail);
        Report {
            ok,
            instances,
            local,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the report serialises") + "\n"
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let line = |out: &mut String, c: &Check| {
            out.push_str(&format!(
                "  {} {}: {}\n",
                c.status.mark(),
                c.check,
                c.detail
            ));
            if let Some(fix) = &c.fix {
                out.push_str(&format!("      fix: {fix}\n"));
            }
        };
        for i in &self.instances {
            out.push_str(&format!("instance {} ({})\n", i.name, i.id));
            for c in &i.checks {
                line(&mut out, c);
            }
        }
        out.push_str("this host\n");
        for c in &self.local {
            line(&mut out, c);
        }
        let failed = self
            .instances
            .iter()
            .flat_map(|i| &i.checks)
            .chain(&self.local)
            .filter(|c| c.status == Status::Fail)
            .count();
        out.push_str(&match failed {
            0 => "all checks passed\n".to_owned(),
            n => format!("{n} check{} failed\n", if n == 1 { "" } else { "s" }),
        });
        out
    }
}

/// The policy of `deploy/iam/` that grants a job's mutations in enforce mode.
fn policy_of(job: &str) -> &'static str {
    match job {
        "retention" => "deploy/iam/retention-enforce.json",
        "tokens" => "deploy/iam/tokens.json",
        "namespaces" => "deploy/iam/namespaces-enforce.json",
        "quota relief" => "deploy/iam/quota-relief.json",
        _ => "deploy/iam/read-only.json",
    }
}

/// Error codes that mean the key itself is wrong (not a missing permission).
fn bad_credentials(e: &Error) -> bool {
    matches!(
        e.code(),
        "SignatureDoesNotMatch"
            | "InvalidClientTokenId"
            | "MissingAuthenticationToken"
            | "IncompleteSignature"
    )
}

fn iam(action: &str) -> String {
    format!("kcrs:{action}")
}

/// The fix when the API could not be asked at all (`None`: it answered).
fn api_unreachable(e: &Error) -> Option<String> {
    use crate::kcr::TransportKind;
    Some(match e {
        Error::Transport {
            kind: TransportKind::Timeout,
            ..
        } => "no answer within [kcr] timeout: allow this host's egress to [kcr] endpoint (firewall, security group, HTTPS_PROXY/NO_PROXY), or raise [kcr] timeout if the network is slow".to_owned(),
        Error::Transport {
            kind: TransportKind::Connect,
            ..
        } => "cannot connect: check [kcr] endpoint (scheme, host; e.g. https://kcrs.api.ksyun.com) and that this host resolves and reaches it".to_owned(),
        Error::Transport { .. } => "the connection broke: check proxies between this host and [kcr] endpoint, then run doctor again".to_owned(),
        Error::Http { status, .. } if (300..400).contains(status) => format!(
            "[kcr] endpoint answers with a redirect (HTTP {status}): set it to the URL the API answers at itself (e.g. https://kcrs.api.ksyun.com; a signed request is not followed elsewhere)"
        ),
        _ => return None,
    })
}

/// Run every check. `now` decides the expiry's days left.
pub async fn diagnose(client: &Client, config: &Config, now: DateTime<Utc>) -> Report {
    let mut instances = Vec::new();
    for inst in &config.instances {
        instances.push(InstanceReport {
            name: inst.name.clone(),
            id: inst.id.clone(),
            checks: diagnose_instance(client, config, inst, now).await,
        });
    }
    let state = match &config.state {
        crate::config::StateConfig::Sqlite { path } => state_writable(path),
        crate::config::StateConfig::Postgres { .. } => state_reachable(&config.state),
    };
    let in_use = in_use_check(config, now).await;
    // A warning, not a failure: the sink works, docker just does not read it.
    let shadowed = crate::tokens::sinks::docker_config_warnings(config)
        .into_iter()
        .map(|w| Check::info("docker-config sink", w));
    Report::new(
        instances,
        std::iter::once(state)
            .chain(in_use)
            .chain(shadowed)
            .collect(),
    )
}

/// The `[retention.in_use]` sources answer (review 7: Prometheus down, a
/// missing file or a failing program passed doctor, while every enforce
/// retention run is blocked by it). Read as a run reads them, without the
/// state (nothing is remembered, so doctor changes nothing).
async fn in_use_check(config: &Config, now: DateTime<Utc>) -> Option<Check> {
    let rc = config.retention.as_ref()?;
    rc.in_use.as_ref()?;
    let name = "in-use sources";
    let got = crate::retention::read_in_use(rc, config, None, now).await;
    Some(if got.failures.is_empty() {
        let counts: Vec<String> = got
            .counts
            .iter()
            .map(|(source, n)| {
                let s = if *n == 1 { "" } else { "s" };
                format!("{source}: {n} image reference{s}")
            })
            .collect();
        Check::ok(name, counts.join(", "))
    } else {
        Check::fail(
            name,
            got.failures.join("; "),
            "fix the source or [retention.in_use]: while it fails, every retention run is blocked (nothing deleted; apply exits 3)",
        )
    })
}

/// One read probe's outcome, as a permission check.
fn probe_check(action: &str, jobs: &str, err: Option<&Error>) -> Check {
    let name = format!("permission {}", iam(action));
    match err {
        None => Ok(Check::ok(name, format!("allowed (needed by {jobs})"))),
        Some(e) if e.code() == "AccessDenied" => Err(Check::fail(
            name,
            format!("refused: {e}"),
            format!(
                "grant {} to this key (deploy/iam/read-only.json for reads)",
                iam(action)
            ),
        )),
        Some(e) => Err(Check::fail(
            name,
            format!("the probe failed: {e}"),
            "check the endpoint and the network, then run doctor again".to_owned(),
        )),
    }
    .unwrap_or_else(|c| c)
}

async fn diagnose_instance(
    client: &Client,
    config: &Config,
    inst: &InstanceConfig,
    now: DateTime<Utc>,
) -> Vec<Check> {
    let mut checks = Vec::new();
    let described = client
        .list_all(DescribeInstance {
            instance_ids: vec![inst.id.clone()],
            project_ids: Vec::new(),
            instance_name: None,
            marker: None,
            max_results: None,
        })
        .await;
    // Credentials: any answer but a signature or key refusal means KCR took the key.
    match &described {
        Err(e) if bad_credentials(e) => {
            checks.push(Check::fail(
                "credentials",
                format!("refused: {e}"),
                "set [kcr] access_key_id / secret_access_key to a valid key pair of this account (and [kcr] region to the instance's)",
            ));
            return checks;
        }
        Err(e) if e.code() == "AccessDenied" => {
            checks.push(Check::ok("credentials", "the key is valid"));
            checks.push(probe_check("DescribeInstance", "doctor", Some(e)));
        }
        Err(e) if api_unreachable(e).is_some() => {
            checks.push(Check::fail(
                "API reachable",
                e.to_string(),
                api_unreachable(e).unwrap_or_default(),
            ));
            return checks;
        }
        Err(e) => checks.push(Check::fail(
            "instance",
            format!("DescribeInstance failed: {e}"),
            "run doctor again; if it persists, check [kcr] endpoint and region",
        )),
        Ok(list) => {
            checks.push(Check::ok("credentials", "the key is valid"));
            match list.iter().find(|i| i.instance_id == inst.id) {
                None => {
                    checks.push(Check::fail(
                        "instance",
                        format!("{} not found in region {}", inst.id, config.kcr.region),
                        "check [[instances]] id and [kcr] region (DescribeInstance covers the default project)",
                    ));
                    return checks;
                }
                Some(i) if i.instance_status != "Running" => checks.push(Check::fail(
                    "instance",
                    format!("{} is {}", i.instance_name, i.instance_status),
                    "wait until it is Running, or see the KCR console for why it is not",
                )),
                Some(i) => checks.push(Check::ok(
                    "instance",
                    format!(
                        "{} is Running ({}, {})",
                        i.instance_name,
                        i.instance_type,
                        i.charge_type.as_deref().unwrap_or("charge type unknown")
                    ),
                )),
            }
            if let Some(i) = list.iter().find(|i| i.instance_id == inst.id) {
                checks.push(expiry(i, client, now));
            }
        }
    }
    checks.extend(permissions(client, config, inst).await);
    checks.extend(registry_reachable(client, config, inst).await);
    checks.push(match &config.quota {
        Some(_) => quota(client, inst).await,
        // Not asked for: no DescribeInstanceUsage probe (a read-only key
        // without it would fail a check of something nobody enabled).
        None => Check::info(
            "quota",
            "not checked: [quota] is not enabled (add a [quota] section to export kcr_quota_used and check usage here)",
        ),
    });
    checks
}

fn expiry(i: &crate::kcr::Instance, client: &Client, now: DateTime<Utc>) -> Check {
    match &i.expired_time {
        None => Check::ok("expiry", "no expiry (pay as you go)"),
        Some(t) => {
            let at = t.to_utc(client.timezone());
            let days = (at - now).num_days();
            let detail = format!("prepaid until {} ({days} days left)", at.format("%Y-%m-%d"));
            if days < EXPIRY_WARN_DAYS {
                Check::fail(
                    "expiry",
                    detail,
                    "renew the instance in the KCR console before it expires (an expired instance stops serving)",
                )
            } else {
                Check::ok("expiry", detail)
            }
        }
    }
}

/// Probe every read each enabled job calls, once per action; list the
/// mutations each enforce mode needs with the policy that grants them.
async fn permissions(client: &Client, config: &Config, inst: &InstanceConfig) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut readers: Vec<&str> = Vec::new();
    if config.retention.is_some() {
        readers.push("retention");
    }
    if config.namespaces.is_some() {
        readers.push("namespaces");
    }
    let storage = config
        .quota
        .as_ref()
        .is_some_and(|q| q.storage != StorageGranularity::None);
    if storage {
        readers.push("quota");
    }
    // Namespaces and repositories: the listings every inventory starts with.
    let mut namespaces = Vec::new();
    if !readers.is_empty() {
        let r = client.list_all(DescribeNamespace::all(&inst.id)).await;
        checks.push(probe_check(
            "DescribeNamespace",
            &readers.join(", "),
            r.as_ref().err(),
        ));
        namespaces = r.unwrap_or_default();
    }
    let needs = crate::inventory::Needs::from_config(config);
    let image_jobs: Vec<&str> = readers
        .iter()
        .copied()
        .filter(|j| *j != "namespaces")
        .collect();
    if !image_jobs.is_empty() {
        let jobs = image_jobs.join(", ");
        let in_scope: Vec<&crate::kcr::Namespace> = namespaces
            .iter()
            .filter(|n| inst.namespace_in_scope(&n.namespace))
            .collect();
        checks.extend(probe_namespaces(client, inst, &needs, &in_scope, &jobs).await);
    }
    let managed = managed_tokens(config, inst);
    if !managed.is_empty() {
        let r = client
            .list_all(DescribeInstanceToken {
                instance_id: inst.id.clone(),
                marker: None,
                max_results: None,
            })
            .await;
        checks.push(probe_check(
            "DescribeInstanceToken",
            "tokens",
            r.as_ref().err(),
        ));
    }
    if let Some(rc) = &config.retention {
        checks.extend(server_side_rules(client, inst, rc, &namespaces).await);
    }
    // Mutations cannot be probed without making them: say what each enforce mode needs.
    let mut mutations = Vec::new();
    if config
        .retention
        .as_ref()
        .is_some_and(|r| r.mode == Mode::Enforce)
    {
        mutations.push((
            "retention",
            "kcrs:DeleteImages, kcrs:DeleteRepoTag".to_string(),
        ));
    }
    // Quota relief deletes repositories and namespaces: its own policy.
    if let Some(rc) = config
        .retention
        .as_ref()
        .filter(|r| r.mode == Mode::Enforce)
    {
        let relief: Vec<&str> = [
            rc.delete_empty_repositories
                .map(|_| "kcrs:DeleteRepository"),
            rc.delete_empty_namespaces.map(|_| "kcrs:DeleteNamespace"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !relief.is_empty() {
            mutations.push(("quota relief", relief.join(", ")));
        }
    }
    if config
        .tokens
        .as_ref()
        .is_some_and(|t| t.mode == Mode::Enforce)
        && !managed.is_empty()
    {
        mutations.push((
            "tokens",
            "kcrs:CreateInstanceToken, kcrs:ModifyInstanceTokenStatus, kcrs:DeleteInstanceToken"
                .to_string(),
        ));
    }
    if config
        .namespaces
        .as_ref()
        .is_some_and(|n| n.mode == Mode::Enforce)
    {
        mutations.push(("namespaces", "kcrs:ModifyNamespaceType".to_string()));
    }
    for (job, actions) in mutations {
        checks.push(Check::info(
            format!("{job} enforce needs"),
            format!("{actions} (not probed: granted by {})", policy_of(job)),
        ));
    }
    checks
}

/// What one read probe saw in each namespace: refusals and failures by namespace.
#[derive(Default)]
struct Probed {
    /// Namespaces where the call was allowed.
    allowed: usize,
    /// (namespace, error) where IAM refused.
    refused: Vec<(String, Error)>,
    /// (namespace, error) where the call failed otherwise.
    failed: Vec<(String, Error)>,
}

impl Probed {
    fn note(&mut self, namespace: &str, r: Result<(), Error>) {
        match r {
            Ok(()) => self.allowed += 1,
            Err(e) if e.code() == "AccessDenied" => self.refused.push((namespace.to_owned(), e)),
            Err(e) => self.failed.push((namespace.to_owned(), e)),
        }
    }

    /// One check for the action: ✔ naming what was probed, or ✘ naming every
    /// namespace that refused (or failed) and the fix.
    fn check(&self, inst: &InstanceConfig, action: &str, jobs: &str, what: &str) -> Check {
        let name = format!("permission {}", iam(action));
        let names = |v: &[(String, Error)]| {
            v.iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if let Some((_, first)) = self.refused.first() {
            let resource = format!("krn:ksc:kcrs:*:*:repository/{}/<namespace>/*", inst.id);
            return Check::fail(
                name,
                format!(
                    "refused in {} of {} namespaces probed ({}): {first}",
                    self.refused.len(),
                    self.allowed + self.refused.len() + self.failed.len(),
                    names(&self.refused)
                ),
                format!(
                    "grant {} on {resource} for those namespaces (deploy/iam/read-only.json), or narrow [[instances]] scope to what this key may read",
                    iam(action)
                ),
            );
        }
        if let Some((_, first)) = self.failed.first() {
            return Check::fail(
                name,
                format!("the probe failed in {}: {first}", names(&self.failed)),
                "check the endpoint and the network, then run doctor again",
            );
        }
        Check::ok(name, format!("allowed (needed by {jobs}); probed {what}"))
    }
}

/// DescribeRepository in every namespace in scope, and DescribeImages on one
/// repository a job needs in each of them. IAM grants per repository, so a
/// policy may still refuse single repositories elsewhere in a namespace:
/// the inventory skips those with the reason `access denied`, and the
/// detail says what was probed.
async fn probe_namespaces(
    client: &Client,
    inst: &InstanceConfig,
    needs: &crate::inventory::Needs,
    namespaces: &[&crate::kcr::Namespace],
    jobs: &str,
) -> Vec<Check> {
    if namespaces.is_empty() {
        return vec![
            Check::info(
                format!("permission {}", iam("DescribeRepository")),
                "not probed: no namespace in scope",
            ),
            Check::info(
                format!("permission {}", iam("DescribeImages")),
                "not probed: no namespace in scope",
            ),
        ];
    }
    let mut repositories = Probed::default();
    let mut images = Probed::default();
    for ns in namespaces {
        let listed = client
            .list_all(DescribeRepository::all(&inst.id, &ns.namespace))
            .await;
        let repo = listed.as_ref().ok().and_then(|repos| {
            repos
                .iter()
                .find(|r| {
                    needs.images(&ns.namespace, &r.repo_name)
                        && inst.in_scope(&ns.namespace, &r.repo_name)
                })
                .map(|r| r.repo_name.clone())
        });
        repositories.note(&ns.namespace, listed.map(|_| ()));
        if let Some(repo) = repo {
            let r = client
                .call(&DescribeImages {
                    max_results: Some(1),
                    ..DescribeImages::all(&inst.id, &ns.namespace, &repo)
                })
                .await;
            images.note(&ns.namespace, r.map(|_| ()));
        }
    }
    let n = namespaces.len();
    let mut checks = vec![repositories.check(
        inst,
        "DescribeRepository",
        jobs,
        &format!("in all {n} namespaces in scope"),
    )];
    let image_probes = images.allowed + images.refused.len() + images.failed.len();
    checks.push(if image_probes == 0 {
        Check::info(
            format!("permission {}", iam("DescribeImages")),
            "not probed: no repository a job needs",
        )
    } else {
        images.check(
            inst,
            "DescribeImages",
            jobs,
            &format!(
                "one repository in each of the {image_probes} namespaces holding a repository a job needs (IAM may still refuse single repositories: the inventory skips those as \"access denied\")"
            ),
        )
    });
    checks
}

fn managed_tokens<'a>(
    config: &'a Config,
    inst: &InstanceConfig,
) -> Vec<&'a crate::config::ManagedToken> {
    config
        .tokens
        .iter()
        .flat_map(|t| &t.managed)
        .filter(|m| m.instance == inst.name)
        .collect()
}

/// Server-side (Harbor) retention rules in namespaces a retention rule covers.
async fn server_side_rules(
    client: &Client,
    inst: &InstanceConfig,
    rc: &crate::config::RetentionConfig,
    namespaces: &[crate::kcr::Namespace],
) -> Vec<Check> {
    let mut with_rules = Vec::new();
    let mut refused = None;
    let mut supported = true;
    for ns in namespaces.iter().filter(|n| {
        inst.namespace_in_scope(&n.namespace)
            && rc
                .rules
                .iter()
                .any(|r| crate::retention::planner::namespace_applies(r, &n.namespace))
    }) {
        match client
            .call_if_supported(&DescribeRetentionRule {
                instance_id: inst.id.clone(),
                namespace: ns.namespace.clone(),
            })
            .await
        {
            Ok(Supported::Yes(rules)) => {
                let n = rules.enabled().count();
                if n > 0 {
                    with_rules.push(format!("{} ({n})", ns.namespace));
                }
            }
            Ok(Supported::No { .. }) => {
                supported = false;
                break;
            }
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let name = "server-side retention";
    if let Some(e) = refused {
        return vec![probe_check("DescribeRetentionRule", "retention", Some(&e))];
    }
    if !supported {
        return vec![Check::info(
            name,
            "unknown: this endpoint does not offer DescribeRetentionRule",
        )];
    }
    if with_rules.is_empty() {
        return vec![Check::ok(
            name,
            "no enabled server-side rule where retention rules apply",
        )];
    }
    let found = format!("enabled server-side rules in {}", with_rules.join(", "));
    // Only an enforcing run that is not allowed to share is blocked there.
    vec![match (rc.mode, rc.allow_server_side_rules) {
        (Mode::Enforce, false) => Check::fail(
            name,
            format!("{found}: two engines would delete in one namespace; enforce is blocked there"),
            "disable those rules in the KCR console (image retention), or set [retention] allow_server_side_rules = true to let both delete there",
        ),
        (Mode::Enforce, true) => Check::info(
            name,
            format!(
                "{found}: allowed by [retention] allow_server_side_rules = true (both engines delete there)"
            ),
        ),
        (Mode::DryRun, _) => Check::info(
            name,
            format!(
                "{found}: dry-run deletes nothing; enforce would be blocked there unless [retention] allow_server_side_rules = true"
            ),
        ),
    }]
}

/// For each managed token: the registry answers an anonymous `/v2/` from here.
async fn registry_reachable(client: &Client, config: &Config, inst: &InstanceConfig) -> Vec<Check> {
    let managed = managed_tokens(config, inst);
    if managed.is_empty() {
        return Vec::new();
    }
    let Some(registry) = inst.registry.as_deref() else {
        return Vec::new();
    };
    let endpoint = match client
        .call_if_supported(&DescribeExternalEndpoint {
            instance_id: inst.id.clone(),
        })
        .await
    {
        Ok(Supported::Yes(e)) => Ok(Some(e)),
        Ok(Supported::No { .. }) => Ok(None),
        Err(e) => Err(e),
    };
    let mut checks = Vec::new();
    let endpoint_text = match &endpoint {
        Ok(Some(e)) => format!(
            "DescribeExternalEndpoint: {} ({})",
            e.status,
            if e.policies.is_empty() {
                "no address allowed".to_owned()
            } else {
                e.policies
                    .iter()
                    .map(|p| p.entry.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ),
        Ok(None) => "DescribeExternalEndpoint: not offered by this endpoint".to_owned(),
        Err(e) => {
            checks.push(probe_check("DescribeExternalEndpoint", "tokens", Some(e)));
            format!("DescribeExternalEndpoint failed: {}", e.code())
        }
    };
    // The embedded simulator (`sim:demo`) serves the registry itself, as
    // the rotation knows (never probe the demo's made-up host on the internet).
    let base = crate::tokens::settings_for(config, client)
        .registry_override
        .unwrap_or_else(|| crate::tokens::verify::base_url(registry));
    // The rotation's own preflight: what it sees is what doctor says.
    let probe = crate::tokens::verify::probe(&base, PROBE_TIMEOUT).await;
    let tokens: Vec<&str> = managed.iter().map(|m| m.name.as_str()).collect();
    let name = format!("registry {registry} reachable");
    checks.push(match probe {
        Ok(()) => Check::ok(
            name,
            format!(
                "{base}/v2/ reachable: an anonymous probe was asked to log in (tokens {}); {endpoint_text}",
                tokens.join(", ")
            ),
        ),
        Err(e @ crate::tokens::verify::VerifyError::OpenToAnonymous { .. }) => Check::fail(
            name,
            format!("{e}; {endpoint_text}"),
            "point [[instances]] registry at the KCR registry host (it asks for credentials), or set verify = false on the managed tokens",
        ),
        Err(e @ crate::tokens::verify::VerifyError::Redirected { .. }) => Check::fail(
            name,
            format!("{e}: {base} is not the registry host itself; {endpoint_text}"),
            "set [[instances]] registry to the host that answers /v2/ itself (the one `docker login` uses, e.g. <instance>.ksyunkcr.com); credentials are never sent through a redirect",
        ),
        Err(e @ crate::tokens::verify::VerifyError::TimedOut { .. }) => Check::fail(
            name,
            format!(
                "{e} ({}s): something drops the traffic (KCR refuses an address with HTTP 403, not silence); {endpoint_text}",
                PROBE_TIMEOUT.as_secs()
            ),
            "allow this host's egress to the registry on port 443 (firewall, security group, HTTPS_PROXY/NO_PROXY), or use the registry host reachable from this network",
        ),
        Err(e @ crate::tokens::verify::VerifyError::Blocked { .. }) => Check::fail(
            name,
            format!("{e}: this address is not let through; {endpoint_text}"),
            "open the instance's external endpoint (外网访问) and add this host's address (CIDR) to its access policy in the KCR console, or run from an allowed network",
        ),
        Err(e) => Check::fail(
            name,
            format!("{e}; {endpoint_text}"),
            "open the instance's external endpoint (外网访问) and add this host's address (CIDR) to its access policy, and check DNS and egress to the registry",
        ),
    });
    checks
}

async fn quota(client: &Client, inst: &InstanceConfig) -> Check {
    let r = client
        .call(&DescribeInstanceUsage {
            instance_id: inst.id.clone(),
        })
        .await;
    match r {
        Err(e) => probe_check("DescribeInstanceUsage", "quota", Some(&e)),
        Ok(u) => {
            let ratio = |used: u64, limit: u64| {
                if limit == 0 {
                    0.0
                } else {
                    used as f64 / limit as f64
                }
            };
            let rn = ratio(u.namespace_usage, u.namespace_quota);
            let rr = ratio(u.repo_usage, u.repo_quota);
            let detail = format!(
                "namespaces {}/{} ({:.0}%), repositories {}/{} ({:.0}%)",
                u.namespace_usage,
                u.namespace_quota,
                rn * 100.0,
                u.repo_usage,
                u.repo_quota,
                rr * 100.0
            );
            if rn >= QUOTA_WARN_RATIO || rr >= QUOTA_WARN_RATIO {
                Check::fail(
                    "quota",
                    detail,
                    "delete empty repositories and namespaces ([retention] delete_empty_repositories / delete_empty_namespaces) or raise the instance's quota",
                )
            } else {
                Check::ok("quota", detail)
            }
        }
    }
}

/// The PostgreSQL state answers and its schema is one this build reads.
fn state_reachable(state: &crate::config::StateConfig) -> Check {
    let name = "state database reachable";
    match crate::state::Store::open_config(state) {
        Ok(s) => Check::ok(name, s.location().to_owned()),
        Err(e) => Check::fail(
            name,
            e.to_string(),
            "check [state] url (host, port, database, user, password, sslmode) and that the database is up".to_owned(),
        ),
    }
}

/// The state database can be created or written where the config says.
fn state_writable(path: &std::path::Path) -> Check {
    let name = "state path writable";
    let shown = path.display();
    // The store creates missing directories: the nearest existing one must be writable.
    let dir = path
        .ancestors()
        .skip(1)
        .map(|p| {
            if p.as_os_str().is_empty() {
                std::path::Path::new(".")
            } else {
                p
            }
        })
        .find(|p| p.exists())
        .unwrap_or(std::path::Path::new("."));
    let result = if !dir.is_dir() {
        Err(std::io::Error::other(format!(
            "{} is not a directory",
            dir.display()
        )))
    } else if path.exists() {
        std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map(|_| ())
    } else {
        tempfile::NamedTempFile::new_in(dir).map(|_| ())
    };
    let Err(e) = result else {
        // Writable is not enough: a damaged file (or one of a newer
        // schema) stops every job and apply, so doctor must not pass it.
        if path.exists()
            && let Err(e) = crate::state::Store::probe_file(path)
        {
            return Check::fail(
                name,
                e.to_string(),
                format!(
                    "restore {shown} from a backup, or move it away (a new state is created; the audit history and token journal in it are lost)"
                ),
            );
        }
        return Check::ok(name, format!("{shown}"));
    };
    let d = dir.display();
    let fix = if !dir.is_dir() {
        format!("{d} is a file, not a directory: set [state] path to a file inside a directory")
    } else if e.kind() == std::io::ErrorKind::ReadOnlyFilesystem {
        format!(
            "{d} is on a read-only filesystem (under systemd: ProtectSystem=strict without ReadWritePaths=/StateDirectory=): set [state] path to a writable place"
        )
    } else if e.kind() == std::io::ErrorKind::PermissionDenied && path.exists() {
        format!(
            "{shown} exists but this user may not write it: chown/chmod it for the user kcr-housekeeper runs as, or set [state] path elsewhere"
        )
    } else if e.kind() == std::io::ErrorKind::PermissionDenied {
        format!(
            "this user may not create files in {d}: chown/chmod it for the user kcr-housekeeper runs as (under systemd: StateDirectory=), or set [state] path elsewhere"
        )
    } else {
        format!("make {d} writable by this user, or set [state] path elsewhere")
    };
    Check::fail(name, format!("{shown}: {e}"), fix)
}
