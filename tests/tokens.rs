//! Token rotation against the simulator over real HTTP: the real client and
//! engine, time driven by the simulator's clock.

mod common;

use chrono::Duration;
use common::{DEMO_INSTANCE, client_for, demo_head, parse_config, sim, sim_utc};
use kcr_housekeeper::config::Config;
use kcr_housekeeper::kcr::{Client, DescribeInstanceToken, TokenInfo};
use kcr_housekeeper::metrics::Metrics;
use kcr_housekeeper::sim::{SimOptions, Simulator};
use kcr_housekeeper::state::Store;
use kcr_housekeeper::tokens::rotate::{Engine, Settings, TokenOutcome};
use std::path::Path;

const SEED: &str = "6c1f3a52-0d7e-4b1a-9f6e-5a0c2b7d9e01";
const UNMANAGED: [&str; 3] = [
    "0b9d4e17-3c2a-4f58-8e71-2d6a9c5b3f02",
    "d2e7a9c4-61f0-4b3e-a8d5-7f1c0e9b4a03",
    "9a4c7e21-b5d8-4f03-9c6a-1e8b2d7f5c04",
];

/// A config for the demo instance with one managed token and these sinks.
fn config(sim: &Simulator, dir: &Path, sinks: &str, extra: &str) -> Config {
    let text = format!(
        r#"{head}
[tokens]
[[tokens.managed]]
name = "ci-pull"
instance = "demo"
lifetime = "30d"
rotate_before = "10d"
overlap = "24h"
delete_after = "7d"
{extra}
sinks = [{sinks}]
"#,
        head = demo_head(sim, dir),
    );
    parse_config(sim, &text, dir)
}

fn file_sinks(dir: &Path) -> String {
    format!(
        r#"{{ kind = "docker-config", path = "{}" }}, {{ kind = "file", path = "{}", format = "env" }}"#,
        dir.join("config.json").display(),
        dir.join("ci-pull.env").display()
    )
}

struct Run<'a> {
    sim: &'a Simulator,
    client: Client,
    config: Config,
    state: Store,
    metrics: Metrics,
    settings: Settings,
}

impl<'a> Run<'a> {
    fn new(sim: &'a Simulator, config: Config) -> Self {
        let state = Store::open(&config.state.path).unwrap();
        Run {
            sim,
            client: client_for(sim),
            config,
            state,
            metrics: Metrics::new(),
            settings: Settings {
                attempts: 2,
                backoff: std::time::Duration::from_millis(5),
                verify_timeout: std::time::Duration::from_secs(5),
                registry_override: None,
            },
        }
    }

    async fn cycle(&self) -> Vec<TokenOutcome> {
        let sim = self.sim;
        let clock = move || sim_utc(sim);
        let engine = Engine {
            client: &self.client,
            config: &self.config,
            state: &self.state,
            metrics: Some(&self.metrics),
            run_id: None,
            cancel: None,
            clock: &clock,
            settings: self.settings.clone(),
        };
        engine.run().await.expect("cycle runs")
    }
}

async fn tokens(client: &Client) -> Vec<TokenInfo> {
    client
        .list_all(DescribeInstanceToken {
            instance_id: DEMO_INSTANCE.into(),
            marker: None,
            max_results: None,
        })
        .await
        .unwrap()
}

fn token<'t>(all: &'t [TokenInfo], id: &str) -> Option<&'t TokenInfo> {
    all.iter().find(|t| t.token_id == id)
}

/// (username, secret, token id) from the env sink.
fn env_sink(dir: &Path) -> (String, String, String) {
    let text = std::fs::read_to_string(dir.join("ci-pull.env")).unwrap();
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k} missing in {text}"))
            .to_string()
    };
    (get("KCR_USERNAME"), get("KCR_TOKEN"), get("KCR_TOKEN_ID"))
}

/// The simulator's registry answers `GET /v2/` with these credentials.
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

#[tokio::test]
async fn rotates_delivers_a_working_credential_and_retires_the_old_token_on_schedule() {
    let sim = sim(SimOptions {
        log_in_memory: true,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    // A docker config with another registry's login, which must survive.
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"auths": {"other.example.com": {"auth": "b3RoZXI6cGFzcw=="}}, "credsStore": "desktop"}"#,
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::Permissions::from_mode(0o644);
        std::fs::set_permissions(dir.path().join("config.json"), mode).unwrap();
    }
    let run = Run::new(&sim, config(&sim, dir.path(), &file_sinks(dir.path()), ""));

    let out = run.cycle().await;
    assert_eq!(out[0].error, None, "{out:?}");
    let new_id = out[0]
        .rotated_to
        .clone()
        .expect("rotated: the seed expires in 5d < 10d");
    let (user, secret, sink_id) = env_sink(dir.path());
    assert_eq!(sink_id, new_id);
    assert_eq!(
        login_status(&sim, &user, &secret).await,
        200,
        "the sinks hold a working credential"
    );
    let docker: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    let registry = sim.endpoint().trim_start_matches("http://").to_string();
    assert_eq!(docker["credsStore"], "desktop");
    assert_eq!(
        docker["auths"]["other.example.com"]["auth"],
        "b3RoZXI6cGFzcw=="
    );
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD
        .decode(docker["auths"][&registry]["auth"].as_str().unwrap())
        .unwrap();
    assert_eq!(String::from_utf8(auth).unwrap(), format!("{user}:{secret}"));
    // A new file is 0600; an existing one keeps its mode (written 0644 above).
    #[cfg(unix)]
    for (f, want) in [("config.json", 0o644), ("ci-pull.env", 0o600)] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, want, "{f}");
    }

    // The seed token (an earlier installation's) was adopted and stays enabled for the overlap.
    let all = tokens(&run.client).await;
    assert!(token(&all, SEED).unwrap().enable);
    assert!(token(&all, &new_id).unwrap().enable);
    let text = run.metrics.render();
    assert!(
        text.contains(
            "kcr_housekeeper_token_rotations_total{result=\"success\",token=\"ci-pull\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!("token_id=\"{new_id}\"")),
        "expiry of the new token exported"
    );
    assert!(text.contains("kcr_housekeeper_token_rotation_in_progress{token=\"ci-pull\"} 0"));

    // A second cycle right away changes nothing.
    let creates = sim.count("CreateInstanceToken");
    let out = run.cycle().await;
    assert!(out[0].done.is_empty() && out[0].error.is_none(), "{out:?}");
    assert_eq!(sim.count("CreateInstanceToken"), creates);

    // 23 h later: still inside the overlap.
    sim.advance(Duration::hours(23));
    run.cycle().await;
    assert!(token(&tokens(&run.client).await, SEED).unwrap().enable);

    // Past the overlap: the old token is disabled, the new one still works.
    sim.advance(Duration::hours(2));
    let out = run.cycle().await;
    assert_eq!(out[0].error, None, "{out:?}");
    let all = tokens(&run.client).await;
    assert!(!token(&all, SEED).unwrap().enable, "disabled after overlap");
    assert!(token(&all, &new_id).unwrap().enable);
    assert_eq!(login_status(&sim, &user, &secret).await, 200);

    // Six days on: still there (delete_after counts from the disable).
    sim.advance(Duration::days(6));
    run.cycle().await;
    assert!(token(&tokens(&run.client).await, SEED).is_some());

    // Past delete_after: deleted.
    sim.advance(Duration::days(1) + Duration::hours(1));
    run.cycle().await;
    let all = tokens(&run.client).await;
    assert!(token(&all, SEED).is_none(), "deleted after delete_after");
    // Unmanaged tokens are measured, never touched.
    for id in UNMANAGED {
        assert!(token(&all, id).is_some(), "{id} untouched");
    }
    for entry in sim.requests() {
        if let Some(id) = entry.params.get("TokenId") {
            assert!(
                !UNMANAGED.contains(&id.as_str()),
                "{entry:?} touched an unmanaged token"
            );
        }
    }
    let audit = run.state.audit_since(None).unwrap();
    let actions: Vec<(&str, &str)> = audit
        .iter()
        .map(|a| (a.action.as_str(), a.target.as_str()))
        .collect();
    assert_eq!(
        actions,
        vec![
            ("create_token", new_id.as_str()),
            ("disable_token", SEED),
            ("delete_token", SEED)
        ]
    );

    // 20 days after the rotation the new token is inside rotate_before: rotated again.
    sim.advance(Duration::days(13));
    let out = run.cycle().await;
    let newer = out[0].rotated_to.clone().expect("second rotation");
    assert_ne!(newer, new_id);
    let (user2, secret2, _) = env_sink(dir.path());
    assert_eq!(login_status(&sim, &user2, &secret2).await, 200);
    assert!(
        token(&tokens(&run.client).await, &new_id).unwrap().enable,
        "overlap again"
    );
}

#[tokio::test]
async fn a_failing_sink_leaves_the_old_token_in_place_and_no_new_token_behind() {
    let sim = sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), r#"{"auths": {}}"#).unwrap();
    let sinks = format!(
        r#"{}, {{ kind = "exec", command = ["/bin/sh", "-c", "cat >/dev/null; exit 3"] }}"#,
        file_sinks(dir.path())
    );
    let run = Run::new(&sim, config(&sim, dir.path(), &sinks, ""));
    let before = tokens(&run.client).await;
    let out = run.cycle().await;
    let err = out[0].error.clone().expect("the rotation fails");
    assert!(err.contains("exited with"), "{err}");
    assert!(out[0].rotated_to.is_none());
    let after = tokens(&run.client).await;
    assert_eq!(
        after, before,
        "old token enabled, the new one disabled and deleted"
    );
    // The file sinks are as they were: the config restored, the env file never existed.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("config.json")).unwrap(),
        r#"{"auths": {}}"#
    );
    assert!(!dir.path().join("ci-pull.env").exists());
    assert!(
        run.metrics.render().contains(
            "kcr_housekeeper_token_rotations_total{result=\"failure\",token=\"ci-pull\"} 1"
        )
    );
}

#[tokio::test]
async fn a_refused_login_leaves_the_old_token_in_place() {
    // A registry that refuses every login.
    let refuser = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = refuser.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = refuser.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(
                    b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
        }
    });
    let sim = sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut run = Run::new(&sim, config(&sim, dir.path(), &file_sinks(dir.path()), ""));
    run.settings.registry_override = Some(format!("http://{addr}"));
    let before = tokens(&run.client).await;
    let out = run.cycle().await;
    let err = out[0].error.clone().expect("verification fails");
    assert!(
        err.contains("refused the new credentials (HTTP 401)"),
        "{err}"
    );
    assert_eq!(tokens(&run.client).await, before);
    assert!(!dir.path().join("ci-pull.env").exists(), "sink put back");
    assert!(!dir.path().join("config.json").exists(), "sink put back");
}

#[tokio::test]
async fn a_sink_in_a_missing_directory_fails_before_any_token_is_created() {
    let sim = sim(SimOptions {
        log_in_memory: true,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no/such/dir/ci-pull.env");
    let sinks = format!(r#"{{ kind = "file", path = "{}" }}"#, missing.display());
    let run = Run::new(&sim, config(&sim, dir.path(), &sinks, ""));
    let out = run.cycle().await;
    let err = out[0].error.clone().expect("fails");
    assert!(
        err.contains(&dir.path().join("no/such/dir").display().to_string()),
        "{err}"
    );
    assert_eq!(sim.count("CreateInstanceToken"), 0);
}

#[tokio::test]
async fn an_ambiguous_create_is_found_by_its_rotation_id_and_discarded() {
    use kcr_housekeeper::kcr::{CreateInstanceToken, TokenLifetime};
    use kcr_housekeeper::state::RotationRecord;
    use kcr_housekeeper::tokens::planner::desc;
    let sim = sim(SimOptions::default()).await;
    // New tokens take 30 s to show up in listings.
    sim.world(|w| w.token_list_delay = chrono::Duration::seconds(30));
    let dir = tempfile::tempdir().unwrap();
    let run = Run::new(&sim, config(&sim, dir.path(), &file_sinks(dir.path()), ""));
    // A previous cycle journaled `creating`, the create succeeded, the answer was lost.
    let now = sim_utc(&sim);
    run.state
        .journal_put(&[RotationRecord {
            rotation_id: "r-lost".into(),
            token_name: "ci-pull".into(),
            instance: "demo".into(),
            token_id: None,
            previous_token_id: None,
            step: "creating".into(),
            expires_at: None,
            created_at: now,
            updated_at: now,
            error: Some("create outcome unknown: timeout".into()),
        }])
        .unwrap();
    let lost = run
        .client
        .call(&CreateInstanceToken {
            instance_id: DEMO_INSTANCE.into(),
            lifetime: TokenLifetime::Days(30),
            desc: Some(desc("ci-pull", "r-lost")),
        })
        .await
        .unwrap()
        .token_id;
    // Not listed yet: the cycle waits rather than starting a second rotation.
    let out = run.cycle().await;
    assert!(
        out[0].rotated_to.is_none() && out[0].error.is_none(),
        "{out:?}"
    );
    assert_eq!(tokens(&run.client).await.len(), 4);
    // Listed now: discarded (its secret is lost), and a fresh rotation delivered.
    sim.advance(Duration::seconds(31));
    let out = run.cycle().await;
    assert_eq!(out[0].error, None, "{out:?}");
    assert!(
        out[0].done[0].starts_with(&format!("discard token {lost}")),
        "{out:?}"
    );
    let new_id = out[0].rotated_to.clone().expect("rotated");
    sim.advance(Duration::seconds(31));
    let all = tokens(&run.client).await;
    assert!(token(&all, &lost).is_none(), "the lost token is gone");
    assert!(token(&all, &new_id).unwrap().enable);
    let (user, secret, _) = env_sink(dir.path());
    assert_eq!(login_status(&sim, &user, &secret).await, 200);
}

#[tokio::test]
async fn plan_changes_nothing_and_says_what_and_when() {
    let sim = sim(SimOptions {
        log_in_memory: true,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let run = Run::new(&sim, config(&sim, dir.path(), &file_sinks(dir.path()), ""));
    let clock = || sim_utc(&sim);
    let engine = Engine {
        client: &run.client,
        config: &run.config,
        state: &run.state,
        metrics: None,
        run_id: None,
        cancel: None,
        clock: &clock,
        settings: run.settings.clone(),
    };
    let plans = engine.plan().await.unwrap();
    assert_eq!(plans[0].steps.len(), 1);
    assert!(
        plans[0].steps[0]
            .describe()
            .starts_with("rotate: no delivered token yet")
    );
    assert!(
        sim.requests()
            .iter()
            .all(|e| e.action.as_deref() == Some("DescribeInstanceToken")),
        "a plan only reads"
    );
    run.cycle().await;
    let plans = engine.plan().await.unwrap();
    let upcoming: Vec<&str> = plans[0].upcoming.iter().map(|u| u.what.as_str()).collect();
    assert!(
        upcoming[0].starts_with(&format!("disable token {SEED}")),
        "{upcoming:?}"
    );
    assert!(upcoming[1].starts_with("rotate"), "{upcoming:?}");
}

/// A registry that answers `/v2/` with a Bearer challenge (the Docker token
/// protocol, as Harbor does): the login follows it to the realm with the same
/// Basic credentials, and only the realm's answer decides.
#[tokio::test]
async fn login_follows_a_bearer_challenge_to_its_realm() {
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::IntoResponse;
    use kcr_housekeeper::tokens::verify::{VerifyError, login};
    use secrecy::SecretString;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let realm = format!("http://{addr}/service/token");
    let app = axum::Router::new()
        .route(
            "/v2/",
            axum::routing::get(move || {
                let realm = realm.clone();
                async move {
                    (
                        StatusCode::UNAUTHORIZED,
                        [(
                            header::WWW_AUTHENTICATE,
                            format!(r#"Bearer realm="{realm}",service="harbor-registry""#),
                        )],
                    )
                        .into_response()
                }
            }),
        )
        .route(
            "/service/token",
            axum::routing::get(|headers: HeaderMap, uri: axum::http::Uri| async move {
                use base64::Engine as _;
                let good = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode("robot:right-secret")
                );
                let authorized = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    == Some(good.as_str());
                let service = uri
                    .query()
                    .is_some_and(|q| q.contains("service=harbor-registry"));
                if authorized && service {
                    (StatusCode::OK, r#"{"token":"t"}"#).into_response()
                } else {
                    StatusCode::UNAUTHORIZED.into_response()
                }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let base = format!("http://{addr}");
    let t = std::time::Duration::from_secs(5);
    login(&base, "robot", &SecretString::from("right-secret"), t)
        .await
        .expect("the realm accepts the credentials");
    let refused = login(&base, "robot", &SecretString::from("wrong"), t).await;
    assert!(
        matches!(refused, Err(VerifyError::Refused { status: 401, .. })),
        "{refused:?}"
    );
}
