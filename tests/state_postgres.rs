//! The PostgreSQL state backend through the real binary: `state copy` from
//! a SQLite file, and the daemon keeping its runs in PostgreSQL (metrics,
//! `history`), with the URL (a secret) never in its output.
//! The PostgreSQL tests need `KCR_TEST_PG_URL` (see tests/common/pg.rs).

mod common;

use common::*;
use kcr_housekeeper::state::{AuditStatus, Mutation, RunResult, Store};
use secrecy::ExposeSecret;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_kcr-housekeeper");
const URL_ENV: &str = "KCR_HOUSEKEEPER_DATABASE_URL";

fn run(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove(URL_ENV)
        .env_remove("KCR_HOUSEKEEPER_CONFIG");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let o = cmd.output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc)
}

/// A SQLite state with a finished run, an audit record, a report and the install id.
fn sqlite_state(path: &std::path::Path) -> String {
    let s = Store::open(path).unwrap();
    let run = s.start_run("retention", "schedule", now()).unwrap();
    s.finish_run(run, now(), RunResult::Success, "ok", None)
        .unwrap();
    s.audit_unsent(
        &Mutation {
            job: "retention",
            run_id: Some(run),
            instance: "prod",
            action: "delete_tag",
            target: "apps/web:pr-1",
            detail: "",
        },
        AuditStatus::Applied,
        None,
        now(),
    )
    .unwrap();
    s.put_report("retention", Some(run), now(), "json", b"{}")
        .unwrap();
    s.install_id().unwrap()
}

#[test]
fn state_copy_usage_errors_exit_2_and_never_echo_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("state.db");
    sqlite_state(&file);
    let from = file.to_str().unwrap();
    let (code, _, err) = run(&["state", "copy", "--from", from], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(URL_ENV), "{err}");
    let (code, _, err) = run(
        &["state", "copy", "--from", "/nonexistent/state.db"],
        &[(URL_ENV, "postgresql://u:hunter2pass@127.0.0.1:1/x")],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no such state file"), "{err}");
    assert!(
        !std::path::Path::new("/nonexistent/state.db").exists(),
        "no file created"
    );
    let (code, _, err) = run(
        &[
            "state",
            "copy",
            "--from",
            from,
            "--to",
            "mysql://u:hunter2pass@h/x",
        ],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(!err.contains("hunter2pass"), "{err}");
    // Unreachable: the work failed (1); the message names where, not the password.
    let (code, _, err) = run(
        &["state", "copy", "--from", from],
        &[(
            URL_ENV,
            "postgresql://u:hunter2pass@127.0.0.1:1/kcr?connect_timeout=2",
        )],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("postgresql://127.0.0.1:1/kcr"), "{err}");
    assert!(!err.contains("hunter2pass"), "{err}");
}

#[test]
fn state_copy_moves_a_sqlite_state_into_postgresql_once() {
    let Some(db) = pg::Db::create() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("state.db");
    let install_id = sqlite_state(&file);
    let from = file.to_str().unwrap();
    let (code, out, err) = run(
        &["state", "copy", "--from", from],
        &[(URL_ENV, db.url.as_str())],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("row counts verified"), "{out}");
    assert!(out.contains(&format!("/{}", db.name)), "{out}");
    assert_eq!(db.scalar("SELECT count(*) FROM runs").as_deref(), Some("1"));
    assert_eq!(
        db.scalar("SELECT count(*) FROM audit").as_deref(),
        Some("1")
    );
    assert_eq!(
        db.scalar("SELECT value FROM meta WHERE key = 'install_id'"),
        Some(install_id),
        "the installation keeps its id (its tokens stay its own)"
    );
    assert_eq!(
        db.scalar("SELECT max(version) FROM schema_version")
            .as_deref(),
        Some(kcr_housekeeper::state::SCHEMA_VERSION.to_string().as_str())
    );
    // Again: the target is not empty; refused, nothing added.
    let (code, _, err) = run(
        &["state", "copy", "--from", from, "--to", db.url.as_str()],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(db.scalar("SELECT count(*) FROM runs").as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_keeps_its_runs_in_postgresql() {
    let Some(db) = pg::Db::create() else { return };
    let sim = common::sim(Default::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[kcr]\nendpoint = \"{}\"\naccess_key_id = \"{}\"\nsecret_access_key = {{ env = \"TEST_SK\" }}\n\
             [[instances]]\nid = \"{DEMO_INSTANCE}\"\nname = \"demo\"\n\
             [server]\nlisten = \"127.0.0.1:0\"\n\
             [state]\nurl = {{ env = \"{URL_ENV}\" }}\n\
             [scheduler]\njitter = \"0s\"\nrun_on_start = true\n[log]\nformat = \"json\"\nlevel = \"info\"\n\
             [quota]\nschedule = \"0 0 0 1 1 *\"\n",
            sim.endpoint(),
            sim.credentials().access_key_id,
        ),
    )
    .unwrap();
    let sk = sim
        .credentials()
        .secret_access_key
        .expose_secret()
        .to_owned();
    let url = db.url.clone();
    let cfg = config.clone();
    let (code, logs, metrics) = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(BIN)
            .args(["run", "--config", cfg.to_str().unwrap()])
            .env("TEST_SK", &sk)
            .env(URL_ENV, &url)
            .env_remove("KCR_HOUSEKEEPER_LOG")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut logs = String::new();
        let mut listen = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(line) = rx.recv_timeout(left) else {
                break;
            };
            logs.push_str(&line);
            logs.push('\n');
            if line.contains("kcr-housekeeper ready") {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                listen = v["listen"].as_str().map(str::to_owned);
            }
            if line.contains("job run finished") {
                break;
            }
        }
        let listen = listen.unwrap_or_else(|| panic!("daemon not ready:\n{logs}"));
        let metrics = reqwest::blocking::get(format!("http://{listen}/metrics"))
            .unwrap()
            .text()
            .unwrap();
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let status = child.wait().unwrap();
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            logs.push_str(&line);
            logs.push('\n');
        }
        (status.code(), logs, metrics)
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{logs}");
    assert!(
        metrics.contains("kcr_housekeeper_state_backend_up{backend=\"postgresql\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        db.scalar("SELECT result FROM runs WHERE job = 'quota'")
            .as_deref(),
        Some("success"),
        "{logs}"
    );
    // The URL (and any password in it) is never logged.
    let parsed: tokio_postgres::Config = db.url.parse().unwrap();
    assert!(!logs.contains(&db.url), "{logs}");
    if let Some(pw) = parsed.get_password() {
        assert!(!logs.contains(std::str::from_utf8(pw).unwrap()), "{logs}");
    }
    // A one-shot command reads the same state.
    let (code, out, err) = run(
        &["history", "--config", config.to_str().unwrap()],
        &[("TEST_SK", "x"), (URL_ENV, db.url.as_str())],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("quota") && out.contains("success"), "{out}");
}

/// Review finding 6 (Step 10): `history` and `apply` on an unreachable
/// PostgreSQL state fail with exit 1 (a runtime dependency failed, not
/// usage) and say why (the refused connection), never the password.
#[tokio::test]
async fn history_and_apply_on_an_unreachable_database_exit_1_with_the_cause() {
    let sim = sim(Default::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}[retention]\nmode = \"enforce\"\nmin_age = \"1h\"\n\
             [[retention.rules]]\nname = \"all\"\ntags = [\"*\"]\nkeep_latest = 1\n",
            demo_head_pg(&sim, dir.path())
        ),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    for args in [
        vec!["history", "--config", cfg],
        vec!["apply", "retention", "--yes", "--config", cfg],
    ] {
        let mut cmd = demo_bin(&sim, &args);
        cmd.env(
            URL_ENV,
            "postgresql://u:hunter2pass@127.0.0.1:1/kcr?connect_timeout=2",
        );
        let o = output(cmd);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("postgresql://127.0.0.1:1/kcr"), "{err}");
        assert!(err.to_lowercase().contains("refused"), "{args:?}: {err}");
        assert!(!err.contains("hunter2pass"), "{err}");
    }
}
