//! Step 9 item 8: KCR's own (server-side) retention in a namespace blocks
//! our enforce there — and only there — unless `allow_server_side_rules`;
//! it shows in every report and in `explain`; an endpoint that does not
//! offer DescribeRetentionRule is "unknown" and blocks nothing. Through the
//! real binary against the simulator.

mod common;

use common::*;
use kcr_housekeeper::sim::world::RetentionRule;
use kcr_housekeeper::sim::{Faults, Simulator};
use std::path::Path;

const SPEC: &str = "namespaces=2,repos=2,images=20,seed=23";

/// Enforce with `extra` (more `[retention]` keys) and one rule for the CI tags.
fn write_config(sim: &Simulator, dir: &Path, extra: &str) -> String {
    generated_config(
        sim,
        dir,
        &format!(
            "[retention]\nmode = \"enforce\"\nmin_age = \"1h\"\nmax_deletion_ratio = 1.0\n{extra}\n\
             [retention.protect]\ntags = [\"latest\"]\nnewest_images_per_repository = 1\n\
             [[retention.rules]]\nname = \"ci\"\ntags = [\"pr-*\", \"sha-*\", \"main-*\"]\nkeep_latest = 1\n"
        ),
    )
}

fn rule() -> RetentionRule {
    RetentionRule {
        id: 11,
        disabled: false,
        registry_scope: "**".into(),
        rule_type: "byNum".into(),
        untagged: false,
        template: "latestPushedK".into(),
        tag_patten: None,
        param: Some(3),
    }
}

/// Deletes per namespace in the request log.
fn deletes_in(sim: &Simulator, ns: &str) -> usize {
    sim.requests()
        .iter()
        .filter(|e| matches!(e.action.as_deref(), Some("DeleteImages" | "DeleteRepoTag")))
        .filter(|e| e.status == 200 && e.params.get("Namespace").map(String::as_str) == Some(ns))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_side_rule_blocks_enforce_in_its_namespace_only() {
    let sim = sim(generated_world(SPEC, Faults::default())).await;
    sim.world(|w| {
        w.instances[0]
            .namespaces
            .get_mut("team0")
            .unwrap()
            .retention_rules = vec![rule()]
    });
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), "");

    // plan: the namespace is named, its repositories blocked, the other planned.
    let plan = run_bin(
        &sim,
        &["plan", "retention", "--config", &config, "--format", "json"],
    );
    assert!(plan.status.success(), "{}", text(&plan));
    let report: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let server_side = report["summary"]["server_side"].as_array().unwrap();
    assert_eq!(server_side.len(), 1, "{server_side:?}");
    let line = server_side[0].as_str().unwrap();
    assert!(
        line.starts_with("gen/team0: 1 enabled server-side retention rule"),
        "{line}"
    );
    assert!(line.contains("latestPushedK 3"), "{line}");
    let blocked: Vec<&str> = report["summary"]["blocked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap())
        .collect();
    assert!(!blocked.is_empty());
    assert!(
        blocked.iter().all(|b| b.starts_with("gen/team0/")),
        "{blocked:?}"
    );
    assert!(
        blocked[0].contains("allow_server_side_rules"),
        "{blocked:?}"
    );
    let table = run_bin(&sim, &["plan", "retention", "--config", &config]);
    assert!(
        text(&table).contains("SERVER-SIDE gen/team0"),
        "{}",
        text(&table)
    );

    // explain names it too.
    let explain = run_bin(&sim, &["explain", "team0/app0", "--config", &config]);
    assert!(explain.status.success(), "{}", text(&explain));
    assert!(
        text(&explain).contains("SERVER-SIDE gen/team0: 1 enabled"),
        "{}",
        text(&explain)
    );
    assert!(text(&explain).contains("BLOCKED"), "{}", text(&explain));

    // apply: team1 is cleaned, team0 untouched.
    let apply = run_bin(&sim, &["apply", "retention", "--yes", "--config", &config]);
    assert!(
        matches!(apply.status.code(), Some(0 | 3)),
        "{}",
        text(&apply)
    );
    assert_eq!(deletes_in(&sim, "team0"), 0, "{}", text(&apply));
    assert!(deletes_in(&sim, "team1") > 0, "{}", text(&apply));
    assert!(
        sim.count("DescribeRetentionRule") >= 2,
        "both namespaces were asked"
    );

    // Allowed: both engines may delete; team0 is cleaned now.
    let allowed = write_config(&sim, dir.path(), "allow_server_side_rules = true");
    let apply = run_bin(&sim, &["apply", "retention", "--yes", "--config", &allowed]);
    assert!(apply.status.success(), "{}", text(&apply));
    assert!(deletes_in(&sim, "team0") > 0, "{}", text(&apply));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_rule_blocks_nothing() {
    let sim = sim(generated_world(SPEC, Faults::default())).await;
    sim.world(|w| {
        let mut r = rule();
        r.disabled = true;
        w.instances[0]
            .namespaces
            .get_mut("team0")
            .unwrap()
            .retention_rules = vec![r]
    });
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), "");
    let apply = run_bin(&sim, &["apply", "retention", "--yes", "--config", &config]);
    assert!(apply.status.success(), "{}", text(&apply));
    assert!(deletes_in(&sim, "team0") > 0, "{}", text(&apply));
    assert!(!text(&apply).contains("SERVER-SIDE"));
}

/// The retention job exports `kcr_server_retention_rules{instance,namespace}`
/// (0 where none) and, in dry-run, shows without blocking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_exports_server_side_rules_per_namespace() {
    use kcr_housekeeper::jobs::Job;
    use kcr_housekeeper::retention::RetentionJob;
    let sim = sim(generated_world(SPEC, Faults::default())).await;
    sim.world(|w| {
        w.instances[0]
            .namespaces
            .get_mut("team1")
            .unwrap()
            .retention_rules = vec![rule(), {
            let mut r = rule();
            r.id = 12;
            r
        }]
    });
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&sim, dir.path(), "");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("mode = \"enforce\"", "mode = \"dry-run\"")
        .replace(
            "secret_access_key = { env = \"TEST_SK\" }",
            "secret_access_key = { env = \"SK\" }",
        )
        .replace(
            &format!("access_key_id = \"{}\"", sim.credentials().access_key_id),
            "access_key_id = { env = \"AK\" }",
        );
    let config = parse_config(&sim, &text, dir.path());
    let ctx = job_context(
        "test",
        client_for(&sim),
        config,
        kcr_housekeeper::state::Store::in_memory().unwrap(),
    );
    RetentionJob.run(&ctx).await.unwrap();
    let m = ctx.metrics.render();
    assert!(
        m.contains("kcr_server_retention_rules{instance=\"gen\",namespace=\"team1\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("kcr_server_retention_rules{instance=\"gen\",namespace=\"team0\"} 0"),
        "{m}"
    );
    assert_eq!(
        deletes_in(&sim, "team0") + deletes_in(&sim, "team1"),
        0,
        "dry-run"
    );
}
