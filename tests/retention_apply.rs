//! The retention apply path (issue 11, items 15, 17, 18, 19, 24, 26 and the
//! audit status): reviewed plans never widen the current rules, the apply
//! stops when the API is gone or on Ctrl-C, several tags of one image all go,
//! a delete is never retried without a fresh check, no plan file panics the
//! executor, and a moved tag is stale, not done. Through the real binary
//! against the simulator, or the real client against it.

mod common;

use common::*;
use kcr_housekeeper::retention::executor::{self, ExecEnv, Outcome, Target};
use kcr_housekeeper::retention::{ActionKind, PlannedAction};
use kcr_housekeeper::sim::{Faults, Simulator};
use secrecy::ExposeSecret;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const RULES: &str = r#"
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

/// A config for the simulator; `protect` is the `[retention.protect] tags` list.
fn write_config(sim: &Simulator, dir: &Path, head: &str, protect: &str) -> String {
    generated_config(
        sim,
        dir,
        &format!(
            "[retention]\nmode = \"enforce\"\nmin_age = \"1h\"\n{head}\n\
             [retention.protect]\ntags = [{protect}]\nnewest_images_per_repository = 1\n{RULES}"
        ),
    )
}

const PROTECT: &str = r#""latest", "v*.*.*""#;

/// The binary with the simulator's secret.
fn command(sim: &Simulator, args: &[&str]) -> Command {
    bin(&sim_secret(sim), args)
}

fn apply_plan(sim: &Simulator, config: &str, plan: &str) -> Output {
    run_bin(
        sim,
        &[
            "apply",
            "retention",
            "--yes",
            "--config",
            config,
            "--plan",
            plan,
        ],
    )
}

fn actions(plan: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    plan["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            let repo = format!(
                "{}/{}",
                r["namespace"].as_str().unwrap(),
                r["repository"].as_str().unwrap()
            );
            r["actions"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |a| (repo.clone(), a.clone()))
        })
        .collect()
}

fn write_plan(dir: &Path, name: &str, plan: &serde_json::Value) -> String {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_string_pretty(plan).unwrap()).unwrap();
    p.to_str().unwrap().to_owned()
}

/// Item 15, the reviewer's scenario: plan, add `main-*` to protect.tags,
/// apply the old plan: nothing protected is deleted, and the rest goes.
#[tokio::test(flavor = "multi_thread")]
async fn an_old_plan_never_deletes_what_the_current_config_protects() {
    let sim = sim(generated_world(
        "namespaces=2,repos=2,images=25,seed=21",
        Faults::default(),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), "", PROTECT);
    let (plan, plan_path) = plan_json(&sim, &config, dir.path());
    let condemned_main = actions(&plan)
        .iter()
        .filter(|(_, a)| {
            a["tags"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t.as_str().unwrap().starts_with("main-"))
        })
        .count();
    assert!(
        condemned_main > 3,
        "the plan deletes main-* tags: {condemned_main}"
    );
    let before = registry_snapshot(&sim);
    // After review, the operator protects main-*.
    write_config(&sim, dir.path(), "", &format!("{PROTECT}, \"main-*\""));
    let o = apply_plan(&sim, &config, &plan_path);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("no longer condemned by the current rules"),
        "{out}"
    );
    assert!(out.contains("fingerprint differs"), "{out}");
    // No main-* tag (and no image carrying one) is gone.
    let after = registry_snapshot(&sim);
    for ((repo, digest), tags) in &before {
        for tag in tags.iter().filter(|t| t.starts_with("main-")) {
            assert!(
                after
                    .get(&(repo.clone(), digest.clone()))
                    .is_some_and(|t| t.contains(tag)),
                "protected {repo}:{tag} ({digest}) was deleted"
            );
        }
    }
    // The confirmation counts the intersection, not the file's summary.
    let remaining = actions(&plan).len() - condemned_main;
    assert!(
        out.contains(&format!(
            "({condemned_main} of the file's {} dropped)",
            actions(&plan).len()
        )),
        "{out}"
    );
    assert!(
        remaining > 0 && !deletes_in_log(&sim).is_empty(),
        "the rest still goes"
    );
    assert!(
        deletes_in_log(&sim).len() <= remaining,
        "at most the intersection was deleted"
    );
}

/// Item 15: an action added to the file by hand is not executed, even when it verifies.
#[tokio::test(flavor = "multi_thread")]
async fn an_action_added_by_hand_is_not_executed() {
    let sim = sim(generated_world(
        "namespaces=1,repos=2,images=20,seed=8",
        Faults::default(),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), "", PROTECT);
    let (mut plan, _) = plan_json(&sim, &config, dir.path());
    // The newest image of the first repository: kept by every rule.
    let repo = &plan["repositories"][0];
    let key = format!(
        "{}/{}",
        repo["namespace"].as_str().unwrap(),
        repo["repository"].as_str().unwrap()
    );
    let (ns, rp) = key.split_once('/').unwrap();
    let (digest, tags) = sim.world(|w| {
        let img = &w.instances[0].namespaces[ns].repos[rp].images[0];
        (img.digest.clone(), img.tags.clone())
    });
    let forged = serde_json::json!({
        "action": "delete_image", "digest": digest, "tags": tags, "image_tags": tags,
        "size": 1, "pushed_at": "2020-01-01T00:00:00Z", "rules": ["ci"], "reason": "added by hand"
    });
    plan["repositories"][0]["actions"]
        .as_array_mut()
        .unwrap()
        .push(forged);
    let forged_path = write_plan(dir.path(), "forged.json", &plan);
    let o = apply_plan(&sim, &config, &forged_path);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("dropped: delete_image gen/{key} {digest}"))
            && out.contains("not in the current plan"),
        "{out}"
    );
    assert!(
        registry_snapshot(&sim).contains_key(&(key, digest.clone())),
        "the image survives"
    );
    assert!(!deletes_in_log(&sim).iter().any(|(_, id)| *id == digest));
}

/// Item 15: too old a plan, a plan without its `instances` binding: exit 2, nothing deleted.
#[tokio::test(flavor = "multi_thread")]
async fn old_and_unbound_plans_are_refused() {
    let sim = sim(generated_world(
        "namespaces=1,repos=2,images=20,seed=8",
        Faults::default(),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), "", PROTECT);
    let (plan, _) = plan_json(&sim, &config, dir.path());
    let mut old = plan.clone();
    old["generated_at"] = serde_json::json!(
        (chrono::Utc::now() - chrono::Duration::hours(25))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let old_path = write_plan(dir.path(), "old.json", &old);
    let o = apply_plan(&sim, &config, &old_path);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("max_plan_age"), "{}", text(&o));
    // A longer max_plan_age admits it.
    write_config(&sim, dir.path(), "max_plan_age = \"48h\"", PROTECT);
    let o = apply_plan(&sim, &config, &old_path);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let sent = deletes_in_log(&sim).len();
    assert!(sent > 0);
    let mut unbound = plan.clone();
    unbound.as_object_mut().unwrap().remove("instances");
    let unbound_path = write_plan(dir.path(), "unbound.json", &unbound);
    let o = apply_plan(&sim, &config, &unbound_path);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("instances"), "{}", text(&o));
    assert_eq!(deletes_in_log(&sim).len(), sent);
}

/// Item 15: the per-run cap and grace apply to a plan file's actions as to a fresh run.
#[tokio::test(flavor = "multi_thread")]
async fn caps_and_grace_apply_to_a_plan_file() {
    let sim = sim(generated_world(
        "namespaces=1,repos=2,images=20,seed=5",
        Faults::default(),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), "", PROTECT);
    let (_, plan_path) = plan_json(&sim, &config, dir.path());
    let before = registry_snapshot(&sim);
    write_config(&sim, dir.path(), "max_deletions_per_run = 2", PROTECT);
    let o = apply_plan(&sim, &config, &plan_path);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    write_config(&sim, dir.path(), "grace = \"1h\"", PROTECT);
    let o = apply_plan(&sim, &config, &plan_path);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("waiting for grace"), "{}", text(&o));
    assert_eq!(registry_snapshot(&sim), before);
    assert!(deletes_in_log(&sim).is_empty());
}

/// Add an image with the given tags, pushed `days` ago, to the first repository.
fn push_image(sim: &Simulator, digest: &str, tags: &[&str], days: i64) -> (String, String) {
    sim.world(|w| {
        let (ns_name, ns) = w.instances[0].namespaces.iter_mut().next().unwrap();
        let (repo_name, repo) = ns.repos.iter_mut().next().unwrap();
        let mut img = repo.images[0].clone();
        img.digest = digest.to_owned();
        img.tags = tags.iter().map(|t| t.to_string()).collect();
        img.create_time -= chrono::Duration::days(days);
        repo.images.push(img);
        (ns_name.clone(), repo_name.clone())
    })
}

/// Item 18: several delete_tag actions on one image all run in one apply.
#[tokio::test(flavor = "multi_thread")]
async fn several_tags_of_one_image_all_go_in_one_apply() {
    let sim = sim(generated_world(
        "namespaces=1,repos=1,images=6,seed=9",
        Faults::default(),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), "", PROTECT);
    let digest = format!("sha256:{}", "a".repeat(64));
    push_image(
        &sim,
        &digest,
        &["pr-90001", "pr-90002", "pr-90003", "v9.9.9"],
        400,
    );
    let (plan, plan_path) = plan_json(&sim, &config, dir.path());
    let on_image = actions(&plan)
        .into_iter()
        .filter(|(_, a)| a["digest"] == digest.as_str() && a["action"] == "delete_tag")
        .count();
    assert_eq!(on_image, 3, "the plan deletes three tags of the image");
    let o = apply_plan(&sim, &config, &plan_path);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(", 0 stale, 0 failed"), "{}", text(&o));
    let tags = registry_snapshot(&sim)
        .into_iter()
        .find(|((_, d), _)| *d == digest)
        .unwrap()
        .1;
    assert_eq!(tags, BTreeSet::from(["v9.9.9".to_owned()]));
}

/// Item 19: a delete is never sent twice without a fresh check in between
/// (under lost replies: the delete is applied, its answer is garbled).
#[tokio::test(flavor = "multi_thread")]
async fn a_delete_is_never_retried_without_a_fresh_check() {
    let sim = sim(generated_world(
        "namespaces=1,repos=3,images=25,seed=23",
        Faults {
            fault_rate: 0.3,
            kinds: vec![
                kcr_housekeeper::sim::FaultKind::Truncated,
                kcr_housekeeper::sim::FaultKind::ServerError,
            ],
            seed: Some(5),
            ..Default::default()
        },
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), "", PROTECT);
    // Planning may need a few passes under faults.
    let mut plan_path = None;
    for _ in 0..5 {
        let out = dir.path().join("plan.json");
        let o = run_bin(
            &sim,
            &[
                "plan",
                "retention",
                "--config",
                &config,
                "--format",
                "json",
                "--output",
                out.to_str().unwrap(),
            ],
        );
        if o.status.success() {
            plan_path = Some(out.to_str().unwrap().to_owned());
            break;
        }
    }
    let plan_path = plan_path.expect("a plan under faults");
    for _ in 0..4 {
        let o = apply_plan(&sim, &config, &plan_path);
        assert!(matches!(o.status.code(), Some(0 | 1)), "{}", text(&o));
    }
    // Per object: between two delete requests, a check of that image.
    let log = sim.requests();
    let mut last_delete: BTreeMap<String, usize> = BTreeMap::new();
    let mut checked: BTreeMap<String, usize> = BTreeMap::new();
    let mut retries = 0;
    for (i, e) in log.iter().enumerate() {
        match e.action.as_deref() {
            Some("DescribeImages") => {
                if let Some(id) = e.params.get("ImageId") {
                    checked.insert(id.clone(), i);
                }
            }
            Some("DeleteImages" | "DeleteRepoTag") => {
                let object = e
                    .params
                    .get("TagName")
                    .map(|t| format!("{}:{t}", e.params["RepoName"]))
                    .unwrap_or_else(|| e.params["ImageId"].clone());
                if let Some(prev) = last_delete.get(&object) {
                    retries += 1;
                    let digest_checks: Vec<usize> = checked.values().copied().collect();
                    assert!(
                        digest_checks.iter().any(|c| c > prev),
                        "{object}: a delete was retried without a check since request {prev} (now {i})"
                    );
                }
                last_delete.insert(object, i);
            }
            _ => {}
        }
    }
    assert!(retries > 0, "the faults caused retries");
}

fn exec_target(sim: &Simulator, ns: &str, repo: &str) -> Target {
    Target {
        instance: "gen".into(),
        instance_id: sim.world(|w| w.instances[0].id.clone()),
        namespace: ns.into(),
        repository: repo.into(),
    }
}

fn delete_tag(digest: &str, tag: Vec<String>, image_tags: &[&str]) -> PlannedAction {
    PlannedAction {
        action: ActionKind::DeleteTag,
        digest: digest.into(),
        tags: tag,
        image_tags: image_tags.iter().map(|t| t.to_string()).collect(),
        size: 0,
        pushed_at: chrono::Utc::now(),
        rules: vec!["ci".into()],
        reason: "test".into(),
    }
}

async fn execute(
    sim: &Simulator,
    state: &kcr_housekeeper::state::Store,
    items: Vec<(Target, PlannedAction)>,
) -> executor::Executed {
    let client = client_for(sim);
    let metrics = kcr_housekeeper::metrics::Metrics::new();
    let cancel = tokio_util::sync::CancellationToken::new();
    let env = ExecEnv {
        client: &client,
        state,
        metrics: &metrics,
        cancel: &cancel,
        job: "retention",
        run_id: None,
        verify: true,
        tick: &|| {},
    };
    executor::execute(&env, items).await
}

/// Item 26: a delete_tag whose tag now names another image is stale, not done;
/// item 24: a delete_tag without a tag fails cleanly instead of panicking.
#[tokio::test(flavor = "multi_thread")]
async fn a_moved_tag_is_stale_and_a_tagless_delete_tag_fails_without_panic() {
    let sim = sim(generated_world(
        "namespaces=1,repos=1,images=4,seed=9",
        Faults::default(),
    ))
    .await;
    let a = format!("sha256:{}", "a".repeat(64));
    let b = format!("sha256:{}", "b".repeat(64));
    // Planned: delete pr-1 of A (tags pr-1, keep). Since then CI moved pr-1 to B.
    let (ns, repo) = push_image(&sim, &a, &["keep"], 30);
    push_image(&sim, &b, &["pr-1"], 1);
    let t = exec_target(&sim, &ns, &repo);
    let state = kcr_housekeeper::state::Store::in_memory().unwrap();
    let moved = delete_tag(&a, vec!["pr-1".into()], &["pr-1", "keep"]);
    let empty = delete_tag(&a, vec![], &["pr-1", "keep"]);
    let done = execute(&sim, &state, vec![(t.clone(), moved), (t, empty)]).await;
    match &done.results[0].2 {
        Outcome::Stale(why) => assert!(why.contains(&b), "{why}"),
        other => panic!("a moved tag is stale, not {other:?}"),
    }
    assert!(matches!(&done.results[1].2, Outcome::Failed(why) if why.contains("exactly one tag")));
    assert_eq!(done.done(), 0);
    assert!(deletes_in_log(&sim).is_empty(), "nothing deleted");
    assert!(
        registry_snapshot(&sim)
            .get(&(format!("{ns}/{repo}"), b))
            .unwrap()
            .contains("pr-1"),
        "the moved tag survives"
    );
    let audit = state.audit_since(None).unwrap();
    assert_eq!(audit[0].outcome.as_str(), "stale");
    assert!(audit[0].error.as_deref().unwrap().contains("another image"));
}

/// Item 24: a plan file with a tagless delete_tag does not panic the binary.
#[tokio::test(flavor = "multi_thread")]
async fn a_plan_file_with_a_tagless_delete_tag_does_not_panic() {
    let sim = sim(generated_world(
        "namespaces=1,repos=2,images=20,seed=23",
        Faults::default(),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), "", PROTECT);
    let (mut plan, _) = plan_json(&sim, &config, dir.path());
    for r in plan["repositories"].as_array_mut().unwrap() {
        for a in r["actions"].as_array_mut().unwrap() {
            if a["action"] == "delete_tag" {
                a["tags"] = serde_json::json!([]);
            }
        }
    }
    let p = write_plan(dir.path(), "tagless.json", &plan);
    let o = apply_plan(&sim, &config, &p);
    assert!(matches!(o.status.code(), Some(0..=2)), "{}", text(&o));
    assert!(!text(&o).contains("panicked"), "{}", text(&o));
    assert!(
        !deletes_in_log(&sim)
            .iter()
            .any(|(a, _)| a == "DeleteRepoTag"),
        "no tag deleted from a tagless action"
    );
}

/// Item 17: the API goes away mid-apply: the apply stops after
/// max_consecutive_failures failed calls, leaves the rest, and exits 1.
#[tokio::test(flavor = "multi_thread")]
async fn the_apply_stops_soon_when_the_api_goes_away() {
    let sim = sim(generated_world(
        "namespaces=2,repos=3,images=25,seed=24",
        Faults {
            latency: Duration::from_millis(20),
            ..Default::default()
        },
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), "", PROTECT);
    let child = command(&sim, &["apply", "retention", "--yes", "--config", &config])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while deletes_in_log(&sim).len() < 3 {
        assert!(started.elapsed() < Duration::from_secs(30), "deletes start");
        std::thread::sleep(Duration::from_millis(10));
    }
    sim.stop().await;
    let gone = Instant::now();
    let o = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let took = gone.elapsed();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("max_consecutive_failures = 10"), "{out}");
    assert!(out.contains("not attempted"), "{out}");
    assert!(took < Duration::from_secs(40), "stopped after {took:?}");
    eprintln!(
        "stopped {:.1} s after the API went away",
        took.as_secs_f64()
    );
}

/// Item 17: Ctrl-C during a one-shot apply stops at the next action
/// boundary, prints the summary and exits 130; every started call is finished in the audit.
#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_stops_between_actions_and_exits_130() {
    let sim = sim(generated_world(
        "namespaces=2,repos=3,images=25,seed=24",
        Faults {
            latency: Duration::from_millis(100),
            ..Default::default()
        },
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), "", PROTECT);
    let (plan, _) = plan_json(&sim, &config, dir.path());
    let planned = actions(&plan).len();
    let child = command(&sim, &["apply", "retention", "--yes", "--config", &config])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while deletes_in_log(&sim).len() < 2 {
        assert!(started.elapsed() < Duration::from_secs(60), "deletes start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let o = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains("cancelled before the end") && out.contains("not attempted"),
        "{out}"
    );
    assert!(
        deletes_in_log(&sim).len() < planned,
        "stopped before the end"
    );
    let audit = run_bin(&sim, &["audit", "--config", &config, "--format", "json"]);
    let records: Vec<serde_json::Value> = serde_json::from_slice(&audit.stdout).unwrap();
    assert!(!records.is_empty());
    assert!(
        records.iter().all(|r| r["outcome"] != "started"),
        "no call left unfinished: {records:?}"
    );
}

/// Audit: the outcome is a status with the error in its own field; --job and --limit filter.
#[tokio::test(flavor = "multi_thread")]
async fn audit_records_carry_a_status_and_filter_by_job_and_limit() {
    let sim = sim(generated_world(
        "namespaces=1,repos=2,images=20,seed=5",
        Faults::default(),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), "", PROTECT);
    let o = run_bin(&sim, &["apply", "retention", "--yes", "--config", &config]);
    assert!(o.status.success(), "{}", text(&o));
    let store = kcr_housekeeper::state::Store::open(&dir.path().join("state.db")).unwrap();
    store
        .audit_unsent(
            &kcr_housekeeper::state::Mutation {
                job: "tokens",
                run_id: None,
                instance: "gen",
                action: "create_token",
                target: "t",
                detail: "",
            },
            kcr_housekeeper::state::AuditStatus::Failed,
            Some("AccessDenied"),
            chrono::Utc::now(),
        )
        .unwrap();
    drop(store);
    let all = run_bin(&sim, &["audit", "--config", &config, "--format", "json"]);
    let all: Vec<serde_json::Value> = serde_json::from_slice(&all.stdout).unwrap();
    assert!(all.len() > 3);
    let statuses = [
        "applied",
        "already_done",
        "stale",
        "failed",
        "interrupted",
        "started",
    ];
    assert!(
        all.iter()
            .all(|r| statuses.contains(&r["outcome"].as_str().unwrap()))
    );
    let token = all.iter().find(|r| r["job"] == "tokens").unwrap();
    assert_eq!(
        (token["outcome"].as_str(), token["error"].as_str()),
        (Some("failed"), Some("AccessDenied"))
    );
    let o = run_bin(
        &sim,
        &[
            "audit",
            "--config",
            &config,
            "--format",
            "json",
            "--job",
            "retention",
            "--limit",
            "2",
        ],
    );
    let some: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(some.len(), 2);
    assert!(some.iter().all(|r| r["job"] == "retention"));
    let newest_retention: Vec<&serde_json::Value> =
        all.iter().filter(|r| r["job"] == "retention").collect();
    assert_eq!(
        some[1]["id"],
        newest_retention.last().unwrap()["id"],
        "the newest records, oldest first"
    );
}

fn audit_records(sim: &Simulator, config: &str) -> Vec<serde_json::Value> {
    let o = run_bin(sim, &["audit", "--config", config, "--format", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Review finding 1: a delete whose answer was lost is never audited
/// `failed`: when the check after it cannot settle it, the outcome is
/// unknown (`interrupted`, with the delete's error, exit 1, counted apart
/// from failures); when the check finds the image gone, our delete did it
/// (`applied`, not `already_done`).
#[tokio::test(flavor = "multi_thread")]
async fn a_delete_whose_answer_was_lost_is_unknown_or_applied_never_failed() {
    let sim = sim(generated_world(
        "namespaces=1,repos=2,images=20,seed=5",
        Faults::default(),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    // No check before the first delete: the only checks are the ones after a lost answer.
    let config = write_config(&sim, dir.path(), "verify_before_delete = false", PROTECT);
    let with_faults = |spec: &str| {
        let mut c = command(&sim, &["apply", "retention", "--yes", "--config", &config]);
        c.env("KCR_HOUSEKEEPER_FAILPOINT", spec);
        std::thread::spawn(move || c.output().unwrap())
            .join()
            .unwrap()
    };
    // The answer lost, and the check after it fails too: unknown.
    let o =
        with_faults("retention.api.delete_image.reply_lost=error*1,retention.api.verify=error*1");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("1 outcome unknown"), "{out}");
    assert!(out.contains(", 0 failed"), "{out}");
    assert!(out.contains("UNKNOWN: delete_image"), "{out}");
    let records = audit_records(&sim, &config);
    let unknown: Vec<_> = records
        .iter()
        .filter(|r| r["outcome"] == "interrupted")
        .collect();
    assert_eq!(unknown.len(), 1, "{records:?}");
    let why = unknown[0]["error"].as_str().unwrap();
    assert!(
        why.contains("outcome unknown")
            && why.contains("DeleteImages")
            && why.contains("verification"),
        "the delete's error is kept: {why}"
    );
    assert!(
        records.iter().all(|r| r["outcome"] != "failed"),
        "{records:?}"
    );
    // The registry did apply it.
    let target = unknown[0]["target"].as_str().unwrap();
    let digest = target.split_once('@').unwrap().1;
    assert!(deletes_in_log(&sim).iter().any(|(_, d)| d == digest));

    // A fresh world: the answer lost, the check finds the image gone: applied by us.
    let sim2 = sim_fresh().await;
    let dir2 = tempfile::tempdir().unwrap();
    let config2 = write_config(&sim2, dir2.path(), "verify_before_delete = false", PROTECT);
    let mut c = command(
        &sim2,
        &["apply", "retention", "--yes", "--config", &config2],
    );
    c.env(
        "KCR_HOUSEKEEPER_FAILPOINT",
        "retention.api.delete_image.reply_lost=error*1",
    );
    let o = std::thread::spawn(move || c.output().unwrap())
        .join()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let records = audit_records(&sim2, &config2);
    assert!(
        records.iter().all(|r| r["outcome"] == "applied"),
        "nothing was in place before this run: every effect is ours: {records:?}"
    );
}

async fn sim_fresh() -> Simulator {
    sim(generated_world(
        "namespaces=1,repos=2,images=20,seed=5",
        Faults::default(),
    ))
    .await
}

/// Review finding 2: actions made up in a plan file (a digest the registry
/// does not have, an empty digest, a delete_tag of a tag the image does not
/// carry) are dropped and listed as not in the current plan, never counted
/// as done.
#[tokio::test(flavor = "multi_thread")]
async fn made_up_plan_actions_are_dropped_and_listed_not_counted_done() {
    let sim = sim_fresh().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), "", PROTECT);
    let (mut plan, _) = plan_json(&sim, &config, dir.path());
    let repo = &plan["repositories"][0];
    let (ns, rp) = (
        repo["namespace"].as_str().unwrap().to_owned(),
        repo["repository"].as_str().unwrap().to_owned(),
    );
    let (digest, tags) = sim.world(|w| {
        let img = &w.instances[0].namespaces[&ns].repos[&rp].images[0];
        (img.digest.clone(), img.tags.clone())
    });
    let made_up = format!("sha256:{}", "f".repeat(64));
    let forged = |action: &str, digest: &str, tags: Vec<String>, image_tags: Vec<String>| {
        serde_json::json!({
            "action": action, "digest": digest, "tags": tags, "image_tags": image_tags,
            "size": 1, "pushed_at": "2020-01-01T00:00:00Z", "rules": ["ci"], "reason": "made up"
        })
    };
    let made = vec![
        forged("delete_image", &made_up, vec![], vec![]),
        forged("delete_image", "", vec![], vec![]),
        forged(
            "delete_tag",
            &digest,
            vec!["no-such-tag".into()],
            tags.clone(),
        ),
    ];
    for r in plan["repositories"].as_array_mut().unwrap() {
        r["actions"] = serde_json::json!([]);
    }
    plan["repositories"][0]["actions"] = serde_json::Value::Array(made);
    let path = write_plan(dir.path(), "made-up.json", &plan);
    let o = apply_plan(&sim, &config, &path);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert_eq!(
        out.matches("dropped: ").count(),
        3,
        "every made-up action is listed: {out}"
    );
    assert_eq!(out.matches("not in the current plan").count(), 3, "{out}");
    assert!(out.contains("no-such-tag"), "{out}");
    assert!(!out.contains("already done:"), "{out}");
    assert!(out.contains("0 applied or already done"), "{out}");
    assert!(deletes_in_log(&sim).is_empty());
}

/// Start a slow one-shot apply and wait until it has deleted something.
async fn slow_apply(dir: &Path) -> (Simulator, String, std::process::Child) {
    let sim = sim(generated_world(
        "namespaces=2,repos=3,images=25,seed=24",
        Faults {
            latency: Duration::from_millis(100),
            ..Default::default()
        },
    ))
    .await;
    let config = write_config(&sim, dir, "", PROTECT);
    let child = command(&sim, &["apply", "retention", "--yes", "--config", &config])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while deletes_in_log(&sim).len() < 2 {
        assert!(started.elapsed() < Duration::from_secs(60), "deletes start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (sim, config, child)
}

/// No audit record left `started`, and the run row closed as a failure.
fn assert_closed(dir: &Path, sim: &Simulator, config: &str) {
    let records = audit_records(sim, config);
    assert!(!records.is_empty());
    assert!(
        records.iter().all(|r| r["outcome"] != "started"),
        "no call left unfinished: {records:?}"
    );
    let store = kcr_housekeeper::state::Store::open(&dir.join("state.db")).unwrap();
    let runs = store.runs(Some("retention"), 10).unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(runs[0].finished_at.is_some(), "the run is closed: {runs:?}");
    assert_eq!(
        runs[0].result,
        Some(kcr_housekeeper::state::RunResult::Failure)
    );
}

/// Review finding 3: SIGTERM during a one-shot apply stops at the next
/// action boundary like Ctrl-C, prints the summary, exits 143, and closes
/// the run and every audit record.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_between_actions_exits_143_and_closes_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, config, child) = slow_apply(dir.path()).await;
    signal(&child, "-TERM");
    let o = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(143), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains("cancelled before the end") && out.contains("not attempted"),
        "{out}"
    );
    assert_closed(dir.path(), &sim, &config);
}

/// Issue 12 item 1: a one-shot apply is a run of the job like a daemon
/// run; Ctrl-C stops it at a safe point and `history` lists it as a failed
/// `cli` run that says it was cancelled and what it had done.
#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_leaves_a_cancelled_cli_run_in_history() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, config, child) = slow_apply(dir.path()).await;
    signal(&child, "-INT");
    let o = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", text(&o));
    assert_closed(dir.path(), &sim, &config);
    let h = run_bin(&sim, &["history", "--config", &config, "--format", "json"]);
    assert!(h.status.success(), "{}", text(&h));
    let runs: serde_json::Value = serde_json::from_slice(&h.stdout).unwrap();
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 1, "{runs:#?}");
    let r = &runs[0];
    assert_eq!(r["job"], "retention", "{r:#}");
    assert_eq!(r["trigger"], "cli", "{r:#}");
    assert_eq!(r["result"], "failure", "{r:#}");
    let error = r["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("cancelled before the end") && error.contains("not attempted"),
        "{r:#}"
    );
}

/// Review finding 3: a second Ctrl-C stops at once, yet leaves no
/// `started` record and no open run (the action in flight: interrupted).
#[tokio::test(flavor = "multi_thread")]
async fn a_second_ctrl_c_stops_at_once_and_closes_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, config, child) = slow_apply(dir.path()).await;
    signal(&child, "-INT");
    tokio::time::sleep(Duration::from_millis(20)).await;
    signal(&child, "-INT");
    let o = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", text(&o));
    // Usually the second signal lands during an action (stopping now);
    // either way nothing may stay open.
    eprintln!("{}", text(&o));
    assert_closed(dir.path(), &sim, &config);
}

/// Review finding 4: the run cap applies to what a plan file runs (the
/// intersection), not to the whole fresh plan: a file trimmed under the
/// cap runs, a file over it is blocked naming its own count.
#[tokio::test(flavor = "multi_thread")]
async fn the_run_cap_applies_to_the_intersection_not_the_fresh_plan() {
    let sim = sim_fresh().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), "", PROTECT);
    let (mut plan, _) = plan_json(&sim, &config, dir.path());
    let all = actions(&plan).len();
    assert!(all > 5, "the fresh plan is over the cap: {all}");
    // Keep two delete_image actions of the file.
    let mut kept = 0;
    for r in plan["repositories"].as_array_mut().unwrap() {
        let acts = r["actions"].as_array().unwrap().clone();
        let mine: Vec<_> = acts
            .into_iter()
            .filter(|a| a["action"] == "delete_image")
            .take(2 - kept)
            .collect();
        kept += mine.len();
        r["actions"] = serde_json::Value::Array(mine);
    }
    assert_eq!(kept, 2);
    let path = write_plan(dir.path(), "two.json", &plan);
    write_config(&sim, dir.path(), "max_deletions_per_run = 5", PROTECT);
    let o = apply_plan(&sim, &config, &path);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(deletes_in_log(&sim).len(), 2, "{}", text(&o));
    // Over the cap: blocked, naming the intersection's count.
    write_config(&sim, dir.path(), "max_deletions_per_run = 1", PROTECT);
    let (mut plan, _) = plan_json(&sim, &config, dir.path());
    for r in plan["repositories"].as_array_mut().unwrap() {
        let acts = r["actions"].as_array().unwrap().clone();
        r["actions"] = serde_json::Value::Array(
            acts.into_iter()
                .filter(|a| a["action"] == "delete_image")
                .take(1)
                .collect(),
        );
    }
    let path = write_plan(dir.path(), "few.json", &plan);
    let n = actions(&plan).len();
    assert!(n > 1, "one delete_image per repository: {n}");
    let o = apply_plan(&sim, &config, &path);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("{n} actions exceed max_deletions_per_run 1")),
        "{}",
        text(&o)
    );
}

/// Review finding 5: declining the confirmation after a partial listing
/// exits 1 (something was skipped), through a pseudo-terminal.
#[tokio::test(flavor = "multi_thread")]
async fn declining_after_a_partial_listing_exits_1() {
    let sim = sim(generated_world(
        "namespaces=2,repos=2,images=20,seed=5",
        Faults::default(),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), "", PROTECT);
    let decline = |failpoint: Option<&str>| {
        let line = format!("{BIN} apply retention --config {config}");
        // `script` gives the command a terminal, so the prompt is asked.
        let mut script = Command::new("script");
        script.args(["-qec", &line, "/dev/null"]).env(
            "TEST_SK",
            sim.credentials().secret_access_key.expose_secret(),
        );
        if let Some(f) = failpoint {
            script.env("KCR_HOUSEKEEPER_FAILPOINT", f);
        }
        script
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut child = script.spawn().unwrap();
            child.stdin.take().unwrap().write_all(b"n\n").unwrap();
            child.wait_with_output().unwrap()
        })
        .join()
        .unwrap()
    };
    // Complete listing, declined: 0.
    let o = decline(None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("nothing applied"), "{}", text(&o));
    // One namespace unlisted, declined: 1, naming it.
    let o = decline(Some("retention.api.list_repositories=error*1"));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("nothing applied"), "{}", text(&o));
    assert!(text(&o).contains("partial"), "{}", text(&o));
    assert!(deletes_in_log(&sim).is_empty());
}

/// Review finding 5: when the instance could not be listed, a plan file's
/// actions are dropped as "could not be listed", not as "not in the
/// registry now"; exit 1.
#[tokio::test(flavor = "multi_thread")]
async fn a_plan_file_on_an_unlisted_instance_says_it_could_not_be_listed() {
    let sim = sim_fresh().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), "", PROTECT);
    let (plan, path) = plan_json(&sim, &config, dir.path());
    let n = actions(&plan).len();
    assert!(n > 0);
    let mut c = command(
        &sim,
        &[
            "apply",
            "retention",
            "--yes",
            "--config",
            &config,
            "--plan",
            &path,
        ],
    );
    c.env(
        "KCR_HOUSEKEEPER_FAILPOINT",
        "retention.api.list_namespaces=error*1",
    );
    let o = std::thread::spawn(move || c.output().unwrap())
        .join()
        .unwrap();
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert_eq!(
        out.matches("the repository could not be listed (instance gen:")
            .count(),
        n,
        "{out}"
    );
    assert!(!out.contains("not in the registry now"), "{out}");
    assert!(deletes_in_log(&sim).is_empty());
}
