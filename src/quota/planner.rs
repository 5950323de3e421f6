//! Quota figures (pure): usage ratios, prepaid charge types, and storage per
//! namespace or repository from an inventory.

use super::config::StorageGranularity;
use crate::inventory::Inventory;
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

pub(super) fn ratio(used: u64, limit: u64) -> f64 {
    if limit == 0 {
        0.0
    } else {
        used as f64 / limit as f64
    }
}

/// Prepaid (包年包月) instances expire; pay-as-you-go ones
/// (`HourlyInstantSettlement`, or any charge type naming hours or usage) do not.
pub fn is_prepaid(charge_type: &str) -> bool {
    let c = charge_type.to_ascii_lowercase();
    !c.is_empty() && !c.contains("hourly") && !c.contains("postpaid") && !c.contains("usage")
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
    pub(super) fn label(self) -> &'static str {
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
