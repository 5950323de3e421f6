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
    let secret = SecretString::from(SECRET);
    let d = Delivery {
        registry,
        username: "kcr-user",
        secret: &secret,
        token_id: "tok-1",
        expires_at: Some(Utc::now() + expires_in),
    };
    std::fs::write(path, file_content(FileFormat::Json, &d)).unwrap();
}

fn helper(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .arg("credential-helper")
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
