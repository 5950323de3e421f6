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
        let state = Store::open(config.state.sqlite_path().unwrap()).unwrap();
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
                ..Settings::default()
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
            metrics: &self.metrics,
            run_id: None,
            cancel: &Default::default(),
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

/// Defect 2 (and 7): an exec sink cannot be undone, so a token an exec
/// consumer may have received is never discarded: it stays enabled until a
/// newer rotation supersedes it normally; the file sinks are put back; the
/// next attempt backs off instead of creating a token every cycle.
#[tokio::test]
async fn a_failing_exec_sink_keeps_the_token_it_may_have_received_and_backs_off() {
    let sim = sim(SimOptions {
        log_in_memory: true,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), r#"{"auths": {}}"#).unwrap();
    let received = dir.path().join("received.json");
    let sinks = format!(
        r#"{}, {{ kind = "exec", command = ["/bin/sh", "-c", "cat > {}"] }}, {{ kind = "exec", command = ["/bin/sh", "-c", "cat >/dev/null; exit 3"] }}"#,
        file_sinks(dir.path()),
        received.display()
    );
    let run = Run::new(&sim, config(&sim, dir.path(), &sinks, ""));
    let before = tokens(&run.client).await;
    let out = run.cycle().await;
    let err = out[0].error.clone().expect("the rotation fails");
    assert!(err.contains("exited with"), "{err}");
    assert!(out[0].rotated_to.is_none());
    // The first exec consumer got the new token: it must still work.
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&received).unwrap()).unwrap();
    let kept = doc["token_id"].as_str().unwrap().to_string();
    let after = tokens(&run.client).await;
    assert_eq!(after.len(), before.len() + 1, "{after:?}");
    assert!(token(&after, &kept).unwrap().enable, "kept, not discarded");
    assert_eq!(
        login_status(
            &sim,
            doc["username"].as_str().unwrap(),
            doc["token"].as_str().unwrap()
        )
        .await,
        200,
        "the exec consumer's credential works"
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
    // The next cycle does not create another token: it backs off.
    let creates = sim.count("CreateInstanceToken");
    let out = run.cycle().await;
    let err = out[0].error.clone().unwrap_or_default();
    assert!(err.contains("backing off until"), "not a success: {out:?}");
    assert_eq!(sim.count("CreateInstanceToken"), creates, "{out:?}");
    assert!(token(&tokens(&run.client).await, &kept).unwrap().enable);
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
    let sim = sim(SimOptions {
        log_in_memory: true,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ran = dir.path().join("exec-ran");
    let sinks = format!(
        r#"{}, {{ kind = "exec", command = ["/bin/sh", "-c", "cat >/dev/null; touch {}"] }}"#,
        file_sinks(dir.path()),
        ran.display()
    );
    let cfg = config(&sim, dir.path(), &sinks, "");
    let mut run = Run::new(&sim, cfg.clone());
    run.settings.registry_override = Some(format!("http://{addr}"));
    run.settings.retry_base = std::time::Duration::from_secs(15 * 60);
    let before = tokens(&run.client).await;
    let out = run.cycle().await;
    let err = out[0].error.clone().expect("verification fails");
    assert!(
        err.contains("refused the new credentials (HTTP 401)"),
        "{err}"
    );
    assert_eq!(tokens(&run.client).await, before);
    // Defect 2: verified before delivering anywhere: no sink ever saw the refused token.
    assert!(!ran.exists(), "the exec sink never ran");
    assert!(!dir.path().join("ci-pull.env").exists(), "never written");
    assert!(!dir.path().join("config.json").exists(), "never written");

    // Defect 7: the failure backs off (15 min, then 30 min, ...), journaled across restarts.
    let creates = || sim.count("CreateInstanceToken");
    assert_eq!(creates(), 1);
    run.cycle().await;
    assert_eq!(creates(), 1, "no new token right after a failure");
    sim.advance(Duration::minutes(14));
    let restarted = {
        let mut r = Run::new(&sim, cfg.clone());
        r.settings = run.settings.clone();
        r
    };
    restarted.cycle().await;
    assert_eq!(creates(), 1, "the backoff survives a restart");
    let clock = || sim_utc(&sim);
    let engine = Engine {
        client: &restarted.client,
        config: &restarted.config,
        state: &restarted.state,
        metrics: &kcr_housekeeper::metrics::Metrics::new(),
        run_id: None,
        cancel: &Default::default(),
        clock: &clock,
        settings: restarted.settings.clone(),
    };
    let plan = engine.plan().await.unwrap();
    let next = plan[0].backoff_until.expect("the plan says when");
    assert!(
        (next - sim_utc(&sim)).num_seconds().abs() <= 61,
        "next attempt in about a minute: {next}"
    );
    assert!(plan[0].steps.is_empty(), "{:?}", plan[0].steps);
    sim.advance(Duration::minutes(2));
    restarted.cycle().await;
    assert_eq!(creates(), 2, "tried again once the backoff ended");
    sim.advance(Duration::minutes(20));
    restarted.cycle().await;
    assert_eq!(creates(), 2, "the second failure doubles the wait");
    sim.advance(Duration::minutes(11));
    restarted.cycle().await;
    assert_eq!(creates(), 3);
    assert_eq!(
        tokens(&run.client).await,
        before,
        "each refused token discarded"
    );
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
    use kcr_housekeeper::tokens::journal::{RotationRecord, Step};
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
            step: Step::Creating,
            expires_at: None,
            created_at: now,
            updated_at: now,
            error: Some("create outcome unknown: timeout".into()),
            absent_since: None,
        }])
        .unwrap();
    let lost = run
        .client
        .call(&CreateInstanceToken {
            instance_id: DEMO_INSTANCE.into(),
            lifetime: TokenLifetime::Days(30),
            desc: Some(desc("ci-pull", &run.state.install_id().unwrap(), "r-lost")),
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
        metrics: &kcr_housekeeper::metrics::Metrics::new(),
        run_id: None,
        cancel: &Default::default(),
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

/// Defect 6: two installations (separate state) managing the same name on
/// one instance never touch each other's tokens: each sees the other's as
/// foreign (plan and metric), and both credentials keep working past the
/// overlap and delete_after.
#[tokio::test]
async fn two_installations_of_one_name_leave_each_other_alone() {
    let sim = sim(SimOptions {
        log_in_memory: true,
        ..Default::default()
    })
    .await;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Run::new(&sim, config(&sim, da.path(), &file_sinks(da.path()), ""));
    let b = Run::new(&sim, config(&sim, db.path(), &file_sinks(db.path()), ""));
    assert_ne!(a.state.install_id().unwrap(), b.state.install_id().unwrap());
    let ta = a.cycle().await[0].rotated_to.clone().expect("a rotates");
    let tb = b.cycle().await[0].rotated_to.clone().expect("b rotates");
    for _ in 0..3 {
        sim.advance(Duration::days(4));
        for run in [&a, &b] {
            let out = run.cycle().await;
            assert_eq!(out[0].error, None, "{out:?}");
        }
    }
    let all = tokens(&a.client).await;
    assert!(token(&all, &ta).unwrap().enable, "a's token untouched by b");
    assert!(token(&all, &tb).unwrap().enable, "b's token untouched by a");
    for dir in [da.path(), db.path()] {
        let (user, secret, _) = env_sink(dir);
        assert_eq!(login_status(&sim, &user, &secret).await, 200);
    }
    // Only the seed (the old format, older than both) was retired.
    assert!(token(&all, SEED).is_none());
    for e in sim.requests() {
        if let Some(id) = e.params.get("TokenId") {
            assert_eq!(id, SEED, "{e:?}: only the seed is ever disabled or deleted");
        }
    }
    let text = a.metrics.render();
    assert!(
        text.contains("kcr_housekeeper_token_foreign{instance=\"demo\",token=\"ci-pull\"} 1"),
        "{text}"
    );
    let clock = || sim_utc(&sim);
    let engine = Engine {
        client: &a.client,
        config: &a.config,
        state: &a.state,
        metrics: &kcr_housekeeper::metrics::Metrics::new(),
        run_id: None,
        cancel: &Default::default(),
        clock: &clock,
        settings: a.settings.clone(),
    };
    let plan = engine.plan().await.unwrap();
    assert_eq!(plan[0].foreign.len(), 1);
    assert_eq!(plan[0].foreign[0].token_id, tb);
}

/// Defect 9: the registry lists new tokens later than list_lag: the
/// delivered token is neither replaced nor forgotten on one missed listing,
/// and once listed it is retired on schedule like any other.
#[tokio::test]
async fn listing_lag_beyond_list_lag_neither_replaces_nor_forgets_a_delivered_token() {
    let sim = sim(SimOptions {
        log_in_memory: true,
        ..Default::default()
    })
    .await;
    // list_lag defaults to 2 minutes; the registry takes 3 to list a new token.
    sim.world(|w| w.token_list_delay = chrono::Duration::minutes(3));
    let dir = tempfile::tempdir().unwrap();
    let run = Run::new(&sim, config(&sim, dir.path(), &file_sinks(dir.path()), ""));
    let t1 = run.cycle().await[0].rotated_to.clone().expect("rotated");
    for _ in 0..3 {
        sim.advance(Duration::seconds(150));
        let out = run.cycle().await;
        assert_eq!(out[0].error, None, "{out:?}");
        assert_eq!(sim.count("CreateInstanceToken"), 1, "not replaced: {out:?}");
    }
    // Listed now. Rotate again later: t1 must be retired, not forgotten.
    sim.advance(Duration::days(21));
    let out = run.cycle().await;
    let t2 = out[0].rotated_to.clone().expect("second rotation");
    for _ in 0..4 {
        sim.advance(Duration::seconds(150));
        run.cycle().await;
    }
    sim.advance(Duration::days(1) + Duration::hours(1));
    run.cycle().await;
    let all = tokens(&run.client).await;
    assert!(
        !token(&all, &t1).unwrap().enable,
        "t1 disabled after the overlap"
    );
    assert_eq!(env_sink(dir.path()).2, t2);
    sim.advance(Duration::days(8));
    run.cycle().await;
    assert!(
        token(&tokens(&run.client).await, &t1).is_none(),
        "t1 deleted"
    );
}

/// Defect 10: a managed token moved to another instance: the old instance's
/// token is retired there (disabled after the overlap, then deleted).
#[tokio::test]
async fn moving_a_token_to_another_instance_retires_the_old_one() {
    let sim = sim(SimOptions::default()).await;
    const SECOND: &str = "eb1d0d73-4845-4283-a736-0000000000b2";
    sim.world(|w| {
        let mut i = w.instances[0].clone();
        i.id = SECOND.into();
        i.name = "second".into();
        i.tokens.clear();
        w.instances.push(i);
    });
    let dir = tempfile::tempdir().unwrap();
    let first = config(&sim, dir.path(), &file_sinks(dir.path()), "");
    let t_old = Run::new(&sim, first.clone()).cycle().await[0]
        .rotated_to
        .clone()
        .unwrap();
    // The same name, now on the second instance (the demo instance stays configured).
    let head = demo_head(&sim, dir.path());
    let text = format!(
        "{head}[[instances]]\nid = \"{SECOND}\"\nname = \"second\"\nregistry = \"{}\"\n\
         [tokens]\n[[tokens.managed]]\nname = \"ci-pull\"\ninstance = \"second\"\nlifetime = \"30d\"\n\
         rotate_before = \"10d\"\noverlap = \"24h\"\ndelete_after = \"7d\"\nsinks = [{}]\n",
        sim.endpoint().trim_start_matches("http://"),
        file_sinks(dir.path())
    );
    let run = Run::new(&sim, parse_config(&sim, &text, dir.path()));
    let out = run.cycle().await;
    let t_new = out[0]
        .rotated_to
        .clone()
        .expect("rotated on the second instance");
    let on = |inst: &str| {
        let inst = inst.to_string();
        sim.world(move |w| {
            w.instances
                .iter()
                .find(|i| i.id == inst)
                .unwrap()
                .tokens
                .iter()
                .map(|t| (t.id.clone(), t.enable))
                .collect::<Vec<_>>()
        })
    };
    assert!(on(SECOND).contains(&(t_new.clone(), true)));
    assert!(
        on(DEMO_INSTANCE).contains(&(t_old.clone(), true)),
        "inside the overlap"
    );
    sim.advance(Duration::hours(25));
    let out = run.cycle().await;
    assert_eq!(out[0].error, None, "{out:?}");
    assert!(
        on(DEMO_INSTANCE).contains(&(t_old.clone(), false)),
        "disabled on its own instance: {out:?}"
    );
    sim.advance(Duration::days(7) + Duration::hours(1));
    run.cycle().await;
    assert!(
        !on(DEMO_INSTANCE).iter().any(|(id, _)| *id == t_old),
        "deleted on its own instance"
    );
    let (user, secret, id) = env_sink(dir.path());
    assert_eq!(id, t_new);
    assert_eq!(login_status(&sim, &user, &secret).await, 200);
}

/// Defect 14: one `apply` carries out every step due now, including those
/// an earlier step made due (here: adopting an earlier version's token that
/// was already disabled, whose `disable` record is then due).
#[tokio::test]
async fn one_apply_leaves_nothing_due_now() {
    let sim = sim(SimOptions::default()).await;
    sim.world(|w| {
        w.instances[0]
            .tokens
            .iter_mut()
            .find(|t| t.id == SEED)
            .unwrap()
            .enable = false;
    });
    let dir = tempfile::tempdir().unwrap();
    let run = Run::new(&sim, config(&sim, dir.path(), &file_sinks(dir.path()), ""));
    let out = run.cycle().await;
    assert_eq!(out[0].error, None, "{out:?}");
    let clock = || sim_utc(&sim);
    let engine = Engine {
        client: &run.client,
        config: &run.config,
        state: &run.state,
        metrics: &kcr_housekeeper::metrics::Metrics::new(),
        run_id: None,
        cancel: &Default::default(),
        clock: &clock,
        settings: run.settings.clone(),
    };
    let plan = engine.plan().await.unwrap();
    let due: Vec<String> = plan[0].steps.iter().map(|s| s.describe()).collect();
    assert!(
        due.is_empty(),
        "still due after one apply: {due:?} (did: {out:?})"
    );
}

/// Defect 11: `check` computes the real Desc length (prefix, name, install
/// id, rotation id) and refuses a name that would exceed 256 bytes, naming
/// the file, line and key.
#[test]
fn a_name_too_long_for_the_desc_is_refused_with_file_line_and_key() {
    use kcr_housekeeper::tokens::planner::{DESC_MAX, MAX_NAME_LEN, desc_len};
    assert_eq!(desc_len(MAX_NAME_LEN), DESC_MAX);
    let text = |n: usize| {
        format!(
            "[kcr]\nendpoint = \"sim:demo\"\n[[instances]]\nid = \"i\"\nname = \"prod\"\nregistry = \"r\"\n\
             [tokens]\n[[tokens.managed]]\nname = \"{}\"\ninstance = \"prod\"\n\
             sinks = [{{ kind = \"file\", path = \"/tmp/x.env\" }}]\n",
            "n".repeat(n)
        )
    };
    let parse =
        |t: &str| kcr_housekeeper::config::parse(t, "tokens.toml", Path::new("."), &|_: &str| None);
    assert!(parse(&text(MAX_NAME_LEN)).is_ok());
    let err = parse(&text(MAX_NAME_LEN + 1)).unwrap_err().to_string();
    assert!(err.contains("tokens.toml:9"), "{err}");
    assert!(err.contains("tokens.managed[0].name"), "{err}");
    assert!(
        err.contains(&format!("would be {} bytes", DESC_MAX + 1)),
        "{err}"
    );
}
