//! Token rotation in the real binary. Crash safety: the process is aborted at
//! every step boundary (the `failpoints` feature, enabled for tests only) and
//! started again; after each restart the sinks hold a valid, unexpired
//! credential, no undelivered token stays enabled, and at most one extra token
//! exists. Secrecy: a full rotation in the daemon with debug logging leaves
//! the secret nowhere but the sinks.

mod common;

use common::{DEMO_INSTANCE, client_for, demo_head, sim};
use kcr_housekeeper::kcr::{DescribeInstanceToken, TokenInfo};
use kcr_housekeeper::sim::{SimOptions, Simulator};
use kcr_housekeeper::tokens::planner::parse_desc;
use kcr_housekeeper::tokens::rotate::FAILPOINTS;
use secrecy::ExposeSecret;
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
    let creds = sim.credentials();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kcr-housekeeper"));
    cmd.args(["apply", "tokens", "--yes", "--config"])
        .arg(config)
        .env("AK", &creds.access_key_id)
        .env("SK", creds.secret_access_key.expose_secret())
        .env_remove("KCR_HOUSEKEEPER_FAILPOINT");
    if let Some(fp) = failpoint {
        cmd.env("KCR_HOUSEKEEPER_FAILPOINT", fp);
    }
    cmd.output().unwrap()
}

async fn managed_tokens(sim: &Simulator) -> Vec<TokenInfo> {
    client_for(sim)
        .list_all(DescribeInstanceToken {
            instance_id: DEMO_INSTANCE.into(),
            marker: None,
            max_results: None,
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|t| {
            t.desc
                .as_deref()
                .and_then(parse_desc)
                .is_some_and(|(n, _)| n == "ci-pull")
        })
        .collect()
}

fn env_value(dir: &Path, key: &str) -> String {
    let text = std::fs::read_to_string(dir.join("ci-pull.env")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_at_any_step_a_restart_restores_every_invariant() {
    for fp in FAILPOINTS {
        let sim = sim(SimOptions::default()).await;
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(&sim, dir.path());

        let crashed = apply(&sim, &config, Some(fp));
        assert!(!crashed.status.success(), "{fp}: the failpoint aborts");
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(crashed.status.signal(), Some(6), "{fp}: SIGABRT");
        }
        assert!(
            String::from_utf8_lossy(&crashed.stderr).contains(&format!("failpoint {fp}")),
            "{fp}"
        );

        // A crash may leave a creation whose outcome is unknown: the restart
        // waits out list_lag before concluding it never happened.
        tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
        let restarted = apply(&sim, &config, None);
        let stderr = String::from_utf8_lossy(&restarted.stderr);
        assert!(restarted.status.success(), "{fp}: restart fails: {stderr}");

        // The sinks hold a valid, unexpired credential.
        let user = env_value(dir.path(), "KCR_USERNAME");
        let secret = env_value(dir.path(), "KCR_TOKEN");
        let sink_id = env_value(dir.path(), "KCR_TOKEN_ID");
        let status = reqwest::Client::new()
            .get(format!("{}/v2/", sim.endpoint()))
            .basic_auth(&user, Some(&secret))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "{fp}: the delivered credential logs in");
        let docker = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"));
        assert!(docker.contains(&auth), "{fp}: both sinks agree");

        // No undelivered token stays enabled; at most one extra token exists.
        let tokens = managed_tokens(&sim).await;
        for t in tokens.iter().filter(|t| t.enable) {
            assert!(
                t.token_id == sink_id || t.token_id == SEED,
                "{fp}: enabled token {} is neither delivered nor the previous one: {tokens:?}",
                t.token_id
            );
        }
        assert!(
            tokens.len() <= 3,
            "{fp}: seed + current + at most one extra: {tokens:?}"
        );

        // And the next cycle has nothing left to repair.
        let again = apply(&sim, &config, None);
        let out = String::from_utf8_lossy(&again.stdout);
        assert!(again.status.success(), "{fp}: {out}");
        assert!(out.contains("nothing to do"), "{fp}: {out}");
    }
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
    let creds = sim.credentials();
    let log_path = dir.path().join("daemon.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kcr-housekeeper"))
        .args(["run", "--config"])
        .arg(&config)
        .env("AK", &creds.access_key_id)
        .env("SK", creds.secret_access_key.expose_secret())
        .env_remove("KCR_HOUSEKEEPER_FAILPOINT")
        .env_remove("KCR_HOUSEKEEPER_LOG")
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
        let out = Command::new(env!("CARGO_BIN_EXE_kcr-housekeeper"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .env("AK", &creds.access_key_id)
            .env("SK", creds.secret_access_key.expose_secret())
            .env_remove("KCR_HOUSEKEEPER_FAILPOINT")
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
            ..Default::default()
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(&sim, dir.path());
        let creds = sim.credentials();
        let mut child = Command::new(env!("CARGO_BIN_EXE_kcr-housekeeper"))
            .args(["apply", "tokens", "--yes", "--config"])
            .arg(&config)
            .env("AK", &creds.access_key_id)
            .env("SK", creds.secret_access_key.expose_secret())
            .env_remove("KCR_HOUSEKEEPER_FAILPOINT")
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
        let sink_id = env_value(dir.path(), "KCR_TOKEN_ID");
        let user = env_value(dir.path(), "KCR_USERNAME");
        let secret = env_value(dir.path(), "KCR_TOKEN");
        assert!(
            sim.world(|w| w.login(&user, &secret, sim.now())),
            "round {round}: the sink's credential logs in"
        );
        let tokens = managed_tokens(&sim).await;
        for t in tokens.iter().filter(|t| t.enable) {
            assert!(
                t.token_id == sink_id || t.token_id == SEED,
                "round {round}: enabled token {} is neither delivered nor the previous one",
                t.token_id
            );
        }
        assert!(tokens.len() <= 3, "round {round}: {tokens:?}");

        // Every token mutation the registry applied is in the audit table.
        let audit = Command::new(env!("CARGO_BIN_EXE_kcr-housekeeper"))
            .args(["audit", "--format", "json", "--config"])
            .arg(&config)
            .env("AK", &creds.access_key_id)
            .env("SK", creds.secret_access_key.expose_secret())
            .output()
            .unwrap();
        let records: Vec<serde_json::Value> = serde_json::from_slice(&audit.stdout).unwrap();
        for e in sim.requests().into_iter().filter(|e| e.code == "OK") {
            let audited = match e.action.as_deref() {
                // The record names the rotation (its token id is known only once created).
                Some("CreateInstanceToken") => {
                    let rid = parse_desc(&e.params["Desc"]).unwrap().1.to_owned();
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
