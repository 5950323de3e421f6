//! Background jobs as a small trait, driven by a runner that records every
//! run (state and metrics), never runs two instances of one job at once,
//! applies a per-job timeout and honours cancellation. The daemon's scheduler,
//! the HTTP trigger and the one-shot CLI all go through [`Runner`].

use crate::config::Config;
use crate::kcr::Client;
use crate::leader::{Leadership, NotLeader, Term};
use crate::metrics::Metrics;
use crate::state::{RunResult, StateError, Store};
use chrono::Utc;
use futures::future::BoxFuture;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a timed-out or cancelled job gets to reach its next safe point.
const STOP_GRACE: Duration = Duration::from_secs(60);

/// Everything a job's plan and apply may use, the same for the daemon and
/// the one-shot CLI (built by [`Runner::context`]). `cancel` fires on
/// shutdown, timeout or Ctrl-C: a job checks it between mutations and stops
/// there ([`JobError::Cancelled`] or [`JobError::Stopped`]).
pub struct JobContext {
    pub client: Client,
    pub config: Arc<Config>,
    pub state: Store,
    pub metrics: Arc<Metrics>,
    pub cancel: CancellationToken,
    /// The run's row; `None` while planning outside a run (`plan`, and
    /// `apply` before it asks).
    pub run_id: Option<i64>,
    /// Registry snapshots shared between jobs (`[inventory] max_age`).
    pub inventory: Arc<crate::inventory::InventoryCache>,
    /// What set the run off: a one-shot `apply` (`cli`) enforces whatever
    /// the job's `mode` says, as the operator asked.
    pub trigger: Trigger,
    /// The time (injectable for tests).
    pub clock: Clock,
    /// Told about the run as it goes (a terminal's progress bar and lines).
    pub watch: Arc<dyn Watch>,
}

/// The time source of a [`JobContext`].
pub type Clock = Arc<dyn Fn() -> chrono::DateTime<Utc> + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(Utc::now)
}

impl JobContext {
    pub fn now(&self) -> chrono::DateTime<Utc> {
        (self.clock)()
    }

    /// Does this run change things? A one-shot `apply` always does; a
    /// scheduled or API run when the job's `mode` is `enforce`.
    pub fn enforcing(&self, mode: crate::config::Mode) -> bool {
        self.trigger == Trigger::Cli || mode == crate::config::Mode::Enforce
    }
}

/// Told about a run while it goes: the CLI shows a progress bar and prints
/// the lines; the daemon ignores them (its log has the same facts).
pub trait Watch: Send + Sync {
    /// `total` changes are about to be made.
    fn begin(&self, _total: u64) {}
    /// One change was made (or settled).
    fn tick(&self) {}
    /// The changes are over.
    fn end(&self) {}
    /// A line for the person who started the run (a failed or dropped action).
    fn note(&self, _line: String) {}
    /// Told how a registry listing goes.
    fn listing(&self) -> &dyn crate::inventory::Progress {
        &crate::inventory::Quiet
    }
}

/// A [`Watch`] that ignores everything (the daemon).
pub struct Unwatched;
impl Watch for Unwatched {}

/// A run that finished normally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success(String),
    /// A safety limit stopped the whole run; nothing was changed.
    Blocked(String),
}

/// Why a run failed. [`JobError::code`] is a stable short label for
/// metrics (`kcr_housekeeper_job_failures_total{job,code}`) and logs; the
/// message is for people.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The job's configuration is missing or unusable.
    #[error("{0}")]
    Config(String),
    /// A KCR API call the run could not do without failed.
    #[error(transparent)]
    Api(#[from] crate::kcr::Error),
    /// Listing the namespaces failed: nothing was planned.
    #[error(transparent)]
    Namespaces(#[from] crate::namespaces::NamespaceError),
    /// Some listings or measurements failed: the run did what the complete
    /// ones allow (a partial listing never justifies a deletion).
    #[error("{0}")]
    Partial(String),
    /// Some of the run's changes failed, stopped or have an unknown outcome
    /// (`code`: `actions`, or the first failed token's error code).
    #[error("{summary}")]
    Actions { summary: String, code: &'static str },
    /// The token rotation could not run (see [`crate::tokens::rotate::TokenError::code`]).
    #[error(transparent)]
    Tokens(crate::tokens::rotate::TokenError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cancelled before finishing")]
    Cancelled,
    /// Stopped at a safe point (cancelled) after doing part of its work:
    /// what was done.
    #[error("{0}")]
    Stopped(String),
    /// Abandoned in the middle of a change (a second Ctrl-C): the change in
    /// flight has an unknown outcome, its audit record is closed
    /// `interrupted`.
    #[error(
        "stopped during a change; the outcome of the change in flight is unknown (audited interrupted)"
    )]
    Abandoned,
    #[error("timed out after {}", crate::duration::format(*.0))]
    TimedOut(Duration),
    /// This replica lost the leader lease during the run: every running job
    /// was cancelled and stopped at its next safe point (no KCR mutation
    /// and no state write after it); the new leader closes the run.
    #[error(
        "the leader lease was lost (epoch {epoch}); stopped at a safe point{}",
        .detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default()
    )]
    LeaseLost { epoch: i64, detail: Option<String> },
}

impl JobError {
    /// Every label [`JobError::code`] can give, for seeding and documentation.
    pub const CODES: &[&str] = &[
        "config",
        "api",
        "partial",
        "actions",
        "state",
        "cancelled",
        "timeout",
        "lease_lost",
        "sink",
        "verify",
        "locked",
        "invariant",
        "backoff",
        "injected",
    ];

    /// A stable short label: `config`, `api`, `partial`, `actions`, `state`,
    /// `cancelled`, `timeout`, or a token error's own code (`sink`, `verify`, …).
    pub fn code(&self) -> &'static str {
        match self {
            JobError::Config(_) => "config",
            JobError::Api(_) | JobError::Namespaces(_) => "api",
            JobError::Partial(_) => "partial",
            JobError::Actions { code, .. } => code,
            JobError::Tokens(e) => e.code(),
            JobError::State(_) => "state",
            JobError::Cancelled | JobError::Stopped(_) | JobError::Abandoned => "cancelled",
            JobError::TimedOut(_) => "timeout",
            JobError::LeaseLost { .. } => "lease_lost",
        }
    }
}

impl From<crate::tokens::rotate::TokenError> for JobError {
    fn from(e: crate::tokens::rotate::TokenError) -> Self {
        match e {
            crate::tokens::rotate::TokenError::Cancelled => JobError::Cancelled,
            e => JobError::Tokens(e),
        }
    }
}

/// Every job this build has — the one list the daemon's scheduler, `/jobs`,
/// the API trigger, `history` and the one-shot CLI runner are built from.
/// Adding a job is its folder plus one line here.
pub fn all() -> Vec<Arc<dyn Job>> {
    vec![
        Arc::new(crate::quota::QuotaJob),
        Arc::new(crate::retention::RetentionJob),
        Arc::new(crate::tokens::TokensJob),
        Arc::new(crate::namespaces::NamespacesJob),
    ]
}

pub trait Job: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn run<'a>(&'a self, ctx: &'a JobContext) -> BoxFuture<'a, Result<Outcome, JobError>>;
}

/// A job in two steps: `plan` reads (registry, state, config) and decides;
/// `apply` carries a plan out — every mutation of the job happens there.
/// The daemon's run is plan then apply; the CLI's `plan <job>` renders the
/// plan, and `apply <job>` renders it, asks, and hands it to
/// [`Runner::apply_now`]. Every such job is a [`Job`].
pub trait Steps: Send + Sync + 'static {
    const NAME: &'static str;
    type Plan: Send + 'static;
    fn plan(
        &self,
        ctx: &JobContext,
    ) -> impl std::future::Future<Output = Result<Self::Plan, JobError>> + Send;
    fn apply(
        &self,
        ctx: &JobContext,
        plan: Self::Plan,
    ) -> impl std::future::Future<Output = Result<Outcome, JobError>> + Send;
}

impl<T: Steps> Job for T {
    fn name(&self) -> &'static str {
        T::NAME
    }
    fn run<'a>(&'a self, ctx: &'a JobContext) -> BoxFuture<'a, Result<Outcome, JobError>> {
        Box::pin(async move {
            let plan = self.plan(ctx).await?;
            self.apply(ctx, plan).await
        })
    }
}

/// What a run executes: a job's `run`, or the `apply` of a plan made before.
type Body =
    Box<dyn for<'a> FnOnce(&'a JobContext) -> BoxFuture<'a, Result<Outcome, JobError>> + Send>;

/// What set a run off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Schedule,
    Start,
    Api,
    Cli,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Start => "start",
            Trigger::Api => "api",
            Trigger::Cli => "cli",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunSummary {
    pub job: &'static str,
    pub run_id: i64,
    pub result: RunResult,
    pub summary: String,
    pub error: Option<String>,
    /// [`JobError::code`] of a failed run.
    pub code: Option<&'static str>,
    pub duration: Duration,
}

/// The config and client in force; swapped whole on reload.
pub struct RunEnv {
    pub config: Arc<Config>,
    pub client: Client,
}

pub enum Started {
    Running(JoinHandle<RunSummary>),
    AlreadyRunning,
    /// The runner is stopping; no new runs.
    ShuttingDown,
    /// Another replica leads (or none yet): only the leader runs jobs.
    NotLeader(NotLeader),
}

#[derive(Debug, thiserror::Error)]
#[error("unknown job {0:?}")]
pub struct UnknownJob(pub String);

/// One run from start to finish: its row in the runs table, the job metrics
/// and the log line. [`Runner`] records every run through it, and so does the
/// one-shot CLI (`apply`), so `history` lists both alike.
pub struct RunLog {
    state: Store,
    metrics: Arc<Metrics>,
    job: &'static str,
    trigger: Trigger,
    run_id: i64,
    started: Instant,
}

impl RunLog {
    /// Open the run's row (no result yet: a process that dies leaves it open,
    /// and the next start closes it as interrupted).
    pub fn start(
        state: &Store,
        metrics: Arc<Metrics>,
        job: &'static str,
        trigger: Trigger,
    ) -> Result<RunLog, StateError> {
        let started = Instant::now();
        let run_id = state.start_run(job, trigger.as_str(), Utc::now())?;
        Ok(RunLog {
            state: state.clone(),
            metrics,
            job,
            trigger,
            run_id,
            started,
        })
    }

    pub fn run_id(&self) -> i64 {
        self.run_id
    }

    /// Close the run: its row, the metrics, the log line. `code` labels a
    /// failure ([`JobError::code`]). The summary is returned even when the
    /// row could not be written (the second value).
    pub fn finish(
        self,
        result: RunResult,
        summary: String,
        error: Option<String>,
        code: Option<&'static str>,
    ) -> (RunSummary, Result<(), StateError>) {
        let (name, run_id, trigger) = (self.job, self.run_id, self.trigger);
        let duration = self.started.elapsed();
        let now = Utc::now();
        let recorded = self
            .state
            .finish_run(run_id, now, result, &summary, error.as_deref());
        self.metrics
            .jobs
            .finished(name, result, code, duration, now);
        let ms = duration.as_millis() as u64;
        match &error {
            None => {
                tracing::info!(job = name, run_id, trigger = trigger.as_str(), result = result.as_str(), duration_ms = ms, summary = %summary, "job run finished")
            }
            Some(e) => {
                tracing::warn!(job = name, run_id, trigger = trigger.as_str(), result = result.as_str(), code = code.unwrap_or_default(), duration_ms = ms, error = %e, "job run failed")
            }
        }
        let summary = RunSummary {
            job: name,
            run_id,
            result,
            summary,
            error,
            code,
            duration,
        };
        (summary, recorded)
    }
}

pub struct Runner {
    jobs: BTreeMap<&'static str, Arc<dyn Job>>,
    running: Mutex<HashSet<&'static str>>,
    env: RwLock<Arc<RunEnv>>,
    state: Store,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    inventory: Arc<crate::inventory::InventoryCache>,
    /// Abandon the change in flight (a second Ctrl-C of a one-shot apply).
    abandon: CancellationToken,
    /// Set: runs start only while this replica leads, each in the current
    /// term (its fenced store; cancelled when the lease is lost). Unset:
    /// every run uses `state` (one-shot commands and tests).
    leadership: OnceLock<Arc<Leadership>>,
}

/// Removes a job from the running set however its task ends.
struct RunningGuard<'a> {
    runner: &'a Runner,
    job: &'static str,
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.runner
            .running
            .lock()
            .expect("running lock")
            .remove(self.job);
        self.runner.metrics.jobs.stopped(self.job);
    }
}

impl Runner {
    pub fn new(
        jobs: Vec<Arc<dyn Job>>,
        env: RunEnv,
        state: Store,
        metrics: Arc<Metrics>,
    ) -> Arc<Runner> {
        Arc::new(Runner {
            jobs: jobs.into_iter().map(|j| (j.name(), j)).collect(),
            running: Mutex::new(HashSet::new()),
            env: RwLock::new(Arc::new(env)),
            state,
            metrics,
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
            inventory: Default::default(),
            abandon: CancellationToken::new(),
            leadership: OnceLock::new(),
        })
    }

    /// Runs start only while `leadership` leads (set once, before the
    /// first run).
    pub fn set_leadership(&self, leadership: Arc<Leadership>) {
        if self.leadership.set(leadership).is_err() {
            tracing::error!("the runner's leadership was set twice; the first stays");
        }
    }

    pub fn leadership(&self) -> Option<&Arc<Leadership>> {
        self.leadership.get()
    }

    /// The term a run starts in: the leader's current one, or (without a
    /// leadership) the unfenced state for good.
    pub fn term(&self) -> Result<Term, NotLeader> {
        match self.leadership.get() {
            Some(l) => l.term(),
            None => Ok(Term {
                epoch: None,
                store: self.state.clone(),
                lost: CancellationToken::new(),
            }),
        }
    }

    /// The context a run gets, outside a run (no row yet): what the CLI
    /// plans with before it asks, so that its apply sees the same client,
    /// state, metrics, inventory cache and cancellation as the plan did.
    pub fn context(&self, trigger: Trigger, watch: Arc<dyn Watch>) -> JobContext {
        let env = self.env();
        JobContext {
            client: env.client.clone(),
            config: env.config.clone(),
            state: self.state.clone(),
            metrics: self.metrics.clone(),
            cancel: self.cancel.child_token(),
            run_id: None,
            inventory: self.inventory.clone(),
            trigger,
            clock: system_clock(),
            watch,
        }
    }

    /// Fires when the runner stops (shutdown): every run's `cancel` is a
    /// child of it, so the CLI wires its first Ctrl-C here.
    pub fn stop_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Fires to abandon the change in flight at once (a second Ctrl-C): the
    /// run's open audit records are closed `interrupted`, the run fails
    /// with [`JobError::Abandoned`].
    pub fn abandon_token(&self) -> CancellationToken {
        self.abandon.clone()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn job_names(&self) -> Vec<&'static str> {
        self.jobs.keys().copied().collect()
    }

    pub fn has_job(&self, name: &str) -> bool {
        self.jobs.contains_key(name)
    }

    pub fn is_running(&self, name: &str) -> bool {
        self.running.lock().expect("running lock").contains(name)
    }

    pub fn env(&self) -> Arc<RunEnv> {
        self.env.read().expect("env lock").clone()
    }

    /// Swap in a new config and client; runs in progress keep theirs.
    pub fn replace_env(&self, env: RunEnv) {
        *self.env.write().expect("env lock") = Arc::new(env);
    }

    pub fn state(&self) -> &Store {
        &self.state
    }

    /// Start `job` in the background unless it is already running (then the
    /// trigger is recorded as skipped).
    pub fn try_start(self: &Arc<Self>, job: &str, trigger: Trigger) -> Result<Started, UnknownJob> {
        self.try_start_with_id(job, trigger).map(|(s, _)| s)
    }

    /// As [`Runner::try_start`], with the id of the started run's row
    /// (written before this returns, so it can be looked up at once; `None`
    /// when it could not be written: the run then fails as "state").
    pub fn try_start_with_id(
        self: &Arc<Self>,
        job: &str,
        trigger: Trigger,
    ) -> Result<(Started, Option<i64>), UnknownJob> {
        let (&name, j) = self
            .jobs
            .get_key_value(job)
            .ok_or_else(|| UnknownJob(job.to_owned()))?;
        let j = j.clone();
        if self.cancel.is_cancelled() {
            return Ok((Started::ShuttingDown, None));
        }
        let term = match self.term() {
            Ok(t) => t,
            Err(not) => {
                tracing::debug!(job = name, trigger = trigger.as_str(), %not, "not started");
                return Ok((Started::NotLeader(not), None));
            }
        };
        {
            let mut running = self.running.lock().expect("running lock");
            if !running.insert(name) {
                drop(running);
                self.metrics.jobs.skipped(name);
                if let Err(e) =
                    term.store
                        .record_skipped(name, trigger.as_str(), Utc::now(), "already running")
                {
                    tracing::error!(job = name, error = %e, "cannot record skipped run");
                }
                tracing::info!(
                    job = name,
                    trigger = trigger.as_str(),
                    result = "skipped",
                    "job already running; trigger skipped"
                );
                return Ok((Started::AlreadyRunning, None));
            }
        }
        self.metrics.jobs.started(name);
        let log = RunLog::start(&term.store, self.metrics.clone(), name, trigger);
        let run_id = log.as_ref().ok().map(RunLog::run_id);
        let me = self.clone();
        let body: Body = Box::new(move |ctx| Box::pin(async move { j.run(ctx).await }));
        let watch: Arc<dyn Watch> = Arc::new(Unwatched);
        Ok((
            Started::Running(
                self.tracker
                    .spawn(async move { me.execute(name, trigger, watch, body, log, term).await }),
            ),
            run_id,
        ))
    }

    /// Apply a plan made with [`Runner::context`] as a run of its own (the
    /// one-shot CLI): recorded in the runs table, metrics and log exactly
    /// like a daemon run; waited for here. `None` when the job is already
    /// running or the runner is stopping.
    pub async fn apply_now<J: Steps>(
        self: &Arc<Self>,
        job: Arc<J>,
        plan: J::Plan,
        trigger: Trigger,
        watch: Arc<dyn Watch>,
    ) -> Option<RunSummary> {
        let name = J::NAME;
        let term = self.term().ok()?;
        if self.tracker.is_closed() || !self.running.lock().expect("running lock").insert(name) {
            return None;
        }
        self.metrics.jobs.started(name);
        let log = RunLog::start(&term.store, self.metrics.clone(), name, trigger);
        let body: Body = Box::new(move |ctx| Box::pin(async move { job.apply(ctx, plan).await }));
        Some(self.execute(name, trigger, watch, body, log, term).await)
    }

    /// Run `job` and wait for it (one-shot commands, tests).
    pub async fn run_now(
        self: &Arc<Self>,
        job: &str,
        trigger: Trigger,
    ) -> Result<Option<RunSummary>, UnknownJob> {
        match self.try_start(job, trigger)? {
            Started::Running(h) => Ok(h.await.ok()),
            Started::AlreadyRunning | Started::ShuttingDown | Started::NotLeader(_) => Ok(None),
        }
    }

    async fn execute(
        &self,
        name: &'static str,
        trigger: Trigger,
        watch: Arc<dyn Watch>,
        body: Body,
        log: Result<RunLog, StateError>,
        term: Term,
    ) -> RunSummary {
        let _guard = RunningGuard {
            runner: self,
            job: name,
        };
        let env = self.env();
        let log = match log {
            Ok(log) => log,
            Err(e) => {
                tracing::error!(job = name, error = %e, "cannot record run start; not running");
                self.metrics.jobs.not_started(name, "state");
                return RunSummary {
                    job: name,
                    run_id: 0,
                    result: RunResult::Failure,
                    summary: String::new(),
                    error: Some(e.to_string()),
                    code: Some("state"),
                    duration: Duration::ZERO,
                };
            }
        };
        let run_id = log.run_id();
        let cancel = self.cancel.child_token();
        let ctx = JobContext {
            // Every mutating request of the run asks the term first.
            client: env.client.gated(term.gate(&cancel)),
            config: env.config.clone(),
            state: term.store.clone(),
            metrics: self.metrics.clone(),
            cancel: cancel.clone(),
            run_id: Some(run_id),
            inventory: self.inventory.clone(),
            trigger,
            clock: system_clock(),
            watch,
        };
        let timeout = env.config.scheduler.job_timeout;
        let mut fut = body(&ctx);
        let outcome = tokio::select! {
            biased;
            _ = self.abandon.cancelled() => {
                // Dropped mid-change: the change in flight stays unknown,
                // its audit record is closed as such (never left `started`).
                drop(fut);
                if let Err(e) = term.store.close_interrupted_audit_of_run(run_id) {
                    tracing::error!(job = name, run_id, error = %e, "cannot close the run's audit records");
                }
                return self.finish(name, log, Err(JobError::Abandoned));
            }
            _ = term.lost.cancelled() => {
                // The lease is lost: stop at the next safe point. Every
                // state write is refused from now on (the fence), so the
                // job cannot get far; the new leader closes the run.
                cancel.cancel();
                let detail = match tokio::time::timeout(STOP_GRACE, &mut fut).await {
                    Ok(Ok(_)) | Ok(Err(JobError::Cancelled)) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some("still running when given up".into()),
                };
                Err(JobError::LeaseLost {
                    epoch: term.epoch.unwrap_or_default(),
                    detail,
                })
            }
            r = &mut fut => r,
            _ = tokio::time::sleep(timeout) => {
                // Ask the job to stop at its next safe point rather than dropping it mid-mutation.
                cancel.cancel();
                match tokio::time::timeout(STOP_GRACE, &mut fut).await {
                    Ok(Ok(_))
                    | Ok(Err(JobError::Cancelled | JobError::Stopped(_)))
                    | Err(_) => {
                        Err(JobError::TimedOut(timeout))
                    }
                    Ok(Err(e)) => Err(e),
                }
            }
        };
        drop(fut);
        // A run that failed as the lease ran out (a fenced write refused, a
        // mutation withheld by the term's gate) failed because of it.
        let outcome = match outcome {
            Err(e) if term.over() && !matches!(e, JobError::LeaseLost { .. }) => {
                Err(JobError::LeaseLost {
                    epoch: term.epoch.unwrap_or_default(),
                    detail: Some(e.to_string()),
                })
            }
            o => o,
        };
        self.finish(name, log, outcome)
    }

    fn finish(
        &self,
        name: &'static str,
        log: RunLog,
        outcome: Result<Outcome, JobError>,
    ) -> RunSummary {
        let run_id = log.run_id();
        let (result, summary, error, code) = match outcome {
            Ok(Outcome::Success(s)) => (RunResult::Success, s, None, None),
            Ok(Outcome::Blocked(s)) => (RunResult::Blocked, s, None, None),
            Err(e) => (
                RunResult::Failure,
                String::new(),
                Some(e.to_string()),
                Some(e.code()),
            ),
        };
        let (summary, recorded) = log.finish(result, summary, error, code);
        if let Err(e) = recorded {
            tracing::error!(job = name, run_id, error = %e, "cannot record run end");
        }
        summary
    }

    /// Stop: no new runs; running jobs are told to stop at their next safe
    /// point and waited for up to `grace`. True if all finished in time.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.tracker.close();
        self.cancel.cancel();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::kcr::{ClientConfig, Credentials};
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Slow {
        runs: Arc<AtomicUsize>,
        pause: Duration,
    }

    impl Job for Slow {
        fn name(&self) -> &'static str {
            "slow"
        }
        fn run<'a>(&'a self, ctx: &'a JobContext) -> BoxFuture<'a, Result<Outcome, JobError>> {
            Box::pin(async move {
                self.runs.fetch_add(1, Ordering::SeqCst);
                tokio::select! {
                    _ = tokio::time::sleep(self.pause) => Ok(Outcome::Success("done".into())),
                    _ = ctx.cancel.cancelled() => Err(JobError::Cancelled),
                }
            })
        }
    }

    fn runner(pause: Duration, job_timeout: &str) -> (Arc<Runner>, Arc<AtomicUsize>, Arc<Metrics>) {
        let text = format!(
            "[kcr]\nendpoint = \"sim:demo\"\n[scheduler]\njob_timeout = \"{job_timeout}\"\n[[instances]]\nid = \"i\"\nname = \"p\"\nregistry = \"r\"\n"
        );
        let cfg =
            config::parse(&text, "t.toml", std::path::Path::new("."), &|_: &str| None).unwrap();
        let client = Client::new(ClientConfig::new(
            "http://127.0.0.1:9",
            Credentials::new("a", "b"),
        ))
        .unwrap();
        let runs = Arc::new(AtomicUsize::new(0));
        let metrics = Arc::new(Metrics::new());
        let r = Runner::new(
            vec![Arc::new(Slow {
                runs: runs.clone(),
                pause,
            })],
            RunEnv {
                config: Arc::new(cfg),
                client,
            },
            Store::in_memory().unwrap(),
            metrics.clone(),
        );
        (r, runs, metrics)
    }

    #[tokio::test]
    async fn overlapping_triggers_run_once_and_count_a_skip() {
        let (r, runs, metrics) = runner(Duration::from_millis(200), "1h");
        let first = r.try_start("slow", Trigger::Api).unwrap();
        let second = r.try_start("slow", Trigger::Schedule).unwrap();
        assert!(matches!(second, Started::AlreadyRunning));
        let Started::Running(h) = first else {
            panic!("first trigger runs")
        };
        let summary = h.await.unwrap();
        assert_eq!(summary.result, RunResult::Success);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(metrics.jobs.runs("slow", "skipped"), 1);
        assert_eq!(metrics.jobs.runs("slow", "success"), 1);
        assert!(!r.is_running("slow"));
        let runs = r.state().runs(Some("slow"), 10).unwrap();
        assert_eq!(runs.len(), 2);
        assert!(runs.iter().any(|x| x.result == Some(RunResult::Skipped)));
        assert!(r.state().last_success("slow").unwrap().is_some());
    }

    #[tokio::test]
    async fn timeout_cancels_the_job_and_records_a_failure() {
        let (r, _, metrics) = runner(Duration::from_secs(30), "100ms");
        let s = r.run_now("slow", Trigger::Cli).await.unwrap().unwrap();
        assert_eq!(s.result, RunResult::Failure);
        assert!(s.error.unwrap().contains("timed out after 100ms"));
        assert_eq!(s.code, Some("timeout"));
        assert_eq!(metrics.jobs.failures("slow", "timeout"), 1);
        assert_eq!(metrics.jobs.runs("slow", "failure"), 1);
    }

    #[test]
    fn every_error_has_a_listed_stable_code() {
        use crate::tokens::rotate::TokenError;
        let errors = [
            JobError::Config("no [retention] section".into()),
            JobError::Partial("1 listing failed".into()),
            JobError::Actions {
                summary: "2 failed".into(),
                code: "actions",
            },
            JobError::State(StateError::Injected("x".into())),
            JobError::Cancelled,
            JobError::TimedOut(Duration::from_secs(1)),
            JobError::LeaseLost {
                epoch: 3,
                detail: None,
            },
            TokenError::Invariant("x".into()).into(),
            TokenError::Locked { path: "p".into() }.into(),
        ];
        let codes: Vec<&str> = errors.iter().map(JobError::code).collect();
        assert_eq!(
            codes,
            [
                "config",
                "partial",
                "actions",
                "state",
                "cancelled",
                "timeout",
                "lease_lost",
                "invariant",
                "locked"
            ]
        );
        for c in codes {
            assert!(JobError::CODES.contains(&c), "{c} is listed");
        }
        // A cancelled rotation is a cancelled run, not a token failure.
        assert!(matches!(
            JobError::from(TokenError::Cancelled),
            JobError::Cancelled
        ));
    }

    /// A job in two steps whose apply hangs in the middle of a change.
    struct Hangs;

    impl Steps for Hangs {
        const NAME: &'static str = "hangs";
        type Plan = u32;
        async fn plan(&self, _ctx: &JobContext) -> Result<u32, JobError> {
            Ok(7)
        }
        async fn apply(&self, ctx: &JobContext, plan: u32) -> Result<Outcome, JobError> {
            assert_eq!(plan, 7, "apply gets the plan made before");
            assert_eq!(ctx.trigger, Trigger::Cli);
            assert!(ctx.run_id.is_some(), "applied inside a recorded run");
            std::future::pending::<()>().await;
            unreachable!()
        }
    }

    #[tokio::test]
    async fn a_plan_applied_now_is_a_recorded_run_and_abandoning_it_closes_the_run() {
        let (r, _, metrics) = runner(Duration::from_secs(30), "1h");
        let ctx = r.context(Trigger::Cli, Arc::new(Unwatched));
        assert_eq!(ctx.run_id, None, "planning is outside a run");
        let plan = Hangs.plan(&ctx).await.unwrap();
        let abandon = r.abandon_token();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            abandon.cancel();
        });
        let s = r
            .apply_now(Arc::new(Hangs), plan, Trigger::Cli, Arc::new(Unwatched))
            .await
            .expect("not running yet");
        assert_eq!(s.result, RunResult::Failure);
        assert_eq!(s.code, Some("cancelled"));
        assert!(
            s.error
                .unwrap()
                .contains("outcome of the change in flight is unknown")
        );
        assert_eq!(metrics.jobs.failures("hangs", "cancelled"), 1);
        let runs = r.state().runs(Some("hangs"), 10).unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].trigger, "cli");
        assert!(runs[0].finished_at.is_some(), "the run is closed");
        assert!(!r.is_running("hangs"));
    }

    #[tokio::test]
    async fn a_lost_lease_cancels_running_jobs_at_once_and_starts_nothing_more() {
        let (r, _, metrics) = runner(Duration::from_secs(30), "1h");
        let leadership = Leadership::new(
            r.state().clone(),
            r.state().clone(),
            &r.env().config.leader,
            Duration::from_secs(1),
            "solo".into(),
            metrics.clone(),
        );
        r.set_leadership(leadership.clone());
        let Started::Running(h) = r.try_start("slow", Trigger::Api).unwrap() else {
            panic!("the leader runs jobs")
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let t = Instant::now();
        // The term ends (as when a renewal fails).
        leadership.release().await;
        let s = h.await.unwrap();
        assert!(t.elapsed() < Duration::from_secs(5), "cancelled at once");
        assert_eq!(s.result, RunResult::Failure);
        assert_eq!(s.code, Some("lease_lost"));
        assert!(
            s.error
                .as_deref()
                .unwrap()
                .contains("leader lease was lost (epoch 1)"),
            "{s:?}"
        );
        assert_eq!(metrics.jobs.failures("slow", "lease_lost"), 1);
        // Nothing more starts here, and the refusal writes nothing.
        assert!(matches!(
            r.try_start("slow", Trigger::Schedule).unwrap(),
            Started::NotLeader(NotLeader { leader: None })
        ));
        assert_eq!(r.state().runs(Some("slow"), 10).unwrap().len(), 1);
        assert!(!metrics.daemon.is_leader());
    }

    #[tokio::test]
    async fn shutdown_cancels_running_jobs_and_waits() {
        let (r, _, _) = runner(Duration::from_secs(30), "1h");
        let Started::Running(h) = r.try_start("slow", Trigger::Api).unwrap() else {
            panic!()
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            r.shutdown(Duration::from_secs(5)).await,
            "finished within the grace period"
        );
        assert_eq!(
            h.await.unwrap().error.as_deref(),
            Some("cancelled before finishing")
        );
        assert!(r.try_start("nope", Trigger::Api).is_err());
        assert!(matches!(
            r.try_start("slow", Trigger::Api).unwrap(),
            Started::ShuttingDown
        ));
    }
}
