//! Proving a new token works: a registry login, `GET <registry>/v2/` with
//! Basic auth, as `docker login` does. Registries that answer with a Bearer
//! challenge (the Docker token protocol, as Harbor-based registries do) are
//! followed to their token realm with the same Basic credentials.
//!
//! Loopback registries (`127.0.0.1:5000`, `localhost:5000`, `[::1]:5000`) are
//! reached over plain HTTP, as Docker treats them; every other registry over
//! HTTPS only.

use reqwest::header::{AUTHORIZATION, HeaderValue, WWW_AUTHENTICATE};
use secrecy::{ExposeSecret, SecretString};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("registry {registry} refused the new credentials (HTTP {status})")]
    Refused { registry: String, status: u16 },
    #[error("registry {registry}: {why}")]
    Unreachable { registry: String, why: String },
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

/// Log in to `base` (from [`base_url`]) with the credentials.
pub async fn login(
    base: &str,
    username: &str,
    secret: &SecretString,
    timeout: Duration,
) -> Result<(), VerifyError> {
    let unreachable = |why: String| VerifyError::Unreachable {
        registry: base.to_string(),
        why,
    };
    let http = reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("kcr-housekeeper/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| unreachable(e.to_string()))?;
    let url = format!("{}/v2/", base.trim_end_matches('/'));
    let resp = http
        .get(&url)
        .header(AUTHORIZATION, basic(username, secret))
        .send()
        .await
        .map_err(|e| unreachable(format!("GET /v2/: {}", e.without_url())))?;
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
    // The secret goes only to the same host, or over HTTPS.
    let same_host = reqwest::Url::parse(base)
        .ok()
        .and_then(|b| b.host_str().map(str::to_owned))
        == realm_url.host_str().map(str::to_owned);
    if realm_url.scheme() != "https" && !same_host {
        return Err(unreachable(format!(
            "Bearer realm {realm:?} is neither HTTPS nor the registry itself; not sending credentials"
        )));
    }
    let query: Vec<(String, String)> = params
        .into_iter()
        .filter(|(k, _)| k == "service" || k == "scope")
        .collect();
    let resp = http
        .get(realm_url)
        .query(&query)
        .header(AUTHORIZATION, basic(username, secret))
        .send()
        .await
        .map_err(|e| unreachable(format!("token realm: {}", e.without_url())))?;
    match resp.status().as_u16() {
        200..=299 => Ok(()),
        s @ (401 | 403) => Err(VerifyError::Refused {
            registry: base.to_string(),
            status: s,
        }),
        s => Err(unreachable(format!("token realm answered HTTP {s}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn the_basic_header_is_marked_sensitive() {
        let v = basic("u", &SecretString::from("s3cret"));
        assert!(v.is_sensitive());
        assert!(!format!("{v:?}").contains("czNjcmV0"));
    }
}
