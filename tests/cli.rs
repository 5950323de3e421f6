//! The real binary: exit codes, messages and the first end-to-end commands.

mod common;

use common::*;
use kcr_housekeeper::sim::SimOptions;
use secrecy::ExposeSecret;
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_kcr-housekeeper");

fn run(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args)
        .env_remove("KSYUN_ACCESS_KEY_ID")
        .env_remove("KSYUN_SECRET_ACCESS_KEY")
        .env_remove("KCR_HOUSEKEEPER_CONFIG");
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().expect("binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn quota_on_the_embedded_demo() {
    let o = run(&["quota", "--config", "config/demo.toml"], &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(
        out.contains("demo      namespaces         8      10   80.0%"),
        "{out}"
    );
    assert!(
        out.contains("repositories       7      20   35.0%"),
        "{out}"
    );
    let o = run(
        &["quota", "--config", "config/demo.toml", "--format", "json"],
        &[],
    );
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = &doc["usage"];
    assert_eq!(rows[0]["used"], 8);
    assert_eq!(rows[0]["limit"], 10);
    assert_eq!(rows[1]["resource"], "repositories");
}

#[test]
fn config_from_the_environment_variable() {
    let o = run(
        &["quota"],
        &[("KCR_HOUSEKEEPER_CONFIG", "config/demo.toml")],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
}

#[test]
fn check_prints_jobs_and_three_fire_times() {
    let o = run(&["check", "--config", "config/demo.toml"], &[]);
    assert!(o.status.success());
    let out = text(&o.stdout);
    let job_lines: Vec<&str> = out.lines().filter(|l| l.contains("next:")).collect();
    assert_eq!(job_lines.len(), 4, "{out}");
    for l in job_lines {
        assert_eq!(l.matches(" UTC").count(), 3, "{l}");
    }
}

#[test]
fn invalid_config_exits_2_listing_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[kcr]\nendpoint = \"sim:demo\"\ntimeout = \"5 minutes\"\n[retention]\nmode = \"maybe\"\n",
    )
    .unwrap();
    let o = run(&["check", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    let p = path.display();
    assert!(err.contains(&format!("{p}:3:1: kcr.timeout:")), "{err}");
    assert!(err.contains(&format!("{p}:5:1: retention.mode:")), "{err}");
    assert!(
        err.contains("instances: at least one [[instances]] entry is required"),
        "{err}"
    );
    assert!(err.contains("3 errors in configuration"), "{err}");
}

#[test]
fn missing_credentials_exit_2_naming_the_variable() {
    let o = run(&["check", "--config", "config/example.toml"], &[]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(err.contains("KSYUN_ACCESS_KEY_ID is not set"), "{err}");
    assert!(err.contains("KSYUN_SECRET_ACCESS_KEY is not set"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    let o = run(&["frobnicate"], &[]);
    assert_eq!(o.status.code(), Some(2));
    let o = run(
        &[
            "sim",
            "--generate",
            "namespaces=x",
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("not a whole number"));
}

fn external_config(dir: &std::path::Path, endpoint: &str, key_id: &str) -> std::path::PathBuf {
    let path = dir.join("c.toml");
    std::fs::write(
        &path,
        format!(
            "[kcr]\nendpoint = \"{endpoint}\"\naccess_key_id = \"{key_id}\"\nsecret_access_key = {{ env = \"SIM_SK\" }}\n\
             [[instances]]\nid = \"{DEMO_INSTANCE}\"\nname = \"demo\"\nregistry = \"r\"\n"
        ),
    )
    .unwrap();
    path
}

#[tokio::test]
async fn api_errors_exit_1_with_action_status_code_and_request_id() {
    let sim = sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let creds = sim.credentials();
    let path = external_config(dir.path(), &sim.endpoint(), &creds.access_key_id);
    let cfg = path.to_str().unwrap().to_owned();
    let good = creds.secret_access_key.expose_secret().to_owned();
    let o = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || run(&["quota", "--config", &cfg], &[("SIM_SK", &good)])
    })
    .await
    .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = tokio::task::spawn_blocking(move || {
        run(
            &["quota", "--config", &cfg],
            &[("SIM_SK", "not-the-secret")],
        )
    })
    .await
    .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    let req_id = sim.requests().last().unwrap().request_id.clone();
    assert!(
        err.contains(&format!("DescribeInstanceUsage: HTTP 403 SignatureDoesNotMatch: The request signature we calculated does not match the signature you provided. (request id {req_id})")),
        "{err}"
    );
    assert!(!err.contains("not-the-secret"));
}

#[tokio::test]
async fn sim_command_serves_until_sigterm() {
    let mut child = Command::new(BIN)
        .args([
            "sim",
            "--listen",
            "127.0.0.1:0",
            "--generate",
            "namespaces=3,repos=2,images=5,seed=7",
        ])
        .env("KSYUN_ACCESS_KEY_ID", "AKLTcli")
        .env("KSYUN_SECRET_ACCESS_KEY", "cli-secret")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut first = String::new();
        BufReader::new(stdout).read_line(&mut first).unwrap();
        first
    })
    .await
    .unwrap();
    let endpoint = line
        .trim()
        .strip_prefix("listening on ")
        .expect("readiness line")
        .to_owned();
    assert!(endpoint.starts_with("http://127.0.0.1:"));
    let mut cfg = kcr_housekeeper::kcr::ClientConfig::new(
        &endpoint,
        kcr_housekeeper::kcr::Credentials::new("AKLTcli", "cli-secret"),
    );
    cfg.requests_per_second = 100.0;
    let client = kcr_housekeeper::kcr::Client::new(cfg).unwrap();
    let instances = client
        .list_all(kcr_housekeeper::kcr::DescribeInstance::default())
        .await
        .unwrap();
    assert_eq!(instances.len(), 1);
    let ns = client
        .list_all(kcr_housekeeper::kcr::DescribeNamespace::all(
            &instances[0].instance_id,
        ))
        .await
        .unwrap();
    assert_eq!(ns.len(), 3);
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "exits 0 on SIGTERM: {status}");
}

#[test]
fn sim_prints_generated_scenarios_deterministically() {
    let a = run(
        &[
            "sim",
            "--generate",
            "namespaces=2,repos=2,images=3,seed=9",
            "--print-scenario",
        ],
        &[],
    );
    let b = run(
        &[
            "sim",
            "--generate",
            "namespaces=2,repos=2,images=3,seed=9",
            "--print-scenario",
        ],
        &[],
    );
    assert!(a.status.success());
    assert_eq!(a.stdout, b.stdout);
    let v: serde_json::Value = serde_json::from_slice(&a.stdout).unwrap();
    assert_eq!(v["instances"][0]["namespaces"].as_array().unwrap().len(), 2);
}

#[test]
fn check_warns_about_rules_that_can_never_match() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[kcr]\nendpoint = \"sim:demo\"\n[[instances]]\nid = \"i\"\nname = \"demo\"\nregistry = \"r\"\n[retention]\n\
         [[retention.rules]]\nname = \"upper\"\nnamespaces = [\"Apps\"]\nolder_than = \"1d\"\n\
         [[retention.rules]]\nname = \"self-excluded\"\nrepositories = [\"web\"]\nexclude_repositories = [\"web\"]\nolder_than = \"1d\"\n\
         [[retention.rules]]\nname = \"fine\"\nnamespaces = [\"apps\"]\nolder_than = \"1d\"\n",
    )
    .unwrap();
    let o = run(&["check", "--config", path.to_str().unwrap()], &[]);
    assert!(o.status.success(), "warnings do not fail check");
    let out = text(&o.stdout);
    assert!(
        out.contains("warning: retention rule \"upper\" matches nothing"),
        "{out}"
    );
    assert!(
        out.contains("warning: retention rule \"self-excluded\" matches nothing"),
        "{out}"
    );
    assert!(!out.contains("\"fine\""), "{out}");
}

#[test]
fn plan_and_apply_namespaces_on_the_embedded_demo() {
    let dir = tempfile::tempdir().unwrap();
    let write = |cap: u32| {
        let path = dir.path().join(format!("c{cap}.toml"));
        std::fs::write(
            &path,
            format!(
                "[kcr]\nendpoint = \"sim:demo\"\n[[instances]]\nid = \"{DEMO_INSTANCE}\"\nname = \"demo\"\nregistry = \"r\"\n\
                 [state]\npath = \"{}\"\n\
                 [namespaces]\nmode = \"enforce\"\nmax_changes_per_run = {cap}\nrules = [ {{ match = \"public*\", visibility = \"public\" }} ]\n",
                dir.path().join("state.db").display()
            ),
        )
        .unwrap();
        path
    };
    let ok = write(10);
    let o = run(
        &[
            "plan",
            "namespaces",
            "--config",
            ok.to_str().unwrap(),
            "--format",
            "json",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let sandbox = v["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["namespace"] == "sandbox")
        .unwrap();
    assert_eq!(sandbox["drift"], true);
    assert_eq!(sandbox["change"], "apply");
    let o = run(
        &[
            "apply",
            "namespaces",
            "--yes",
            "--config",
            ok.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("demo/sandbox → private: changed"),
        "{}",
        text(&o.stdout)
    );
    // Over the cap: exit 3, nothing changed.
    let capped = write(0);
    let o = run(
        &[
            "apply",
            "namespaces",
            "--yes",
            "--config",
            capped.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("over max_changes_per_run 0"),
        "{}",
        text(&o.stderr)
    );
}
