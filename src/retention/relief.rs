//! Quota relief (opt-in, `[retention] delete_empty_repositories` /
//! `delete_empty_namespaces = { older_than = "30d" }`): KCR's quota alerts
//! count namespaces and repositories, which deleting images never lowers.
//! A repository holding no image whose UpdateTime is older than the bound,
//! and a namespace holding no repository created longer ago than the bound,
//! are deleted — planned purely from a complete listing, inside the run's
//! caps and grace, audited before each call, and re-checked right before it
//! (DescribeImages / DescribeRepository must answer 0).

use super::executor::{ExecEnv, Outcome, Stop, stop_before};
use crate::config::{Config, InstanceConfig, RetentionConfig};
use crate::failpoint;
use crate::inventory::Inventory;
use crate::kcr::{DeleteNamespace, DeleteRepository, DescribeImages, DescribeRepository, Error};
use crate::state::{Mutation, StateError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Why one relief call failed.
#[derive(Debug, thiserror::Error)]
pub enum ReliefError {
    #[error(transparent)]
    Api(#[from] Error),
    /// A test's failpoint (`failpoints` feature).
    #[error("injected: {0}")]
    Injected(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReliefKind {
    DeleteRepository,
    DeleteNamespace,
}

impl ReliefKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReliefKind::DeleteRepository => "delete_repository",
            ReliefKind::DeleteNamespace => "delete_namespace",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReliefAction {
    pub action: ReliefKind,
    pub instance: String,
    pub namespace: String,
    /// `None` for a namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    pub reason: String,
}

impl ReliefAction {
    /// `namespace/repository` or `namespace`.
    pub fn target(&self) -> String {
        match &self.repository {
            Some(r) => format!("{}/{r}", self.namespace),
            None => self.namespace.clone(),
        }
    }

    /// Identity across runs, for grace marks.
    pub fn grace_key(&self, instance_id: &str) -> String {
        format!(
            "relief:{instance_id}/{}:{}",
            self.target(),
            self.action.as_str()
        )
    }
}

fn days(d: chrono::Duration) -> i64 {
    d.num_days()
}

/// What relief deletes in `inventory` at `now`. Pure. Only what a complete
/// listing shows empty is a candidate: an instance or namespace whose
/// listing failed (or was refused), a repository skipped or whose images
/// were not listed, and anything without a known time are left alone.
/// So is anything outside the instance's declared `scope` (`instances`, by
/// name; an instance not configured is not touched): DescribeRepository
/// takes no resource, so a scoped key lists namespaces it may not look into
/// as empty — deleting them is not ours to do, and the key may not.
pub fn plan_relief(
    inv: &Inventory,
    instances: &[InstanceConfig],
    cfg: &RetentionConfig,
    now: DateTime<Utc>,
) -> Vec<ReliefAction> {
    let bound =
        |d: std::time::Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    let mut out = Vec::new();
    for inst in inv.instances.iter().filter(|i| i.error.is_none()) {
        let Some(declared) = instances.iter().find(|c| c.name == inst.name) else {
            continue;
        };
        for ns in inst
            .namespaces
            .iter()
            .filter(|n| n.error.is_none() && declared.namespace_in_scope(&n.name))
        {
            if let Some(older) = cfg.delete_empty_repositories.map(bound) {
                for r in ns
                    .repositories
                    .iter()
                    .filter(|r| declared.in_scope(&ns.name, &r.name))
                {
                    let Some(updated) = r.updated_at else {
                        continue;
                    };
                    let age = now.signed_duration_since(updated);
                    if r.skipped.is_none() && !r.unlisted && r.images.is_empty() && age > older {
                        out.push(ReliefAction {
                            action: ReliefKind::DeleteRepository,
                            instance: inst.name.clone(),
                            namespace: ns.name.clone(),
                            repository: Some(r.name.clone()),
                            reason: format!(
                                "no image, last updated {}d ago (delete_empty_repositories older_than {})",
                                days(age),
                                crate::duration::format(cfg.delete_empty_repositories.unwrap_or_default())
                            ),
                        });
                    }
                }
            }
            if let (Some(older), Some(created)) =
                (cfg.delete_empty_namespaces.map(bound), ns.created_at)
            {
                let age = now.signed_duration_since(created);
                if ns.repositories.is_empty() && age > older {
                    out.push(ReliefAction {
                        action: ReliefKind::DeleteNamespace,
                        instance: inst.name.clone(),
                        namespace: ns.name.clone(),
                        repository: None,
                        reason: format!(
                            "no repository, created {}d ago (delete_empty_namespaces older_than {})",
                            days(age),
                            crate::duration::format(cfg.delete_empty_namespaces.unwrap_or_default())
                        ),
                    });
                }
            }
        }
    }
    out.sort_by(|a, b| {
        (&a.instance, &a.namespace, &a.repository).cmp(&(&b.instance, &b.namespace, &b.repository))
    });
    out
}

/// What applying relief did: as [`super::executor::Executed`], a
/// cancellation, a stop and an unwritten audit record are counted, never
/// silently dropped — the run must not say success with relief unfinished.
#[derive(Debug, Default)]
pub struct Relieved {
    pub results: Vec<(ReliefAction, Outcome)>,
    pub cancelled: bool,
    /// Actions never attempted (cancelled, stopped, or the run stopped
    /// before relief began).
    pub not_attempted: usize,
    /// Why relief stopped before the end (too many failures in a row).
    pub stopped: Option<String>,
    /// Audit records that could not be written (the run fails).
    pub audit_errors: usize,
}

impl Relieved {
    /// Nothing attempted: `n` actions left because the run stopped first.
    pub fn skipped(n: usize) -> Relieved {
        Relieved {
            not_attempted: n,
            ..Default::default()
        }
    }
    pub fn done(&self) -> usize {
        self.results
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Applied | Outcome::AlreadyDone))
            .count()
    }
    /// Lines for each action that failed or whose outcome is unknown.
    pub fn failures(&self) -> Vec<String> {
        self.results
            .iter()
            .filter_map(|(a, o)| match o {
                Outcome::Failed(why) | Outcome::Unknown(why) => Some(format!(
                    "{} {}/{}: {why}",
                    a.action.as_str(),
                    a.instance,
                    a.target()
                )),
                _ => None,
            })
            .collect()
    }
    /// Something went wrong or was left undone.
    pub fn has_failures(&self) -> bool {
        !self.failures().is_empty()
            || self.stopped.is_some()
            || self.audit_errors > 0
            || self.not_attempted > 0
    }
}

/// Apply relief actions in order: audit, re-check emptiness, delete. Stops
/// between actions when cancelled and after `[kcr] max_consecutive_failures`
/// failed actions in a row; what was left is counted as not attempted.
pub async fn execute(env: &ExecEnv<'_>, config: &Config, actions: Vec<ReliefAction>) -> Relieved {
    let mut out = Relieved::default();
    let total = actions.len();
    let mut failures_in_row = 0u32;
    for (i, a) in actions.into_iter().enumerate() {
        if let Some(stop) = stop_before(env, failures_in_row, "quota relief stopped", "actions") {
            match stop {
                Stop::Cancelled => out.cancelled = true,
                Stop::Streak(why) => out.stopped = Some(why),
            }
            out.not_attempted = total - i;
            break;
        }
        let Some(inst) = config.instance_by_name(&a.instance) else {
            out.not_attempted += 1;
            continue;
        };
        let target = a.target();
        let begun =
            failpoint::hit("retention.relief.audit_begin", StateError::Injected).and_then(|()| {
                env.state.audited(
                    &Mutation {
                        job: env.job,
                        run_id: env.run_id,
                        instance: &a.instance,
                        action: a.action.as_str(),
                        target: &target,
                        detail: &a.reason,
                    },
                    Utc::now(),
                )
            });
        let outcome = match &begun {
            Err(e) => Outcome::Failed(format!("cannot write the audit record: {e}")),
            Ok(_) => relieve(env, &inst.id, &a).await,
        };
        let (status, error) = outcome.audit();
        if let Ok(guard) = begun {
            let finished = failpoint::hit("retention.relief.audit_finish", StateError::Injected)
                .and_then(|()| guard.finish(status, error));
            if let Err(e) = finished {
                out.audit_errors += 1;
                tracing::error!(error = %e, target = %target, "cannot write the audit record");
            }
        }
        match &outcome {
            Outcome::Applied | Outcome::AlreadyDone => {
                failures_in_row = 0;
                env.metrics
                    .retention
                    .deleted(&a.instance, a.action.as_str());
            }
            Outcome::Failed(_) | Outcome::Unknown(_) => failures_in_row += 1,
            Outcome::Stale(_) => failures_in_row = 0,
        }
        tracing::info!(instance = %a.instance, action = a.action.as_str(), target = %target, outcome = ?outcome, "quota relief");
        out.results.push((a, outcome));
    }
    out
}

/// Check, then delete one repository or namespace.
async fn relieve(env: &ExecEnv<'_>, instance_id: &str, a: &ReliefAction) -> Outcome {
    let client = env.client;
    let check = async {
        failpoint::hit("retention.relief.verify", ReliefError::Injected)?;
        match &a.repository {
            Some(repo) => {
                // "Gone" only from a complete listing: every page, checked
                // against TotalCount (an endpoint may ignore the filter).
                let listed = client
                    .list_all(DescribeRepository {
                        repo_name: Some(repo.clone()),
                        ..DescribeRepository::all(instance_id, &a.namespace)
                    })
                    .await?;
                if !listed.iter().any(|r| &r.repo_name == repo) {
                    return Ok(Some(Outcome::AlreadyDone));
                }
                let images = client
                    .call(&DescribeImages {
                        max_results: Some(1),
                        ..DescribeImages::all(instance_id, &a.namespace, repo)
                    })
                    .await?;
                Ok(
                    (images.total_count > 0 || !images.items.is_empty()).then(|| {
                        Outcome::Stale(format!(
                            "the repository holds {} images now",
                            images.total_count.max(images.items.len() as u64)
                        ))
                    }),
                )
            }
            None => {
                let repos = client
                    .call(&DescribeRepository {
                        max_results: Some(1),
                        ..DescribeRepository::all(instance_id, &a.namespace)
                    })
                    .await?;
                Ok((repos.total_count > 0 || !repos.items.is_empty()).then(|| {
                    Outcome::Stale(format!(
                        "the namespace holds {} repositories now",
                        repos.total_count.max(repos.items.len() as u64)
                    ))
                }))
            }
        }
    };
    let checked: Result<Option<Outcome>, ReliefError> = check.await;
    match checked {
        Err(e) => return Outcome::Failed(format!("verification: {e}")),
        Ok(Some(settled)) => return settled,
        Ok(None) => {}
    }
    let deleted = async {
        failpoint::hit("retention.relief.delete", ReliefError::Injected)?;
        match &a.repository {
            Some(repo) => client
                .call(&DeleteRepository {
                    instance_id: instance_id.to_owned(),
                    namespace: a.namespace.clone(),
                    repo_name: repo.clone(),
                })
                .await
                .map(|_| ())?,
            None => client
                .call(&DeleteNamespace {
                    instance_id: instance_id.to_owned(),
                    namespace: a.namespace.clone(),
                })
                .await
                .map(|_| ())?,
        }
        Ok::<(), ReliefError>(())
    };
    match deleted.await {
        Ok(()) => Outcome::Applied,
        Err(e) => Outcome::Failed(format!("delete: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{ImageInfo, InstanceInventory, NamespaceInventory, RepositoryInventory};
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap()
    }

    fn parsed(repos: Option<&str>, namespaces: Option<&str>, scope: &str) -> Config {
        let mut text = format!(
            "[kcr]\nendpoint = \"sim:demo\"\n[[instances]]\nid = \"i\"\nname = \"prod\"\n{scope}\n[retention]\n",
        );
        if let Some(d) = repos {
            text.push_str(&format!(
                "delete_empty_repositories = {{ older_than = \"{d}\" }}\n"
            ));
        }
        if let Some(d) = namespaces {
            text.push_str(&format!(
                "delete_empty_namespaces = {{ older_than = \"{d}\" }}\n"
            ));
        }
        crate::config::parse(&text, "t.toml", std::path::Path::new("."), &|_: &str| None).unwrap()
    }

    fn cfg(repos: Option<&str>, namespaces: Option<&str>) -> RetentionConfig {
        parsed(repos, namespaces, "").retention.unwrap()
    }

    /// The one instance `prod`, with no declared scope.
    fn all() -> Vec<InstanceConfig> {
        parsed(None, None, "").instances
    }

    fn repo(name: &str, images: usize, age_days: i64) -> RepositoryInventory {
        RepositoryInventory {
            name: name.into(),
            images: (0..images)
                .map(|n| ImageInfo {
                    digest: format!("sha256:{n:064x}").into(),
                    size: 1,
                    pushed_at: now(),
                    tags: crate::inventory::tags(["t"]),
                })
                .collect(),
            skipped: None,
            unlisted: false,
            updated_at: Some(now() - chrono::Duration::days(age_days)),
        }
    }

    fn ns(name: &str, repos: Vec<RepositoryInventory>, age_days: i64) -> NamespaceInventory {
        NamespaceInventory {
            name: name.into(),
            public: false,
            repositories: repos,
            error: None,
            created_at: Some(now() - chrono::Duration::days(age_days)),
        }
    }

    fn inv(namespaces: Vec<NamespaceInventory>) -> Inventory {
        Inventory {
            taken_at: now(),
            instances: vec![InstanceInventory {
                name: "prod".into(),
                id: "i".into(),
                namespaces,
                error: None,
            }],
        }
    }

    fn targets(a: &[ReliefAction]) -> Vec<(ReliefKind, String)> {
        a.iter().map(|a| (a.action, a.target())).collect()
    }

    #[test]
    fn only_empty_old_repositories_and_namespaces_from_complete_listings() {
        use ReliefKind::*;
        let mut skipped = repo("skipped", 0, 90);
        skipped.skipped = Some("access denied: x".into());
        let mut unlisted = repo("unlisted", 0, 90);
        unlisted.unlisted = true;
        let mut timeless = repo("timeless", 0, 90);
        timeless.updated_at = None;
        let mut failed_ns = ns("failed", vec![], 90);
        failed_ns.error = Some("DescribeRepository: HTTP 500".into());
        let world = inv(vec![
            ns(
                "apps",
                vec![
                    repo("old-empty", 0, 31),
                    repo("new-empty", 0, 29),
                    repo("old-full", 1, 90),
                    skipped,
                    unlisted,
                    timeless,
                ],
                400,
            ),
            ns("bare-old", vec![], 31),
            ns("bare-new", vec![], 5),
            failed_ns,
        ]);
        // (repositories bound, namespaces bound) → what is deleted.
        type Row<'a> = (Option<&'a str>, Option<&'a str>, Vec<(ReliefKind, &'a str)>);
        let table: [Row; 4] = [
            (None, None, vec![]),
            (
                Some("30d"),
                None,
                vec![(DeleteRepository, "apps/old-empty")],
            ),
            (None, Some("30d"), vec![(DeleteNamespace, "bare-old")]),
            (
                Some("20d"),
                Some("1d"),
                vec![
                    (DeleteRepository, "apps/new-empty"),
                    (DeleteRepository, "apps/old-empty"),
                    (DeleteNamespace, "bare-new"),
                    (DeleteNamespace, "bare-old"),
                ],
            ),
        ];
        for (r, n, want) in table {
            let got = plan_relief(&world, &all(), &cfg(r, n), now());
            let want: Vec<(ReliefKind, String)> =
                want.into_iter().map(|(k, t)| (k, t.to_owned())).collect();
            assert_eq!(targets(&got), want, "{r:?} {n:?}");
        }
        // A failed instance listing: nothing at all.
        let mut broken = world.clone();
        broken.instances[0].error = Some("DescribeNamespace: HTTP 500".into());
        assert!(plan_relief(&broken, &all(), &cfg(Some("1d"), Some("1d")), now()).is_empty());
    }

    /// Review 2 #2: nothing outside the declared scope is planned — a scoped
    /// key lists namespaces it may not read as empty — and nothing of an
    /// instance the config does not name.
    #[test]
    fn nothing_outside_the_declared_scope() {
        use ReliefKind::*;
        let world = inv(vec![
            ns(
                "apps",
                vec![repo("old-empty", 0, 90), repo("web", 0, 90)],
                400,
            ),
            ns("bare", vec![], 90),
            ns("internal", vec![], 90),
        ]);
        let rc = cfg(Some("1d"), Some("1d"));
        type Row<'a> = (&'a str, Vec<(ReliefKind, &'a str)>);
        let table: [Row; 5] = [
            (
                "",
                vec![
                    (DeleteRepository, "apps/old-empty"),
                    (DeleteRepository, "apps/web"),
                    (DeleteNamespace, "bare"),
                    (DeleteNamespace, "internal"),
                ],
            ),
            (
                "scope = [\"apps/*\"]",
                vec![
                    (DeleteRepository, "apps/old-empty"),
                    (DeleteRepository, "apps/web"),
                ],
            ),
            (
                "scope = [\"apps/old-*\"]",
                vec![(DeleteRepository, "apps/old-empty")],
            ),
            (
                "scope = [\"apps/*\", \"bare/*\"]",
                vec![
                    (DeleteRepository, "apps/old-empty"),
                    (DeleteRepository, "apps/web"),
                    (DeleteNamespace, "bare"),
                ],
            ),
            ("scope = [\"elsewhere/*\"]", vec![]),
        ];
        for (scope, want) in table {
            let instances = parsed(None, None, scope).instances;
            let got = plan_relief(&world, &instances, &rc, now());
            let want: Vec<(ReliefKind, String)> =
                want.into_iter().map(|(k, t)| (k, t.to_owned())).collect();
            assert_eq!(targets(&got), want, "{scope}");
        }
        assert!(
            plan_relief(&world, &[], &rc, now()).is_empty(),
            "an instance the config does not name is not touched"
        );
    }

    #[test]
    fn zero_bounds_are_refused() {
        let text = "[kcr]\nendpoint = \"sim:demo\"\n[[instances]]\nid = \"i\"\nname = \"prod\"\n[retention]\ndelete_empty_repositories = { older_than = \"0s\" }\ndelete_empty_namespaces = { older_thn = \"1d\" }\n";
        let e = crate::config::parse(text, "t.toml", std::path::Path::new("."), &|_: &str| None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("retention.delete_empty_repositories.older_than"),
            "{e}"
        );
        assert!(e.contains("delete_empty_namespaces"), "{e}");
    }
}
