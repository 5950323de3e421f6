//! Proving a new token works: a registry login, `GET <registry>/v2/` with
//! Basic auth, as `docker login` does. Registries that answer with a Bearer
//! challenge (the Docker token protocol, as Harbor-based registries do) are
//! followed to their token realm with the same Basic credentials.
//!
//! Loopback registries (`127.0.0.1:5000`, `localhost:5000`, `[::1]:5000`) are
//! reached over plain HTTP, as Docker treats them; every other registry over
//! HTTPS only. The credentials never go to a token realm over a weaker
//! scheme than the registry's: an HTTPS registry's realm must be HTTPS; a
//! plain-HTTP realm is accepted only for a plain-HTTP (loopback) registry and
//! only on a loopback host.

use crate::kcr::client::reqwest_error_text;
use reqwest::header::{AUTHORIZATION, HeaderValue, WWW_AUTHENTICATE};
use secrecy::{ExposeSecret, SecretString};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("registry {registry} refused the new credentials (HTTP {status})")]
    Refused { registry: String, status: u16 },
    #[error("registry {registry}: {why}")]
    Unreachable { registry: String, why: String },
    /// The registry answered 403 to an anonymous request: KCR refuses this
    /// host before any login (the instance's external endpoint access policy).
    #[error("registry {registry} refused this host (HTTP {status})")]
    Blocked { registry: String, status: u16 },
    /// The registry let an anonymous `GET /v2/` through: a login there
    /// proves nothing about a token, so `verify = true` cannot be honoured.
    #[error(
        "registry {registry} answers GET /v2/ without credentials, so a login cannot prove a token \
         (a KCR registry asks for credentials: check the [[instances]] registry host)"
    )]
    OpenToAnonymous { registry: String },
    /// The registry's `/v2/` answered with a redirect: this is not the
    /// registry host itself (credentials are never sent through a redirect).
    #[error("registry {registry}: GET /v2/ redirects ({detail})")]
    Redirected {
        registry: String,
        /// `HTTP 301 to <Location>`; boxed, which keeps the error (and
        /// every `Result` carrying it) small.
        detail: Box<str>,
    },
    /// Nothing answered within the timeout (dropped packets: a firewall,
    /// security group or proxy; KCR itself refuses an address with a 403).
    #[error("registry {registry}: no answer to GET /v2/ within the timeout")]
    TimedOut { registry: String },
    /// A test asked for a fault here (`failpoints` feature only).
    #[error("{0}")]
    Injected(String),
}

impl VerifyError {
    /// Did the registry answer at all (for `kcr_housekeeper_token_registry_reachable`)?
    pub fn reached(&self) -> bool {
        matches!(
            self,
            VerifyError::Refused { .. } | VerifyError::OpenToAnonymous { .. }
        )
    }
}

/// The base URL of a registry host (`host[:port]`).
pub fn base_url(registry: &str) -> String {
    let host = registry
        .rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(registry, |(h, _)| h);
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback {
        format!("http://{registry}")
    } else {
        format!("https://{registry}")
    }
}

fn basic(username: &str, secret: &SecretString) -> HeaderValue {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD
        .encode(format!("{username}:{}", secret.expose_secret()));
    let mut v =
        HeaderValue::from_str(&format!("Basic {encoded}")).expect("base64 is a valid header");
    // Keeps it out of any header logging (hyper, reqwest, our own).
    v.set_sensitive(true);
    v
}

/// `realm`, `service` and `scope` of a `Bearer` challenge.
fn bearer_challenge(h: &str) -> Option<Vec<(String, String)>> {
    let rest = h.trim().strip_prefix("Bearer ")?;
    let mut out = Vec::new();
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        out.push((
            k.trim().to_ascii_lowercase(),
            v.trim().trim_matches('"').to_string(),
        ));
    }
    Some(out)
}

fn is_loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// May the credentials for the registry at `base` be sent to `realm`? Never
/// over a weaker scheme than the registry's (no downgrade to plain HTTP).
pub fn realm_allowed(base: &reqwest::Url, realm: &reqwest::Url) -> Result<(), String> {
    match (base.scheme(), realm.scheme()) {
        (_, "https") => Ok(()),
        ("http", "http") if is_loopback(base) && is_loopback(realm) => Ok(()),
        ("http", "http") => Err(format!(
            "Bearer realm {realm} is plain HTTP on a non-loopback host; not sending credentials"
        )),
        ("https", "http") => Err(format!(
            "Bearer realm {realm} is plain HTTP for an HTTPS registry (a scheme downgrade); not sending credentials"
        )),
        (_, other) => Err(format!(
            "Bearer realm {realm} has scheme {other:?}; not sending credentials"
        )),
    }
}

/// Log in to `base` (from [`base_url`]) with the credentials.
pub async fn login(
    base: &str,
    username: &str,
    secret: &SecretString,
    timeout: Duration,
) -> Result<(), VerifyError> {
    let http = client(timeout).map_err(|e| VerifyError::Unreachable {
        registry: base.to_string(),
        why: e.to_string(),
    })?;
    login_with(&http, base, username, secret).await
}

/// The HTTP client [`login`] uses: no redirects (a redirect would carry the
/// credentials elsewhere), the given timeout.
pub fn client(timeout: Duration) -> reqwest::Result<reqwest::Client> {
    client_builder(timeout).build()
}

/// [`client`]'s settings, for a caller (a test) that adds to them.
pub fn client_builder(timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("kcr-housekeeper/", env!("CARGO_PKG_VERSION")))
}

/// [`login`] with a given client (made by [`client_builder`]).
pub async fn login_with(
    http: &reqwest::Client,
    base: &str,
    username: &str,
    secret: &SecretString,
) -> Result<(), VerifyError> {
    let unreachable = |why: String| VerifyError::Unreachable {
        registry: base.to_string(),
        why,
    };
    let base_url =
        reqwest::Url::parse(base).map_err(|e| unreachable(format!("registry URL: {e}")))?;
    let url = format!("{}/v2/", base.trim_end_matches('/'));
    crate::failpoint::hit("tokens.verify.login", VerifyError::Injected)?;
    let resp = http
        .get(&url)
        .header(AUTHORIZATION, basic(username, secret))
        .send()
        .await
        .map_err(|e| unreachable(format!("GET /v2/: {}", reqwest_error_text(&e))))?;
    let status = resp.status().as_u16();
    if resp.status().is_success() {
        return Ok(());
    }
    let challenge = resp
        .headers()
        .get(WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_challenge);
    let Some(params) = challenge.filter(|_| status == 401) else {
        return Err(if status == 401 || status == 403 {
            VerifyError::Refused {
                registry: base.to_string(),
                status,
            }
        } else {
            unreachable(format!("GET /v2/ answered HTTP {status}"))
        });
    };
    let realm = params
        .iter()
        .find(|(k, _)| k == "realm")
        .map(|(_, v)| v.clone())
        .ok_or_else(|| unreachable("Bearer challenge without a realm".into()))?;
    let realm_url = reqwest::Url::parse(&realm)
        .map_err(|e| unreachable(format!("Bearer realm {realm:?}: {e}")))?;
    realm_allowed(&base_url, &realm_url).map_err(unreachable)?;
    let query: Vec<(String, String)> = params
        .into_iter()
        .filter(|(k, _)| k == "service" || k == "scope")
        .collect();
    crate::failpoint::hit("tokens.verify.realm", VerifyError::Injected)?;
    let resp = http
        .get(realm_url)
        .query(&query)
        .header(AUTHORIZATION, basic(username, secret))
        .send()
        .await
        .map_err(|e| unreachable(format!("token realm: {}", reqwest_error_text(&e))))?;
    match resp.status().as_u16() {
        200..=299 => Ok(()),
        s @ (401 | 403) => Err(VerifyError::Refused {
            registry: base.to_string(),
            status: s,
        }),
        s => Err(unreachable(format!("token realm answered HTTP {s}"))),
    }
}

/// Can this host reach the registry at `base` (from [`base_url`]), and will
/// a login there prove a token? An anonymous `GET /v2/`, no credentials
/// sent: `401` (login required) = yes; `2xx` = [`VerifyError::OpenToAnonymous`]
/// (reachable, but a login proves nothing); `403` = [`VerifyError::Blocked`] (KCR refuses the
/// address: "新创建的KCR实例默认拒绝所有外部访问" until the instance's external
/// endpoint access policy allows it); `3xx` = [`VerifyError::Redirected`] (not
/// the registry host itself); no answer in time = [`VerifyError::TimedOut`];
/// a refused connection or any other answer = [`VerifyError::Unreachable`].
///
/// The token rotation runs it before creating a token (a token that cannot
/// log in would be created and discarded every cycle); `doctor` shows it.
pub async fn probe(base: &str, timeout: Duration) -> Result<(), VerifyError> {
    let http = client(timeout).map_err(|e| VerifyError::Unreachable {
        registry: base.to_string(),
        why: e.to_string(),
    })?;
    probe_with(&http, base).await
}

/// [`probe`] with a given client (made by [`client_builder`]).
pub async fn probe_with(http: &reqwest::Client, base: &str) -> Result<(), VerifyError> {
    let url = format!("{}/v2/", base.trim_end_matches('/'));
    let resp = http.get(&url).send().await.map_err(|e| {
        if e.is_timeout() {
            VerifyError::TimedOut {
                registry: base.to_string(),
            }
        } else {
            VerifyError::Unreachable {
                registry: base.to_string(),
                why: format!("GET /v2/: {}", reqwest_error_text(&e)),
            }
        }
    })?;
    match resp.status().as_u16() {
        401 => Ok(()),
        s @ 300..=399 => Err(VerifyError::Redirected {
            registry: base.to_string(),
            detail: format!(
                "HTTP {s} to {}",
                resp.headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .unwrap_or("nowhere (no Location header)")
            )
            .into(),
        }),
        200..=299 => Err(VerifyError::OpenToAnonymous {
            registry: base.to_string(),
        }),
        403 => Err(VerifyError::Blocked {
            registry: base.to_string(),
            status: 403,
        }),
        s => Err(VerifyError::Unreachable {
            registry: base.to_string(),
            why: format!("GET /v2/ answered HTTP {s}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_registry_is_named_with_the_cause() {
        // A port nothing listens on (bound, then freed).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let base = format!("http://127.0.0.1:{port}");
        let e = probe(&base, Duration::from_secs(5)).await.unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, VerifyError::Unreachable { .. }), "{text}");
        // Not only reqwest's "error sending request": the cause, and no URL.
        assert!(text.contains("Connection refused"), "{text}");
        assert!(
            !text.contains(&format!("{base}/v2")),
            "the request URL is not quoted: {text}"
        );
    }

    #[test]
    fn loopback_registries_use_plain_http_and_others_https() {
        assert_eq!(base_url("127.0.0.1:5000"), "http://127.0.0.1:5000");
        assert_eq!(base_url("localhost:5000"), "http://localhost:5000");
        assert_eq!(base_url("[::1]:5000"), "http://[::1]:5000");
        assert_eq!(base_url("prod.ksyunkcr.com"), "https://prod.ksyunkcr.com");
        assert_eq!(base_url("10.0.0.1:5000"), "https://10.0.0.1:5000");
        assert_eq!(base_url("localhost.evil.com"), "https://localhost.evil.com");
    }

    #[test]
    fn parses_a_bearer_challenge() {
        let p = bearer_challenge(
            r#"Bearer realm="https://r.example/service/token",service="harbor-registry""#,
        )
        .unwrap();
        assert_eq!(
            p[0],
            ("realm".into(), "https://r.example/service/token".into())
        );
        assert_eq!(p[1], ("service".into(), "harbor-registry".into()));
        assert!(bearer_challenge("Basic realm=\"x\"").is_none());
    }

    /// Defect 13: never a scheme downgrade; plain HTTP only loopback to loopback.
    #[test]
    fn credentials_never_go_to_a_weaker_scheme() {
        let u = |s: &str| reqwest::Url::parse(s).unwrap();
        let ok = |b: &str, r: &str| realm_allowed(&u(b), &u(r));
        assert!(ok("https://r.example", "https://auth.example/token").is_ok());
        assert!(ok("http://127.0.0.1:5000", "https://auth.example/token").is_ok());
        assert!(ok("http://127.0.0.1:5000", "http://127.0.0.1:5001/token").is_ok());
        assert!(ok("http://localhost:5000", "http://[::1]:5001/token").is_ok());
        let e = ok("https://r.example", "http://r.example/token").unwrap_err();
        assert!(e.contains("downgrade"), "{e}");
        assert!(ok("https://r.example", "http://127.0.0.1/token").is_err());
        assert!(ok("http://127.0.0.1:5000", "http://r.example/token").is_err());
        assert!(ok("https://r.example", "ftp://r.example/token").is_err());
    }

    #[test]
    fn the_basic_header_is_marked_sensitive() {
        let v = basic("u", &SecretString::from("s3cret"));
        assert!(v.is_sensitive());
        assert!(!format!("{v:?}").contains("czNjcmV0"));
    }
}
