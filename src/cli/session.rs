//! One-shot runs: the same [`Runner`] and [`JobContext`] as the daemon's
//! (client, state, metrics, inventory cache, clock, cancellation), a
//! [`Watch`] that draws the progress bar and keeps the lines to print, and
//! the way a recorded run becomes output and an exit code.

use super::common::{Bar, confirmed};
use super::stop::StopSignals;
use super::{CliError, failed, io};
use crate::app;
use crate::config::Config;
use crate::jobs::{JobContext, RunEnv, RunSummary, Runner, Steps, Trigger, Watch};
use crate::leader::{self, Leadership, OnLead};
use crate::metrics::Metrics;
use crate::state::{RunResult, Store};
use std::io::Write;
use std::sync::{Arc, Mutex};

/// A connected runner for one command, with the embedded simulator (if
/// any) kept alive as long as it.
pub(super) struct Session {
    pub(super) runner: Arc<Runner>,
    pub(super) watch: Arc<CliWatch>,
    _simulator: Option<app::Embedded>,
}

impl Session {
    /// Connect and build the runner on `state`.
    pub(super) async fn open(c: &Config, state: Store) -> Result<Session, CliError> {
        let conn = app::connect(c).await.map_err(|e| failed(e, "connecting"))?;
        let runner = Runner::new(
            crate::jobs::all(),
            RunEnv {
                config: Arc::new(c.clone()),
                client: conn.client,
            },
            state,
            Arc::new(Metrics::new()),
        );
        Ok(Session {
            runner,
            watch: Arc::new(CliWatch::default()),
            _simulator: conn.simulator,
        })
    }

    /// The context a plan is made with (trigger `cli`, no run yet).
    pub(super) fn context(&self) -> JobContext {
        self.runner.context(Trigger::Cli, self.watch.clone())
    }

    /// The job's plan, as the daemon's run would make it (with a listing
    /// progress bar on a terminal); `what` names the step in an error.
    pub(super) async fn plan<J: Steps>(&self, job: &J, what: &str) -> Result<J::Plan, CliError> {
        let plan = job.plan(&self.context()).await;
        if let Some(bar) = self.watch.listing.get() {
            bar.finish();
        }
        plan.map_err(|e| failed(e, what))
    }

    /// Ask (unless `yes`), then apply `plan` as a recorded run (trigger
    /// `cli`), with Ctrl-C/SIGTERM stopping it at the next safe point and a
    /// second one abandoning the change in flight. Prints the lines the run
    /// noted and its outcome (`job: …`); the error carries the exit code.
    /// `Ok(false)`: declined, nothing applied.
    pub(super) async fn apply<J: Steps>(
        &self,
        job: J,
        plan: J::Plan,
        yes: bool,
        prompt: &str,
        out: &mut dyn Write,
    ) -> Result<bool, CliError> {
        if !confirmed(yes, prompt, out)? {
            return Ok(false);
        }
        let lease = self.take_lease(J::NAME).await?;
        let signals =
            StopSignals::install(&self.runner.stop_token(), &self.runner.abandon_token())?;
        let summary = self
            .runner
            .apply_now(Arc::new(job), plan, Trigger::Cli, self.watch.clone())
            .await;
        if let Some((l, stop, renewing)) = lease {
            stop.cancel();
            let _ = renewing.await;
            l.release().await;
        }
        let summary = summary.ok_or_else(|| {
            failed(
                anyhow::anyhow!("the job is already running, or the leader lease was lost"),
                J::NAME,
            )
        })?;
        self.watch.finish();
        for line in self.watch.take_notes() {
            writeln!(out, "{line}").map_err(io)?;
        }
        outcome(&summary, &signals, out).map(|()| true)
    }
}

type CliLease = (
    Arc<Leadership>,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<()>,
);

impl Session {
    /// With a PostgreSQL state shared by daemon replicas, a one-shot apply
    /// mutates only as the leader: it takes the lease under a holder id of
    /// its own (`cli-…`) and renews it while it applies, so no daemon runs
    /// a job meanwhile, and its writes are fenced like a daemon's. When a
    /// daemon leads, it refuses (exit 3) naming the leader. SQLite: nothing
    /// to take (one host; the job's lock file still guards the tokens).
    async fn take_lease(&self, job: &str) -> Result<Option<CliLease>, CliError> {
        let state = self.runner.state();
        if state.backend_name() != "postgresql" {
            return Ok(None);
        }
        let c = self.runner.env().config.clone();
        let lease_store = Store::open_config(&c.state).map_err(|e| failed(e, job))?;
        let l = Leadership::new(
            lease_store,
            state.clone(),
            &c.leader,
            c.kcr.timeout,
            format!("cli-{}", leader::default_id()),
            Arc::new(Metrics::new()),
        );
        // Taking over from a daemon that died: its runs and audit records
        // are closed as a daemon taking over closes them (review finding 8).
        let close_previous: OnLead = Arc::new(crate::daemon::close_previous);
        // A slow database may not answer the first attempt: keep asking
        // for up to a lease while nobody is known to hold it.
        let until = std::time::Instant::now() + c.leader.lease;
        loop {
            let next = l.step(&close_previous).await;
            match l.term() {
                Ok(_) => break,
                Err(not) if not.leader.is_some() || std::time::Instant::now() >= until => {
                    return Err(CliError::Blocked(format!(
                        "{job}: not applied: {not}; trigger the job on the leading daemon (POST /jobs/{job}/run) or stop the daemons first"
                    )));
                }
                Err(_) => tokio::time::sleep_until(next.min(until).into()).await,
            }
        }
        self.runner.set_leadership(l.clone());
        let stop = tokio_util::sync::CancellationToken::new();
        let renewing = tokio::spawn(l.clone().run(stop.clone(), close_previous));
        Ok(Some((l, stop, renewing)))
    }
}

/// The run's outcome line, and its exit code (DESIGN §4).
fn outcome(s: &RunSummary, signals: &StopSignals, out: &mut dyn Write) -> Result<(), CliError> {
    let job = s.job;
    let text = s.error.as_deref().unwrap_or(&s.summary);
    writeln!(out, "{job}: {text}").map_err(io)?;
    match (s.result, s.code) {
        (RunResult::Success, _) => Ok(()),
        (RunResult::Blocked, _) => Err(CliError::Blocked(format!("{job}: {text}"))),
        (_, Some("cancelled")) => Err(signals.error(format!("{job}: interrupted; {text}"))),
        _ => Err(CliError::Failed(anyhow::anyhow!("{job}: {text}"))),
    }
}

/// The CLI's [`Watch`]: a progress bar on a terminal, the run's lines kept
/// for standard output.
#[derive(Default)]
pub(super) struct CliWatch {
    listing: std::sync::OnceLock<Bar>,
    bar: Mutex<Option<Bar>>,
    notes: Mutex<Vec<String>>,
}

impl CliWatch {
    fn finish(&self) {
        if let Some(bar) = self.bar.lock().expect("bar lock").take() {
            bar.finish();
        }
    }

    fn take_notes(&self) -> Vec<String> {
        std::mem::take(&mut *self.notes.lock().expect("notes lock"))
    }
}

impl Watch for CliWatch {
    fn begin(&self, total: u64) {
        *self.bar.lock().expect("bar lock") = Some(Bar::new("applying", "changes", total));
    }
    fn tick(&self) {
        if let Some(bar) = &*self.bar.lock().expect("bar lock") {
            bar.inc();
        }
    }
    fn end(&self) {
        self.finish();
    }
    fn note(&self, line: String) {
        self.notes.lock().expect("notes lock").push(line);
    }
    fn listing(&self) -> &dyn crate::inventory::Progress {
        self.listing
            .get_or_init(|| Bar::new("listing", "repositories", 0))
    }
}
