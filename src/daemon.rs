//! The long-running daemon: state, admin server, scheduler and jobs, with one
//! shutdown path for SIGINT/SIGTERM (stop scheduling, let running jobs reach
//! their next safe point, exit within `shutdown_timeout`) and SIGHUP reload
//! (a bad config is refused and counted; the old one keeps running).

use crate::app::{self, Connection};
use crate::config::{self, Config, ProcessEnv};
use crate::jobs::{RunEnv, Runner};
use crate::leader::{self, Leadership, OnLead};
use crate::metrics::Metrics;
use crate::scheduler::{Heartbeat, Scheduler};
use crate::server::{self, AppState};
use crate::signal::{Signal, Signals};
use crate::state::Store;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Exit 2: the environment or config does not allow starting.
    #[error("{0}")]
    Setup(String),
    /// Exit 1.
    #[error("{0}")]
    Runtime(String),
}

/// What the caller gets to see once the daemon is serving.
#[derive(Debug, Clone)]
pub struct Started {
    pub listen: SocketAddr,
}

/// Run until SIGINT/SIGTERM. `config_path` is re-read on SIGHUP (None: no reload).
/// `on_ready` is called once the daemon serves and is ready.
pub async fn run(
    config: Config,
    config_path: Option<PathBuf>,
    on_ready: impl FnOnce(&Started),
) -> Result<(), DaemonError> {
    // First, so a signal sent while starting is not lost.
    let mut signals =
        Signals::install().map_err(|e| DaemonError::Setup(format!("signal handlers: {e}")))?;
    let state = Store::open_config(&config.state).map_err(|e| DaemonError::Setup(e.to_string()))?;
    let shared = state.backend_name() == "postgresql";
    // One replica (SQLite) leads from the start: close what the previous
    // process left open now. Replicas (PostgreSQL) do it when they take
    // the lease, behind its fence: a follower must not touch the leader's
    // runs.
    if !shared {
        close_previous(&state).map_err(|e| DaemonError::Setup(e.to_string()))?;
    }
    // The lease is renewed on a connection of its own.
    let lease_store = if shared {
        Store::open_config(&config.state).map_err(|e| DaemonError::Setup(e.to_string()))?
    } else {
        state.clone()
    };
    let listen = config.server.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| DaemonError::Setup(format!("server.listen {listen}: cannot listen: {e}")))?;
    let listen = listener
        .local_addr()
        .map_err(|e| DaemonError::Setup(format!("server.listen: {e}")))?;
    let metrics = Arc::new(Metrics::new());
    let Connection { client, simulator } = app::connect_observed(&config, Some(metrics.clone()))
        .await
        .map_err(|e| DaemonError::Setup(e.to_string()))?;
    let mut simulators: Vec<app::Embedded> = simulator.into_iter().collect();
    metrics.init_series(&config);
    let config = Arc::new(config);
    let runner = Runner::new(
        crate::jobs::all(),
        RunEnv {
            config: config.clone(),
            client,
        },
        state.clone(),
        metrics.clone(),
    );
    let holder = match &config.leader.id {
        Some(id) => leader::with_nonce(id),
        None => leader::default_id(),
    };
    let leadership = Leadership::new(
        lease_store,
        state,
        &config.leader,
        config.kcr.timeout,
        holder.clone(),
        metrics.clone(),
    );
    runner.set_leadership(leadership.clone());
    let on_lead: OnLead = Arc::new(close_previous);
    // Try once before scheduling, so a replica that can lead at once runs
    // its `run_on_start` jobs.
    let first = leadership.step(&on_lead).await;
    let stop_leader = CancellationToken::new();
    let leader_loop = tokio::spawn({
        let (l, stop) = (leadership.clone(), stop_leader.clone());
        async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep_until(first.into()) => l.run(stop, on_lead).await,
            }
        }
    });
    let heartbeat = Arc::new(Heartbeat::default());
    let app_state = Arc::new(AppState {
        runner: runner.clone(),
        metrics: metrics.clone(),
        heartbeat: heartbeat.clone(),
        ready: Default::default(),
        delivery: Default::default(),
    });
    let stop_server = CancellationToken::new();
    let server = tokio::spawn({
        let stop = stop_server.clone();
        let app = server::router(app_state.clone());
        let (max_connections, header_timeout) =
            (config.server.max_connections, config.server.header_timeout);
        async move { server::serve(listener, app, max_connections, header_timeout, stop).await }
    });
    let mut scheduler = Scheduler::start(runner.clone(), &config, heartbeat.clone())
        .await
        .map_err(|e| DaemonError::Setup(e.to_string()))?;
    let mut current = config;
    app_state.ready.store(true, Ordering::Release);
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let st = leadership.status();
    tracing::info!(listen = %listen, jobs = ?runner.job_names(), holder = %holder, leader = st.leader, epoch = ?st.epoch, "kcr-housekeeper ready");
    on_ready(&Started { listen });

    loop {
        match signals.next().await {
            Signal::Stop => break,
            Signal::Reload => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
                match reload(&config_path, &current, &metrics).await {
                    Ok((new, conn)) => {
                        scheduler.stop().await;
                        runner.replace_env(RunEnv {
                            config: new.clone(),
                            client: conn.client,
                        });
                        simulators.extend(conn.simulator);
                        metrics.init_series(&new);
                        scheduler = Scheduler::start(runner.clone(), &new, heartbeat.clone())
                            .await
                            .map_err(|e| DaemonError::Runtime(e.to_string()))?;
                        current = new;
                        tracing::info!("configuration reloaded");
                    }
                    Err(e) => {
                        metrics.daemon.reload_failed();
                        tracing::error!(error = %e, "configuration reload refused; the previous configuration stays in force");
                    }
                }
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
            }
        }
    }

    tracing::info!("stopping: no new runs; waiting for running jobs");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    let grace = current.scheduler.shutdown_timeout;
    let started = std::time::Instant::now();
    scheduler.stop().await;
    if !runner
        .shutdown(grace.saturating_sub(started.elapsed()))
        .await
    {
        tracing::warn!(
            ?grace,
            "jobs still running at the shutdown deadline; they are recorded as interrupted"
        );
    }
    // Give the lease back only once no job of this replica runs.
    stop_leader.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), leader_loop).await;
    leadership.release().await;
    stop_server.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    drop(simulators);
    tracing::info!("stopped");
    Ok(())
}

/// Close what a previous process (or leader) left open: runs as failed,
/// mutations in flight as interrupted.
pub(crate) fn close_previous(state: &Store) -> Result<(), crate::state::StateError> {
    let abandoned = state.close_abandoned_runs(chrono::Utc::now())?;
    if abandoned > 0 {
        tracing::warn!(
            runs = abandoned,
            "runs interrupted by the previous process were recorded as failed"
        );
    }
    let interrupted = state.close_interrupted_audit()?;
    if interrupted > 0 {
        tracing::warn!(
            mutations = interrupted,
            "mutations in flight when the previous process stopped are audited as interrupted; their next run re-checks them"
        );
    }
    Ok(())
}

async fn reload(
    path: &Option<PathBuf>,
    current: &Config,
    metrics: &Arc<Metrics>,
) -> Result<(Arc<Config>, Connection), String> {
    let Some(path) = path else {
        return Err("this daemon was started without a config file to re-read".into());
    };
    let new = config::load(path, &ProcessEnv).map_err(|e| e.to_string())?;
    if new.server.listen != current.server.listen || !new.state.same_place(&current.state) {
        tracing::warn!("server.listen and [state] take effect only after a restart");
    }
    if new.leader != current.leader || new.kcr.timeout != current.kcr.timeout {
        tracing::warn!(
            "[leader] (and [kcr] timeout for the lease's margin) take effect only after a restart"
        );
    }
    let conn = app::connect_observed(&new, Some(metrics.clone()))
        .await
        .map_err(|e| e.to_string())?;
    Ok((Arc::new(new), conn))
}
