//! The admin HTTP server (DESIGN §8). Endpoints:
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET  | `/metrics` | Prometheus text exposition of every metric |
//! | GET  | `/healthz` | 200 while the process and the scheduler loop are alive, else 503 |
//! | GET  | `/readyz` | 200 once config, state and scheduler are up (a latch) and the state database answers (PostgreSQL: the lease's connection is up), else 503 |
//! | GET  | `/jobs` | JSON: per job its schedule, mode, next run, last run and result; `leader` (whether this replica leads and runs jobs), `holder` (this replica's id), `leader_holder` and `epoch` (who leads, as the database last said) |
//! | POST | `/jobs/{job}/run` | start a run now; `Authorization: Bearer <admin_token>`; 202 started, 409 already running, 401 bad token, 403 when no admin token is configured, 404 unknown job, 503 on a follower (the body names the leader and its epoch); the 202 body names the `run_id` |
//! | GET  | `/jobs/{job}/runs/{id}` | JSON: that run's row (trigger, times, result, summary, error) and `status` running or finished; 404 unknown |
//! | GET  | `/reports/retention/latest` | the latest retention report as HTML (`.json` and `.md` variants); 404 until one exists |
//!
//! Anything else is 404; malformed requests get 4xx from hyper, never a crash.

use crate::jobs::{Runner, Started, Trigger};
use crate::kcr::signer::constant_time_eq;
use crate::metrics::Metrics;
use crate::scheduler::{HEARTBEAT, Heartbeat};
use crate::tokens::Delivered;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use secrecy::ExposeSecret;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub struct AppState {
    pub runner: Arc<Runner>,
    pub metrics: Arc<Metrics>,
    pub heartbeat: Arc<Heartbeat>,
    /// Set once config, state and scheduler are up; never cleared.
    pub ready: AtomicBool,
    /// The tokens' delivery status, as `/metrics` and `/jobs` show it.
    pub delivery: DeliveryCache,
}

/// How long a scrape waits for the delivery status from the database
/// before it serves the last values (a slow database never holds it).
const DELIVERY_WAIT: Duration = Duration::from_millis(500);
/// The delivery status is read from the state at most this often, however
/// many scrapers and `/jobs` readers there are.
const DELIVERY_FRESH: Duration = Duration::from_secs(2);

/// The tokens' delivery status ([`crate::tokens::delivery_status`]), read
/// on a blocking thread (never on an async worker), one read at a time, and
/// kept for `DELIVERY_FRESH` — and only for the config it was read with:
/// after a reload (other tokens, another delivery group) it is read again,
/// never shown under the new config.
#[derive(Default)]
pub struct DeliveryCache(Arc<tokio::sync::Mutex<Option<ReadAt>>>);

/// A delivery status, the config it was read for, and when it was read.
struct ReadAt {
    at: Instant,
    /// When it was read, as `/jobs` shows it (`read_at`): while the state
    /// is down the last status is served, and this says how old it is.
    wall: chrono::DateTime<Utc>,
    config: Arc<crate::config::Config>,
    status: Vec<Delivered>,
}

/// The delivery status as served: the tokens and when they were read.
#[derive(Clone, Default)]
struct DeliverySnapshot {
    tokens: Vec<Delivered>,
    read_at: Option<chrono::DateTime<Utc>>,
}

impl DeliveryCache {
    /// The status, refreshed first when older than `DELIVERY_FRESH` or
    /// read for another config (which also sets the `token_delivered`
    /// gauges). `wait`: how long to wait for a refresh; `None` when it is
    /// not known in time, or the state is down and nothing was read for
    /// the config in force. A refresh that outlives the wait still finishes
    /// and fills the cache; no second one starts meanwhile.
    async fn get(&self, s: &AppState, wait: Option<Duration>) -> Option<DeliverySnapshot> {
        let cell = self.0.clone();
        let config = s.runner.env().config.clone();
        let state = s.runner.state().clone();
        let metrics = s.metrics.clone();
        let task = tokio::spawn(async move {
            let mut cached = cell.lock().await;
            if cached
                .as_ref()
                .is_some_and(|c| !Arc::ptr_eq(&c.config, &config))
            {
                // Read for the config before a reload: never served under this one.
                *cached = None;
            }
            let stale = cached
                .as_ref()
                .is_none_or(|c| c.at.elapsed() >= DELIVERY_FRESH);
            if stale && state.is_up() {
                let for_config = config.clone();
                let read = tokio::task::spawn_blocking(move || {
                    crate::tokens::delivery_status(&for_config, &state, &metrics)
                });
                if let Ok(status) = read.await {
                    *cached = Some(ReadAt {
                        at: Instant::now(),
                        wall: Utc::now(),
                        config,
                        status,
                    });
                }
            }
            cached.as_ref().map(|c| DeliverySnapshot {
                tokens: c.status.clone(),
                read_at: Some(c.wall),
            })
        });
        match wait {
            Some(w) => tokio::time::timeout(w, task).await.ok()?.ok()?,
            None => task.await.ok()?,
        }
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/jobs", get(jobs))
        .route("/jobs/{job}/run", post(run_job))
        .route("/jobs/{job}/runs/{id}", get(job_run))
        .route("/reports/retention/{file}", get(report))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(state)
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    let state = s.runner.state();
    s.metrics
        .daemon
        .state_backend(state.backend_name(), state.is_up());
    // Every replica, followers too: did its sinks receive the current token?
    // The scrape waits a little for it, else serves the last values.
    s.delivery.get(&s, Some(DELIVERY_WAIT)).await;
    let mut r = s.metrics.render().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

async fn healthz(State(s): State<Arc<AppState>>) -> Response {
    if s.heartbeat.alive(HEARTBEAT * 5) {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "scheduler loop stalled\n").into_response()
    }
}

async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    if !s.ready.load(Ordering::Acquire) {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    } else if s.runner.leadership().is_some_and(|l| !l.connected()) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "state database unreachable\n",
        )
            .into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

fn json_response(status: StatusCode, v: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string() + "\n",
    )
        .into_response()
}

async fn jobs(State(s): State<Arc<AppState>>) -> Response {
    let delivery = s.delivery.get(&s, None).await.unwrap_or_default();
    // The runs are read from the state: on a blocking thread.
    let body = tokio::task::spawn_blocking(move || jobs_body(&s, delivery)).await;
    match body {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "could not list jobs\n").into_response(),
    }
}

fn jobs_body(s: &AppState, delivery: DeliverySnapshot) -> serde_json::Value {
    let env = s.runner.env();
    let cfg = &env.config;
    let tz = cfg.scheduler.timezone;
    let state = s.runner.state();
    let mut out = Vec::new();
    // A run history that cannot be read is said (`state_error`), never shown
    // as "never ran" (review 7: a read error was a silent null).
    let mut state_error: Option<String> = None;
    let mut read = |r: Result<_, crate::state::StateError>| {
        r.inspect_err(|e| {
            state_error.get_or_insert_with(|| e.to_string());
        })
        .ok()
        .flatten()
    };
    for j in cfg.jobs() {
        let next = j
            .schedule
            .next_times(Utc::now(), &tz, 1)
            .first()
            .map(|t| t.with_timezone(&Utc).to_rfc3339());
        let last = read(
            crate::failpoint::hit("server.jobs.runs", crate::state::StateError::Injected)
                .and_then(|()| state.last_run(j.job)),
        );
        let last_success = read(state.last_success(j.job)).and_then(|r| r.finished_at);
        out.push(json!({
            "job": j.job,
            "available": s.runner.has_job(j.job),
            "schedule": j.schedule.as_str(),
            "timezone": tz.name(),
            "mode": j.mode.map(|m| m.as_str()),
            "running": s.runner.is_running(j.job),
            "next_run": next,
            "last_run": last,
            "last_success_at": last_success,
        }));
    }
    let mut body = json!({ "jobs": out, "leader": true });
    if let Some(e) = state_error {
        body["state_error"] = json!(e);
    }
    if let Some(tc) = &cfg.tokens {
        body["token_delivery"] = json!({
            "delivery_group": tc.delivery_group,
            "tokens": delivery.tokens,
            "read_at": delivery.read_at,
        });
    }
    if let Some(l) = s.runner.leadership() {
        let st = l.status();
        body["leader"] = json!(st.leader);
        body["holder"] = json!(st.id);
        body["leader_holder"] = json!(st.holder);
        body["epoch"] = json!(st.epoch);
    }
    body
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

async fn run_job(
    State(s): State<Arc<AppState>>,
    Path(job): Path<String>,
    headers: HeaderMap,
) -> Response {
    let env = s.runner.env();
    let Some(expected) = env.config.server.admin_token.as_ref() else {
        return json_response(
            StatusCode::FORBIDDEN,
            json!({"error": "triggering jobs over HTTP is disabled: no [server] admin_token is configured"}),
        );
    };
    let authorised =
        bearer(&headers).is_some_and(|given| constant_time_eq(given, expected.expose_secret()));
    if !authorised {
        let mut r = json_response(
            StatusCode::UNAUTHORIZED,
            json!({"error": "missing or wrong bearer token"}),
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    match s.runner.try_start_with_id(&job, Trigger::Api) {
        Err(e) => json_response(StatusCode::NOT_FOUND, json!({"error": e.to_string()})),
        Ok((Started::Running(_), run_id)) => json_response(
            StatusCode::ACCEPTED,
            json!({
                "job": job,
                "status": "started",
                "run_id": run_id,
                "status_url": run_id.map(|id| format!("/jobs/{job}/runs/{id}")),
            }),
        ),
        Ok((Started::AlreadyRunning, _)) => json_response(
            StatusCode::CONFLICT,
            json!({"job": job, "status": "skipped", "reason": "already running"}),
        ),
        Ok((Started::ShuttingDown, _)) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"job": job, "status": "skipped", "reason": "shutting down"}),
        ),
        Ok((Started::NotLeader(not), _)) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({
                "job": job,
                "status": "skipped",
                "reason": not.to_string(),
                "leader_holder": not.leader.as_ref().map(|l| &l.0),
                "epoch": not.leader.as_ref().map(|l| l.1),
            }),
        ),
    }
}

/// One run's status: its row, with `status` running or finished.
async fn job_run(
    State(s): State<Arc<AppState>>,
    Path((job, id)): Path<(String, String)>,
) -> Response {
    let not_found = || {
        json_response(
            StatusCode::NOT_FOUND,
            json!({"error": format!("no run {id} of job {job:?}")}),
        )
    };
    let Ok(id) = id.parse::<i64>() else {
        return not_found();
    };
    match s.runner.state().run(id) {
        Ok(Some(r)) if r.job == job => {
            let status = if r.result.is_some() {
                "finished"
            } else {
                "running"
            };
            let mut v = serde_json::to_value(&r).unwrap_or_default();
            v["status"] = json!(status);
            json_response(StatusCode::OK, v)
        }
        Ok(_) => not_found(),
        Err(e) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": e.to_string()}),
        ),
    }
}

async fn report(State(s): State<Arc<AppState>>, Path(file): Path<String>) -> Response {
    let (format, content_type) = match file.as_str() {
        "latest" | "latest.html" => ("html", "text/html; charset=utf-8"),
        "latest.json" => ("json", "application/json"),
        "latest.md" => ("markdown", "text/markdown; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, "not found\n").into_response(),
    };
    match s.runner.state().latest_report("retention", format) {
        Ok(Some(report)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, content_type)],
            report.body,
        )
            .into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, "no retention report yet\n").into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot read report");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot read report\n").into_response()
        }
    }
}

/// Serves `app` on `listener` until `stop` fires, with at most
/// `max_connections` connections at once; a connection that sends no complete
/// request header within `header_timeout` (hyper restarts that timer while an
/// idle keep-alive connection waits for its next request) is closed.
///
/// Why not `axum::serve`: it has no header-read or idle timeout and no
/// connection cap, so idle clients could hold every file descriptor of the
/// process and starve the jobs (state files, lock files, API sockets). Here a
/// connection needs a permit before it is accepted: past the cap, new clients
/// wait in the kernel's listen backlog, costing the process nothing.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    max_connections: usize,
    header_timeout: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let permits = Arc::new(tokio::sync::Semaphore::new(max_connections.max(1)));
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE/ENFILE and aborted handshakes: wait a little
                    // rather than spin; the listener stays open.
                    tracing::warn!(error = %e, "admin server: cannot accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let stop = stop.clone();
        connections.spawn(async move {
            let _permit = permit;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "admin connection ended with an error");
                    }
                }
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), conn).await;
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
}
