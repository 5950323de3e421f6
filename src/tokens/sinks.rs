//! Where a new token's secret is delivered. Every file write is atomic: a
//! temporary file in the same directory (mode 0600), fsync, rename over the
//! target, fsync the directory — readers see the old content or the new, never
//! an empty or partial file. `exec` sinks get the secret on standard input,
//! never in argv or the environment.

use crate::config::{FileFormat, Sink};
use base64::Engine;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// What a sink receives.
pub struct Delivery<'a> {
    /// Registry host (`prod.ksyunkcr.com`).
    pub registry: &'a str,
    pub username: &'a str,
    pub secret: &'a SecretString,
    pub token_id: &'a str,
    pub expires_at: Option<DateTime<Utc>>,
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
}

fn io<'p>(path: &'p Path, what: &'static str) -> impl FnOnce(std::io::Error) -> SinkError + 'p {
    move |source| SinkError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

/// Checked before a token is created, so a sink that cannot work fails the
/// rotation while the old token is still untouched.
pub fn preflight(sink: &Sink) -> Result<(), SinkError> {
    match sink {
        Sink::DockerConfig { path } | Sink::File { path, .. } => {
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let meta =
                std::fs::metadata(dir).map_err(io(dir, "the sink's directory is not usable"))?;
            if !meta.is_dir() {
                return Err(SinkError::Refused {
                    path: dir.to_path_buf(),
                    why: "not a directory".into(),
                });
            }
            // Prove we can create a file there (permissions, read-only mounts).
            let probe = tempfile::Builder::new()
                .prefix(".kcr-housekeeper-probe")
                .tempfile_in(dir)
                .map_err(io(dir, "cannot create files in the sink's directory"))?;
            drop(probe);
            if let Sink::DockerConfig { path } = sink
                && path.exists()
            {
                read_docker_config(path)?;
            }
            Ok(())
        }
        Sink::Exec { command, .. } => {
            let program = Path::new(&command[0]);
            let found = if program.components().count() > 1 {
                program.is_file()
            } else {
                std::env::var_os("PATH")
                    .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
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

/// Write `content` to `path` atomically with mode 0600.
pub fn write_atomic(path: &Path, content: &[u8]) -> Result<(), SinkError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // tempfile creates the file 0600 and exclusively (O_EXCL).
    let mut tmp = tempfile::Builder::new()
        .prefix(".kcr-housekeeper-")
        .tempfile_in(dir)
        .map_err(io(dir, "cannot create a temporary file"))?;
    tmp.write_all(content).map_err(io(path, "cannot write"))?;
    tmp.as_file().sync_all().map_err(io(path, "cannot fsync"))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io(path, "cannot set mode 0600"))?;
    }
    tmp.persist(path).map_err(|e| SinkError::Io {
        path: path.to_path_buf(),
        what: "cannot rename into place",
        source: e.error,
    })?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir, "cannot fsync the directory"))?;
    Ok(())
}

fn read_docker_config(
    path: &Path,
) -> Result<serde_json::Map<String, serde_json::Value>, SinkError> {
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
        Sink::DockerConfig { path } | Sink::File { path, .. } => {
            let content = match std::fs::read(path) {
                Ok(c) => Some(c),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(io(path, "cannot read")(e)),
            };
            Ok(Some(Prior {
                path: path.clone(),
                content,
            }))
        }
        Sink::Exec { .. } => Ok(None),
    }
}

/// Put a file sink back as it was (atomically; removed if it did not exist).
pub fn restore(prior: &Prior) -> Result<(), SinkError> {
    match &prior.content {
        Some(c) => write_atomic(&prior.path, c),
        None => match std::fs::remove_file(&prior.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&prior.path, "cannot remove")(e)),
        },
    }
}

/// Deliver to one sink.
pub async fn deliver(sink: &Sink, d: &Delivery<'_>) -> Result<(), SinkError> {
    match sink {
        Sink::DockerConfig { path } => {
            let existing = if path.exists() {
                read_docker_config(path)?
            } else {
                serde_json::Map::new()
            };
            let doc = merge_docker_config(existing, d);
            write_atomic(
                path,
                (serde_json::to_string_pretty(&doc).expect("serialises") + "\n").as_bytes(),
            )
        }
        Sink::File { path, format } => write_atomic(path, &file_content(*format, d)),
        Sink::Exec { command, timeout } => exec(command, *timeout, d).await,
    }
}

async fn exec(command: &[String], timeout: Duration, d: &Delivery<'_>) -> Result<(), SinkError> {
    let program = command[0].clone();
    let fail = |why: String| SinkError::Exec {
        program: program.clone(),
        why,
    };
    let mut child = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .env("KCR_REGISTRY", d.registry)
        .env("KCR_TOKEN_ID", d.token_id)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("cannot start: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped");
    let doc = serde_json::to_vec(&json_document(d)).expect("serialises");
    let run = async {
        // A program that exits without reading its input is its own failure; keep going to collect the status.
        let _ = stdin.write_all(&doc).await;
        drop(stdin);
        child.wait_with_output().await
    };
    let out = tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| {
            fail(format!(
                "did not finish within {}",
                crate::duration::format(timeout)
            ))
        })?
        .map_err(|e| fail(e.to_string()))?;
    if out.status.success() {
        return Ok(());
    }
    // Its error output may echo what it was given: never pass the secret on.
    let stderr =
        String::from_utf8_lossy(&out.stderr).replace(d.secret.expose_secret(), "[redacted]");
    let tail: String = stderr
        .trim()
        .chars()
        .rev()
        .take(300)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    Err(fail(format!("exited with {}: {tail}", out.status)))
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
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
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
            timeout: Duration::from_secs(1),
        })
        .unwrap_err();
        assert!(e.to_string().contains("/no/such/program: not found"), "{e}");
        assert!(
            preflight(&Sink::Exec {
                command: vec!["sh".into()],
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
        let slow = Sink::Exec {
            command: vec!["sleep".into(), "5".into()],
            timeout: Duration::from_millis(200),
        };
        let e = deliver(&slow, &delivery(&secret))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("did not finish within 200ms"), "{e}");
    }
}
