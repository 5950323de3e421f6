//! Token sinks, the registry login and the token config, from the outside:
//! the real binary against the simulator over real HTTP, a fake HTTPS
//! registry for the login, and real filesystem faults (a full tmpfs, read-only
//! bind mounts). Tests that need root or mounts skip with a message when those
//! are unavailable; CI runs as root.

mod common;

use common::{DEMO_INSTANCE, client_for, demo_head, sim};
use kcr_housekeeper::config::{self, Config, ConfigErrors};
use kcr_housekeeper::kcr::{DescribeInstanceToken, TokenInfo};
use kcr_housekeeper::sim::{SimOptions, Simulator};
use kcr_housekeeper::tokens::verify;
use secrecy::{ExposeSecret, SecretString};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------- config

const HEAD: &str = "[kcr]\naccess_key_id = \"AKLTx\"\nsecret_access_key = { env = \"SK\" }\n";

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    config::parse(text, "test.toml", Path::new("."), &|k: &str| {
        (k == "SK").then(|| "sk-value".to_string())
    })
}

fn managed(instance_registry: &str, token: &str) -> String {
    format!(
        "{HEAD}[[instances]]\nid = \"i\"\nname = \"prod\"\n{instance_registry}\n\
         [tokens]\n[[tokens.managed]]\nname = \"ci-pull\"\ninstance = \"prod\"\n{token}\n"
    )
}

/// Defect 11 (lifetime part): at most 9999 days or 9999 hours; the error
/// names file, line and key.
#[test]
fn lifetimes_the_api_refuses_are_config_errors() {
    let sinks = "sinks = [{ kind = \"file\", path = \"/run/x.env\" }]";
    for ok in ["9999d", "9999h", "30d"] {
        let text = managed(
            "registry = \"r.example\"",
            &format!("lifetime = \"{ok}\"\nrotate_before = \"1h\"\noverlap = \"1h\"\n{sinks}"),
        );
        parse(&text).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    for (bad, unit) in [("10000d", "days"), ("10000h", "hours"), ("1430w", "days")] {
        let text = managed(
            "registry = \"r.example\"",
            &format!("lifetime = \"{bad}\"\n{sinks}"),
        );
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.contains("test.toml:12:1: tokens.managed[0].lifetime:")
                && e.contains("tokens.managed[0].lifetime:")
                && e.contains(&format!("at most 9999 {unit}")),
            "{bad}: {e}"
        );
    }
}

/// `[[instances]] registry` is needed only by managed tokens.
#[test]
fn registry_is_required_only_by_a_managed_token() {
    let c = parse(&format!(
        "{HEAD}[[instances]]\nid = \"i\"\nname = \"prod\"\n[retention]\n"
    ))
    .unwrap();
    assert_eq!(c.instances[0].registry, None);
    let e = parse(&managed(
        "",
        "sinks = [{ kind = \"file\", path = \"/run/x.env\" }]",
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("tokens.managed[0].instance:")
            && e.contains("managed token \"ci-pull\"")
            && e.contains("has no `registry`"),
        "{e}"
    );
    let e = parse(&format!(
        "{HEAD}[[instances]]\nid = \"i\"\nname = \"prod\"\nregistry = \"https://r.example\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("instances[0].registry:"), "{e}");
}

/// Defect 4 (config): the exec sink's `env` table is checked.
#[test]
fn exec_env_tables_are_validated() {
    let sink = |env: &str| {
        managed(
            "registry = \"r.example\"",
            &format!("sinks = [{{ kind = \"exec\", command = [\"/bin/true\"], env = {env} }}]"),
        )
    };
    let c = parse(&sink("{ PUBLISH_TARGET = \"ci\", _X1 = \"\" }")).unwrap();
    match &c.tokens.unwrap().managed[0].sinks[0] {
        config::Sink::Exec { env, .. } => {
            assert_eq!(env.get("PUBLISH_TARGET").map(String::as_str), Some("ci"));
            assert_eq!(env.len(), 2);
        }
        other => panic!("{other:?}"),
    }
    for (env, want) in [
        ("{ \"1X\" = \"a\" }", "is not a variable name"),
        ("{ \"A-B\" = \"a\" }", "is not a variable name"),
        ("{ KCR_TOKEN_ID = \"a\" }", "set by kcr-housekeeper itself"),
        ("{ A = \"x\\u0000y\" }", "NUL"),
        ("{ A = 1 }", "invalid type"),
    ] {
        let e = parse(&sink(env)).unwrap_err().to_string();
        assert!(
            e.contains("tokens.managed[0].sinks[0].env") && e.contains(want),
            "{env}: {e}"
        );
    }
    let e = parse(&managed(
        "registry = \"r.example\"",
        "sinks = [{ kind = \"file\", path = \"/run/x.env\", env = { A = \"b\" } }]",
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("`env` does not apply"), "{e}");
}

/// A `jitter` longer than a job's schedule period is a `check` warning.
#[test]
fn a_jitter_longer_than_a_schedule_period_is_a_check_warning() {
    let dir = tempfile::tempdir().unwrap();
    let write = |jitter: &str| {
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            format!(
                "{HEAD}[[instances]]\nid = \"i\"\nname = \"prod\"\n[scheduler]\njitter = \"{jitter}\"\n\
                 [quota]\nschedule = \"0 */5 * * * *\"\n[retention]\nschedule = \"0 0 3 * * *\"\n"
            ),
        )
        .unwrap();
        path
    };
    let check = |path: &Path| {
        let o = Command::new(env!("CARGO_BIN_EXE_kcr-housekeeper"))
            .args(["check", "--config"])
            .arg(path)
            .env("SK", "sk-value")
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        String::from_utf8(o.stdout).unwrap()
    };
    let out = check(&write("10m"));
    assert!(
        out.contains(
            "warning: scheduler.jitter (10m) is longer than the quota job's schedule period (5m"
        ),
        "{out}"
    );
    assert!(!out.contains("retention job's"), "{out}");
    let out = check(&write("4m"));
    assert!(!out.contains("warning: scheduler.jitter"), "{out}");
}

// ---------------------------------------------------------------- registry login

const CA: &[u8] = include_bytes!("fixtures/tls/ca.der");
const LEAF: &[u8] = include_bytes!("fixtures/tls/registry.test.der");
const LEAF_KEY: &[u8] = include_bytes!("fixtures/tls/registry.test.key.der");

/// Read one request head (bounded); the lower-cased text.
async fn read_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&buf).to_ascii_lowercase()
}

fn response(status: &str, extra: &str) -> String {
    format!("HTTP/1.1 {status}\r\n{extra}Content-Length: 2\r\nConnection: close\r\n\r\n{{}}")
}

/// A plain-HTTP token realm on 127.0.0.1: counts the requests that carry
/// credentials.
async fn http_realm() -> (u16, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let with_credentials = Arc::new(AtomicUsize::new(0));
    let seen = with_credentials.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let head = read_head(&mut s).await;
            if head.contains("\r\nauthorization:") {
                seen.fetch_add(1, Ordering::SeqCst);
            }
            let _ = s.write_all(response("200 OK", "").as_bytes()).await;
        }
    });
    (port, with_credentials)
}

/// A fake HTTPS registry `registry.test` on 127.0.0.1: `/v2/` answers a
/// Bearer challenge with the realm `realm(own port)`; `/token` accepts any
/// credentials.
async fn https_registry(realm: impl Fn(u16) -> String + Send + 'static) -> u16 {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(LEAF.to_vec())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(LEAF_KEY.to_vec())),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let Ok(mut s) = acceptor.accept(s).await else {
                continue;
            };
            let head = read_head(&mut s).await;
            let reply = if head.starts_with("get /v2/") {
                response(
                    "401 Unauthorized",
                    &format!(
                        "WWW-Authenticate: Bearer realm=\"{}\",service=\"registry.test\"\r\n",
                        realm(port)
                    ),
                )
            } else if head.contains("\r\nauthorization: basic ") {
                response("200 OK", "")
            } else {
                response("401 Unauthorized", "")
            };
            let _ = s.write_all(reply.as_bytes()).await;
            let _ = s.shutdown().await;
        }
    });
    port
}

/// A client that trusts the test CA and finds `registry.test` on 127.0.0.1.
fn test_client() -> reqwest::Client {
    verify::client_builder(Duration::from_secs(5))
        .add_root_certificate(reqwest::Certificate::from_der(CA).unwrap())
        .resolve("registry.test", "127.0.0.1:0".parse().unwrap())
        .build()
        .unwrap()
}

/// Defect 13: an HTTPS registry whose Bearer challenge points to a plain-HTTP
/// realm on its own (non-loopback-looking) host name: the login refuses the
/// downgrade and the realm never sees the credentials. The same registry
/// with an HTTPS realm logs in (the fake registry works).
#[tokio::test]
async fn credentials_never_go_to_a_plain_http_realm_of_an_https_registry() {
    let secret = SecretString::from("s3cret");
    let (http_port, hits) = http_realm().await;
    let port = https_registry(move |_| format!("http://registry.test:{http_port}/token")).await;
    let base = format!("https://registry.test:{port}");
    let e = verify::login_with(&test_client(), &base, "u", &secret)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("scheme downgrade"), "{e}");
    assert!(!e.contains("s3cret"), "{e}");
    assert_eq!(hits.load(Ordering::SeqCst), 0, "credentials sent over HTTP");

    let port = https_registry(|own| format!("https://registry.test:{own}/token")).await;
    verify::login_with(
        &test_client(),
        &format!("https://registry.test:{port}"),
        "u",
        &secret,
    )
    .await
    .expect("an HTTPS realm is fine");
}

// ---------------------------------------------------------------- the binary

async fn managed_tokens(sim: &Simulator) -> Vec<TokenInfo> {
    client_for(sim)
        .list_all(DescribeInstanceToken {
            instance_id: DEMO_INSTANCE.into(),
            marker: None,
            max_results: None,
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|t| {
            t.desc
                .as_deref()
                .is_some_and(|d| d.starts_with("kcr-housekeeper/ci-pull/"))
        })
        .collect()
}

fn write_config(sim: &Simulator, dir: &Path, extra: &str, sinks: &str) -> PathBuf {
    let text = format!(
        "{head}{extra}\n[tokens]\nlist_lag = \"2s\"\n[[tokens.managed]]\nname = \"ci-pull\"\n\
         instance = \"demo\"\nlifetime = \"30d\"\nrotate_before = \"10d\"\nsinks = [\n{sinks}\n]\n",
        head = demo_head(sim, dir),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn apply(sim: &Simulator, config: &Path, env: &[(&str, &str)]) -> Output {
    let creds = sim.credentials();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kcr-housekeeper"));
    cmd.args(["apply", "tokens", "--yes", "--config"])
        .arg(config)
        .env("AK", &creds.access_key_id)
        .env("SK", creds.secret_access_key.expose_secret())
        .env_remove("KCR_HOUSEKEEPER_FAILPOINT")
        .env_remove("KCR_HOUSEKEEPER_FAILPOINT_TRACE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Defect 4: an exec sink run by the real binary sees none of the daemon's
/// environment — not the KCR secret key, not the admin token, not an
/// unrelated KSYUN_SECRET_ACCESS_KEY — only PATH, HOME, LANG, its two own
/// variables and the `env` table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_sink_sees_none_of_the_daemons_environment() {
    let sim = sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let environ = dir.path().join("environ");
    let config = write_config(
        &sim,
        dir.path(),
        "[server]\nadmin_token = { env = \"ADMIN\" }",
        &format!(
            "{{ kind = \"exec\", command = [\"/bin/sh\", \"-c\", 'cat /proc/$$/environ > {}; cat > /dev/null'], env = {{ PUBLISH_TARGET = \"ci\" }} }}",
            environ.display()
        ),
    );
    let admin = "admin-token-0123456789-abcdef";
    let ksyun = "ksyun-secret-value-9876543210";
    let o = apply(
        &sim,
        &config,
        &[("ADMIN", admin), ("KSYUN_SECRET_ACCESS_KEY", ksyun)],
    );
    assert!(o.status.success(), "{}", text(&o));
    let raw = std::fs::read(&environ).expect("the sink ran");
    let vars: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    let all = vars.join("\n");
    let sk = sim
        .credentials()
        .secret_access_key
        .expose_secret()
        .to_string();
    for leaked in [
        admin,
        ksyun,
        sk.as_str(),
        "KSYUN_SECRET_ACCESS_KEY",
        "ADMIN=",
    ] {
        assert!(!all.contains(leaked), "{leaked} reached the sink:\n{all}");
    }
    let allowed = [
        "PATH",
        "HOME",
        "LANG",
        "KCR_REGISTRY",
        "KCR_TOKEN_ID",
        "PUBLISH_TARGET",
    ];
    for v in &vars {
        let name = v.split('=').next().unwrap();
        assert!(allowed.contains(&name), "{name} reached the sink:\n{all}");
    }
    assert!(vars.iter().any(|v| v == "PUBLISH_TARGET=ci"), "{all}");
}

/// Defect 7 (pre-check part): a directory at a sink's path fails the
/// rotation before any token is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_at_a_sink_path_fails_before_any_token_is_created() {
    let sim = sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("ci-pull.env")).unwrap();
    let config = write_config(
        &sim,
        dir.path(),
        "",
        &format!(
            "{{ kind = \"file\", path = \"{}/ci-pull.env\" }}",
            dir.path().display()
        ),
    );
    let before: Vec<String> = managed_tokens(&sim)
        .await
        .into_iter()
        .map(|t| t.token_id)
        .collect();
    for _ in 0..2 {
        let o = apply(&sim, &config, &[]);
        assert!(!o.status.success(), "{}", text(&o));
        assert!(text(&o).contains("is a directory"), "{}", text(&o));
    }
    assert_eq!(sim.count("CreateInstanceToken"), 0, "no token created");
    let after: Vec<String> = managed_tokens(&sim)
        .await
        .into_iter()
        .map(|t| t.token_id)
        .collect();
    assert_eq!(before, after);
}

// ---------------------------------------------------------------- filesystem faults

/// A mount made for one test, lazily unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    fn run(args: &[&str]) -> bool {
        Command::new("mount")
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// A tmpfs of `size` at `dir`, or `None` (with a message) if mounting is impossible.
    fn tmpfs(dir: &Path, size: &str) -> Option<Mount> {
        let d = dir.to_str().unwrap();
        if Self::run(&["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", d]) {
            Some(Mount(dir.to_path_buf()))
        } else {
            eprintln!("SKIPPED: cannot mount a tmpfs (needs root); CI runs this as root");
            None
        }
    }

    /// `path` (a file or a directory) bind-mounted read-only onto itself.
    fn read_only(path: &Path) -> Option<Mount> {
        let p = path.to_str().unwrap();
        if !Self::run(&["--bind", p, p]) {
            eprintln!("SKIPPED: cannot bind-mount (needs root); CI runs this as root");
            return None;
        }
        let m = Mount(path.to_path_buf());
        if Self::run(&["-o", "remount,bind,ro", p]) {
            Some(m)
        } else {
            eprintln!("SKIPPED: cannot remount read-only");
            None
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn env_token(path: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(str::to_owned)
    };
    Some((get("KCR_USERNAME")?, get("KCR_TOKEN")?))
}

async fn login_status(sim: &Simulator, user: &str, secret: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{}/v2/", sim.endpoint()))
        .basic_auth(user, Some(secret))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".kcr-housekeeper"))
        .collect()
}

/// A full disk (a 16 KiB tmpfs): the rotation that cannot write its sink
/// fails; the sink keeps the old, working credential and no temporary file
/// is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_keeps_the_old_credential_in_the_sink() {
    let sim = sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    std::fs::create_dir(&disk).unwrap();
    let Some(_mount) = Mount::tmpfs(&disk, "16k") else {
        return;
    };
    let sink = disk.join("ci-pull.env");
    let config = write_config(
        &sim,
        dir.path(),
        "",
        &format!("{{ kind = \"file\", path = \"{}\" }}", sink.display()),
    );
    let o = apply(&sim, &config, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let (user, old) = env_token(&sink).unwrap();
    assert_eq!(login_status(&sim, &user, &old).await, 200);

    // Fill the disk, then make the token due: it expires in 5 days (< rotate_before).
    let id = std::fs::read_to_string(&sink)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("KCR_TOKEN_ID=").map(str::to_owned))
        .unwrap();
    let soon = sim.now() + chrono::Duration::days(5);
    sim.world(|w| {
        for t in &mut w.instances[0].tokens {
            if t.id == id {
                t.expire_time = Some(soon);
            }
        }
    });
    let mut filler = std::fs::File::create(disk.join("filler")).unwrap();
    let block = vec![0u8; 4096];
    while std::io::Write::write_all(&mut filler, &block).is_ok() {}
    drop(filler);
    let creates = sim.count("CreateInstanceToken");
    let o = apply(&sim, &config, &[]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("No space left on device"), "{}", text(&o));
    assert_eq!(
        sim.count("CreateInstanceToken"),
        creates + 1,
        "the pre-check passed"
    );
    let (_, now_held) = env_token(&sink).unwrap();
    assert_eq!(now_held, old, "the sink still holds the old credential");
    assert_eq!(login_status(&sim, &user, &old).await, 200, "and it works");
    assert!(temp_files(&disk).is_empty(), "{:?}", temp_files(&disk));
}

/// A read-only sink directory (root ignores permission bits: a read-only
/// bind mount), and an existing sink file that cannot be written: both fail
/// the pre-check, before any token is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_sinks_fail_before_any_token_is_created() {
    let sim = sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let ro_dir = dir.path().join("ro");
    std::fs::create_dir(&ro_dir).unwrap();
    let rw_dir = dir.path().join("rw");
    std::fs::create_dir(&rw_dir).unwrap();
    let ro_file = rw_dir.join("config.json");
    std::fs::write(&ro_file, "{}").unwrap();

    let Some(_m1) = Mount::read_only(&ro_dir) else {
        return;
    };
    let config = write_config(
        &sim,
        dir.path(),
        "",
        &format!(
            "{{ kind = \"file\", path = \"{}/ci.env\" }}",
            ro_dir.display()
        ),
    );
    let o = apply(&sim, &config, &[]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("cannot create files in the sink's directory"),
        "{}",
        text(&o)
    );

    let Some(_m2) = Mount::read_only(&ro_file) else {
        return;
    };
    let config = write_config(
        &sim,
        dir.path(),
        "",
        &format!(
            "{{ kind = \"docker-config\", path = \"{}\" }}",
            ro_file.display()
        ),
    );
    let o = apply(&sim, &config, &[]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("the existing file is not writable"),
        "{}",
        text(&o)
    );
    assert_eq!(sim.count("CreateInstanceToken"), 0, "no token created");
    assert_eq!(std::fs::read_to_string(&ro_file).unwrap(), "{}");
}

// ---------------------------------------------------------------- every sink failpoint

/// The failpoints a clean rotation through a docker-config, a file and an
/// exec sink must pass (the sink's every fallible call).
const DELIVERY_POINTS: [&str; 20] = [
    "tokens.sink.resolve",
    "tokens.sink.precheck.dir",
    "tokens.sink.precheck.stat",
    "tokens.sink.precheck.open",
    "tokens.sink.precheck.probe",
    "tokens.sink.precheck.chown",
    "tokens.sink.precheck.read",
    "tokens.sink.read_prior",
    "tokens.sink.stat",
    "tokens.sink.read_existing",
    "tokens.sink.temp_create",
    "tokens.sink.write",
    "tokens.sink.chown",
    "tokens.sink.chmod",
    "tokens.sink.fsync",
    "tokens.sink.rename",
    "tokens.sink.dir_fsync",
    "tokens.sink.exec_spawn",
    "tokens.sink.exec_stdin",
    "tokens.sink.exec_wait",
];

/// The failpoints putting the file sinks back passes (the exec sink fails
/// after both files were written: docker-config existed, the env file not).
const RESTORE_POINTS: [&str; 10] = [
    "tokens.sink.restore.read",
    "tokens.sink.restore.stat",
    "tokens.sink.restore.temp_create",
    "tokens.sink.restore.write",
    "tokens.sink.restore.chown",
    "tokens.sink.restore.chmod",
    "tokens.sink.restore.fsync",
    "tokens.sink.restore.rename",
    "tokens.sink.restore.dir_fsync",
    "tokens.sink.restore.remove",
];

const OTHER_LOGIN: &str =
    r#"{"auths": {"other.example.com": {"auth": "b3RoZXI6cGFzcw=="}}, "credsStore": "desktop"}"#;

/// A fresh simulator and sink directory: an existing docker config (mode
/// 0640, another registry's login), a new env file, an exec sink that
/// succeeds or fails.
async fn scenario(exec_fails: bool) -> (Simulator, tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let sim = sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let docker = dir.path().join("config.json");
    std::fs::write(&docker, OTHER_LOGIN).unwrap();
    std::fs::set_permissions(&docker, std::fs::Permissions::from_mode(0o640)).unwrap();
    let exit = if exec_fails { "exit 3" } else { "exit 0" };
    let config = write_config(
        &sim,
        dir.path(),
        "",
        &format!(
            "{{ kind = \"docker-config\", path = \"{d}/config.json\" }},\n\
             {{ kind = \"file\", path = \"{d}/ci.env\" }},\n\
             {{ kind = \"exec\", command = [\"/bin/sh\", \"-c\", \"cat > /dev/null; {exit}\"] }}",
            d = dir.path().display()
        ),
    );
    (sim, dir, config)
}

fn traced(sim: &Simulator, config: &Path, dir: &Path) -> (Output, Vec<String>) {
    let trace = dir.join("trace");
    let o = apply(
        sim,
        config,
        &[("KCR_HOUSEKEEPER_FAILPOINT_TRACE", trace.to_str().unwrap())],
    );
    let mut names: Vec<String> = std::fs::read_to_string(&trace)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("tokens.sink.") || l.starts_with("tokens.verify."))
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    (o, names)
}

/// What must hold whatever failed where: the docker config is whole JSON
/// with the other registry's login and its mode, an env file is whole, and
/// no temporary file outlives a pre-check (after a crash, the next one).
async fn sinks_are_sound(sim: &Simulator, dir: &Path, point: &str, restore_failed: bool) {
    use std::os::unix::fs::PermissionsExt;
    let docker = dir.join("config.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&docker).unwrap())
        .unwrap_or_else(|e| panic!("{point}: config.json is not whole JSON: {e}"));
    assert_eq!(
        v["auths"]["other.example.com"]["auth"], "b3RoZXI6cGFzcw==",
        "{point}"
    );
    assert_eq!(
        std::fs::metadata(&docker).unwrap().permissions().mode() & 0o7777,
        0o640,
        "{point}: mode kept"
    );
    if let Some((user, secret)) = env_token(&dir.join("ci.env")) {
        if !restore_failed {
            assert_eq!(
                login_status(sim, &user, &secret).await,
                200,
                "{point}: the env sink holds a credential the registry refuses"
            );
        }
    } else {
        assert!(!dir.join("ci.env").exists(), "{point}: a partial env file");
    }
    // A crash leaves at most a temporary file; the next pre-check removes it.
    let leftovers = temp_files(dir);
    if !leftovers.is_empty() {
        let old = std::time::SystemTime::now() - Duration::from_secs(60);
        for name in &leftovers {
            let f = std::fs::File::options()
                .write(true)
                .open(dir.join(name))
                .unwrap();
            f.set_modified(old).unwrap();
        }
        kcr_housekeeper::tokens::sinks::preflight(&config::Sink::File {
            path: dir.join("ci.env"),
            format: config::FileFormat::Env,
        })
        .unwrap();
        assert!(
            temp_files(dir).is_empty(),
            "{point}: {leftovers:?} survived the next pre-check"
        );
    }
}

/// The method of issue 11 for the sinks: a clean traced run enumerates the
/// sink failpoints; then, each on a fresh simulator, (a) an error there and
/// (b) a crash there leave the sinks sound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sink_failpoint_fails_safe() {
    let started = std::time::Instant::now();
    let (sim, dir, config) = scenario(false).await;
    let (o, delivery) = traced(&sim, &config, dir.path());
    assert!(o.status.success(), "{}", text(&o));
    for p in DELIVERY_POINTS {
        assert!(
            delivery.iter().any(|n| n == p),
            "{p} not passed: {delivery:?}"
        );
    }
    let (sim, dir, config) = scenario(true).await;
    let (o, restore) = traced(&sim, &config, dir.path());
    assert!(!o.status.success(), "{}", text(&o));
    let restore: Vec<String> = restore
        .into_iter()
        .filter(|n| n.starts_with("tokens.sink.restore."))
        .collect();
    for p in RESTORE_POINTS {
        assert!(
            restore.iter().any(|n| n == p),
            "{p} not passed: {restore:?}"
        );
    }

    let mut exercised = 0;
    for (points, exec_fails) in [(&delivery, false), (&restore, true)] {
        for point in points {
            for mode in ["error", "abort"] {
                let (sim, dir, config) = scenario(exec_fails).await;
                let o = apply(
                    &sim,
                    &config,
                    &[("KCR_HOUSEKEEPER_FAILPOINT", &format!("{point}={mode}"))],
                );
                assert!(!o.status.success(), "{point}={mode}: {}", text(&o));
                if mode == "abort" {
                    assert!(
                        text(&o).contains(&format!("failpoint {point}: aborting")),
                        "{point}: {}",
                        text(&o)
                    );
                } else {
                    // Passed and failed (some errors are absorbed by design:
                    // an unreadable file is restored anyway).
                    assert!(
                        text(&o).contains(&format!("failpoint {point}: injected error")),
                        "{point}: {}",
                        text(&o)
                    );
                    assert!(temp_files(dir.path()).is_empty(), "{point}=error");
                }
                sinks_are_sound(&sim, dir.path(), point, exec_fails).await;
                exercised += 1;
            }
        }
    }
    eprintln!(
        "sink failpoints: {} on delivery, {} on restore; {exercised} faults injected in {:?}",
        delivery.len(),
        restore.len(),
        started.elapsed()
    );
}

// ---------------------------------------------------------------- exec sinks, from the binary

/// The token an exec sink was given (it saved its standard input to `path`).
fn delivered_token(path: &Path) -> String {
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("the sink ran")).unwrap();
    doc["token"].as_str().unwrap().to_owned()
}

/// Sinks-A, the reviewer's repro through the binary: a hook that exits 0
/// but leaves a background process holding its standard error is a
/// success, not three timeouts; the background process is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_sink_leaving_a_background_process_succeeds() {
    let sim = sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let got = dir.path().join("stdin.json");
    let pidfile = dir.path().join("pid");
    let config = write_config(
        &sim,
        dir.path(),
        "",
        &format!(
            "{{ kind = \"exec\", timeout = \"5s\", command = [\"/bin/sh\", \"-c\", 'cat > {}; sleep 60 & echo $! > {}; exit 0'] }}",
            got.display(),
            pidfile.display()
        ),
    );
    let started = std::time::Instant::now();
    let o = apply(&sim, &config, &[]);
    let took = started.elapsed();
    let pid = std::fs::read_to_string(&pidfile).unwrap_or_default();
    let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains("did not finish"), "{}", text(&o));
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&got).unwrap()).unwrap();
    let tokens = managed_tokens(&sim).await;
    assert!(
        tokens
            .iter()
            .any(|t| t.enable && t.token_id == doc["token_id"].as_str().unwrap()),
        "the delivered token is kept and enabled: {tokens:?}\n{}",
        text(&o)
    );
    assert!(!delivered_token(&got).is_empty());
}

/// Sinks-B, the reviewer's repro through the binary: a failing hook writes
/// 65520 bytes and then the token to its standard error. No 8-character
/// piece of the token reaches the daemon's output, its state database
/// (rotation journal, audit) or anything else it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_exec_sink_echoing_the_token_past_64_kib_leaks_no_piece_of_it() {
    let sim = sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let sink_dir = dir.path().join("sink");
    std::fs::create_dir(&sink_dir).unwrap();
    let got = sink_dir.join("stdin.json");
    let config = write_config(
        &sim,
        dir.path(),
        "",
        &format!(
            "{{ kind = \"exec\", command = [\"/bin/sh\", \"-c\", '''cat > {g}; head -c 65520 /dev/zero | tr '\\0' x >&2; sed 's/.*\"token\": *\"\\([^\"]*\\)\".*/\\1/' {g} | tr -d '\\n' >&2; exit 1'''] }}",
            g = got.display()
        ),
    );
    let o = apply(&sim, &config, &[]);
    assert!(!o.status.success(), "{}", text(&o));
    let token = delivered_token(&got);
    assert!(token.len() >= 16, "{token}");
    let out = text(&o);
    assert!(out.contains("[redacted]"), "{out}");
    // Everything the daemon wrote: its output and every file next to the config.
    let mut written = vec![("output".to_owned(), out.into_bytes())];
    for e in std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
    {
        if e.path().is_file() {
            written.push((
                e.path().display().to_string(),
                std::fs::read(e.path()).unwrap(),
            ));
        }
    }
    for (what, bytes) in &written {
        for piece in token.as_bytes().windows(8) {
            assert!(
                !bytes.windows(8).any(|w| w == piece),
                "{:?} of the token is in {what}",
                String::from_utf8_lossy(piece)
            );
        }
    }
}

/// The sinks list of a `containers-auth` sink at `auth` and a `json` file sink at `json`.
fn auth_and_json_sinks(auth: &Path, json: &Path) -> String {
    format!(
        "{{ kind = \"containers-auth\", path = \"{}\" }},\n{{ kind = \"file\", path = \"{}\", format = \"json\" }}",
        auth.display(),
        json.display()
    )
}

/// A `containers-auth` sink (podman/skopeo/buildah `auth.json`) is merged like
/// a docker config: other registries kept, this registry's `auth` the new
/// token, which logs in; and the credential helper answers the same token
/// from a `json` file sink of the same rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_auth_sink_and_credential_helper_deliver_a_working_token() {
    use base64::Engine;
    let sim = sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("auth.json");
    std::fs::write(
        &auth,
        r#"{"auths": {"quay.example.com": {"auth": "b3RoZXI6cGFzcw=="}}}"#,
    )
    .unwrap();
    let json = dir.path().join("ci.json");
    let config = write_config(&sim, dir.path(), "", &auth_and_json_sinks(&auth, &json));
    let o = apply(&sim, &config, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let host = sim.endpoint().trim_start_matches("http://").to_owned();
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&auth).unwrap()).unwrap();
    assert_eq!(doc["auths"]["quay.example.com"]["auth"], "b3RoZXI6cGFzcw==");
    let pair = base64::engine::general_purpose::STANDARD
        .decode(doc["auths"][&host]["auth"].as_str().unwrap())
        .unwrap();
    let pair = String::from_utf8(pair).unwrap();
    let (user, secret) = pair.split_once(':').unwrap();
    assert_eq!(login_status(&sim, user, secret).await, 200);

    let helper = std::process::Command::new(env!("CARGO_BIN_EXE_kcr-housekeeper"))
        .args(["credential-helper", "get", "--file"])
        .arg(&json)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = helper.stdin.as_ref().unwrap();
        stdin
            .write_all(format!("https://{host}\n").as_bytes())
            .unwrap();
    }
    let o = helper.wait_with_output().unwrap();
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["Username"].as_str(), v["Secret"].as_str()),
        (Some(user), Some(secret))
    );
    // The json sink says when the rotation is due (expiry − rotate_before
    // 10d): the credential provider caches until then.
    let doc = sink_json(&json);
    let at = |k: &str| chrono::DateTime::parse_from_rfc3339(doc[k].as_str().unwrap()).unwrap();
    assert_eq!(
        at("expires_at") - at("rotates_at"),
        chrono::Duration::days(10)
    );
}

// ---------------------------------------------------------------- real clients

/// `skopeo inspect docker://<host>/apps/web:v1.4.2` over plain HTTP with
/// `args` (the credential source), in an environment of its own: no user
/// auth files, `bin` first on `PATH` (for a credential helper), `sink` as
/// `KCR_SINK` (the file the test's helper wrapper answers from).
fn skopeo_inspect(sim: &Simulator, home: &Path, args: &[&std::ffi::OsStr], sink: &Path) -> Output {
    let host = sim.endpoint().trim_start_matches("http://").to_owned();
    let path = format!(
        "{}:{}",
        home.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--command-timeout", "60s"])
        .args(args)
        .arg(format!("docker://{host}/apps/web:v1.4.2"))
        .env_clear()
        .env("PATH", path)
        .env("HOME", home)
        .env("XDG_RUNTIME_DIR", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("KCR_SINK", sink)
        .output()
        .unwrap()
}

/// Item 3 of Step 11, by a real client: after a rotation `skopeo inspect`
/// reads an image from the simulator's registry with the delivered token —
/// through the `containers-auth` sink (`--authfile`) and through
/// `credHelpers` pointing at `kcr-housekeeper credential-helper` — and once
/// the old token is retired, the same two sources holding the old token fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_inspects_with_the_delivered_token_and_not_with_the_retired_one() {
    if !common::ci_tool("skopeo") {
        return;
    }
    let sim = sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join("bin")).unwrap();
    let auth = dir.path().join("auth.json");
    let json = dir.path().join("ci.json");
    let config = write_config(&sim, dir.path(), "", &auth_and_json_sinks(&auth, &json));
    // The old token is retired 1s after the new one is delivered.
    let text_of = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text_of.replace(
            "rotate_before = \"10d\"\n",
            "rotate_before = \"10d\"\noverlap = \"1s\"\n",
        ),
    )
    .unwrap();
    // docker-credential-kcr: the helper protocol's name for our helper.
    let wrapper = home.join("bin/docker-credential-kcr");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec '{}' credential-helper \"$@\" --file \"$KCR_SINK\"\n",
            env!("CARGO_BIN_EXE_kcr-housekeeper")
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let host = sim.endpoint().trim_start_matches("http://").to_owned();
    let helpers = dir.path().join("helpers.json");
    std::fs::write(
        &helpers,
        serde_json::json!({"credHelpers": {&host: "kcr"}}).to_string(),
    )
    .unwrap();
    let authfile = |f: &Path| vec![std::ffi::OsString::from("--authfile"), f.into()];
    let inspect = |args: &[std::ffi::OsString], sink: &Path| {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        skopeo_inspect(&sim, &home, &args, sink)
    };

    // Without credentials the registry refuses.
    let o = inspect(&[], &json);
    assert!(!o.status.success(), "anonymous: {}", text(&o));

    let o = apply(&sim, &config, &[]);
    assert!(o.status.success(), "{}", text(&o));
    for (how, args) in [
        ("--authfile (containers-auth sink)", authfile(&auth)),
        ("credHelpers → credential-helper", authfile(&helpers)),
    ] {
        let o = inspect(&args, &json);
        assert!(o.status.success(), "{how}: {}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["Name"], format!("{host}/apps/web"), "{how}");
        assert_eq!(
            v["Labels"]["com.ksyun.kcr-sim.image-id"],
            "sha256:1111111111111111111111111111111111111111111111111111111111111101",
            "{how}: the image of tag v1.4.2"
        );
        // skopeo checked the manifest's and config's digests; the digest
        // it reports is what the registry answers for the tag.
        let head = reqwest::Client::new()
            .head(format!("{}/v2/apps/web/manifests/v1.4.2", sim.endpoint()))
            .header(
                "Accept",
                "application/vnd.docker.distribution.manifest.v2+json",
            )
            .basic_auth(
                sink_json(&json)["username"].as_str().unwrap(),
                sink_json(&json)["token"].as_str(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), 200);
        assert_eq!(
            head.headers()["docker-content-digest"].to_str().unwrap(),
            v["Digest"].as_str().unwrap(),
            "{how}"
        );
    }
    // skopeo went through the Bearer token realm.
    assert!(
        sim.requests()
            .iter()
            .any(|e| e.path == "/service/token" && e.status == 200),
        "a Bearer token was bought"
    );

    // Keep the first token's files, bring its expiry inside rotate_before
    // (the binary's clock is real time, so the token moves, not the clock),
    // rotate, and retire the first token once the overlap (1s) has passed.
    let old_auth = dir.path().join("old-auth.json");
    let old_json = dir.path().join("old-ci.json");
    std::fs::copy(&auth, &old_auth).unwrap();
    std::fs::copy(&json, &old_json).unwrap();
    let old_id = sink_json(&old_json)["token_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let soon = sim.now() + chrono::Duration::days(1);
    sim.world(|w| {
        for t in w.instances.iter_mut().flat_map(|i| i.tokens.iter_mut()) {
            if t.id == old_id {
                t.expire_time = Some(soon);
            }
        }
    });
    let o = apply(&sim, &config, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_ne!(
        sink_json(&json)["token_id"],
        sink_json(&old_json)["token_id"],
        "rotated"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let o = apply(&sim, &config, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let old_id = sink_json(&old_json)["token_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let old = managed_tokens(&sim)
        .await
        .into_iter()
        .find(|t| t.token_id == old_id);
    assert!(old.is_none_or(|t| !t.enable), "the first token is retired");

    for (how, args, sink) in [
        ("--authfile", authfile(&auth), &json),
        ("credHelpers", authfile(&helpers), &json),
    ] {
        let o = inspect(&args, sink);
        assert!(o.status.success(), "new token, {how}: {}", text(&o));
    }
    for (how, args, sink) in [
        ("--authfile", authfile(&old_auth), &old_json),
        ("credHelpers", authfile(&helpers), &old_json),
    ] {
        let o = inspect(&args, sink);
        assert!(!o.status.success(), "retired token, {how}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr).to_ascii_lowercase();
        assert!(
            err.contains("unauthorized") || err.contains("authentication required"),
            "retired token, {how}: {err}"
        );
    }
}

/// What a `json` file sink holds.
fn sink_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}
