//! IAM for the simulator: access keys scoped by policies, as the user guide's
//! "基于IAM权限访问控制" describes them.
//!
//! `sim --policies FILE` reads
//! `{"<AccessKeyId>": {"secret", "user", "statements": [{"effect", "actions", "resources"}]}}`.
//! A request signed with one of these keys is allowed when a statement allows
//! its action on its resource and none denies it (an explicit Deny wins);
//! otherwise it is answered 403 `AccessDenied` with the reference's message.
//! The simulator's own key pair stays the account's primary key: allowed
//! everything, as on the real service.
//!
//! Resources per action follow the guide's tables: actions without resource
//! authorisation on `*`; token and endpoint actions on
//! `krn:ksc:kcrs:<region>:<account>:instance/<iid>`; namespace actions on
//! `namespace/<iid>/<ns>` (CreateNamespace on `namespace/<iid>/*`); image and
//! repository actions on `repository/<iid>/<ns>/<repo>`. Action names compare
//! case-insensitively, resources case-sensitively; `*` and `?` in either are
//! wildcards (`*` also across `/`, as IAM's are).

use super::world::ApiError;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The account id the simulated resources belong to.
pub const ACCOUNT_ID: &str = "2000000001";

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("{path}: key {key}: {what}")]
    Invalid {
        path: String,
        key: String,
        what: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Effect {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    pub effect: Effect,
    pub actions: Vec<String>,
    pub resources: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Principal {
    pub secret: SecretString,
    pub user: String,
    pub statements: Vec<Statement>,
}

/// Access keys and their policies.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    keys: HashMap<String, Principal>,
}

impl Policies {
    pub fn load(path: &Path) -> Result<Policies, PolicyError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            PolicyError::Parse { source, .. } => PolicyError::Parse {
                path: shown.clone(),
                source,
            },
            PolicyError::Invalid { key, what, .. } => PolicyError::Invalid {
                path: shown.clone(),
                key,
                what,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Policies, PolicyError> {
        let keys: BTreeMap<String, Principal> =
            serde_json::from_str(text).map_err(|source| PolicyError::Parse {
                path: "policies".into(),
                source,
            })?;
        for (key, p) in &keys {
            let invalid = |what: &str| PolicyError::Invalid {
                path: "policies".into(),
                key: key.clone(),
                what: what.into(),
            };
            if key.is_empty() || p.secret.expose_secret().is_empty() {
                return Err(invalid("access key id and secret must not be empty"));
            }
            if p.statements
                .iter()
                .any(|s| s.actions.is_empty() || s.resources.is_empty())
            {
                return Err(invalid("every statement needs actions and resources"));
            }
        }
        Ok(Policies {
            keys: keys.into_iter().collect(),
        })
    }

    pub fn principal(&self, access_key_id: &str) -> Option<&Principal> {
        self.keys.get(access_key_id)
    }
}

/// The IAM action name of an API action (they differ for one).
pub fn iam_action(action: &str) -> String {
    match action {
        "ModifyRepoDesc" => "kcrs:ModifyRepositoryDesc".into(),
        other => format!("kcrs:{other}"),
    }
}

/// The resource an action is authorised on, from its parameters.
pub fn resource(action: &str, region: &str, param: impl Fn(&str) -> Option<String>) -> String {
    let krn = |rest: String| format!("krn:ksc:kcrs:{region}:{ACCOUNT_ID}:{rest}");
    let iid = || param("InstanceId").unwrap_or_default();
    let ns = || param("Namespace").unwrap_or_default();
    match action {
        "DeleteInstance"
        | "CreateInstanceToken"
        | "ModifyInstanceTokenStatus"
        | "ModifyInstanceTokenInformation"
        | "DescribeInstanceToken"
        | "DeleteInstanceToken"
        | "CreateInternalEndpoint"
        | "DescribeInternalEndpoint"
        | "DeleteInternalEndpoint"
        | "CreateInternalEndpointDns"
        | "DescribeInternalEndpointDns"
        | "DeleteInternalEndpointDns"
        | "DescribeExternalEndpoint" => krn(format!("instance/{}", iid())),
        "CreateNamespace" => krn(format!("namespace/{}/*", iid())),
        "ModifyNamespaceType"
        | "DeleteNamespace"
        | "CreateWebhookTrigger"
        | "DescribeWebhookTrigger"
        | "ModifyWebhookTrigger"
        | "DescribeWebhookTriggerLog"
        | "DeleteWebhookTrigger"
        | "DescribeRetentionRule"
        | "GetRetentionTrigger" => krn(format!("namespace/{}/{}", iid(), ns())),
        "DeleteRepository" | "ModifyRepoDesc" | "DescribeImages" | "DeleteImages"
        | "DeleteRepoTag" => krn(format!(
            "repository/{}/{}/{}",
            iid(),
            ns(),
            param("RepoName").unwrap_or_default()
        )),
        // CreateInstance, DescribeInstance, DescribeInstanceUsage,
        // DescribeNamespace, DescribeNamespaceExist, DescribeRepository,
        // StartImageScan, DescribeImageScan: no resource authorisation.
        _ => "*".into(),
    }
}

/// Wildcard match: `*` any run of characters, `?` one character.
fn wildcard(pattern: &[char], text: &[char], fold_case: bool) -> bool {
    let eq = |a: char, b: char| {
        if fold_case {
            a.eq_ignore_ascii_case(&b)
        } else {
            a == b
        }
    };
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || eq(pattern[p], text[t])) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

fn matches(pattern: &str, text: &str, fold_case: bool) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    wildcard(&p, &t, fold_case)
}

impl Principal {
    /// `Ok` when allowed; else the reference's `AccessDenied`.
    pub fn authorize(&self, action: &str, resource: &str) -> Result<(), ApiError> {
        let iam = iam_action(action);
        let applies = |s: &Statement| {
            s.actions.iter().any(|a| matches(a, &iam, true))
                && s.resources.iter().any(|r| matches(r, resource, false))
        };
        let denied = self
            .statements
            .iter()
            .any(|s| s.effect == Effect::Deny && applies(s));
        let allowed = self
            .statements
            .iter()
            .any(|s| s.effect == Effect::Allow && applies(s));
        if allowed && !denied {
            return Ok(());
        }
        Err(ApiError::new(
            403,
            "AccessDenied",
            format!(
                "User: {} is not authorized to perform: {iam} on resource: {resource}.",
                self.user
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IID: &str = "eb1d0d73-4845-4283-a736-000000000001";

    fn principal(statements: &str) -> Principal {
        let text = format!(
            r#"{{"AKTEAM": {{"secret": "s", "user": "team-a-bot", "statements": {statements}}}}}"#
        );
        Policies::parse(&text)
            .unwrap()
            .principal("AKTEAM")
            .unwrap()
            .clone()
    }

    fn repo(ns: &str, repo: &str) -> String {
        resource("DescribeImages", "cn-beijing-6", |k| match k {
            "InstanceId" => Some(IID.into()),
            "Namespace" => Some(ns.into()),
            "RepoName" => Some(repo.into()),
            _ => None,
        })
    }

    #[test]
    fn resources_follow_the_guide_tables() {
        let p = |k: &str| match k {
            "InstanceId" => Some(IID.to_string()),
            "Namespace" => Some("team-a".to_string()),
            "RepoName" => Some("app".to_string()),
            _ => None,
        };
        let r = |a: &str| resource(a, "cn-beijing-6", p);
        let base = format!("krn:ksc:kcrs:cn-beijing-6:{ACCOUNT_ID}:");
        assert_eq!(r("DescribeNamespace"), "*");
        assert_eq!(r("DescribeRepository"), "*");
        assert_eq!(r("DescribeInstanceUsage"), "*");
        assert_eq!(r("CreateInstanceToken"), format!("{base}instance/{IID}"));
        assert_eq!(
            r("DescribeExternalEndpoint"),
            format!("{base}instance/{IID}")
        );
        assert_eq!(r("CreateNamespace"), format!("{base}namespace/{IID}/*"));
        assert_eq!(
            r("ModifyNamespaceType"),
            format!("{base}namespace/{IID}/team-a")
        );
        assert_eq!(
            r("DeleteRepoTag"),
            format!("{base}repository/{IID}/team-a/app")
        );
        assert_eq!(iam_action("ModifyRepoDesc"), "kcrs:ModifyRepositoryDesc");
    }

    #[test]
    fn allow_deny_and_default_deny() {
        let p = principal(
            r#"[{"effect": "Allow", "actions": ["kcrs:DescribeNamespace"], "resources": ["*"]},
                {"effect": "Allow", "actions": ["kcrs:Describe*", "KCRS:deleteimages"],
                 "resources": ["krn:ksc:kcrs:*:*:repository/*/team-a/*"]},
                {"effect": "Deny", "actions": ["kcrs:DeleteImages"],
                 "resources": ["krn:ksc:kcrs:*:*:repository/*/team-a/prod-*"]}]"#,
        );
        assert!(
            p.authorize("DescribeImages", &repo("team-a", "app"))
                .is_ok()
        );
        assert!(p.authorize("DescribeNamespace", "*").is_ok());
        // Action names ignore case.
        assert!(p.authorize("DeleteImages", &repo("team-a", "app")).is_ok());
        // An explicit Deny wins over the Allow.
        let e = p
            .authorize("DeleteImages", &repo("team-a", "prod-api"))
            .unwrap_err();
        assert_eq!((e.status, e.code), (403, "AccessDenied"));
        assert!(
            e.message
                .starts_with("User: team-a-bot is not authorized to perform: kcrs:DeleteImages"),
            "{}",
            e.message
        );
        // Nothing allows DeleteRepoTag: denied by default.
        assert!(
            p.authorize("DeleteRepoTag", &repo("team-a", "app"))
                .is_err()
        );
        // Resources compare case-sensitively.
        assert!(
            p.authorize("DescribeImages", &repo("Team-A", "app"))
                .is_err()
        );
    }

    #[test]
    fn a_repository_scope_does_not_grant_resource_free_actions() {
        let p = principal(
            r#"[{"effect": "Allow", "actions": ["kcrs:*"],
                 "resources": ["krn:ksc:kcrs:*:*:repository/*/team-a/*"]}]"#,
        );
        assert!(p.authorize("DescribeImages", &repo("team-a", "x")).is_ok());
        assert!(p.authorize("DescribeImages", &repo("team-b", "x")).is_err());
        assert!(p.authorize("DescribeNamespace", "*").is_err());
    }

    #[test]
    fn bad_policy_files_are_refused() {
        assert!(Policies::parse("{").is_err());
        assert!(Policies::parse(r#"{"AK": {"secret": "s", "user": "u", "statements": [{"effect": "Maybe", "actions": ["*"], "resources": ["*"]}]}}"#).is_err());
        assert!(Policies::parse(r#"{"AK": {"secret": "s", "user": "u", "statements": [{"effect": "Allow", "actions": [], "resources": ["*"]}]}}"#).is_err());
        assert!(
            Policies::parse(
                r#"{"AK": {"secret": "s", "user": "u", "statements": [], "extra": 1}}"#
            )
            .is_err()
        );
    }
}
