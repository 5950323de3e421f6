//! The registry side of the simulator: enough of the Docker Registry HTTP
//! API v2 for real clients (`docker login`, `skopeo inspect`, `crane
//! manifest`) to prove a delivered credential.
//!
//! - `GET /v2/`: the version check (200 `{}` when authenticated).
//! - `GET|HEAD /v2/<namespace>/<repo>/manifests/<tag|digest>`: an image
//!   manifest, Docker schema 2 or OCI as the `Accept` header prefers, with
//!   `Docker-Content-Digest`.
//! - `GET|HEAD /v2/<namespace>/<repo>/blobs/<digest>`: the image's config
//!   blob (the only blob a manifest names: images have no layers here).
//! - `GET /v2/<namespace>/<repo>/tags/list`: every tag, sorted, in one page.
//! - `GET /service/token`: the Docker token protocol's realm. Basic
//!   credentials of a live instance token buy a Bearer token for 30 minutes
//!   of simulated time.
//!
//! Authentication, as a Harbor-based KCR registry: an unauthenticated
//! request is answered 401 with a `Bearer` challenge naming the realm; Basic
//! credentials are accepted directly as well. Either is checked on **every**
//! request against the instance's tokens as they are now: a Bearer token
//! stops working as soon as the instance token it was bought with is
//! disabled, deleted or expired. Access control comes first, as KCR does:
//! the instance the request is for (the one whose `RegistryHost` the `Host`
//! header names; else the one the credentials belong to; else every
//! instance) must have its external endpoint Opened with a policy entry
//! containing the caller's address, or the answer is 403 whatever the
//! credentials.
//!
//! **Digests.** On KCR an image's `ImageId` is its manifest's digest. A
//! scenario's digests are written by hand (`sha256:1111…`), and no manifest
//! hashes to them, so the simulator does not pretend: it derives a manifest
//! and config for each image from the scenario (the `ImageId` is kept in the
//! config's labels and the OCI manifest's annotations, key
//! [`IMAGE_ID_KEY`]), and the registry serves them under their real sha256.
//! `Docker-Content-Digest` is that real digest; a manifest asked for by the
//! scenario's `ImageId` is `MANIFEST_UNKNOWN` with a detail saying so. Clients
//! that verify what they download (skopeo does) therefore succeed; a test
//! that needs the registry's digest reads it from the answer, not from the
//! OpenAPI listing.

use super::{LogEntry, Shared, json_response};
use crate::world::{Image, Instance, World};
use axum::Router;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, Uri, header};
use axum::response::Response;
use axum::routing::get;
use base64::Engine;
use chrono::NaiveDateTime;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The label (config) and annotation (OCI manifest) that carry the
/// scenario's `ImageId`.
pub const IMAGE_ID_KEY: &str = "com.ksyun.kcr-sim.image-id";

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// What the token realm calls itself (`service=` of the challenge).
const SERVICE: &str = "kcr-sim";
/// Bearer tokens live this long (simulated time).
const BEARER_SECONDS: i64 = 1800;

/// A Bearer token bought at the realm: which instance token it stands for.
#[derive(Clone, Debug)]
pub(super) struct Grant {
    instance_id: String,
    token_id: String,
    expires: NaiveDateTime,
}

/// The realm's Bearer tokens (opaque random strings → grant).
#[derive(Default)]
pub(super) struct Bearers(Mutex<HashMap<String, Grant>>);

pub(super) fn routes(router: Router<Arc<Shared>>) -> Router<Arc<Shared>> {
    router
        .route("/v2/", get(version_check))
        .route("/v2", get(version_check))
        .route("/v2/{*rest}", get(content))
        .route("/service/token", get(token))
}

/// The two manifest formats the registry serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Docker,
    Oci,
}

/// A manifest and the config blob it names, derived from one image.
struct Artifacts {
    manifest: Vec<u8>,
    manifest_digest: String,
    media_type: &'static str,
    config: Vec<u8>,
    config_digest: String,
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn artifacts(name: &str, image: &Image, format: Format) -> Artifacts {
    // KCR writes Beijing wall-clock times; an image config says UTC.
    let created = (image.create_time - chrono::Duration::hours(8))
        .and_utc()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {"Labels": {IMAGE_ID_KEY: image.digest, "com.ksyun.kcr-sim.repository": name}},
        "rootfs": {"type": "layers", "diff_ids": []},
        "history": [],
    });
    let config = serde_json::to_vec(&config).expect("json serialises");
    let config_digest = sha256(&config);
    let (media_type, config_type) = match format {
        Format::Docker => (DOCKER_MANIFEST, DOCKER_CONFIG),
        Format::Oci => (OCI_MANIFEST, OCI_CONFIG),
    };
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": config_type, "size": config.len(), "digest": config_digest},
        "layers": [],
    });
    if format == Format::Oci {
        manifest["annotations"] = json!({ IMAGE_ID_KEY: image.digest });
    }
    let manifest = serde_json::to_vec(&manifest).expect("json serialises");
    Artifacts {
        manifest_digest: sha256(&manifest),
        manifest,
        media_type,
        config,
        config_digest,
    }
}

/// Docker schema 2 unless the client accepts OCI and not schema 2.
fn preferred(headers: &HeaderMap) -> Format {
    let accept: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.split(';').next().unwrap_or("").trim())
        .collect();
    if !accept.contains(&DOCKER_MANIFEST) && accept.contains(&OCI_MANIFEST) {
        Format::Oci
    } else {
        Format::Docker
    }
}

/// The user name and secret of a `Basic` authorization.
fn basic(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(value.strip_prefix("Basic ")?.trim())
        .ok()?;
    let pair = String::from_utf8(raw).ok()?;
    let (user, secret) = pair.split_once(':')?;
    Some((user.to_owned(), secret.to_owned()))
}

fn unauthorized() -> (Response, &'static str) {
    (
        registry_error(401, "UNAUTHORIZED", "authentication required", Value::Null),
        "UNAUTHORIZED",
    )
}

/// Who is asking: the instance whose live token the credentials are.
fn authenticated<'w>(
    shared: &Shared,
    world: &'w World,
    headers: &HeaderMap,
    now: NaiveDateTime,
) -> Option<&'w Instance> {
    if let Some((user, secret)) = basic(headers) {
        return world.login_instance(&user, &secret, now);
    }
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let bearer = value.strip_prefix("Bearer ")?.trim();
    let grant = shared
        .bearers
        .0
        .lock()
        .expect("bearer lock")
        .get(bearer)
        .cloned()?;
    if grant.expires <= now {
        return None;
    }
    world
        .instances
        .iter()
        .find(|i| i.id == grant.instance_id)
        .filter(|i| {
            i.tokens.iter().any(|t| {
                t.id == grant.token_id && t.enable && t.expire_time.is_none_or(|e| e > now)
            })
        })
}

fn host(headers: &HeaderMap) -> &str {
    headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// A JSON answer as the registry API gives it (with its version header).
fn registry_json(status: u16, body: &Value) -> Response {
    let mut r = json_response(status, body);
    r.headers_mut().insert(
        "Docker-Distribution-API-Version",
        HeaderValue::from_static("registry/2.0"),
    );
    r
}

fn registry_error(status: u16, code: &str, message: &str, detail: Value) -> Response {
    registry_json(
        status,
        &json!({"errors": [{"code": code, "message": message, "detail": detail}]}),
    )
}

fn log(shared: &Shared, method: &Method, uri: &Uri, started: Instant, status: u16, code: &str) {
    shared.record(LogEntry {
        ts: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        method: method.as_str().to_owned(),
        path: uri.path().to_owned(),
        action: None,
        params: BTreeMap::new(),
        status,
        code: code.to_owned(),
        request_id: String::new(),
        injected: false,
        micros: started.elapsed().as_micros() as u64,
    });
}

/// The outcome of the access checks every registry request goes through.
enum Access {
    /// 403: the external endpoint's policy refuses the caller.
    Denied,
    /// 401: no valid credentials for the instance asked for.
    Unauthenticated,
    /// The instance (by id) the request may read.
    Granted(String),
}

fn access(shared: &Shared, world: &World, peer: SocketAddr, headers: &HeaderMap) -> Access {
    let now = shared.now_beijing();
    let login = authenticated(shared, world, headers, now);
    let target = world.instance_for_host(host(headers));
    let allowed = match target.or(login) {
        Some(i) => i.external_endpoint.allows(peer.ip()),
        None => world
            .instances
            .iter()
            .all(|i| i.external_endpoint.allows(peer.ip())),
    };
    match (allowed, login) {
        (false, _) => Access::Denied,
        (true, Some(l)) if target.is_none_or(|t| t.id == l.id) => Access::Granted(l.id.clone()),
        (true, _) => Access::Unauthenticated,
    }
}

fn challenge(headers: &HeaderMap, scope: Option<&str>) -> Response {
    let mut r = registry_error(401, "UNAUTHORIZED", "authentication required", Value::Null);
    let host = match host(headers) {
        "" => "127.0.0.1",
        h => h,
    };
    let mut value = format!("Bearer realm=\"http://{host}/service/token\",service=\"{SERVICE}\"");
    if let Some(scope) = scope {
        value.push_str(&format!(",scope=\"repository:{scope}:pull\""));
    }
    if let Ok(v) = HeaderValue::from_str(&value) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

fn denied() -> Response {
    registry_error(
        403,
        "DENIED",
        "access denied by the instance's external endpoint access policy",
        Value::Null,
    )
}

/// `GET /v2/`: the version check a login makes.
async fn version_check(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let access = {
        let world = shared.world.lock().expect("world lock");
        access(&shared, &world, peer, &headers)
    };
    let (r, code) = match access {
        Access::Denied => (denied(), "DENIED"),
        Access::Unauthenticated => (challenge(&headers, None), "UNAUTHORIZED"),
        Access::Granted(_) => (registry_json(200, &json!({})), "OK"),
    };
    log(&shared, &method, &uri, started, r.status().as_u16(), code);
    r
}

/// `GET /service/token`: Basic credentials of a live token → a Bearer token.
async fn token(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let now = shared.now_beijing();
    let grant = {
        let world = shared.world.lock().expect("world lock");
        match access(&shared, &world, peer, &headers) {
            Access::Denied => Err((denied(), "DENIED")),
            // Only Basic credentials buy a token (not another Bearer token).
            Access::Granted(instance_id) => basic(&headers)
                .and_then(|(user, secret)| world.login_token(&user, &secret, now))
                .map(|(_, t)| Grant {
                    instance_id,
                    token_id: t.id.clone(),
                    expires: now + chrono::Duration::seconds(BEARER_SECONDS),
                })
                .ok_or_else(unauthorized),
            Access::Unauthenticated => Err(unauthorized()),
        }
    };
    let (r, code) = match grant {
        Err(e) => e,
        Ok(grant) => {
            let bearer = format!("{:032x}{:032x}", shared.random(), shared.random());
            shared
                .bearers
                .0
                .lock()
                .expect("bearer lock")
                .insert(bearer.clone(), grant);
            let issued = shared
                .now_utc()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let body = json!({"token": bearer, "access_token": bearer,
                              "expires_in": BEARER_SECONDS, "issued_at": issued});
            (json_response(200, &body), "OK")
        }
    };
    log(&shared, &method, &uri, started, r.status().as_u16(), code);
    r
}

/// `<namespace>/<repo>/(manifests|blobs)/<reference>` or
/// `<namespace>/<repo>/tags/list` split into its parts.
fn parse(rest: &str) -> Option<(&str, &str, &str, &str)> {
    let (name, reference) = rest.rsplit_once('/')?;
    let (name, kind) = name.rsplit_once('/')?;
    let (namespace, repo) = name.split_once('/')?;
    let known = match kind {
        "manifests" | "blobs" => !reference.is_empty(),
        "tags" => reference == "list",
        _ => false,
    };
    (known && !repo.is_empty()).then_some((namespace, repo, kind, reference))
}

fn bytes_response(body: Vec<u8>, media_type: &str, digest: &str, head: bool) -> Response {
    let len = body.len().to_string();
    let mut r = Response::new(if head {
        axum::body::Body::empty()
    } else {
        axum::body::Body::from(body)
    });
    let h = r.headers_mut();
    for (k, v) in [
        (header::CONTENT_TYPE.as_str(), media_type),
        ("docker-content-digest", digest),
        ("docker-distribution-api-version", "registry/2.0"),
        (header::CONTENT_LENGTH.as_str(), &len),
    ] {
        // Every value is ours (media types, hex digests, a number).
        if let (Ok(k), Ok(v)) = (
            axum::http::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.insert(k, v);
        }
    }
    r
}

/// A registry error answer (`{"errors": [...]}`).
struct RegistryError {
    code: &'static str,
    message: &'static str,
    detail: Value,
}

impl RegistryError {
    fn not_found(code: &'static str, message: &'static str, detail: Value) -> Self {
        RegistryError {
            code,
            message,
            detail,
        }
    }
}

/// What one manifest or blob request answers (access already granted).
fn serve(
    world: &World,
    instance_id: &str,
    rest: &str,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response, RegistryError> {
    let Some((namespace, repo, kind, reference)) = parse(rest) else {
        return Err(RegistryError::not_found(
            "NAME_UNKNOWN",
            "repository name not known to registry",
            json!({"path": rest}),
        ));
    };
    let name = format!("{namespace}/{repo}");
    let images = world
        .instances
        .iter()
        .find(|i| i.id == instance_id)
        .and_then(|i| i.namespaces.get(namespace))
        .and_then(|n| n.repos.get(repo))
        .map(|r| &r.images)
        .ok_or_else(|| {
            RegistryError::not_found(
                "NAME_UNKNOWN",
                "repository name not known to registry",
                json!({"name": name}),
            )
        })?;
    if kind == "tags" {
        let mut tags: Vec<&str> = images
            .iter()
            .flat_map(|im| im.tags.iter().map(String::as_str))
            .collect();
        tags.sort_unstable();
        return Ok(registry_json(200, &json!({"name": name, "tags": tags})));
    }
    if kind == "blobs" {
        let found = images
            .iter()
            .flat_map(|im| [Format::Docker, Format::Oci].map(|f| artifacts(&name, im, f)))
            .find(|a| a.config_digest == reference)
            .ok_or_else(|| {
                RegistryError::not_found(
                    "BLOB_UNKNOWN",
                    "blob unknown to registry",
                    json!({"digest": reference}),
                )
            })?;
        return Ok(bytes_response(
            found.config,
            "application/octet-stream",
            &found.config_digest,
            head,
        ));
    }
    let unknown =
        |detail: Value| RegistryError::not_found("MANIFEST_UNKNOWN", "manifest unknown", detail);
    let found = if reference.contains(':') {
        if images.iter().any(|im| im.digest == reference) {
            return Err(unknown(json!({
                "digest": reference,
                "why": "the simulator's ImageId is not a manifest digest; ask by tag, or by the Docker-Content-Digest a tag answers"
            })));
        }
        images
            .iter()
            .flat_map(|im| [Format::Docker, Format::Oci].map(|f| artifacts(&name, im, f)))
            .find(|a| a.manifest_digest == reference)
    } else {
        images
            .iter()
            .find(|im| im.tags.iter().any(|t| t == reference))
            .map(|im| artifacts(&name, im, preferred(headers)))
    };
    let found = found.ok_or_else(|| unknown(json!({"reference": reference})))?;
    Ok(bytes_response(
        found.manifest,
        found.media_type,
        &found.manifest_digest,
        head,
    ))
}

/// `GET|HEAD /v2/<namespace>/<repo>/(manifests|blobs)/<reference>`.
async fn content(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(rest): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let scope = parse(&rest).map(|(ns, repo, ..)| format!("{ns}/{repo}"));
    let answer = {
        let world = shared.world.lock().expect("world lock");
        match access(&shared, &world, peer, &headers) {
            Access::Denied => Err((denied(), "DENIED")),
            Access::Unauthenticated => Err((challenge(&headers, scope.as_deref()), "UNAUTHORIZED")),
            Access::Granted(id) => serve(&world, &id, &rest, &headers, method == Method::HEAD)
                .map_err(|e| (registry_error(404, e.code, e.message, e.detail), e.code)),
        }
    };
    let (r, code) = match answer {
        Ok(r) => (r, "OK"),
        Err(e) => e,
    };
    log(&shared, &method, &uri, started, r.status().as_u16(), code);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_name_kind_and_reference() {
        assert_eq!(
            parse("apps/web/manifests/v1.2"),
            Some(("apps", "web", "manifests", "v1.2"))
        );
        assert_eq!(
            parse("apps/team/web/blobs/sha256:ab"),
            Some(("apps", "team/web", "blobs", "sha256:ab"))
        );
        assert_eq!(parse("apps/manifests/v1"), None);
        assert_eq!(
            parse("apps/web/tags/list"),
            Some(("apps", "web", "tags", "list"))
        );
        assert_eq!(parse("apps/web/tags/other"), None);
        assert_eq!(parse("apps/web/manifests/"), None);
    }

    #[test]
    fn manifests_name_their_config_by_its_real_digest() {
        let image = Image {
            digest: "sha256:1111".into(),
            size: 1,
            create_time: chrono::NaiveDate::from_ymd_opt(2026, 1, 2)
                .unwrap()
                .and_hms_opt(8, 0, 0)
                .unwrap(),
            tags: vec!["v1".into()],
            scanned: None,
        };
        for format in [Format::Docker, Format::Oci] {
            let a = artifacts("apps/web", &image, format);
            assert_eq!(a.manifest_digest, sha256(&a.manifest));
            assert_eq!(a.config_digest, sha256(&a.config));
            let m: Value = serde_json::from_slice(&a.manifest).unwrap();
            assert_eq!(m["config"]["digest"], a.config_digest.as_str());
            assert_eq!(m["config"]["size"], a.config.len());
            assert_eq!(m["mediaType"], a.media_type);
            let c: Value = serde_json::from_slice(&a.config).unwrap();
            assert_eq!(c["config"]["Labels"][IMAGE_ID_KEY], "sha256:1111");
            assert_eq!(c["created"], "2026-01-02T00:00:00Z");
        }
        assert_ne!(
            artifacts("apps/web", &image, Format::Docker).manifest_digest,
            artifacts("apps/web", &image, Format::Oci).manifest_digest
        );
    }

    #[test]
    fn oci_only_when_schema_2_is_not_accepted() {
        let mut h = HeaderMap::new();
        assert_eq!(preferred(&h), Format::Docker);
        h.insert(header::ACCEPT, HeaderValue::from_static(OCI_MANIFEST));
        assert_eq!(preferred(&h), Format::Oci);
        h.append(
            header::ACCEPT,
            HeaderValue::from_static("application/vnd.docker.distribution.manifest.v2+json; q=0.9"),
        );
        assert_eq!(preferred(&h), Format::Docker);
    }
}
