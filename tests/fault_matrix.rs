//! The fault matrix (Step 6): every fault the simulator injects, against the
//! client directly and against each job that mutates — token rotation and the
//! namespace policy here; retention enforce in tests/retention.rs. Each run is
//! bounded in requests and time. After it, the registry is in the planned state
//! or the action was safely skipped, and nothing outside the plan was touched
//! (checked against the simulator's request log).

mod common;

use chrono::{Duration, Utc};
use common::{
    DEMO_INSTANCE, config_for, demo_head, namespace_visibility, parse_config, sim, sim_utc,
};
use kcr_housekeeper::config::Config;
use kcr_housekeeper::jobs::{Job, JobContext};
use kcr_housekeeper::kcr::{Client, DescribeNamespace, ModifyNamespaceType, RetryPolicy};
use kcr_housekeeper::metrics::Metrics;
use kcr_housekeeper::namespaces::NamespacesJob;
use kcr_housekeeper::sim::{FaultKind, Faults, SimOptions, Simulator};
use kcr_housekeeper::state::Store;
use kcr_housekeeper::tokens::planner::parse_desc;
use kcr_housekeeper::tokens::rotate::{Engine, Settings};
use std::collections::BTreeSet;
use std::sync::Arc;

const SEED_TOKEN: &str = "6c1f3a52-0d7e-4b1a-9f6e-5a0c2b7d9e01";

fn faults(kind: FaultKind, rate: f64, seed: u64) -> Faults {
    Faults {
        fault_rate: rate,
        kinds: vec![kind],
        seed: Some(seed),
        stall: std::time::Duration::from_millis(1500),
        ..Default::default()
    }
}

/// A client with a short timeout (timeouts are one of the faults) and quick retries.
fn client(sim: &Simulator) -> Client {
    let mut c = config_for(sim);
    c.timeout = std::time::Duration::from_millis(400);
    c.retry = RetryPolicy {
        max_attempts: 4,
        base: std::time::Duration::from_millis(2),
        cap: std::time::Duration::from_millis(20),
    };
    Client::new(c).unwrap()
}

fn config(sim: &Simulator, dir: &std::path::Path, extra: &str) -> Config {
    parse_config(sim, &format!("{}{extra}", demo_head(sim, dir)), dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fault_reaches_the_client_as_the_right_error() {
    for kind in FaultKind::ALL {
        let sim = sim(SimOptions {
            faults: faults(kind, 1.0, 1),
            ..Default::default()
        })
        .await;
        let mut cc = config_for(&sim);
        cc.timeout = std::time::Duration::from_millis(300);
        cc.retry.max_attempts = 1;
        let c = Client::new(cc).unwrap();
        let r = c
            .call(&ModifyNamespaceType {
                instance_id: DEMO_INSTANCE.into(),
                namespace: "sandbox".into(),
                public: false,
            })
            .await;
        let applied = sim.world(|w| !w.instances[0].namespaces["sandbox"].public);
        match kind {
            FaultKind::ServerError | FaultKind::LimitExceeded => {
                let e = r.unwrap_err();
                assert_eq!(
                    e.code(),
                    if kind == FaultKind::ServerError {
                        "ServiceUnavailable"
                    } else {
                        "LimitExceeded"
                    }
                );
                assert!(!applied, "{kind:?} is not applied");
            }
            FaultKind::Timeout | FaultKind::Reset | FaultKind::Truncated | FaultKind::IllTyped => {
                let e = r.unwrap_err();
                assert!(e.is_retryable(), "{kind:?}: {e}");
                assert!(
                    !e.surely_not_applied(),
                    "{kind:?} may have been applied: {e}"
                );
                assert!(applied, "{kind:?} is applied before the answer is spoiled");
            }
            FaultKind::TotalCount | FaultKind::TotalCountLow => {
                // Not a listing: answered normally.
                assert!(r.is_ok() && applied, "{kind:?}");
                let listed = c.list_all(DescribeNamespace::all(DEMO_INSTANCE)).await;
                let e = listed.unwrap_err();
                assert!(
                    matches!(e.code(), "ListingChanged" | "ListingShort"),
                    "a listing whose TotalCount lies is an error, never a partial list: {e}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_enforce_under_every_fault() {
    for (i, kind) in FaultKind::ALL.into_iter().enumerate() {
        let sim = sim(SimOptions {
            faults: faults(kind, 0.4, 40 + i as u64),
            ..Default::default()
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(
            &sim,
            dir.path(),
            "[namespaces]\nmode = \"enforce\"\nallow_make_public = true\n\
             rules = [ { match = \"public*\", visibility = \"public\" }, { match = \"mirrors\", visibility = \"public\" }, \
             { match = \"tools\", visibility = \"public\" }, { match = \"ci\", visibility = \"public\" } ]\n",
        );
        let before = namespace_visibility(&sim);
        let state = Store::open(cfg.state.sqlite_path().unwrap()).unwrap();
        let mut ok = false;
        for attempt in 0..8 {
            let run_id = state.start_run("namespaces", "cli", Utc::now()).unwrap();
            let ctx = JobContext {
                client: client(&sim),
                config: Arc::new(cfg.clone()),
                state: state.clone(),
                metrics: Arc::new(Metrics::new()),
                cancel: Default::default(),
                run_id: Some(run_id),
                inventory: Default::default(),
                trigger: kcr_housekeeper::jobs::Trigger::Api,
                clock: kcr_housekeeper::jobs::system_clock(),
                watch: std::sync::Arc::new(kcr_housekeeper::jobs::Unwatched),
            };
            if NamespacesJob.run(&ctx).await.is_ok() {
                ok = true;
                break;
            }
            assert!(attempt < 7, "{kind:?}: not converged");
        }
        assert!(ok);
        let after = namespace_visibility(&sim);
        for (n, public) in &before {
            let want = match n.as_str() {
                "mirrors" | "tools" | "ci" => true,
                n if n.starts_with("public") => true,
                _ => false,
            };
            assert_eq!(after[n], want, "{kind:?}: {n} (was {public})");
        }
        assert!(
            sim.requests().iter().any(|e| e.injected),
            "{kind:?}: faults were injected"
        );
        // Only the two drifting namespaces were ever modified.
        let touched: BTreeSet<String> = sim
            .requests()
            .into_iter()
            .filter(|e| e.action.as_deref() == Some("ModifyNamespaceType"))
            .filter_map(|e| e.params.get("Namespace").cloned())
            .collect();
        let drifting = ["ci", "mirrors", "sandbox", "tools"].map(String::from);
        assert_eq!(touched, BTreeSet::from(drifting), "{kind:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_rotation_under_every_fault() {
    for (i, kind) in FaultKind::ALL.into_iter().enumerate() {
        let sim = sim(SimOptions {
            faults: faults(kind, 0.4, 20 + i as u64),
            ..Default::default()
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(
            &sim,
            dir.path(),
            &format!(
                "[tokens]\nlist_lag = \"1m\"\n[[tokens.managed]]\nname = \"ci-pull\"\ninstance = \"demo\"\n\
                 sinks = [ {{ kind = \"file\", path = \"{}\", format = \"env\" }} ]\n",
                dir.path().join("ci-pull.env").display()
            ),
        );
        let state = Store::open(cfg.state.sqlite_path().unwrap()).unwrap();
        let unmanaged: BTreeSet<String> = sim.world(|w| {
            w.instances[0]
                .tokens
                .iter()
                .filter(|t| t.desc.as_deref().and_then(parse_desc).is_none())
                .map(|t| t.id.clone())
                .collect()
        });
        let c = client(&sim);
        let clock = || sim_utc(&sim);
        let mut rotated = None;
        for cycle in 0..12 {
            let engine = Engine {
                client: &c,
                config: &cfg,
                state: &state,
                metrics: &kcr_housekeeper::metrics::Metrics::new(),
                run_id: None,
                cancel: &Default::default(),
                clock: &clock,
                settings: Settings {
                    attempts: 2,
                    backoff: std::time::Duration::from_millis(5),
                    verify_timeout: std::time::Duration::from_secs(2),
                    // Convergence under faults, not the backoff (tests/tokens.rs covers it).
                    retry_base: std::time::Duration::ZERO,
                    ..Settings::default()
                },
            };
            // A rotation counts even when a later step of the same cycle (the
            // follow-up listing that applies what it made due) hit a fault.
            if let Ok(out) = engine.run().await
                && out[0].rotated_to.is_some()
            {
                rotated = out[0].rotated_to.clone();
            }
            let plans = engine.plan().await;
            if rotated.is_some()
                && let Ok(p) = plans
                && p[0].steps.is_empty()
            {
                break;
            }
            // Past the list lag, so an ambiguous creation can be settled.
            sim.advance(Duration::minutes(2));
            assert!(cycle < 11, "{kind:?}: not converged");
        }
        let injected = sim.requests().iter().filter(|e| e.injected).count();
        assert!(injected > 0, "{kind:?}: faults were injected");
        // The sink holds a live credential.
        let env = std::fs::read_to_string(dir.path().join("ci-pull.env")).unwrap();
        let get = |k: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap()
                .to_string()
        };
        let (user, secret, sink_id) = (get("KCR_USERNAME"), get("KCR_TOKEN"), get("KCR_TOKEN_ID"));
        let live = sim.world(|w| w.login(&user, &secret, sim.now()));
        assert!(live, "{kind:?}: the sink's credential logs in");
        // No undelivered token stays enabled; unmanaged tokens were never touched.
        let tokens = sim.world(|w| w.instances[0].tokens.clone());
        for t in &tokens {
            let managed = t.desc.as_deref().and_then(parse_desc).is_some();
            if managed && t.enable {
                assert!(
                    t.id == sink_id || t.id == SEED_TOKEN,
                    "{kind:?}: enabled token {} is neither delivered nor the previous one",
                    t.id
                );
            }
        }
        for e in sim.requests() {
            if let Some(id) = e.params.get("TokenId") {
                assert!(
                    !unmanaged.contains(id),
                    "{kind:?}: touched unmanaged token {id}"
                );
            }
        }
    }
}
