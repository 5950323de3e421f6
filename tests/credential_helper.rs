//! `credential-helper`: the Docker credential-helper protocol
//! (docker-credential-helpers: `get` reads the server URL and prints
//! `{"ServerURL","Username","Secret"}`, an unknown server prints
//! `credentials not found in native keychain` and exits 1; `list` prints
//! `{"<server>": "<username>"}`), answered from a `file` sink in `json`
//! format exactly as the token rotation writes it.

use chrono::{Duration, Utc};
use kcr_housekeeper::config::FileFormat;
use kcr_housekeeper::tokens::sinks::{Delivery, file_content};
use secrecy::SecretString;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_kcr-housekeeper");
const SECRET: &str = "s3cr3t-token-value-0123456789";

fn sink(path: &Path, registry: &str, expires_in: Duration) {
    rotating_sink(path, registry, expires_in, None);
}

fn rotating_sink(path: &Path, registry: &str, expires_in: Duration, rotates_in: Option<Duration>) {
    let secret = SecretString::from(SECRET);
    let d = Delivery {
        registry,
        username: "kcr-user",
        secret: &secret,
        token_id: "tok-1",
        expires_at: Some(Utc::now() + expires_in),
        rotates_at: rotates_in.map(|r| Utc::now() + r),
    };
    std::fs::write(path, file_content(FileFormat::Json, &d)).unwrap();
}

fn helper(args: &[&str], stdin: &str) -> Output {
    run("credential-helper", args, stdin)
}

fn run(command: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .arg(command)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn get_list_store_erase_follow_the_docker_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ci-pull.json");
    sink(&file, "prod.ksyunkcr.com", Duration::days(30));
    let f = file.to_str().unwrap();

    for server in [
        "prod.ksyunkcr.com",
        "https://prod.ksyunkcr.com/v2/\n",
        "PROD.ksyunkcr.com\n",
    ] {
        let o = helper(&["get", "--file", f], server);
        assert!(o.status.success(), "{server:?}: {o:?}");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["ServerURL"], server.trim());
        assert_eq!(v["Username"], "kcr-user");
        assert_eq!(v["Secret"], SECRET);
    }

    let o = helper(&["get", "--file", f], "other.example.com\n");
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "credentials not found in native keychain\n");

    let o = helper(&["list", "--file", f], "");
    assert!(o.status.success(), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v, serde_json::json!({"prod.ksyunkcr.com": "kcr-user"}));

    // The token is rotated by kcr-housekeeper: store and erase are refused,
    // without repeating what they were given.
    let o = helper(
        &["store", "--file", f],
        r#"{"ServerURL":"prod.ksyunkcr.com","Username":"u","Secret":"typed-by-hand"}"#,
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("rotated by kcr-housekeeper") && !err.contains("typed-by-hand"),
        "{err}"
    );
    let o = helper(&["erase", "--file", f], "prod.ksyunkcr.com\n");
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(
            "erase: the credentials for \"prod.ksyunkcr.com\" are rotated by kcr-housekeeper"
        ),
        "{o:?}"
    );
    assert!(
        std::fs::read_to_string(&file).unwrap().contains(SECRET),
        "untouched"
    );
}

#[test]
fn an_expired_or_missing_sink_is_not_found_and_a_bad_one_never_shows_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let expired = dir.path().join("old.json");
    sink(&expired, "prod.ksyunkcr.com", Duration::hours(-1));
    let missing = dir.path().join("not-yet.json");
    let o = helper(
        &[
            "get",
            "--file",
            expired.to_str().unwrap(),
            "--file",
            missing.to_str().unwrap(),
        ],
        "prod.ksyunkcr.com",
    );
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert_eq!(stdout(&o), "credentials not found in native keychain\n");

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, format!("{{\"token\": \"{SECRET}\", ")).unwrap();
    let o = helper(
        &["get", "--file", bad.to_str().unwrap()],
        "prod.ksyunkcr.com",
    );
    assert_eq!(o.status.code(), Some(1));
    let all = format!("{}{}", stdout(&o), String::from_utf8_lossy(&o.stderr));
    assert!(
        all.contains("not a json token sink") && !all.contains(SECRET),
        "{all}"
    );
}

#[test]
fn without_file_the_configs_json_sinks_answer() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ci.json");
    sink(&file, "prod.ksyunkcr.com", Duration::days(1));
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[kcr]\nendpoint = \"sim:demo\"\n[[instances]]\nid = \"i\"\nname = \"prod\"\nregistry = \"prod.ksyunkcr.com\"\n\
             [tokens]\n[[tokens.managed]]\nname = \"ci\"\ninstance = \"prod\"\n\
             sinks = [{{ kind = \"file\", path = \"{}\", format = \"json\" }}, {{ kind = \"file\", path = \"{}/ci.env\" }}]\n",
            file.display(),
            dir.path().display()
        ),
    )
    .unwrap();
    let o = helper(
        &["get", "--config", config.to_str().unwrap()],
        "prod.ksyunkcr.com",
    );
    assert!(o.status.success(), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["Secret"], SECRET);
    // The kubelet credential provider reads the same sinks.
    let o = run(
        "credential-provider",
        &["--config", config.to_str().unwrap()],
        &fixture("request.json"),
    );
    assert!(o.status.success(), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["auth"]["prod.ksyunkcr.com"]["password"], SECRET);
}

/// A docker config that names a credential store (or a helper for the
/// registry) makes docker ignore `auths`: `check` warns and offers the
/// credential helper.
#[test]
fn check_warns_when_docker_would_ignore_the_docker_config_sink() {
    let dir = tempfile::tempdir().unwrap();
    let docker = dir.path().join("config.json");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[kcr]\nendpoint = \"sim:demo\"\n[[instances]]\nid = \"i\"\nname = \"prod\"\nregistry = \"prod.ksyunkcr.com\"\n\
             [tokens]\n[[tokens.managed]]\nname = \"ci\"\ninstance = \"prod\"\n\
             sinks = [{{ kind = \"docker-config\", path = \"{}\" }}]\n",
            docker.display()
        ),
    )
    .unwrap();
    let check = || {
        let o = Command::new(BIN)
            .args(["check", "--config", config.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        format!("{}{}", stdout(&o), String::from_utf8_lossy(&o.stderr))
    };
    for (content, want) in [
        (r#"{"credsStore": "desktop"}"#, "credsStore = \"desktop\""),
        (
            r#"{"credHelpers": {"https://prod.ksyunkcr.com": "ecr-login"}}"#,
            "credHelpers \"prod.ksyunkcr.com\" = \"ecr-login\"",
        ),
    ] {
        std::fs::write(&docker, content).unwrap();
        let out = check();
        assert!(
            out.contains(want) && out.contains("kcr-housekeeper credential-helper"),
            "{out}"
        );
    }
    for clean in [
        r#"{"auths": {}, "credHelpers": {"other.example.com": "x"}}"#,
        "{}",
    ] {
        std::fs::write(&docker, clean).unwrap();
        assert!(!check().contains("ignores the token"), "{clean}");
    }
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/credential-provider")
            .join(name),
    )
    .unwrap()
}

/// Seconds of a Go duration as `metav1.Duration` writes it (`480h0m0s`).
fn go_seconds(d: &str) -> i64 {
    let (h, rest) = d.split_once('h').unwrap();
    let (m, rest) = rest.split_once('m').unwrap();
    let s = rest.strip_suffix('s').unwrap();
    h.parse::<i64>().unwrap() * 3600 + m.parse::<i64>().unwrap() * 60 + s.parse::<i64>().unwrap()
}

/// Kubelet credential provider mode, contract-tested against the documented
/// JSON (tests/fixtures/credential-provider, written by hand from the
/// Kubernetes reference; no kubelet runs here): the documented request in,
/// the documented response out — the sink's credentials keyed by the
/// image's registry, `cacheKeyType: Registry`, `cacheDuration` until the
/// token's rotation (20 days here). A request with a service account token
/// gets the same answer and never sees the token echoed.
#[test]
fn credential_provider_answers_the_documented_request_with_the_documented_response() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ci-pull.json");
    rotating_sink(
        &file,
        "prod.ksyunkcr.com",
        Duration::days(30),
        Some(Duration::days(20)),
    );
    let f = file.to_str().unwrap();
    let want: serde_json::Value = serde_json::from_str(&fixture("response.json")).unwrap();
    for request in ["request.json", "request-service-account.json"] {
        let o = run("credential-provider", &["--file", f], &fixture(request));
        assert!(o.status.success(), "{request}: {o:?}");
        let out = stdout(&o);
        assert!(!out.contains("sa-token-never-echoed"), "{out}");
        let mut got: serde_json::Value = serde_json::from_str(&out).unwrap();
        let cache = go_seconds(got["cacheDuration"].as_str().unwrap());
        assert!(
            (20 * 86_400 - 60..=20 * 86_400).contains(&cache),
            "{request}: cacheDuration {} is not until the rotation",
            got["cacheDuration"]
        );
        got["cacheDuration"] = want["cacheDuration"].clone();
        assert_eq!(got, want, "{request}");
    }

    // Another registry: an empty `auth`, not cached (exit 0, as the protocol asks).
    let other = fixture("request.json").replace("prod.ksyunkcr.com", "quay.io");
    let o = run("credential-provider", &["--file", f], &other);
    assert!(o.status.success(), "{o:?}");
    let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(got["auth"], serde_json::json!({}));
    assert_eq!(got["cacheDuration"], "0h0m0s");

    // A request we do not speak: exit 1, the reason on stderr, nothing echoed.
    let old = fixture("request-service-account.json").replace("/v1\"", "/v1alpha1\"");
    let o = run("credential-provider", &["--file", f], &old);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("apiVersion \"credentialprovider.kubelet.k8s.io/v1alpha1\" is not supported")
            && !err.contains("sa-token-never-echoed"),
        "{err}"
    );
    assert!(o.stdout.is_empty());

    // The shipped kubelet config asks for the version we answer, with our command.
    let config = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/kubernetes/credential-provider-config.yaml"),
    )
    .unwrap();
    for line in [
        "kind: CredentialProviderConfig",
        "    apiVersion: credentialprovider.kubelet.k8s.io/v1",
        "      - credential-provider",
    ] {
        assert!(
            config.lines().any(|l| l == line),
            "{line:?} in the shipped config"
        );
    }
}

/// `doctor` reports the same shadowed docker-config sink as `check` (one
/// shared check), as information: the sink works, docker just does not read it.
#[test]
fn doctor_reports_a_docker_config_sink_docker_would_ignore() {
    let dir = tempfile::tempdir().unwrap();
    let docker = dir.path().join("config.json");
    let config = dir.path().join("config.toml");
    // The registry is a closed loopback port: the doctor's reachability
    // probe fails at once and nothing leaves the machine.
    std::fs::write(
        &config,
        format!(
            "[kcr]\nendpoint = \"sim:demo\"\n[[instances]]\nid = \"eb1d0d73-4845-4283-a736-000000000001\"\nname = \"demo\"\nregistry = \"127.0.0.1:1\"\n\
             [state]\npath = \"{}/state.db\"\n\
             [tokens]\n[[tokens.managed]]\nname = \"ci\"\ninstance = \"demo\"\n\
             sinks = [{{ kind = \"docker-config\", path = \"{}\" }}]\n",
            dir.path().display(),
            docker.display()
        ),
    )
    .unwrap();
    let doctor = || {
        let o = Command::new(BIN)
            .args([
                "doctor",
                "--format",
                "json",
                "--config",
                config.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {o:?}"));
        v["local"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["check"] == "docker-config sink")
            .cloned()
            .collect::<Vec<_>>()
    };
    std::fs::write(&docker, r#"{"credsStore": "desktop"}"#).unwrap();
    let found = doctor();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["status"], "info");
    let detail = found[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("credsStore = \"desktop\"")
            && detail.contains("kcr-housekeeper credential-helper"),
        "{detail}"
    );
    std::fs::write(&docker, "{}").unwrap();
    assert_eq!(doctor(), Vec::<serde_json::Value>::new());
}
