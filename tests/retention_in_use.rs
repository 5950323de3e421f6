//! The in-use veto (`[retention.in_use]`) through the real binary against the
//! simulator: an image a rule condemns is kept while a source names it (by
//! digest or by host/repository:tag), and a source that fails blocks enforce
//! (exit 3, nothing deleted) while dry-run reports it. Sources: a file, a
//! program, and a real Prometheus holding backfilled kube-state-metrics
//! series (3 days ago is within a 7d lookback, 10 days ago is not).

mod common;

use common::*;
use kcr_housekeeper::sim::{Faults, Simulator};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HOST: &str = "registry.example.com";
const SPEC: &str = "namespaces=1,repos=2,images=14,seed=23";

const RULES: &str = r#"
[retention.protect]
tags = ["latest"]
newest_images_per_repository = 1
[[retention.rules]]
name = "ci"
tags = ["pr-*", "sha-*", "main-*"]
keep_latest = 2
[[retention.rules]]
name = "untagged"
untagged = true
older_than = "1d"
"#;

/// Enforce with the rules above and `in_use` as `[retention.in_use]`; the
/// registry is `HOST`, the name the sources use.
fn write_config(sim: &Simulator, dir: &Path, in_use: &str) -> String {
    generated_config_with(
        sim,
        dir,
        &Head {
            registry: HOST,
            ..Default::default()
        },
        &format!(
            "[retention]\nmode = \"enforce\"\nmin_age = \"1h\"\n{RULES}\n[retention.in_use]\n{in_use}\n"
        ),
    )
}

/// A condemned image: (namespace/repository, digest, tags).
#[derive(Clone, Debug)]
struct Condemned {
    repo: String,
    digest: String,
    tags: Vec<String>,
}

impl Condemned {
    fn by_digest(&self) -> String {
        format!("{HOST}/{}@{}", self.repo, self.digest)
    }
    fn by_tag(&self) -> String {
        format!("{HOST}/{}:{}", self.repo, self.tags[0])
    }
}

/// The tagged images a plan without in-use sources deletes whole.
async fn world() -> (Simulator, Vec<Condemned>) {
    let sim = sim(generated_world(SPEC, Faults::default())).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), "file = \"/dev/null\"");
    let o = run_bin(
        &sim,
        &["plan", "retention", "--config", &config, "--format", "json"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut out = Vec::new();
    for r in plan["repositories"].as_array().unwrap() {
        for a in r["actions"].as_array().unwrap() {
            let tags: Vec<String> = a["tags"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_owned())
                .collect();
            if a["action"] == "delete_image" && !tags.is_empty() {
                out.push(Condemned {
                    repo: format!(
                        "{}/{}",
                        r["namespace"].as_str().unwrap(),
                        r["repository"].as_str().unwrap()
                    ),
                    digest: a["digest"].as_str().unwrap().to_owned(),
                    tags,
                });
            }
        }
    }
    assert!(out.len() >= 3, "the world condemns enough images: {out:?}");
    (sim, out)
}

fn present(sim: &Simulator, c: &Condemned) -> bool {
    registry_snapshot(sim).contains_key(&(c.repo.clone(), c.digest.clone()))
}

fn deletes(sim: &Simulator) -> usize {
    sim.requests()
        .into_iter()
        .filter(|e| {
            e.code == "OK" && matches!(e.action.as_deref(), Some("DeleteImages" | "DeleteRepoTag"))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_source_keeps_what_it_names_by_digest_and_by_tag() {
    let (sim, condemned) = world().await;
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("images.txt");
    std::fs::write(
        &list,
        format!(
            "# written by CI\n\n{}\n{}   # a tag reference\nnginx:1.25\n",
            condemned[0].by_digest(),
            condemned[1].by_tag()
        ),
    )
    .unwrap();
    let config = write_config(&sim, dir.path(), &format!("file = \"{}\"", list.display()));

    // Every report format and explain name the veto.
    let o = run_bin(
        &sim,
        &["plan", "retention", "--config", &config, "--format", "json"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let in_use = plan["summary"]["in_use"].to_string();
    for c in &condemned[..2] {
        assert!(in_use.contains(&c.digest), "{in_use}");
    }
    assert!(
        in_use.contains("in use (source: file, last seen "),
        "{in_use}"
    );
    for format in ["table", "markdown", "html"] {
        let o = run_bin(
            &sim,
            &["plan", "retention", "--config", &config, "--format", format],
        );
        assert!(o.status.success(), "{}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.contains(&condemned[0].digest)
                && out.contains("IN USE")
                && out.contains("source: file"),
            "{format}: {out}"
        );
    }
    let o = run_bin(&sim, &["explain", &condemned[1].repo, "--config", &config]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.lines().any(|l| l.contains(&condemned[1].tags[0])
            && l.contains("kept: in use (source: file, last seen ")),
        "{out}"
    );

    let o = run_bin(&sim, &["apply", "retention", "--yes", "--config", &config]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(present(&sim, &condemned[0]), "named by digest: kept");
    assert!(present(&sim, &condemned[1]), "named by tag: kept");
    assert!(!present(&sim, &condemned[2]), "not named: deleted");

    // Empty after it named two images: enforce blocked, nothing deleted.
    std::fs::write(&list, "# nothing\n").unwrap();
    let before = registry_snapshot(&sim);
    let n = deletes(&sim);
    let o = run_bin(&sim, &["apply", "retention", "--yes", "--config", &config]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains("file: no image in use, where it named 3 last time"),
        "{}",
        text(&o)
    );
    assert_eq!(registry_snapshot(&sim), before);
    assert_eq!(deletes(&sim), n);
    // `plan` says so too: not 0 (an input could not be used), 1 (a plan blocks nothing).
    let o = run_bin(&sim, &["plan", "retention", "--config", &config]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("allow_empty = true"), "{}", text(&o));
    // `explain` applies the same check (it reads the remembered count too)
    // and, like `plan`, does not exit 0 on an explanation that may be wrong.
    let o = run_bin(&sim, &["explain", &condemned[1].repo, "--config", &config]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(
            "BLOCKED: in-use source failed (file: no image in use, where it named 3 last time"
        ),
        "{}",
        text(&o)
    );
    let o = run_bin(
        &sim,
        &[
            "explain",
            &condemned[1].repo,
            "--format",
            "json",
            "--config",
            &config,
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        doc["blocked"]
            .as_str()
            .is_some_and(|b| b.contains("no image in use, where it named 3 last time")),
        "{doc}"
    );

    // The cluster really runs none of them now: allow_empty for one run
    // accepts the empty answer (the vetoes go, the images are deleted) ...
    let allowed = write_config(
        &sim,
        dir.path(),
        &format!("file = \"{}\"\nallow_empty = true", list.display()),
    );
    let o = run_bin(&sim, &["apply", "retention", "--yes", "--config", &allowed]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!present(&sim, &condemned[0]) && !present(&sim, &condemned[1]));
    // ... and is remembered: without it, the same empty answer now passes.
    let config = write_config(&sim, dir.path(), &format!("file = \"{}\"", list.display()));
    let o = run_bin(&sim, &["apply", "retention", "--yes", "--config", &config]);
    assert!(o.status.success(), "{}", text(&o));
}

/// Review 7: with a state that cannot be opened, `plan` and `explain` fell
/// back to an empty in-memory one and exited 0 — an empty in-use answer
/// (a broken exporter) then passed unchecked. They still report, and exit 1.
#[tokio::test(flavor = "multi_thread")]
async fn plan_and_explain_exit_1_when_the_state_to_compare_in_use_answers_cannot_be_opened() {
    let (sim, condemned) = world().await;
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("images.txt");
    std::fs::write(&list, "# nothing\n").unwrap();
    let config = write_config(&sim, dir.path(), &format!("file = \"{}\"", list.display()));
    std::fs::write(dir.path().join("state.db"), vec![0x5a_u8; 8192]).unwrap();
    let o = run_bin(&sim, &["plan", "retention", "--config", &config]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("cannot open the state"), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("retention-report"),
        "the report is still written: {}",
        text(&o)
    );
    for format in ["table", "json"] {
        let o = run_bin(
            &sim,
            &[
                "explain",
                &condemned[0].repo,
                "--format",
                format,
                "--config",
                &config,
            ],
        );
        assert_eq!(o.status.code(), Some(1), "{format}: {}", text(&o));
        assert!(text(&o).contains("cannot open the state"), "{}", text(&o));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_file_or_program_blocks_enforce_and_dry_run_reports_it() {
    let (sim, condemned) = world().await;
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("images.txt");
    std::fs::write(
        &list,
        format!("{}\nnot a reference\n", condemned[0].by_tag()),
    )
    .unwrap();
    let cases = [
        (
            format!("file = \"{}\"", dir.path().join("missing.txt").display()),
            "file: ",
        ),
        (format!("file = \"{}\"", list.display()), "line 2: "),
        (
            "exec = [\"/bin/sh\", \"-c\", \"echo cluster unreachable >&2; exit 4\"]".to_owned(),
            "cluster unreachable",
        ),
        (
            "exec = [\"/bin/sh\", \"-c\", \"sleep 30\"]\ntimeout = \"1s\"".to_owned(),
            "did not finish within 1s",
        ),
        // Review 7: a closed Prometheus said only "error sending request";
        // now its cause, and still not the URL's password.
        (
            format!(
                "prometheus = {{ url = \"http://scraper:pr0m-pass@127.0.0.1:{}\", lookback = \"7d\" }}",
                free_port()
            ),
            "Connection refused",
        ),
    ];
    let before = registry_snapshot(&sim);
    for (source, why) in cases {
        let config = write_config(&sim, dir.path(), &source);
        let started = Instant::now();
        let o = run_bin(&sim, &["apply", "retention", "--yes", "--config", &config]);
        assert_eq!(o.status.code(), Some(3), "{source}: {}", text(&o));
        assert!(text(&o).contains("in-use source failed"), "{}", text(&o));
        assert!(text(&o).contains(why), "{source}: {}", text(&o));
        assert!(!text(&o).contains("pr0m-pass"), "{}", text(&o));
        assert!(started.elapsed() < Duration::from_secs(20));
        // Dry-run reports it and still plans, and exits 1 (not 0: a source
        // could not be read; not 3: a plan blocks nothing).
        let o = run_bin(&sim, &["plan", "retention", "--config", &config]);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.contains("BLOCKED run: in-use source failed") && out.contains(why),
            "{out}"
        );
    }
    assert_eq!(registry_snapshot(&sim), before, "nothing deleted");
    assert_eq!(deletes(&sim), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exec_source_keeps_what_it_prints_and_gets_a_cleared_environment() {
    let (sim, condemned) = world().await;
    let dir = tempfile::tempdir().unwrap();
    let env_dump = dir.path().join("env.txt");
    let config = write_config(
        &sim,
        dir.path(),
        &format!(
            "exec = [\"/bin/sh\", \"-c\", \"env > {}; echo '{}'; echo; echo '# done'\"]",
            env_dump.display(),
            condemned[0].by_tag()
        ),
    );
    let o = run_bin(&sim, &["apply", "retention", "--yes", "--config", &config]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(present(&sim, &condemned[0]));
    assert!(!present(&sim, &condemned[1]));
    let env = std::fs::read_to_string(&env_dump).unwrap();
    assert!(
        !env.contains("TEST_SK"),
        "the daemon's environment is not passed on: {env}"
    );
}

// ---------------------------------------------------------------- Prometheus

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct KillOnDrop {
    child: std::process::Child,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// kube-state-metrics series, one sample a minute for an hour ending `ago`
/// before now, for each (image, image_id).
fn openmetrics(series: &[(&str, &str, Duration)]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut out = String::from("# TYPE kube_pod_container_info gauge\n");
    for (n, (image, image_id, ago)) in series.iter().enumerate() {
        let end = now - ago.as_secs();
        for t in (end - 3600..=end).step_by(60) {
            out.push_str(&format!(
                "kube_pod_container_info{{namespace=\"default\",pod=\"p{n}\",container=\"c\",image=\"{image}\",image_id=\"{image_id}\"}} 1 {t}\n"
            ));
        }
    }
    out.push_str("# EOF\n");
    out
}

fn start_prometheus(dir: &Path, data: &Path, port: u16) -> KillOnDrop {
    let cfg = dir.join("prometheus.yml");
    std::fs::write(&cfg, "global:\n  scrape_interval: 15s\n").unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg("--storage.tsdb.retention.time=30d")
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let prom = KillOnDrop { child };
    // A thread of its own: the blocking client may not run on the runtime.
    let ready = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if reqwest::blocking::get(format!("http://127.0.0.1:{port}/-/ready"))
                .is_ok_and(|r| r.status().is_success())
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    })
    .join()
    .unwrap();
    assert!(ready, "Prometheus did not become ready");
    prom
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_keeps_an_image_run_3_days_ago_not_one_last_seen_10_days_ago() {
    if !common::ci_tool("prometheus") || !common::ci_tool("promtool") {
        return;
    }
    let (sim, condemned) = world().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(
        &sim,
        dir.path(),
        &format!("prometheus = {{ url = \"http://127.0.0.1:{port}\", lookback = \"7d\" }}"),
    );
    let day = Duration::from_secs(86_400);

    // Prometheus down: enforce blocked, nothing deleted; dry-run reports it.
    let before = registry_snapshot(&sim);
    let o = run_bin(&sim, &["apply", "retention", "--yes", "--config", &config]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains("in-use source failed (prometheus: "),
        "{}",
        text(&o)
    );
    assert_eq!(registry_snapshot(&sim), before);
    assert_eq!(deletes(&sim), 0);

    // Backfill: [0] ran 3 days ago (by digest), [1] by tag 3 days ago, [2]
    // last ran 10 days ago.
    let om = dir.path().join("ksm.om");
    std::fs::write(
        &om,
        openmetrics(&[
            (
                "elsewhere.example.com/x/y:z",
                &format!("docker-pullable://{}", condemned[0].by_digest()),
                3 * day,
            ),
            (&condemned[1].by_tag(), "", 3 * day),
            (&condemned[2].by_tag(), &condemned[2].by_digest(), 10 * day),
        ]),
    )
    .unwrap();
    let data = dir.path().join("data");
    let o = Command::new("promtool")
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&om)
        .arg(&data)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let prom = start_prometheus(dir.path(), &data, port);

    let o = run_bin(&sim, &["explain", &condemned[0].repo, "--config", &config]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("kept: in use (source: prometheus, last seen "),
        "{out}"
    );

    let o = run_bin(&sim, &["apply", "retention", "--yes", "--config", &config]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        present(&sim, &condemned[0]),
        "ran 3 days ago (digest): kept"
    );
    assert!(present(&sim, &condemned[1]), "ran 3 days ago (tag): kept");
    assert!(
        !present(&sim, &condemned[2]),
        "last seen 10 days ago: deleted"
    );
    drop(prom);
}

/// The daemon's retention job: the veto is counted in
/// `kcr_housekeeper_retention_in_use_vetoes{instance}` and listed in the
/// report it stores.
#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_job_exports_the_veto_count_and_reports_it() {
    let (sim, condemned) = world().await;
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("images.txt");
    std::fs::write(
        &list,
        format!("{}\n{}\n", condemned[0].by_digest(), condemned[1].by_tag()),
    )
    .unwrap();
    let config = write_config(&sim, dir.path(), &format!("file = \"{}\"", list.display()));
    let port = free_port();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n[scheduler]\nrun_on_start = true\njitter = \"0s\"\nshutdown_timeout = \"5s\"\n"
    ));
    std::fs::write(&config, text).unwrap();
    let child = bin(&sim_secret(&sim), &["run", "--config", &config])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let daemon = KillOnDrop { child };
    let (metric, report) = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let get = |path: &str| {
                reqwest::blocking::get(format!("http://127.0.0.1:{port}{path}"))
                    .ok()
                    .filter(|r| r.status().is_success())
                    .and_then(|r| r.text().ok())
            };
            if let (Some(m), Some(r)) = (get("/metrics"), get("/reports/retention/latest.json"))
                && let Some(line) = m
                    .lines()
                    .find(|l| l.starts_with("kcr_housekeeper_retention_in_use_vetoes{"))
            {
                return (line.to_owned(), r);
            }
            assert!(
                Instant::now() < deadline,
                "no in-use metric and report within 30 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .join()
    .unwrap();
    drop(daemon);
    assert_eq!(
        metric,
        "kcr_housekeeper_retention_in_use_vetoes{instance=\"gen\"} 2"
    );
    let v: serde_json::Value = serde_json::from_str(&report).unwrap();
    let in_use = v["summary"]["in_use"].to_string();
    assert!(
        in_use.contains(&condemned[0].digest) && in_use.contains(&condemned[1].digest),
        "{in_use}"
    );
    assert!(present(&sim, &condemned[0]) && present(&sim, &condemned[1]));
}
