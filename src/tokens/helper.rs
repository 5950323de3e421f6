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
}

impl std::fmt::Debug for SinkDocument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkDocument")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .field("expires_at", &self.expires_at)
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
            let doc = docs
                .iter()
                .filter(|d| d.registry.eq_ignore_ascii_case(&host))
                .filter(|d| d.expires_at.is_none_or(|t| t > now))
                .max_by_key(|d| d.expires_at)
                .ok_or(HelperError::NotFound)?;
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
