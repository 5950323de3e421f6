//! DESIGN §4 exit codes, for every command under every condition, from the
//! README's table (the single source: change a cell there and this test checks
//! the new code). Each cell runs the real binary against a fresh simulator
//! over loopback. Then what a partial run reports (issue 11 #16, #25, #20).

mod common;

use common::*;
use kcr_housekeeper::jobs::{Job, JobContext, JobError};
use kcr_housekeeper::sim::{Faults, SimOptions, Simulator};
use secrecy::ExposeSecret;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

const BIN: &str = env!("CARGO_BIN_EXE_kcr-housekeeper");

/// One condition of the table (its column).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Condition {
    Unreachable,
    BadCredentials,
    UnknownInstance,
    PartialListing,
    Blocked,
    Success,
    ConfigError,
}

impl Condition {
    fn from_header(h: &str) -> Condition {
        match h {
            "API unreachable" => Condition::Unreachable,
            "bad credentials" => Condition::BadCredentials,
            "unknown instance" => Condition::UnknownInstance,
            "partial listing" => Condition::PartialListing,
            "blocked" => Condition::Blocked,
            "success" => Condition::Success,
            "config error" => Condition::ConfigError,
            other => panic!("README exit-code table: unknown column {other:?}"),
        }
    }
}

/// One cell: the command's arguments, the condition and the documented code.
#[derive(Debug)]
struct Cell {
    args: Vec<String>,
    condition: Condition,
    code: i32,
}

/// The README's exit-code table: the first digit of each cell; "—" is not run.
fn table() -> Vec<Cell> {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let start = readme
        .find("<!-- exit-codes")
        .expect("README has the exit-code table");
    let mut lines = readme[start..].lines().skip(1);
    let header: Vec<String> = cells(lines.next().unwrap());
    let conditions: Vec<Condition> = header[1..]
        .iter()
        .map(|h| Condition::from_header(h))
        .collect();
    let mut out = Vec::new();
    for line in lines.skip(1).take_while(|l| l.starts_with('|')) {
        let row = cells(line);
        let command = row[0].split('`').nth(1).expect("command in backticks");
        let args: Vec<String> = command.split_whitespace().map(str::to_owned).collect();
        for (cell, &condition) in row[1..].iter().zip(&conditions) {
            if cell.starts_with('—') {
                continue;
            }
            let code = cell
                .chars()
                .next()
                .and_then(|c| c.to_digit(10))
                .unwrap_or_else(|| panic!("{command} / {condition:?}: cell {cell:?}"));
            out.push(Cell {
                args: args.clone(),
                condition,
                code: code as i32,
            });
        }
    }
    out
}

fn cells(line: &str) -> Vec<String> {
    line.trim()
        .trim_matches('|')
        .split('|')
        .map(|c| c.trim().to_owned())
        .collect()
}

/// A repository of 120 old `pr-` images: two pages, so offset drift shows.
fn add_big_repository(sim: &Simulator) {
    let now = sim.now();
    sim.world(|w| {
        let ns = w.instances[0].namespaces.get_mut("apps").unwrap();
        let mut repo = ns.repos["web"].clone();
        repo.images = (0..120u32)
            .map(|k| kcr_housekeeper::sim::world::Image {
                digest: format!("sha256:{:064x}", 0xb16_0000u64 + u64::from(k)),
                size: 1_000_000,
                create_time: now - chrono::Duration::days(30 + i64::from(k)),
                tags: vec![format!("pr-{k}")],
                scanned: None,
            })
            .collect();
        repo.sort_images();
        ns.repos.insert("big".into(), repo);
    });
}

/// Everything one cell needs: a simulator and a directory (kept alive), and
/// how to invoke the binary.
struct Setup {
    _sim: Simulator,
    _dir: tempfile::TempDir,
    inv: Invocation,
}

#[derive(Clone)]
struct Invocation {
    config: PathBuf,
    envs: Vec<(String, String)>,
}

fn body(dir: &Path, blocked: bool) -> String {
    format!(
        r#"
[retention]
min_age = "0s"
max_deletion_ratio = 1.0
max_deletions_per_run = {deletions}
[retention.protect]
newest_images_per_repository = 1
[[retention.rules]]
name = "ci-builds"
tags = ["pr-*", "sha-*"]
older_than = "14d"
keep_latest = 2
[[retention.rules]]
name = "untagged"
untagged = true
older_than = "7d"
[namespaces]
mode = "enforce"
max_changes_per_run = {changes}
rules = [ {{ match = "public*", visibility = "public" }} ]
[tokens]
list_lag = "2s"
[[tokens.managed]]
name = "ci-pull"
instance = "demo"
lifetime = "30d"
rotate_before = "10d"
sinks = [ {{ kind = "file", path = "{dir}/ci-pull.env", format = "env" }} ]
[quota]
storage = "repository"
"#,
        deletions = if blocked { 0 } else { 1000 },
        changes = if blocked { 0 } else { 10 },
        dir = dir.display()
    )
}

/// `job`: the command's job. A partial listing is an image listing that
/// shifted between pages for the jobs that list images; for the others (one
/// listing per instance) a listing whose `TotalCount` promises more than it
/// delivers.
async fn setup(condition: Condition, job: Option<&str>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let lists_images = !matches!(job, Some("namespaces" | "tokens"));
    let partial = condition == Condition::PartialListing;
    let faults = Faults {
        page_drift: partial && lists_images,
        fault_rate: if partial && !lists_images { 1.0 } else { 0.0 },
        kinds: vec![kcr_housekeeper::sim::FaultKind::TotalCount],
        ..Default::default()
    };
    let sim = sim(SimOptions {
        faults,
        ..Default::default()
    })
    .await;
    add_big_repository(&sim);
    let creds = sim.credentials();
    let mut sk = creds.secret_access_key.expose_secret().to_owned();
    let mut head = demo_head(&sim, dir.path());
    match condition {
        Condition::Unreachable => {
            // A loopback port nobody listens on: connection refused.
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            head = head.replace(&sim.endpoint(), &format!("http://127.0.0.1:{port}"));
        }
        Condition::BadCredentials => sk = "not-the-secret".into(),
        Condition::UnknownInstance => {
            head = head.replace(DEMO_INSTANCE, "00000000-0000-4000-8000-00000000dead")
        }
        Condition::ConfigError => head.push_str("[log]\nlevel = 7\n"),
        _ => {}
    }
    let text = head + &body(dir.path(), condition == Condition::Blocked);
    let config = dir.path().join("config.toml");
    std::fs::write(&config, text).unwrap();
    Setup {
        _sim: sim,
        _dir: dir,
        inv: Invocation {
            config,
            envs: vec![
                ("AK".into(), creds.access_key_id.clone()),
                ("SK".into(), sk),
            ],
        },
    }
}

fn run(s: &Invocation, args: &[String]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args)
        .arg("--config")
        .arg(&s.config)
        .current_dir(s.config.parent().unwrap())
        .env_remove("KSYUN_ACCESS_KEY_ID")
        .env_remove("KSYUN_SECRET_ACCESS_KEY")
        .env_remove("KCR_HOUSEKEEPER_CONFIG")
        .env_remove("KCR_HOUSEKEEPER_FAILPOINT");
    for (k, v) in &s.envs {
        c.env(k, v);
    }
    c.output().expect("binary runs")
}

/// The repository `explain` looks at: the one that drifts when listings drift.
fn with_target(args: &[String]) -> Vec<String> {
    args.iter()
        .map(|a| {
            if a == "NAMESPACE/REPOSITORY" {
                "apps/big".to_owned()
            } else {
                a.clone()
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_exits_as_the_readme_table_says() {
    let cells = table();
    assert!(
        cells.len() >= 50,
        "the table covers every command: {}",
        cells.len()
    );
    let started = std::time::Instant::now();
    let mut wrong = Vec::new();
    for cell in &cells {
        let s = setup(cell.condition, cell.args.get(1).map(String::as_str)).await;
        let args = with_target(&cell.args);
        let inv = s.inv.clone();
        let o = tokio::task::spawn_blocking(move || run(&inv, &args))
            .await
            .unwrap();
        let got = o.status.code();
        if got != Some(cell.code) {
            wrong.push(format!(
                "{} under {:?}: exit {got:?}, the README says {}\n  stdout: {}\n  stderr: {}",
                cell.args.join(" "),
                cell.condition,
                cell.code,
                String::from_utf8_lossy(&o.stdout).trim(),
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        if cell.code != 0 {
            assert!(
                !o.stderr.is_empty(),
                "{:?} {:?}: a failure says why",
                cell.args,
                cell.condition
            );
        }
        drop(s);
    }
    eprintln!(
        "{} cells in {:.1} s",
        cells.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(300),
        "bounded: {:?}",
        started.elapsed()
    );
}

fn plan_json(s: &Invocation) -> (Output, serde_json::Value) {
    let o = run(
        s,
        &["plan", "retention", "--format", "json"].map(String::from),
    );
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {} {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o, v)
}

/// Issue 11 #16, #25: an instance that could not be listed is in
/// `summary.skipped`, the plan exits 1, and no rule "matches nothing".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlisted_instance_is_skipped_loudly() {
    for condition in [
        Condition::Unreachable,
        Condition::BadCredentials,
        Condition::UnknownInstance,
    ] {
        let s = setup(condition, Some("retention")).await;
        let inv = s.inv.clone();
        let (o, v) = tokio::task::spawn_blocking(move || plan_json(&inv))
            .await
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{condition:?}");
        let skipped = v["summary"]["skipped"].as_array().unwrap();
        assert_eq!(skipped.len(), 1, "{condition:?}: {skipped:?}");
        assert!(
            skipped[0]
                .as_str()
                .unwrap()
                .starts_with("demo: DescribeNamespace"),
            "{condition:?}: {skipped:?}"
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("matches nothing"), "{condition:?}: {err}");
        assert!(
            err.contains("partial: 1 listing failed"),
            "{condition:?}: {err}"
        );
        assert!(!err.contains("not-the-secret"));
    }
}

/// Issue 11 #20: a listing that shifted between pages (a digest twice) skips
/// the repository; the rest is planned; the run is partial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_that_drifted_skips_its_repository() {
    let s = setup(Condition::PartialListing, Some("retention")).await;
    let inv = s.inv.clone();
    let (o, v) = tokio::task::spawn_blocking(move || plan_json(&inv))
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let skipped: Vec<&str> = v["summary"]["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(
        skipped[0].starts_with(
            "demo/apps/big: DescribeImages: the listing shifted while paging (image sha256:"
        ),
        "{skipped:?}"
    );
    let repos = v["repositories"].as_array().unwrap();
    let big = repos.iter().find(|r| r["repository"] == "big").unwrap();
    assert_eq!(
        big["actions"],
        serde_json::json!([]),
        "nothing planned from it"
    );
    assert!(
        v["summary"]["delete_image"].as_u64().unwrap() > 0,
        "the other repositories are planned"
    );
}

/// Issue 11 #16: the daemon's retention run records a failure with the reason
/// (dry-run and enforce alike) when a listing failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_records_a_partial_run_as_a_failure() {
    for mode in ["dry-run", "enforce"] {
        let sim = sim(SimOptions {
            faults: Faults {
                page_drift: true,
                ..Default::default()
            },
            ..Default::default()
        })
        .await;
        add_big_repository(&sim);
        let dir = tempfile::tempdir().unwrap();
        let text = demo_head(&sim, dir.path())
            + &body(dir.path(), false).replace(
                "[retention]\n",
                &format!("[retention]\nmode = \"{mode}\"\n"),
            );
        let cfg = parse_config(&sim, &text, dir.path());
        let state = kcr_housekeeper::state::Store::open(cfg.state.sqlite_path().unwrap()).unwrap();
        let run_id = state
            .start_run("retention", "cli", chrono::Utc::now())
            .unwrap();
        let ctx = JobContext {
            client: client_for(&sim),
            config: Arc::new(cfg),
            state,
            metrics: Arc::new(kcr_housekeeper::metrics::Metrics::new()),
            cancel: Default::default(),
            run_id: Some(run_id),
            inventory: Default::default(),
            trigger: kcr_housekeeper::jobs::Trigger::Api,
            clock: kcr_housekeeper::jobs::system_clock(),
            watch: Arc::new(kcr_housekeeper::jobs::Unwatched),
        };
        let r = kcr_housekeeper::retention::RetentionJob.run(&ctx).await;
        match r {
            Err(JobError::Partial(why)) => {
                assert!(why.contains("partial: 1 listing failed"), "{mode}: {why}");
                assert!(why.contains("demo/apps/big"), "{mode}: {why}");
            }
            other => panic!("{mode}: {other:?}"),
        }
        if mode == "enforce" {
            assert!(
                sim.count("DeleteImages") + sim.count("DeleteRepoTag") > 0,
                "the complete repositories are still enforced"
            );
        }
    }
}

/// Issue 11 #25: a namespace whose repository listing failed is named in
/// `summary.skipped` and makes the run partial; the other namespaces are planned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlisted_namespace_is_skipped_loudly() {
    let s = setup(Condition::Success, Some("retention")).await;
    let mut inv = s.inv.clone();
    inv.envs.push((
        "KCR_HOUSEKEEPER_FAILPOINT".into(),
        "retention.api.list_repositories=error*1".into(),
    ));
    let (o, v) = tokio::task::spawn_blocking(move || {
        let mut c = Command::new(BIN);
        c.args(["plan", "retention", "--format", "json", "--config"])
            .arg(&inv.config)
            .env_remove("KCR_HOUSEKEEPER_CONFIG");
        for (k, val) in &inv.envs {
            c.env(k, val);
        }
        let o = c.output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (o, v)
    })
    .await
    .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let skipped = v["summary"]["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    let text = skipped[0].as_str().unwrap();
    let (ns, why) = text
        .strip_prefix("demo/")
        .and_then(|t| t.split_once(": "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(!ns.contains('/'), "a namespace, not a repository: {text}");
    assert!(
        why.contains("failpoint retention.api.list_repositories"),
        "{text}"
    );
    assert!(
        !v["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["namespace"] == ns),
        "nothing listed under {ns}"
    );
    assert!(
        v["summary"]["repositories"].as_u64().unwrap() > 0,
        "the rest is planned"
    );
}

/// Issue 11 #16 for the quota job: storage figures with a listing missing are
/// partial, and the run is a failure naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_job_fails_when_a_storage_listing_is_partial() {
    let sim = sim(SimOptions {
        faults: Faults {
            page_drift: true,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    add_big_repository(&sim);
    let dir = tempfile::tempdir().unwrap();
    let text = demo_head(&sim, dir.path()) + &body(dir.path(), false);
    let cfg = parse_config(&sim, &text, dir.path());
    let state = kcr_housekeeper::state::Store::open(cfg.state.sqlite_path().unwrap()).unwrap();
    let run_id = state.start_run("quota", "cli", chrono::Utc::now()).unwrap();
    let ctx = JobContext {
        client: client_for(&sim),
        config: Arc::new(cfg),
        state,
        metrics: Arc::new(kcr_housekeeper::metrics::Metrics::new()),
        cancel: Default::default(),
        run_id: Some(run_id),
        inventory: Default::default(),
        trigger: kcr_housekeeper::jobs::Trigger::Api,
        clock: kcr_housekeeper::jobs::system_clock(),
        watch: Arc::new(kcr_housekeeper::jobs::Unwatched),
    };
    match kcr_housekeeper::quota::QuotaJob.run(&ctx).await {
        Err(JobError::Partial(why)) => {
            assert!(
                why.contains("storage: demo/apps/big: DescribeImages"),
                "{why}"
            )
        }
        other => panic!("{other:?}"),
    }
}
