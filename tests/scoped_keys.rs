//! Scoped keys (issue 13, item 6): an access key that IAM policies confine
//! to one namespace. Through the real binary against the simulator with
//! `--policies`-style principals: the key plans and applies in its namespace,
//! every other repository is skipped with the reason `access denied` (never
//! planned, never deleted), and the run succeeds only when the config's
//! `[[instances]] scope` declares those refusals expected. A key without
//! DeleteImages stops enforce at the first refusal, naming the permission.

mod common;

use common::*;
use kcr_housekeeper::jobs::{Job, JobContext, JobError, Outcome};
use kcr_housekeeper::kcr::{Client, Credentials};
use kcr_housekeeper::sim::{SimOptions, Simulator};
use std::path::Path;

const AK: &str = "AKTEAMAPPS";
const SK: &str = "team-apps-secret";

/// The key may read namespaces and repositories everywhere (those actions
/// take no resource), and list and delete images only under `apps/`.
/// `deletes` are the delete actions it is granted there. It may read KCR's
/// own retention rules of `apps` (enforce stays out of a namespace whose
/// rules it cannot read).
fn policies(deletes: &[&str]) -> kcr_housekeeper::sim::iam::Policies {
    let mut actions = vec!["\"kcrs:DescribeImages\"".to_string()];
    actions.extend(deletes.iter().map(|a| format!("\"kcrs:{a}\"")));
    kcr_housekeeper::sim::iam::Policies::parse(&format!(
        r#"{{"{AK}": {{"secret": "{SK}", "user": "apps-bot", "statements": [
              {{"effect": "Allow", "actions": ["kcrs:DescribeNamespace", "kcrs:DescribeRepository"],
                "resources": ["*"]}},
              {{"effect": "Allow", "actions": [{}],
                "resources": ["krn:ksc:kcrs:*:*:repository/*/apps/*"]}},
              {{"effect": "Allow", "actions": ["kcrs:DescribeRetentionRule"],
                "resources": ["krn:ksc:kcrs:*:*:namespace/*/apps"]}}]}}}}"#,
        actions.join(", ")
    ))
    .unwrap()
}

async fn scoped_sim(deletes: &[&str]) -> Simulator {
    sim(SimOptions {
        policies: Some(policies(deletes)),
        ..Default::default()
    })
    .await
}

const RULES: &str = r#"
[retention]
mode = "enforce"
min_age = "1h"
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

/// A config using the scoped key; `scope` is the `[[instances]] scope` line.
fn write_config(sim: &Simulator, dir: &Path, scope: &str) -> String {
    generated_config_with(
        sim,
        dir,
        &Head {
            key_id: Some(AK),
            name: "demo",
            instance_lines: scope,
            ..Default::default()
        },
        RULES,
    )
}

/// The binary with the scoped key's secret, run to the end.
fn run(args: &[&str]) -> std::process::Output {
    output(bin(SK, args))
}

/// The retention job's context with the scoped key; `edit` changes the
/// config's text (from [`write_config`]) first.
fn scoped_context(
    sim: &Simulator,
    dir: &Path,
    scope: &str,
    edit: impl Fn(String) -> String,
) -> JobContext {
    let cfg = write_config(sim, dir, scope);
    let text = edit(std::fs::read_to_string(&cfg).unwrap());
    let config = kcr_housekeeper::config::parse(&text, "t.toml", dir, &|k: &str| {
        (k == "TEST_SK").then(|| SK.to_string())
    })
    .unwrap();
    let mut cc = config_for(sim);
    cc.credentials = Credentials::new(AK, SK);
    job_context(
        "retention",
        Client::new(cc).unwrap(),
        config,
        kcr_housekeeper::state::Store::in_memory().unwrap(),
    )
}

/// (namespace/repository, digest) → tags, of the namespaces other than `apps`.
fn outside_apps(
    sim: &Simulator,
) -> std::collections::BTreeMap<(String, String), std::collections::BTreeSet<String>> {
    registry_snapshot(sim)
        .into_iter()
        .filter(|((repo, _), _)| !repo.starts_with("apps/"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_scoped_to_one_namespace_plans_there_and_skips_elsewhere_with_the_reason() {
    let sim = scoped_sim(&["DeleteImages", "DeleteRepoTag"]).await;
    let dir = tempfile::tempdir().unwrap();

    // Without a declared scope the refusals are unexpected: partial, exit 1,
    // the report written all the same and naming every refused repository.
    let cfg = write_config(&sim, dir.path(), "");
    let out = run(&["plan", "retention", "--config", &cfg, "--format", "json"]);
    let report = json_stdout(&out, 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("partial"), "{stderr}");
    assert!(
        stderr.contains("demo/ci/builder: access denied"),
        "{stderr}"
    );
    let skipped: Vec<&str> = report["summary"]["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for repo in [
        "ci/builder",
        "mirrors/alpine",
        "publicdocs/site",
        "sandbox/experiment",
    ] {
        assert!(
            skipped.iter().any(|s| s.contains(repo)
                && s.contains("access denied")
                && s.contains("AccessDenied")
                && s.contains("kcrs:DescribeImages")),
            "{repo} not skipped for access: {skipped:?}"
        );
    }
    assert!(
        !skipped.iter().any(|s| s.contains("apps/")),
        "apps is readable: {skipped:?}"
    );
    // Nothing is planned where nothing could be read.
    let planned_in: std::collections::BTreeSet<String> = report["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| !r["actions"].as_array().unwrap().is_empty())
        .map(|r| format!("{}/{}", r["namespace"], r["repository"]).replace('"', ""))
        .collect();
    assert!(!planned_in.is_empty(), "{report}");
    assert!(
        planned_in.iter().all(|r| r.starts_with("apps/")),
        "{planned_in:?}"
    );

    // With the scope declared, the same refusals are expected: exit 0 (the
    // issue's item 6 wins over DESIGN §4's "never 0"; README's exit codes
    // say so — review finding 15), and
    // the report still lists them.
    let cfg = write_config(&sim, dir.path(), "scope = [\"apps/*\"]");
    let out = run(&["plan", "retention", "--config", &cfg, "--format", "json"]);
    let report = json_stdout(&out, 0);
    let listed = report["summary"]["skipped"].to_string();
    assert!(
        listed.contains("ci/builder") && listed.contains("access denied"),
        "{listed}"
    );

    // Enforce: applies in apps, deletes nothing elsewhere, exit 0.
    let before_apps = registry_snapshot(&sim)
        .into_iter()
        .filter(|((r, _), _)| r.starts_with("apps/"))
        .count();
    let before_outside = outside_apps(&sim);
    let out = run(&["apply", "retention", "--config", &cfg, "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let after_apps = registry_snapshot(&sim)
        .into_iter()
        .filter(|((r, _), _)| r.starts_with("apps/"))
        .count();
    assert!(after_apps < before_apps, "{}", text(&out));
    assert_eq!(outside_apps(&sim), before_outside);
    // Not one call reached a delete outside apps (never planned there).
    assert!(
        sim.requests()
            .iter()
            .filter(|r| r.action.as_deref().is_some_and(|a| a.starts_with("Delete")))
            .all(|r| r.params.get("Namespace").map(String::as_str) == Some("apps")),
        "a delete outside apps was sent"
    );

    // Scope narrower than the refusals: a refused repository inside the
    // declared scope is unexpected again.
    let cfg = write_config(&sim, dir.path(), "scope = [\"apps/*\", \"ci/*\"]");
    let out = run(&["plan", "retention", "--config", &cfg]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("demo/ci/builder: access denied"), "{t}");
    assert!(!t.contains("demo/mirrors/alpine: access denied:"), "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_counts_refusals_in_the_skipped_metric_and_succeeds_within_its_scope() {
    let sim = scoped_sim(&["DeleteImages", "DeleteRepoTag"]).await;
    let dir = tempfile::tempdir().unwrap();
    let run_job = |scope: &str| {
        scoped_context(&sim, dir.path(), scope, |t| {
            t.replace("mode = \"enforce\"", "mode = \"dry-run\"")
        })
    };
    let skipped = |ctx: &JobContext, reason: &str| ctx.metrics.inventory.skipped("demo", reason);

    let ctx = run_job("");
    match kcr_housekeeper::retention::RetentionJob.run(&ctx).await {
        Err(JobError::Partial(why)) => {
            assert!(why.contains("partial"), "{why}");
            assert!(why.contains("access denied"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    // ci/builder, mirrors/alpine, publicdocs/site, sandbox/experiment.
    assert_eq!(skipped(&ctx, "access denied"), 4);
    assert_eq!(skipped(&ctx, "listing failed"), 0);
    assert_eq!(skipped(&ctx, "outside scope"), 0);

    let ctx = run_job("scope = [\"apps/**\"]");
    match kcr_housekeeper::retention::RetentionJob.run(&ctx).await {
        Ok(Outcome::Success(s)) => assert!(s.starts_with("dry-run"), "{s}"),
        other => panic!("{other:?}"),
    }
    // Declared expected (review 2 #10): counted apart from unexpected refusals.
    assert_eq!(skipped(&ctx, "outside scope"), 4);
    assert_eq!(skipped(&ctx, "access denied"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_listed_only_where_a_rule_needs_them() {
    let sim = scoped_sim(&["DeleteImages", "DeleteRepoTag"]).await;
    let dir = tempfile::tempdir().unwrap();
    // A rule confined to apps: nothing else is listed, so nothing is refused.
    let cfg = write_config(&sim, dir.path(), "");
    let narrowed = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(
            "name = \"ci\"\n",
            "name = \"ci\"\nnamespaces = [\"apps\"]\n",
        )
        .replace(
            "name = \"untagged\"\n",
            "name = \"untagged\"\nnamespaces = [\"apps\"]\n",
        );
    std::fs::write(&cfg, narrowed).unwrap();
    let before = sim.requests().len();
    let out = run(&["plan", "retention", "--config", &cfg]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let listed: Vec<String> = sim.requests()[before..]
        .iter()
        .filter(|r| r.action.as_deref() == Some("DescribeImages"))
        .map(|r| r.params["Namespace"].clone())
        .collect();
    assert!(!listed.is_empty());
    assert!(listed.iter().all(|n| n == "apps"), "{listed:?}");
    assert!(
        sim.requests()[before..]
            .iter()
            .all(|r| r.code != "AccessDenied")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_without_delete_images_stops_enforce_naming_the_permission() {
    // DeleteRepoTag granted, DeleteImages not.
    let sim = scoped_sim(&["DeleteRepoTag"]).await;
    let dir = tempfile::tempdir().unwrap();
    // apps/web's plan deletes the tag pr-102 of an image kept for v1.4.1
    // ahead (newer) of the images it deletes: in plan order the allowed
    // DeleteRepoTag went before the refused DeleteImages.
    let cfg = write_config(&sim, dir.path(), "scope = [\"apps/web\"]");
    // Without the untagged image of 2 days, whose delete would come first.
    sim.world(|w| {
        let apps = w.instances[0].namespaces.get_mut("apps").unwrap();
        let web = apps.repos.get_mut("web").unwrap();
        web.images.retain(|i| !i.digest.ends_with("1111"));
    });
    // Repositories whose plan deletes images (review finding 7: none of
    // them may lose a tag before its refused DeleteImages stops the run).
    let planned = run(&["plan", "retention", "--config", &cfg, "--format", "json"]);
    let plan: serde_json::Value = serde_json::from_slice(&planned.stdout).unwrap();
    let with_image_deletes: std::collections::BTreeSet<String> = plan["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["actions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["action"] == "delete_image")
        })
        .map(|r| format!("{}/{}", r["namespace"], r["repository"]).replace('"', ""))
        .collect();
    assert!(!with_image_deletes.is_empty(), "{plan}");
    let before = registry_snapshot(&sim);
    let before_log = sim.requests().len();
    let out = run(&["apply", "retention", "--config", &cfg, "--yes"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("kcrs:DeleteImages"), "{t}");
    assert!(t.contains("AccessDenied"), "{t}");
    assert!(t.contains("permission is missing"), "{t}");
    // Exactly one delete was refused, and nothing was sent after it.
    let log = sim.requests()[before_log..].to_vec();
    let deletes: Vec<_> = log
        .iter()
        .filter(|r| r.action.as_deref().is_some_and(|a| a.starts_with("Delete")))
        .collect();
    let refused: Vec<usize> = deletes
        .iter()
        .enumerate()
        .filter(|(_, r)| r.code == "AccessDenied")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(refused.len(), 1, "{deletes:?}");
    assert_eq!(refused[0], deletes.len() - 1, "a delete after the refusal");
    let last = log
        .iter()
        .rposition(|r| r.code == "AccessDenied" && r.action.as_deref() == Some("DeleteImages"))
        .unwrap();
    assert!(
        log[last + 1..]
            .iter()
            .all(|r| r.action.as_deref() == Some("DescribeImages")),
        "only the check after the refused delete may follow it: {:?}",
        &log[last + 1..]
    );
    // What changed is exactly the tags deleted before the refusal.
    let after = registry_snapshot(&sim);
    let deleted_tags = deletes
        .iter()
        .filter(|r| r.code == "OK" && r.action.as_deref() == Some("DeleteRepoTag"))
        .count();
    let lost: usize = before
        .iter()
        .map(|(k, tags)| tags.len() - after.get(k).map_or(0, |t| t.len()))
        .sum();
    assert_eq!(lost, deleted_tags, "{t}");
    assert_eq!(before.len(), after.len(), "no image deleted");
    // No repository's plan half-applied: a tag went only where the plan
    // deleted no image (images run first within a repository).
    let tagged_in: Vec<String> = deletes
        .iter()
        .filter(|r| r.code == "OK" && r.action.as_deref() == Some("DeleteRepoTag"))
        .map(|r| format!("{}/{}", r.params["Namespace"], r.params["RepoName"]))
        .collect();
    assert!(
        tagged_in.iter().all(|r| !with_image_deletes.contains(r)),
        "tags deleted in {tagged_in:?}, where images were planned too: {with_image_deletes:?}"
    );
}

/// Review 2 #2: quota relief stays inside the declared scope. The key lists
/// every namespace (DescribeRepository takes no resource) and those it may
/// not read look empty; relief planned to delete them, and every enforcing
/// run failed on AccessDenied from DeleteNamespace. Now nothing outside
/// `scope` is planned and the run succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relief_with_a_scoped_key_stays_inside_the_scope() {
    let sim = scoped_sim(&["DeleteImages", "DeleteRepoTag", "DeleteRepository"]).await;
    let dir = tempfile::tempdir().unwrap();
    let namespaces_before = sim.world(|w| w.instances[0].namespaces.len());
    let ctx = scoped_context(&sim, dir.path(), "scope = [\"apps/**\"]", |t| {
        t.replace(
            "min_age = \"1h\"\n",
            "min_age = \"1h\"\ndelete_empty_namespaces = { older_than = \"1d\" }\ndelete_empty_repositories = { older_than = \"1d\" }\n",
        )
    });
    match kcr_housekeeper::retention::RetentionJob.run(&ctx).await {
        Ok(Outcome::Success(s)) => assert!(s.starts_with("enforce"), "{s}"),
        other => panic!("{other:?}"),
    }
    let refused: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| {
            r.action.as_deref().is_some_and(|a| a.starts_with("Delete")) && r.code == "AccessDenied"
        })
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
    assert!(
        !sim.requests()
            .iter()
            .any(|r| r.action.as_deref() == Some("DeleteNamespace")),
        "no namespace is in apps/**"
    );
    assert_eq!(
        sim.world(|w| w.instances[0].namespaces.len()),
        namespaces_before
    );
}

/// Review finding 8: `scope` only declared which refusals were expected; a
/// full key with `scope = ["apps/*"]` still planned and deleted everywhere.
/// The scope now bounds what is managed: planned, applied and relieved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_key_plans_and_applies_only_inside_the_declared_scope() {
    let sim = sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let creds = sim.credentials();
    let admin = |scope: &str| {
        let cfg = write_config(&sim, dir.path(), scope);
        let text = std::fs::read_to_string(&cfg).unwrap().replace(
            &format!("access_key_id = \"{AK}\""),
            &format!("access_key_id = \"{}\"", creds.access_key_id),
        );
        // Quota relief too: an empty, old repository outside the scope stays.
        let text = text.replace(
            "[retention]\n",
            "[retention]\ndelete_empty_repositories = { older_than = \"1s\" }\n",
        );
        std::fs::write(&cfg, text).unwrap();
        cfg
    };
    let bin = |args: &[&str]| run_bin(&sim, args);
    // An empty repository outside apps, old enough for relief.
    sim.world(|w| {
        let ns = w.instances[0].namespaces.get_mut("ci").unwrap();
        let mut empty = ns.repos.values().next().unwrap().clone();
        empty.images.clear();
        ns.repos.insert("empty-old".into(), empty);
    });
    let planned_in =
        |out: &std::process::Output| -> std::collections::BTreeSet<String> {
            let report: serde_json::Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("{e}: {}", text(out)));
            let mut repos: std::collections::BTreeSet<String> = report["repositories"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| !r["actions"].as_array().unwrap().is_empty())
                .map(|r| format!("{}/{}", r["namespace"], r["repository"]).replace('"', ""))
                .collect();
            repos.extend(report["relief"].as_array().into_iter().flatten().map(|r| {
                format!("relief {}/{}", r["namespace"], r["repository"]).replace('"', "")
            }));
            repos
        };

    // Without a scope the full key plans outside apps (the contrast).
    let cfg = admin("");
    let out = bin(&["plan", "retention", "--config", &cfg, "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let everywhere = planned_in(&out);
    assert!(
        everywhere.iter().any(|r| !r.contains("apps/")),
        "{everywhere:?}"
    );
    assert!(everywhere.contains("relief ci/empty-old"), "{everywhere:?}");

    // With it, only apps: nothing planned, shown or relieved elsewhere.
    let cfg = admin("scope = [\"apps/*\"]");
    let out = bin(&["plan", "retention", "--config", &cfg, "--format", "json"]);
    let report = json_stdout(&out, 0);
    let scoped = planned_in(&out);
    assert!(!scoped.is_empty(), "apps has work");
    assert!(scoped.iter().all(|r| r.contains("apps/")), "{scoped:?}");
    assert!(
        report["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["namespace"] == "apps"),
        "repositories outside the scope are not in the plan: {report}"
    );

    let before_outside = outside_apps(&sim);
    let log = sim.requests().len();
    let out = bin(&["apply", "retention", "--config", &cfg, "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(outside_apps(&sim), before_outside);
    assert!(
        sim.world(|w| w.instances[0].namespaces["ci"]
            .repos
            .contains_key("empty-old")),
        "relief stays inside the scope"
    );
    let deletes: Vec<_> = sim.requests()[log..]
        .iter()
        .filter(|r| r.action.as_deref().is_some_and(|a| a.starts_with("Delete")))
        .cloned()
        .collect();
    assert!(!deletes.is_empty());
    assert!(
        deletes
            .iter()
            .all(|r| r.params.get("Namespace").map(String::as_str) == Some("apps")),
        "{deletes:?}"
    );
}

/// Review finding 12: a refused repository was listed under "without
/// actions" in the table, as if it had been checked and found clean. It is
/// shown as skipped with the reason, in the table and in Markdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipped_repositories_are_shown_as_skipped_with_the_reason() {
    let sim = scoped_sim(&["DeleteImages", "DeleteRepoTag"]).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&sim, dir.path(), "scope = [\"apps/*\"]");
    for format in ["table", "markdown"] {
        let out = run(&["plan", "retention", "--config", &cfg, "--format", format]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let (head, skipped) = stdout
            .split_once("kipped (nothing planned)")
            .unwrap_or_else(|| panic!("{format}: no skipped section: {stdout}"));
        let line = skipped
            .lines()
            .find(|l| l.contains("demo/ci/builder"))
            .unwrap_or_else(|| panic!("{format}: {stdout}"));
        assert!(line.contains("access denied"), "{format}: {line}");
        let quiet = head.split_once("ithout actions").map_or("", |(_, q)| q);
        assert!(
            !quiet.contains("ci/builder"),
            "{format}: a skipped repository under 'without actions': {stdout}"
        );
    }
}

/// Review 2 #7: KCR's own retention rules are read only in namespaces
/// inside the declared scope — the namespaces outside it whose repositories
/// refused were asked too, and every report carried their AccessDenied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_rules_are_read_only_inside_the_scope() {
    let sim = scoped_sim(&["DeleteImages", "DeleteRepoTag"]).await;
    let dir = tempfile::tempdir().unwrap();
    let ctx = scoped_context(&sim, dir.path(), "scope = [\"apps/**\"]", |t| t);
    match kcr_housekeeper::retention::RetentionJob.run(&ctx).await {
        Ok(Outcome::Success(s)) => assert!(s.starts_with("enforce"), "{s}"),
        other => panic!("{other:?}"),
    }
    let asked: std::collections::BTreeSet<(String, String)> = sim
        .requests()
        .iter()
        .filter(|r| r.action.as_deref() == Some("DescribeRetentionRule"))
        .map(|r| (r.params["Namespace"].clone(), r.code.clone()))
        .collect();
    assert_eq!(
        asked,
        std::collections::BTreeSet::from([("apps".to_string(), "OK".to_string())])
    );
    let report = ctx
        .state
        .latest_report("retention", "json")
        .unwrap()
        .expect("a report");
    let body = String::from_utf8_lossy(&report.body).into_owned();
    assert!(!body.contains("could not be read"), "{body}");
}

/// A reviewed plan file made before the scope was declared: its actions
/// outside the scope are dropped as "outside the instance's scope", never
/// applied (and not misreported as gone from the registry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewed_plan_keeps_nothing_outside_the_declared_scope() {
    let sim = sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let creds = sim.credentials();
    let admin = |scope: &str| {
        let cfg = write_config(&sim, dir.path(), scope);
        let text = std::fs::read_to_string(&cfg).unwrap().replace(
            &format!("access_key_id = \"{AK}\""),
            &format!("access_key_id = \"{}\"", creds.access_key_id),
        );
        std::fs::write(&cfg, text).unwrap();
        cfg
    };
    let bin = |args: &[&str]| run_bin(&sim, args);
    let cfg = admin("");
    let out = bin(&["plan", "retention", "--config", &cfg, "--format", "json"]);
    let report = json_stdout(&out, 0);
    let file = dir.path().join("reviewed.json");
    std::fs::write(&file, &out.stdout).unwrap();
    let outside = report["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["namespace"] != "apps")
        .map(|r| r["actions"].as_array().unwrap().len())
        .sum::<usize>();
    assert!(outside > 0, "the file plans outside apps: {report}");

    let cfg = admin("scope = [\"apps/*\"]");
    let before_outside = outside_apps(&sim);
    let out = bin(&[
        "apply",
        "retention",
        "--yes",
        "--config",
        &cfg,
        "--plan",
        file.to_str().unwrap(),
    ]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert_eq!(
        t.matches("outside the instance's scope (not managed)")
            .count(),
        outside,
        "{t}"
    );
    assert_eq!(outside_apps(&sim), before_outside, "{t}");
}

/// Review 2 #9: quota relief stops after `[kcr] max_consecutive_failures`
/// failed actions in a row (here a key without DeleteRepository), counting
/// the rest as not attempted — it went on sending every delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relief_stops_after_failures_in_a_row() {
    let sim = scoped_sim(&["DeleteImages", "DeleteRepoTag"]).await;
    let now = sim.now();
    sim.world(|w| {
        let apps = w.instances[0].namespaces.get_mut("apps").unwrap();
        let mut empty = apps.repos["web"].clone();
        empty.images.clear();
        empty.update_time = now - chrono::Duration::days(60);
        apps.repos.insert("old-empty-1".into(), empty.clone());
        apps.repos.insert("old-empty-2".into(), empty);
    });
    let dir = tempfile::tempdir().unwrap();
    let mut ctx = scoped_context(&sim, dir.path(), "scope = [\"apps/**\"]", |t| {
        t.replace(
            "min_age = \"1h\"\n",
            "min_age = \"1h\"\ndelete_empty_repositories = { older_than = \"30d\" }\n",
        )
    });
    // [kcr] max_consecutive_failures = 1, on the client the job uses.
    let mut cc = config_for(&sim);
    cc.credentials = Credentials::new(AK, SK);
    cc.max_consecutive_failures = 1;
    ctx.client = Client::new(cc).unwrap();
    match kcr_housekeeper::retention::RetentionJob.run(&ctx).await {
        Err(JobError::Actions { summary, .. }) => {
            assert!(
                summary.contains("quota relief stopped after 1 failed actions in a row"),
                "{summary}"
            );
            assert!(summary.contains("1 not attempted"), "{summary}");
        }
        other => panic!("{other:?}"),
    }
    let sent = sim
        .requests()
        .iter()
        .filter(|r| r.action.as_deref() == Some("DeleteRepository"))
        .count();
    assert_eq!(sent, 1, "the second delete is not sent");
}
