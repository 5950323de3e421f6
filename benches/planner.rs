//! Planner throughput and peak memory at 10^4, 10^5 and 10^6 images (100 per
//! repository), on one core. Target: 10^6 images in <= 1 s, peak RSS <= 300 MB.
//!
//! Run: `cargo bench --bench planner`.

use chrono::{Duration, TimeZone, Utc};
use kcr_housekeeper::config;
use kcr_housekeeper::inventory::{
    ImageInfo, InstanceInventory, Inventory, NamespaceInventory, RepositoryInventory,
};
use kcr_housekeeper::retention::plan;
use std::path::Path;
use std::time::Instant;

const PER_REPO: usize = 100;

fn inventory(images: usize) -> Inventory {
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 0, 0, 0).unwrap();
    let repos = images / PER_REPO;
    let mut namespaces = Vec::new();
    for n in 0..(repos / 100).max(1) {
        let mut repositories = Vec::new();
        for r in 0..repos.min(100) {
            let images = (0..PER_REPO)
                .map(|i| {
                    let k = (n * 100 + r) * PER_REPO + i;
                    let tags = match i % 10 {
                        0 => vec![format!("v1.{i}.0"), "latest".to_string()],
                        1..=3 => vec![format!("pr-{k}")],
                        4..=6 => vec![format!("main-{:07x}", k & 0xfff_ffff)],
                        7 => vec![format!("feature-{}-{:07x}", i % 5, k & 0xfff_ffff)],
                        8 => vec![format!("sha-{:07x}", k & 0xfff_ffff), format!("pr-{k}")],
                        _ => vec![],
                    };
                    ImageInfo {
                        digest: format!("sha256:{k:064x}").into(),
                        size: 50_000_000,
                        pushed_at: now - Duration::hours(i as i64 * 7),
                        tags: kcr_housekeeper::inventory::tags(tags),
                    }
                })
                .collect();
            repositories.push(RepositoryInventory {
                name: format!("app{r}"),
                images,
                skipped: None,
                unlisted: false,
                updated_at: None,
            });
        }
        namespaces.push(NamespaceInventory {
            name: format!("team{n}"),
            public: false,
            created_at: None,
            repositories,
            error: None,
        });
    }
    Inventory {
        taken_at: now,
        instances: vec![InstanceInventory {
            name: "prod".into(),
            id: "i".into(),
            namespaces,
            error: None,
        }],
    }
}

fn peak_rss_mb() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let cfg = config::parse(
        r#"[kcr]
endpoint = "sim:demo"
[[instances]]
id = "i"
name = "prod"
registry = "r"
[retention]
[retention.protect]
tags = ["latest", "v*.*.*", "release-*"]
[[retention.rules]]
name = "ci-builds"
tags = ["pr-*", "sha-*"]
older_than = "14d"
keep_latest = 10
[[retention.rules]]
name = "three-per-branch"
tags = ["re:^(?P<group>[a-z0-9-]+)-[0-9a-f]{7}$"]
group_by = "group"
keep_latest = 3
[[retention.rules]]
name = "prod-stays"
action = "keep"
tags = ["prod-*"]
newer_than = "180d"
[[retention.rules]]
name = "untagged"
untagged = true
older_than = "7d"
"#,
        "bench.toml",
        Path::new("."),
        &|_: &str| None,
    )
    .unwrap()
    .retention
    .unwrap();
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 0, 0, 0).unwrap();
    println!("planner benchmark (one thread, demo-like rules, {PER_REPO} images per repository)");
    println!(
        "{:>10} {:>8} {:>12} {:>14} {:>10} {:>12}",
        "images", "repos", "median ms", "images/s", "actions", "peak RSS MB"
    );
    let mut prev: Option<f64> = None;
    for images in [10_000usize, 100_000, 1_000_000] {
        let inv = inventory(images);
        let inventory_rss = peak_rss_mb();
        let rounds = if images >= 1_000_000 { 3 } else { 7 };
        let mut times = Vec::new();
        let mut actions = 0;
        for _ in 0..rounds {
            let t = Instant::now();
            let p = plan(&inv, &cfg, now);
            times.push(t.elapsed().as_secs_f64());
            actions = p.actions().count();
            std::hint::black_box(&p);
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let median = times[times.len() / 2];
        let ratio = prev
            .map(|p| format!("  ×{:.1} for 10× images", median / p))
            .unwrap_or_default();
        println!(
            "{:>10} {:>8} {:>12.1} {:>14.0} {:>10} {:>12.1}{}",
            inv.image_count(),
            images / PER_REPO,
            median * 1000.0,
            inv.image_count() as f64 / median,
            actions,
            peak_rss_mb(),
            ratio
        );
        prev = Some(median);
        println!(
            "{:>10} (peak RSS with the inventory alone: {inventory_rss:.1} MB)",
            ""
        );
    }
}
