//! Quota usage per instance: namespaces and repositories used against their
//! limits (DescribeInstanceUsage). The quota job (Step 5) turns the same
//! figures into gauges; the `quota` command prints them.
//!
//! The job's house: `config.rs` (`[quota]`: raw → valid), `planner.rs`
//! (pure figures), `executor.rs` (the KCR calls), `report.rs` (tables),
//! and here the job with its gauges.

pub mod config;
pub mod executor;
pub mod planner;
pub mod report;

pub use executor::{describe_instances, measure};
pub use planner::{Storage, Usage, incomplete, is_prepaid, storage_rows};
pub use report::{bar, render_storage, render_table};

use crate::config::StorageGranularity;
use crate::inventory::Inventory;
use crate::jobs::{JobContext, JobError, Outcome};
use crate::metrics::Metrics;
use executor::measure_one;
use std::sync::Arc;

/// The quota job: usage gauges per instance. An instance whose call fails
/// keeps its last values and gets `kcr_up = 0`. Its plan is the
/// measurement (reads only); its apply records the figures as metrics —
/// the job changes nothing in the registry.
pub struct QuotaJob;

/// What one quota run measured.
pub struct Measured {
    /// Per configured instance (config order): its usage rows or the error.
    usage: Vec<(String, Result<[Usage; 2], crate::kcr::Error>)>,
    /// DescribeInstance for the configured instances.
    described: Result<Vec<crate::kcr::Instance>, crate::kcr::Error>,
    /// Storage per namespace or repository, when `[quota] storage` asks.
    storage: Option<(StorageGranularity, Arc<Inventory>, Vec<Storage>)>,
}

impl crate::jobs::Steps for QuotaJob {
    const NAME: &'static str = "quota";
    type Plan = Measured;

    async fn plan(&self, ctx: &JobContext) -> Result<Measured, JobError> {
        let instances = &ctx.config.instances;
        let results =
            futures::future::join_all(instances.iter().map(|i| measure_one(&ctx.client, i))).await;
        let usage = instances
            .iter()
            .map(|i| i.name.clone())
            .zip(results)
            .collect();
        // DescribeInstance: status, type, charge type and a prepaid
        // instance's expiry (kcr_instance_info, kcr_instance_expiry_timestamp_seconds).
        let described = describe_instances(&ctx.client, instances).await;
        let granularity = ctx
            .config
            .quota
            .as_ref()
            .map_or(StorageGranularity::None, |q| q.storage);
        let storage = if granularity == StorageGranularity::None {
            None
        } else {
            let inventory = ctx.inventory.for_config(&ctx.client, &ctx.config).await;
            let rows = storage_rows(&inventory, granularity);
            Some((granularity, inventory, rows))
        };
        Ok(Measured {
            usage,
            described,
            storage,
        })
    }

    async fn apply(&self, ctx: &JobContext, m: Measured) -> Result<Outcome, JobError> {
        let mut failed = Vec::new();
        let mut parts = Vec::new();
        for (name, result) in m.usage {
            match result {
                Ok(rows) => {
                    ctx.metrics.api.reached(&name, true);
                    for r in &rows {
                        ctx.metrics
                            .quota
                            .usage(&r.instance, r.resource, r.used, r.limit, r.ratio);
                        parts.push(format!(
                            "{} {} {}/{}",
                            r.instance, r.resource, r.used, r.limit
                        ));
                    }
                }
                Err(e) => {
                    ctx.metrics.api.reached(&name, false);
                    failed.push(format!("{name}: {e}"));
                }
            }
        }
        match m.described {
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
        if let Some((granularity, inventory, rows)) = m.storage {
            ctx.metrics.inventory.snapshot(&inventory);
            export_storage(&ctx.metrics, granularity, &rows);
            for inst in inventory.instances.iter().filter(|i| i.error.is_some()) {
                ctx.metrics.api.reached(&inst.name, false);
            }
            // Any listing that failed makes the run partial: a failure.
            failed.extend(
                incomplete(&inventory)
                    .into_iter()
                    .map(|e| format!("storage: {e}")),
            );
            parts.push(format!("storage of {} {}", rows.len(), granularity.label()));
        }
        if failed.is_empty() {
            Ok(Outcome::Success(parts.join(", ")))
        } else {
            Err(JobError::Partial(failed.join("; ")))
        }
    }
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
