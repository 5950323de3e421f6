//! Quota relief (issue 13 #9): with `delete_empty_repositories` and
//! `delete_empty_namespaces`, the retention job deletes exactly the empty,
//! old repositories and namespaces — audited, re-checked right before each
//! delete — and `kcr_quota_used{resource="repositories"}` drops. Through the
//! real jobs against the simulator.

mod common;

use common::*;
use kcr_housekeeper::jobs::{Job, JobContext, Outcome};
use kcr_housekeeper::sim::{SimOptions, Simulator};
use std::collections::BTreeSet;

fn context(sim: &Simulator, dir: &std::path::Path, extra: &str) -> JobContext {
    context_scoped(sim, dir, "", extra)
}

/// As [`context`], the demo instance declaring `scope` (a `scope = [...]` line).
fn context_scoped(sim: &Simulator, dir: &std::path::Path, scope: &str, extra: &str) -> JobContext {
    let text = format!(
        "{}[retention]\nmode = \"enforce\"\n{extra}\n[quota]\nstorage = \"none\"\n",
        demo_head(sim, dir).replace("\n[state]\n", &format!("\n{scope}\n[state]\n"))
    );
    let config = parse_config(sim, &text, dir);
    let state = kcr_housekeeper::state::Store::open(config.state.sqlite_path().unwrap()).unwrap();
    job_context("retention", client_for(sim), config, state)
}

fn used(ctx: &JobContext, resource: &str) -> f64 {
    let text = ctx.metrics.render();
    let prefix = format!("kcr_quota_used{{instance=\"demo\",resource=\"{resource}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
        .parse()
        .unwrap()
}

fn repositories(sim: &Simulator) -> BTreeSet<String> {
    sim.world(|w| {
        w.instances[0]
            .namespaces
            .iter()
            .flat_map(|(n, ns)| ns.repos.keys().map(move |r| format!("{n}/{r}")))
            .collect()
    })
}

fn namespaces(sim: &Simulator) -> BTreeSet<String> {
    sim.world(|w| w.instances[0].namespaces.keys().cloned().collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relief_deletes_exactly_the_empty_old_repositories_and_namespaces() {
    let sim = sim(SimOptions::default()).await;
    let now = sim.now();
    // Two empty repositories, one updated 60 days ago, one 5 days ago.
    sim.world(|w| {
        let apps = w.instances[0].namespaces.get_mut("apps").unwrap();
        let mut empty = apps.repos["web"].clone();
        empty.images.clear();
        empty.update_time = now - chrono::Duration::days(60);
        apps.repos.insert("old-empty".into(), empty.clone());
        empty.update_time = now - chrono::Duration::days(5);
        apps.repos.insert("new-empty".into(), empty);
    });
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(
        &sim,
        dir.path(),
        "delete_empty_repositories = { older_than = \"30d\" }\ndelete_empty_namespaces = { older_than = \"30d\" }",
    );
    let repos_before = repositories(&sim);
    let namespaces_before = namespaces(&sim);

    kcr_housekeeper::quota::QuotaJob.run(&ctx).await.unwrap();
    let repos_used = used(&ctx, "repositories");
    let namespaces_used = used(&ctx, "namespaces");
    assert_eq!(repos_used, repos_before.len() as f64);

    match kcr_housekeeper::retention::RetentionJob.run(&ctx).await {
        Ok(Outcome::Success(s)) => assert!(s.contains("quota relief: 3 deleted"), "{s}"),
        other => panic!("{other:?}"),
    }
    // Exactly the empty, old ones: apps/old-empty, and the demo's empty
    // namespaces older than 30 days (tools, internal; scratch is 10 days old).
    let gone: BTreeSet<String> = repos_before
        .difference(&repositories(&sim))
        .cloned()
        .collect();
    assert_eq!(gone, BTreeSet::from(["apps/old-empty".to_string()]));
    let gone: BTreeSet<String> = namespaces_before
        .difference(&namespaces(&sim))
        .cloned()
        .collect();
    assert_eq!(
        gone,
        BTreeSet::from(["internal".to_string(), "tools".to_string()])
    );

    kcr_housekeeper::quota::QuotaJob.run(&ctx).await.unwrap();
    assert_eq!(used(&ctx, "repositories"), repos_used - 1.0);
    assert_eq!(used(&ctx, "namespaces"), namespaces_used - 2.0);

    // Every delete was audited, and each was checked first.
    let audit = ctx.state.audit_since(None).unwrap();
    let relieved: BTreeSet<(String, String)> = audit
        .iter()
        .filter(|r| r.action.starts_with("delete_repository") || r.action == "delete_namespace")
        .map(|r| (r.action.clone(), r.target.clone()))
        .collect();
    assert_eq!(
        relieved,
        BTreeSet::from([
            ("delete_namespace".to_string(), "internal".to_string()),
            ("delete_namespace".to_string(), "tools".to_string()),
            (
                "delete_repository".to_string(),
                "apps/old-empty".to_string()
            ),
        ])
    );
    let log = sim.requests();
    let delete_at = log
        .iter()
        .position(|r| r.action.as_deref() == Some("DeleteRepository"))
        .unwrap();
    assert!(
        log[..delete_at].iter().rev().take(2).any(|r| {
            r.action.as_deref() == Some("DescribeImages")
                && r.params.get("RepoName").map(String::as_str) == Some("old-empty")
        }),
        "the repository's emptiness was re-checked right before its delete"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_filled_since_planning_is_not_deleted() {
    let sim = sim(SimOptions::default()).await;
    let now = sim.now();
    sim.world(|w| {
        let apps = w.instances[0].namespaces.get_mut("apps").unwrap();
        let mut empty = apps.repos["web"].clone();
        empty.images.clear();
        empty.update_time = now - chrono::Duration::days(60);
        apps.repos.insert("old-empty".into(), empty);
    });
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(
        &sim,
        dir.path(),
        "delete_empty_repositories = { older_than = \"30d\" }",
    );
    let inventory = ctx.inventory.for_config(&ctx.client, &ctx.config).await;
    let rc = ctx.config.retention.as_ref().unwrap();
    let planned = kcr_housekeeper::retention::relief::plan_relief(
        &inventory,
        &ctx.config.instances,
        rc,
        chrono::Utc::now(),
    );
    assert_eq!(planned.len(), 1);
    // A push lands between the plan and the delete.
    sim.world(|w| {
        let apps = w.instances[0].namespaces.get_mut("apps").unwrap();
        let image = apps.repos["web"].images[0].clone();
        apps.repos.get_mut("old-empty").unwrap().images.push(image);
    });
    let env = kcr_housekeeper::retention::executor::ExecEnv {
        client: &ctx.client,
        state: &ctx.state,
        metrics: &ctx.metrics,
        cancel: &ctx.cancel,
        job: "retention",
        run_id: ctx.run_id,
        verify: true,
        tick: &|| {},
    };
    let out = kcr_housekeeper::retention::relief::execute(&env, &ctx.config, planned).await;
    assert!(
        matches!(&out.results[0].1, kcr_housekeeper::retention::executor::Outcome::Stale(why) if why.contains("holds 1 images")),
        "{out:?}"
    );
    assert!(repositories(&sim).contains("apps/old-empty"));
    assert!(
        !sim.requests()
            .iter()
            .any(|r| r.action.as_deref() == Some("DeleteRepository"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_retention_lists_what_relief_would_delete() {
    let sim = sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let report = demo_plan_json(
        &sim,
        dir.path(),
        "[retention]\ndelete_empty_namespaces = { older_than = \"30d\" }\n",
    );
    let relief: Vec<(String, String)> = report["relief"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["action"].as_str().unwrap().to_owned(),
                a["namespace"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        relief,
        vec![
            ("delete_namespace".to_string(), "internal".to_string()),
            ("delete_namespace".to_string(), "tools".to_string()),
        ]
    );
    // A plan deletes nothing.
    assert_eq!(namespaces(&sim).len(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_says_whether_relief_deletes_the_repository() {
    let sim = sim(SimOptions::default()).await;
    let now = sim.now();
    sim.world(|w| {
        let apps = w.instances[0].namespaces.get_mut("apps").unwrap();
        let mut empty = apps.repos["web"].clone();
        empty.images.clear();
        empty.update_time = now - chrono::Duration::days(60);
        apps.repos.insert("old-empty".into(), empty.clone());
        empty.update_time = now - chrono::Duration::days(5);
        apps.repos.insert("new-empty".into(), empty);
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        format!(
            "{}[retention]\ndelete_empty_repositories = {{ older_than = \"30d\" }}\n",
            demo_head(&sim, dir.path())
        ),
    )
    .unwrap();
    let explain = |target: &str| {
        let mut explain = demo_bin(&sim, &["explain", target, "--config"]);
        explain.arg(&path);
        let out = output(explain);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let old = explain("apps/old-empty");
    assert!(
        old.contains("quota relief: DELETE repository: no image, last updated 60d ago"),
        "{old}"
    );
    let new = explain("apps/new-empty");
    assert!(
        new.contains("quota relief: kept: empty, but updated within"),
        "{new}"
    );
    let web = explain("apps/web");
    assert!(web.contains("quota relief: kept: it holds images"), "{web}");
}
/// Rules that plan image deletions in the demo world.
const DELETING_RULES: &str = r#"min_age = "1h"
max_deletions_per_run = 1000
[retention.protect]
tags = ["latest", "v*.*.*"]
newest_images_per_repository = 1
[[retention.rules]]
name = "ci"
tags = ["pr-*", "sha-*"]
older_than = "3d"
keep_latest = 1
[[retention.rules]]
name = "untagged"
untagged = true
older_than = "1d"
"#;

fn sent(sim: &Simulator, actions: &[&str]) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.action.as_deref().is_some_and(|a| actions.contains(&a)))
        .count()
}

/// Review 2 #1: with `grace` above 0 the job's second run deletes what its
/// first planned. Retention and relief keep grace marks in two calls per
/// run; neither may forget the other's marks — with relief off (its call
/// has no key) and on (both have keys).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_grace_the_second_run_deletes_with_relief_on_and_off() {
    for relief in [false, true] {
        let sim = sim(SimOptions::default()).await;
        let now = sim.now();
        sim.world(|w| {
            let apps = w.instances[0].namespaces.get_mut("apps").unwrap();
            let mut empty = apps.repos["web"].clone();
            empty.images.clear();
            empty.update_time = now - chrono::Duration::days(60);
            apps.repos.insert("old-empty".into(), empty);
        });
        let dir = tempfile::tempdir().unwrap();
        let relief_line = if relief {
            "delete_empty_repositories = { older_than = \"30d\" }\n"
        } else {
            ""
        };
        let ctx = context(
            &sim,
            dir.path(),
            &format!("grace = \"1s\"\n{relief_line}{DELETING_RULES}"),
        );
        let images = ["DeleteImages", "DeleteRepoTag"];
        match kcr_housekeeper::retention::RetentionJob.run(&ctx).await {
            Ok(Outcome::Success(s)) => assert!(s.contains("waiting for grace"), "{s}"),
            other => panic!("relief {relief}: {other:?}"),
        }
        assert_eq!(sent(&sim, &images), 0, "first sight: nothing deleted");
        assert_eq!(sent(&sim, &["DeleteRepository"]), 0);

        std::thread::sleep(std::time::Duration::from_millis(1100));
        match kcr_housekeeper::retention::RetentionJob.run(&ctx).await {
            Ok(Outcome::Success(_)) => {}
            other => panic!("relief {relief}: {other:?}"),
        }
        assert!(
            sent(&sim, &images) > 0,
            "relief {relief}: the second run deletes the images planned for the whole grace"
        );
        assert_eq!(
            sent(&sim, &["DeleteRepository"]),
            usize::from(relief),
            "relief {relief}: the empty repository goes on the second run"
        );
        assert_eq!(repositories(&sim).contains("apps/old-empty"), !relief);
    }
}

/// Review 2 #2: with a full key and a declared scope, relief deletes only
/// inside the scope — it deleted the demo's empty namespaces `internal` and
/// `tools`, outside `apps/**`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relief_with_a_full_key_deletes_only_inside_the_scope() {
    let sim = sim(SimOptions::default()).await;
    let now = sim.now();
    sim.world(|w| {
        let apps = w.instances[0].namespaces.get_mut("apps").unwrap();
        let mut empty = apps.repos["web"].clone();
        empty.images.clear();
        empty.update_time = now - chrono::Duration::days(60);
        apps.repos.insert("old-empty".into(), empty);
    });
    let dir = tempfile::tempdir().unwrap();
    let ctx = context_scoped(
        &sim,
        dir.path(),
        "scope = [\"apps/**\"]",
        "delete_empty_repositories = { older_than = \"30d\" }\ndelete_empty_namespaces = { older_than = \"30d\" }",
    );
    let namespaces_before = namespaces(&sim);
    let repos_before = repositories(&sim);
    match kcr_housekeeper::retention::RetentionJob.run(&ctx).await {
        Ok(Outcome::Success(s)) => assert!(s.contains("quota relief: 1 deleted"), "{s}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        namespaces(&sim),
        namespaces_before,
        "internal and tools stay"
    );
    let gone: BTreeSet<String> = repos_before
        .difference(&repositories(&sim))
        .cloned()
        .collect();
    assert_eq!(gone, BTreeSet::from(["apps/old-empty".to_string()]));
}

/// The report's `relief` section, field by field, and the CLI's one-shot
/// `apply retention` (the job's own apply since the one execution path)
/// carrying it out: exactly the actions the plan listed, then gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relief_json_names_each_action_and_the_cli_apply_carries_it_out() {
    let sim = sim(SimOptions::default()).await;
    let now = sim.now();
    sim.world(|w| {
        let apps = w.instances[0].namespaces.get_mut("apps").unwrap();
        let mut empty = apps.repos["web"].clone();
        empty.images.clear();
        empty.update_time = now - chrono::Duration::days(60);
        apps.repos.insert("old-empty".into(), empty);
    });
    let dir = tempfile::tempdir().unwrap();
    let report = demo_plan_json(
        &sim,
        dir.path(),
        "[retention]\ndelete_empty_repositories = { older_than = \"30d\" }\n\
         delete_empty_namespaces = { older_than = \"30d\" }\n",
    );
    let relief = report["relief"].as_array().unwrap();
    let keys =
        |a: &serde_json::Value| -> Vec<String> { a.as_object().unwrap().keys().cloned().collect() };
    assert_eq!(relief.len(), 3, "{report}");
    // A repository: every field; a namespace: no `repository` at all.
    let repo = &relief[0];
    assert_eq!(
        keys(repo),
        ["action", "instance", "namespace", "reason", "repository"]
    );
    assert_eq!(repo["action"], "delete_repository");
    assert_eq!(repo["instance"], "demo");
    assert_eq!(repo["namespace"], "apps");
    assert_eq!(repo["repository"], "old-empty");
    let why = repo["reason"].as_str().unwrap();
    assert!(
        why.starts_with("no image, last updated 6") && why.contains("older_than 30d"),
        "{why}"
    );
    for (entry, ns) in relief[1..].iter().zip(["internal", "tools"]) {
        assert_eq!(keys(entry), ["action", "instance", "namespace", "reason"]);
        assert_eq!(entry["action"], "delete_namespace");
        assert_eq!(entry["namespace"], ns);
        let why = entry["reason"].as_str().unwrap();
        assert!(
            why.starts_with("no repository, created") && why.contains("older_than 30d"),
            "{why}"
        );
    }

    // The one-shot apply (dry-run mode in the file: `apply` is the enforce).
    let mut apply = demo_bin(&sim, &["apply", "retention", "--yes", "--config"]);
    apply.arg(dir.path().join("config.toml"));
    let out = output(apply);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("quota relief: 3 deleted"), "{text}");
    assert!(!repositories(&sim).contains("apps/old-empty"), "{text}");
    let left = namespaces(&sim);
    assert!(
        !left.contains("internal") && !left.contains("tools"),
        "{left:?}"
    );
    assert!(left.contains("scratch"), "10 days old: kept");
    assert_eq!(sim.count("DeleteRepository"), 1);
    assert_eq!(sim.count("DeleteNamespace"), 2);
}

/// A world with one empty repository, not updated for 60 days.
async fn sim_with_old_empty_repository() -> Simulator {
    let sim = sim(SimOptions::default()).await;
    let now = sim.now();
    sim.world(|w| {
        let apps = w.instances[0].namespaces.get_mut("apps").unwrap();
        let mut empty = apps.repos["web"].clone();
        empty.images.clear();
        empty.update_time = now - chrono::Duration::days(60);
        apps.repos.insert("old-empty".into(), empty);
    });
    sim
}

/// Review 2 #9: a cancelled run with relief left undone is not a success
/// (relief just stopped, and the run said success with work skipped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_relief_is_not_a_success() {
    let sim = sim_with_old_empty_repository().await;
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(
        &sim,
        dir.path(),
        "delete_empty_repositories = { older_than = \"30d\" }",
    );
    ctx.cancel.cancel();
    let result = kcr_housekeeper::retention::RetentionJob.run(&ctx).await;
    assert!(
        matches!(&result, Err(kcr_housekeeper::jobs::JobError::Stopped(s)) if s.contains("1 not attempted")),
        "{result:?}"
    );
    assert!(repositories(&sim).contains("apps/old-empty"));
}

/// Review 2 #9: an audit record of a relief delete that cannot be finished
/// fails the run (exit 1), as the executor's do — it was only logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritten_relief_audit_record_fails_the_run() {
    let sim = sim_with_old_empty_repository().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        format!(
            "{}[retention]\nmode = \"enforce\"\ndelete_empty_repositories = {{ older_than = \"30d\" }}\n",
            demo_head(&sim, dir.path())
        ),
    )
    .unwrap();
    let creds = sim.credentials();
    let apply = |failpoint: &str| {
        let mut c = bin(
            &sim_secret(&sim),
            &["apply", "retention", "--yes", "--config"],
        );
        c.arg(&path)
            .env("AK", &creds.access_key_id)
            .env("SK", sim_secret(&sim))
            .env("KCR_HOUSEKEEPER_FAILPOINT", failpoint);
        output(c)
    };
    let o = apply("retention.relief.audit_finish=error");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("1 audit records not written"),
        "{}",
        text(&o)
    );
    // The delete itself went through (the record was begun before it).
    assert!(!repositories(&sim).contains("apps/old-empty"));
}
