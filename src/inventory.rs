//! A snapshot of the registry: instances → namespaces → repositories →
//! images. Listings go through the client (rate limit, in-flight cap,
//! retries, `TotalCount` checks) with one page of 99 per 99 items and one
//! call for an empty list. A repository whose listing failed is marked
//! skipped with the reason: nothing is ever planned from a partial list.
//!
//! A listing refused with `AccessDenied` (a key scoped by IAM policies) is
//! skipped with the reason [`ACCESS_DENIED`]; outside the instance's declared
//! `scope` the refusal is expected ([`is_expected_skip`]) and does not make a
//! run partial. Images are listed only for repositories some job needs
//! ([`Needs`]): fewer calls, and no refusals for repositories nobody asked about.

use crate::config::{Config, InstanceConfig, StorageGranularity};
use crate::kcr::{Client, DescribeImages, DescribeNamespace, DescribeRepository, Error};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    pub taken_at: DateTime<Utc>,
    pub instances: Vec<InstanceInventory>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceInventory {
    /// The config's label.
    pub name: String,
    pub id: String,
    pub namespaces: Vec<NamespaceInventory>,
    /// Set when the namespace listing itself failed: nothing below is known.
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NamespaceInventory {
    pub name: String,
    pub public: bool,
    pub repositories: Vec<RepositoryInventory>,
    /// Set when the repository listing failed.
    pub error: Option<String>,
    /// CreateTime, for quota relief (`None`: unknown, never relieved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RepositoryInventory {
    pub name: String,
    /// Newest first, ties by digest.
    pub images: Vec<ImageInfo>,
    /// Set when the image listing failed or changed size mid-way: skip this repository.
    pub skipped: Option<String>,
    /// No job needs this repository's images: they were not listed (`images`
    /// is empty and means nothing). Never planned from, never "empty".
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unlisted: bool,
    /// UpdateTime, for quota relief (`None`: unknown, never relieved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
}

/// The `reason` of a listing refused by IAM (`AccessDenied`).
pub const ACCESS_DENIED: &str = "access denied";
/// The `reason` of any other failed or shifted listing.
pub const LISTING_FAILED: &str = "listing failed";
/// How a refusal outside the instance's declared `scope` starts: expected,
/// so reported but not partial.
pub const OUTSIDE_SCOPE: &str = "access denied (outside the instance's scope)";

/// The `skipped` of a repository that was listed but lies outside the
/// instance's declared `scope` ([`Inventory::within_scope`]): not managed,
/// never planned or relieved, not shown in plans.
pub const UNMANAGED: &str = "outside the instance's scope (not managed)";

/// The metric label of a refusal the config declares expected (outside the
/// instance's `scope`), apart from the unexpected ones.
pub const OUTSIDE_SCOPE_LABEL: &str = "outside scope";

/// The metric label of a skip reason: [`OUTSIDE_SCOPE_LABEL`] (expected),
/// [`ACCESS_DENIED`] or [`LISTING_FAILED`]; `None` for a repository merely
/// not managed ([`UNMANAGED`]: nothing was refused or failed).
pub fn skip_label(reason: &str) -> Option<&'static str> {
    if reason == UNMANAGED {
        None
    } else if reason.starts_with(OUTSIDE_SCOPE) {
        Some(OUTSIDE_SCOPE_LABEL)
    } else if reason.starts_with(ACCESS_DENIED) {
        Some(ACCESS_DENIED)
    } else {
        Some(LISTING_FAILED)
    }
}

/// A skip the config declares expected: AccessDenied outside the instance's
/// `scope`. It is listed in reports but does not make a run partial.
pub fn is_expected_skip(reason: &str) -> bool {
    reason.starts_with(OUTSIDE_SCOPE) || reason == UNMANAGED
}

/// The skip reason of a failed listing; `in_scope` says whether the listed
/// thing lies inside the instance's declared scope.
fn skip_reason(e: &InventoryError, in_scope: bool) -> String {
    match e {
        InventoryError::Api(api) if api.code() == "AccessDenied" && in_scope => {
            format!("{ACCESS_DENIED}: {e}")
        }
        InventoryError::Api(api) if api.code() == "AccessDenied" => {
            format!("{OUTSIDE_SCOPE}: {e}")
        }
        _ => e.to_string(),
    }
}

/// Which repositories' images the enabled jobs need: every repository when
/// quota storage metrics or quota relief are on, else those in some
/// retention rule's scope.
#[derive(Clone, Debug)]
pub struct Needs {
    all: bool,
    rules: Vec<crate::config::RetentionRule>,
}

impl Needs {
    /// Every repository's images.
    pub fn all() -> Needs {
        Needs {
            all: true,
            rules: Vec::new(),
        }
    }

    pub fn from_config(c: &Config) -> Needs {
        let storage = c
            .quota
            .as_ref()
            .is_some_and(|q| q.storage != StorageGranularity::None);
        // Quota relief must know which repositories hold no image.
        let relief = c.retention.as_ref().is_some_and(|r| {
            r.delete_empty_repositories.is_some() || r.delete_empty_namespaces.is_some()
        });
        Needs {
            all: storage || relief,
            rules: c
                .retention
                .as_ref()
                .map(|r| r.rules.clone())
                .unwrap_or_default(),
        }
    }

    /// Whether the images of `namespace/repository` must be listed.
    pub fn images(&self, namespace: &str, repository: &str) -> bool {
        self.all
            || self
                .rules
                .iter()
                .any(|r| crate::retention::planner::rule_applies(r, namespace, repository))
    }

    /// Identity for the snapshot cache.
    fn key(&self) -> String {
        format!("{self:?}")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub digest: Digest,
    pub size: u64,
    pub pushed_at: DateTime<Utc>,
    pub tags: Tags,
}

/// A tag name; short names (≤ 24 bytes, nearly all) live inline, without an allocation.
pub type Tag = compact_str::CompactString;

/// An image's tags, shared (not copied) by the plan's actions on that image.
pub type Tags = std::sync::Arc<[Tag]>;

/// Build [`Tags`] from anything string-like.
pub fn tags<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Tags {
    names.into_iter().map(|n| Tag::new(n.as_ref())).collect()
}

/// An image digest. `sha256:` + 64 lowercase hex digits (every KCR image id
/// seen) is kept as 32 bytes inline — a million-image inventory is dominated by
/// digests otherwise; anything else is kept verbatim. Compares, orders, prints
/// and serialises exactly as its text.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Digest {
    Sha256([u8; 32]),
    Other(Box<str>),
}

impl Digest {
    pub fn parse(text: &str) -> Digest {
        let hex = text.strip_prefix("sha256:").filter(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        match hex {
            Some(h) => {
                let mut bytes = [0u8; 32];
                for (i, pair) in h.as_bytes().chunks(2).enumerate() {
                    let nibble = |c: u8| {
                        if c.is_ascii_digit() {
                            c - b'0'
                        } else {
                            c - b'a' + 10
                        }
                    };
                    bytes[i] = nibble(pair[0]) << 4 | nibble(pair[1]);
                }
                Digest::Sha256(bytes)
            }
            None => Digest::Other(text.into()),
        }
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Digest::Sha256(bytes) => {
                f.write_str("sha256:")?;
                bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
            Digest::Other(text) => f.write_str(text),
        }
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

impl Ord for Digest {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        match (self, other) {
            // Lowercase hex sorts as its bytes do.
            (Digest::Sha256(a), Digest::Sha256(b)) => a.cmp(b),
            _ => self.to_string().cmp(&other.to_string()),
        }
    }
}

impl PartialOrd for Digest {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl From<&str> for Digest {
    fn from(text: &str) -> Digest {
        Digest::parse(text)
    }
}

impl From<String> for Digest {
    fn from(text: String) -> Digest {
        Digest::parse(&text)
    }
}

impl PartialEq<str> for Digest {
    fn eq(&self, other: &str) -> bool {
        match self {
            Digest::Other(text) => &**text == other,
            Digest::Sha256(_) => Digest::parse(other) == *self,
        }
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Ok(Digest::parse(&text))
    }
}

/// Newest first, ties by digest: the order every ranking uses.
pub fn sort_images(images: &mut [ImageInfo]) {
    images.sort_by(|a, b| {
        b.pushed_at
            .cmp(&a.pushed_at)
            .then_with(|| a.digest.cmp(&b.digest))
    });
}

/// Lets jobs in one process share a registry snapshot younger than
/// `[inventory] max_age` instead of listing everything again.
#[derive(Default)]
pub struct InventoryCache {
    #[allow(clippy::type_complexity)]
    latest: tokio::sync::Mutex<Option<(std::time::Instant, String, std::sync::Arc<Inventory>)>>,
}

impl InventoryCache {
    /// A snapshot of what `config`'s jobs need, no older than its
    /// `[inventory] max_age`, taking a new one if needed. Concurrent callers
    /// wait for one listing rather than starting their own.
    pub async fn for_config(&self, client: &Client, config: &Config) -> std::sync::Arc<Inventory> {
        self.for_config_watched(client, config, &Quiet).await
    }

    /// As [`InventoryCache::for_config`], telling `progress` how a new
    /// listing goes (a progress bar on a terminal).
    pub async fn for_config_watched(
        &self,
        client: &Client,
        config: &Config,
        progress: &dyn Progress,
    ) -> std::sync::Arc<Inventory> {
        let needs = Needs::from_config(config);
        self.get_needed(
            client,
            &config.instances,
            config.inventory.max_age,
            &needs,
            progress,
        )
        .await
    }

    /// A snapshot of every repository's images no older than `max_age`.
    pub async fn get(
        &self,
        client: &Client,
        instances: &[InstanceConfig],
        max_age: std::time::Duration,
    ) -> std::sync::Arc<Inventory> {
        self.get_needed(client, instances, max_age, &Needs::all(), &Quiet)
            .await
    }

    async fn get_needed(
        &self,
        client: &Client,
        instances: &[InstanceConfig],
        max_age: std::time::Duration,
        needs: &Needs,
        progress: &dyn Progress,
    ) -> std::sync::Arc<Inventory> {
        let key = format!("{instances:?}\n{}", needs.key());
        let mut latest = self.latest.lock().await;
        if let Some((at, k, inv)) = latest.as_ref()
            && at.elapsed() <= max_age
            && *k == key
        {
            return inv.clone();
        }
        let inv = std::sync::Arc::new(
            Inventory::collect_needed(client, instances, Utc::now(), progress, needs).await,
        );
        // A snapshot with a failed listing is not shared: the next job lists
        // again rather than inheriting the gap for `max_age`. Expected
        // refusals (outside the declared scope) are not gaps.
        *latest = inv
            .is_complete()
            .then(|| (std::time::Instant::now(), key, inv.clone()));
        inv
    }

    /// Forget the snapshot (after mutations, which make it stale).
    pub async fn invalidate(&self) {
        *self.latest.lock().await = None;
    }
}

/// Told about listing progress (a progress bar on a terminal).
pub trait Progress: Sync {
    /// `n` more repositories were found and will be listed.
    fn found(&self, n: u64);
    /// One repository was listed.
    fn listed(&self);
}

/// No progress reporting.
pub struct Quiet;

impl Progress for Quiet {
    fn found(&self, _: u64) {}
    fn listed(&self) {}
}

impl Inventory {
    /// Take a snapshot of every configured instance, concurrently within the client's limits.
    pub async fn collect(
        client: &Client,
        instances: &[InstanceConfig],
        now: DateTime<Utc>,
    ) -> Inventory {
        Self::collect_with(client, instances, now, &Quiet).await
    }

    pub async fn collect_with(
        client: &Client,
        instances: &[InstanceConfig],
        now: DateTime<Utc>,
        progress: &dyn Progress,
    ) -> Inventory {
        Self::collect_needed(client, instances, now, progress, &Needs::all()).await
    }

    /// Like [`Inventory::collect_with`], listing images only where `needs` asks.
    pub async fn collect_needed(
        client: &Client,
        instances: &[InstanceConfig],
        now: DateTime<Utc>,
        progress: &dyn Progress,
        needs: &Needs,
    ) -> Inventory {
        let all = futures::future::join_all(
            instances
                .iter()
                .map(|i| collect_instance(client, i, progress, needs)),
        )
        .await;
        Inventory {
            taken_at: now,
            instances: all,
        }
    }

    /// Every instance, namespace and repository was listed completely, but
    /// for refusals the config declares expected.
    pub fn is_complete(&self) -> bool {
        let ok = |e: &Option<String>| e.as_deref().is_none_or(is_expected_skip);
        self.instances.iter().all(|i| {
            i.error.is_none()
                && i.namespaces
                    .iter()
                    .all(|n| ok(&n.error) && n.repositories.iter().all(|r| ok(&r.skipped)))
        })
    }

    /// Skipped listings per (instance, reason label): what
    /// `kcr_housekeeper_inventory_skipped` exports. Every instance has every
    /// label, zero when nothing was skipped for that reason.
    pub fn skipped_counts(&self) -> Vec<(String, &'static str, u64)> {
        let mut out = Vec::new();
        for i in &self.instances {
            let mut denied = 0;
            let mut failed = 0;
            let mut outside = 0;
            let reasons = i.error.iter().chain(i.namespaces.iter().flat_map(|n| {
                n.error
                    .iter()
                    .chain(n.repositories.iter().filter_map(|r| r.skipped.as_ref()))
            }));
            for r in reasons {
                match skip_label(r) {
                    Some(OUTSIDE_SCOPE_LABEL) => outside += 1,
                    Some(ACCESS_DENIED) => denied += 1,
                    Some(_) => failed += 1,
                    None => {}
                }
            }
            out.push((i.name.clone(), ACCESS_DENIED, denied));
            out.push((i.name.clone(), LISTING_FAILED, failed));
            out.push((i.name.clone(), OUTSIDE_SCOPE_LABEL, outside));
        }
        out
    }

    /// What the instances' declared `scope` manages (review finding 8: a
    /// full key planned everywhere, whatever the scope said). Unchanged for
    /// an instance without a scope. Otherwise a namespace outside the scope
    /// is dropped, and a repository outside it is kept as skipped
    /// ([`UNMANAGED`], images cleared): its namespace is then never taken
    /// for empty by quota relief. Refusals (instance, namespace or
    /// repository) stay as they were, so reports still list them.
    pub fn within_scope(
        self: std::sync::Arc<Self>,
        instances: &[InstanceConfig],
    ) -> std::sync::Arc<Inventory> {
        let scoped = |name: &str| {
            instances
                .iter()
                .find(|i| i.name == name)
                .filter(|i| !i.scope.is_empty())
        };
        if !self.instances.iter().any(|i| scoped(&i.name).is_some()) {
            return self;
        }
        let mut inv = (*self).clone();
        for i in &mut inv.instances {
            let Some(cfg) = scoped(&i.name) else {
                continue;
            };
            i.namespaces.retain_mut(|ns| {
                let ns_in = cfg.namespace_in_scope(&ns.name);
                for r in &mut ns.repositories {
                    if r.skipped.is_none() && !cfg.in_scope(&ns.name, &r.name) {
                        r.skipped = Some(UNMANAGED.to_owned());
                        r.images = Vec::new();
                    }
                }
                if !ns_in {
                    // Outside the scope: only its refusals are worth showing.
                    ns.repositories
                        .retain(|r| r.skipped.as_deref().is_some_and(|s| s != UNMANAGED));
                    return ns.error.is_some() || !ns.repositories.is_empty();
                }
                true
            });
        }
        std::sync::Arc::new(inv)
    }

    pub fn image_count(&self) -> usize {
        self.instances
            .iter()
            .flat_map(|i| &i.namespaces)
            .flat_map(|n| &n.repositories)
            .map(|r| r.images.len())
            .sum()
    }
}

async fn collect_instance(
    client: &Client,
    inst: &InstanceConfig,
    progress: &dyn Progress,
    needs: &Needs,
) -> InstanceInventory {
    let listed = async {
        crate::failpoint::hit("retention.api.list_namespaces", InventoryError::Injected)?;
        Ok(client.list_all(DescribeNamespace::all(&inst.id)).await?)
    }
    .await
    .and_then(
        |n| match first_duplicate(n.iter().map(|n| n.namespace.as_str())) {
            Some(d) => Err(InventoryError::Drift {
                action: "DescribeNamespace",
                detail: format!("namespace {d:?} listed twice"),
            }),
            None => Ok(n),
        },
    );
    let namespaces = match listed {
        Ok(n) => n,
        Err(e) => {
            return InstanceInventory {
                name: inst.name.clone(),
                id: inst.id.clone(),
                namespaces: Vec::new(),
                // A key that cannot list namespaces is never "expected".
                error: Some(skip_reason(&e, true)),
            };
        }
    };
    let tz = *client.timezone();
    let namespaces = futures::future::join_all(namespaces.into_iter().map(|ns| async move {
        let created_at = ns.create_time.as_ref().map(|t| t.to_utc(&tz));
        let listed = async {
            crate::failpoint::hit("retention.api.list_repositories", InventoryError::Injected)?;
            Ok(client
                .list_all(DescribeRepository::all(&inst.id, &ns.namespace))
                .await?)
        }
        .await
        .and_then(
            |r| match first_duplicate(r.iter().map(|r| r.repo_name.as_str())) {
                Some(d) => Err(InventoryError::Drift {
                    action: "DescribeRepository",
                    detail: format!("repository {d:?} listed twice"),
                }),
                None => Ok(r),
            },
        );
        match listed {
            Err(e) => NamespaceInventory {
                error: Some(skip_reason(&e, inst.namespace_in_scope(&ns.namespace))),
                name: ns.namespace,
                public: ns.public,
                repositories: Vec::new(),
                created_at,
            },
            Ok(repos) => {
                let ns_name = ns.namespace.clone();
                let (wanted, unwanted): (Vec<_>, Vec<_>) = repos
                    .into_iter()
                    .partition(|r| needs.images(&ns_name, &r.repo_name));
                progress.found(wanted.len() as u64);
                let mut repositories = futures::future::join_all(wanted.into_iter().map(|r| {
                    let updated_at = r.update_time.as_ref().map(|t| t.to_utc(&tz));
                    let ns_name = &ns_name;
                    async move {
                        let mut repo = collect_repository(client, inst, ns_name, r.repo_name).await;
                        repo.updated_at = updated_at;
                        progress.listed();
                        repo
                    }
                }))
                .await;
                repositories.extend(unwanted.into_iter().map(|r| RepositoryInventory {
                    updated_at: r.update_time.as_ref().map(|t| t.to_utc(&tz)),
                    name: r.repo_name,
                    images: Vec::new(),
                    skipped: None,
                    unlisted: true,
                }));
                repositories.sort_by(|a, b| a.name.cmp(&b.name));
                NamespaceInventory {
                    name: ns.namespace,
                    public: ns.public,
                    repositories,
                    error: None,
                    created_at,
                }
            }
        }
    }))
    .await;
    let mut namespaces = namespaces;
    namespaces.sort_by(|a, b| a.name.cmp(&b.name));
    InstanceInventory {
        name: inst.name.clone(),
        id: inst.id.clone(),
        namespaces,
        error: None,
    }
}

async fn collect_repository(
    client: &Client,
    inst: &InstanceConfig,
    namespace: &str,
    name: String,
) -> RepositoryInventory {
    match list_images(client, &inst.id, namespace, &name).await {
        Ok(images) => RepositoryInventory {
            name,
            images,
            skipped: None,
            unlisted: false,
            updated_at: None,
        },
        Err(e) => RepositoryInventory {
            skipped: Some(skip_reason(&e, inst.in_scope(namespace, &name))),
            name,
            images: Vec::new(),
            unlisted: false,
            updated_at: None,
        },
    }
}

/// Why a listing cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error(transparent)]
    Api(#[from] Error),
    /// Offset paging shifted under a concurrent push and delete (`TotalCount`
    /// unchanged): an item came twice, so another may be missing.
    #[error("{action}: the listing shifted while paging ({detail}); nothing is inferred from it")]
    Drift {
        action: &'static str,
        detail: String,
    },
    /// A test's failpoint (`failpoints` feature).
    #[error("injected: {0}")]
    Injected(String),
}

/// The first name that occurs twice, if any.
fn first_duplicate<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut seen = std::collections::HashSet::new();
    names.into_iter().find(|n| !seen.insert(*n))
}

/// The sign that an image listing drifted between pages: a digest listed
/// twice (with `TotalCount` unchanged, another image was then never seen).
fn image_drift(images: &[ImageInfo]) -> Option<String> {
    let mut digests = std::collections::HashSet::new();
    images
        .iter()
        .find(|i| !digests.insert(&i.digest))
        .map(|d| format!("image {} listed twice", d.digest))
}

/// Every image of one repository, newest first; an error rather than a
/// partial or shifted list.
pub async fn list_images(
    client: &Client,
    instance_id: &str,
    namespace: &str,
    repo: &str,
) -> Result<Vec<ImageInfo>, InventoryError> {
    let tz = *client.timezone();
    crate::failpoint::hit("retention.api.list_images", InventoryError::Injected)?;
    let raw = client
        .list_all(DescribeImages::all(instance_id, namespace, repo))
        .await?;
    let mut images: Vec<ImageInfo> = raw
        .into_iter()
        .map(|i| ImageInfo {
            // No push time: treat as brand new, so min_age and the newest-image veto protect it.
            pushed_at: i
                .create_time
                .map(|t| t.to_utc(&tz))
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
            digest: Digest::parse(&i.image_id),
            size: i.size,
            tags: tags(i.tag_names),
        })
        .collect();
    if let Some(detail) = image_drift(&images) {
        return Err(InventoryError::Drift {
            action: "DescribeImages",
            detail,
        });
    }
    sort_images(&mut images);
    Ok(images)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(name: &str, images: usize, skipped: Option<&str>) -> RepositoryInventory {
        RepositoryInventory {
            name: name.into(),
            images: (0..images)
                .map(|n| ImageInfo {
                    digest: format!("sha256:{n:064x}").into(),
                    size: 1,
                    pushed_at: DateTime::<Utc>::UNIX_EPOCH,
                    tags: tags(["t"]),
                })
                .collect(),
            skipped: skipped.map(str::to_owned),
            unlisted: false,
            updated_at: None,
        }
    }

    fn ns(name: &str, repositories: Vec<RepositoryInventory>) -> NamespaceInventory {
        NamespaceInventory {
            name: name.into(),
            public: false,
            repositories,
            error: None,
            created_at: None,
        }
    }

    fn instances(scope: &str) -> Vec<InstanceConfig> {
        let text = format!(
            "[kcr]\nendpoint = \"sim:demo\"\n[[instances]]\nid = \"i\"\nname = \"prod\"\n{scope}\n"
        );
        crate::config::parse(&text, "t.toml", std::path::Path::new("."), &|_: &str| None)
            .unwrap()
            .instances
    }

    /// Review finding 8: what a declared scope keeps of a full listing.
    #[test]
    fn within_scope_keeps_what_the_scope_manages_and_every_refusal() {
        let denied = "access denied (outside the instance's scope): AccessDenied";
        let inv = std::sync::Arc::new(Inventory {
            taken_at: DateTime::<Utc>::UNIX_EPOCH,
            instances: vec![InstanceInventory {
                name: "prod".into(),
                id: "i".into(),
                namespaces: vec![
                    ns("apps", vec![repo("web", 2, None), repo("worker", 1, None)]),
                    ns(
                        "ci",
                        vec![repo("builder", 3, None), repo("cache", 0, Some(denied))],
                    ),
                    ns("tools", vec![]),
                ],
                error: None,
            }],
        });
        // No scope: the very same snapshot, not a copy.
        let same = inv.clone().within_scope(&instances(""));
        assert!(std::sync::Arc::ptr_eq(&same, &inv));

        let scoped = inv
            .clone()
            .within_scope(&instances("scope = [\"apps/web\"]"));
        type Repo = (String, usize, Option<String>);
        let view: Vec<(String, Vec<Repo>)> = scoped.instances[0]
            .namespaces
            .iter()
            .map(|n| {
                (
                    n.name.clone(),
                    n.repositories
                        .iter()
                        .map(|r| (r.name.clone(), r.images.len(), r.skipped.clone()))
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            view,
            vec![
                (
                    "apps".to_string(),
                    vec![
                        ("web".to_string(), 2, None),
                        // Kept, so that apps is never taken for empty.
                        ("worker".to_string(), 0, Some(UNMANAGED.to_string())),
                    ]
                ),
                // Outside: only its refusal stays, for the report.
                (
                    "ci".to_string(),
                    vec![("cache".to_string(), 0, Some(denied.to_string()))]
                ),
            ]
        );
        assert!(is_expected_skip(UNMANAGED));
        assert!(scoped.is_complete());
    }

    #[test]
    fn digests_round_trip_and_order_as_their_text() {
        let texts = [
            format!("sha256:{}", "0f".repeat(32)),
            format!("sha256:{}", "a0".repeat(32)),
            format!("sha256:{}", "A0".repeat(32)),
            "sha256:short".to_string(),
            "md5:abc".to_string(),
            String::new(),
        ];
        let digests: Vec<Digest> = texts.iter().map(|t| Digest::parse(t)).collect();
        assert!(matches!(digests[0], Digest::Sha256(_)));
        assert!(
            matches!(digests[2], Digest::Other(_)),
            "uppercase hex is kept verbatim"
        );
        for (t, d) in texts.iter().zip(&digests) {
            assert_eq!(&d.to_string(), t);
            assert!(*d == **t);
            let json = serde_json::to_string(d).unwrap();
            assert_eq!(json, serde_json::to_string(t).unwrap());
            assert_eq!(&serde_json::from_str::<Digest>(&json).unwrap(), d);
        }
        for (ta, a) in texts.iter().zip(&digests) {
            for (tb, b) in texts.iter().zip(&digests) {
                assert_eq!(a.cmp(b), ta.cmp(tb), "{ta} vs {tb}");
            }
        }
    }

    #[test]
    fn a_digest_takes_no_allocation_and_fits_in_forty_bytes() {
        assert!(std::mem::size_of::<Digest>() <= 40);
        assert!(std::mem::size_of::<ImageInfo>() <= 80);
    }
}
