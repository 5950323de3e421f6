//! Images in use (`[retention.in_use]`): what the cluster runs, or ran within
//! a lookback, is never deleted.
//!
//! The job reads every configured source ([`fetch`], I/O) and hands the
//! planner an [`InUse`] (data; the planner stays pure). Sources:
//! - `prometheus`: an instant query over kube-state-metrics'
//!   `kube_pod_container_info` and `kube_pod_init_container_info`, the last
//!   time each (`image`, `image_id`) was seen within the lookback;
//! - `file`: one image reference per line (`#` comments, blank lines);
//! - `exec`: a program printing references, one per line (run like a token
//!   `exec` sink: cleared environment, own process group, timeout).
//!
//! Matching: a reference with a digest (`host/ns/repo@sha256:…`) protects
//! the image with that digest in every repository (a mirror or an alias host
//! still protects it); one with a tag (`host/ns/repo:tag`) protects the image
//! that tag names in the instance whose `registry` is `host`.
//!
//! Fail closed: a source that cannot be read, answers something that is not
//! a list of references, or answers nothing where it answered something
//! before (the last non-empty count is remembered in the state) is a failure;
//! the plan is then blocked (enforce deletes nothing, exit 3; `plan` exits 1).
//! `allow_empty = true` accepts an empty answer (a cluster drained on
//! purpose) and resets the remembered count, so it is needed for one run.

use crate::config::{InUseConfig, InstanceConfig, PrometheusSource};
use crate::inventory::ImageInfo;
use crate::kcr::client::reqwest_error_text;
use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use std::collections::HashMap;

#[derive(Debug, thiserror::Error)]
pub enum InUseError {
    #[error("{0}")]
    Source(String),
    #[error("line {line}: {why}")]
    Line { line: usize, why: String },
    /// A test asked for a fault here (`failpoints` feature only).
    #[error("{0}")]
    Injected(String),
}

/// Where and when an image was last seen in use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub source: &'static str,
    pub last_seen: DateTime<Utc>,
}

impl Seen {
    /// The veto's reason, as explain and the reports show it.
    pub fn reason(&self) -> String {
        format!(
            "in use (source: {}, last seen {})",
            self.source,
            self.last_seen.to_rfc3339_opts(SecondsFormat::Secs, true)
        )
    }

    fn merge(slot: &mut Option<Seen>, new: Seen) {
        match slot {
            Some(old) if old.last_seen >= new.last_seen => {}
            _ => *slot = Some(new),
        }
    }
}

/// What the in-use sources said: pure data for the planner.
#[derive(Clone, Debug, Default)]
pub struct InUse {
    digests: HashMap<String, Seen>,
    /// (instance name, namespace, repository, tag).
    tags: HashMap<(String, String, String, String), Seen>,
    /// Sources that failed (`file /x: why`): the plan is blocked.
    pub failures: Vec<String>,
    /// References each source gave (`prometheus: 12`), for messages.
    pub counts: Vec<(&'static str, usize)>,
}

impl InUse {
    /// Whether anything was configured at all (no source: nothing to veto).
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty() && self.tags.is_empty() && self.failures.is_empty()
    }

    /// Add one reference a source gave. References to hosts that are no
    /// instance's registry are kept only by their digest.
    pub fn add(&mut self, r: &Reference, instances: &[InstanceConfig], seen: Seen) {
        if let Some(d) = &r.digest {
            let mut slot = self.digests.remove(d);
            Seen::merge(&mut slot, seen.clone());
            self.digests.insert(d.clone(), slot.expect("set"));
        }
        let (Some(host), Some(tag), Some((ns, repo))) = (&r.host, &r.tag, r.path.split_once('/'))
        else {
            return;
        };
        for inst in instances.iter().filter(|i| {
            i.registry
                .as_deref()
                .is_some_and(|h| h.eq_ignore_ascii_case(host))
        }) {
            let key = (
                inst.name.clone(),
                ns.to_owned(),
                repo.to_owned(),
                tag.clone(),
            );
            let mut slot = self.tags.remove(&key);
            Seen::merge(&mut slot, seen.clone());
            self.tags.insert(key, slot.expect("set"));
        }
    }

    /// Whether `img` in `instance/namespace/repository` is in use, and where
    /// it was seen last.
    pub fn image(
        &self,
        instance: &str,
        namespace: &str,
        repository: &str,
        img: &ImageInfo,
    ) -> Option<&Seen> {
        if self.is_empty() {
            return None;
        }
        let by_digest = self.digests.get(&img.digest.to_string());
        let by_tag = img.tags.iter().filter_map(|t| {
            self.tags.get(&(
                instance.to_owned(),
                namespace.to_owned(),
                repository.to_owned(),
                t.to_string(),
            ))
        });
        by_digest
            .into_iter()
            .chain(by_tag)
            .max_by_key(|s| s.last_seen)
    }

    /// Why the plan must not delete anything, if a source failed.
    pub fn blocked(&self) -> Option<String> {
        (!self.failures.is_empty()).then(|| {
            format!(
                "in-use source failed ({}): nothing will be deleted",
                self.failures.join("; ")
            )
        })
    }
}

/// An image reference: `host/ns/repo:tag`, `host/ns/repo@sha256:…`, both, or
/// a bare `sha256:…` digest. `docker-pullable://` and similar prefixes (as
/// kube-state-metrics reports `image_id`) are dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub host: Option<String>,
    /// Everything after the host: `ns/repo` (the repository may hold `/`).
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

struct Grammar {
    host: regex::Regex,
    component: regex::Regex,
    tag: regex::Regex,
}

fn grammar() -> &'static Grammar {
    static G: std::sync::LazyLock<Grammar> = std::sync::LazyLock::new(|| {
        let re = |r: &str| regex::Regex::new(r).expect("a valid pattern");
        Grammar {
            host: re(
                r"^[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?$",
            ),
            component: re(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$"),
            tag: re(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"),
        }
    });
    &G
}

/// Parse one reference; `Err` says what is wrong with it.
pub fn parse_reference(s: &str) -> Result<Reference, String> {
    let s = s.trim();
    let s = s.split_once("://").map_or(s, |(_, rest)| rest);
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{s:?} is not an image reference"));
    }
    if valid_digest(s) {
        return Ok(Reference {
            host: None,
            path: String::new(),
            tag: None,
            digest: Some(s.to_ascii_lowercase()),
        });
    }
    let (name, digest) = match s.split_once('@') {
        Some((n, d)) if valid_digest(d) => (n, Some(d.to_ascii_lowercase())),
        Some(_) => return Err(format!("{s:?}: the digest is not sha256:<64 hex digits>")),
        None => (s, None),
    };
    let (first, rest) = match name.split_once('/') {
        Some((f, r)) if f.contains('.') || f.contains(':') || f == "localhost" => {
            (Some(f.to_ascii_lowercase()), r)
        }
        _ => (None, name),
    };
    // A tag is after the last ':' of the last path component.
    let last = rest.rsplit('/').next().unwrap_or(rest);
    let (path, tag) = match last.rsplit_once(':') {
        Some((_, "")) => return Err(format!("{s:?} has an empty tag")),
        Some((_, t)) => (&rest[..rest.len() - t.len() - 1], Some(t.to_owned())),
        None => (rest, None),
    };
    if path.is_empty() || path.split('/').any(str::is_empty) {
        return Err(format!("{s:?} has no repository"));
    }
    // The grammar of docker's references (distribution/reference): without
    // it a source printing something else (`PATH=/usr/bin:/bin`, an HTML
    // page) would pass as a list of images that protects nothing.
    let g = grammar();
    if let Some(h) = &first
        && !g.host.is_match(h)
    {
        return Err(format!("{s:?}: {h:?} is not a registry host"));
    }
    if let Some(c) = path.split('/').find(|c| !g.component.is_match(c)) {
        return Err(format!(
            "{s:?}: {c:?} is not a repository name component (lowercase letters, digits, separators)"
        ));
    }
    if let Some(t) = &tag
        && !g.tag.is_match(t)
    {
        return Err(format!("{s:?}: {t:?} is not a tag"));
    }
    // Neither tag nor digest: `latest`, as docker and the kubelet pull it
    // (a pod spec's `image: h.io/ns/repo`, reported as is by
    // kube-state-metrics while the container has no image_id yet).
    let tag = match (tag, &digest) {
        (None, None) => Some("latest".to_owned()),
        (tag, _) => tag,
    };
    Ok(Reference {
        host: first,
        path: path.to_owned(),
        tag,
        digest,
    })
}

/// References from text, one per line; blank lines and `#` comments skipped.
pub fn parse_lines(text: &str) -> Result<Vec<Reference>, InUseError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split_once('#').map_or(line, |(l, _)| l).trim();
        if line.is_empty() {
            continue;
        }
        out.push(parse_reference(line).map_err(|why| InUseError::Line { line: i + 1, why })?);
    }
    Ok(out)
}

/// The default Prometheus query: per image, the last time (Unix seconds) a
/// container or init container of any pod ran it within `lookback`. A
/// subquery over `timestamp()` gives the sample times, so a Deployment
/// scaled to zero last night still counts until the lookback has passed.
///
/// Its weight: the subquery keeps every step's inner result for the range
/// function, so the inner expression is aggregated to one series per
/// (`image`, `image_id`) *before* the range (`timestamp` first, on the raw
/// samples, so the times stay the samples' own): what is held is images ×
/// steps rather than every pod's container series × steps, and the answer
/// is one sample per image. The step stays 5m, Prometheus's default
/// lookback delta, so a pod that ran briefly between two steps is not
/// missed (a coarser step would save work by forgetting such pods — the
/// wrong way to fail for a veto).
pub fn default_query(lookback: std::time::Duration) -> String {
    format!(
        "max_over_time((max by (image, image_id) (timestamp({{__name__=~\"kube_pod_container_info|kube_pod_init_container_info\"}})))[{}:5m])",
        prom_duration(lookback)
    )
}

/// A duration in PromQL's syntax (`7d`, `36h`, `90m`).
fn prom_duration(d: std::time::Duration) -> String {
    let s = d.as_secs().max(60);
    if s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else {
        format!("{}m", s / 60)
    }
}

/// The references a Prometheus answer names, each with its last-seen time:
/// the sample value when it is a Unix time (the default query), else the
/// query time. `image_id` gives the digest, `image` the tag.
pub fn parse_prometheus(
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<Vec<(Reference, DateTime<Utc>)>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not a Prometheus answer: {e}"))?;
    if v["status"] != "success" {
        return Err(format!(
            "query failed: {} {}",
            v["errorType"].as_str().unwrap_or("?"),
            v["error"].as_str().unwrap_or("")
        ));
    }
    // Thanos, Cortex and Prometheus's remote read answer `success` with
    // `warnings` when a store did not answer: a partial list of the images
    // in use, which would let deletes through. Fail closed.
    if let Some(w) = v["warnings"].as_array().filter(|w| !w.is_empty()) {
        return Err(format!(
            "a partial answer (warnings: {})",
            w.iter()
                .map(|w| w.as_str().unwrap_or("?"))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    if v["data"]["resultType"] != "vector" {
        return Err(format!(
            "the query must return an instant vector, not {}",
            v["data"]["resultType"]
        ));
    }
    let result = v["data"]["result"]
        .as_array()
        .ok_or("no data.result in the answer")?;
    let mut out = Vec::new();
    for series in result {
        let value: f64 = series["value"][1]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("a sample without a value: {series}"))?;
        // Unix seconds after 2001: a time; anything else (a count, 1): now.
        let at = (value > 1e9)
            .then(|| Utc.timestamp_opt(value as i64, 0).single())
            .flatten()
            .unwrap_or(now)
            .min(now);
        let mut any = false;
        for label in ["image_id", "image"] {
            if let Some(text) = series["metric"][label].as_str().filter(|t| !t.is_empty())
                && let Ok(r) = parse_reference(text)
            {
                out.push((r, at));
                any = true;
            }
        }
        if !any {
            return Err(format!(
                "a series without a usable `image_id` or `image` label: {}",
                series["metric"]
            ));
        }
    }
    Ok(out)
}

/// The Prometheus URL as messages show it: without the user name and
/// password a URL may carry for basic auth (`http://user:secret@prom:9090`).
pub fn shown_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.as_str().trim_end_matches('/').to_owned()
        }
        Ok(_) => url.to_owned(),
        Err(_) => "the configured URL".to_owned(),
    }
}

async fn query_prometheus(
    p: &PrometheusSource,
    timeout: std::time::Duration,
    now: DateTime<Utc>,
) -> Result<Vec<(Reference, DateTime<Utc>)>, String> {
    let shown = shown_url(&p.url);
    let query = match &p.query {
        Some(q) => q.replace("$lookback", &prom_duration(p.lookback)),
        None => default_query(p.lookback),
    };
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| e.to_string())?;
    let resp = client
        .get(format!("{}/api/v1/query", p.url))
        .query(&[
            ("query", query.as_str()),
            ("time", &now.timestamp().to_string()),
        ])
        .send()
        .await
        .map_err(|e| format!("{shown}: {}", reqwest_error_text(&e)))?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| format!("{shown}: {}", reqwest_error_text(&e)))?;
    if !status.is_success() && status.as_u16() != 400 && status.as_u16() != 422 {
        return Err(format!("{shown}: HTTP {status}"));
    }
    parse_prometheus(&body, now)
}

async fn run_exec(
    command: &[String],
    timeout: std::time::Duration,
) -> Result<Vec<Reference>, String> {
    let hook = crate::hook::Hook {
        command,
        env: Vec::new(),
        timeout,
        stdin: b"",
        stdout_limit: Some(64 << 20),
        points: crate::hook::Points {
            spawn: "retention.in_use.exec_spawn",
            stdin: "retention.in_use.exec_stdin",
            wait: "retention.in_use.exec_wait",
        },
    };
    let out = crate::hook::run(&hook).await.map_err(|e| match e {
        crate::hook::HookError::Failed { status, stderr } => {
            let text = String::from_utf8_lossy(&stderr.buf);
            let text = text.trim();
            let tail: String = text
                .chars()
                .rev()
                .take(300)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            format!("exited with {status}: {tail}")
        }
        e => e.to_string(),
    })?;
    let text = String::from_utf8(out).map_err(|_| "printed something that is not UTF-8")?;
    parse_lines(&text).map_err(|e| e.to_string())
}

fn read_file(path: &std::path::Path) -> Result<(Vec<Reference>, DateTime<Utc>), String> {
    crate::failpoint::hit("retention.in_use.file", |m| m)?;
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let modified = meta
        .modified()
        .map(DateTime::<Utc>::from)
        .map_err(|e| e.to_string())?;
    Ok((parse_lines(&text).map_err(|e| e.to_string())?, modified))
}

/// What one source said: references with their last-seen time, or why not.
type Answer = Result<Vec<(Reference, DateTime<Utc>)>, String>;

/// The state key remembering a source's last non-empty count.
fn count_key(source: &str) -> String {
    format!("retention.in_use.{source}.last_count")
}

/// Read every configured source. Never fails: a failing source is listed in
/// [`InUse::failures`] (and blocks the plan). `state` remembers each
/// source's last non-empty count, so that an empty answer after a non-empty
/// one is a failure rather than "nothing runs".
pub async fn fetch(
    cfg: &InUseConfig,
    instances: &[InstanceConfig],
    state: Option<&crate::state::Store>,
    now: DateTime<Utc>,
) -> InUse {
    let mut out = InUse::default();
    let mut answers: Vec<(&'static str, Answer)> = Vec::new();
    if let Some(p) = &cfg.prometheus {
        let r = async {
            crate::failpoint::hit("retention.in_use.prometheus", |m| m)?;
            query_prometheus(p, cfg.timeout, now).await
        }
        .await;
        answers.push(("prometheus", r));
    }
    if let Some(path) = &cfg.file {
        let r = read_file(path)
            .map(|(refs, at)| refs.into_iter().map(|r| (r, at.min(now))).collect())
            .map_err(|e| format!("{}: {e}", path.display()));
        answers.push(("file", r));
    }
    if let Some(command) = &cfg.exec {
        let r = run_exec(command, cfg.timeout)
            .await
            .map(|refs| refs.into_iter().map(|r| (r, now)).collect())
            .map_err(|e| format!("{}: {e}", command[0]));
        answers.push(("exec", r));
    }
    for (source, answer) in answers {
        let refs = match answer {
            Ok(refs) => refs,
            Err(e) => {
                out.failures.push(format!("{source}: {e}"));
                continue;
            }
        };
        let key = count_key(source);
        // A remembered count that cannot be read fails closed: read as 0 it
        // would let an empty answer (a broken exporter) through.
        let last: usize = match state.map(|s| s.meta_get(&key)).transpose() {
            Ok(v) => match v.flatten().map(|v| v.parse()) {
                None => 0,
                Some(Ok(n)) => n,
                Some(Err(_)) => {
                    out.failures.push(format!(
                        "{source}: the remembered count of images in use ({key}) is unreadable"
                    ));
                    continue;
                }
            },
            Err(e) => {
                out.failures.push(format!(
                    "{source}: cannot read the remembered count of images in use: {e}"
                ));
                continue;
            }
        };
        let accepted_empty = refs.is_empty() && last > 0 && cfg.allow_empty;
        if refs.is_empty() && last > 0 && !cfg.allow_empty {
            out.failures.push(format!(
                "{source}: no image in use, where it named {last} last time \
                 (if that is true, set [retention.in_use] allow_empty = true for one run)"
            ));
            continue;
        }
        if accepted_empty {
            tracing::warn!(
                source,
                last,
                "in-use source answered no image where it named some last time; accepted (allow_empty)"
            );
        }
        // Remember a non-empty count, and an accepted empty one (0), so that
        // allow_empty is needed for one run only. Not remembered, a later
        // empty answer would pass as "nothing runs": fail closed now.
        if (!refs.is_empty() || accepted_empty)
            && let Some(s) = state
            && let Err(e) = s.meta_put(&key, &refs.len().to_string())
        {
            out.failures.push(format!(
                "{source}: cannot remember the count of images in use: {e}"
            ));
            continue;
        }
        out.counts.push((source, refs.len()));
        for (r, at) in refs {
            out.add(
                &r,
                instances,
                Seen {
                    source,
                    last_seen: at,
                },
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn references() {
        let r = parse_reference("prod.ksyunkcr.com/apps/web:v1.2.3").unwrap();
        assert_eq!(r.host.as_deref(), Some("prod.ksyunkcr.com"));
        assert_eq!(r.path, "apps/web");
        assert_eq!(r.tag.as_deref(), Some("v1.2.3"));
        assert_eq!(r.digest, None);
        let r = parse_reference(&format!("docker-pullable://127.0.0.1:5000/apps/a/b@{D}")).unwrap();
        assert_eq!(r.host.as_deref(), Some("127.0.0.1:5000"));
        assert_eq!(r.path, "apps/a/b");
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_deref(), Some(D));
        let r = parse_reference(&format!("h.io/ns/r:t@{D}")).unwrap();
        assert_eq!(
            (r.tag.as_deref(), r.digest.as_deref()),
            (Some("t"), Some(D))
        );
        assert_eq!(parse_reference(D).unwrap().digest.as_deref(), Some(D));
        assert_eq!(parse_reference("nginx:1.25").unwrap().host, None);
        // No tag and no digest: `latest`, as docker and the kubelet read it.
        let r = parse_reference("h.io/ns/r").unwrap();
        assert_eq!(
            (r.host.as_deref(), r.path.as_str(), r.tag.as_deref()),
            (Some("h.io"), "ns/r", Some("latest"))
        );
        assert_eq!(
            parse_reference("nginx").unwrap().tag.as_deref(),
            Some("latest")
        );
        let r = parse_reference(&format!("h.io/ns/r@{D}")).unwrap();
        assert_eq!(r.tag, None, "a digest alone names no tag");
        for bad in [
            "",
            "h.io/ns/r@sha256:12",
            "a b:c",
            "h.io//r:t",
            "h.io/ns/r:",
            // What a broken program or page prints is no list of images.
            "PATH=/usr/local/bin:/usr/bin:/bin",
            "HOME=/root",
            "<html><body>",
            "h.io/NS/r:t",
            "h_io:80/ns/r:t",
            "h.io/ns/r:-t",
        ] {
            assert!(parse_reference(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lines_skip_comments_and_name_the_bad_line() {
        let refs = parse_lines("# running\n\nh.io/ns/r:t  # web\n").unwrap();
        assert_eq!(refs.len(), 1);
        let e = parse_lines("h.io/ns/r:t\nnot a reference\n").unwrap_err();
        assert!(e.to_string().starts_with("line 2:"), "{e}");
    }

    fn file_config(path: &std::path::Path) -> InUseConfig {
        InUseConfig {
            prometheus: None,
            file: Some(path.to_owned()),
            exec: None,
            timeout: std::time::Duration::from_secs(5),
            allow_empty: false,
        }
    }

    #[tokio::test]
    async fn an_unreadable_remembered_count_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("images.txt");
        std::fs::write(&list, "# nothing runs\n").unwrap();
        let cfg = file_config(&list);
        let now = Utc::now();
        let state = crate::state::Store::in_memory().unwrap();
        // Nothing remembered: an empty first answer is accepted.
        let u = fetch(&cfg, &[], Some(&state), now).await;
        assert!(u.failures.is_empty(), "{:?}", u.failures);
        // A remembered count that is not a number must not read as 0.
        state.meta_put(&count_key("file"), "12x").unwrap();
        let u = fetch(&cfg, &[], Some(&state), now).await;
        assert!(
            u.blocked().is_some_and(|b| b.contains("unreadable")),
            "{:?}",
            u.failures
        );
    }

    #[tokio::test]
    async fn an_unreachable_prometheus_is_named_without_its_password() {
        // A port nothing listens on: bind, then drop the listener.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = InUseConfig {
            prometheus: Some(PrometheusSource {
                url: format!("http://watcher:s3cr3t-pw@127.0.0.1:{port}"),
                query: None,
                lookback: std::time::Duration::from_secs(86_400),
            }),
            file: None,
            exec: None,
            timeout: std::time::Duration::from_secs(5),
            allow_empty: false,
        };
        let u = fetch(&cfg, &[], None, Utc::now()).await;
        let b = u.blocked().expect("an unreachable source blocks");
        assert!(b.contains(&format!("http://127.0.0.1:{port}")), "{b}");
        assert!(!b.contains("s3cr3t-pw") && !b.contains("watcher"), "{b}");
        assert_eq!(shown_url("http://prom:9090/x"), "http://prom:9090/x");
        let debug = format!("{:?}", cfg.prometheus);
        assert!(!debug.contains("s3cr3t-pw"), "{debug}");
    }

    #[test]
    fn prometheus_answers() {
        let now = Utc.with_ymd_and_hms(2026, 11, 26, 0, 0, 0).unwrap();
        let body = format!(
            r#"{{"status":"success","data":{{"resultType":"vector","result":[
            {{"metric":{{"image":"h.io/ns/r:v1","image_id":"docker-pullable://h.io/ns/r@{D}"}},"value":[1,"1795000000"]}},
            {{"metric":{{"image":"h.io/ns/r:v2"}},"value":[1,"1"]}}]}}}}"#
        );
        let refs = parse_prometheus(body.as_bytes(), now).unwrap();
        assert_eq!(refs.len(), 3);
        assert_eq!(refs[0].0.digest.as_deref(), Some(D));
        assert_eq!(refs[0].1.timestamp(), 1_795_000_000);
        assert_eq!(refs[2].1, now, "a value that is no time: seen now");
        // A pending pod anywhere in the cluster: `image` as its spec says
        // (no tag), no `image_id` yet. Not a bad answer that blocks every run.
        let pending = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"image":"busybox","image_id":""},"value":[1,"1795000000"]}]}}"#;
        let refs = parse_prometheus(pending.as_bytes(), now).unwrap();
        assert_eq!(refs[0].0.tag.as_deref(), Some("latest"));
        for bad in [
            "nonsense",
            r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#,
            r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#,
            // A store that did not answer (Thanos partial response).
            r#"{"status":"success","warnings":["No StoreAPIs matched for this query"],"data":{"resultType":"vector","result":[]}}"#,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"pod":"x"},"value":[1,"1"]}]}}"#,
        ] {
            assert!(parse_prometheus(bad.as_bytes(), now).is_err(), "{bad}");
        }
        assert!(default_query(std::time::Duration::from_secs(7 * 86_400)).contains("[7d:5m]"));
    }
}
