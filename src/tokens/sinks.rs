//! Where a new token's secret is delivered.
//!
//! File sinks are replaced atomically: a temporary file in the directory of
//! the file the path designates (symlinks followed, so a link stays a link and
//! its target is what changes), the previous file's owner, group and mode
//! (0600 for a new file), fsync, rename over it, fsync the directory — readers
//! see the old content or the new, never an empty or partial file. Restores
//! work the same way.
//!
//! `exec` sinks get the secret on standard input, never in argv or the
//! environment. They run with a cleared environment (only `PATH`, `HOME`,
//! `LANG`, `KCR_REGISTRY`, `KCR_TOKEN_ID` and the sink's own `env` table) in
//! their own process group, which is killed as a whole on timeout. A sink
//! succeeds when it exits 0 within its timeout; what it left running in the
//! background is left alone. Its error output goes into the error with every
//! part of the secret redacted (see `shown_stderr`).
//!
//! Every fallible call passes a failpoint named `tokens.sink.<what>`
//! (`tokens.sink.restore.<what>` when putting a file back).

use crate::config::{FileFormat, Sink};
use crate::failpoint;
use crate::hook::{self, ErrTail};
use base64::Engine;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a sink receives.
pub struct Delivery<'a> {
    /// Registry host (`prod.ksyunkcr.com`).
    pub registry: &'a str,
    pub username: &'a str,
    pub secret: &'a SecretString,
    pub token_id: &'a str,
    pub expires_at: Option<DateTime<Utc>>,
    /// When this token's rotation is due (`expires_at` − `rotate_before`):
    /// how long a kubelet may cache it (`credential-provider`).
    pub rotates_at: Option<DateTime<Utc>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{path}: {why}")]
    Refused { path: PathBuf, why: String },
    #[error("exec {program}: {why}")]
    Exec { program: String, why: String },
    /// A test asked for a fault here (`failpoints` feature only).
    #[error("{0}")]
    Injected(String),
}

fn io<'p>(path: &'p Path, what: &'static str) -> impl FnOnce(std::io::Error) -> SinkError + 'p {
    move |source| SinkError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

/// Pass the failpoint `name`.
fn fp(name: &'static str) -> Result<(), SinkError> {
    failpoint::hit(name, SinkError::Injected)
}

/// Variables an `exec` sink inherits from the daemon; nothing else does.
pub const EXEC_PASSED_ENV: [&str; 3] = hook::PASSED_ENV;
/// Variables kcr-housekeeper sets for an `exec` sink itself (not secret).
pub const EXEC_OWN_ENV: [&str; 2] = ["KCR_REGISTRY", "KCR_TOKEN_ID"];

/// The directory holding `path` (`.` for a bare file name).
fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// The file a sink path designates: symbolic links followed (relative ones
/// from the link's directory). The file itself may not exist yet.
fn resolve(path: &Path) -> Result<PathBuf, SinkError> {
    let mut cur = path.to_path_buf();
    for _ in 0..40 {
        fp("tokens.sink.resolve")?;
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                let target =
                    std::fs::read_link(&cur).map_err(io(&cur, "cannot read the symbolic link"))?;
                cur = if target.is_absolute() {
                    target
                } else {
                    parent_of(&cur).join(target)
                };
            }
            Ok(_) => return Ok(cur),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(cur),
            Err(e) => return Err(io(&cur, "cannot inspect")(e)),
        }
    }
    Err(SinkError::Refused {
        path: path.to_path_buf(),
        why: "too many levels of symbolic links".into(),
    })
}

/// Owner, group and permission bits of the file at `target`, if there is
/// one; an error if something other than a regular file is there.
fn existing_file(target: &Path, stat_point: &'static str) -> Result<Option<Owner>, SinkError> {
    fp(stat_point)?;
    match std::fs::metadata(target) {
        Ok(m) if m.is_dir() => Err(SinkError::Refused {
            path: target.to_path_buf(),
            why: "is a directory, not a file".into(),
        }),
        Ok(m) if !m.is_file() => Err(SinkError::Refused {
            path: target.to_path_buf(),
            why: "is not a regular file".into(),
        }),
        Ok(m) => Ok(Some(Owner {
            uid: m.uid(),
            gid: m.gid(),
            mode: m.mode() & 0o7777,
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(target, "cannot inspect")(e)),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Owner {
    uid: u32,
    gid: u32,
    mode: u32,
}

/// Checked before a token is created, so a sink that cannot work fails the
/// rotation while the old token is still untouched: the path itself (not a
/// directory, an existing file writable and its owner keepable), its
/// directory (exists, files can be created there), and for `docker-config`
/// an existing file we can merge into.
pub fn preflight(sink: &Sink) -> Result<(), SinkError> {
    match sink {
        Sink::DockerConfig { path } | Sink::ContainersAuth { path } | Sink::File { path, .. } => {
            let target = resolve(path)?;
            let dir = parent_of(&target);
            fp("tokens.sink.precheck.dir")?;
            let meta =
                std::fs::metadata(dir).map_err(io(dir, "the sink's directory is not usable"))?;
            if !meta.is_dir() {
                return Err(SinkError::Refused {
                    path: dir.to_path_buf(),
                    why: "not a directory".into(),
                });
            }
            let existing = existing_file(&target, "tokens.sink.precheck.stat")?;
            if existing.is_some() {
                // Opening for writing changes nothing; it fails on a read-only
                // mount, an immutable file, or one we may not write.
                fp("tokens.sink.precheck.open")?;
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&target)
                    .map_err(io(&target, "the existing file is not writable"))?;
            }
            sweep_leftovers(dir);
            // Prove we can create a file there (permissions, read-only mounts, …)
            fp("tokens.sink.precheck.probe")?;
            let probe = tempfile::Builder::new()
                .prefix(".kcr-housekeeper-probe-")
                .tempfile_in(dir)
                .map_err(io(dir, "cannot create files in the sink's directory"))?;
            // … and give it the existing file's owner, as a delivery will.
            if let Some(o) = existing {
                fp("tokens.sink.precheck.chown")?;
                std::os::unix::fs::fchown(probe.as_file(), Some(o.uid), Some(o.gid)).map_err(
                    |e| SinkError::Refused {
                        path: target.clone(),
                        why: format!(
                            "cannot keep the file's owner {}:{} for its replacement: {e}",
                            o.uid, o.gid
                        ),
                    },
                )?;
            }
            drop(probe);
            if let Sink::DockerConfig { .. } | Sink::ContainersAuth { .. } = sink
                && existing.is_some()
            {
                read_docker_config(&target, "tokens.sink.precheck.read")?;
            }
            Ok(())
        }
        Sink::Exec { command, env, .. } => {
            let program = Path::new(&command[0]);
            let found = if program.components().count() > 1 {
                program.is_file()
            } else {
                // The child's PATH: its own `env` table's, else the daemon's.
                let path = env
                    .get("PATH")
                    .map(std::ffi::OsString::from)
                    .or_else(|| std::env::var_os("PATH"));
                path.is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
            };
            if found {
                Ok(())
            } else {
                Err(SinkError::Exec {
                    program: command[0].clone(),
                    why: "not found".into(),
                })
            }
        }
    }
}

/// Prefix of every file kcr-housekeeper creates beside a sink.
const TEMP_PREFIX: &str = ".kcr-housekeeper-";

/// A temporary file of ours older than this is a leftover of a process that
/// died between creating and renaming it (a writer needs milliseconds).
const LEFTOVER_AGE: Duration = Duration::from_secs(10);

/// Remove our leftover temporary files in `dir`: a crash between creating a
/// temporary file and renaming it leaves one behind, holding a secret.
/// Best effort: a file that cannot be removed is left for the next time.
fn sweep_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().starts_with(TEMP_PREFIX) {
            continue;
        }
        // Only regular files (never follow a link), and only old ones: a
        // concurrent writer's file lives for milliseconds.
        let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        let old = meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age >= LEFTOVER_AGE);
        if meta.is_file() && old {
            match std::fs::remove_file(e.path()) {
                Ok(()) => {
                    tracing::warn!(path = %e.path().display(), "removed a temporary file a crashed delivery left behind")
                }
                Err(err) => {
                    tracing::warn!(path = %e.path().display(), error = %err, "cannot remove a leftover temporary file")
                }
            }
        }
    }
}

/// The failpoint names of one atomic write.
struct Points {
    stat: &'static str,
    temp_create: &'static str,
    write: &'static str,
    chown: &'static str,
    chmod: &'static str,
    fsync: &'static str,
    rename: &'static str,
    dir_fsync: &'static str,
}

const DELIVER: Points = Points {
    stat: "tokens.sink.stat",
    temp_create: "tokens.sink.temp_create",
    write: "tokens.sink.write",
    chown: "tokens.sink.chown",
    chmod: "tokens.sink.chmod",
    fsync: "tokens.sink.fsync",
    rename: "tokens.sink.rename",
    dir_fsync: "tokens.sink.dir_fsync",
};

const RESTORE: Points = Points {
    stat: "tokens.sink.restore.stat",
    temp_create: "tokens.sink.restore.temp_create",
    write: "tokens.sink.restore.write",
    chown: "tokens.sink.restore.chown",
    chmod: "tokens.sink.restore.chmod",
    fsync: "tokens.sink.restore.fsync",
    rename: "tokens.sink.restore.rename",
    dir_fsync: "tokens.sink.restore.dir_fsync",
};

/// Write `content` to the file `path` designates, atomically: a symbolic
/// link is followed and its target replaced; an existing file's owner, group
/// and mode are kept; a new file gets mode 0600.
pub fn write_atomic(path: &Path, content: &[u8]) -> Result<(), SinkError> {
    let target = resolve(path)?;
    write_target(&target, content, &DELIVER)
}

/// [`write_atomic`] to a path with no symbolic link left to follow.
fn write_target(target: &Path, content: &[u8], p: &Points) -> Result<(), SinkError> {
    let existing = existing_file(target, p.stat)?;
    let dir = parent_of(target);
    // tempfile creates the file 0600 and exclusively (O_EXCL).
    fp(p.temp_create)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(dir)
        .map_err(io(dir, "cannot create a temporary file"))?;
    fp(p.write)?;
    tmp.write_all(content).map_err(io(target, "cannot write"))?;
    let mode = match existing {
        Some(o) => {
            // Owner first: a chown clears set-id bits the mode may carry.
            fp(p.chown)?;
            std::os::unix::fs::fchown(tmp.as_file(), Some(o.uid), Some(o.gid))
                .map_err(io(target, "cannot keep the file's owner"))?;
            o.mode
        }
        None => 0o600,
    };
    fp(p.chmod)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io(target, "cannot set the file's mode"))?;
    fp(p.fsync)?;
    tmp.as_file()
        .sync_all()
        .map_err(io(target, "cannot fsync"))?;
    fp(p.rename)?;
    tmp.persist(target).map_err(|e| SinkError::Io {
        path: target.to_path_buf(),
        what: "cannot rename into place",
        source: e.error,
    })?;
    fp(p.dir_fsync)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir, "cannot fsync the directory"))?;
    Ok(())
}

fn read_docker_config(
    path: &Path,
    point: &'static str,
) -> Result<serde_json::Map<String, serde_json::Value>, SinkError> {
    fp(point)?;
    let text = std::fs::read_to_string(path).map_err(io(path, "cannot read"))?;
    if text.trim().is_empty() {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        // Never overwrite a file we cannot understand: it may hold other credentials.
        Ok(_) => Err(SinkError::Refused {
            path: path.to_path_buf(),
            why: "not a JSON object; refusing to overwrite".into(),
        }),
        Err(e) => Err(SinkError::Refused {
            path: path.to_path_buf(),
            why: format!(
                "invalid JSON at line {} column {}; refusing to overwrite",
                e.line(),
                e.column()
            ),
        }),
    }
}
/// The Docker config with this registry's entry replaced, everything else kept.
pub fn merge_docker_config(
    existing: serde_json::Map<String, serde_json::Value>,
    d: &Delivery<'_>,
) -> serde_json::Value {
    let mut root = existing;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        d.username,
        d.secret.expose_secret()
    ));
    let auths = root.entry("auths").or_insert_with(|| json!({}));
    if !auths.is_object() {
        *auths = json!({});
    }
    auths
        .as_object_mut()
        .expect("an object")
        .insert(d.registry.to_owned(), json!({ "auth": auth }));
    serde_json::Value::Object(root)
}

fn json_document(d: &Delivery<'_>) -> serde_json::Value {
    json!({
        "registry": d.registry,
        "username": d.username,
        "token": d.secret.expose_secret(),
        "token_id": d.token_id,
        "expires_at": d.expires_at.map(|t| t.to_rfc3339()),
        "rotates_at": d.rotates_at.map(|t| t.to_rfc3339()),
    })
}

/// The content of a `file` sink.
pub fn file_content(format: FileFormat, d: &Delivery<'_>) -> Vec<u8> {
    match format {
        FileFormat::Raw => d.secret.expose_secret().as_bytes().to_vec(),
        FileFormat::Json => (serde_json::to_string_pretty(&json_document(d)).expect("serialises")
            + "\n")
            .into_bytes(),
        FileFormat::Env => {
            let mut s = format!(
                "KCR_REGISTRY={}\nKCR_USERNAME={}\nKCR_TOKEN={}\nKCR_TOKEN_ID={}\n",
                d.registry,
                d.username,
                d.secret.expose_secret(),
                d.token_id
            );
            if let Some(t) = d.expires_at {
                s.push_str(&format!("KCR_TOKEN_EXPIRES_AT={}\n", t.to_rfc3339()));
            }
            s.into_bytes()
        }
    }
}

/// What a file sink held before a delivery, to put back if the rotation
/// fails after it. It holds the old secret, so it lives in memory only and
/// its `Debug` shows nothing of it.
pub struct Prior {
    /// The file the sink's path designates (symbolic links followed).
    path: PathBuf,
    content: Option<Vec<u8>>,
}

impl std::fmt::Debug for Prior {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prior")
            .field("path", &self.path)
            .field("existed", &self.content.is_some())
            .finish()
    }
}

/// The current content of a file sink (`None` for `exec` sinks, which cannot be undone).
pub fn snapshot(sink: &Sink) -> Result<Option<Prior>, SinkError> {
    match sink {
        Sink::DockerConfig { path } | Sink::ContainersAuth { path } | Sink::File { path, .. } => {
            let target = resolve(path)?;
            fp("tokens.sink.read_prior")?;
            let content = match std::fs::read(&target) {
                Ok(c) => Some(c),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(io(&target, "cannot read")(e)),
            };
            Ok(Some(Prior {
                path: target,
                content,
            }))
        }
        Sink::Exec { .. } => Ok(None),
    }
}

/// Put a file sink back as it was: atomically, keeping the file's owner and
/// mode, removed if it did not exist. A file that already holds its prior
/// content (the delivery never reached it) is left alone, so a restore
/// after a failure on a full disk needs no space.
pub fn restore(prior: &Prior) -> Result<(), SinkError> {
    let current = fp("tokens.sink.restore.read").and_then(|()| match std::fs::read(&prior.path) {
        Ok(c) => Ok(Some(c)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(&prior.path, "cannot read")(e)),
    });
    // Unreadable: write it back anyway.
    if current.is_ok_and(|c| c == prior.content) {
        return Ok(());
    }
    match &prior.content {
        Some(c) => write_target(&prior.path, c, &RESTORE),
        None => {
            fp("tokens.sink.restore.remove")?;
            match std::fs::remove_file(&prior.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&prior.path, "cannot remove")(e)),
            }
            let dir = parent_of(&prior.path);
            fp("tokens.sink.restore.dir_fsync")?;
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir, "cannot fsync the directory"))
        }
    }
}

/// Deliver to one sink.
pub async fn deliver(sink: &Sink, d: &Delivery<'_>) -> Result<(), SinkError> {
    match sink {
        // containers-auth.json(5) is the same `auths` map as a Docker config.
        Sink::DockerConfig { path } | Sink::ContainersAuth { path } => {
            let target = resolve(path)?;
            let existing = match existing_file(&target, "tokens.sink.stat")? {
                Some(_) => read_docker_config(&target, "tokens.sink.read_existing")?,
                None => serde_json::Map::new(),
            };
            let doc = merge_docker_config(existing, d);
            write_target(
                &target,
                (serde_json::to_string_pretty(&doc).expect("serialises") + "\n").as_bytes(),
                &DELIVER,
            )
        }
        Sink::File { path, format } => write_atomic(path, &file_content(*format, d)),
        Sink::Exec {
            command,
            env,
            timeout,
        } => exec(command, env, *timeout, d).await,
    }
}

/// At most this many characters of a failed sink's error output go into the error.
const STDERR_SHOWN: usize = 300;
/// What stands for any part of the secret in a sink's error output.
const REDACTED: &[u8] = b"[redacted]";

/// The longest `k` such that the first `k` bytes of `text` end the secret: a
/// piece of it left at the start of a text cut out of a longer one.
fn piece_at_start(text: &[u8], secret: &[u8]) -> usize {
    (1..=text.len().min(secret.len()))
        .rev()
        .find(|&k| text[..k] == secret[secret.len() - k..])
        .unwrap_or(0)
}

/// `text` with every occurrence of the secret (overlapping ones too) and,
/// when `cut` (its beginning was cut off), any piece of the secret it starts
/// with replaced by `[redacted]`. Adjacent hidden parts share one marker.
fn redact(text: &[u8], secret: &[u8], cut: bool) -> Vec<u8> {
    if secret.is_empty() {
        return text.to_vec();
    }
    let mut hidden = vec![false; text.len()];
    for (i, w) in text.windows(secret.len()).enumerate() {
        if w == secret {
            hidden[i..i + secret.len()].fill(true);
        }
    }
    if cut {
        hidden[..piece_at_start(text, secret)].fill(true);
    }
    let mut out = Vec::with_capacity(text.len());
    for (i, &b) in text.iter().enumerate() {
        if !hidden[i] {
            out.push(b);
        } else if i == 0 || !hidden[i - 1] {
            out.extend_from_slice(REDACTED);
        }
    }
    out
}

/// What of a failed sink's error output goes into the error: its last
/// [`STDERR_SHOWN`] characters, with no part of the secret. The secret is
/// redacted before any cut, and a piece of it at a cut edge is redacted
/// too, so neither the [`hook::STDERR_LIMIT`] cut nor the [`STDERR_SHOWN`] one can
/// leave a prefix or suffix of it behind.
fn shown_stderr(tail: &ErrTail, secrets: &[&[u8]]) -> String {
    let mut text = tail.buf.clone();
    for secret in secrets {
        text = redact(&text, secret, tail.cut);
    }
    let text = String::from_utf8_lossy(&text);
    let text = text.trim();
    let chars = text.chars().count();
    if chars <= STDERR_SHOWN {
        return if tail.cut {
            format!("…{text}")
        } else {
            text.to_owned()
        };
    }
    let (start, _) = text
        .char_indices()
        .nth(chars - STDERR_SHOWN)
        .expect("within the text");
    let mut shown = text.as_bytes()[start..].to_vec();
    for secret in secrets {
        shown = redact(&shown, secret, true);
    }
    format!("…{}", String::from_utf8_lossy(&shown))
}

/// Every form in which a sink may hold, and a hook may echo, the secret: as
/// it is, and base64-encoded alone and as `username:secret` (the docker and
/// containers `auth` value, which logs in as well as the secret does).
fn secret_forms(d: &Delivery<'_>) -> Vec<Vec<u8>> {
    use base64::Engine;
    let secret = d.secret.expose_secret();
    let mut forms = vec![secret.as_bytes().to_vec()];
    for plain in [secret.to_owned(), format!("{}:{secret}", d.username)] {
        for engine in [
            base64::engine::general_purpose::STANDARD,
            base64::engine::general_purpose::STANDARD_NO_PAD,
            base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ] {
            forms.push(engine.encode(&plain).into_bytes());
        }
    }
    forms.sort();
    forms.dedup();
    // Longest first, so a longer form is hidden whole before a shorter one
    // inside it could split it.
    forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
    forms
}

/// Run an `exec` sink.
///
/// Its success is decided by its own exit status within `timeout`, not by
/// its standard error reaching its end. Processes it leaves running in the
/// background after it exited are left alone, successful or not (as a
/// `docker`/systemd `ExecStartPost` hook may start a daemon); once the sink
/// is reaped its process-group id may be reused, so killing that group
/// could hit someone else. Their standard error goes to a closed pipe once
/// the sink was dealt with. On timeout (or when the delivery is cancelled)
/// the sink's whole process group is killed.
async fn exec(
    command: &[String],
    env: &BTreeMap<String, String>,
    timeout: Duration,
    d: &Delivery<'_>,
) -> Result<(), SinkError> {
    let fail = |why: String| SinkError::Exec {
        program: command[0].clone(),
        why,
    };
    let doc = serde_json::to_vec(&json_document(d)).expect("serialises");
    let mut vars = vec![("KCR_REGISTRY", d.registry), ("KCR_TOKEN_ID", d.token_id)];
    vars.extend(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let hook = hook::Hook {
        command,
        env: vars,
        timeout,
        stdin: &doc,
        stdout_limit: None,
        points: hook::Points {
            spawn: "tokens.sink.exec_spawn",
            stdin: "tokens.sink.exec_stdin",
            wait: "tokens.sink.exec_wait",
        },
    };
    match hook::run(&hook).await {
        Ok(_) => Ok(()),
        Err(hook::HookError::Injected(m)) => Err(SinkError::Injected(m)),
        Err(hook::HookError::Failed { status, stderr }) => {
            // Its error output may echo what it was given: never pass the secret on.
            let forms = secret_forms(d);
            let forms: Vec<&[u8]> = forms.iter().map(Vec::as_slice).collect();
            let shown = shown_stderr(&stderr, &forms);
            Err(fail(format!("exited with {status}: {shown}")))
        }
        Err(e) => Err(fail(e.to_string())),
    }
}

/// `docker-config` sinks whose file makes docker ignore `auths` for the
/// token's registry (`credsStore`, or a `credHelpers` entry for it): the
/// warnings `check` prints and `doctor` reports. An unreadable file is not
/// one (the sink reports it when it writes).
pub fn docker_config_warnings(c: &crate::config::Config) -> Vec<String> {
    let mut out = Vec::new();
    for m in c.tokens.iter().flat_map(|t| &t.managed) {
        let Some(registry) = c
            .instance_by_name(&m.instance)
            .and_then(|i| i.registry.as_deref())
        else {
            continue;
        };
        for sink in &m.sinks {
            let Sink::DockerConfig { path } = sink else {
                continue;
            };
            let doc = std::fs::read_to_string(path)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
            if let Some(why) = doc
                .as_ref()
                .and_then(|d| crate::tokens::helper::docker_config_shadowed(d, registry))
            {
                out.push(format!(
                    "token {:?}: docker-config sink {}: {why}",
                    m.name,
                    path.display()
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(secret: &SecretString) -> Delivery<'_> {
        Delivery {
            registry: "prod.ksyunkcr.com",
            username: "kcr-user",
            secret,
            token_id: "tok-1",
            expires_at: Some(
                DateTime::parse_from_rfc3339("2026-12-22T00:00:00Z")
                    .unwrap()
                    .with_timezone(&Utc),
            ),
            rotates_at: None,
        }
    }

    #[tokio::test]
    async fn docker_config_merges_and_keeps_other_registries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"auths":{"other.io":{"auth":"b3RoZXI="}},"credsStore":"desktop"}"#,
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let secret = SecretString::from("s3cret");
        deliver(
            &Sink::DockerConfig { path: path.clone() },
            &delivery(&secret),
        )
        .await
        .unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["auths"]["other.io"]["auth"], "b3RoZXI=");
        assert_eq!(v["credsStore"], "desktop");
        let auth = v["auths"]["prod.ksyunkcr.com"]["auth"].as_str().unwrap();
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(auth)
                .unwrap(),
            b"kcr-user:s3cret"
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
            0o640,
            "the existing file's mode is kept"
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name() != "config.json")
            .collect();
        assert!(leftovers.is_empty(), "no temporary files left behind");
    }

    #[tokio::test]
    async fn a_docker_config_we_cannot_read_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, "{ not json").unwrap();
        let secret = SecretString::from("s3cret");
        let e = deliver(
            &Sink::DockerConfig { path: path.clone() },
            &delivery(&secret),
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("refusing to overwrite"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{ not json");
        assert!(
            preflight(&Sink::DockerConfig { path }).is_err(),
            "checked up front too"
        );
    }

    #[tokio::test]
    async fn file_formats() {
        let dir = tempfile::tempdir().unwrap();
        let secret = SecretString::from("s3cret");
        for (format, name) in [
            (FileFormat::Env, "a.env"),
            (FileFormat::Json, "a.json"),
            (FileFormat::Raw, "a.raw"),
        ] {
            let path = dir.path().join(name);
            deliver(
                &Sink::File {
                    path: path.clone(),
                    format,
                },
                &delivery(&secret),
            )
            .await
            .unwrap();
            let text = std::fs::read_to_string(&path).unwrap();
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
                0o600,
                "a new file is 0600"
            );
            match format {
                FileFormat::Raw => assert_eq!(text, "s3cret"),
                FileFormat::Env => assert!(
                    text.contains("KCR_TOKEN=s3cret\n")
                        && text.contains("KCR_TOKEN_EXPIRES_AT=2026-12-22T00:00:00+00:00\n")
                ),
                FileFormat::Json => {
                    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                    assert_eq!(
                        (v["token"].as_str(), v["username"].as_str()),
                        (Some("s3cret"), Some("kcr-user"))
                    );
                }
            }
        }
    }

    #[test]
    fn preflight_names_the_path() {
        let e = preflight(&Sink::File {
            path: "/nonexistent-dir/x.env".into(),
            format: FileFormat::Env,
        })
        .unwrap_err();
        assert!(e.to_string().starts_with("/nonexistent-dir"), "{e}");
        let e = preflight(&Sink::Exec {
            command: vec!["/no/such/program".into()],
            env: Default::default(),
            timeout: Duration::from_secs(1),
        })
        .unwrap_err();
        assert!(e.to_string().contains("/no/such/program: not found"), "{e}");
        assert!(
            preflight(&Sink::Exec {
                command: vec!["sh".into()],
                env: Default::default(),
                timeout: Duration::from_secs(1)
            })
            .is_ok()
        );
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn exec_gets_the_secret_on_stdin_only() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("got");
        let script = format!(
            "cat > {o}; echo \"argv=$* env=$(env | grep -c s3cret)\" >> {o}.meta",
            o = out.display()
        );
        let secret = SecretString::from("s3cret");
        let sink = Sink::Exec {
            command: vec!["sh".into(), "-c".into(), script, "publish".into()],
            env: Default::default(),
            timeout: Duration::from_secs(10),
        };
        deliver(&sink, &delivery(&secret)).await.unwrap();
        let got: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        assert_eq!(got["token"], "s3cret");
        let meta = std::fs::read_to_string(format!("{}.meta", out.display())).unwrap();
        assert!(!meta.contains("s3cret") && meta.contains("env=0"), "{meta}");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn exec_failures_and_timeouts_fail_delivery_without_leaking() {
        let secret = SecretString::from("s3cret");
        let echo = Sink::Exec {
            command: vec!["sh".into(), "-c".into(), "cat >&2; exit 3".into()],
            env: Default::default(),
            timeout: Duration::from_secs(10),
        };
        let e = deliver(&echo, &delivery(&secret))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("exit status: 3") && !e.contains("s3cret") && e.contains("[redacted]"),
            "{e}"
        );
        // A hook that echoes the docker `auth` value (base64 of user:secret,
        // as good as the secret for a login) or the secret in base64.
        use base64::Engine;
        let auth = base64::engine::general_purpose::STANDARD.encode("kcr-user:s3cret");
        let b64 = base64::engine::general_purpose::STANDARD.encode("s3cret");
        let echo_encoded = Sink::Exec {
            command: vec![
                "sh".into(),
                "-c".into(),
                format!("cat >/dev/null; echo '{{\"auth\": \"{auth}\"}} {b64}' >&2; exit 4"),
            ],
            env: Default::default(),
            timeout: Duration::from_secs(10),
        };
        let e = deliver(&echo_encoded, &delivery(&secret))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("exit status: 4") && !e.contains(&auth) && !e.contains(&b64),
            "{e}"
        );
        assert_eq!(e.matches("[redacted]").count(), 2, "{e}");
        let slow = Sink::Exec {
            command: vec!["sleep".into(), "5".into()],
            env: Default::default(),
            timeout: Duration::from_millis(200),
        };
        let e = deliver(&slow, &delivery(&secret))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("did not finish within 200ms"), "{e}");
    }

    fn leftovers(dir: &Path, keep: &[&str]) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !keep.contains(&n.as_str()))
            .collect()
    }

    /// Defect 5: a symbolic link stays a link; its target is replaced
    /// atomically (the temporary file in the target's directory), and a
    /// restore puts the target back, not a file in place of the link.
    #[tokio::test]
    async fn a_symlinked_sink_stays_a_link_and_its_target_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        let links = dir.path().join("links");
        std::fs::create_dir_all(&real).unwrap();
        std::fs::create_dir_all(&links).unwrap();
        std::fs::write(real.join("config.json"), r#"{"auths":{}}"#).unwrap();
        std::fs::set_permissions(
            real.join("config.json"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        let link = links.join("config.json");
        std::os::unix::fs::symlink("../real/config.json", &link).unwrap();
        let sink = Sink::DockerConfig { path: link.clone() };
        let secret = SecretString::from("s3cret");

        preflight(&sink).unwrap();
        let prior = snapshot(&sink).unwrap().unwrap();
        deliver(&sink, &delivery(&secret)).await.unwrap();
        let meta = std::fs::symlink_metadata(&link).unwrap();
        assert!(meta.file_type().is_symlink(), "still a symbolic link");
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            Path::new("../real/config.json")
        );
        let text = std::fs::read_to_string(real.join("config.json")).unwrap();
        assert!(text.contains("prod.ksyunkcr.com"), "{text}");
        assert_eq!(
            std::fs::metadata(real.join("config.json"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o640
        );
        assert!(leftovers(&real, &["config.json"]).is_empty());
        assert!(leftovers(&links, &["config.json"]).is_empty());

        restore(&prior).unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(
            std::fs::read_to_string(real.join("config.json")).unwrap(),
            r#"{"auths":{}}"#
        );

        // A link whose target does not exist yet: the target is created, and
        // a restore removes the target, never the link.
        let dangling = links.join("ci.env");
        std::os::unix::fs::symlink(real.join("ci.env"), &dangling).unwrap();
        let sink = Sink::File {
            path: dangling.clone(),
            format: FileFormat::Env,
        };
        preflight(&sink).unwrap();
        let prior = snapshot(&sink).unwrap().unwrap();
        deliver(&sink, &delivery(&secret)).await.unwrap();
        assert!(
            std::fs::read_to_string(real.join("ci.env"))
                .unwrap()
                .contains("KCR_TOKEN=s3cret")
        );
        restore(&prior).unwrap();
        assert!(!real.join("ci.env").exists());
        assert!(
            std::fs::symlink_metadata(&dangling)
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    /// Are we allowed to give files away (root, or CAP_CHOWN)?
    fn can_chown(dir: &Path) -> bool {
        let probe = dir.join("chown-probe");
        std::fs::write(&probe, "").unwrap();
        let ok = std::os::unix::fs::chown(&probe, Some(65534), Some(65534)).is_ok();
        std::fs::remove_file(&probe).unwrap();
        ok
    }

    /// Defect 5: rewriting a `nobody`-owned file keeps its owner, group and
    /// mode (root only: CI runs as root; skipped with a message otherwise).
    #[tokio::test]
    async fn owner_group_and_mode_of_an_existing_file_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        if !can_chown(dir.path()) {
            eprintln!("SKIPPED: cannot chown files here (not root); CI runs this as root");
            return;
        }
        let path = dir.path().join("config.json");
        std::fs::write(&path, "{}").unwrap();
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o604)).unwrap();
        let sink = Sink::DockerConfig { path: path.clone() };
        let secret = SecretString::from("s3cret");
        preflight(&sink).unwrap();
        let prior = snapshot(&sink).unwrap().unwrap();
        deliver(&sink, &delivery(&secret)).await.unwrap();
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (65534, 65534, 0o604),
            "owner, group and mode kept"
        );
        assert!(std::fs::read_to_string(&path).unwrap().contains("auths"));
        restore(&prior).unwrap();
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (65534, 65534, 0o604));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{}");
    }

    /// Defect 7 (pre-check part): a directory at the sink's path, or a
    /// missing parent, fails the pre-check, before any token exists.
    #[test]
    fn preflight_checks_the_path_itself() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("config.json");
        std::fs::create_dir(&sub).unwrap();
        for sink in [
            Sink::DockerConfig { path: sub.clone() },
            Sink::File {
                path: sub.clone(),
                format: FileFormat::Raw,
            },
        ] {
            let e = preflight(&sink).unwrap_err().to_string();
            assert!(e.contains("is a directory"), "{e}");
        }
        // A symbolic link to a directory is a directory too.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&sub, &link).unwrap();
        let e = preflight(&Sink::File {
            path: link,
            format: FileFormat::Raw,
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("is a directory"), "{e}");
        let e = preflight(&Sink::File {
            path: dir.path().join("missing/x.env"),
            format: FileFormat::Env,
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("missing") && e.contains("not usable"), "{e}");
    }

    /// Defect 4: an exec sink sees only PATH, HOME, LANG, its own two
    /// variables and its `env` table — nothing else of the daemon's
    /// environment (here: cargo's CARGO_* variables of the test process).
    #[tokio::test]
    async fn exec_gets_a_cleared_environment_and_its_env_table() {
        assert!(
            std::env::vars().any(|(k, _)| k.starts_with("CARGO")),
            "the test process has variables a sink must not see"
        );
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("environ");
        let secret = SecretString::from("s3cret");
        let sink = Sink::Exec {
            command: vec![
                "sh".into(),
                "-c".into(),
                format!("cat /proc/$$/environ > {}", out.display()),
            ],
            env: [("PUBLISH_TARGET".to_string(), "ci".to_string())].into(),
            timeout: Duration::from_secs(10),
        };
        deliver(&sink, &delivery(&secret)).await.unwrap();
        let environ = std::fs::read(&out).unwrap();
        let vars: BTreeMap<String, String> = environ
            .split(|b| *b == 0)
            .filter(|v| !v.is_empty())
            .map(|v| {
                let v = String::from_utf8_lossy(v);
                let (k, val) = v.split_once('=').unwrap();
                (k.to_string(), val.to_string())
            })
            .collect();
        let names: Vec<&str> = vars.keys().map(String::as_str).collect();
        for n in &names {
            assert!(
                EXEC_PASSED_ENV.contains(n) || EXEC_OWN_ENV.contains(n) || *n == "PUBLISH_TARGET",
                "{n} leaked into the sink's environment: {names:?}"
            );
        }
        assert_eq!(vars["PUBLISH_TARGET"], "ci");
        assert_eq!(vars["KCR_TOKEN_ID"], "tok-1");
        assert_eq!(vars.get("PATH"), std::env::var("PATH").ok().as_ref());
    }

    fn alive(pid: i32) -> bool {
        // Gone, or a zombie nobody reaped (no init in a sandbox): dead either way.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, r)| r.split_whitespace().next().map(str::to_owned))
            })
            .is_some_and(|state| state != "Z" && state != "X")
    }

    /// Defect 8: a timeout kills the sink's whole process group, so a
    /// grandchild it started is gone too.
    #[tokio::test]
    async fn an_exec_timeout_kills_the_grandchildren_too() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let secret = SecretString::from("s3cret");
        let sink = Sink::Exec {
            command: vec![
                "sh".into(),
                "-c".into(),
                format!("sleep 30 & echo $! > {}; wait", pidfile.display()),
            ],
            env: BTreeMap::new(),
            timeout: Duration::from_millis(500),
        };
        let e = deliver(&sink, &delivery(&secret))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("did not finish within 500ms"), "{e}");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while alive(pid) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let survived = alive(pid);
        if survived {
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
        }
        assert!(!survived, "the grandchild {pid} outlived the timeout");
    }

    /// A 40-character secret, so that a leaked piece is easy to see.
    const LONG_SECRET: &str = "kcrS3cretAbcdefGhijklMnopqrStuvwxYz012345";

    /// No 8-character piece of the secret is in `text`.
    fn assert_no_piece(text: &str, secret: &str) {
        for w in secret.as_bytes().windows(8) {
            let w = std::str::from_utf8(w).unwrap();
            assert!(!text.contains(w), "{w:?} of the secret is in {text:?}");
        }
    }

    fn failing_sink(script: String) -> Sink {
        Sink::Exec {
            command: vec!["sh".into(), "-c".into(), script],
            env: BTreeMap::new(),
            timeout: Duration::from_secs(20),
        }
    }

    /// Sinks-A: an exec sink that exits 0 is done, even though a background
    /// process it started keeps its standard error open; that process is
    /// left alone.
    #[tokio::test]
    async fn an_exec_sink_that_exits_0_succeeds_despite_a_background_child_holding_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let secret = SecretString::from("s3cret");
        let sink = Sink::Exec {
            command: vec![
                "sh".into(),
                "-c".into(),
                format!(
                    "cat > /dev/null; sleep 30 & echo $! > {}; exit 0",
                    pidfile.display()
                ),
            ],
            env: BTreeMap::new(),
            timeout: Duration::from_secs(5),
        };
        let started = std::time::Instant::now();
        let r = deliver(&sink, &delivery(&secret)).await;
        let took = started.elapsed();
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let left_alone = alive(pid);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        r.unwrap();
        assert!(took < Duration::from_secs(3), "took {took:?}");
        assert!(
            left_alone,
            "a successful sink's background process is left alone"
        );
    }

    /// Sinks-A: a failing exec sink whose background process keeps standard
    /// error open fails with its status and what it wrote, promptly, not as
    /// a timeout.
    #[tokio::test]
    async fn a_failing_exec_sink_with_a_background_child_reports_its_status_not_a_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let secret = SecretString::from("s3cret");
        let sink = Sink::Exec {
            command: vec![
                "sh".into(),
                "-c".into(),
                format!(
                    "cat > /dev/null; echo publish refused >&2; sleep 30 & echo $! > {}; exit 4",
                    pidfile.display()
                ),
            ],
            env: BTreeMap::new(),
            timeout: Duration::from_secs(10),
        };
        let started = std::time::Instant::now();
        let r = deliver(&sink, &delivery(&secret)).await;
        let took = started.elapsed();
        if let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|p| p.trim().parse().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("exit status: 4") && e.contains("publish refused"),
            "{e}"
        );
        assert!(took < Duration::from_secs(5), "took {took:?}");
    }

    /// Sinks-B, the reviewer's repro: 65520 bytes of output, then the secret
    /// (straddling the 64 KiB mark), exit 1.
    #[tokio::test]
    async fn a_secret_across_the_64_kib_mark_of_stderr_is_redacted() {
        let secret = SecretString::from(LONG_SECRET);
        let sink = failing_sink(format!(
            "cat > /dev/null; head -c 65520 /dev/zero | tr '\\0' x >&2; printf %s {LONG_SECRET} >&2; exit 1"
        ));
        let e = deliver(&sink, &delivery(&secret))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("exit status: 1") && e.contains("[redacted]"),
            "{e}"
        );
        assert_no_piece(&e, LONG_SECRET);
    }

    /// Sinks-B: output longer than what is kept, cut inside a secret, made
    /// of the secret over and over (so that the cut edge is what is shown).
    #[tokio::test]
    async fn a_secret_cut_by_the_stderr_limit_leaves_no_piece() {
        let secret = SecretString::from(LONG_SECRET);
        // 41 bytes a line: the kept 65536 bytes start inside a secret.
        let sink = failing_sink(format!(
            "cat > /dev/null; yes {LONG_SECRET} | head -n 3000 >&2; exit 1"
        ));
        let e = deliver(&sink, &delivery(&secret))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("[redacted]"), "{e}");
        assert_no_piece(&e, LONG_SECRET);
        let sink = failing_sink(format!(
            "cat > /dev/null; yes {LONG_SECRET} | head -n 3000 | tr -d '\\n' >&2; exit 1"
        ));
        let e = deliver(&sink, &delivery(&secret))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("[redacted]"), "{e}");
        assert_no_piece(&e, LONG_SECRET);
    }

    /// Sinks-B: wherever the 64 KiB and the 300-character cuts fall in or
    /// around the secret, no piece of it is shown.
    #[test]
    fn no_cut_of_the_error_output_leaves_a_piece_of_the_secret() {
        let secret = LONG_SECRET.as_bytes();
        for k in 0..=secret.len() {
            // The kept buffer starts with the last `k` bytes of the secret.
            let mut tail = ErrTail::default();
            tail.push(&secret[secret.len() - k..]);
            tail.push(b" then the error");
            tail.cut = true;
            let shown = shown_stderr(&tail, &[secret]);
            assert_no_piece(&shown, LONG_SECRET);
            assert!(shown.ends_with("then the error"), "{shown}");
            if k >= 4 {
                assert!(shown.contains("[redacted]"), "{shown}");
            }
            // The 300-character cut falls `k` bytes before the secret's end.
            for filler in [STDERR_SHOWN - k, STDERR_SHOWN + 5 - k] {
                let mut tail = ErrTail::default();
                tail.push(b"start ");
                tail.push(secret);
                tail.push(&vec![b'x'; filler]);
                let shown = shown_stderr(&tail, &[secret]);
                assert_no_piece(&shown, LONG_SECRET);
                assert!(shown.chars().count() <= STDERR_SHOWN + 1, "{shown}");
            }
        }
        // Overlapping occurrences are all hidden, under one marker.
        let tail = ErrTail {
            buf: b"abab-ababab-".to_vec(),
            cut: false,
        };
        assert_eq!(shown_stderr(&tail, &[b"abab"]), "[redacted]-[redacted]-");
        // Nothing to hide, no cut: unchanged.
        let tail = ErrTail {
            buf: b" plain error\n".to_vec(),
            cut: false,
        };
        assert_eq!(shown_stderr(&tail, &[secret]), "plain error");
    }

    /// Only the last 64 KiB of error output are kept, and the cut is marked.
    #[test]
    fn the_error_output_keeps_its_end() {
        let mut tail = ErrTail::default();
        for _ in 0..10 {
            tail.push(&[b'a'; 10_000]);
        }
        tail.push(b"the real error");
        assert!(tail.cut && tail.buf.len() == crate::hook::STDERR_LIMIT);
        let shown = shown_stderr(&tail, &[b"s3cret"]);
        assert!(
            shown.starts_with('…') && shown.ends_with("the real error"),
            "{shown}"
        );
        assert_eq!(shown.chars().count(), STDERR_SHOWN + 1);
    }
}
