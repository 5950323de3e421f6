//! Inventory against the simulator: the minimum number of list calls, and
//! snapshot reuse within `[inventory] max_age`.

mod common;

use common::*;
use kcr_housekeeper::config::InstanceConfig;
use kcr_housekeeper::inventory::{Inventory, InventoryCache};
use kcr_housekeeper::sim::{GenerateSpec, SimOptions, WorldSource};
use std::time::Duration;

fn instances(sim: &kcr_housekeeper::sim::Simulator) -> Vec<InstanceConfig> {
    vec![InstanceConfig {
        id: sim.world(|w| w.instances[0].id.clone()),
        name: "gen".into(),
        registry: Some("r".into()),
        scope: Vec::new(),
    }]
}

#[tokio::test]
async fn listing_uses_exactly_the_lower_bound_of_calls() {
    let spec: GenerateSpec = "namespaces=3,repos=4,images=150,seed=2".parse().unwrap();
    let sim = sim(SimOptions {
        source: WorldSource::Generate(spec),
        ..Default::default()
    })
    .await;
    // One more, empty, namespace: an empty list still costs one call.
    sim.world(|w| {
        w.instances[0].namespaces.insert(
            "empty".into(),
            kcr_housekeeper::sim::world::Namespace {
                public: false,
                create_time: sim.now(),
                repos: Default::default(),
                retention_rules: Vec::new(),
                retention_trigger: None,
            },
        )
    });
    let client = client_for(&sim);
    let inv = Inventory::collect(&client, &instances(&sim), chrono::Utc::now()).await;
    assert_eq!(inv.image_count(), 3 * 4 * 150);
    // 1 namespace page + 4 repository pages (one per namespace, the empty one too) + 12 repos × 2 image pages.
    assert_eq!(sim.count("DescribeNamespace"), 1);
    assert_eq!(sim.count("DescribeRepository"), 4);
    assert_eq!(sim.count("DescribeImages"), 24);
    assert_eq!(sim.requests().len(), 29, "nothing listed twice");
    let repo = &inv.instances[0].namespaces[1].repositories[0];
    assert!(
        repo.images
            .windows(2)
            .all(|w| w[0].pushed_at >= w[1].pushed_at),
        "newest first"
    );
}

#[tokio::test]
async fn a_fresh_snapshot_is_reused_and_an_old_one_is_not() {
    let sim = sim(SimOptions::default()).await;
    let client = client_for(&sim);
    let inst = vec![InstanceConfig {
        id: DEMO_INSTANCE.into(),
        name: "demo".into(),
        registry: Some("r".into()),
        scope: Vec::new(),
    }];
    let cache = InventoryCache::default();
    let a = cache.get(&client, &inst, Duration::from_secs(60)).await;
    let b = cache.get(&client, &inst, Duration::from_secs(60)).await;
    assert!(std::sync::Arc::ptr_eq(&a, &b));
    assert_eq!(sim.count("DescribeNamespace"), 1);
    let _ = cache.get(&client, &inst, Duration::ZERO).await;
    assert_eq!(sim.count("DescribeNamespace"), 2, "max_age 0 lists again");
    cache.invalidate().await;
    let _ = cache.get(&client, &inst, Duration::from_secs(60)).await;
    assert_eq!(sim.count("DescribeNamespace"), 3, "invalidated");
}

/// A snapshot with a failed listing is not reused: the next job lists again.
#[tokio::test]
async fn a_partial_snapshot_is_not_reused() {
    let sim = sim(SimOptions::default()).await;
    let client = client_for(&sim);
    let inst = vec![InstanceConfig {
        id: "00000000-0000-4000-8000-00000000dead".into(),
        name: "gone".into(),
        registry: Some("r".into()),
        scope: Vec::new(),
    }];
    let cache = InventoryCache::default();
    let a = cache.get(&client, &inst, Duration::from_secs(60)).await;
    assert!(!a.is_complete());
    let b = cache.get(&client, &inst, Duration::from_secs(60)).await;
    assert!(!std::sync::Arc::ptr_eq(&a, &b), "listed again");
    assert_eq!(sim.count("DescribeNamespace"), 2);
}
