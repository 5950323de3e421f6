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
