//! One `Metrics` struct owns the Prometheus registry and every metric
//! (DESIGN §7): facts about the registry under `kcr_`, the daemon itself
//! under `kcr_housekeeper_`, plus process metrics (RSS, CPU, open fds).

use crate::kcr::ApiObserver;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::time::Duration;

pub struct Metrics {
    registry: Registry,
    pub build_info: IntGaugeVec,
    pub job_runs: IntCounterVec,
    pub job_failures: IntCounterVec,
    pub job_last_success: GaugeVec,
    pub job_duration: HistogramVec,
    pub job_running: IntGaugeVec,
    pub job_interval: GaugeVec,
    pub api_requests: IntCounterVec,
    pub api_duration: HistogramVec,
    pub config_reload_failures: IntCounter,
    pub tasks: prometheus::IntGauge,
    pub up: IntGaugeVec,
    pub quota_used: GaugeVec,
    pub quota_limit: GaugeVec,
    pub quota_ratio: GaugeVec,
    pub retention_planned: GaugeVec,
    pub retention_reclaimable: GaugeVec,
    pub retention_deleted: IntCounterVec,
    pub retention_deleted_bytes: IntCounterVec,
    pub token_expiry: GaugeVec,
    pub token_rotations: IntCounterVec,
    pub token_rotation_in_progress: IntGaugeVec,
    pub token_last_rotation: GaugeVec,
    pub token_foreign: IntGaugeVec,
    pub namespace_public: IntGaugeVec,
    pub namespace_drift: IntGaugeVec,
    pub namespace_changes: IntCounterVec,
    pub namespace_images: GaugeVec,
    pub namespace_size: GaugeVec,
    pub repository_images: GaugeVec,
    pub repository_size: GaugeVec,
    pub inventory_skipped: IntGaugeVec,
    pub token_registry_reachable: IntGaugeVec,
    pub server_retention_rules: IntGaugeVec,
    pub instance_info: IntGaugeVec,
    pub instance_expiry: GaugeVec,
}

impl Metrics {
    /// `kcr_token_expiry_timestamp_seconds` of one token.
    pub fn set_token_expiry(
        &self,
        instance: &str,
        token_id: &str,
        managed: bool,
        enabled: bool,
        expires_at: chrono::DateTime<chrono::Utc>,
    ) {
        let flag = |b: bool| if b { "true" } else { "false" };
        self.token_expiry
            .with_label_values(&[instance, token_id, flag(managed), flag(enabled)])
            .set(expires_at.timestamp() as f64);
    }
}

impl Metrics {
    /// `kcr_housekeeper_token_registry_reachable`: the last anonymous probe of
    /// the managed token's registry (1 = answered 401/2xx, 0 = refused or no answer).
    pub fn set_token_registry_reachable(&self, token: &str, reachable: bool) {
        self.token_registry_reachable
            .with_label_values(&[token])
            .set(i64::from(reachable));
    }

    /// `kcr_server_retention_rules`: enabled server-side retention rules of a namespace.
    pub fn set_server_retention_rules(&self, instance: &str, namespace: &str, enabled: usize) {
        self.server_retention_rules
            .with_label_values(&[instance, namespace])
            .set(enabled as i64);
    }

    /// `kcr_instance_info` (always 1; the labels carry the facts) and, for a
    /// prepaid instance, `kcr_instance_expiry_timestamp_seconds`. Earlier
    /// label sets of the instance are removed, so a changed status does not
    /// leave the old one behind.
    pub fn set_instance_info(
        &self,
        instance: &str,
        status: &str,
        instance_type: &str,
        charge_type: &str,
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
    ) {
        use prometheus::core::Collector;
        for mf in self.instance_info.collect() {
            for m in mf.get_metric() {
                let labels: std::collections::HashMap<&str, &str> = m
                    .get_label()
                    .iter()
                    .map(|l| (l.name(), l.value()))
                    .collect();
                if labels.get("instance") == Some(&instance) {
                    let _ = self.instance_info.remove_label_values(&[
                        instance,
                        labels.get("status").copied().unwrap_or_default(),
                        labels.get("type").copied().unwrap_or_default(),
                        labels.get("charge_type").copied().unwrap_or_default(),
                    ]);
                }
            }
        }
        self.instance_info
            .with_label_values(&[instance, status, instance_type, charge_type])
            .set(1);
        match expires_at {
            Some(t) => self
                .instance_expiry
                .with_label_values(&[instance])
                .set(t.timestamp() as f64),
            None => {
                let _ = self.instance_expiry.remove_label_values(&[instance]);
            }
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

fn int_gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("valid metric");
    r.register(Box::new(h.clone())).expect("registered once");
    h
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("process collector registers once");
        let build_info = int_gauge_vec(
            &r,
            "kcr_housekeeper_build_info",
            "Build of the running daemon; always 1.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let job_runs = counter_vec(
            &r,
            "kcr_housekeeper_job_runs_total",
            "Job runs by outcome: success, failure, blocked (a safety limit stopped it) or skipped (already running).",
            &["job", "result"],
        );
        // A separate counter rather than a `code` label on job_runs_total:
        // that would change the label set of every existing series (the
        // dashboards, alert rules and their tests select `{job,result}`),
        // and seeding it at 0 would need a series per (job, result, code).
        let job_failures = counter_vec(
            &r,
            "kcr_housekeeper_job_failures_total",
            "Failed job runs by cause: config, api, partial (some listings failed), actions (some changes failed), state, cancelled, timeout, or a token error (sink, verify, locked, ...).",
            &["job", "code"],
        );
        let job_last_success = gauge_vec(
            &r,
            "kcr_housekeeper_job_last_success_timestamp_seconds",
            "Unix time the job last finished successfully (absent until it has).",
            &["job"],
        );
        let job_duration = histogram_vec(
            &r,
            "kcr_housekeeper_job_duration_seconds",
            "Wall time of job runs.",
            &["job"],
            vec![0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0],
        );
        let job_running = int_gauge_vec(
            &r,
            "kcr_housekeeper_job_running",
            "1 while a run of the job is in progress.",
            &["job"],
        );
        let api_requests = counter_vec(
            &r,
            "kcr_housekeeper_api_requests_total",
            "KCR API requests sent (each attempt), by action and outcome code (\"OK\" or the error code).",
            &["action", "code"],
        );
        let api_duration = histogram_vec(
            &r,
            "kcr_housekeeper_api_request_duration_seconds",
            "Latency of KCR API requests (each attempt).",
            &["action"],
            vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
        );
        let config_reload_failures = IntCounter::new(
            "kcr_housekeeper_config_reload_failures_total",
            "SIGHUP reloads refused because the new config was invalid (the old one keeps running).",
        )
        .expect("valid metric");
        r.register(Box::new(config_reload_failures.clone()))
            .expect("registered once");
        let up = int_gauge_vec(
            &r,
            "kcr_up",
            "1 if the last KCR API call for the instance succeeded, 0 if it failed (cached from the last run).",
            &["instance"],
        );
        let quota_used = gauge_vec(
            &r,
            "kcr_quota_used",
            "Namespaces or repositories in use (cached from the last quota run).",
            &["instance", "resource"],
        );
        let quota_limit = gauge_vec(
            &r,
            "kcr_quota_limit",
            "Namespace or repository quota (cached from the last quota run).",
            &["instance", "resource"],
        );
        let quota_ratio = gauge_vec(
            &r,
            "kcr_quota_usage_ratio",
            "Used / limit, 0 to 1 (cached from the last quota run).",
            &["instance", "resource"],
        );
        let retention_planned = gauge_vec(
            &r,
            "kcr_housekeeper_retention_planned",
            "Actions in the last retention plan (cached from the last run).",
            &["instance", "action"],
        );
        let retention_reclaimable = gauge_vec(
            &r,
            "kcr_housekeeper_retention_reclaimable_bytes",
            "Bytes the last retention plan would free (cached from the last run).",
            &["instance"],
        );
        let retention_deleted = counter_vec(
            &r,
            "kcr_housekeeper_retention_deleted_total",
            "Retention deletions applied (or found already done).",
            &["instance", "action"],
        );
        let retention_deleted_bytes = counter_vec(
            &r,
            "kcr_housekeeper_retention_deleted_bytes_total",
            "Bytes freed by applied delete_image actions.",
            &["instance"],
        );
        let token_expiry = gauge_vec(
            &r,
            "kcr_token_expiry_timestamp_seconds",
            "Unix time each access token expires (tokens that never expire are absent); managed = rotated by kcr-housekeeper; enabled = the token is enabled (a disabled one authenticates nothing).",
            &["instance", "token_id", "managed", "enabled"],
        );
        let token_rotations = counter_vec(
            &r,
            "kcr_housekeeper_token_rotations_total",
            "Rotations of managed tokens by result (success or failure).",
            &["token", "result"],
        );
        let token_rotation_in_progress = int_gauge_vec(
            &r,
            "kcr_housekeeper_token_rotation_in_progress",
            "1 while a rotation of the managed token is under way.",
            &["token"],
        );
        let token_last_rotation = gauge_vec(
            &r,
            "kcr_housekeeper_token_last_rotation_success_timestamp_seconds",
            "Unix time the managed token was last rotated successfully.",
            &["token"],
        );
        let token_foreign = int_gauge_vec(
            &r,
            "kcr_housekeeper_token_foreign",
            "Tokens with a managed token's name on its instance that another installation manages (never touched).",
            &["token", "instance"],
        );
        let namespace_public = int_gauge_vec(
            &r,
            "kcr_namespace_public",
            "1 if the namespace is public, 0 if private (from the last namespaces run).",
            &["instance", "namespace"],
        );
        let namespace_drift = int_gauge_vec(
            &r,
            "kcr_namespace_policy_drift",
            "1 if the namespace's visibility differs from the policy after the last namespaces run.",
            &["instance", "namespace"],
        );
        let namespace_changes = counter_vec(
            &r,
            "kcr_housekeeper_namespace_changes_total",
            "Namespace visibility changes applied, by the visibility set (public or private).",
            &["instance", "to"],
        );
        let namespace_images = gauge_vec(
            &r,
            "kcr_namespace_images",
            "Images stored in the namespace ([quota] storage = \"namespace\"; from the last quota run).",
            &["instance", "namespace"],
        );
        let namespace_size = gauge_vec(
            &r,
            "kcr_namespace_size_bytes",
            "Bytes stored in the namespace, as the API reports image sizes ([quota] storage = \"namespace\").",
            &["instance", "namespace"],
        );
        let repository_images = gauge_vec(
            &r,
            "kcr_repository_images",
            "Images stored in the repository ([quota] storage = \"repository\").",
            &["instance", "namespace", "repository"],
        );
        let repository_size = gauge_vec(
            &r,
            "kcr_repository_size_bytes",
            "Bytes stored in the repository ([quota] storage = \"repository\").",
            &["instance", "namespace", "repository"],
        );
        let inventory_skipped = int_gauge_vec(
            &r,
            "kcr_housekeeper_inventory_skipped",
            "Listings skipped in the last registry snapshot, by reason (\"access denied\": refused by IAM; \"listing failed\": any other failure).",
            &["instance", "reason"],
        );
        let job_interval = gauge_vec(
            &r,
            "kcr_housekeeper_job_interval_seconds",
            "Seconds between the job's next two scheduled runs (for \"no success for two periods\" alerts).",
            &["job"],
        );
        let token_registry_reachable = int_gauge_vec(
            &r,
            "kcr_housekeeper_token_registry_reachable",
            "1 if the managed token's registry answered an anonymous GET /v2/ from this host before the last rotation (401 or 2xx), 0 if refused (403: the instance's external endpoint access policy) or unreachable.",
            &["token"],
        );
        let server_retention_rules = int_gauge_vec(
            &r,
            "kcr_server_retention_rules",
            "Enabled server-side (KCR/Harbor) retention rules of the namespace, from the last retention run (absent when the endpoint does not offer DescribeRetentionRule).",
            &["instance", "namespace"],
        );
        let instance_info = int_gauge_vec(
            &r,
            "kcr_instance_info",
            "1 per instance; the labels carry DescribeInstance's status, type and charge type (from the last quota run).",
            &["instance", "status", "type", "charge_type"],
        );
        let instance_expiry = gauge_vec(
            &r,
            "kcr_instance_expiry_timestamp_seconds",
            "Unix time a prepaid instance expires (DescribeInstance ExpiredTime); absent for pay-as-you-go instances.",
            &["instance"],
        );
        let tasks = prometheus::IntGauge::new(
            "kcr_housekeeper_tokio_tasks",
            "Tasks alive in the daemon's async runtime (at the last scrape); steady when nothing leaks.",
        )
        .expect("valid metric");
        r.register(Box::new(tasks.clone()))
            .expect("registered once");
        Metrics {
            registry: r,
            tasks,
            token_registry_reachable,
            server_retention_rules,
            instance_info,
            instance_expiry,
            job_interval,
            namespace_public,
            namespace_drift,
            namespace_changes,
            namespace_images,
            namespace_size,
            repository_images,
            repository_size,
            inventory_skipped,
            token_expiry,
            token_rotations,
            token_rotation_in_progress,
            token_last_rotation,
            token_foreign,
            retention_planned,
            retention_reclaimable,
            retention_deleted,
            retention_deleted_bytes,
            build_info,
            job_runs,
            job_failures,
            job_last_success,
            job_duration,
            job_running,
            api_requests,
            api_duration,
            config_reload_failures,
            up,
            quota_used,
            quota_limit,
            quota_ratio,
        }
    }

    /// `kcr_housekeeper_inventory_skipped` from a snapshot.
    pub fn set_inventory_skipped(&self, inv: &crate::inventory::Inventory) {
        for (instance, reason, n) in inv.skipped_counts() {
            self.inventory_skipped
                .with_label_values(&[instance.as_str(), reason])
                .set(n as i64);
        }
    }

    /// Create the counters a config will use at 0, so that `increase()` in
    /// alert rules sees their first event (a series born at 1 shows no increase).
    pub fn init_series(&self, config: &crate::config::Config) {
        for js in config.jobs() {
            for result in ["success", "failure", "blocked", "skipped"] {
                self.job_runs.with_label_values(&[js.job, result]);
            }
        }
        for mt in config.tokens.iter().flat_map(|t| &t.managed) {
            for result in ["success", "failure"] {
                self.token_rotations
                    .with_label_values(&[mt.name.as_str(), result]);
            }
            self.token_rotation_in_progress
                .with_label_values(&[mt.name.as_str()])
                .set(0);
        }
    }

    /// The name of every metric family the daemon exports (process metrics
    /// included), whether or not it has a value yet.
    pub fn metric_names(&self) -> Vec<String> {
        use prometheus::core::Collector;
        let collectors: [&dyn Collector; 36] = [
            &self.token_registry_reachable,
            &self.server_retention_rules,
            &self.instance_info,
            &self.instance_expiry,
            &self.tasks,
            &self.build_info,
            &self.job_runs,
            &self.job_failures,
            &self.job_last_success,
            &self.job_duration,
            &self.job_running,
            &self.job_interval,
            &self.api_requests,
            &self.api_duration,
            &self.config_reload_failures,
            &self.up,
            &self.quota_used,
            &self.quota_limit,
            &self.quota_ratio,
            &self.retention_planned,
            &self.retention_reclaimable,
            &self.retention_deleted,
            &self.retention_deleted_bytes,
            &self.token_expiry,
            &self.token_rotations,
            &self.token_rotation_in_progress,
            &self.token_last_rotation,
            &self.token_foreign,
            &self.namespace_public,
            &self.namespace_drift,
            &self.namespace_changes,
            &self.namespace_images,
            &self.namespace_size,
            &self.repository_images,
            &self.repository_size,
            &self.inventory_skipped,
        ];
        let mut names: Vec<String> = collectors
            .iter()
            .flat_map(|c| c.desc().into_iter().map(|d| d.fq_name.clone()))
            .collect();
        #[cfg(target_os = "linux")]
        names.extend(
            prometheus::process_collector::ProcessCollector::for_self()
                .desc()
                .into_iter()
                .map(|d| d.fq_name.clone()),
        );
        names.sort();
        names.dedup();
        names
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The text exposition format served at `/metrics`.
    pub fn render(&self) -> String {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            self.tasks.set(rt.metrics().num_alive_tasks() as i64);
        }
        let mut buf = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("exposition is UTF-8")
    }
}

impl ApiObserver for Metrics {
    fn observe(&self, action: &'static str, code: &str, elapsed: Duration) {
        self.api_requests.with_label_values(&[action, code]).inc();
        self.api_duration
            .with_label_values(&[action])
            .observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_daemon_metrics() {
        let m = Metrics::new();
        m.observe("DescribeImages", "OK", Duration::from_millis(20));
        m.observe("DescribeImages", "LimitExceeded", Duration::from_millis(5));
        m.job_runs.with_label_values(&["quota", "success"]).inc();
        m.quota_used
            .with_label_values(&["prod", "namespaces"])
            .set(3.0);
        let text = m.render();
        assert!(text.contains(&format!(
            "kcr_housekeeper_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        assert!(text.contains(
            "kcr_housekeeper_api_requests_total{action=\"DescribeImages\",code=\"LimitExceeded\"} 1"
        ));
        assert!(
            text.contains("kcr_housekeeper_job_runs_total{job=\"quota\",result=\"success\"} 1")
        );
        assert!(text.contains("# HELP kcr_quota_used Namespaces or repositories in use (cached from the last quota run)."));
        #[cfg(target_os = "linux")]
        assert!(text.contains("process_resident_memory_bytes"));
    }
}
