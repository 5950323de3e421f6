//! Quota usage per instance: namespaces and repositories used against their
//! limits (DescribeInstanceUsage). The quota job (Step 5) turns the same
//! figures into gauges; the `quota` command prints them.

use crate::config::{InstanceConfig, StorageGranularity};
use crate::inventory::Inventory;
use crate::jobs::{Job, JobContext, JobError, Outcome};
use crate::kcr::{Client, DescribeInstance, DescribeInstanceUsage, Error, Instance};
use crate::metrics::Metrics;
use futures::future::BoxFuture;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Usage {
    pub instance: String,
    pub resource: &'static str,
    pub used: u64,
    pub limit: u64,
    /// used / limit; 0 when the limit is 0.
    pub ratio: f64,
}

fn ratio(used: u64, limit: u64) -> f64 {
    if limit == 0 {
        0.0
    } else {
        used as f64 / limit as f64
    }
}

/// Usage rows for every instance, in config order.
pub async fn measure(client: &Client, instances: &[InstanceConfig]) -> Result<Vec<Usage>, Error> {
    let rows =
        futures::future::try_join_all(instances.iter().map(|i| measure_one(client, i))).await?;
    Ok(rows.into_iter().flatten().collect())
}

async fn measure_one(client: &Client, i: &InstanceConfig) -> Result<[Usage; 2], Error> {
    let u = client
        .call(&DescribeInstanceUsage {
            instance_id: i.id.clone(),
        })
        .await?;
    Ok([
        Usage {
            instance: i.name.clone(),
            resource: "namespaces",
            used: u.namespace_usage,
            limit: u.namespace_quota,
            ratio: ratio(u.namespace_usage, u.namespace_quota),
        },
        Usage {
            instance: i.name.clone(),
            resource: "repositories",
            used: u.repo_usage,
            limit: u.repo_quota,
            ratio: ratio(u.repo_usage, u.repo_quota),
        },
    ])
}

/// DescribeInstance for the configured instances (one listing).
pub async fn describe_instances(
    client: &Client,
    instances: &[InstanceConfig],
) -> Result<Vec<Instance>, Error> {
    if instances.is_empty() {
        return Ok(Vec::new());
    }
    client
        .list_all(DescribeInstance {
            instance_ids: instances.iter().map(|i| i.id.clone()).collect(),
            ..Default::default()
        })
        .await
}

/// Prepaid (包年包月) instances expire; pay-as-you-go ones
/// (`HourlyInstantSettlement`, or any charge type naming hours or usage) do not.
pub fn is_prepaid(charge_type: &str) -> bool {
    let c = charge_type.to_ascii_lowercase();
    !c.is_empty() && !c.contains("hourly") && !c.contains("postpaid") && !c.contains("usage")
}

/// The quota job: usage gauges per instance. An instance whose call fails
/// keeps its last values and gets `kcr_up = 0`.
pub struct QuotaJob;

impl Job for QuotaJob {
    fn name(&self) -> &'static str {
        "quota"
    }

    fn run<'a>(&'a self, ctx: &'a JobContext) -> BoxFuture<'a, Result<Outcome, JobError>> {
        Box::pin(async move {
            let results = futures::future::join_all(
                ctx.config
                    .instances
                    .iter()
                    .map(|i| measure_one(&ctx.client, i)),
            )
            .await;
            let mut failed = Vec::new();
            let mut parts = Vec::new();
            for (inst, result) in ctx.config.instances.iter().zip(results) {
                match result {
                    Ok(rows) => {
                        ctx.metrics.api.reached(&inst.name, true);
                        for r in &rows {
                            ctx.metrics.quota.usage(
                                &r.instance,
                                r.resource,
                                r.used,
                                r.limit,
                                r.ratio,
                            );
                            parts.push(format!(
                                "{} {} {}/{}",
                                r.instance, r.resource, r.used, r.limit
                            ));
                        }
                    }
                    Err(e) => {
                        ctx.metrics.api.reached(&inst.name, false);
                        failed.push(format!("{}: {e}", inst.name));
                    }
                }
            }
            // DescribeInstance: status, type, charge type and a prepaid
            // instance's expiry (kcr_instance_info, kcr_instance_expiry_timestamp_seconds).
            match describe_instances(&ctx.client, &ctx.config.instances).await {
                Ok(found) => {
                    let tz = *ctx.client.timezone();
                    for inst in &ctx.config.instances {
                        match found.iter().find(|i| i.instance_id == inst.id) {
                            Some(i) => {
                                let charge = i.charge_type.as_deref().unwrap_or_default();
                                let expires = i
                                    .expired_time
                                    .filter(|_| is_prepaid(charge))
                                    .map(|t| t.to_utc(&tz));
                                ctx.metrics.instances.described(
                                    &inst.name,
                                    &i.instance_status,
                                    &i.instance_type,
                                    charge,
                                    expires,
                                );
                            }
                            None => tracing::warn!(
                                instance = %inst.name,
                                id = %inst.id,
                                "DescribeInstance does not list the instance (another project, or deleted?)"
                            ),
                        }
                    }
                }
                Err(e) => failed.push(format!("instance details: {e}")),
            }
            let storage = ctx
                .config
                .quota
                .as_ref()
                .map_or(StorageGranularity::None, |q| q.storage);
            if storage != StorageGranularity::None {
                let inventory = ctx.inventory.for_config(&ctx.client, &ctx.config).await;
                ctx.metrics.inventory.snapshot(&inventory);
                let rows = storage_rows(&inventory, storage);
                export_storage(&ctx.metrics, storage, &rows);
                for inst in inventory.instances.iter().filter(|i| i.error.is_some()) {
                    ctx.metrics.api.reached(&inst.name, false);
                }
                // Any listing that failed makes the run partial: a failure.
                failed.extend(
                    incomplete(&inventory)
                        .into_iter()
                        .map(|e| format!("storage: {e}")),
                );
                parts.push(format!("storage of {} {}", rows.len(), storage.label()));
            }
            if failed.is_empty() {
                Ok(Outcome::Success(parts.join(", ")))
            } else {
                Err(JobError::Partial(failed.join("; ")))
            }
        })
    }
}

/// Images and bytes stored in one namespace or repository.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Storage {
    pub instance: String,
    pub namespace: String,
    /// `None` at namespace granularity.
    pub repository: Option<String>,
    pub images: u64,
    pub bytes: u64,
}

impl StorageGranularity {
    fn label(self) -> &'static str {
        match self {
            StorageGranularity::None => "none",
            StorageGranularity::Namespace => "namespaces",
            StorageGranularity::Repository => "repositories",
        }
    }
}

/// Every listing of the inventory that failed (instance, namespace or
/// repository), for the run's failure reason: storage figures without them
/// are partial. Refusals outside an instance's declared scope are expected
/// and left out.
pub fn incomplete(inv: &Inventory) -> Vec<String> {
    let unexpected = |e: &&String| !crate::inventory::is_expected_skip(e);
    let mut out = Vec::new();
    for inst in &inv.instances {
        if let Some(e) = &inst.error {
            out.push(format!("{}: {e}", inst.name));
        }
        for ns in &inst.namespaces {
            if let Some(e) = ns.error.as_ref().filter(unexpected) {
                out.push(format!("{}/{}: {e}", inst.name, ns.name));
            }
            for r in &ns.repositories {
                if let Some(e) = r.skipped.as_ref().filter(unexpected) {
                    out.push(format!("{}/{}/{}: {e}", inst.name, ns.name, r.name));
                }
            }
        }
    }
    out
}

/// Storage figures from an inventory. A namespace with a repository whose
/// listing failed is left out (a partial sum would look like a drop).
pub fn storage_rows(inv: &Inventory, granularity: StorageGranularity) -> Vec<Storage> {
    let mut rows = Vec::new();
    for inst in inv.instances.iter().filter(|i| i.error.is_none()) {
        for ns in inst.namespaces.iter().filter(|n| n.error.is_none()) {
            let sum = |images: &[crate::inventory::ImageInfo]| {
                (
                    images.len() as u64,
                    images.iter().map(|i| i.size).sum::<u64>(),
                )
            };
            match granularity {
                StorageGranularity::None => {}
                StorageGranularity::Namespace => {
                    if ns
                        .repositories
                        .iter()
                        .any(|r| r.skipped.is_some() || r.unlisted)
                    {
                        continue;
                    }
                    let (images, bytes) = ns
                        .repositories
                        .iter()
                        .map(|r| sum(&r.images))
                        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
                    rows.push(Storage {
                        instance: inst.name.clone(),
                        namespace: ns.name.clone(),
                        repository: None,
                        images,
                        bytes,
                    });
                }
                StorageGranularity::Repository => {
                    for r in ns
                        .repositories
                        .iter()
                        .filter(|r| r.skipped.is_none() && !r.unlisted)
                    {
                        let (images, bytes) = sum(&r.images);
                        rows.push(Storage {
                            instance: inst.name.clone(),
                            namespace: ns.name.clone(),
                            repository: Some(r.name.clone()),
                            images,
                            bytes,
                        });
                    }
                }
            }
        }
    }
    rows.sort_by(|a, b| {
        (&a.instance, &a.namespace, &a.repository).cmp(&(&b.instance, &b.namespace, &b.repository))
    });
    rows
}

fn export_storage(m: &Metrics, granularity: StorageGranularity, rows: &[Storage]) {
    for r in rows {
        match (granularity, &r.repository) {
            (StorageGranularity::Namespace, None) => {
                m.quota
                    .namespace_stored(&r.instance, &r.namespace, r.images, r.bytes)
            }
            (StorageGranularity::Repository, Some(repo)) => {
                m.quota
                    .repository_stored(&r.instance, &r.namespace, repo, r.images, r.bytes)
            }
            _ => {}
        }
    }
}

/// The storage table as the `quota` command prints it.
pub fn render_storage(rows: &[Storage]) -> String {
    let mut out = format!(
        "{:<12} {:<40} {:>8} {:>12}\n",
        "INSTANCE", "NAMESPACE/REPOSITORY", "IMAGES", "STORED"
    );
    for r in rows {
        let name = match &r.repository {
            Some(repo) => format!("{}/{repo}", r.namespace),
            None => r.namespace.clone(),
        };
        out.push_str(&format!(
            "{:<12} {:<40} {:>8} {:>12}\n",
            r.instance,
            name,
            r.images,
            crate::retention::report::human_bytes(r.bytes)
        ));
    }
    out
}

/// A bar of `width` cells for a ratio (clamped to 0–1), in eighths.
pub fn bar(ratio: f64, width: usize) -> String {
    const PARTS: [&str; 8] = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉"];
    let eighths = (ratio.clamp(0.0, 1.0) * (width * 8) as f64).round() as usize;
    let mut s = "█".repeat(eighths / 8);
    s.push_str(PARTS[eighths % 8]);
    let cells = eighths / 8 + usize::from(!eighths.is_multiple_of(8));
    s.push_str(&"·".repeat(width.saturating_sub(cells)));
    s
}

/// The usage table as the `quota` command prints it.
pub fn render_table(rows: &[Usage]) -> String {
    let iw = rows
        .iter()
        .map(|r| r.instance.len())
        .max()
        .unwrap_or(0)
        .max("INSTANCE".len());
    let mut out = format!(
        "{:<iw$}  {:<12}  {:>6}  {:>6}  {:>6}  {}\n",
        "INSTANCE", "RESOURCE", "USED", "LIMIT", "RATIO", "USAGE"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<iw$}  {:<12}  {:>6}  {:>6}  {:>5.1}%  {}\n",
            r.instance,
            r.resource,
            r.used,
            r.limit,
            r.ratio * 100.0,
            bar(r.ratio, 20)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars() {
        assert_eq!(bar(0.0, 4), "····");
        assert_eq!(bar(1.0, 4), "████");
        assert_eq!(bar(0.5, 4), "██··");
        assert_eq!(bar(0.8, 10), "████████··");
        assert_eq!(bar(1.5, 2), "██", "clamped");
        assert_eq!(bar(0.0625, 2), "▏·");
    }

    #[test]
    fn table_layout() {
        let rows = vec![Usage {
            instance: "demo".into(),
            resource: "namespaces",
            used: 8,
            limit: 10,
            ratio: 0.8,
        }];
        let t = render_table(&rows);
        assert!(
            t.lines().nth(1).unwrap().starts_with(
                "demo      namespaces         8      10   80.0%  ████████████████····"
            ),
            "{t}"
        );
        assert_eq!(ratio(1, 0), 0.0);
    }
}
