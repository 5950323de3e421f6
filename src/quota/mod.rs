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
use crate::jobs::{Job, JobContext, JobError, Outcome};
use crate::metrics::Metrics;
use executor::measure_one;
use futures::future::BoxFuture;

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
