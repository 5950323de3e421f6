//! The Docker credential-helper protocol (`docker-credential-<name>
//! get|store|erase|list`) answered from `file` sinks in `json` format, so
//! `docker`, `crane` and `skopeo` can use the rotated token through
//! `credHelpers` without a copy of it in their own config.
//!
//! - `get`: the server URL on standard input → `{"ServerURL", "Username",
//!   "Secret"}`; unknown (or expired) → `credentials not found in native
//!   keychain`, exit 1.
//! - `list`: `{"<registry>": "<username>", …}`.
//! - `store`, `erase`: refused (exit 1): the token is kcr-housekeeper's to
//!   rotate; a `docker login` or `logout` would be undone at the next rotation.
//!
//! The kubelet's image credential provider protocol
//! (`credentialprovider.kubelet.k8s.io/v1`) is answered from the same
//! documents by [`provider_answer`].
//!
//! Pure: the sink documents come in as text, the answers go out as text.

use chrono::{DateTime, Utc};
use serde::Deserialize;

/// The message docker-credential-helpers print for an unknown server; the
/// docker CLI recognises it.
pub const NOT_FOUND: &str = "credentials not found in native keychain";

/// A `file` sink document in `json` format.
#[derive(Deserialize)]
pub struct SinkDocument {
    pub registry: String,
    pub username: String,
    pub token: String,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    /// When the next rotation of this token is due (`expires_at` −
    /// `rotate_before`); absent in files written before it was recorded.
    #[serde(default)]
    pub rotates_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for SinkDocument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkDocument")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .field("expires_at", &self.expires_at)
            .field("rotates_at", &self.rotates_at)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HelperError {
    /// Printed on standard output, as the protocol wants.
    #[error("{NOT_FOUND}")]
    NotFound,
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    BadInput(String),
}

/// The registry host of a server URL as clients send it
/// (`https://prod.ksyunkcr.com/v2/`, `prod.ksyunkcr.com`).
pub fn host_of(server_url: &str) -> String {
    let s = server_url.trim();
    let s = s.split_once("://").map_or(s, |(_, rest)| rest);
    s.split('/').next().unwrap_or("").to_ascii_lowercase()
}

/// The credentials to offer for a registry host: the unexpired sink
/// document for it that expires last.
pub fn credentials_for<'d>(
    host: &str,
    docs: &'d [SinkDocument],
    now: DateTime<Utc>,
) -> Option<&'d SinkDocument> {
    docs.iter()
        .filter(|d| d.registry.eq_ignore_ascii_case(host))
        .filter(|d| d.expires_at.is_none_or(|t| t > now))
        .max_by_key(|d| d.expires_at)
}

/// Answer one request. `docs` are the sink documents, `input` the request's
/// standard input.
pub fn answer(
    action: &str,
    input: &str,
    docs: &[SinkDocument],
    now: DateTime<Utc>,
) -> Result<String, HelperError> {
    match action {
        "get" => {
            let host = host_of(input);
            if host.is_empty() {
                return Err(HelperError::BadInput(
                    "no server URL on standard input".into(),
                ));
            }
            let doc = credentials_for(&host, docs, now).ok_or(HelperError::NotFound)?;
            Ok(serde_json::json!({
                "ServerURL": input.trim(),
                "Username": doc.username,
                "Secret": doc.token,
            })
            .to_string()
                + "\n")
        }
        "list" => {
            let map: serde_json::Map<String, serde_json::Value> = docs
                .iter()
                .map(|d| (d.registry.clone(), d.username.clone().into()))
                .collect();
            Ok(serde_json::Value::Object(map).to_string() + "\n")
        }
        "store" | "erase" => {
            // Read the server from either form of input, never echoing a secret.
            let server = serde_json::from_str::<serde_json::Value>(input)
                .ok()
                .and_then(|v| v["ServerURL"].as_str().map(host_of))
                .unwrap_or_else(|| host_of(input));
            Err(HelperError::Refused(format!(
                "{action}: the credentials for {server:?} are rotated by kcr-housekeeper and cannot be changed through the credential helper"
            )))
        }
        other => Err(HelperError::BadInput(format!(
            "unknown action {other:?}; expected get, store, erase or list"
        ))),
    }
}

/// Why docker would not use what a `docker-config` sink writes for
/// `registry`: the file names a credential store for every registry
/// (`credsStore`) or a helper for this one (`credHelpers`), and docker then
/// ignores `auths`. `None` when `auths` is what docker reads.
pub fn docker_config_shadowed(doc: &serde_json::Value, registry: &str) -> Option<String> {
    let offer = format!(
        "point `credHelpers` at `kcr-housekeeper credential-helper` for {registry:?} instead (README: Credential helper)"
    );
    if let Some(helper) = doc["credHelpers"]
        .as_object()
        .and_then(|m| {
            m.iter()
                .find(|(k, _)| host_of(k) == registry.to_ascii_lowercase())
        })
        .and_then(|(_, v)| v.as_str())
        .filter(|h| !h.is_empty())
    {
        return Some(format!(
            "it sets credHelpers {registry:?} = {helper:?}, so docker asks that helper and ignores the token in `auths`; {offer}"
        ));
    }
    doc["credsStore"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(|store| {
            format!(
                "it sets credsStore = {store:?}, so docker asks that store and ignores the token in `auths`; {offer}"
            )
        })
}

/// The kubelet credential provider API version we speak.
pub const PROVIDER_API_VERSION: &str = "credentialprovider.kubelet.k8s.io/v1";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProviderRequest {
    api_version: String,
    kind: String,
    image: String,
    // `serviceAccountToken` and `serviceAccountAnnotations` may come too;
    // they are not needed, never read, and never echoed.
}

/// The registry host of an image reference as the kubelet names it
/// (`prod.ksyunkcr.com/apps/web:v1`, `127.0.0.1:5000/a/b@sha256:…`); a
/// reference without a host (`nginx`, `library/nginx`) is Docker Hub's.
pub fn image_host(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => {
            first.to_ascii_lowercase()
        }
        _ => "docker.io".into(),
    }
}

/// A duration as Go's `time.Duration` prints it (`480h0m0s`), which is what
/// `metav1.Duration` parses.
fn go_duration(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    format!("{}h{}m{}s", s / 3600, s / 60 % 60, s % 60)
}

/// Answer a kubelet `CredentialProviderRequest` (the JSON on standard input)
/// with a `CredentialProviderResponse`: the credentials of the sink whose
/// registry is the image's host, keyed by that host, cached per registry
/// until the token's next rotation is due (never past its expiry). No sink
/// for the host: an empty `auth`, not cached, as the protocol asks. Errors
/// name the field, never the input (it may carry a service account token).
pub fn provider_answer(
    input: &str,
    docs: &[SinkDocument],
    now: DateTime<Utc>,
) -> Result<String, HelperError> {
    let req: ProviderRequest = serde_json::from_str(input).map_err(|e| {
        HelperError::BadInput(format!(
            "standard input is not a CredentialProviderRequest (line {} column {}: {})",
            e.line(),
            e.column(),
            match e.classify() {
                serde_json::error::Category::Data => "a required field is missing or mistyped",
                _ => "not JSON",
            }
        ))
    })?;
    if req.api_version != PROVIDER_API_VERSION {
        return Err(HelperError::BadInput(format!(
            "apiVersion {:?} is not supported; set the kubelet's CredentialProviderConfig apiVersion to {PROVIDER_API_VERSION:?}",
            req.api_version
        )));
    }
    if req.kind != "CredentialProviderRequest" {
        return Err(HelperError::BadInput(format!(
            "kind {:?}: expected \"CredentialProviderRequest\"",
            req.kind
        )));
    }
    if req.image.trim().is_empty() {
        return Err(HelperError::BadInput("image is empty".into()));
    }
    let host = image_host(req.image.trim());
    let mut auth = serde_json::Map::new();
    let mut cache = chrono::Duration::zero();
    if let Some(doc) = credentials_for(&host, docs, now) {
        auth.insert(
            doc.registry.to_ascii_lowercase(),
            serde_json::json!({"username": doc.username, "password": doc.token}),
        );
        let until = match (doc.rotates_at, doc.expires_at) {
            (Some(r), Some(e)) => Some(r.min(e)),
            (r, e) => r.or(e),
        };
        // Neither known (a token that never expires, an old file): a day.
        cache = until.map_or(chrono::Duration::days(1), |t| t - now);
    }
    Ok(serde_json::json!({
        "apiVersion": PROVIDER_API_VERSION,
        "kind": "CredentialProviderResponse",
        "cacheKeyType": "Registry",
        "cacheDuration": go_duration(cache),
        "auth": auth,
    })
    .to_string()
        + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(
        registry: &str,
        expires_in: i64,
        rotates_in: Option<i64>,
        now: DateTime<Utc>,
    ) -> SinkDocument {
        SinkDocument {
            registry: registry.into(),
            username: "u".into(),
            token: "t".into(),
            expires_at: Some(now + chrono::Duration::hours(expires_in)),
            rotates_at: rotates_in.map(|h| now + chrono::Duration::hours(h)),
        }
    }

    #[test]
    fn image_hosts_as_the_kubelet_names_them() {
        for (image, host) in [
            ("prod.ksyunkcr.com/apps/web:v1", "prod.ksyunkcr.com"),
            ("PROD.ksyunkcr.com/apps/web@sha256:ab", "prod.ksyunkcr.com"),
            ("127.0.0.1:5000/a/b", "127.0.0.1:5000"),
            ("localhost/a", "localhost"),
            ("nginx", "docker.io"),
            ("library/nginx:1", "docker.io"),
        ] {
            assert_eq!(image_host(image), host, "{image}");
        }
    }

    #[test]
    fn cache_lasts_until_the_rotation_and_never_past_the_expiry() {
        let now = DateTime::parse_from_rfc3339("2026-11-26T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let req = r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"r.example/a/b:1"}"#;
        for (docs, want, offered) in [
            (
                vec![doc("r.example", 30 * 24, Some(20 * 24), now)],
                "480h0m0s",
                true,
            ),
            (
                vec![doc("r.example", 5, Some(20 * 24), now)],
                "5h0m0s",
                true,
            ),
            (vec![doc("r.example", 30 * 24, None, now)], "720h0m0s", true),
            // Rotation overdue (the daemon has not run yet): offered, not cached.
            (
                vec![doc("r.example", 30 * 24, Some(-1), now)],
                "0h0m0s",
                true,
            ),
            // Expired, or another registry: nothing offered, nothing cached.
            (vec![doc("r.example", -1, None, now)], "0h0m0s", false),
            (vec![doc("other.example", 30, None, now)], "0h0m0s", false),
        ] {
            let v: serde_json::Value =
                serde_json::from_str(&provider_answer(req, &docs, now).unwrap()).unwrap();
            assert_eq!(v["cacheDuration"], want, "{docs:?}");
            assert_eq!(v["cacheKeyType"], "Registry");
            let auth = v["auth"].as_object().unwrap();
            assert_eq!(auth.contains_key("r.example"), offered, "{docs:?}");
            assert_eq!(auth.len(), usize::from(offered), "{docs:?}");
        }
    }

    #[test]
    fn bad_requests_name_the_field_and_never_echo_the_input() {
        let now = Utc::now();
        for (input, want) in [
            ("{", "not JSON"),
            (
                r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","serviceAccountToken":"sa-secret"}"#,
                "missing",
            ),
            (
                r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1beta1","kind":"CredentialProviderRequest","image":"a/b","serviceAccountToken":"sa-secret"}"#,
                "apiVersion \"credentialprovider.kubelet.k8s.io/v1beta1\" is not supported",
            ),
            (
                r#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"Other","image":"a/b"}"#,
                "kind \"Other\"",
            ),
        ] {
            let e = provider_answer(input, &[], now).unwrap_err().to_string();
            assert!(e.contains(want) && !e.contains("sa-secret"), "{input}: {e}");
        }
    }
}
