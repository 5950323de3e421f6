//! Token rotation in the real binary. Fault matrix: every failpoint a
//! rotation passes (enumerated by a traced clean run, then the points each
//! injected error leads to) gets (a) an injected error and (b) an abort and
//! restart; after each, the sinks hold a credential the registry accepts, no
//! undelivered token is enabled, at most one extra token exists and every
//! mutation the registry applied is audited. Secrecy: a full rotation in the
//! daemon with debug logging leaves the secret nowhere but the sinks.

mod common;

use common::{demo_bin, demo_head, sim};
use kcr_housekeeper::kcr::TokenInfo;
use kcr_housekeeper::sim::{SimOptions, Simulator};
use kcr_housekeeper::tokens::planner::parse_desc;
use kcr_housekeeper::tokens::rotate::FAILPOINTS;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};

const SEED: &str = "6c1f3a52-0d7e-4b1a-9f6e-5a0c2b7d9e01";

fn write_config(sim: &Simulator, dir: &Path) -> std::path::PathBuf {
    write_config_with(sim, dir, "debug", "")
}

fn write_config_with(sim: &Simulator, dir: &Path, level: &str, extra: &str) -> std::path::PathBuf {
    let text = format!(
        r#"{head}
[log]
level = "{level}"
{extra}
[tokens]
list_lag = "2s"
[[tokens.managed]]
name = "ci-pull"
instance = "demo"
lifetime = "30d"
rotate_before = "10d"
sinks = [
  {{ kind = "docker-config", path = "{dir}/config.json" }},
  {{ kind = "file", path = "{dir}/ci-pull.env", format = "env" }},
]
"#,
        head = demo_head(sim, dir),
        dir = dir.display()
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn apply(sim: &Simulator, config: &Path, failpoint: Option<&str>) -> Output {
    let mut cmd = demo_bin(sim, &["apply", "tokens", "--yes", "--config"]);
    cmd.arg(config);
    if let Some(fp) = failpoint {
        cmd.env("KCR_HOUSEKEEPER_FAILPOINT", fp);
    }
    cmd.output().unwrap()
}

async fn managed_tokens(sim: &Simulator) -> Vec<TokenInfo> {
    common::tokens_named(sim, "ci-pull").await
}

fn env_value(dir: &Path, key: &str) -> String {
    let text = std::fs::read_to_string(dir.join("ci-pull.env")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap()
        .to_string()
}

/// After a rotation was finished: the sinks' credential logs in, no
/// enabled token is other than the delivered one or the seed, and at most
/// one extra token exists. Returns the managed tokens.
async fn assert_converged(sim: &Simulator, dir: &Path, when: &str) -> Vec<TokenInfo> {
    let sink_id = env_value(dir, "KCR_TOKEN_ID");
    let user = env_value(dir, "KCR_USERNAME");
    let secret = env_value(dir, "KCR_TOKEN");
    assert!(
        sim.world(|w| w.login(&user, &secret, sim.now())),
        "{when}: the sink's credential logs in"
    );
    let tokens = managed_tokens(sim).await;
    for t in tokens.iter().filter(|t| t.enable) {
        assert!(
            t.token_id == sink_id || t.token_id == SEED,
            "{when}: enabled token {} is neither delivered nor the previous one",
            t.token_id
        );
    }
    assert!(tokens.len() <= 3, "{when}: {tokens:?}");
    tokens
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_rotation_leaves_the_secret_nowhere_but_the_sinks() {
    use std::time::{Duration, Instant};
    let sim = sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config_with(
        &sim,
        dir.path(),
        "trace",
        "[server]\nlisten = \"127.0.0.1:0\"\n[scheduler]\nrun_on_start = true\njitter = \"0s\"",
    );
    let log_path = dir.path().join("daemon.log");
    let mut child = demo_bin(&sim, &["run", "--config"])
        .arg(&config)
        .stdout(std::fs::File::create(dir.path().join("daemon.out")).unwrap())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    // Wait for the rotation's run to be recorded.
    let deadline = Instant::now() + Duration::from_secs(30);
    let listen = loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        assert!(
            Instant::now() < deadline,
            "no rotation within 30 s: {}",
            log.lines()
                .filter(|l| !l.contains("TRACE") && !l.contains("DEBUG"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        let listen = log
            .lines()
            .find(|l| l.contains("kcr-housekeeper ready"))
            .and_then(|l| l.split("listen=").nth(1))
            .map(|rest| rest.split_whitespace().next().unwrap().to_string());
        if let Some(listen) = listen
            && log.contains("job=\"tokens\"")
            && log.contains("result=\"success\"")
        {
            break listen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let base = format!("http://{listen}");
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let jobs = reqwest::get(format!("{base}/jobs"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "kcr_housekeeper_token_rotations_total{result=\"success\",token=\"ci-pull\"} 1"
        ),
        "{metrics}"
    );
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert!(child.wait().unwrap().success());

    let cli = |args: &[&str]| {
        let out = demo_bin(&sim, args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let plan = cli(&["plan", "tokens"]);
    let audit = cli(&["audit"]);
    assert!(audit.contains("create_token"), "{audit}");

    let secret = env_value(dir.path(), "KCR_TOKEN");
    let user = env_value(dir.path(), "KCR_USERNAME");
    assert!(secret.len() >= 16);
    use base64::Engine as _;
    let docker_auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"));
    let leaks = |what: &str, bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes);
        assert!(!text.contains(&secret), "the secret leaked into {what}");
        assert!(
            !text.contains(&docker_auth),
            "the docker auth leaked into {what}"
        );
    };
    let log = std::fs::read(&log_path).unwrap();
    let text = String::from_utf8_lossy(&log);
    assert!(
        text.contains("DEBUG") || text.contains("TRACE"),
        "debug logging was on: {text}"
    );
    leaks("the daemon's log", &log);
    leaks("/metrics", metrics.as_bytes());
    leaks("/jobs", jobs.as_bytes());
    leaks("plan tokens", plan.as_bytes());
    leaks("audit", audit.as_bytes());
    let mut scanned = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name == "ci-pull.env" || name == "config.json" {
            continue;
        }
        leaks(&name, &std::fs::read(&path).unwrap());
        scanned.push(name);
    }
    assert!(
        scanned.iter().any(|n| n == "state.db"),
        "the state was scanned: {scanned:?}"
    );
    // And the sinks do hold it.
    assert!(
        std::fs::read_to_string(dir.path().join("config.json"))
            .unwrap()
            .contains(&docker_auth)
    );
}

/// The crash matrix for rotation: SIGKILL `apply tokens` at random points
/// (seeded, with API latency so the kill lands mid-rotation), restart, and
/// check the invariants; the audit table names every token mutation the
/// registry applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_during_rotation() {
    use kcr_housekeeper::sim::Faults;
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mut landed = 0;
    for round in 0..6 {
        let sim = sim(SimOptions {
            faults: Faults {
                latency: std::time::Duration::from_millis(15),
                ..Default::default()
            },
            log_in_memory: true,
            ..Default::default()
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(&sim, dir.path());
        let mut child = demo_bin(&sim, &["apply", "tokens", "--yes", "--config"])
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let after_ms = rng.random_range(20..250);
        tokio::time::sleep(std::time::Duration::from_millis(after_ms)).await;
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            landed += 1;
        }
        child.wait().unwrap();
        // Past list_lag (2s in this config), then restart until nothing is left to do.
        tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
        let restarted = apply(&sim, &config, None);
        assert!(
            restarted.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&restarted.stderr)
        );
        assert_converged(&sim, dir.path(), &format!("round {round}")).await;

        // Every token mutation the registry applied is in the audit table.
        let audit = demo_bin(&sim, &["audit", "--format", "json", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let records: Vec<serde_json::Value> = serde_json::from_slice(&audit.stdout).unwrap();
        for e in sim.requests().into_iter().filter(|e| e.code == "OK") {
            let audited = match e.action.as_deref() {
                // The record names the rotation (its token id is known only once created).
                Some("CreateInstanceToken") => {
                    let rid = parse_desc(&e.params["Desc"])
                        .unwrap()
                        .rotation_id
                        .to_owned();
                    records.iter().any(|r| {
                        r["action"] == "create_token"
                            && r["detail"]
                                .as_str()
                                .is_some_and(|d| d.contains(&format!("rotation {rid}:")))
                    })
                }
                Some(a @ ("ModifyInstanceTokenStatus" | "DeleteInstanceToken")) => {
                    let action = if a == "DeleteInstanceToken" {
                        "delete_token"
                    } else {
                        "disable_token"
                    };
                    records.iter().any(|r| {
                        r["action"] == action && r["target"] == e.params["TokenId"].as_str()
                    })
                }
                _ => continue,
            };
            assert!(
                audited,
                "round {round}: {e:?} applied but not audited: {records:?}"
            );
        }
    }
    assert!(landed >= 3, "kills landed mid-rotation in {landed} rounds");
}

// ------------------------------------------------------------------ fault matrix

/// One rotation scenario in its own simulator and directory: the sinks start
/// with the seed token's working credential (an earlier installation's), and
/// overlap, delete_after and list_lag are short, so that three runs 600 ms
/// apart rotate, disable the old token and delete it.
struct Scenario {
    sim: Simulator,
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
}

const FAST: &str = r#"[tokens]
list_lag = "500ms"
[[tokens.managed]]
name = "ci-pull"
instance = "demo"
lifetime = "30d"
rotate_before = "10d"
overlap = "500ms"
delete_after = "500ms"
"#;

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

impl Scenario {
    async fn new() -> Scenario {
        let sim = sim(SimOptions {
            log_in_memory: true,
            ..Default::default()
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let registry = sim.endpoint().trim_start_matches("http://").to_string();
        let user = sim.world(|w| {
            let t = w.instances[0]
                .tokens
                .iter_mut()
                .find(|t| t.id == SEED)
                .unwrap();
            t.secret = Some("seed-secret".into());
            t.username.clone()
        });
        std::fs::write(
            dir.path().join("ci-pull.env"),
            format!("KCR_REGISTRY={registry}\nKCR_USERNAME={user}\nKCR_TOKEN=seed-secret\nKCR_TOKEN_ID={SEED}\n"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            serde_json::json!({"auths": {registry: {"auth": b64(&format!("{user}:seed-secret"))}}})
                .to_string(),
        )
        .unwrap();
        let text = format!(
            "{head}[log]\nlevel = \"info\"\n{FAST}sinks = [\n  {{ kind = \"docker-config\", path = \"{d}/config.json\" }},\n  {{ kind = \"file\", path = \"{d}/ci-pull.env\", format = \"env\" }},\n  {{ kind = \"exec\", command = [\"/bin/sh\", \"-c\", \"cat > {d}/exec.json\"] }},\n]\n",
            head = demo_head(&sim, dir.path()),
        );
        let config = dir.path().join("config.toml");
        std::fs::write(&config, text).unwrap();
        Scenario { sim, dir, config }
    }

    async fn apply(&self, failpoint: Option<&str>, trace: Option<&Path>) -> Output {
        let mut cmd = tokio::process::Command::from(demo_bin(
            &self.sim,
            &["apply", "tokens", "--yes", "--config"],
        ));
        cmd.arg(&self.config)
            .env_remove("KCR_HOUSEKEEPER_FAILPOINT_TRACE");
        if let Some(fp) = failpoint {
            cmd.env("KCR_HOUSEKEEPER_FAILPOINT", fp);
        }
        if let Some(t) = trace {
            cmd.env("KCR_HOUSEKEEPER_FAILPOINT_TRACE", t);
        }
        cmd.output().await.unwrap()
    }

    /// Four to six runs 600 ms apart (rotate, disable the old token, delete
    /// it, note and forget what a fault left) with `spec` armed until `target`
    /// fires, then a clean restart past list_lag. Returns whether `target` fired and the
    /// restart's output.
    async fn drive(
        &self,
        spec: Option<&str>,
        target: Option<&str>,
        trace: Option<&Path>,
    ) -> (bool, Output) {
        let mut fired = false;
        for run in 0..6 {
            // Points behind a fault may need a run or two more.
            if run >= 4 && (fired || target.is_none()) {
                break;
            }
            if run > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(600)).await;
            }
            let armed = if fired { None } else { spec };
            let out = self.apply(armed, trace).await;
            let stderr = String::from_utf8_lossy(&out.stderr);
            if let Some(t) = target
                && armed.is_some()
                && stderr.contains(&format!("failpoint {t}:"))
            {
                fired = true;
                if spec.is_some_and(|s| s.contains(&format!("{t}=abort"))) {
                    use std::os::unix::process::ExitStatusExt;
                    assert_eq!(out.status.signal(), Some(6), "{t}: aborted: {stderr}");
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        let restart = self.apply(None, trace).await;
        (fired, restart)
    }

    /// The invariants after any fault and a restart.
    async fn check(&self, label: &str) {
        let dir = self.dir.path();
        let user = env_value(dir, "KCR_USERNAME");
        let secret = env_value(dir, "KCR_TOKEN");
        let sink_id = env_value(dir, "KCR_TOKEN_ID");
        let status = reqwest::Client::new()
            .get(format!("{}/v2/", self.sim.endpoint()))
            .basic_auth(&user, Some(&secret))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "{label}: the sinks' credential logs in");
        // Each sink on its own: after a failed restore they may hold different
        // (kept, working) tokens.
        let docker: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        let registry = self
            .sim
            .endpoint()
            .trim_start_matches("http://")
            .to_string();
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD
            .decode(docker["auths"][&registry]["auth"].as_str().unwrap())
            .unwrap();
        let (duser, dsecret) = String::from_utf8(auth)
            .unwrap()
            .split_once(':')
            .map(|(u, s)| (u.to_string(), s.to_string()))
            .unwrap();
        assert!(
            self.sim
                .world(|w| w.login(&duser, &dsecret, self.sim.now())),
            "{label}: the docker config's credential logs in"
        );
        let journal = kcr_housekeeper::state::Store::open(&dir.join("state.db"))
            .unwrap()
            .journal_for("ci-pull")
            .unwrap();
        let tokens = managed_tokens(&self.sim).await;
        for t in tokens.iter().filter(|t| t.enable) {
            let delivered = journal.iter().any(|r| {
                r.token_id.as_deref() == Some(t.token_id.as_str())
                    && ["delivering", "verified", "current", "superseded"]
                        .contains(&r.step.as_str())
            });
            assert!(
                t.token_id == sink_id || t.token_id == SEED || delivered,
                "{label}: enabled token {} was never delivered: {journal:?}",
                t.token_id
            );
        }
        assert!(
            tokens.len() <= 3,
            "{label}: seed + current + at most one extra: {tokens:?}"
        );
        // Every token mutation the registry applied is in the audit table.
        let audit = kcr_housekeeper::state::Store::open(&dir.join("state.db"))
            .unwrap()
            .audit_since(None)
            .unwrap();
        for e in self.sim.requests().into_iter().filter(|e| e.code == "OK") {
            let audited = match e.action.as_deref() {
                Some("CreateInstanceToken") => {
                    let rid = parse_desc(&e.params["Desc"])
                        .unwrap()
                        .rotation_id
                        .to_owned();
                    audit.iter().any(|r| {
                        r.action == "create_token" && r.detail.contains(&format!("rotation {rid}:"))
                    })
                }
                Some(a @ ("ModifyInstanceTokenStatus" | "DeleteInstanceToken")) => {
                    let action = if a == "DeleteInstanceToken" {
                        "delete_token"
                    } else {
                        "disable_token"
                    };
                    audit
                        .iter()
                        .any(|r| r.action == action && r.target == e.params["TokenId"])
                }
                _ => continue,
            };
            assert!(audited, "{label}: {e:?} applied but not audited: {audit:?}");
        }
    }
}

fn traced(path: &Path) -> Vec<String> {
    let mut seen = Vec::new();
    for l in std::fs::read_to_string(path).unwrap_or_default().lines() {
        if !seen.iter().any(|s: &String| s == l) {
            seen.push(l.to_string());
        }
    }
    seen
}

/// The Step 7 method: every failpoint a rotation passes gets an injected
/// error and an abort + restart, and so does every point that only an
/// injected error leads to (a double fault). The invariants hold after each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failpoint_on_the_rotation_path_fails_safe_as_an_error_and_as_a_crash() {
    use futures::StreamExt;
    let started = std::time::Instant::now();
    // 1. A clean traced run enumerates the points.
    let clean = Scenario::new().await;
    let trace = clean.dir.path().join("trace");
    let (_, restart) = clean.drive(None, None, Some(&trace)).await;
    assert!(restart.status.success(), "{restart:?}");
    clean.check("clean run").await;
    let points = traced(&trace);
    for must in [
        "tokens.api.create",
        "tokens.verify",
        "tokens.state.journal_delivering",
        "tokens.rotate.deliver",
        "tokens.state.journal_verified",
        "tokens.state.mark_current",
        "tokens.api.disable",
        "tokens.api.delete",
    ] {
        assert!(
            points.iter().any(|p| p == must),
            "{must} not passed: {points:?}"
        );
    }
    for p in &points {
        assert!(
            p.starts_with("tokens."),
            "a foreign point on the rotation path: {p}"
        );
    }

    // 2. Each point: an injected error (traced, to find the points only that
    // error leads to) and an abort + restart. Then the same for each point
    // found behind an error, with that error still armed (a double fault),
    // and so on, three levels deep.
    let mut known: BTreeSet<String> = points.iter().cloned().collect();
    let mut frontier: Vec<(String, String)> =
        points.iter().map(|p| (String::new(), p.clone())).collect();
    let mut exercised = BTreeSet::new();
    let mut scenarios = 0;
    let mut behind_errors = 0;
    for _level in 0..3 {
        if frontier.is_empty() {
            break;
        }
        let jobs: Vec<(String, String, String)> = frontier
            .iter()
            .flat_map(|(prefix, p)| {
                ["error", "abort"]
                    .map(|mode| (prefix.clone(), p.clone(), format!("{prefix}{p}={mode}")))
            })
            .collect();
        scenarios += jobs.len();
        let results: Vec<(String, String, String, bool, Vec<String>)> = futures::stream::iter(jobs)
            .map(|(prefix, point, spec)| async move {
                let s = Scenario::new().await;
                let trace = s.dir.path().join("trace");
                let (fired, restart) = s.drive(Some(&spec), Some(&point), Some(&trace)).await;
                // Success, or 1 while backing off after the injected failure; never a crash.
                assert!(
                    matches!(restart.status.code(), Some(0 | 1)),
                    "{spec}: the restart crashed: {}",
                    String::from_utf8_lossy(&restart.stderr)
                );
                s.check(&spec).await;
                (prefix, point, spec, fired, traced(&trace))
            })
            .buffer_unordered(6)
            .collect()
            .await;
        let mut next: BTreeMap<String, String> = BTreeMap::new();
        for (prefix, point, spec, fired, seen) in &results {
            assert!(fired, "{spec}: the point was never reached");
            exercised.insert(point.clone());
            if spec.ends_with("=error") {
                for q in seen {
                    if !known.contains(q) && !next.contains_key(q) {
                        next.insert(q.clone(), format!("{prefix}{point}=error,"));
                    }
                }
            }
        }
        behind_errors += next.len();
        known.extend(next.keys().cloned());
        frontier = next.into_iter().map(|(q, prefix)| (prefix, q)).collect();
    }
    let missing: Vec<&&str> = FAILPOINTS
        .iter()
        .filter(|p| !exercised.contains(**p))
        .collect();
    eprintln!(
        "failpoints exercised: {} ({} on a clean rotation, {} behind injected errors), each as an error and as an abort: {scenarios} scenarios in {:?}; declared but not reached: {missing:?}",
        exercised.len(),
        points.len(),
        behind_errors,
        started.elapsed()
    );
    assert!(
        missing.is_empty(),
        "declared failpoints no scenario reached: {missing:?}"
    );
}

fn config_with_sinks(sim: &Simulator, dir: &Path, sinks: &str) -> std::path::PathBuf {
    let text = format!(
        "{head}[log]\nlevel = \"info\"\n[tokens]\nlist_lag = \"2s\"\n[[tokens.managed]]\nname = \"ci-pull\"\n\
         instance = \"demo\"\nlifetime = \"30d\"\nrotate_before = \"10d\"\nsinks = [{sinks}]\n",
        head = demo_head(sim, dir),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Defect 1: the state database is locked (another process holds
/// `BEGIN EXCLUSIVE` longer than the busy timeout) right after the sinks
/// received the new token, so journaling the delivery fails. The token the
/// sinks hold must stay alive: no restore-less discard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_write_failing_after_delivery_never_discards_the_delivered_token() {
    let sim = sim(SimOptions {
        log_in_memory: true,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("exec-ran");
    let d = dir.path().display();
    let config = config_with_sinks(
        &sim,
        dir.path(),
        &format!(
            "{{ kind = \"docker-config\", path = \"{d}/config.json\" }}, {{ kind = \"file\", path = \"{d}/ci-pull.env\", format = \"env\" }}, \
             {{ kind = \"exec\", command = [\"/bin/sh\", \"-c\", \"cat >/dev/null; touch {}; sleep 1\"] }}",
            marker.display()
        ),
    );
    let child =
        tokio::process::Command::from(demo_bin(&sim, &["apply", "tokens", "--yes", "--config"]))
            .arg(&config)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !marker.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the exec sink never ran"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // The exec sink runs for another second; lock the state past the 5 s busy timeout.
    let db = dir.path().join("state.db");
    let locker = std::thread::spawn(move || {
        let c = rusqlite::Connection::open(db).unwrap();
        c.busy_timeout(std::time::Duration::from_secs(2)).unwrap();
        c.execute_batch("BEGIN EXCLUSIVE").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(6500));
        c.execute_batch("COMMIT").unwrap();
    });
    let out = child.wait_with_output().await.unwrap();
    locker.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the journal write failed: {stderr}");
    let user = env_value(dir.path(), "KCR_USERNAME");
    let secret = env_value(dir.path(), "KCR_TOKEN");
    assert!(
        sim.world(|w| w.login(&user, &secret, sim.now())),
        "the sinks hold a live credential: {stderr}"
    );
    let id = env_value(dir.path(), "KCR_TOKEN_ID");
    let tokens = managed_tokens(&sim).await;
    assert!(
        tokens.iter().any(|t| t.token_id == id && t.enable),
        "{tokens:?}"
    );
    assert_eq!(sim.count("DeleteInstanceToken"), 0, "nothing discarded");
}

/// Defect 3: a file sink fails mid-delivery and putting the sinks back fails
/// too (a full disk): the token a sink may still hold is kept, not discarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_whose_sinks_could_not_be_put_back_is_kept() {
    let sim = sim(SimOptions {
        log_in_memory: true,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let config = config_with_sinks(
        &sim,
        dir.path(),
        &format!(
            "{{ kind = \"docker-config\", path = \"{d}/config.json\" }}, {{ kind = \"file\", path = \"{d}/ci-pull.env\", format = \"env\" }}"
        ),
    );
    let out = apply(
        &sim,
        &config,
        Some("tokens.rotate.sink_done=error,tokens.rotate.restore=error"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("failpoint tokens.rotate.restore"),
        "{stderr}"
    );
    // The docker config got the new token before the failure and could not be put back.
    let docker: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    let registry = sim.endpoint().trim_start_matches("http://").to_string();
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD
        .decode(docker["auths"][&registry]["auth"].as_str().unwrap())
        .unwrap();
    let (user, secret) = String::from_utf8(auth)
        .unwrap()
        .split_once(':')
        .map(|(u, s)| (u.to_string(), s.to_string()))
        .unwrap();
    assert!(
        sim.world(|w| w.login(&user, &secret, sim.now())),
        "the sink's credential still works"
    );
    assert_eq!(
        sim.count("ModifyInstanceTokenStatus"),
        0,
        "nothing disabled"
    );
    assert_eq!(sim.count("DeleteInstanceToken"), 0, "nothing deleted");
    let journal = kcr_housekeeper::state::Store::open(&dir.path().join("state.db"))
        .unwrap()
        .journal_for("ci-pull")
        .unwrap();
    assert_eq!(journal.len(), 1);
    assert_eq!(journal[0].step, "delivering", "{journal:?}");
    assert!(
        journal[0].error.as_deref().unwrap().contains("kept"),
        "{journal:?}"
    );
}

/// Issue 12 item 5: Ctrl-C during a one-shot `apply tokens` (after the new
/// token was created) stops at the rotation's next safe point: exit 130,
/// `history` lists a cancelled `cli` run, no audit record is left
/// `started`, and the journal is recoverable — the next `apply` finishes
/// the rotation: the sinks' credential logs in, and no undelivered token is
/// enabled.
#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_during_apply_tokens_is_a_cancelled_cli_run_the_next_apply_finishes() {
    use common::{assert_cancelled_cli_run, ctrl_c_after, output};
    let sim = common::sim_with_latency(std::time::Duration::from_millis(150)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path());
    let mut cmd = demo_bin(&sim, &["apply", "tokens", "--yes", "--config"]);
    cmd.arg(&config);
    let o = ctrl_c_after(&sim, cmd, "CreateInstanceToken").await;
    assert_eq!(o.status.code(), Some(130), "{}", common::text(&o));
    let cfg = config.to_str().unwrap();
    let history = output(demo_bin(
        &sim,
        &["history", "--format", "json", "--config", cfg],
    ));
    let audit = output(demo_bin(
        &sim,
        &["audit", "--format", "json", "--config", cfg],
    ));
    assert_cancelled_cli_run(&history, &audit, "tokens");
    assert_eq!(
        sim.requests()
            .iter()
            .filter(|e| e.code == "OK" && e.action.as_deref() == Some("CreateInstanceToken"))
            .count(),
        1,
        "stopped before a second create"
    );

    // Past list_lag (2 s in this config): the next apply picks the journal up.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let again = apply(&sim, &config, None);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_converged(&sim, dir.path(), "after the Ctrl-C").await;
}
