//! The one way kcr-housekeeper talks to KCR: signed requests, retries with
//! full-jitter backoff, a client-side rate limit, a cap on requests in flight,
//! and offset pagination that checks `TotalCount`.

use super::error::{Error, TransportKind};
use super::ratelimit::RateLimiter;
use super::signer::{self, CanonicalInput};
use super::types::{API_VERSION, Action, MAX_PAGE, Page, Paginated, Params, RetryClass, Supported};
use chrono::Utc;
use chrono_tz::Tz;
use futures::Stream;
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, SemaphorePermit};

/// The service name in the signing scope.
pub const SERVICE: &str = "kcrs";

/// An access key pair. The secret never appears in `Debug` output.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: SecretString,
}

impl Credentials {
    pub fn new(access_key_id: impl Into<String>, secret_access_key: impl Into<String>) -> Self {
        Credentials {
            access_key_id: access_key_id.into(),
            secret_access_key: SecretString::from(secret_access_key.into()),
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &redact_key_id(&self.access_key_id))
            .field("secret_access_key", &"[redacted]")
            .finish()
    }
}

/// Show only enough of an access key id to tell keys apart.
pub fn redact_key_id(id: &str) -> String {
    let shown: String = id.chars().take(4).collect();
    format!("{shown}…")
}

/// Backoff for retryable errors: full jitter, `sleep = random(0, min(cap, base·2^n))`.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.cap);
        let nanos = exp.as_nanos() as u64;
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }
}

/// Sees every request's outcome; metrics implement it.
pub trait ApiObserver: Send + Sync {
    /// `code` is `"OK"` or the error's [`Error::code`].
    fn observe(&self, action: &'static str, code: &str, elapsed: Duration);
}

/// Asked right before every attempt to send a mutating action (after any
/// rate-limiter wait, on every retry): a caller that may lose its right to
/// change things (a leader whose lease runs out, a cancelled run) refuses
/// here, and nothing is sent. Read-only actions never ask.
pub trait MutationGate: Send + Sync {
    /// `Err(why)`: withhold `action` ([`Error::Withheld`]).
    fn check(&self, action: &'static str) -> Result<(), String>;
}

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `https://kcrs.api.ksyun.com` or, for the simulator, `http://127.0.0.1:PORT`.
    pub endpoint: String,
    pub region: String,
    pub credentials: Credentials,
    /// The zone the API writes its times in.
    pub timezone: Tz,
    pub requests_per_second: f64,
    pub max_in_flight: usize,
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// After this many failed requests in a row (any action), [`Client::call`]
    /// stops retrying and callers that check [`Client::failing`] stop sending:
    /// an API that is gone is not hammered for minutes.
    pub max_consecutive_failures: u32,
}

impl ClientConfig {
    pub fn new(endpoint: impl Into<String>, credentials: Credentials) -> Self {
        ClientConfig {
            endpoint: endpoint.into(),
            region: "cn-beijing-6".into(),
            credentials,
            timezone: chrono_tz::Asia::Shanghai,
            requests_per_second: 10.0,
            max_in_flight: 8,
            timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            max_consecutive_failures: 10,
        }
    }
}

/// A cheap-to-clone handle; clones share the rate limit and in-flight cap.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    /// Asked before each mutating request ([`Client::gated`]).
    gate: Option<Arc<dyn MutationGate>>,
}

struct Inner {
    http: reqwest::Client,
    url: reqwest::Url,
    host: String,
    region: String,
    credentials: Credentials,
    timezone: Tz,
    retry: RetryPolicy,
    limiter: RateLimiter,
    in_flight: Semaphore,
    observer: Option<Arc<dyn ApiObserver>>,
    max_consecutive_failures: u32,
    /// Requests that failed since the last one that succeeded.
    consecutive_failures: AtomicU32,
}

/// Rate-limiter slots and an in-flight permit taken together, before a
/// sequence of calls that must follow each other closely (the check and the
/// delete of one retention action): the calls then wait for nothing.
pub struct Reservation<'a> {
    _in_flight: SemaphorePermit<'a>,
    slots: u32,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.inner.url.as_str())
            .field("region", &self.inner.region)
            .field("credentials", &self.inner.credentials)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct ErrorDocument {
    #[serde(rename = "RequestId", alias = "requestId", default)]
    request_id: String,
    #[serde(rename = "Error")]
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "Code", default)]
    code: String,
    #[serde(rename = "Message", default)]
    message: String,
}

#[derive(Deserialize)]
struct RequestIdOnly {
    #[serde(rename = "RequestId", alias = "requestId", default)]
    request_id: String,
}

impl Client {
    pub fn new(config: ClientConfig) -> Result<Self, Error> {
        Self::with_observer(config, None)
    }

    pub fn with_observer(
        config: ClientConfig,
        observer: Option<Arc<dyn ApiObserver>>,
    ) -> Result<Self, Error> {
        let url = reqwest::Url::parse(&config.endpoint)
            .map_err(|e| Error::Config(format!("endpoint {:?}: {e}", config.endpoint)))?;
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => {
                return Err(Error::Config(format!(
                    "endpoint {:?} has no host",
                    config.endpoint
                )));
            }
        };
        if !matches!(url.scheme(), "https" | "http") {
            return Err(Error::Config(format!(
                "endpoint {:?}: scheme must be https",
                config.endpoint
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(config.max_in_flight.max(1))
            // A signed request is not followed elsewhere: the signature
            // covers the host, and a 301/302 turns the POST into a GET, so
            // the answer would be a misleading SignatureDoesNotMatch. The
            // redirect itself is the error (`Error::Http` with its 3xx).
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("kcr-housekeeper/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                url,
                host,
                region: config.region,
                credentials: config.credentials,
                timezone: config.timezone,
                retry: config.retry,
                limiter: RateLimiter::new(config.requests_per_second),
                in_flight: Semaphore::new(config.max_in_flight.max(1)),
                observer,
                max_consecutive_failures: config.max_consecutive_failures.max(1),
                consecutive_failures: AtomicU32::new(0),
            }),
            gate: None,
        })
    }

    /// This client (sharing its limits) with `gate` asked before every
    /// attempt to send a mutating action.
    pub fn gated(&self, gate: Arc<dyn MutationGate>) -> Client {
        Client {
            inner: self.inner.clone(),
            gate: Some(gate),
        }
    }

    /// The gate's verdict for action `A`, right before it is sent.
    fn may_send<A: Action>(&self) -> Result<(), Error> {
        match &self.gate {
            Some(gate) if !A::READ_ONLY => gate.check(A::NAME).map_err(|why| {
                tracing::info!(action = A::NAME, %why, "mutating request withheld");
                Error::Withheld {
                    action: A::NAME,
                    why,
                }
            }),
            _ => Ok(()),
        }
    }

    /// The API endpoint (base URL) this client talks to.
    pub fn endpoint(&self) -> &reqwest::Url {
        &self.inner.url
    }

    /// The zone the API's zone-less times are in.
    pub fn timezone(&self) -> &Tz {
        &self.inner.timezone
    }

    /// The rate the limiter currently allows (requests per second).
    pub fn current_rate(&self) -> f64 {
        self.inner.limiter.current_rate()
    }

    /// Failed requests in a row (reset by any success).
    pub fn consecutive_failures(&self) -> u32 {
        self.inner.consecutive_failures.load(Ordering::Relaxed)
    }

    /// The limit of failed requests in a row.
    pub fn max_consecutive_failures(&self) -> u32 {
        self.inner.max_consecutive_failures
    }

    /// `[kcr] max_consecutive_failures` requests failed in a row: stop sending.
    pub fn failing(&self) -> bool {
        self.consecutive_failures() >= self.inner.max_consecutive_failures
    }

    /// The pause before retry `attempt` (1-based) and whether one is allowed.
    pub fn retry_pause(&self, attempt: u32) -> Option<Duration> {
        (attempt < self.inner.retry.max_attempts && !self.failing())
            .then(|| self.inner.retry.backoff(attempt))
    }

    fn note_outcome<T>(&self, name: &'static str, r: &Result<T, Error>, started: Instant) {
        if let Some(obs) = &self.inner.observer {
            let code = match r {
                Ok(_) => "OK",
                Err(e) => e.code(),
            };
            obs.observe(name, code, started.elapsed());
        }
        match r {
            Ok(_) => self.inner.consecutive_failures.store(0, Ordering::Relaxed),
            // An answer that refuses the request (4xx) says the API is there.
            Err(e) if !e.is_retryable() && e.status().is_some() => {
                self.inner.consecutive_failures.store(0, Ordering::Relaxed)
            }
            // Pushed back for speed: the API is there, only busy.
            Err(e) if e.is_rate_limited() => self.inner.limiter.on_limit_exceeded(),
            Err(_) => {
                self.inner
                    .consecutive_failures
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Take an in-flight permit and `slots` rate-limiter slots now, for calls
    /// made with [`Client::call_once`] right after.
    pub async fn reserve(&self, slots: u32) -> Reservation<'_> {
        let permit = self
            .inner
            .in_flight
            .acquire()
            .await
            .expect("semaphore never closed");
        self.inner.limiter.acquire_n(slots.max(1)).await;
        Reservation {
            _in_flight: permit,
            slots: slots.max(1),
        }
    }

    /// Send one action once, never retried: the caller decides what to do
    /// about a failure (a delete is retried only after a fresh check).
    pub async fn call_once<A: Action>(
        &self,
        reservation: &mut Reservation<'_>,
        action: &A,
    ) -> Result<A::Output, Error> {
        let mut params = Params::default();
        action.write_params(&mut params);
        if reservation.slots > 0 {
            reservation.slots -= 1;
        } else {
            self.inner.limiter.acquire().await;
        }
        self.may_send::<A>()?;
        let started = Instant::now();
        let r = self.send_once::<A>(&params).await;
        self.note_outcome(A::NAME, &r, started);
        r
    }

    /// Send one action, retrying what is safe to retry.
    pub async fn call<A: Action>(&self, action: &A) -> Result<A::Output, Error> {
        let mut params = Params::default();
        action.write_params(&mut params);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let result = {
                let _permit = self
                    .inner
                    .in_flight
                    .acquire()
                    .await
                    .expect("semaphore never closed");
                self.inner.limiter.acquire().await;
                // Asked on every attempt: a retry after a long backoff may
                // find the right to change things gone.
                self.may_send::<A>()?;
                let started = Instant::now();
                let r = self.send_once::<A>(&params).await;
                self.note_outcome(A::NAME, &r, started);
                r
            };
            let err = match result {
                Ok(out) => return Ok(out),
                Err(e) => e,
            };
            let may_retry = match A::RETRY {
                RetryClass::Idempotent => err.is_retryable(),
                RetryClass::OnlyIfNotApplied => err.is_retryable() && err.surely_not_applied(),
            };
            if !may_retry || attempt >= self.inner.retry.max_attempts || self.failing() {
                tracing::debug!(action = A::NAME, attempt, code = err.code(), "giving up");
                return Err(err);
            }
            let pause = self.inner.retry.backoff(attempt);
            tracing::debug!(
                action = A::NAME,
                attempt,
                code = err.code(),
                ?pause,
                "retrying"
            );
            tokio::time::sleep(pause).await;
        }
    }

    /// Build and sign one request (exposed for benchmarks and tests).
    pub fn build_request<A: Action>(&self, params: &Params) -> Result<reqwest::Request, Error> {
        let inner = &self.inner;
        let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(params.0.len() + 2);
        pairs.push(("Action", A::NAME));
        pairs.push(("Version", API_VERSION));
        pairs.extend(params.0.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let encoded = signer::canonical_query(pairs.iter().copied());
        let now = Utc::now();
        let amz_date = now.format(signer::AMZ_DATE_FORMAT).to_string();
        let (method, query, body, content_type) = if A::READ_ONLY {
            ("GET", encoded, String::new(), None)
        } else {
            (
                "POST",
                String::new(),
                encoded,
                Some("application/x-www-form-urlencoded; charset=utf-8"),
            )
        };
        let payload_hash = signer::sha256_hex(body.as_bytes());
        let mut headers: Vec<(&str, &str)> = vec![("host", &inner.host), ("x-amz-date", &amz_date)];
        if let Some(ct) = content_type {
            headers.push(("content-type", ct));
        }
        let path = inner.url.path();
        let authorization = signer::authorization(
            &inner.credentials.access_key_id,
            inner.credentials.secret_access_key.expose_secret(),
            &inner.region,
            SERVICE,
            now,
            &CanonicalInput {
                method,
                path,
                query: &query,
                headers: &headers,
                payload_hash: &payload_hash,
            },
        );
        let mut url = inner.url.clone();
        url.set_query(if query.is_empty() { None } else { Some(&query) });
        let mut rb = if method == "GET" {
            inner.http.get(url)
        } else {
            inner.http.post(url).body(body)
        };
        rb = rb
            .header("x-amz-date", amz_date)
            .header("authorization", authorization)
            .header("accept", "application/json");
        if let Some(ct) = content_type {
            rb = rb.header("content-type", ct);
        }
        rb.build()
            .map_err(|e| Error::Config(format!("request: {e}")))
    }

    async fn send_once<A: Action>(&self, params: &Params) -> Result<A::Output, Error> {
        let request = self.build_request::<A>(params)?;
        let response = self
            .inner
            .http
            .execute(request)
            .await
            .map_err(|e| transport::<A>(&e))?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(|e| transport::<A>(&e))?;
        decode_response::<A>(status, &body)
    }

    /// [`Client::call`] for an action a real endpoint may not offer (one of
    /// the SDK-only actions: `DescribeExternalEndpoint`,
    /// `DescribeRetentionRule`, `GetRetentionTrigger`): an "unknown action"
    /// answer ([`Error::is_not_supported`]) is [`Supported::No`], not an error.
    pub async fn call_if_supported<A: Action>(
        &self,
        action: &A,
    ) -> Result<Supported<A::Output>, Error> {
        match self.call(action).await {
            Ok(out) => Ok(Supported::Yes(out)),
            Err(e) if e.is_not_supported() => Ok(Supported::No {
                code: e.code().to_owned(),
            }),
            Err(e) => Err(e),
        }
    }

    /// A stream of pages of `MaxResults=99`, checking that `TotalCount`
    /// stays put and that the listing delivers all it announced. A full page
    /// (99 items, or as many as the answer's `MaxResults` says the endpoint
    /// serves per page when it clamps the size asked for) that reaches
    /// `TotalCount` is followed by one more request: an item in
    /// it (or a changed `TotalCount`) is [`Error::ListingChanged`], never a
    /// silently shorter list; more items than `TotalCount` likewise.
    pub fn pages<P: Paginated + 'static>(
        &self,
        request: P,
    ) -> impl Stream<Item = Result<Page<P::Item>, Error>> + Send + 'static {
        struct Cursor<P> {
            client: Client,
            request: P,
            offset: u64,
            total: Option<u64>,
            done: bool,
            /// The next request only checks that the listing ended.
            checking_end: bool,
        }
        let cursor = Cursor {
            client: self.clone(),
            request,
            offset: 0,
            total: None,
            done: false,
            checking_end: false,
        };
        futures::stream::try_unfold(cursor, |mut c| async move {
            if c.done {
                return Ok(None);
            }
            c.request.set_page(c.offset, MAX_PAGE);
            let page = P::into_page(c.client.call(&c.request).await?);
            if let Some(before) = c.total
                && before != page.total
            {
                return Err(Error::ListingChanged {
                    action: P::NAME,
                    before,
                    after: page.total,
                });
            }
            c.total = Some(page.total);
            let got = page.items.len() as u64;
            if c.checking_end {
                // The page after a full last page: anything in it, or a new
                // TotalCount (checked above), means TotalCount was wrong.
                if got > 0 {
                    return Err(Error::ListingChanged {
                        action: P::NAME,
                        before: page.total,
                        after: c.offset + got,
                    });
                }
                return Ok(None);
            }
            c.offset += got;
            if c.offset > page.total {
                // More items than TotalCount announced.
                return Err(Error::ListingChanged {
                    action: P::NAME,
                    before: page.total,
                    after: c.offset,
                });
            }
            // Full: as many items as asked for, or as many as the endpoint
            // says it serves per page (it may clamp `MaxResults` below what
            // was asked, as the reference's default of 20 or 10 would).
            let full = got > 0
                && (got >= u64::from(MAX_PAGE) || (page.page_size > 0 && got >= page.page_size));
            if c.offset == page.total && full {
                // A full page that reached TotalCount: one more page proves
                // the listing really ends here (TotalCount can lag behind).
                c.checking_end = true;
            } else if c.offset >= page.total {
                c.done = true;
            } else if got == 0 {
                return Err(Error::ListingShort {
                    action: P::NAME,
                    seen: c.offset,
                    total: page.total,
                });
            }
            Ok(Some((page, c)))
        })
    }

    /// Every item of a listing, or an error: never a partial list.
    pub async fn list_all<P: Paginated + 'static>(
        &self,
        request: P,
    ) -> Result<Vec<P::Item>, Error> {
        use futures::TryStreamExt;
        let pages: Vec<Page<P::Item>> = self.pages(request).try_collect().await?;
        let total = pages.first().map_or(0, |p| p.total);
        let items: Vec<P::Item> = pages.into_iter().flat_map(|p| p.items).collect();
        if items.len() as u64 != total {
            return Err(Error::ListingShort {
                action: P::NAME,
                seen: items.len() as u64,
                total,
            });
        }
        Ok(items)
    }
}

fn transport<A: Action>(e: &reqwest::Error) -> Error {
    let kind = if e.is_timeout() {
        TransportKind::Timeout
    } else if e.is_connect() {
        TransportKind::Connect
    } else {
        TransportKind::Reset
    };
    // reqwest errors name the URL; ours carries only query parameters that are not secret,
    // but strip it anyway to keep messages short.
    let detail = reqwest_error_text(e);
    Error::Transport {
        action: A::NAME,
        kind,
        detail,
    }
}

/// A reqwest error as a message: its URL (which may carry a password or a
/// signed query) replaced by `<endpoint>`, and its causes appended, since
/// reqwest's own message says only "error sending request" where the cause
/// (`tcp connect error: Connection refused`) is what an operator needs.
pub fn reqwest_error_text(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(url) = e.url() {
        s = s.replace(url.as_str(), "<endpoint>");
    }
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// Describe a JSON error without quoting the input (which may hold a secret).
fn json_defect(e: &serde_json::Error) -> String {
    let what = match e.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "malformed JSON",
        serde_json::error::Category::Data => "unexpected field type or value",
        serde_json::error::Category::Eof => "truncated JSON",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

/// Turn a status and body into the action's output or a typed error.
pub fn decode_response<A: Action>(status: u16, body: &[u8]) -> Result<A::Output, Error> {
    let has_error_key = body.windows(7).any(|w| w == b"\"Error\"");
    if status != 200 || has_error_key {
        match serde_json::from_slice::<ErrorDocument>(body) {
            Ok(ErrorDocument {
                request_id,
                error: Some(err),
            }) => {
                return Err(Error::Api {
                    action: A::NAME,
                    status,
                    // The code is a metric label (`api_requests_total{code}`)
                    // and drives retries: only a code-shaped one is kept, so
                    // an odd body cannot mint label values or spill text.
                    code: if id_shaped(&err.code) && !err.code.is_empty() {
                        err.code
                    } else {
                        "Unknown".into()
                    },
                    message: err.message,
                    request_id: shown_request_id(request_id),
                });
            }
            _ if status != 200 => {
                return Err(Error::Http {
                    action: A::NAME,
                    status,
                });
            }
            _ => {}
        }
    }
    serde_json::from_slice::<A::Output>(body).map_err(|e| Error::Decode {
        action: A::NAME,
        detail: json_defect(&e),
        request_id: serde_json::from_slice::<RequestIdOnly>(body)
            .map(|r| shown_request_id(r.request_id))
            .unwrap_or_default(),
    })
}

/// The request id as errors show it. It is quoted on purpose (support asks
/// for it), but it comes from a body that may be garbage: only something
/// shaped like an id (bounded, `[A-Za-z0-9._-]`) is shown, so an odd body
/// cannot spill text into logs through this field.
fn shown_request_id(id: String) -> String {
    if id_shaped(&id) {
        id
    } else {
        "(not shown: not shaped like an id)".into()
    }
}

/// Bounded and `[A-Za-z0-9._-]` only: what a request id or an error code
/// looks like (the empty string passes).
fn id_shaped(s: &str) -> bool {
    s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{CreateInstanceToken, DescribeImages};

    struct Count(std::sync::atomic::AtomicU32);
    impl ApiObserver for Count {
        fn observe(&self, _: &'static str, _: &str, _: Duration) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Defect 17: an API that is gone is not retried past
    /// `max_consecutive_failures` requests in a row, across calls.
    #[tokio::test]
    async fn stops_retrying_after_max_consecutive_failures() {
        // Nothing listens on a port just released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cc = ClientConfig::new(
            format!("http://127.0.0.1:{port}"),
            Credentials::new("AK", "SK"),
        );
        cc.requests_per_second = 1000.0;
        cc.retry = RetryPolicy {
            max_attempts: 50,
            base: Duration::from_millis(1),
            cap: Duration::from_millis(1),
        };
        cc.max_consecutive_failures = 4;
        let count = Arc::new(Count(AtomicU32::new(0)));
        let client = Client::with_observer(cc, Some(count.clone())).unwrap();
        let req = DescribeImages::all("i", "ns", "repo");
        assert!(client.call(&req).await.is_err());
        assert_eq!(count.0.load(Ordering::SeqCst), 4, "4 attempts, not 50");
        assert!(client.failing());
        // Still failing: the next call tries once, without retries.
        assert!(client.call(&req).await.is_err());
        assert_eq!(count.0.load(Ordering::SeqCst), 5);
    }

    #[test]
    fn error_document_becomes_api_error() {
        let body = br#"{"RequestId":"r-9","Error":{"Type":"Sender","Code":"InvalidParameterValue","Message":"bad MaxResults"}}"#;
        let e = decode_response::<DescribeImages>(400, body).unwrap_err();
        assert_eq!(e.code(), "InvalidParameterValue");
        assert_eq!(
            e.to_string(),
            "DescribeImages: HTTP 400 InvalidParameterValue: bad MaxResults (request id r-9)"
        );
    }

    #[test]
    fn decode_errors_never_quote_the_body() {
        let body = br#"{"tokenId":"t","Token":12345678901,"RequestId":"r"}"#;
        let e = decode_response::<CreateInstanceToken>(200, body).unwrap_err();
        assert_eq!(e.code(), "DecodeError");
        assert!(!e.to_string().contains("12345678901"), "{e}");
        let e =
            decode_response::<DescribeImages>(200, br#"{"ImageSet":[{"ImageId":"sha"#).unwrap_err();
        assert!(e.to_string().contains("truncated JSON"), "{e}");
    }

    #[test]
    fn request_ids_are_shown_only_when_shaped_like_ids() {
        // An undecodable answer's id is quoted for support...
        let e =
            decode_response::<DescribeImages>(200, br#"{"RequestId":"4f1c-9a_b.2","ImageSet":7}"#)
                .unwrap_err();
        assert!(e.to_string().contains("(request id 4f1c-9a_b.2)"), "{e}");
        // ...but free text in that field (here, a whole secret-bearing
        // sentence, or an over-long blob) is not, in either error kind.
        let odd = br#"{"RequestId":"token is s3cr3t value","ImageSet":7}"#;
        let e = decode_response::<DescribeImages>(200, odd).unwrap_err();
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
        assert!(e.to_string().contains("not shaped like an id"), "{e}");
        let long = format!(
            r#"{{"RequestId":"{}","Error":{{"Code":"X","Message":"m"}}}}"#,
            "a".repeat(65)
        );
        let e = decode_response::<DescribeImages>(400, long.as_bytes()).unwrap_err();
        assert_eq!(e.code(), "X");
        assert!(!e.to_string().contains(&"a".repeat(65)), "{e}");
    }

    /// Review 7: the request id was shaped, the code beside it (a metric
    /// label and a log field) was not.
    #[test]
    fn error_codes_are_kept_only_when_shaped_like_codes() {
        let doc = |code: &str| {
            format!(r#"{{"RequestId":"r-1","Error":{{"Code":{code:?},"Message":"m"}}}}"#)
        };
        let e =
            decode_response::<DescribeImages>(409, doc("LimitExceeded").as_bytes()).unwrap_err();
        assert_eq!(e.code(), "LimitExceeded");
        assert!(e.is_retryable(), "{e}");
        for odd in ["token is s3cr3t value", "a\nb", &"C".repeat(65), ""] {
            let e = decode_response::<DescribeImages>(400, doc(odd).as_bytes()).unwrap_err();
            assert_eq!(e.code(), "Unknown", "{odd:?}");
            if !odd.is_empty() {
                assert!(!e.to_string().contains(odd), "{e}");
            }
        }
    }

    #[test]
    fn status_without_document() {
        let e = decode_response::<DescribeImages>(502, b"<html>bad gateway</html>").unwrap_err();
        assert_eq!(e.code(), "HttpServerError");
        assert!(e.is_retryable());
    }

    #[test]
    fn credentials_debug_is_redacted() {
        let c = Credentials::new("AKLTabcdefgh", "very-secret-key");
        let s = format!("{c:?}");
        assert!(
            !s.contains("very-secret-key") && !s.contains("abcdefgh"),
            "{s}"
        );
    }

    #[test]
    fn backoff_is_bounded_by_cap() {
        let p = RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(100),
            cap: Duration::from_millis(300),
        };
        for attempt in 0..20 {
            assert!(p.backoff(attempt) <= Duration::from_millis(300));
        }
    }
}
