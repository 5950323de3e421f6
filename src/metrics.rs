//! The Prometheus registry and every metric (DESIGN §7): facts about the
//! registry under `kcr_`, the daemon itself under `kcr_housekeeper_`, plus
//! process metrics (RSS, CPU, open fds).
//!
//! Metrics are grouped per subsystem, each with verbs saying what happened
//! (`metrics.jobs.finished(..)`, `metrics.api.request(..)`,
//! `metrics.retention.planned(..)`); no caller handles a label array. The
//! list of exported names ([`Metrics::metric_names`]) is recorded as each
//! family is registered, so it cannot drift from what `/metrics` serves.

use crate::kcr::ApiObserver;
use crate::state::RunResult;
use chrono::{DateTime, Utc};
use prometheus::core::Collector;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::Mutex;
use std::time::Duration;

/// Registers families and keeps their names.
struct Registrar {
    registry: Registry,
    names: Mutex<Vec<String>>,
}

impl Registrar {
    fn register<C: Collector + Clone + 'static>(&self, c: C) -> C {
        self.register_box(Box::new(c.clone()));
        c
    }

    fn register_box(&self, c: Box<dyn Collector>) {
        self.names
            .lock()
            .expect("names lock")
            .extend(c.desc().into_iter().map(|d| d.fq_name.clone()));
        self.registry.register(c).expect("registered once");
    }

    fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        self.register(GaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    fn int_gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.register(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    fn histogram_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: Vec<f64>,
    ) -> HistogramVec {
        self.register(
            HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                .expect("valid metric"),
        )
    }
}

fn flag(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

/// Job runs: outcomes, failures by cause, durations, what runs now.
pub struct JobMetrics {
    runs: IntCounterVec,
    failures: IntCounterVec,
    last_success: GaugeVec,
    duration: HistogramVec,
    running: IntGaugeVec,
    interval: GaugeVec,
}

impl JobMetrics {
    fn new(r: &Registrar) -> Self {
        JobMetrics {
            runs: r.counter_vec(
                "kcr_housekeeper_job_runs_total",
                "Job runs by outcome: success, failure, blocked (a safety limit stopped it) or skipped (already running).",
                &["job", "result"],
            ),
            // A separate counter rather than a `code` label on job_runs_total:
            // that would change the label set of every existing series (the
            // dashboards, alert rules and their tests select `{job,result}`),
            // and seeding it at 0 would need a series per (job, result, code).
            failures: r.counter_vec(
                "kcr_housekeeper_job_failures_total",
                "Failed job runs by cause: config, api, partial (some listings failed), actions (some changes failed), state, cancelled, timeout, or a token error (sink, verify, locked, ...).",
                &["job", "code"],
            ),
            last_success: r.gauge_vec(
                "kcr_housekeeper_job_last_success_timestamp_seconds",
                "Unix time the job last finished successfully (absent until it has).",
                &["job"],
            ),
            duration: r.histogram_vec(
                "kcr_housekeeper_job_duration_seconds",
                "Wall time of job runs.",
                &["job"],
                vec![0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0],
            ),
            running: r.int_gauge_vec(
                "kcr_housekeeper_job_running",
                "1 while a run of the job is in progress.",
                &["job"],
            ),
            interval: r.gauge_vec(
                "kcr_housekeeper_job_interval_seconds",
                "Seconds between the job's next two scheduled runs (for \"no success for two periods\" alerts).",
                &["job"],
            ),
        }
    }

    /// Create the run counters of `job` at 0, so that `increase()` in alert
    /// rules sees their first event (a series born at 1 shows no increase).
    pub fn seed(&self, job: &str) {
        for result in ["success", "failure", "blocked", "skipped"] {
            self.runs.with_label_values(&[job, result]);
        }
    }

    pub fn started(&self, job: &str) {
        self.running.with_label_values(&[job]).set(1);
    }

    /// The run is over (however it ended).
    pub fn stopped(&self, job: &str) {
        self.running.with_label_values(&[job]).set(0);
    }

    /// A trigger found the job already running.
    pub fn skipped(&self, job: &str) {
        self.runs.with_label_values(&[job, "skipped"]).inc();
    }

    /// A run ended with `result`; `code` says why a failed one failed
    /// ([`crate::jobs::JobError::code`]).
    pub fn finished(
        &self,
        job: &str,
        result: RunResult,
        code: Option<&str>,
        elapsed: Duration,
        at: DateTime<Utc>,
    ) {
        self.runs.with_label_values(&[job, result.as_str()]).inc();
        if let Some(code) = code {
            self.failures.with_label_values(&[job, code]).inc();
        }
        self.duration
            .with_label_values(&[job])
            .observe(elapsed.as_secs_f64());
        if result == RunResult::Success {
            self.last_success
                .with_label_values(&[job])
                .set(at.timestamp() as f64);
        }
    }

    /// A run that could not start (its run record could not be written).
    pub fn not_started(&self, job: &str, code: &str) {
        self.runs.with_label_values(&[job, "failure"]).inc();
        self.failures.with_label_values(&[job, code]).inc();
    }

    /// The gap between the job's next two scheduled runs.
    pub fn scheduled_every(&self, job: &str, interval: chrono::Duration) {
        self.interval
            .with_label_values(&[job])
            .set(interval.num_seconds() as f64);
    }

    /// Runs of `job` that ended with `result` (tests, diagnostics).
    pub fn runs(&self, job: &str, result: &str) -> u64 {
        self.runs.with_label_values(&[job, result]).get()
    }

    /// Failed runs of `job` with `code`.
    pub fn failures(&self, job: &str, code: &str) -> u64 {
        self.failures.with_label_values(&[job, code]).get()
    }
}

/// KCR API calls and what they say about each instance.
pub struct ApiMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    up: IntGaugeVec,
}

impl ApiMetrics {
    fn new(r: &Registrar) -> Self {
        ApiMetrics {
            requests: r.counter_vec(
                "kcr_housekeeper_api_requests_total",
                "KCR API requests sent (each attempt), by action and outcome code (\"OK\" or the error code).",
                &["action", "code"],
            ),
            duration: r.histogram_vec(
                "kcr_housekeeper_api_request_duration_seconds",
                "Latency of KCR API requests (each attempt).",
                &["action"],
                vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
            ),
            up: r.int_gauge_vec(
                "kcr_up",
                "1 if the last KCR API call for the instance succeeded, 0 if it failed (cached from the last run).",
                &["instance"],
            ),
        }
    }

    /// One attempt of `action` answered `code` ("OK" or the error code).
    pub fn request(&self, action: &str, code: &str, elapsed: Duration) {
        self.requests.with_label_values(&[action, code]).inc();
        self.duration
            .with_label_values(&[action])
            .observe(elapsed.as_secs_f64());
    }

    /// The last call for `instance` succeeded (or not).
    pub fn reached(&self, instance: &str, ok: bool) {
        self.up.with_label_values(&[instance]).set(i64::from(ok));
    }
}

/// The last retention plan and what its runs deleted.
pub struct RetentionMetrics {
    server_rules: IntGaugeVec,
    planned: GaugeVec,
    reclaimable: GaugeVec,
    in_use_vetoes: IntGaugeVec,
    deleted: IntCounterVec,
    deleted_bytes: IntCounterVec,
}

impl RetentionMetrics {
    fn new(r: &Registrar) -> Self {
        RetentionMetrics {
            server_rules: r.int_gauge_vec(
                "kcr_server_retention_rules",
                "Enabled server-side (KCR/Harbor) retention rules of the namespace, from the last retention run (absent when the endpoint does not offer DescribeRetentionRule).",
                &["instance", "namespace"],
            ),
            planned: r.gauge_vec(
                "kcr_housekeeper_retention_planned",
                "Actions in the last retention plan (cached from the last run).",
                &["instance", "action"],
            ),
            reclaimable: r.gauge_vec(
                "kcr_housekeeper_retention_reclaimable_bytes",
                "Bytes the last retention plan would free (cached from the last run).",
                &["instance"],
            ),
            in_use_vetoes: r.int_gauge_vec(
                "kcr_housekeeper_retention_in_use_vetoes",
                "Images the last retention plan would have deleted (whole or some tags) but kept because they are in use ([retention.in_use]).",
                &["instance"],
            ),
            deleted: r.counter_vec(
                "kcr_housekeeper_retention_deleted_total",
                "Retention deletions applied (or found already done).",
                &["instance", "action"],
            ),
            deleted_bytes: r.counter_vec(
                "kcr_housekeeper_retention_deleted_bytes_total",
                "Bytes freed by applied delete_image actions.",
                &["instance"],
            ),
        }
    }

    /// The plan for `instance`: images and tags to delete, bytes they free.
    pub fn planned(&self, instance: &str, delete_image: u64, delete_tag: u64, bytes: u64) {
        self.planned
            .with_label_values(&[instance, "delete_image"])
            .set(delete_image as f64);
        self.planned
            .with_label_values(&[instance, "delete_tag"])
            .set(delete_tag as f64);
        self.reclaimable
            .with_label_values(&[instance])
            .set(bytes as f64);
    }

    /// Images of `instance` the last plan kept because they are in use.
    pub fn in_use_vetoes(&self, instance: &str, images: usize) {
        self.in_use_vetoes
            .with_label_values(&[instance])
            .set(images as i64);
    }

    /// Enabled server-side retention rules of a namespace.
    pub fn server_rules(&self, instance: &str, namespace: &str, enabled: usize) {
        self.server_rules
            .with_label_values(&[instance, namespace])
            .set(enabled as i64);
    }

    /// One `action` (`delete_image`, `delete_tag`) applied or found done.
    pub fn deleted(&self, instance: &str, action: &str) {
        self.deleted.with_label_values(&[instance, action]).inc();
    }

    /// Bytes freed on `instance` by applied image deletions.
    pub fn freed(&self, instance: &str, bytes: u64) {
        self.deleted_bytes
            .with_label_values(&[instance])
            .inc_by(bytes);
    }
}

/// Access tokens: expiry of every token, rotations of managed ones.
pub struct TokenMetrics {
    registry_reachable: IntGaugeVec,
    expiry: GaugeVec,
    rotations: IntCounterVec,
    in_progress: IntGaugeVec,
    last_rotation: GaugeVec,
    foreign: IntGaugeVec,
    delivered: IntGaugeVec,
}

impl TokenMetrics {
    fn new(r: &Registrar) -> Self {
        TokenMetrics {
            registry_reachable: r.int_gauge_vec(
                "kcr_housekeeper_token_registry_reachable",
                "1 if the managed token's registry answered an anonymous GET /v2/ from this host before the last rotation (401 or 2xx), 0 if refused (403: the instance's external endpoint access policy) or unreachable.",
                &["token"],
            ),
            expiry: r.gauge_vec(
                "kcr_token_expiry_timestamp_seconds",
                "Unix time each access token expires (tokens that never expire are absent); managed = rotated by kcr-housekeeper; enabled = the token is enabled (a disabled one authenticates nothing).",
                &["instance", "token_id", "managed", "enabled"],
            ),
            rotations: r.counter_vec(
                "kcr_housekeeper_token_rotations_total",
                "Rotations of managed tokens by result (success or failure).",
                &["token", "result"],
            ),
            in_progress: r.int_gauge_vec(
                "kcr_housekeeper_token_rotation_in_progress",
                "1 while a rotation of the managed token is under way.",
                &["token"],
            ),
            last_rotation: r.gauge_vec(
                "kcr_housekeeper_token_last_rotation_success_timestamp_seconds",
                "Unix time the managed token was last rotated successfully.",
                &["token"],
            ),
            foreign: r.int_gauge_vec(
                "kcr_housekeeper_token_foreign",
                "Tokens with a managed token's name on its instance that another installation manages (never touched).",
                &["token", "instance"],
            ),
            delivered: r.int_gauge_vec(
                "kcr_housekeeper_token_delivered",
                "1 if this replica's sinks (its [tokens] delivery_group) received the managed token's current token, 0 if another replica created and delivered it (only the creator knows the secret; a leader then rotates) or there is none.",
                &["token"],
            ),
        }
    }

    /// Create the managed token's rotation series at 0 (see [`JobMetrics::seed`]).
    pub fn seed(&self, token: &str) {
        for result in ["success", "failure"] {
            self.rotations.with_label_values(&[token, result]);
        }
        self.in_progress.with_label_values(&[token]).set(0);
    }

    /// A rotation of `token` began (`true`) or ended (`false`).
    pub fn rotating(&self, token: &str, yes: bool) {
        self.in_progress
            .with_label_values(&[token])
            .set(i64::from(yes));
    }

    /// A rotation of `token` ended; `at` is when, if it succeeded.
    pub fn rotated(&self, token: &str, ok: bool, at: DateTime<Utc>) {
        let result = if ok { "success" } else { "failure" };
        self.rotations.with_label_values(&[token, result]).inc();
        if ok {
            self.last_rotation
                .with_label_values(&[token])
                .set(at.timestamp() as f64);
        }
    }

    /// The last anonymous probe of `token`'s registry: answered 401/2xx
    /// (`true`), or refused or unanswered.
    pub fn registry_reachable(&self, token: &str, reachable: bool) {
        self.registry_reachable
            .with_label_values(&[token])
            .set(i64::from(reachable));
    }

    /// Tokens of `token`'s name on `instance` that another installation manages.
    pub fn foreign(&self, token: &str, instance: &str, count: usize) {
        self.foreign
            .with_label_values(&[token, instance])
            .set(count as i64);
    }

    /// Did this replica's sinks receive `token`'s current token?
    pub fn delivered(&self, token: &str, yes: bool) {
        self.delivered
            .with_label_values(&[token])
            .set(i64::from(yes));
    }

    /// Replace every `kcr_token_expiry_timestamp_seconds` series with `tokens`:
    /// (instance, token id, managed, enabled, expiry).
    pub fn expiries<'a>(
        &self,
        tokens: impl IntoIterator<Item = (&'a str, &'a str, bool, bool, DateTime<Utc>)>,
    ) {
        self.expiry.reset();
        for (instance, token_id, managed, enabled, at) in tokens {
            self.expires(instance, token_id, managed, enabled, at);
        }
    }

    /// One token's `kcr_token_expiry_timestamp_seconds` (a token just created).
    pub fn expires(
        &self,
        instance: &str,
        token_id: &str,
        managed: bool,
        enabled: bool,
        at: DateTime<Utc>,
    ) {
        self.expiry
            .with_label_values(&[instance, token_id, flag(managed), flag(enabled)])
            .set(at.timestamp() as f64);
    }
}

/// Namespace visibility and the policy's changes.
pub struct NamespaceMetrics {
    public: IntGaugeVec,
    drift: IntGaugeVec,
    changes: IntCounterVec,
}

impl NamespaceMetrics {
    fn new(r: &Registrar) -> Self {
        NamespaceMetrics {
            public: r.int_gauge_vec(
                "kcr_namespace_public",
                "1 if the namespace is public, 0 if private (from the last namespaces run).",
                &["instance", "namespace"],
            ),
            drift: r.int_gauge_vec(
                "kcr_namespace_policy_drift",
                "1 if the namespace's visibility differs from the policy after the last namespaces run.",
                &["instance", "namespace"],
            ),
            changes: r.counter_vec(
                "kcr_housekeeper_namespace_changes_total",
                "Namespace visibility changes applied, by the visibility set (public or private).",
                &["instance", "to"],
            ),
        }
    }

    /// Replace the visibility and drift series with `namespaces`:
    /// (instance, namespace, public, drifting).
    pub fn observed<'a>(
        &self,
        namespaces: impl IntoIterator<Item = (&'a str, &'a str, bool, bool)>,
    ) {
        self.public.reset();
        self.drift.reset();
        for (instance, namespace, public, drift) in namespaces {
            let labels = [instance, namespace];
            self.public
                .with_label_values(&labels)
                .set(i64::from(public));
            self.drift.with_label_values(&labels).set(i64::from(drift));
        }
    }

    /// A namespace of `instance` was made `to` (`public` or `private`).
    pub fn changed(&self, instance: &str, to: &str) {
        self.changes.with_label_values(&[instance, to]).inc();
    }
}

/// Quota usage and stored bytes and images.
pub struct QuotaMetrics {
    used: GaugeVec,
    limit: GaugeVec,
    ratio: GaugeVec,
    namespace_images: GaugeVec,
    namespace_size: GaugeVec,
    repository_images: GaugeVec,
    repository_size: GaugeVec,
}

impl QuotaMetrics {
    fn new(r: &Registrar) -> Self {
        QuotaMetrics {
            used: r.gauge_vec(
                "kcr_quota_used",
                "Namespaces or repositories in use (cached from the last quota run).",
                &["instance", "resource"],
            ),
            limit: r.gauge_vec(
                "kcr_quota_limit",
                "Namespace or repository quota (cached from the last quota run).",
                &["instance", "resource"],
            ),
            ratio: r.gauge_vec(
                "kcr_quota_usage_ratio",
                "Used / limit, 0 to 1 (cached from the last quota run).",
                &["instance", "resource"],
            ),
            namespace_images: r.gauge_vec(
                "kcr_namespace_images",
                "Images stored in the namespace ([quota] storage = \"namespace\"; from the last quota run).",
                &["instance", "namespace"],
            ),
            namespace_size: r.gauge_vec(
                "kcr_namespace_size_bytes",
                "Bytes stored in the namespace, as the API reports image sizes ([quota] storage = \"namespace\").",
                &["instance", "namespace"],
            ),
            repository_images: r.gauge_vec(
                "kcr_repository_images",
                "Images stored in the repository ([quota] storage = \"repository\").",
                &["instance", "namespace", "repository"],
            ),
            repository_size: r.gauge_vec(
                "kcr_repository_size_bytes",
                "Bytes stored in the repository ([quota] storage = \"repository\").",
                &["instance", "namespace", "repository"],
            ),
        }
    }

    /// `resource` (`namespaces`, `repositories`) of `instance`: used of limit.
    pub fn usage(&self, instance: &str, resource: &str, used: u64, limit: u64, ratio: f64) {
        let labels = [instance, resource];
        self.used.with_label_values(&labels).set(used as f64);
        self.limit.with_label_values(&labels).set(limit as f64);
        self.ratio.with_label_values(&labels).set(ratio);
    }

    /// Images and bytes stored in a namespace.
    pub fn namespace_stored(&self, instance: &str, namespace: &str, images: u64, bytes: u64) {
        let labels = [instance, namespace];
        self.namespace_images
            .with_label_values(&labels)
            .set(images as f64);
        self.namespace_size
            .with_label_values(&labels)
            .set(bytes as f64);
    }

    /// Images and bytes stored in a repository.
    pub fn repository_stored(
        &self,
        instance: &str,
        namespace: &str,
        repository: &str,
        images: u64,
        bytes: u64,
    ) {
        let labels = [instance, namespace, repository];
        self.repository_images
            .with_label_values(&labels)
            .set(images as f64);
        self.repository_size
            .with_label_values(&labels)
            .set(bytes as f64);
    }
}

/// Facts about each KCR instance (DescribeInstance).
pub struct InstanceMetrics {
    info: IntGaugeVec,
    expiry: GaugeVec,
}

impl InstanceMetrics {
    fn new(r: &Registrar) -> Self {
        InstanceMetrics {
            info: r.int_gauge_vec(
                "kcr_instance_info",
                "1 per instance; the labels carry DescribeInstance's status, type and charge type (from the last quota run).",
                &["instance", "status", "type", "charge_type"],
            ),
            expiry: r.gauge_vec(
                "kcr_instance_expiry_timestamp_seconds",
                "Unix time a prepaid instance expires (DescribeInstance ExpiredTime); absent for pay-as-you-go instances.",
                &["instance"],
            ),
        }
    }

    /// `kcr_instance_info` (always 1; the labels carry the facts) and, for a
    /// prepaid instance, `kcr_instance_expiry_timestamp_seconds`. Earlier
    /// label sets of the instance are removed, so a changed status does not
    /// leave the old one behind.
    pub fn described(
        &self,
        instance: &str,
        status: &str,
        instance_type: &str,
        charge_type: &str,
        expires_at: Option<DateTime<Utc>>,
    ) {
        for mf in self.info.collect() {
            for m in mf.get_metric() {
                let labels: std::collections::HashMap<&str, &str> = m
                    .get_label()
                    .iter()
                    .map(|l| (l.name(), l.value()))
                    .collect();
                if labels.get("instance") == Some(&instance) {
                    let _ = self.info.remove_label_values(&[
                        instance,
                        labels.get("status").copied().unwrap_or_default(),
                        labels.get("type").copied().unwrap_or_default(),
                        labels.get("charge_type").copied().unwrap_or_default(),
                    ]);
                }
            }
        }
        self.info
            .with_label_values(&[instance, status, instance_type, charge_type])
            .set(1);
        match expires_at {
            Some(t) => self
                .expiry
                .with_label_values(&[instance])
                .set(t.timestamp() as f64),
            None => {
                let _ = self.expiry.remove_label_values(&[instance]);
            }
        }
    }
}

/// The registry snapshot shared by jobs.
pub struct InventoryMetrics {
    skipped: IntGaugeVec,
}

impl InventoryMetrics {
    fn new(r: &Registrar) -> Self {
        InventoryMetrics {
            skipped: r.int_gauge_vec(
                "kcr_housekeeper_inventory_skipped",
                "Listings skipped in the last registry snapshot, by reason (\"access denied\": refused by IAM where the instance's scope says it should not be; \"outside scope\": refused outside the declared scope, expected; \"listing failed\": any other failure).",
                &["instance", "reason"],
            ),
        }
    }

    /// The listings `inv` skipped, per instance and reason.
    pub fn snapshot(&self, inv: &crate::inventory::Inventory) {
        for (instance, reason, n) in inv.skipped_counts() {
            self.skipped
                .with_label_values(&[instance.as_str(), reason])
                .set(n as i64);
        }
    }

    /// Listings skipped on `instance` for `reason` in the last snapshot.
    pub fn skipped(&self, instance: &str, reason: &str) -> i64 {
        self.skipped.with_label_values(&[instance, reason]).get()
    }
}

/// The daemon itself: build, reloads, async tasks.
pub struct DaemonMetrics {
    reload_failures: IntCounter,
    tasks: IntGauge,
    state_up: IntGaugeVec,
    leader: IntGauge,
    leader_epoch: IntGauge,
    leader_transitions: IntCounter,
}

impl DaemonMetrics {
    fn new(r: &Registrar) -> Self {
        let build_info = r.int_gauge_vec(
            "kcr_housekeeper_build_info",
            "Build of the running daemon; always 1.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        DaemonMetrics {
            reload_failures: r.register(
                IntCounter::new(
                    "kcr_housekeeper_config_reload_failures_total",
                    "SIGHUP reloads refused because the new config was invalid (the old one keeps running).",
                )
                .expect("valid metric"),
            ),
            tasks: r.register(
                IntGauge::new(
                    "kcr_housekeeper_tokio_tasks",
                    "Tasks alive in the daemon's async runtime (at the last scrape); steady when nothing leaks.",
                )
                .expect("valid metric"),
            ),
            state_up: r.int_gauge_vec(
                "kcr_housekeeper_state_backend_up",
                "Whether the state database answers (1) or not (0), at the last scrape; backend = sqlite or postgresql.",
                &["backend"],
            ),
            leader: r.register(
                IntGauge::new(
                    "kcr_housekeeper_leader",
                    "1 while this replica holds the leader lease (runs jobs), else 0; exactly one replica per database should report 1.",
                )
                .expect("valid metric"),
            ),
            leader_epoch: r.register(
                IntGauge::new(
                    "kcr_housekeeper_leader_epoch",
                    "The lease epoch (fencing token) this replica last saw: its own while leading, else the leader's (0: none seen).",
                )
                .expect("valid metric"),
            ),
            leader_transitions: r.register(
                IntCounter::new(
                    "kcr_housekeeper_leader_transitions_total",
                    "Times this replica became leader or stopped leading.",
                )
                .expect("valid metric"),
            ),
        }
    }

    /// This replica leads (`true`) or follows, at `epoch` (0: none seen).
    pub fn leadership(&self, leader: bool, epoch: i64) {
        self.leader.set(i64::from(leader));
        self.leader_epoch.set(epoch);
    }

    /// This replica became leader or stopped leading.
    pub fn leader_transition(&self) {
        self.leader_transitions.inc();
    }

    /// Whether this replica leads (for tests).
    pub fn is_leader(&self) -> bool {
        self.leader.get() == 1
    }

    /// Whether the state database answers (set at each scrape).
    pub fn state_backend(&self, backend: &str, up: bool) {
        self.state_up
            .with_label_values(&[backend])
            .set(i64::from(up));
    }

    /// A SIGHUP reload was refused (the new config is invalid).
    pub fn reload_failed(&self) {
        self.reload_failures.inc();
    }
}

pub struct Metrics {
    registrar: Registrar,
    pub jobs: JobMetrics,
    pub api: ApiMetrics,
    pub retention: RetentionMetrics,
    pub tokens: TokenMetrics,
    pub namespaces: NamespaceMetrics,
    pub quota: QuotaMetrics,
    pub instances: InstanceMetrics,
    pub inventory: InventoryMetrics,
    pub daemon: DaemonMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registrar {
            registry: Registry::new(),
            names: Mutex::new(Vec::new()),
        };
        #[cfg(target_os = "linux")]
        r.register_box(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        Metrics {
            daemon: DaemonMetrics::new(&r),
            jobs: JobMetrics::new(&r),
            api: ApiMetrics::new(&r),
            quota: QuotaMetrics::new(&r),
            instances: InstanceMetrics::new(&r),
            inventory: InventoryMetrics::new(&r),
            retention: RetentionMetrics::new(&r),
            tokens: TokenMetrics::new(&r),
            namespaces: NamespaceMetrics::new(&r),
            registrar: r,
        }
    }

    /// Same as `metrics.retention.server_rules(..)` (kept for call sites
    /// written against the earlier flat API).
    pub fn set_server_retention_rules(&self, instance: &str, namespace: &str, enabled: usize) {
        self.retention.server_rules(instance, namespace, enabled);
    }

    /// Same as `metrics.instances.described(..)` (kept for call sites
    /// written against the earlier flat API).
    pub fn set_instance_info(
        &self,
        instance: &str,
        status: &str,
        instance_type: &str,
        charge_type: &str,
        expires_at: Option<DateTime<Utc>>,
    ) {
        self.instances
            .described(instance, status, instance_type, charge_type, expires_at);
    }

    /// Create the counters a config will use at 0, so that `increase()` in
    /// alert rules sees their first event (a series born at 1 shows no increase).
    pub fn init_series(&self, config: &crate::config::Config) {
        for js in config.jobs() {
            self.jobs.seed(js.job);
        }
        for mt in config.tokens.iter().flat_map(|t| &t.managed) {
            self.tokens.seed(mt.name.as_str());
        }
    }

    /// The name of every metric family the daemon exports (process metrics
    /// included), whether or not it has a value yet: recorded as each family
    /// was registered.
    pub fn metric_names(&self) -> Vec<String> {
        let mut names = self.registrar.names.lock().expect("names lock").clone();
        names.sort();
        names.dedup();
        names
    }

    pub fn registry(&self) -> &Registry {
        &self.registrar.registry
    }

    /// The text exposition format served at `/metrics`.
    pub fn render(&self) -> String {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            self.daemon.tasks.set(rt.metrics().num_alive_tasks() as i64);
        }
        let mut buf = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registrar.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("exposition is UTF-8")
    }
}

impl ApiObserver for Metrics {
    fn observe(&self, action: &'static str, code: &str, elapsed: Duration) {
        self.api.request(action, code, elapsed);
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
        m.jobs.finished(
            "quota",
            RunResult::Success,
            None,
            Duration::from_millis(3),
            Utc::now(),
        );
        m.quota.usage("prod", "namespaces", 3, 10, 0.3);
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

    #[test]
    fn the_name_list_is_what_gets_exported() {
        let m = Metrics::new();
        // Give every family a value so that /metrics shows all of them.
        let at = Utc::now();
        m.jobs.seed("j");
        m.jobs.started("j");
        m.jobs.finished(
            "j",
            RunResult::Failure,
            Some("api"),
            Duration::from_secs(1),
            at,
        );
        m.jobs
            .finished("j", RunResult::Success, None, Duration::from_secs(1), at);
        m.jobs.scheduled_every("j", chrono::Duration::hours(1));
        m.api.request("A", "OK", Duration::from_millis(1));
        m.api.reached("i", true);
        m.retention.planned("i", 1, 2, 3);
        m.retention.in_use_vetoes("i", 1);
        m.retention.deleted("i", "delete_tag");
        m.retention.freed("i", 3);
        m.tokens.seed("t");
        m.tokens.rotated("t", true, at);
        m.tokens.foreign("t", "i", 0);
        m.tokens.delivered("t", true);
        m.tokens.expiries([("i", "tok", true, true, at)]);
        m.namespaces.observed([("i", "ns", true, false)]);
        m.namespaces.changed("i", "private");
        m.quota.usage("i", "namespaces", 1, 2, 0.5);
        m.quota.namespace_stored("i", "ns", 1, 2);
        m.quota.repository_stored("i", "ns", "r", 1, 2);
        m.daemon.reload_failed();
        m.daemon.state_backend("sqlite", true);
        assert_eq!(m.inventory.skipped("i", "access denied"), 0);
        m.tokens.registry_reachable("t", true);
        m.retention.server_rules("i", "ns", 1);
        m.instances
            .described("i", "Running", "basic", "PostPaid", Some(at));
        let rendered: Vec<String> = m
            .registry()
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        let mut rendered_sorted = rendered.clone();
        rendered_sorted.sort();
        assert_eq!(m.metric_names(), rendered_sorted);
        for must in [
            "kcr_housekeeper_job_runs_total",
            "kcr_housekeeper_job_failures_total",
            "kcr_token_expiry_timestamp_seconds",
            "kcr_up",
        ] {
            assert!(m.metric_names().iter().any(|n| n == must), "{must}");
        }
        assert_eq!(m.jobs.failures("j", "api"), 1);
        assert_eq!(m.jobs.runs("j", "success"), 1);
    }
}
