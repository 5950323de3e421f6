//! A snapshot of the registry: instances → namespaces → repositories →
//! images. Listings go through the client (rate limit, in-flight cap,
//! retries, `TotalCount` checks) with one page of 99 per 99 items and one
//! call for an empty list. A repository whose listing failed is marked
//! skipped with the reason: nothing is ever planned from a partial list.

use crate::config::InstanceConfig;
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
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RepositoryInventory {
    pub name: String,
    /// Newest first, ties by digest.
    pub images: Vec<ImageInfo>,
    /// Set when the image listing failed or changed size mid-way: skip this repository.
    pub skipped: Option<String>,
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
    latest: tokio::sync::Mutex<Option<(std::time::Instant, std::sync::Arc<Inventory>)>>,
}

impl InventoryCache {
    /// A snapshot no older than `max_age`, taking a new one if needed. Concurrent
    /// callers wait for one listing rather than starting their own.
    pub async fn get(
        &self,
        client: &Client,
        instances: &[InstanceConfig],
        max_age: std::time::Duration,
    ) -> std::sync::Arc<Inventory> {
        let mut latest = self.latest.lock().await;
        if let Some((at, inv)) = latest.as_ref()
            && at.elapsed() <= max_age
            && inv
                .instances
                .iter()
                .map(|i| &i.id)
                .eq(instances.iter().map(|i| &i.id))
        {
            return inv.clone();
        }
        let inv = std::sync::Arc::new(Inventory::collect(client, instances, Utc::now()).await);
        // A snapshot with a failed listing is not shared: the next job lists
        // again rather than inheriting the gap for `max_age`.
        *latest = inv
            .is_complete()
            .then(|| (std::time::Instant::now(), inv.clone()));
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
        let all = futures::future::join_all(
            instances
                .iter()
                .map(|i| collect_instance(client, i, progress)),
        )
        .await;
        Inventory {
            taken_at: now,
            instances: all,
        }
    }

    /// Every instance, namespace and repository was listed completely.
    pub fn is_complete(&self) -> bool {
        self.instances.iter().all(|i| {
            i.error.is_none()
                && i.namespaces.iter().all(|n| {
                    n.error.is_none() && n.repositories.iter().all(|r| r.skipped.is_none())
                })
        })
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
                error: Some(e.to_string()),
            };
        }
    };
    let namespaces = futures::future::join_all(namespaces.into_iter().map(|ns| async move {
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
                name: ns.namespace,
                public: ns.public,
                repositories: Vec::new(),
                error: Some(e.to_string()),
            },
            Ok(repos) => {
                let ns_name = ns.namespace.clone();
                progress.found(repos.len() as u64);
                let repositories = futures::future::join_all(repos.into_iter().map(|r| async {
                    let repo = collect_repository(client, &inst.id, &ns_name, r.repo_name).await;
                    progress.listed();
                    repo
                }))
                .await;
                NamespaceInventory {
                    name: ns.namespace,
                    public: ns.public,
                    repositories,
                    error: None,
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
    instance_id: &str,
    namespace: &str,
    name: String,
) -> RepositoryInventory {
    match list_images(client, instance_id, namespace, &name).await {
        Ok(images) => RepositoryInventory {
            name,
            images,
            skipped: None,
        },
        Err(e) => RepositoryInventory {
            name,
            images: Vec::new(),
            skipped: Some(e.to_string()),
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
