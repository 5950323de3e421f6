//! tokio-cron-scheduler wiring only: each enabled job fires on its 6-field
//! cron in `[scheduler] timezone`, after a random `jitter`, through the
//! runner. A repeated tick proves the scheduler loop is alive: it feeds
//! `/healthz` and the systemd watchdog.

use crate::config::Config;
use crate::jobs::{Runner, Started, Trigger};
use rand::Rng;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};

/// How often the scheduler loop proves it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// The last time the scheduler loop ticked (unix ms).
#[derive(Debug, Default)]
pub struct Heartbeat(AtomicI64);

impl Heartbeat {
    pub fn beat(&self) {
        self.0
            .store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
    }
    /// Ticked within the last `within`.
    pub fn alive(&self, within: Duration) -> bool {
        let last = self.0.load(Ordering::Relaxed);
        last > 0 && chrono::Utc::now().timestamp_millis() - last <= within.as_millis() as i64
    }
}

#[derive(Debug, thiserror::Error)]
#[error("scheduler: {0}")]
pub struct SchedulerError(#[from] JobSchedulerError);

pub struct Scheduler {
    inner: JobScheduler,
}

fn fire(runner: &Arc<Runner>, job: &'static str, trigger: Trigger) {
    match runner.try_start(job, trigger) {
        Ok(Started::Running(_))
        | Ok(Started::AlreadyRunning)
        | Ok(Started::ShuttingDown)
        | Ok(Started::NotLeader(_)) => {}
        Err(e) => tracing::error!(error = %e, "scheduled an unknown job"),
    }
}

impl Scheduler {
    /// Schedule every enabled job the runner knows, then start ticking.
    pub async fn start(
        runner: Arc<Runner>,
        config: &Config,
        heartbeat: Arc<Heartbeat>,
    ) -> Result<Scheduler, SchedulerError> {
        let sched = JobScheduler::new().await?;
        let tz = config.scheduler.timezone;
        let jitter = config.scheduler.jitter;
        for js in config.jobs() {
            let Some(name) = runner.job_names().into_iter().find(|n| *n == js.job) else {
                tracing::warn!(
                    job = js.job,
                    "configured, but this build has no such job yet; not scheduled"
                );
                continue;
            };
            // The gap between the next two fire times: alerts compare the
            // time since the last success against it.
            let next = js.schedule.next_times(chrono::Utc::now(), &tz, 2);
            if let [a, b] = next.as_slice() {
                runner.metrics().jobs.scheduled_every(name, *b - *a);
            }
            let r = runner.clone();
            let job = Job::new_async_tz(js.schedule.as_str(), tz, move |_id, _lock| {
                let r = r.clone();
                Box::pin(async move {
                    if !jitter.is_zero() {
                        let pause = rand::rng().random_range(Duration::ZERO..=jitter);
                        tokio::time::sleep(pause).await;
                    }
                    fire(&r, name, Trigger::Schedule);
                })
            })?;
            sched.add(job).await?;
        }
        let hb = heartbeat.clone();
        let watchdog = watchdog_interval();
        sched
            .add(Job::new_repeated_async(HEARTBEAT, move |_id, _lock| {
                let hb = hb.clone();
                Box::pin(async move {
                    hb.beat();
                    if watchdog.is_some() {
                        let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                    }
                })
            })?)
            .await?;
        heartbeat.beat();
        sched.start().await?;
        if config.scheduler.run_on_start {
            for name in runner.job_names() {
                if config.jobs().iter().any(|j| j.job == name) {
                    fire(&runner, name, Trigger::Start);
                }
            }
        }
        Ok(Scheduler { inner: sched })
    }

    /// Stop firing jobs (running ones are the runner's business).
    pub async fn stop(mut self) {
        if let Err(e) = self.inner.shutdown().await {
            tracing::warn!(error = %e, "scheduler did not stop cleanly");
        }
    }
}

/// The systemd watchdog interval, when systemd asked for pings.
fn watchdog_interval() -> Option<Duration> {
    let interval = sd_notify::watchdog_enabled()?;
    if interval <= HEARTBEAT * 2 {
        tracing::warn!(
            ?interval,
            "WatchdogSec is shorter than twice the scheduler heartbeat; expect restarts"
        );
    }
    Some(interval)
}
