//! Reading the figures from KCR: DescribeInstanceUsage and DescribeInstance.

use super::planner::{Usage, ratio};
use crate::config::InstanceConfig;
use crate::kcr::{Client, DescribeInstance, DescribeInstanceUsage, Error, Instance};

/// Usage rows for every instance, in config order.
pub async fn measure(client: &Client, instances: &[InstanceConfig]) -> Result<Vec<Usage>, Error> {
    let rows =
        futures::future::try_join_all(instances.iter().map(|i| measure_one(client, i))).await?;
    Ok(rows.into_iter().flatten().collect())
}

pub(super) async fn measure_one(client: &Client, i: &InstanceConfig) -> Result<[Usage; 2], Error> {
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
