//! Every failpoint of the retention apply path (issue 11, "the method"):
//! enumerated from traced runs of the real binary, not from a list. For
//! each, (a) an injected error there and (b) an abort there, each followed by
//! a clean re-run; after each, the invariants:
//! - no deletion outside the plan of the current rules (the simulator's log
//!   against a fresh plan made before anything ran),
//! - every mutation the simulator applied is named in the audit table,
//! - the faulted run's exit code is non-zero,
//! - the clean re-run leaves the registry exactly as planned.
//!
//! Coverage: the names come from a clean traced `apply retention`, and every
//! faulted run is traced too, so points only reached on a failure path (the
//! audit record of an action settled without a call) join the work list.
//! The test then compares the names found with every
//! `failpoint::hit("retention.…")` in the sources of the path, and fails on
//! a point that is neither reached nor listed below as reached only elsewhere.

mod common;

use common::*;
use kcr_housekeeper::sim::{Faults, GenerateSpec, SimOptions, Simulator, WorldSource};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Output;
const SPEC: &str = "namespaces=1,repos=2,images=14,seed=23";

/// Failpoints of the path that a CLI apply on a quiet registry cannot reach,
/// and where they are exercised instead.
const REACHED_ELSEWHERE: &[(&str, &str)] = &[(
    "retention.state.report_store",
    "the daemon job's report store (tests/daemon.rs runs the job)",
)];

/// The sources of the retention apply path.
const SOURCES: &[&str] = &[
    "src/retention/executor.rs",
    "src/retention/mod.rs",
    "src/cli/apply_retention.rs",
    "src/inventory.rs",
];

fn write_config(sim: &Simulator, dir: &Path) -> String {
    generated_config(
        sim,
        dir,
        "[retention]\nmode = \"enforce\"\nmin_age = \"1h\"\n\
         [retention.protect]\ntags = [\"latest\"]\nnewest_images_per_repository = 1\n\
         [[retention.rules]]\nname = \"ci\"\ntags = [\"pr-*\", \"sha-*\", \"main-*\"]\nkeep_latest = 2\n\
         [[retention.rules]]\nname = \"untagged\"\nuntagged = true\nolder_than = \"1d\"\n",
    )
}

/// The binary with the simulator's secret and `env`, run to the end.
fn run(sim: &Simulator, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = bin(&sim_secret(sim), args);
    c.envs(env.iter().copied());
    output(c)
}

/// One world, its config, and the plan of its rules before anything ran.
struct Case {
    sim: Simulator,
    dir: tempfile::TempDir,
    config: String,
    /// What the plan allows: "delete_image repo@digest" / "delete_tag repo:tag (digest".
    allowed: BTreeSet<String>,
    expected: BTreeMap<(String, String), BTreeSet<String>>,
}

async fn case() -> Case {
    let sim = sim(SimOptions {
        source: WorldSource::Generate(SPEC.parse::<GenerateSpec>().unwrap()),
        faults: Faults::default(),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path());
    let out = dir.path().join("plan.json");
    let o = run(
        &sim,
        &[
            "plan",
            "retention",
            "--config",
            &config,
            "--format",
            "json",
            "--output",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let mut allowed = BTreeSet::new();
    let mut expected = registry_snapshot(&sim);
    for r in plan["repositories"].as_array().unwrap() {
        let repo = format!(
            "{}/{}",
            r["namespace"].as_str().unwrap(),
            r["repository"].as_str().unwrap()
        );
        for a in r["actions"].as_array().unwrap() {
            let digest = a["digest"].as_str().unwrap().to_owned();
            if a["action"] == "delete_image" {
                allowed.insert(format!("delete_image {repo}@{digest}"));
                expected.remove(&(repo.clone(), digest));
            } else {
                let tag = a["tags"][0].as_str().unwrap();
                allowed.insert(format!("delete_tag {repo}:{tag} ({digest}"));
                expected
                    .get_mut(&(repo.clone(), digest))
                    .unwrap()
                    .remove(tag);
            }
        }
    }
    Case {
        sim,
        dir,
        config,
        allowed,
        expected,
    }
}

impl Case {
    fn apply(&self, env: &[(&str, &str)]) -> Output {
        run(
            &self.sim,
            &["apply", "retention", "--yes", "--config", &self.config],
            env,
        )
    }

    /// Deletions the simulator applied, named like audit targets.
    fn applied(&self) -> Vec<String> {
        self.sim
            .requests()
            .into_iter()
            .filter(|e| e.code == "OK")
            .filter_map(|e| {
                let repo = format!(
                    "{}/{}",
                    e.params.get("Namespace")?,
                    e.params.get("RepoName")?
                );
                match e.action.as_deref()? {
                    "DeleteImages" => Some(format!("delete_image {repo}@{}", e.params["ImageId"])),
                    "DeleteRepoTag" => Some(format!("delete_tag {repo}:{} (", e.params["TagName"])),
                    _ => None,
                }
            })
            .collect()
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        // A run stopped before it opened the state leaves no database.
        if !self.dir.path().join("state.db").exists() {
            return Vec::new();
        }
        let o = run(
            &self.sim,
            &["audit", "--config", &self.config, "--format", "json"],
            &[],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    fn check_invariants(&self, what: &str) {
        let applied = self.applied();
        for m in &applied {
            assert!(
                self.allowed.iter().any(|a| a.starts_with(m.as_str())),
                "{what}: {m} is outside the plan"
            );
        }
        let audit = self.audit();
        for m in &applied {
            let (action, target) = m.split_once(' ').unwrap();
            assert!(
                audit
                    .iter()
                    .any(|r| r["action"] == action
                        && r["target"].as_str().unwrap().starts_with(target)),
                "{what}: the registry applied {m}, no audit record names it"
            );
        }
    }
}

fn names_in(trace: &Path) -> Vec<String> {
    let mut seen = Vec::new();
    for line in std::fs::read_to_string(trace).unwrap_or_default().lines() {
        if line.starts_with("retention.") && !seen.iter().any(|s| s == line) {
            seen.push(line.to_owned());
        }
    }
    seen
}

fn failpoints_in_sources() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for file in SOURCES {
        let text =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
        for piece in text.split("failpoint::hit(").skip(1) {
            let Some(quoted) = piece.trim_start().strip_prefix('"') else {
                continue;
            };
            let name = quoted.split('"').next().unwrap();
            if name.starts_with("retention.") {
                out.insert(name.to_owned());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn every_failpoint_of_the_retention_apply_fails_safe() {
    let started = std::time::Instant::now();
    // The clean traced run.
    let clean = case().await;
    assert!(
        clean.allowed.iter().any(|a| a.starts_with("delete_image"))
            && clean.allowed.iter().any(|a| a.starts_with("delete_tag")),
        "the plan has both kinds of action: {:?}",
        clean.allowed
    );
    let trace = clean.dir.path().join("trace");
    let o = clean.apply(&[("KCR_HOUSEKEEPER_FAILPOINT_TRACE", trace.to_str().unwrap())]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(registry_snapshot(&clean.sim), clean.expected);
    clean.check_invariants("clean run");
    // Each point with the fault that leads to it, if it is reached only after one.
    let mut work: Vec<(String, Option<String>)> =
        names_in(&trace).into_iter().map(|n| (n, None)).collect();
    assert!(work.len() >= 8, "{work:?}");
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut exercised = 0;
    while let Some((name, parent)) = work.pop() {
        if !done.insert(name.clone()) {
            continue;
        }
        for mode in ["error", "abort"] {
            let c = case().await;
            let trace = c.dir.path().join("trace");
            let spec = match &parent {
                Some(p) => format!("{p},{name}={mode}"),
                None => format!("{name}={mode}"),
            };
            let o = c.apply(&[
                ("KCR_HOUSEKEEPER_FAILPOINT", spec.as_str()),
                ("KCR_HOUSEKEEPER_FAILPOINT_TRACE", trace.to_str().unwrap()),
            ]);
            let out = format!(
                "{spec}: {:?}\n{}\n{}",
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(
                String::from_utf8_lossy(&o.stderr).contains(&format!("failpoint {name}")),
                "the fault was injected: {out}"
            );
            // A lost reply is recovered by the check that follows it: the
            // action is found done, and the run succeeds.
            let recoverable = mode == "error" && name.ends_with(".reply_lost");
            if recoverable {
                assert!(o.status.success(), "{out}");
                assert_eq!(
                    registry_snapshot(&c.sim),
                    c.expected,
                    "{spec}: exactly the plan"
                );
            } else {
                assert!(!o.status.success(), "a fault must not exit 0: {out}");
            }
            assert!(!out.contains("panicked"), "{out}");
            c.check_invariants(&spec);
            if mode == "error" {
                for n in names_in(&trace) {
                    if !done.contains(&n) && !work.iter().any(|(w, _)| *w == n) {
                        work.push((n, Some(spec.clone())));
                    }
                }
            }
            // Restart: a clean run finishes the job, nothing more.
            let o = c.apply(&[]);
            assert!(
                o.status.success(),
                "{spec}, then a clean run: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            c.check_invariants(&format!("{spec}, then a clean run"));
            assert_eq!(
                registry_snapshot(&c.sim),
                c.expected,
                "{spec}, then a clean run: exactly the plan"
            );
            exercised += 1;
        }
    }
    let in_sources = failpoints_in_sources();
    let elsewhere: BTreeSet<String> = REACHED_ELSEWHERE
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    let missing: Vec<&String> = in_sources
        .iter()
        .filter(|n| !done.contains(*n) && !elsewhere.contains(*n))
        .collect();
    assert!(
        missing.is_empty(),
        "failpoints in the sources that no run reached: {missing:?}"
    );
    assert!(
        done.iter().all(|n| in_sources.contains(n)),
        "{done:?} vs {in_sources:?}"
    );
    eprintln!(
        "retention failpoints: {} reached ({exercised} faulted runs, each restarted), {} in the sources, {} reached only elsewhere; {:.1} s",
        done.len(),
        in_sources.len(),
        elsewhere.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(180));
}
