//! `doctor` (issue 13 #5) through the real binary against the simulator:
//! ✔ everywhere on a healthy setup (exit 0); each broken thing a ✘ with its
//! one-line fix and exit 1 — a closed external endpoint (naming
//! DescribeExternalEndpoint's status), a key missing a read permission, a
//! bad secret, a prepaid instance about to expire, an unwritable state path.

mod common;

use common::*;
use kcr_housekeeper::sim::{SimOptions, Simulator};
use secrecy::ExposeSecret;
use serde_json::Value;
use std::path::Path;
use std::process::Output;

const BIN: &str = env!("CARGO_BIN_EXE_kcr-housekeeper");

/// Retention, namespaces, quota storage and one managed token, all dry-run.
fn write_config(sim: &Simulator, dir: &Path, ak: &str, state: &Path) -> String {
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[kcr]\nendpoint = \"{endpoint}\"\naccess_key_id = \"{ak}\"\nsecret_access_key = {{ env = \"TEST_SK\" }}\n\
             [[instances]]\nid = \"{DEMO_INSTANCE}\"\nname = \"demo\"\nregistry = \"{registry}\"\n\
             [state]\npath = \"{state}\"\n\
             [retention]\n[[retention.rules]]\nname = \"ci\"\ntags = [\"pr-*\"]\nolder_than = \"14d\"\n\
             [namespaces]\n[quota]\nstorage = \"namespace\"\n\
             [tokens]\nmode = \"dry-run\"\n[[tokens.managed]]\nname = \"ci-pull\"\ninstance = \"demo\"\nlifetime = \"30d\"\n\
             sinks = [ {{ kind = \"file\", path = \"{sink}\", format = \"env\" }} ]\n",
            endpoint = sim.endpoint(),
            registry = sim.endpoint().trim_start_matches("http://"),
            state = state.display(),
            sink = dir.join("ci-pull.env").display(),
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

fn doctor(config: &str, sk: &str) -> (Output, Value) {
    let (config, sk) = (config.to_owned(), sk.to_owned());
    let out = std::thread::spawn(move || {
        std::process::Command::new(BIN)
            .args(["doctor", "--format", "json", "--config", &config])
            .env("TEST_SK", sk)
            .output()
            .unwrap()
    })
    .join()
    .unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, json)
}

/// The check named `name` of the first instance.
fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["instances"][0]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"].as_str().unwrap().starts_with(name))
        .unwrap_or_else(|| panic!("no check {name}: {report}"))
}

/// The check of this host named `name`.
fn local_check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["local"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {report}"))
}

fn failures(report: &Value) -> Vec<String> {
    report["instances"][0]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .chain(report["local"].as_array().unwrap())
        .filter(|c| c["status"] == "fail")
        .map(|c| c["check"].as_str().unwrap().to_owned())
        .collect()
}

/// [`write_config`] with the state in `dir`, its text changed by `edit`.
fn write_config_editing(
    sim: &Simulator,
    dir: &Path,
    ak: &str,
    edit: impl FnOnce(String) -> String,
) -> String {
    let cfg = write_config(sim, dir, ak, &dir.join("state.db"));
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, edit(text)).unwrap();
    cfg
}

fn admin(sim: &Simulator) -> (String, String) {
    let c = sim.credentials();
    (
        c.access_key_id.clone(),
        c.secret_access_key.expose_secret().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_setup_passes_every_check() {
    let sim = sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (ak, sk) = admin(&sim);
    let cfg = write_config(&sim, dir.path(), &ak, &dir.path().join("new/state.db"));
    let (out, report) = doctor(&cfg, &sk);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert_eq!(report["ok"], true);
    assert!(failures(&report).is_empty());
    for name in [
        "credentials",
        "instance",
        "expiry",
        "permission kcrs:DescribeNamespace",
        "permission kcrs:DescribeRepository",
        "permission kcrs:DescribeImages",
        "permission kcrs:DescribeInstanceToken",
        "server-side retention",
        "registry",
        "quota",
    ] {
        assert_eq!(check(&report, name)["status"], "ok", "{name}: {report}");
    }
    let registry = check(&report, "registry");
    assert!(
        registry["detail"]
            .as_str()
            .unwrap()
            .contains("reachable: an anonymous probe"),
        "{registry}"
    );
    assert!(
        check(&report, "quota")["detail"]
            .as_str()
            .unwrap()
            .contains("repositories 7/20"),
        "{report}"
    );
    assert_eq!(report["local"][0]["status"], "ok", "{report}");
    // The table form: one ✔ line per check.
    let table = std::process::Command::new(BIN)
        .args(["check", "--online", "--config", &cfg])
        .env("TEST_SK", &sk)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert_eq!(table.status.code(), Some(0), "{text}");
    assert!(
        text.contains("✔ credentials") && !text.contains('✘'),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_external_endpoint_fails_the_registry_check_with_its_status_and_fix() {
    let sim = sim(SimOptions::default()).await;
    sim.world(|w| w.instances[0].external_endpoint.opened = false);
    let dir = tempfile::tempdir().unwrap();
    let (ak, sk) = admin(&sim);
    let cfg = write_config(&sim, dir.path(), &ak, &dir.path().join("state.db"));
    let (out, report) = doctor(&cfg, &sk);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert_eq!(
        failures(&report),
        vec![format!(
            "registry {} reachable",
            sim.endpoint().trim_start_matches("http://")
        )]
    );
    let c = check(&report, "registry");
    let detail = c["detail"].as_str().unwrap();
    assert!(detail.contains("HTTP 403"), "{detail}");
    assert!(
        detail.contains("DescribeExternalEndpoint: Closed"),
        "{detail}"
    );
    assert!(
        c["fix"].as_str().unwrap().contains("external endpoint"),
        "{c}"
    );
    // Nothing was created while checking.
    assert!(
        !sim.requests()
            .iter()
            .any(|r| r.action.as_deref() == Some("CreateInstanceToken"))
    );
}

/// The key `AKDOCTOR` (secret `doctor-secret`) with the statements of the
/// shipped deploy/iam/read-only.json, its text passed through `edit` first,
/// less the action `drop`.
fn read_only_key(
    edit: impl Fn(String) -> String,
    drop: Option<&str>,
) -> kcr_housekeeper::sim::iam::Policies {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/iam/read-only.json"
    ))
    .unwrap();
    let doc: Value = serde_json::from_str(&edit(text)).unwrap();
    let statements: Vec<Value> = doc["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let actions: Vec<&Value> = s["Action"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|a| drop.is_none_or(|d| *a != d))
                .collect();
            serde_json::json!({"effect": "Allow", "actions": actions, "resources": [s["Resource"]]})
        })
        .collect();
    kcr_housekeeper::sim::iam::Policies::parse(
        &serde_json::json!({"AKDOCTOR": {"secret": "doctor-secret", "user": "doc", "statements": statements}})
            .to_string(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_read_permission_is_named_with_the_policy_that_grants_it() {
    // Everything read-only but DescribeInstanceToken.
    let policies = read_only_key(|text| text, Some("kcrs:DescribeInstanceToken"));
    let sim = sim(SimOptions {
        policies: Some(policies),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&sim, dir.path(), "AKDOCTOR", &dir.path().join("state.db"));
    let (out, report) = doctor(&cfg, "doctor-secret");
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert_eq!(
        failures(&report),
        vec!["permission kcrs:DescribeInstanceToken".to_string()]
    );
    let c = check(&report, "permission kcrs:DescribeInstanceToken");
    assert!(
        c["detail"].as_str().unwrap().contains("AccessDenied"),
        "{c}"
    );
    assert!(
        c["fix"]
            .as_str()
            .unwrap()
            .contains("grant kcrs:DescribeInstanceToken"),
        "{c}"
    );
    // The key itself is fine.
    assert_eq!(check(&report, "credentials")["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_expiry_and_an_unwritable_state_path_each_fail() {
    let sim = sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (ak, sk) = admin(&sim);

    // A wrong secret: credentials ✘, nothing else asked of the API.
    let cfg = write_config(&sim, dir.path(), &ak, &dir.path().join("state.db"));
    let (out, report) = doctor(&cfg, "not-the-secret");
    assert_eq!(out.status.code(), Some(1), "{report}");
    let c = check(&report, "credentials");
    assert_eq!(c["status"], "fail");
    assert!(
        c["detail"]
            .as_str()
            .unwrap()
            .contains("SignatureDoesNotMatch"),
        "{c}"
    );
    assert!(c["fix"].as_str().unwrap().contains("access_key_id"), "{c}");

    // A prepaid instance five days from its end, and a state path under a file.
    let now_sim = sim.now();
    sim.world(|w| {
        let i = &mut w.instances[0];
        i.charge_type = "Monthly".into();
        i.expired_time = Some(now_sim + chrono::Duration::days(5));
    });
    std::fs::write(dir.path().join("file"), "").unwrap();
    let cfg = write_config(&sim, dir.path(), &ak, &dir.path().join("file/state.db"));
    let (out, report) = doctor(&cfg, &sk);
    assert_eq!(out.status.code(), Some(1), "{report}");
    let e = check(&report, "expiry");
    assert_eq!(e["status"], "fail", "{e}");
    let detail = e["detail"].as_str().unwrap();
    assert!(
        detail.contains("4 days left") || detail.contains("5 days left"),
        "{detail}"
    );
    assert!(e["fix"].as_str().unwrap().contains("renew"), "{e}");
    assert_eq!(report["local"][0]["status"], "fail", "{report}");
    let fix = report["local"][0]["fix"].as_str().unwrap();
    assert!(fix.contains("[state] path"), "{report}");
    // Review finding 9: says what is wrong with the path, not just "create it".
    assert!(fix.contains("is a file, not a directory"), "{fix}");
}

/// Review 7: a state file that is writable but damaged passed ("state path
/// writable", exit 0) while every apply and the daemon refuse it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_state_file_fails_the_state_check() {
    let sim = sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (ak, sk) = admin(&sim);
    let state = dir.path().join("state.db");
    std::fs::write(&state, vec![0x5a_u8; 8192]).unwrap();
    let cfg = write_config(&sim, dir.path(), &ak, &state);
    let (out, report) = doctor(&cfg, &sk);
    assert_eq!(out.status.code(), Some(1), "{report}");
    let c = &report["local"][0];
    assert_eq!(c["status"], "fail", "{report}");
    assert!(c["detail"].as_str().unwrap().contains("damaged"), "{c}");
    assert!(c["fix"].as_str().unwrap().contains("backup"), "{c}");
    // The check reads only: the file is as it was.
    assert_eq!(std::fs::read(&state).unwrap(), vec![0x5a_u8; 8192]);
}

/// Review 7: a `[retention.in_use]` source that fails blocks every retention
/// run, but doctor did not read it and said all checks passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_in_use_source_fails_doctor_and_a_working_one_passes() {
    let sim = sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (ak, sk) = admin(&sim);
    let list = dir.path().join("images.txt");
    let with_source = |path: &Path| {
        let source = format!("\n[retention.in_use]\nfile = \"{}\"\n", path.display());
        move |text: String| text + &source
    };
    let cfg = write_config_editing(&sim, dir.path(), &ak, with_source(&list));
    let (out, report) = doctor(&cfg, &sk);
    assert_eq!(out.status.code(), Some(1), "{report}");
    let c = local_check(&report, "in-use sources");
    assert_eq!(c["status"], "fail", "{c}");
    assert!(c["detail"].as_str().unwrap().contains("images.txt"), "{c}");
    assert!(c["fix"].as_str().unwrap().contains("blocked"), "{c}");
    // The file now names one image: the check passes, and doctor with it.
    std::fs::write(&list, "demo.ksyunkcr.com/apps/web:1.0\n").unwrap();
    let (out, report) = doctor(&cfg, &sk);
    assert_eq!(out.status.code(), Some(0), "{report}");
    let c = local_check(&report, "in-use sources");
    assert_eq!(c["status"], "ok", "{c}");
    assert_eq!(c["detail"], "file: 1 image reference", "{c}");
}

/// Review finding: on the shipped demo config doctor probed the demo's
/// made-up registry host on the internet and failed; the embedded simulator
/// serves the registry, as the rotation knows.
#[test]
fn doctor_passes_on_the_shipped_demo_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kcr-housekeeper"))
        .args(["doctor", "--config"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml"))
        .current_dir(dir.path())
        .env_remove("KCR_HOUSEKEEPER_FAILPOINT")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("http://127.0.0.1:"), "{stdout}");
    assert!(!stdout.contains("https://demo.ksyunkcr.com"), "{stdout}");
}

/// Review finding 4: doctor probed DescribeImages in the first namespace
/// only, so a key that may list images in `apps` alone passed while every
/// other namespace's inventory would be refused. Every namespace in scope is
/// probed; the refusing ones are named; a declared scope makes it pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_namespace_in_scope_is_probed_and_the_refusing_ones_are_named() {
    let policies = read_only_key(
        |text| {
            let edited = text.replace(
                "\"krn:ksc:kcrs:*:*:repository/*\"",
                "\"krn:ksc:kcrs:*:*:repository/*/apps/*\"",
            );
            assert_ne!(edited, text);
            edited
        },
        None,
    );
    let sim = sim(SimOptions {
        policies: Some(policies),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&sim, dir.path(), "AKDOCTOR", &dir.path().join("state.db"));
    let (out, report) = doctor(&cfg, "doctor-secret");
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert_eq!(
        failures(&report),
        vec!["permission kcrs:DescribeImages".to_string()],
        "{report}"
    );
    let c = check(&report, "permission kcrs:DescribeImages");
    let detail = c["detail"].as_str().unwrap();
    // `apps` sorts first: the old probe stopped there and passed.
    for ns in ["ci", "mirrors", "publicdocs", "sandbox"] {
        assert!(detail.contains(ns), "{ns} not named: {detail}");
    }
    assert!(!detail.contains("apps"), "{detail}");
    assert!(detail.contains("AccessDenied"), "{detail}");
    let fix = c["fix"].as_str().unwrap();
    assert!(
        fix.contains("grant kcrs:DescribeImages") && fix.contains("scope"),
        "{fix}"
    );
    // One DescribeImages probe per namespace holding a needed repository.
    let probed: std::collections::BTreeSet<String> = sim
        .requests()
        .into_iter()
        .filter(|r| r.action.as_deref() == Some("DescribeImages"))
        .map(|r| r.params["Namespace"].clone())
        .collect();
    assert_eq!(probed.len(), 5, "{probed:?}");

    // The same key with its scope declared: only `apps` is probed, and it passes.
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "name = \"demo\"\n",
        "name = \"demo\"\nscope = [\"apps/*\"]\n",
    );
    std::fs::write(&cfg, text).unwrap();
    let (out, report) = doctor(&cfg, "doctor-secret");
    assert_eq!(out.status.code(), Some(0), "{report}");
    let c = check(&report, "permission kcrs:DescribeImages");
    assert_eq!(c["status"], "ok", "{c}");
    assert!(
        c["detail"]
            .as_str()
            .unwrap()
            .contains("probed one repository in each of the 1 namespaces"),
        "{c}"
    );
}

/// Review finding 10: with `[quota]` off, doctor still called
/// DescribeInstanceUsage and judged the usage. Now it says it did not check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_check_is_skipped_with_a_note_when_quota_is_off() {
    let sim = sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (ak, sk) = admin(&sim);
    let cfg = write_config_editing(&sim, dir.path(), &ak, |t| {
        let t = t.replace("[quota]\nstorage = \"namespace\"\n", "");
        assert!(!t.contains("[quota]"));
        t
    });
    // Usage over the warning ratio: a quota check would fail.
    sim.world(|w| w.instances[0].repo_quota = 7);
    let (out, report) = doctor(&cfg, &sk);
    assert_eq!(out.status.code(), Some(0), "{report}");
    let c = check(&report, "quota");
    assert_eq!(c["status"], "info", "{c}");
    assert!(
        c["detail"]
            .as_str()
            .unwrap()
            .contains("[quota] is not enabled"),
        "{c}"
    );
    assert_eq!(sim.count("DescribeInstanceUsage"), 0);
}

/// A loopback server that accepts connections and never answers.
async fn silent() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    addr
}

/// A loopback server that answers every request with a 301 to `location`.
async fn redirecting(location: &'static str) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                let _ = conn.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 301 Moved Permanently\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = conn.write_all(reply.as_bytes()).await;
            });
        }
    });
    addr
}

/// Review finding 9: a registry or API that redirects, or that never
/// answers, got the fix for a closed external endpoint (or for bad
/// credentials: a followed redirect broke the signature). Each now gets its
/// own fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_and_timeouts_each_get_their_own_fix() {
    let sim = sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (ak, sk) = admin(&sim);
    let cfg = write_config(&sim, dir.path(), &ak, &dir.path().join("state.db"));
    let original = std::fs::read_to_string(&cfg).unwrap();
    let sim_host = sim.endpoint().trim_start_matches("http://").to_string();
    let with = |from: &str, to: &str| {
        let text = original.replace(from, to);
        assert_ne!(text, original);
        std::fs::write(&cfg, text).unwrap();
    };

    // The registry host redirects (a console URL, a load balancer's http→https).
    let moved = redirecting("https://console.example/kcr").await;
    with(
        &format!("registry = \"{sim_host}\""),
        &format!("registry = \"{moved}\""),
    );
    let (out, report) = doctor(&cfg, &sk);
    assert_eq!(out.status.code(), Some(1), "{report}");
    let c = check(&report, "registry");
    assert_eq!(c["status"], "fail", "{c}");
    let detail = c["detail"].as_str().unwrap();
    assert!(
        detail.contains("HTTP 301") && detail.contains("https://console.example/kcr"),
        "{detail}"
    );
    let fix = c["fix"].as_str().unwrap();
    assert!(
        fix.contains("[[instances]] registry") && fix.contains("redirect"),
        "{fix}"
    );
    assert!(
        !fix.contains("外网访问"),
        "not an access-policy problem: {fix}"
    );

    // The registry host drops the traffic.
    let dropped = silent().await;
    with(
        &format!("registry = \"{sim_host}\""),
        &format!("registry = \"{dropped}\""),
    );
    let started = std::time::Instant::now();
    let (out, report) = doctor(&cfg, &sk);
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1), "{report}");
    let c = check(&report, "registry");
    assert!(c["detail"].as_str().unwrap().contains("no answer"), "{c}");
    let fix = c["fix"].as_str().unwrap();
    assert!(fix.contains("egress") && fix.contains("443"), "{fix}");

    // The API endpoint redirects: named as such, not as refused credentials.
    let api_moved = redirecting("https://kcrs.api.example/").await;
    with(
        &format!("endpoint = \"{}\"", sim.endpoint()),
        &format!("endpoint = \"http://{api_moved}\""),
    );
    let (out, report) = doctor(&cfg, &sk);
    assert_eq!(out.status.code(), Some(1), "{report}");
    let c = check(&report, "API reachable");
    assert!(c["detail"].as_str().unwrap().contains("HTTP 301"), "{c}");
    assert!(c["fix"].as_str().unwrap().contains("redirect"), "{c}");
    assert!(
        !report.to_string().contains("SignatureDoesNotMatch"),
        "{report}"
    );

    // The API endpoint never answers.
    let api_dropped = silent().await;
    with(
        &format!("endpoint = \"{}\"", sim.endpoint()),
        &format!("endpoint = \"http://{api_dropped}\"\ntimeout = \"1s\""),
    );
    let started = std::time::Instant::now();
    let (out, report) = doctor(&cfg, &sk);
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(1), "{report}");
    let c = check(&report, "API reachable");
    assert!(c["detail"].as_str().unwrap().contains("Timeout"), "{c}");
    assert!(c["fix"].as_str().unwrap().contains("[kcr] timeout"), "{c}");
}

/// Review 2 #4: an enabled server-side rule fails doctor only where it
/// blocks — an enforcing [retention] not allowed to share the namespace —
/// and the fix names `allow_server_side_rules`. Dry-run, or enforce with
/// `allow_server_side_rules = true`: ℹ, exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_side_rule_fails_only_an_enforce_that_is_not_allowed() {
    let sim = sim(SimOptions::default()).await;
    sim.world(|w| {
        w.instances[0]
            .namespaces
            .get_mut("apps")
            .unwrap()
            .retention_rules = vec![kcr_housekeeper::sim::world::RetentionRule {
            id: 11,
            disabled: false,
            registry_scope: "**".into(),
            rule_type: "byNum".into(),
            untagged: false,
            template: "latestPushedK".into(),
            tag_patten: None,
            param: Some(3),
        }]
    });
    let (ak, sk) = admin(&sim);
    for (settings, status, code) in [
        ("", "info", 0),
        (
            "mode = \"enforce\"\nallow_server_side_rules = true\n",
            "info",
            0,
        ),
        ("mode = \"enforce\"\n", "fail", 1),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config_editing(&sim, dir.path(), &ak, |t| {
            t.replace("[retention]\n", &format!("[retention]\n{settings}"))
        });
        let (out, report) = doctor(&cfg, &sk);
        let c = check(&report, "server-side retention");
        assert_eq!(c["status"], status, "{settings}: {c}");
        assert_eq!(out.status.code(), Some(code), "{settings}: {report}");
        assert!(c["detail"].as_str().unwrap().contains("apps (1)"), "{c}");
        if status == "fail" {
            assert!(
                c["fix"]
                    .as_str()
                    .unwrap()
                    .contains("allow_server_side_rules = true"),
                "{c}"
            );
        } else {
            assert!(c["fix"].is_null(), "{c}");
        }
    }
}

/// Review 2 #5: with quota relief on in enforce, doctor lists the mutations
/// relief needs (DeleteRepository, DeleteNamespace) and the policy that
/// grants them; without relief it lists none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relief_lists_the_permissions_it_needs_and_their_policy() {
    let sim = sim(SimOptions::default()).await;
    let (ak, sk) = admin(&sim);
    let relief_needs = |settings: &str| {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config_editing(&sim, dir.path(), &ak, |t| {
            t.replace("[retention]\n", &format!("[retention]\n{settings}"))
        });
        let (out, report) = doctor(&cfg, &sk);
        assert_eq!(out.status.code(), Some(0), "{settings}: {report}");
        report["instances"][0]["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == "quota relief enforce needs")
            .cloned()
    };
    let both = relief_needs(
        "mode = \"enforce\"\ndelete_empty_repositories = { older_than = \"30d\" }\ndelete_empty_namespaces = { older_than = \"30d\" }\n",
    )
    .expect("listed");
    assert_eq!(both["status"], "info", "{both}");
    let detail = both["detail"].as_str().unwrap();
    assert!(
        detail.contains("kcrs:DeleteRepository, kcrs:DeleteNamespace")
            && detail.contains("deploy/iam/quota-relief.json"),
        "{both}"
    );
    let repos =
        relief_needs("mode = \"enforce\"\ndelete_empty_repositories = { older_than = \"30d\" }\n")
            .expect("listed");
    assert!(
        !repos["detail"]
            .as_str()
            .unwrap()
            .contains("DeleteNamespace"),
        "{repos}"
    );
    assert!(relief_needs("mode = \"enforce\"\n").is_none());
    assert!(
        relief_needs("delete_empty_namespaces = { older_than = \"30d\" }\n").is_none(),
        "dry-run deletes nothing"
    );
}

/// Review 2 #10: `check --online --format json` prints the doctor's JSON
/// (alone on stdout; the offline summary goes to stderr), with doctor's
/// exit codes; `--format` without `--online` is a usage error (2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_online_has_the_json_form() {
    let sim = sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (ak, sk) = admin(&sim);
    let cfg = write_config(&sim, dir.path(), &ak, &dir.path().join("state.db"));
    let check = |args: &[&str], sk: &str| {
        let mut c = std::process::Command::new(BIN);
        c.arg("check").args(args).args(["--config", &cfg]);
        c.env("TEST_SK", sk);
        std::thread::spawn(move || c.output().unwrap())
            .join()
            .unwrap()
    };
    let out = check(&["--online", "--format", "json"], &sk);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(report["ok"], true, "{report}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(": OK"),
        "the offline summary on stderr"
    );
    // A bad secret: ✘ in the JSON, exit 1.
    let out = check(&["--online", "--format", "json"], "wrong-secret");
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    let out = check(&["--format", "json"], &sk);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--online"),
        "{out:?}"
    );
}
