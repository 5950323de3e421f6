//! Retention against the simulator, through the real binary: enforce leaves the
//! registry exactly as planned (also under injected faults), stale actions are
//! dropped, safety blocks delete nothing, and `apply --plan` runs only the plan.

mod common;

use common::*;
use kcr_housekeeper::sim::{Faults, Simulator};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const RULES: &str = r#"
[retention.protect]
tags = ["latest", "v*.*.*"]
newest_images_per_repository = 1
[[retention.rules]]
name = "ci"
tags = ["pr-*", "sha-*"]
older_than = "3d"
keep_latest = 2
[[retention.rules]]
name = "branches"
tags = ["re:^(?P<group>[a-z]+)-[0-9a-f]{7}$"]
group_by = "group"
keep_latest = 2
[[retention.rules]]
name = "untagged"
untagged = true
older_than = "1d"
"#;

/// Enforce with `head` (more `[retention]` keys) and the rules above.
fn write_config(sim: &Simulator, dir: &Path, head: &str) -> String {
    generated_config(
        sim,
        dir,
        &format!("[retention]\nmode = \"enforce\"\nmin_age = \"1h\"\n{head}\n{RULES}"),
    )
}

/// What the registry must look like after applying `plan`.
fn expected_after(
    before: &BTreeMap<(String, String), BTreeSet<String>>,
    plan: &serde_json::Value,
) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut after = before.clone();
    for repo in plan["repositories"].as_array().unwrap() {
        let name = format!(
            "{}/{}",
            repo["namespace"].as_str().unwrap(),
            repo["repository"].as_str().unwrap()
        );
        for a in repo["actions"].as_array().unwrap() {
            let key = (name.clone(), a["digest"].as_str().unwrap().to_owned());
            match a["action"].as_str().unwrap() {
                "delete_image" => {
                    after.remove(&key).expect("planned image exists");
                }
                "delete_tag" => {
                    let tag = a["tags"][0].as_str().unwrap();
                    assert!(after.get_mut(&key).unwrap().remove(tag));
                }
                other => panic!("unknown action {other}"),
            }
        }
    }
    after
}

async fn enforce_matches_plan(faults: Faults) {
    enforce_matches_plan_on("namespaces=3,repos=3,images=25,seed=21", faults, 20).await;
}

async fn enforce_matches_plan_on(spec: &str, faults: Faults, min_planned: u64) {
    let sim = sim(generated_world(spec, faults)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), "");
    // A short client timeout: timeouts are one of the faults.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "requests_per_second = 500\n",
            "requests_per_second = 500\ntimeout = \"400ms\"\n",
        ),
    )
    .unwrap();
    let before = registry_snapshot(&sim);
    let (plan, plan_path) = plan_json(&sim, &config, dir.path());
    let planned = plan["summary"]["delete_image"].as_u64().unwrap()
        + plan["summary"]["delete_tag"].as_u64().unwrap();
    assert!(
        planned > min_planned,
        "the scenario gives the rules work: {planned}"
    );
    // Under faults an action can exhaust its retries, or its verification can
    // fail (then it is not applied); applying the same plan again must finish
    // the job (idempotence), never do more.
    let expected = expected_after(&before, &plan);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let o = run_bin(
            &sim,
            &[
                "apply",
                "retention",
                "--yes",
                "--config",
                &config,
                "--plan",
                &plan_path,
            ],
        );
        if o.status.success() || registry_snapshot(&sim) == expected {
            break;
        }
        assert_eq!(
            o.status.code(),
            Some(1),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            attempts < 6,
            "still failing after {attempts} passes: {}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
    assert_eq!(
        registry_snapshot(&sim),
        expected,
        "the registry is exactly in the planned state"
    );
    // Every mutation is in the audit table, and only planned objects were touched.
    let audit = run_bin(&sim, &["audit", "--config", &config, "--format", "json"]);
    let records: serde_json::Value = serde_json::from_slice(&audit.stdout).unwrap();
    // A delete whose answer was lost may be recorded `failed` and found done by
    // the next pass (which then sends nothing): each planned action has a record.
    let records = records.as_array().unwrap();
    for repo in plan["repositories"].as_array().unwrap() {
        let name = format!(
            "{}/{}",
            repo["namespace"].as_str().unwrap(),
            repo["repository"].as_str().unwrap()
        );
        for a in repo["actions"].as_array().unwrap() {
            let target = if a["action"] == "delete_tag" {
                format!("{name}:{} (", a["tags"][0].as_str().unwrap())
            } else {
                format!("{name}@{}", a["digest"].as_str().unwrap())
            };
            assert!(
                records.iter().any(|r| r["action"] == a["action"]
                    && r["target"].as_str().unwrap().starts_with(&target)
                    && r["outcome"] != "stale"),
                "no audit record for {target} ({planned} planned)"
            );
        }
    }
    let planned_ids: BTreeSet<String> = plan["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["actions"].as_array().unwrap().iter())
        .map(|a| {
            if a["action"] == "delete_tag" {
                a["tags"][0].as_str().unwrap().to_owned()
            } else {
                a["digest"].as_str().unwrap().to_owned()
            }
        })
        .collect();
    assert!(
        deletes_in_log(&sim)
            .iter()
            .all(|(_, id)| planned_ids.contains(id)),
        "nothing outside the plan"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn enforce_without_a_plan_file_matches_a_fresh_plan() {
    let sim = sim(generated_world(
        "namespaces=2,repos=2,images=25,seed=22",
        Faults::default(),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), "");
    let before = registry_snapshot(&sim);
    let (plan, _) = plan_json(&sim, &config, dir.path());
    let o = run_bin(&sim, &["apply", "retention", "--yes", "--config", &config]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(registry_snapshot(&sim), expected_after(&before, &plan));
}

#[tokio::test(flavor = "multi_thread")]
async fn enforce_leaves_the_registry_exactly_as_planned() {
    enforce_matches_plan(Faults::default()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn enforce_matches_the_plan_under_20_percent_faults() {
    enforce_matches_plan(Faults {
        fault_rate: 0.2,
        seed: Some(3),
        ..Default::default()
    })
    .await;
}

/// The fault matrix for retention enforce: each fault the simulator can inject,
/// at 20 %, during planning and applying.
#[tokio::test(flavor = "multi_thread")]
async fn enforce_matches_the_plan_under_every_fault_kind() {
    for (i, kind) in kcr_housekeeper::sim::FaultKind::ALL.into_iter().enumerate() {
        let started = std::time::Instant::now();
        enforce_matches_plan_on(
            "namespaces=2,repos=2,images=20,seed=23",
            Faults {
                fault_rate: 0.2,
                kinds: vec![kind],
                seed: Some(30 + i as u64),
                stall: std::time::Duration::from_millis(1500),
                ..Default::default()
            },
            10,
        )
        .await;
        eprintln!(
            "fault kind {kind:?}: {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    // 409 bursts: the simulator serves 25 requests a second and refuses the
    // rest, while the client starts at 500/s and must back off.
    let started = std::time::Instant::now();
    enforce_matches_plan_on(
        "namespaces=2,repos=2,images=20,seed=23",
        Faults {
            rate_limit: Some(25),
            ..Default::default()
        },
        10,
    )
    .await;
    eprintln!("409 bursts: {:.1} s", started.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tag_changed_between_plan_and_apply_is_not_deleted() {
    let sim = sim(generated_world(
        "namespaces=1,repos=2,images=20,seed=5",
        Faults::default(),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), "");
    let (plan, plan_path) = plan_json(&sim, &config, dir.path());
    // Pick a planned delete_image and give its image a new tag (e.g. someone re-pointed "hotfix" at it).
    let repo = plan["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| !r["actions"].as_array().unwrap().is_empty())
        .unwrap();
    let action = repo["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["action"] == "delete_image" && !a["tags"].as_array().unwrap().is_empty())
        .unwrap();
    let digest = action["digest"].as_str().unwrap().to_owned();
    let (ns, rp) = (
        repo["namespace"].as_str().unwrap().to_owned(),
        repo["repository"].as_str().unwrap().to_owned(),
    );
    sim.world(|w| {
        let img = w.instances[0]
            .namespaces
            .get_mut(&ns)
            .unwrap()
            .repos
            .get_mut(&rp)
            .unwrap()
            .images
            .iter_mut()
            .find(|i| i.digest == digest)
            .unwrap();
        img.tags.push("hotfix".into());
    });
    let o = run_bin(
        &sim,
        &[
            "apply",
            "retention",
            "--yes",
            "--config",
            &config,
            "--plan",
            &plan_path,
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains(&format!(
            "dropped (stale): delete_image gen/{ns}/{rp} {digest}"
        )),
        "{stdout}"
    );
    let still = registry_snapshot(&sim);
    assert!(
        still
            .get(&(format!("{ns}/{rp}"), digest))
            .unwrap()
            .contains("hotfix"),
        "the re-tagged image survives"
    );
    assert!(
        !deletes_in_log(&sim)
            .iter()
            .any(|(_, id)| *id == action["digest"]),
        "no delete was sent for it"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn budget_block_deletes_nothing_and_exits_3() {
    let sim = sim(generated_world(
        "namespaces=1,repos=2,images=20,seed=5",
        Faults::default(),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), "max_deletions_per_run = 2");
    let before = registry_snapshot(&sim);
    let o = run_bin(&sim, &["apply", "retention", "--yes", "--config", &config]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("max_deletions_per_run 2"));
    assert_eq!(registry_snapshot(&sim), before);
    assert!(deletes_in_log(&sim).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn ratio_block_leaves_the_repository_alone() {
    let sim = sim(generated_world(
        "namespaces=1,repos=2,images=20,seed=5",
        Faults::default(),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), "max_deletion_ratio = 0.05");
    let (plan, _) = plan_json(&sim, &config, dir.path());
    let blocked = plan["summary"]["blocked"].as_array().unwrap();
    assert!(
        !blocked.is_empty()
            && blocked
                .iter()
                .all(|b| b.as_str().unwrap().contains("max_deletion_ratio")),
        "{blocked:?}"
    );
    let blocked_repos: Vec<String> = blocked
        .iter()
        .map(|b| b.as_str().unwrap().split(':').next().unwrap().to_owned())
        .collect();
    let before = registry_snapshot(&sim);
    let o = run_bin(&sim, &["apply", "retention", "--yes", "--config", &config]);
    assert!(o.status.success());
    let after = registry_snapshot(&sim);
    for repo in &blocked_repos {
        let key = repo.trim_start_matches("gen/");
        let pick = |m: &BTreeMap<(String, String), BTreeSet<String>>| {
            m.iter()
                .filter(|((r, _), _)| r == key)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(pick(&before), pick(&after), "{repo} untouched");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_plan_executes_only_the_plan() {
    let sim = sim(generated_world(
        "namespaces=1,repos=2,images=20,seed=8",
        Faults::default(),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), "");
    let before = registry_snapshot(&sim);
    let (plan, plan_path) = plan_json(&sim, &config, dir.path());
    // After review, the registry gains an old untagged image the rules would condemn.
    sim.world(|w| {
        let repo = w.instances[0]
            .namespaces
            .values_mut()
            .next()
            .unwrap()
            .repos
            .values_mut()
            .next()
            .unwrap();
        let mut img = repo.images.last().unwrap().clone();
        img.digest = format!("sha256:{}", "f".repeat(64));
        img.tags.clear();
        repo.images.push(img);
    });
    let o = run_bin(
        &sim,
        &[
            "apply",
            "retention",
            "--yes",
            "--config",
            &config,
            "--plan",
            &plan_path,
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut expected = expected_after(&before, &plan);
    let extra = registry_snapshot(&sim)
        .into_iter()
        .find(|((_, d), _)| d.ends_with("ffff"))
        .unwrap();
    expected.insert(extra.0.clone(), extra.1);
    assert_eq!(
        registry_snapshot(&sim),
        expected,
        "exactly the reviewed actions, nothing more"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_plan_files_exit_2() {
    let sim = sim(generated_world(
        "namespaces=1,repos=1,images=5,seed=8",
        Faults::default(),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), "");
    let (_, plan_path) = plan_json(&sim, &config, dir.path());
    let text = std::fs::read_to_string(&plan_path).unwrap();
    let corrupt = dir.path().join("corrupt.json");
    std::fs::write(&corrupt, &text[..text.len() / 2]).unwrap();
    let o = run_bin(
        &sim,
        &[
            "apply",
            "retention",
            "--yes",
            "--config",
            &config,
            "--plan",
            corrupt.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("line "),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let other = dir.path().join("other.json");
    let id = sim.world(|w| w.instances[0].id.clone());
    std::fs::write(&other, text.replace(&id, "another-instance-id")).unwrap();
    let o = run_bin(
        &sim,
        &[
            "apply",
            "retention",
            "--yes",
            "--config",
            &config,
            "--plan",
            other.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("another-instance-id"));
    let schema = dir.path().join("schema.json");
    std::fs::write(
        &schema,
        text.replace("retention-report/v1", "retention-report/v9"),
    )
    .unwrap();
    let o = run_bin(
        &sim,
        &[
            "apply",
            "retention",
            "--yes",
            "--config",
            &config,
            "--plan",
            schema.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(deletes_in_log(&sim).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_without_yes_off_a_terminal_refuses() {
    let sim = sim(generated_world(
        "namespaces=1,repos=1,images=20,seed=8",
        Faults::default(),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), "");
    let o = run_bin(&sim, &["apply", "retention", "--config", &config]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--yes"));
    assert!(deletes_in_log(&sim).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn applying_a_plan_twice_is_idempotent() {
    let sim = sim(generated_world(
        "namespaces=1,repos=3,images=25,seed=23",
        Faults::default(),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), "");
    let (plan, plan_path) = plan_json(&sim, &config, dir.path());
    assert!(
        plan["summary"]["delete_tag"].as_u64().unwrap() > 0,
        "covers delete_tag too"
    );
    let first = run_bin(
        &sim,
        &[
            "apply",
            "retention",
            "--yes",
            "--config",
            &config,
            "--plan",
            &plan_path,
        ],
    );
    assert!(first.status.success());
    let after_first = registry_snapshot(&sim);
    let sent = deletes_in_log(&sim).len();
    let second = run_bin(
        &sim,
        &[
            "apply",
            "retention",
            "--yes",
            "--config",
            &config,
            "--plan",
            &plan_path,
        ],
    );
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stdout)
    );
    let out = String::from_utf8_lossy(&second.stdout);
    assert!(out.contains(", 0 stale, 0 failed"), "{out}");
    assert_eq!(registry_snapshot(&sim), after_first);
    assert_eq!(
        deletes_in_log(&sim).len(),
        sent,
        "the second pass sends no delete"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn grace_applies_an_action_only_after_it_was_planned_long_enough() {
    let sim = sim(generated_world(
        "namespaces=1,repos=2,images=20,seed=5",
        Faults::default(),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), "grace = \"1h\"");
    let before = registry_snapshot(&sim);
    let o = run_bin(&sim, &["apply", "retention", "--yes", "--config", &config]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("0 applied or already done") && out.contains("waiting for grace"),
        "{out}"
    );
    assert_eq!(
        registry_snapshot(&sim),
        before,
        "nothing deleted on first sight"
    );
    assert!(deletes_in_log(&sim).is_empty());
    // With grace 0s the same actions go at once.
    let config = write_config(&sim, dir.path(), "grace = \"0s\"");
    let o = run_bin(&sim, &["apply", "retention", "--yes", "--config", &config]);
    assert!(o.status.success());
    assert!(!deletes_in_log(&sim).is_empty());
}

/// The crash matrix for retention: SIGKILL `apply` at random points (seeded),
/// again and again, then let it finish. The registry ends exactly as planned,
/// and the audit table matches the simulator's log of applied deletions: every
/// deletion the registry applied has a record (the record is written before the
/// call), and every record that says `applied` is a deletion the registry applied.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_points_then_restart_ends_as_planned_and_audited() {
    use rand::{Rng, SeedableRng};
    let sim = sim(generated_world(
        "namespaces=2,repos=3,images=25,seed=24",
        Faults {
            latency: std::time::Duration::from_millis(2),
            ..Default::default()
        },
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), "");
    let before = registry_snapshot(&sim);
    let (plan, plan_path) = plan_json(&sim, &config, dir.path());
    let expected = expected_after(&before, &plan);
    let sk = sim_secret(&sim);
    let apply = || {
        bin(
            &sk,
            &[
                "apply",
                "retention",
                "--yes",
                "--config",
                &config,
                "--plan",
                &plan_path,
            ],
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut kills = 0;
    for _ in 0..8 {
        let mut child = apply();
        let after_ms = rng.random_range(50..600);
        std::thread::sleep(std::time::Duration::from_millis(after_ms));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
        if registry_snapshot(&sim) == expected {
            break;
        }
    }
    assert!(kills >= 2, "the kills landed mid-run ({kills})");
    for _ in 0..3 {
        if registry_snapshot(&sim) == expected {
            break;
        }
        let o = run_bin(
            &sim,
            &[
                "apply",
                "retention",
                "--yes",
                "--config",
                &config,
                "--plan",
                &plan_path,
            ],
        );
        assert!(
            matches!(o.status.code(), Some(0 | 1)),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert_eq!(
        registry_snapshot(&sim),
        expected,
        "the registry is exactly in the planned state"
    );

    // Audit ↔ the simulator's log of applied deletions.
    let audit = run_bin(&sim, &["audit", "--config", &config, "--format", "json"]);
    let records: Vec<serde_json::Value> = serde_json::from_slice(&audit.stdout).unwrap();
    let target_of = |r: &serde_json::Value| r["target"].as_str().unwrap().to_owned();
    let applied_in_log: Vec<(String, String)> = sim
        .requests()
        .into_iter()
        .filter(|e| e.code == "OK")
        .filter_map(|e| {
            let repo = format!(
                "{}/{}",
                e.params.get("Namespace")?,
                e.params.get("RepoName")?
            );
            match e.action.as_deref()? {
                "DeleteImages" => Some((
                    "delete_image".to_owned(),
                    format!("{repo}@{}", e.params["ImageId"]),
                )),
                "DeleteRepoTag" => Some((
                    "delete_tag".to_owned(),
                    format!("{repo}:{} (", e.params["TagName"]),
                )),
                _ => None,
            }
        })
        .collect();
    assert!(!applied_in_log.is_empty());
    for (action, target) in &applied_in_log {
        assert!(
            records.iter().any(
                |r| r["action"] == action.as_str() && target_of(r).starts_with(target.as_str())
            ),
            "the registry applied {action} {target}, but no audit record names it"
        );
    }
    for r in records.iter().filter(|r| r["outcome"] == "applied") {
        let t = target_of(r);
        assert!(
            applied_in_log
                .iter()
                .any(|(a, target)| r["action"] == a.as_str() && t.starts_with(target.as_str())),
            "audit says applied, the registry never did: {r}"
        );
    }
    // A killed run leaves `started` records; nothing else is unexplained.
    for r in &records {
        let o = r["outcome"].as_str().unwrap();
        assert!(
            ["applied", "already_done", "started", "interrupted"].contains(&o),
            "{r}"
        );
    }
}
