//! The simulator's HTTP side: request decoding, signature check, fault
//! injection, dispatch into the [`World`], and the request log.

mod registry;

use super::auth;
use super::scenario::{self, GenerateSpec, Scenario, ScenarioError};
use super::world::{ApiError, ParamMap, World, uuid_from};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, NaiveDateTime, Utc};
use kcr::client::{Credentials, SERVICE};
use kcr::signer::{self, PlusIs};
use kcr::types::API_VERSION;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("request log {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
}

/// A kind of injected fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// 500 ServiceUnavailable, not applied.
    ServerError,
    /// 409 LimitExceeded: refused before processing.
    LimitExceeded,
    /// Applied, then answered only after `Faults::stall` (the client times out first).
    Timeout,
    /// Applied, then the connection is cut in the middle of the answer.
    Reset,
    /// Applied, answered 200 with the JSON body cut in half.
    Truncated,
    /// Applied, answered 200 with fields of the wrong type.
    IllTyped,
    /// Listings only: `TotalCount` one higher than the truth, as if an item
    /// appeared while the client was paging. Other actions are answered normally.
    TotalCount,
    /// Listings only: `TotalCount` one lower than the truth (a count that lags
    /// a push). Not in [`FaultKind::ALL`]: ask for it by name
    /// (`--fault-kinds total-count-low`).
    TotalCountLow,
}

impl FaultKind {
    pub const ALL: [FaultKind; 7] = [
        FaultKind::ServerError,
        FaultKind::LimitExceeded,
        FaultKind::Timeout,
        FaultKind::Reset,
        FaultKind::Truncated,
        FaultKind::IllTyped,
        FaultKind::TotalCount,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::ServerError => "5xx",
            FaultKind::LimitExceeded => "409",
            FaultKind::Timeout => "timeout",
            FaultKind::Reset => "reset",
            FaultKind::Truncated => "truncated",
            FaultKind::IllTyped => "ill-typed",
            FaultKind::TotalCount => "total-count",
            FaultKind::TotalCountLow => "total-count-low",
        }
    }
}

impl std::str::FromStr for FaultKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "500" {
            return Ok(FaultKind::ServerError);
        }
        FaultKind::ALL
            .into_iter()
            .chain([FaultKind::TotalCountLow])
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown fault kind {s:?} (use {}, total-count-low)",
                    FaultKind::ALL.map(|k| k.as_str()).join(", ")
                )
            })
    }
}

/// Injected faults. All randomness comes from `seed`, so a run can be replayed.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Added to every API answer.
    pub latency: Duration,
    /// Requests per second served; more in one second get 409 LimitExceeded.
    pub rate_limit: Option<u32>,
    /// Share (0–1) of API requests answered with a fault drawn evenly from `kinds`.
    pub fault_rate: f64,
    /// Which faults `fault_rate` draws from; empty means 5xx and 409.
    pub kinds: Vec<FaultKind>,
    pub seed: Option<u64>,
    /// How long a `timeout` fault holds its answer (zero: 30 s).
    pub stall: Duration,
    /// Image listings drift between pages: every `DescribeImages` page after
    /// the first starts one image early (a push and a delete while paging).
    pub page_drift: bool,
    /// Listings serve at most this many items per page whatever
    /// `MaxResults` asks, and echo the size used in the answer's
    /// `MaxResults` (an endpoint that clamps page sizes).
    pub page_cap: Option<u64>,
}

/// Where the simulated registry's contents come from.
#[derive(Clone, Debug)]
pub enum WorldSource {
    Demo,
    Scenario { name: String, scenario: Scenario },
    Generate(GenerateSpec),
}

#[derive(Clone, Debug)]
pub struct SimOptions {
    pub listen: SocketAddr,
    pub source: WorldSource,
    /// Without credentials the simulator makes a pair up.
    pub credentials: Option<Credentials>,
    pub region: String,
    pub faults: Faults,
    /// Append one JSON line per request to this file.
    pub request_log: Option<PathBuf>,
    /// Keep the log in memory for [`Simulator::requests`] (tests).
    pub log_in_memory: bool,
    /// Further access keys, each scoped by IAM policies (`sim --policies`).
    pub policies: Option<super::iam::Policies>,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            source: WorldSource::Demo,
            credentials: None,
            region: "cn-beijing-6".into(),
            faults: Faults::default(),
            request_log: None,
            log_in_memory: true,
            policies: None,
        }
    }
}

/// One request as the simulator saw it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LogEntry {
    /// RFC 3339, microseconds, UTC (real time).
    pub ts: String,
    pub method: String,
    pub path: String,
    pub action: Option<String>,
    /// Parameters without `Action`, `Version` and the SDK's bookkeeping.
    pub params: BTreeMap<String, String>,
    pub status: u16,
    /// `OK` or the error code answered.
    pub code: String,
    pub request_id: String,
    /// Set when the answer was an injected fault.
    pub injected: bool,
    pub micros: u64,
}

struct Shared {
    world: Mutex<World>,
    credentials: Credentials,
    policies: super::iam::Policies,
    region: String,
    faults: Faults,
    rng: Mutex<ChaCha8Rng>,
    window: Mutex<(i64, u32)>,
    log_file: Option<Mutex<std::fs::File>>,
    log_memory: Option<Mutex<Vec<LogEntry>>>,
    /// Simulated time = real time + this offset (ms). Signatures use real time.
    clock_offset_ms: AtomicI64,
    /// The registry's Bearer tokens.
    bearers: registry::Bearers,
}

impl Shared {
    fn now_utc(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::milliseconds(self.clock_offset_ms.load(Ordering::Relaxed))
    }
    fn now_beijing(&self) -> NaiveDateTime {
        self.now_utc()
            .with_timezone(&chrono_tz::Asia::Shanghai)
            .naive_local()
    }
    fn random(&self) -> u128 {
        let mut rng = self.rng.lock().expect("rng lock");
        (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64())
    }
    fn record(&self, entry: LogEntry) {
        if let Some(file) = &self.log_file {
            let mut line = serde_json::to_vec(&entry).expect("log entry serialises");
            line.push(b'\n');
            let mut f = file.lock().expect("log lock");
            // A broken log must not take the simulator down; the tests that need it will notice.
            let _ = f.write_all(&line);
        }
        if let Some(mem) = &self.log_memory {
            mem.lock().expect("log lock").push(entry);
        }
    }
    /// Fixed one-second windows, as a gateway counts.
    fn over_rate_limit(&self) -> bool {
        let Some(limit) = self.faults.rate_limit else {
            return false;
        };
        let second = Utc::now().timestamp();
        let mut w = self.window.lock().expect("window lock");
        if w.0 != second {
            *w = (second, 0);
        }
        w.1 += 1;
        w.1 > limit
    }
}

/// A running simulator. Dropping it stops the server.
pub struct Simulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Simulator {
    pub async fn start(opts: SimOptions) -> Result<Simulator, SimError> {
        let mut rng = match opts.faults.seed {
            Some(s) => ChaCha8Rng::seed_from_u64(s),
            None => ChaCha8Rng::from_rng(&mut rand::rng()),
        };
        let credentials = opts.credentials.clone().unwrap_or_else(|| {
            let id: String = format!("AKLT{:016X}", rng.next_u64());
            let secret = format!(
                "{:032x}{:08x}",
                (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64()),
                rng.next_u32()
            );
            Credentials::new(id, secret)
        });
        let now = Utc::now()
            .with_timezone(&chrono_tz::Asia::Shanghai)
            .naive_local();
        let world = match opts.source {
            WorldSource::Demo => scenario::demo().into_world("demo", now)?,
            WorldSource::Scenario { name, scenario } => scenario.into_world(&name, now)?,
            WorldSource::Generate(spec) => {
                scenario::generate(&spec).into_world("generated", now)?
            }
        };
        let log_file = match &opts.request_log {
            Some(path) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| SimError::Log {
                        path: path.clone(),
                        source,
                    })?,
            )),
            None => None,
        };
        let shared = Arc::new(Shared {
            world: Mutex::new(world),
            credentials,
            policies: opts.policies.unwrap_or_default(),
            region: opts.region,
            faults: opts.faults,
            rng: Mutex::new(rng),
            window: Mutex::new((0, 0)),
            log_file,
            log_memory: opts.log_in_memory.then(|| Mutex::new(Vec::new())),
            clock_offset_ms: AtomicI64::new(0),
            bearers: registry::Bearers::default(),
        });
        let listener = tokio::net::TcpListener::bind(opts.listen)
            .await
            .map_err(|source| SimError::Bind {
                addr: opts.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| SimError::Bind {
            addr: opts.listen,
            source,
        })?;
        let app = registry::routes(Router::new())
            .fallback(api)
            .with_state(shared.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await;
        });
        Ok(Simulator {
            shared,
            addr,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn credentials(&self) -> Credentials {
        self.shared.credentials.clone()
    }

    pub fn region(&self) -> &str {
        &self.shared.region
    }

    /// Every request so far (when the in-memory log is on).
    pub fn requests(&self) -> Vec<LogEntry> {
        self.shared
            .log_memory
            .as_ref()
            .map(|m| m.lock().expect("log lock").clone())
            .unwrap_or_default()
    }

    /// How many requests named `action` were answered (any status).
    pub fn count(&self, action: &str) -> usize {
        self.requests()
            .iter()
            .filter(|e| e.action.as_deref() == Some(action))
            .count()
    }

    /// Read or change the simulated registry directly (tests only need this).
    pub fn world<R>(&self, f: impl FnOnce(&mut World) -> R) -> R {
        f(&mut self.shared.world.lock().expect("world lock"))
    }

    /// Move the simulated clock (token expiry, creation times); signatures keep real time.
    pub fn advance(&self, by: chrono::Duration) {
        self.shared
            .clock_offset_ms
            .fetch_add(by.num_milliseconds(), Ordering::Relaxed);
    }

    /// The simulated time, Beijing wall clock (as the API writes times).
    pub fn now(&self) -> NaiveDateTime {
        self.shared.now_beijing()
    }

    /// Stop serving and wait for the server task.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Parameters the official SDK adds for its own bookkeeping; not logged.
const SDK_BOOKKEEPING: [&str; 5] = ["Service", "SdkVersion", "Region", "Language", "Accesskey"];

fn flatten_json(prefix: &str, v: &Value, out: &mut ParamMap) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten_json(&key, v, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                flatten_json(&format!("{prefix}.{}", i + 1), v, out);
            }
        }
        Value::Bool(b) => {
            out.insert(
                prefix.to_owned(),
                if *b { "True".into() } else { "False".into() },
            );
        }
        Value::Number(n) => {
            out.insert(prefix.to_owned(), n.to_string());
        }
        Value::String(s) => {
            out.insert(prefix.to_owned(), s.clone());
        }
        Value::Null => {}
    }
}

/// Collect parameters from the query and, for POST, the form or JSON body.
fn request_params(
    method: &Method,
    query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<ParamMap, ApiError> {
    let mut params: ParamMap = signer::decode_query(query, PlusIs::Space)
        .into_iter()
        .collect();
    if *method == Method::POST && !body.is_empty() {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if content_type.starts_with("application/json") {
            let v: Value = serde_json::from_slice(body).map_err(|_| {
                ApiError::new(
                    400,
                    "InvalidQueryParameter",
                    "The request body is not valid JSON.",
                )
            })?;
            flatten_json("", &v, &mut params);
        } else {
            let text = std::str::from_utf8(body).map_err(|_| {
                ApiError::new(
                    400,
                    "InvalidQueryParameter",
                    "The request body is not UTF-8.",
                )
            })?;
            params.extend(signer::decode_query(text, PlusIs::Space));
        }
    } else if *method != Method::GET && *method != Method::POST {
        return Err(ApiError::new(
            400,
            "InvalidMethod",
            format!("The method {method} for is not valid for this web service."),
        ));
    }
    Ok(params)
}

fn error_body(request_id: &str, e: &ApiError) -> Value {
    let kind = if e.status >= 500 {
        "Receiver"
    } else {
        "Sender"
    };
    json!({"RequestId": request_id, "Error": {"Type": kind, "Code": e.code, "Message": e.message}})
}

fn json_response(status: u16, body: &Value) -> Response {
    let mut r = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body.to_string(),
    )
        .into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// `Faults::page_drift`: a `DescribeImages` page after the first starts one
/// item earlier than asked, as if an image was pushed (and another deleted,
/// `TotalCount` unchanged) while the client paged. The previous page's last
/// image comes again; the listing's last image is never seen.
fn drift_page(
    world: &mut crate::world::World,
    action: &str,
    params: &crate::world::ParamMap,
    now: chrono::NaiveDateTime,
    random: &mut dyn FnMut() -> u128,
    mut answer: Value,
) -> Value {
    let marker = params.get("Marker").and_then(|m| m.parse::<usize>().ok());
    let (Some(m), "DescribeImages") = (marker.filter(|m| *m > 0), action) else {
        return answer;
    };
    let mut earlier = params.clone();
    earlier.insert("Marker".into(), (m - 1).to_string());
    if let (Ok(shifted), Some(Value::Array(page))) = (
        world.handle(action, &earlier, now, random),
        answer.get_mut("ImageSet"),
    ) && let Some(Value::Array(items)) = shifted.get("ImageSet")
    {
        let len = page.len();
        *page = items.iter().take(len).cloned().collect();
    }
    answer
}

async fn api(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let request_id = uuid_from(shared.random());
    let query = uri.query().unwrap_or("");
    let params = request_params(&method, query, &headers, &body);
    let action = params.as_ref().ok().and_then(|p| p.get("Action").cloned());
    let mut injected = false;
    let mut after: Option<FaultKind> = None;
    let outcome: Result<Value, ApiError> = (|| {
        if shared.over_rate_limit() {
            injected = true;
            return Err(ApiError::new(
                409,
                "LimitExceeded",
                "Request was rejected because the request speed of this openAPI is beyond the current flow control limit.",
            ));
        }
        let req = auth::Request {
            method: method.as_str(),
            path: uri.path(),
            raw_query: query,
            headers: &headers,
            body: &body,
        };
        let creds = &shared.credentials;
        let secret_of = |key: &str| {
            if key == creds.access_key_id {
                Some(creds.secret_access_key.expose_secret().to_owned())
            } else {
                shared
                    .policies
                    .principal(key)
                    .map(|p| p.secret.expose_secret().to_owned())
            }
        };
        let signer_key = auth::verify(&req, &secret_of, &shared.region, SERVICE, Utc::now())?;
        let params = params.clone()?;
        let action = params
            .get("Action")
            .filter(|a| !a.is_empty())
            .ok_or_else(|| ApiError::missing("Action"))?;
        // The primary key may do anything; a policy key what its statements allow.
        if signer_key != creds.access_key_id
            && let Some(principal) = shared.policies.principal(&signer_key)
        {
            let resource = super::iam::resource(action, &shared.region, |k| params.get(k).cloned());
            principal.authorize(action, &resource)?;
        }
        match params.get("Version").map(String::as_str) {
            None | Some("") => return Err(ApiError::missing("Version")),
            Some(API_VERSION) => {}
            Some(_) => return Err(ApiError::invalid("Version")),
        }
        if shared.faults.fault_rate > 0.0 {
            let mut rng = shared.rng.lock().expect("rng lock");
            if rng.random_bool(shared.faults.fault_rate.clamp(0.0, 1.0)) {
                let kinds = if shared.faults.kinds.is_empty() {
                    &[FaultKind::ServerError, FaultKind::LimitExceeded][..]
                } else {
                    &shared.faults.kinds[..]
                };
                let kind = kinds[rng.random_range(0..kinds.len())];
                match kind {
                    FaultKind::ServerError => {
                        injected = true;
                        return Err(ApiError::new(
                            500,
                            "ServiceUnavailable",
                            "OpenAPI or Service is unavailable because of an unknown error, exception or failure.",
                        ));
                    }
                    FaultKind::LimitExceeded => {
                        injected = true;
                        return Err(ApiError::new(
                            409,
                            "LimitExceeded",
                            "Request was rejected because the request speed of this openAPI is beyond the current flow control limit.",
                        ));
                    }
                    // Applied first, spoiled on the way back.
                    other => after = Some(other),
                }
            }
        }
        let now = shared.now_beijing();
        let mut random = || shared.random();
        let mut world = shared.world.lock().expect("world lock");
        let mut capped = None;
        if let Some(cap) = shared.faults.page_cap
            && params
                .get("MaxResults")
                .and_then(|m| m.parse::<u64>().ok())
                .is_some_and(|m| m > cap)
        {
            let mut p = params.clone();
            p.insert("MaxResults".into(), cap.max(1).to_string());
            capped = Some(p);
        }
        let params = capped.as_ref().unwrap_or(&params);
        let answer = world.handle(action, params, now, &mut random)?;
        if shared.faults.page_drift {
            return Ok(drift_page(
                &mut world,
                action,
                params,
                now,
                &mut random,
                answer,
            ));
        }
        Ok(answer)
    })();
    let (status, code, mut body) = match &outcome {
        Ok(v) => {
            let mut v = v.clone();
            if let Value::Object(map) = &mut v {
                // `RequestId` everywhere, also beside CreateInstanceToken's `tokenId`
                // (the reference's example); only CreateWebhookTrigger, which the
                // simulator does not serve, answers `requestId`.
                map.insert("RequestId".into(), Value::String(request_id.clone()));
            }
            (200, "OK".to_owned(), v)
        }
        Err(e) => (e.status, e.code.to_owned(), error_body(&request_id, e)),
    };
    let logged_params = params
        .map(|p| {
            p.into_iter()
                .filter(|(k, _)| {
                    k != "Action" && k != "Version" && !SDK_BOOKKEEPING.contains(&k.as_str())
                })
                .collect()
        })
        .unwrap_or_default();
    // Faults that spoil an applied request's answer (only successful ones: an
    // error answer is already a failure the client sees).
    let spoil = after.filter(|_| status == 200);
    if let (Some(FaultKind::TotalCount), Value::Object(map)) = (spoil, &mut body)
        && let Some(n) = map.get("TotalCount").and_then(Value::as_u64)
    {
        map.insert("TotalCount".into(), Value::from(n + 1));
    }
    if let (Some(FaultKind::TotalCountLow), Value::Object(map)) = (spoil, &mut body)
        && let Some(n) = map.get("TotalCount").and_then(Value::as_u64)
    {
        map.insert("TotalCount".into(), Value::from(n.saturating_sub(1)));
    }
    if let (Some(FaultKind::IllTyped), Value::Object(map)) = (spoil, &mut body) {
        for (k, v) in map.iter_mut() {
            if v.is_array() {
                *v = Value::String("oops".into());
            } else if v.is_number() {
                *v = Value::Object(Default::default());
            } else if k.eq_ignore_ascii_case("requestid") {
                *v = Value::from(42);
            }
        }
    }
    let code_logged = match spoil {
        Some(
            k
            @ (FaultKind::Timeout | FaultKind::Reset | FaultKind::Truncated | FaultKind::IllTyped),
        ) => {
            format!("OK+{}", k.as_str())
        }
        Some(k @ (FaultKind::TotalCount | FaultKind::TotalCountLow))
            if body.get("TotalCount").is_some() =>
        {
            format!("OK+{}", k.as_str())
        }
        _ => code,
    };
    shared.record(LogEntry {
        ts: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        method: method.to_string(),
        path: uri.path().to_owned(),
        action,
        params: logged_params,
        status,
        code: code_logged,
        request_id,
        injected: injected || spoil.is_some(),
        micros: started.elapsed().as_micros() as u64,
    });
    // Logged before the injected latency, so a client that gives up is still counted.
    if !shared.faults.latency.is_zero() {
        tokio::time::sleep(shared.faults.latency).await;
    }
    match spoil {
        Some(FaultKind::Timeout) => {
            let stall = if shared.faults.stall.is_zero() {
                Duration::from_secs(30)
            } else {
                shared.faults.stall
            };
            tokio::time::sleep(stall).await;
            json_response(status, &body)
        }
        Some(FaultKind::Truncated) => {
            let text = body.to_string();
            let mut r = (StatusCode::OK, text[..text.len() / 2].to_owned()).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Some(FaultKind::Reset) => {
            let text = body.to_string();
            let half = Bytes::from(text[..text.len() / 2].to_owned());
            let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
                Ok(half),
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "injected reset",
                )),
            ];
            let mut r = Response::new(axum::body::Body::from_stream(futures::stream::iter(chunks)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        _ => json_response(status, &body),
    }
}
