//! Least privilege shipped (issue 13 #10): each Kingsoft IAM policy in
//! `deploy/iam/` is run, exactly as written (translated to the simulator's
//! `--policies` form), against the simulator with the commands of its mode.
//! Sufficient: every command succeeds and IAM refuses nothing. Minimal:
//! every action the policy allows is one the mode called, and a policy
//! without any one of them makes the mode fail.

mod common;

use common::*;
use kcr_housekeeper::sim::iam::Policies;
use kcr_housekeeper::sim::{SimOptions, Simulator};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

const AK: &str = "AKLEASTPRIVILEGE";
const SK: &str = "least-privilege-secret";

/// A policy file of `deploy/iam/`.
fn policy(name: &str) -> Value {
    let path = format!("{}/deploy/iam/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A string or a list of strings, as IAM policies write `Action` and `Resource`.
fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .map(|s| s.as_str().expect("a string").to_owned())
            .collect(),
        other => panic!("expected a string or a list: {other}"),
    }
}

/// Every action the policy allows. The shipped policies name actions one by
/// one (no wildcards), so that this set is exactly what they grant.
fn allowed(doc: &Value) -> BTreeSet<String> {
    assert_eq!(doc["Version"], "2015-11-01");
    let mut out = BTreeSet::new();
    for s in doc["Statement"].as_array().unwrap() {
        assert_eq!(s["Effect"], "Allow", "{s}");
        for a in strings(&s["Action"]) {
            assert!(a.starts_with("kcrs:") && !a.contains('*'), "{a}");
            out.insert(a);
        }
    }
    out
}

/// The Kingsoft policy document as the simulator's principal for [`AK`],
/// without the action `removed`.
fn principal(doc: &Value, removed: Option<&str>) -> Policies {
    let statements: Vec<Value> = doc["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let actions: Vec<String> = strings(&s["Action"])
                .into_iter()
                .filter(|a| Some(a.as_str()) != removed)
                .collect();
            json!({"effect": s["Effect"], "actions": actions, "resources": strings(&s["Resource"])})
        })
        .filter(|s| !s["actions"].as_array().unwrap().is_empty())
        .collect();
    let text = json!({AK: {"secret": SK, "user": "housekeeper", "statements": statements}});
    Policies::parse(&text.to_string()).unwrap()
}

/// The retention rules: they condemn whole images and single tags in the demo.
const RETENTION: &str = r#"
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

/// The tokens section: short overlap and delete_after, so that runs 600 ms
/// apart rotate, disable the old token and delete it.
fn tokens(dir: &Path, mode: &str) -> String {
    format!(
        "[tokens]\nmode = \"{mode}\"\nlist_lag = \"500ms\"\n[[tokens.managed]]\nname = \"ci-pull\"\ninstance = \"demo\"\nlifetime = \"30d\"\n\
         rotate_before = \"10d\"\noverlap = \"500ms\"\ndelete_after = \"500ms\"\n\
         sinks = [ {{ kind = \"file\", path = \"{}\", format = \"env\" }} ]\n",
        dir.join("ci-pull.env").display()
    )
}

/// One mode: its policy file, its config (after `[kcr]` and `[[instances]]`)
/// and the commands it runs, `pause` apart.
struct Mode {
    policy: &'static str,
    /// Policy files the mode needs besides `policy` (their statements are
    /// added to it).
    with: &'static [&'static str],
    /// Prepares the simulator's world before the commands run.
    setup: fn(&Simulator),
    config: fn(&Path) -> String,
    commands: &'static [&'static [&'static str]],
    pause: Duration,
    /// Actions whose refusal does not fail the mode but must show in its
    /// output: (action, what the output then says).
    degrades: &'static [(&'static str, &'static str)],
}

impl Mode {
    /// `policy` with the statements of every file of `with` added.
    fn document(&self) -> Value {
        let mut doc = policy(self.policy);
        for extra in self.with {
            let more = policy(extra)["Statement"].as_array().unwrap().clone();
            doc["Statement"].as_array_mut().unwrap().extend(more);
        }
        doc
    }

    fn name(&self) -> String {
        std::iter::once(self.policy)
            .chain(self.with.iter().copied())
            .collect::<Vec<_>>()
            .join(" + ")
    }
}

fn no_setup(_: &Simulator) {}
/// GetRetentionTrigger only says when KCR's own rules run: refused, the
/// report says so instead of failing the run.
const TRIGGER: (&str, &str) = (
    "kcrs:GetRetentionTrigger",
    "trigger unreadable: AccessDenied",
);

/// What one run of a mode's commands saw.
struct Seen {
    outputs: Vec<Output>,
    /// Actions answered OK.
    used: BTreeSet<String>,
    /// Actions IAM refused.
    denied: BTreeSet<String>,
}

impl Seen {
    fn succeeded(&self) -> bool {
        self.outputs.iter().all(|o| o.status.success())
    }
    fn text(&self) -> String {
        self.outputs
            .iter()
            .map(text)
            .collect::<Vec<_>>()
            .join("\n---\n")
    }
}

async fn run_mode(mode: &Mode, removed: Option<&str>) -> Seen {
    let doc = mode.document();
    let sim: Simulator = sim(SimOptions {
        policies: Some(principal(&doc, removed)),
        ..Default::default()
    })
    .await;
    (mode.setup)(&sim);
    // KCR's own retention enabled in `tools` (empty: nothing of ours to
    // block there), so that its rules and its trigger are read.
    sim.world(|w| {
        let tools = w.instances[0].namespaces.get_mut("tools").unwrap();
        tools.retention_rules = vec![kcr_housekeeper::sim::world::RetentionRule {
            id: 11,
            disabled: false,
            registry_scope: "**".into(),
            rule_type: "byNum".into(),
            untagged: false,
            template: "latestPushedK".into(),
            tag_patten: None,
            param: Some(30),
        }];
        tools.retention_trigger = Some(kcr_housekeeper::sim::world::RetentionTrigger {
            display_text: None,
            cron: Some("0 0 * * *".into()),
            optional: Vec::new(),
        });
    });
    let dir = tempfile::tempdir().unwrap();
    let config = generated_config_with(
        &sim,
        dir.path(),
        &Head {
            key_id: Some(AK),
            name: "demo",
            registry: sim.endpoint().trim_start_matches("http://"),
            ..Default::default()
        },
        &(mode.config)(dir.path()),
    );
    let mut outputs = Vec::new();
    for (i, args) in mode.commands.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(mode.pause).await;
        }
        let mut cmd = bin(SK, args);
        cmd.arg("--config").arg(&config);
        let out = tokio::process::Command::from(cmd).output();
        let out = tokio::time::timeout(Duration::from_secs(60), out)
            .await
            .expect("a command finishes within 60 s")
            .unwrap();
        outputs.push(out);
    }
    let log = sim.requests();
    let named = |code: fn(&str) -> bool| -> BTreeSet<String> {
        log.iter()
            .filter(|r| code(&r.code))
            .filter_map(|r| r.action.as_deref())
            .map(kcr_housekeeper::sim::iam::iam_action)
            .collect()
    };
    Seen {
        outputs,
        used: named(|c| c == "OK"),
        denied: named(|c| c == "AccessDenied"),
    }
}

/// Sufficient, used in full, and no action to spare.
async fn check(mode: Mode) {
    let granted = allowed(&mode.document());
    let name = mode.name();
    let seen = run_mode(&mode, None).await;
    assert!(
        seen.succeeded() && seen.denied.is_empty(),
        "{}: not sufficient; refused {:?}\n{}",
        name,
        seen.denied,
        seen.text()
    );
    assert_eq!(
        seen.used, granted,
        "{}: the policy must grant exactly what the mode calls",
        name
    );
    for action in &granted {
        let without = run_mode(&mode, Some(action)).await;
        if let Some((_, says)) = mode.degrades.iter().find(|(a, _)| a == action) {
            assert!(
                without.succeeded() && without.text().contains(says),
                "{}: without {action} the output must say {says:?}\n{}",
                name,
                without.text()
            );
            continue;
        }
        assert!(
            !without.succeeded(),
            "{}: without {action} the mode still succeeds: not minimal\n{}",
            name,
            without.text()
        );
        assert!(
            without.denied.contains(action),
            "{}: without {action}: {:?} refused",
            name,
            without.denied
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_policy_covers_dry_runs_quota_and_doctor_and_nothing_more() {
    check(Mode {
        policy: "read-only.json",
        with: &[],
        setup: no_setup,
        config: |dir| {
            format!(
                "[retention]\nmode = \"dry-run\"\n{RETENTION}\n{}\n[namespaces]\nmode = \"dry-run\"\ndefault = \"private\"\n\
                 [quota]\nstorage = \"namespace\"\n",
                tokens(dir, "dry-run")
            )
        },
        commands: &[
            &["plan", "retention"],
            &["plan", "namespaces"],
            &["plan", "tokens"],
            &["quota"],
            &["doctor"],
        ],
        pause: Duration::ZERO,
        degrades: &[TRIGGER],
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_enforce_policy_is_sufficient_and_minimal() {
    check(Mode {
        policy: "retention-enforce.json",
        with: &[],
        setup: no_setup,
        config: |_| format!("[retention]\nmode = \"enforce\"\n{RETENTION}"),
        // The plan shows KCR's own rules and when they run.
        commands: &[&["plan", "retention"], &["apply", "retention", "--yes"]],
        pause: Duration::ZERO,
        degrades: &[TRIGGER],
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_enforce_policy_is_sufficient_and_minimal() {
    check(Mode {
        policy: "namespaces-enforce.json",
        with: &[],
        setup: no_setup,
        // sandbox is public in the demo: made private.
        config: |_| "[namespaces]\nmode = \"enforce\"\ndefault = \"private\"\n".into(),
        commands: &[&["apply", "namespaces", "--yes"]],
        pause: Duration::ZERO,
        degrades: &[],
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_policy_is_sufficient_and_minimal() {
    // Rotate, disable the old token after overlap, delete it after delete_after.
    check(Mode {
        policy: "tokens.json",
        with: &[],
        setup: no_setup,
        config: |dir| tokens(dir, "enforce"),
        commands: &[
            &["apply", "tokens", "--yes"],
            &["apply", "tokens", "--yes"],
            &["apply", "tokens", "--yes"],
            &["apply", "tokens", "--yes"],
        ],
        pause: Duration::from_millis(600),
        degrades: &[],
    })
    .await;
}

/// quota-relief.json (with retention-enforce.json, as deploy/iam/README
/// says) is sufficient for quota relief and minimal: enforce with
/// `delete_empty_repositories` / `delete_empty_namespaces` deletes an empty
/// repository and the demo's empty old namespaces, and without either
/// action the run fails on that refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_relief_policy_is_sufficient_and_minimal() {
    check(Mode {
        policy: "retention-enforce.json",
        with: &["quota-relief.json"],
        // An empty repository, not updated for 60 days (the demo has none).
        setup: |sim| {
            let now = sim.now();
            sim.world(|w| {
                let apps = w.instances[0].namespaces.get_mut("apps").unwrap();
                let mut empty = apps.repos["web"].clone();
                empty.images.clear();
                empty.update_time = now - chrono::Duration::days(60);
                apps.repos.insert("old-empty".into(), empty);
            })
        },
        config: |_| {
            format!(
                "[retention]\nmode = \"enforce\"\n\
                 delete_empty_repositories = {{ older_than = \"30d\" }}\n\
                 delete_empty_namespaces = {{ older_than = \"30d\" }}\n{RETENTION}"
            )
        },
        // The plan shows KCR's own rules and when they run.
        commands: &[&["plan", "retention"], &["apply", "retention", "--yes"]],
        pause: Duration::ZERO,
        degrades: &[TRIGGER],
    })
    .await;
}
