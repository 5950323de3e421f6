//! `history` through the binary: one-shot `apply` runs (trigger `cli`) and
//! the daemon's runs land in the same runs table and are listed alike.

mod common;

use common::*;
use kcr_housekeeper::sim::{SimOptions, Simulator};
use secrecy::ExposeSecret;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_kcr-housekeeper");

fn envs(sim: &Simulator) -> [(&'static str, String); 2] {
    let c = sim.credentials();
    [
        ("AK", c.access_key_id.clone()),
        ("SK", c.secret_access_key.expose_secret().to_owned()),
    ]
}

fn write_config(sim: &Simulator, dir: &Path) -> String {
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "{}[server]\nlisten = \"127.0.0.1:0\"\n\
             [scheduler]\njitter = \"0s\"\nrun_on_start = true\nshutdown_timeout = \"10s\"\n\
             [log]\nformat = \"json\"\nlevel = \"info\"\n\
             [retention]\nschedule = \"0 0 0 1 1 *\"\nmode = \"dry-run\"\n\
             [[retention.rules]]\nname = \"untagged\"\nuntagged = true\nolder_than = \"7d\"\n\
             [namespaces]\nschedule = \"0 0 0 1 1 *\"\nmode = \"dry-run\"\ndefault = \"private\"\n\
             rules = [ {{ match = \"public*\", visibility = \"public\" }} ]\n",
            demo_head(sim, dir)
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

fn run(sim: &Simulator, args: &[&str]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args)
        .envs(envs(sim))
        .env_remove("KCR_HOUSEKEEPER_LOG");
    std::thread::spawn(move || c.output().unwrap())
        .join()
        .unwrap()
}

/// Start the daemon, wait for its start-up retention run, stop it.
fn daemon_run_once(sim: &Simulator, config: &str) {
    let mut child = Command::new(BIN)
        .args(["run", "--config", config])
        .envs(envs(sim))
        .env_remove("KCR_HOUSEKEEPER_LOG")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let pid = child.id().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    // Reads to the end: the daemon keeps logging until it stops.
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("job run finished") && line.contains("\"job\":\"retention\"") {
                let _ = tx.send(());
            }
        }
    });
    let seen = rx.recv_timeout(Duration::from_secs(30)).is_ok();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = child.wait().unwrap();
    reader.join().unwrap();
    assert!(seen, "the daemon's start-up run finished");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cli_apply_and_a_daemon_run_both_appear_in_history() {
    let sim = sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path());

    let o = run(&sim, &["apply", "retention", "--yes", "--config", &config]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&sim, &["apply", "namespaces", "--yes", "--config", &config]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    daemon_run_once(&sim, &config);

    let o = run(&sim, &["history", "--config", &config, "--format", "json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let runs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let runs = runs.as_array().unwrap();
    let retention: Vec<_> = runs.iter().filter(|r| r["job"] == "retention").collect();
    assert_eq!(retention.len(), 2, "{runs:#?}");
    // Newest first: the daemon's start-up run, then the one-shot apply.
    assert_eq!(retention[0]["trigger"], "start");
    assert_eq!(retention[1]["trigger"], "cli");
    for r in &retention {
        assert_eq!(r["result"], "success", "{r:#}");
        assert!(r["finished_at"].is_string(), "{r:#}");
    }
    assert!(
        retention[1]["summary"]
            .as_str()
            .unwrap()
            .contains("2 applied"),
        "{:#}",
        retention[1]
    );

    let namespaces: Vec<_> = runs.iter().filter(|r| r["job"] == "namespaces").collect();
    assert_eq!(namespaces.len(), 2, "{runs:#?}");
    assert_eq!(namespaces[0]["trigger"], "start");
    assert_eq!(namespaces[1]["trigger"], "cli");
    assert_eq!(namespaces[1]["result"], "success");
    assert!(
        namespaces[1]["summary"]
            .as_str()
            .unwrap()
            .contains("changed"),
        "{:#}",
        namespaces[1]
    );

    // The table, one job, a limit.
    let o = run(
        &sim,
        &[
            "history",
            "--config",
            &config,
            "--job",
            "retention",
            "--limit",
            "1",
        ],
    );
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].contains("TRIGGER"), "{text}");
    assert!(
        lines[1].contains("retention") && lines[1].contains(" start "),
        "{text}"
    );
    assert_eq!(lines[2], "1 run");

    // An unknown job is a usage error naming the valid ones.
    let o = run(&sim, &["history", "--config", &config, "--job", "nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("retention"));
}

#[test]
fn history_without_a_state_database_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[kcr]\nendpoint = \"sim:demo\"\n[[instances]]\nid = \"i\"\nname = \"demo\"\nregistry = \"r\"\n[state]\npath = \"{}\"\n",
            dir.path().join("none/state.db").display()
        ),
    )
    .unwrap();
    let o = Command::new(BIN)
        .args(["history", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no database yet"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_trigger_answers_the_run_id_and_its_status_is_served() {
    let sim = sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path());
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("run_on_start = true", "run_on_start = false")
        .replace(
            "listen = \"127.0.0.1:0\"",
            "listen = \"127.0.0.1:0\"\nadmin_token = { env = \"ADMIN\" }",
        );
    std::fs::write(&config, text).unwrap();
    const ADMIN: &str = "admin-token-for-history-0123456789";
    let mut child = Command::new(BIN)
        .args(["run", "--config", &config])
        .envs(envs(&sim))
        .env("ADMIN", ADMIN)
        .env_remove("KCR_HOUSEKEEPER_LOG")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("kcr-housekeeper ready") {
                let _ = tx.send(line);
            }
        }
    });
    let ready = rx.recv_timeout(Duration::from_secs(20)).expect("ready");
    let v: serde_json::Value = serde_json::from_str(&ready).unwrap();
    let base = format!("http://{}", v["listen"].as_str().unwrap());
    let (run_id, status) = tokio::task::spawn_blocking(move || {
        let c = reqwest::blocking::Client::new();
        let r = c
            .post(format!("{base}/jobs/retention/run"))
            .bearer_auth(ADMIN)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
        let body: serde_json::Value = r.json().unwrap();
        let id = body["run_id"].as_i64().expect("a run id");
        assert_eq!(
            body["status_url"],
            format!("/jobs/retention/runs/{id}").as_str()
        );
        // Poll the run until it is finished (bounded).
        let mut last = serde_json::Value::Null;
        for _ in 0..200 {
            let r = c
                .get(format!("{base}/jobs/retention/runs/{id}"))
                .send()
                .unwrap();
            assert_eq!(r.status().as_u16(), 200);
            last = r.json().unwrap();
            if last["status"] == "finished" {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Another job's path, or no such run: 404.
        let other = c
            .get(format!("{base}/jobs/namespaces/runs/{id}"))
            .send()
            .unwrap();
        assert_eq!(other.status().as_u16(), 404);
        let none = c
            .get(format!("{base}/jobs/retention/runs/999999"))
            .send()
            .unwrap();
        assert_eq!(none.status().as_u16(), 404);
        (id, last)
    })
    .await
    .unwrap();
    assert_eq!(status["status"], "finished", "{status:#}");
    assert_eq!(status["result"], "success", "{status:#}");
    assert_eq!(status["trigger"], "api");
    assert_eq!(status["id"], run_id);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    reader.join().unwrap();

    let o = Command::new(BIN)
        .args(["history", "--config", &config, "--format", "json"])
        .envs(envs(&sim))
        .env("ADMIN", ADMIN)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let runs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        runs.as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == run_id && r["trigger"] == "api"),
        "{runs:#}"
    );
}

/// `history` and `audit` read the local state only: they work without the
/// daemon's secrets (KCR keys, `admin_token`) in the environment, which the
/// config names; commands that talk to KCR still require them.
#[tokio::test(flavor = "multi_thread")]
async fn history_and_audit_need_none_of_the_daemons_secrets() {
    let sim = sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path());
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nadmin_token = { env = \"ADMIN\" }",
    );
    std::fs::write(&config, text).unwrap();
    let mut apply = Command::new(BIN);
    apply
        .args(["apply", "retention", "--yes", "--config", &config])
        .envs(envs(&sim))
        .env("ADMIN", "admin-token-for-history-0123456789")
        .env_remove("KCR_HOUSEKEEPER_LOG");
    let o = std::thread::spawn(move || apply.output().unwrap())
        .join()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let bare = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env_remove("AK")
            .env_remove("SK")
            .env_remove("ADMIN")
            .env_remove("KCR_HOUSEKEEPER_LOG")
            .output()
            .unwrap()
    };
    let o = bare(&["history", "--config", &config, "--format", "json"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let runs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(runs[0]["job"], "retention");
    assert_eq!(runs[0]["trigger"], "cli");
    let o = bare(&["audit", "--config", &config]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("2 records"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // A command that talks to KCR still needs them, and says which.
    let o = bare(&["plan", "retention", "--config", &config]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("environment variable SK is not set")
            && err.contains("environment variable ADMIN is not set"),
        "{err}"
    );
}

/// Issue 12 item 5: Ctrl-C during a one-shot `apply namespaces` stops at
/// the next change boundary: exit 130, `history` lists it as a cancelled
/// `cli` run, every change the registry applied is audited `applied`, none
/// is left `started`, and the namespaces not reached are untouched.
#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_during_apply_namespaces_leaves_a_cancelled_cli_run_in_history() {
    let sim = common::sim_with_latency(std::time::Duration::from_millis(150)).await;
    let before = namespace_visibility(&sim);
    let private = before.values().filter(|p| !**p).count();
    assert!(
        private >= 4,
        "the demo world has private namespaces: {before:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "{}[namespaces]\nmode = \"dry-run\"\ndefault = \"public\"\nallow_make_public = true\n\
             max_changes_per_run = 100\n",
            demo_head(&sim, dir.path())
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let apply = demo_bin(&sim, &["apply", "namespaces", "--yes", "--config", config]);
    let o = ctrl_c_after(&sim, apply, "ModifyNamespaceType").await;
    assert_eq!(o.status.code(), Some(130), "{}", text(&o));

    let changed = sim
        .requests()
        .iter()
        .filter(|e| e.code == "OK" && e.action.as_deref() == Some("ModifyNamespaceType"))
        .count();
    assert!(
        (1..private).contains(&changed),
        "stopped part-way: {changed} of {private}"
    );
    let after = namespace_visibility(&sim);
    let made_public = before.iter().filter(|(ns, p)| !**p && after[*ns]).count();
    assert_eq!(made_public, changed, "{before:?} → {after:?}");

    let history = output(demo_bin(
        &sim,
        &["history", "--format", "json", "--config", config],
    ));
    let audit = output(demo_bin(
        &sim,
        &["audit", "--format", "json", "--config", config],
    ));
    let records = assert_cancelled_cli_run(&history, &audit, "namespaces");
    let applied = records.iter().filter(|r| r["outcome"] == "applied").count();
    assert_eq!(applied, changed, "{records:#?}");
}
