//! Reading a plan file (`apply retention --plan FILE`) never panics, whatever
//! the file holds: the reader, the intersection with a fresh plan and the
//! executor's checks of each action. And the intersection never widens: every
//! action it keeps is one the file holds and the fresh plan holds.
#![no_main]

use kcr_housekeeper::config::{self, Config};
use kcr_housekeeper::inventory::{
    self, Digest, ImageInfo, InstanceInventory, Inventory, NamespaceInventory, RepositoryInventory,
};
use kcr_housekeeper::retention::{self, executor, report::Report};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::LazyLock;

const CONFIG: &str = r#"
[kcr]
endpoint = "http://127.0.0.1:1"
access_key_id = "AKFUZZ"
secret_access_key = { env = "SK" }
[[instances]]
id = "i-1"
name = "gen"
registry = "r"
[retention]
mode = "enforce"
min_age = "1h"
[retention.protect]
tags = ["latest"]
newest_images_per_repository = 1
[[retention.rules]]
name = "ci"
tags = ["pr-*", "main-*"]
keep_latest = 1
[[retention.rules]]
name = "untagged"
untagged = true
older_than = "1d"
"#;

static CFG: LazyLock<Config> = LazyLock::new(|| {
    config::parse(CONFIG, "fuzz.toml", Path::new("."), &|_: &str| {
        Some("sk".to_owned())
    })
    .expect("the fuzz config is valid")
});

/// The registry as the plan file describes it: every image its actions name.
fn inventory_of(report: &Report) -> Inventory {
    let mut repos: BTreeMap<(String, String, String), BTreeMap<String, ImageInfo>> =
        BTreeMap::new();
    for (r, a) in report.actions() {
        repos
            .entry((r.instance.clone(), r.namespace.clone(), r.repository.clone()))
            .or_default()
            .entry(a.digest.clone())
            .or_insert_with(|| ImageInfo {
                digest: Digest::parse(&a.digest),
                size: a.size,
                pushed_at: a.pushed_at,
                tags: inventory::tags(&a.image_tags),
            });
    }
    let mut instances: BTreeMap<String, InstanceInventory> = BTreeMap::new();
    for ((inst, ns, repo), images) in repos {
        let i = instances
            .entry(inst.clone())
            .or_insert_with(|| InstanceInventory {
                name: inst.clone(),
                id: "i-1".into(),
                namespaces: Vec::new(),
                error: None,
            });
        if !i.namespaces.iter().any(|n| n.name == ns) {
            i.namespaces.push(NamespaceInventory {
                name: ns.clone(),
                public: false,
                created_at: None,
                repositories: Vec::new(),
                error: None,
            });
        }
        let n = i.namespaces.iter_mut().find(|n| n.name == ns).expect("just added");
        let mut images: Vec<ImageInfo> = images.into_values().collect();
        inventory::sort_images(&mut images);
        n.repositories.push(RepositoryInventory {
            name: repo,
            images,
            skipped: None,
            unlisted: false,
            updated_at: None,
        });
    }
    Inventory {
        taken_at: report.generated_at,
        instances: instances.into_values().collect(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(report) = Report::from_json(text) else {
        return;
    };
    for (_, a) in report.actions() {
        let _ = executor::malformed(a);
    }
    let cfg = &*CFG;
    let rc = cfg.retention.as_ref().expect("retention configured");
    let inv = inventory_of(&report);
    let fresh = retention::plan(&inv, rc, report.generated_at);
    for changed in [false, true] {
        let (kept, dropped) = retention::intersect(&report, &fresh, &inv, cfg, changed);
        for (t, a) in &kept {
            let _ = executor::audit_target(t, a);
            let _ = executor::grace_key(t, a);
            assert!(executor::malformed(a).is_none(), "the planner made {a:?}");
            assert!(
                report.actions().any(|(r, f)| r.instance == t.instance
                    && r.namespace == t.namespace
                    && r.repository == t.repository
                    && f.action == a.action
                    && f.digest == a.digest),
                "kept an action the file does not hold: {a:?}"
            );
        }
        for d in &dropped {
            assert!(!d.reason.is_empty());
            let _ = executor::audit_target(&d.target, &d.action);
        }
    }
});
