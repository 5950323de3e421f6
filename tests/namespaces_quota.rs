//! The namespace policy job and the quota job against the simulator over
//! real HTTP: drift both ways, allow_make_public, dry-run, the change cap,
//! and quota and storage figures equal to the simulator's own counts.

mod common;

use common::{DEMO_INSTANCE, client_for, namespace_visibility, parse_config, sim};
use kcr_housekeeper::config::Config;
use kcr_housekeeper::jobs::{Job, JobContext, JobError, Outcome};
use kcr_housekeeper::metrics::Metrics;
use kcr_housekeeper::namespaces::NamespacesJob;
use kcr_housekeeper::quota::QuotaJob;
use kcr_housekeeper::sim::{SimOptions, Simulator};
use kcr_housekeeper::state::Store;
use std::collections::BTreeMap;
use std::sync::Arc;

fn config(sim: &Simulator, extra: &str) -> Config {
    let text = format!(
        r#"[kcr]
endpoint = "{endpoint}"
access_key_id = {{ env = "AK" }}
secret_access_key = {{ env = "SK" }}
requests_per_second = 500
[[instances]]
id = "{DEMO_INSTANCE}"
name = "demo"
registry = "demo.ksyunkcr.com"
{extra}
"#,
        endpoint = sim.endpoint(),
    );
    parse_config(sim, &text, std::path::Path::new("."))
}

/// The policy: `public*` and `mirrors` public, everything else private.
fn namespaces(mode: &str, allow_make_public: bool, cap: u32) -> String {
    format!(
        r#"[namespaces]
mode = "{mode}"
allow_make_public = {allow_make_public}
max_changes_per_run = {cap}
rules = [ {{ match = "public*", visibility = "public" }}, {{ match = "mirrors", visibility = "public" }} ]
"#
    )
}

fn context(sim: &Simulator, config: Config) -> JobContext {
    let state = Store::in_memory().unwrap();
    // Audit records point at their run.
    let run_id = state.start_run("test", "cli", chrono::Utc::now()).unwrap();
    JobContext {
        client: client_for(sim),
        config: Arc::new(config),
        state,
        metrics: Arc::new(Metrics::new()),
        cancel: Default::default(),
        run_id: Some(run_id),
        inventory: Default::default(),
        trigger: kcr_housekeeper::jobs::Trigger::Api,
        clock: kcr_housekeeper::jobs::system_clock(),
        watch: std::sync::Arc::new(kcr_housekeeper::jobs::Unwatched),
    }
}

fn series(m: &Metrics, name: &str, namespace: &str) -> Option<f64> {
    let text = m.render();
    let prefix = format!("{name}{{instance=\"demo\",namespace=\"{namespace}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.parse().unwrap())
}

#[tokio::test]
async fn enforce_makes_private_but_not_public_without_permission() {
    let sim = sim(SimOptions {
        log_in_memory: true,
        ..Default::default()
    })
    .await;
    let before = namespace_visibility(&sim);
    assert!(before["sandbox"] && !before["mirrors"] && before["publicdocs"]);
    let ctx = context(&sim, config(&sim, &namespaces("enforce", false, 10)));
    let out = NamespacesJob.run(&ctx).await.unwrap();
    assert!(
        matches!(out, Outcome::Success(ref s) if s.contains("1 changed")),
        "{out:?}"
    );
    let after = namespace_visibility(&sim);
    assert!(!after["sandbox"], "public → private applied");
    assert!(!after["mirrors"], "private → public only reported");
    for (n, p) in &before {
        if n != "sandbox" {
            assert_eq!(after[n], *p, "{n} untouched");
        }
    }
    let modified: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|e| e.action.as_deref() == Some("ModifyNamespaceType"))
        .collect();
    assert_eq!(modified.len(), 1);
    assert_eq!(modified[0].params["Namespace"], "sandbox");
    let audit = ctx.state.audit_since(None).unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(
        (
            audit[0].action.as_str(),
            audit[0].target.as_str(),
            audit[0].outcome.as_str()
        ),
        ("modify_namespace_type", "sandbox", "applied")
    );
    let m = &ctx.metrics;
    assert_eq!(series(m, "kcr_namespace_public", "sandbox"), Some(0.0));
    assert_eq!(
        series(m, "kcr_namespace_policy_drift", "sandbox"),
        Some(0.0)
    );
    assert_eq!(
        series(m, "kcr_namespace_policy_drift", "mirrors"),
        Some(1.0)
    );
    assert_eq!(series(m, "kcr_namespace_public", "publicdocs"), Some(1.0));
    assert!(
        m.render().contains(
            "kcr_housekeeper_namespace_changes_total{instance=\"demo\",to=\"private\"} 1"
        )
    );
}

#[tokio::test]
async fn with_allow_make_public_both_directions_are_applied() {
    let sim = sim(SimOptions::default()).await;
    let ctx = context(&sim, config(&sim, &namespaces("enforce", true, 10)));
    NamespacesJob.run(&ctx).await.unwrap();
    let after = namespace_visibility(&sim);
    assert!(!after["sandbox"]);
    assert!(after["mirrors"]);
    assert_eq!(
        series(&ctx.metrics, "kcr_namespace_policy_drift", "mirrors"),
        Some(0.0)
    );
    // A second run finds nothing to do.
    let out = NamespacesJob.run(&ctx).await.unwrap();
    assert!(
        matches!(out, Outcome::Success(ref s) if s.contains("0 drifting")),
        "{out:?}"
    );
}

#[tokio::test]
async fn dry_run_changes_nothing_and_reports_drift() {
    let sim = sim(SimOptions {
        log_in_memory: true,
        ..Default::default()
    })
    .await;
    let before = namespace_visibility(&sim);
    let ctx = context(&sim, config(&sim, &namespaces("dry-run", true, 10)));
    let out = NamespacesJob.run(&ctx).await.unwrap();
    assert!(
        matches!(out, Outcome::Success(ref s) if s.starts_with("dry-run") && s.contains("2 drifting")),
        "{out:?}"
    );
    assert_eq!(namespace_visibility(&sim), before);
    assert_eq!(sim.count("ModifyNamespaceType"), 0);
    assert_eq!(
        series(&ctx.metrics, "kcr_namespace_policy_drift", "sandbox"),
        Some(1.0)
    );
    assert!(ctx.state.audit_since(None).unwrap().is_empty());
}

#[tokio::test]
async fn over_the_cap_nothing_is_changed() {
    let sim = sim(SimOptions::default()).await;
    let before = namespace_visibility(&sim);
    let ctx = context(&sim, config(&sim, &namespaces("enforce", true, 1)));
    let out = NamespacesJob.run(&ctx).await.unwrap();
    assert!(
        matches!(out, Outcome::Blocked(ref s) if s.contains("over max_changes_per_run 1")),
        "{out:?}"
    );
    assert_eq!(namespace_visibility(&sim), before);
}

#[tokio::test]
async fn a_namespace_changed_since_planning_is_left_alone() {
    use kcr_housekeeper::namespaces::{Applied, execute, list, plan};
    let sim = sim(SimOptions::default()).await;
    let ctx = context(&sim, config(&sim, &namespaces("enforce", true, 10)));
    let nc = ctx.config.namespaces.clone().unwrap();
    let p = plan(&nc, &list(&ctx.client, &ctx.config).await.unwrap());
    // Someone fixes `sandbox` by hand between plan and apply.
    sim.world(|w| w.instances[0].namespaces.get_mut("sandbox").unwrap().public = false);
    let done = execute(&ctx, &p).await;
    let sandbox = done.iter().find(|(d, _)| d.namespace == "sandbox").unwrap();
    assert_eq!(sandbox.1, Applied::AlreadyDone);
    let mirrors = done.iter().find(|(d, _)| d.namespace == "mirrors").unwrap();
    assert_eq!(mirrors.1, Applied::Applied);
}

#[tokio::test]
async fn quota_and_storage_figures_equal_the_simulators_counts() {
    let sim = sim(SimOptions::default()).await;
    let ctx = context(&sim, config(&sim, "[quota]\nstorage = \"namespace\"\n"));
    QuotaJob.run(&ctx).await.unwrap();
    let text = ctx.metrics.render();
    let (ns_used, ns_quota, repo_used, repo_quota, storage) = sim.world(|w| {
        let i = &w.instances[0];
        let storage: BTreeMap<String, (usize, u64)> = i
            .namespaces
            .iter()
            .map(|(n, ns)| {
                let images: Vec<_> = ns.repos.values().flat_map(|r| &r.images).collect();
                (
                    n.clone(),
                    (images.len(), images.iter().map(|i| i.size).sum()),
                )
            })
            .collect();
        (
            i.namespaces.len(),
            i.namespace_quota,
            i.repo_count(),
            i.repo_quota,
            storage,
        )
    });
    let value = |line: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(line))
            .unwrap_or_else(|| panic!("{line} missing in\n{text}"))
            .trim()
            .parse()
            .unwrap()
    };
    let labels = |r: &str| format!("{{instance=\"demo\",resource=\"{r}\"}}");
    assert_eq!(
        value(&format!("kcr_quota_used{}", labels("namespaces"))),
        ns_used as f64
    );
    assert_eq!(
        value(&format!("kcr_quota_limit{}", labels("namespaces"))),
        ns_quota as f64
    );
    assert_eq!(
        value(&format!("kcr_quota_used{}", labels("repositories"))),
        repo_used as f64
    );
    assert_eq!(
        value(&format!("kcr_quota_limit{}", labels("repositories"))),
        repo_quota as f64
    );
    assert_eq!(
        value(&format!("kcr_quota_usage_ratio{}", labels("namespaces"))),
        ns_used as f64 / ns_quota as f64
    );
    for (ns, (images, bytes)) in &storage {
        assert_eq!(
            series(&ctx.metrics, "kcr_namespace_images", ns),
            Some(*images as f64),
            "{ns}"
        );
        assert_eq!(
            series(&ctx.metrics, "kcr_namespace_size_bytes", ns),
            Some(*bytes as f64),
            "{ns}"
        );
    }
    assert!(storage.values().any(|(i, _)| *i > 0), "the demo has images");
    assert!(text.contains("kcr_up{instance=\"demo\"} 1"));
}

#[tokio::test]
async fn when_the_api_is_down_quota_keeps_its_last_values() {
    let sim = sim(SimOptions::default()).await;
    let ctx = context(&sim, config(&sim, "[quota]\nstorage = \"none\"\n"));
    QuotaJob.run(&ctx).await.unwrap();
    let used = "kcr_quota_used{instance=\"demo\",resource=\"namespaces\"} 8";
    assert!(ctx.metrics.render().contains(used));
    // The API goes away.
    let mut down = (*ctx.config).clone();
    down.kcr.timeout = std::time::Duration::from_millis(200);
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = dead.local_addr().unwrap();
    drop(dead);
    let mut cc = common::config_for(&sim);
    cc.endpoint = format!("http://{addr}");
    cc.retry.max_attempts = 1;
    let ctx2 = JobContext {
        client: kcr_housekeeper::kcr::Client::new(cc).unwrap(),
        metrics: ctx.metrics.clone(),
        config: Arc::new(down),
        state: Store::in_memory().unwrap(),
        cancel: Default::default(),
        run_id: Some(2),
        inventory: Default::default(),
        trigger: kcr_housekeeper::jobs::Trigger::Api,
        clock: kcr_housekeeper::jobs::system_clock(),
        watch: std::sync::Arc::new(kcr_housekeeper::jobs::Unwatched),
    };
    let err = QuotaJob.run(&ctx2).await.unwrap_err();
    assert!(matches!(err, JobError::Partial(_)));
    assert_eq!(err.code(), "partial");
    let text = ctx.metrics.render();
    assert!(text.contains(used), "last value kept");
    assert!(text.contains("kcr_up{instance=\"demo\"} 0"));
}

/// Step 9 item 13: DescribeInstance's status, type and charge type as
/// `kcr_instance_info`, and a prepaid instance's expiry (a pay-as-you-go one
/// has none); a changed status replaces the old series.
#[tokio::test]
async fn instance_info_and_prepaid_expiry() {
    let sim = sim(SimOptions::default()).await;
    let ctx = context(&sim, config(&sim, "[quota]\nstorage = \"none\"\n"));
    QuotaJob.run(&ctx).await.unwrap();
    let text = ctx.metrics.render();
    assert!(
        text.contains(
            "kcr_instance_info{charge_type=\"HourlyInstantSettlement\",instance=\"demo\",status=\"Running\",type=\"basic\"} 1"
        ),
        "{text}"
    );
    assert!(
        !text.contains("kcr_instance_expiry_timestamp_seconds{"),
        "pay-as-you-go: no expiry"
    );
    // Prepaid, expiring in 10 days (Beijing wall time, as the API writes it).
    let expires = sim.now() + chrono::Duration::days(10);
    sim.world(|w| {
        let i = &mut w.instances[0];
        i.charge_type = "Monthly".into();
        i.expired_time = Some(expires);
        i.status = "Stopped".into();
    });
    QuotaJob.run(&ctx).await.unwrap();
    let text = ctx.metrics.render();
    let want = expires
        .and_local_timezone(chrono_tz::Asia::Shanghai)
        .unwrap()
        .timestamp();
    let got: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("kcr_instance_expiry_timestamp_seconds{instance=\"demo\"} "))
        .unwrap_or_else(|| panic!("{text}"))
        .parse()
        .unwrap();
    assert_eq!(got as i64, want);
    assert!(text.contains("charge_type=\"Monthly\",instance=\"demo\",status=\"Stopped\""));
    assert!(
        !text.contains("status=\"Running\""),
        "the old status series is gone"
    );
}
