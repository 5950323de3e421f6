//! Step 9 items 2 and 7: a registry the KCR instance's external endpoint
//! does not open to this host stops a token rotation before any
//! CreateInstanceToken, through the real binary; an open one rotates.

mod common;

use common::{demo_bin, demo_head, sim};
use kcr_housekeeper::sim::{SimOptions, Simulator};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn write_config(sim: &Simulator, dir: &Path, extra: &str) -> std::path::PathBuf {
    let text = format!(
        "{head}{extra}\n[tokens]\nlist_lag = \"2s\"\n[[tokens.managed]]\nname = \"ci-pull\"\ninstance = \"demo\"\n\
         lifetime = \"30d\"\nrotate_before = \"10d\"\n\
         sinks = [ {{ kind = \"file\", path = \"{dir}/ci-pull.env\", format = \"env\" }} ]\n",
        head = demo_head(sim, dir),
        dir = dir.display()
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn binary(sim: &Simulator, args: &[&str], config: &Path) -> Command {
    let mut cmd = demo_bin(sim, args);
    cmd.arg("--config").arg(config);
    cmd
}

fn apply_tokens(sim: &Simulator, config: &Path) -> Output {
    binary(sim, &["apply", "tokens", "--yes"], config)
        .output()
        .unwrap()
}

async fn closed_sim() -> Simulator {
    let sim = sim(SimOptions::default()).await;
    sim.world(|w| w.instances[0].external_endpoint.opened = false);
    sim
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_endpoint_fails_the_rotation_before_any_token_is_created() {
    let sim = closed_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), "");
    let out = apply_tokens(&sim, &config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert_eq!(sim.count("CreateInstanceToken"), 0, "no token created");
    let text = format!("{stdout}{stderr}");
    let host = sim.endpoint().trim_start_matches("http://").to_string();
    assert!(text.contains(&host), "names the host: {text}");
    assert!(text.contains("外网访问"), "names the KCR setting: {text}");
    assert!(
        text.contains("DescribeExternalEndpoint: Closed"),
        "tells the endpoint's status: {text}"
    );
    assert!(!dir.path().join("ci-pull.env").exists(), "no sink written");
    // The probe was anonymous and refused (403), never a login attempt.
    let v2: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|e| e.path.starts_with("/v2"))
        .collect();
    assert!(
        !v2.is_empty() && v2.iter().all(|e| e.status == 403),
        "{v2:?}"
    );

    // The backoff applies: the next run does not try the rotation again at
    // once. (A run may still probe anonymously once for
    // `kcr_housekeeper_token_registry_reachable`, never with credentials.)
    let again = apply_tokens(&sim, &config);
    let again_text = format!(
        "{}{}",
        String::from_utf8_lossy(&again.stdout),
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(again.status.code(), Some(1), "{again_text}");
    assert!(again_text.contains("backing off"), "{again_text}");
    assert_eq!(sim.count("CreateInstanceToken"), 0);
    let v2_again: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|e| e.path.starts_with("/v2"))
        .collect();
    assert!(
        v2_again.len() <= v2.len() + 1 && v2_again.iter().all(|e| e.status == 403),
        "backing off: at most the gauge's one anonymous probe: {v2_again:?}"
    );
}

/// Review finding 14: the gauge was refreshed only when a rotation was
/// attempted, so between rotations (weeks) it kept whatever the last one
/// saw. Every tokens run probes anonymously — here in dry-run, where no
/// rotation is ever attempted — and nothing is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tokens_run_refreshes_the_reachability_gauge_without_rotating() {
    use kcr_housekeeper::jobs::{Job, JobContext};
    let sim = closed_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(write_config(&sim, dir.path(), ""))
        .unwrap()
        .replace("[tokens]\n", "[tokens]\nmode = \"dry-run\"\n");
    assert!(text.contains("mode = \"dry-run\""));
    let config = std::sync::Arc::new(common::parse_config(&sim, &text, dir.path()));
    let state = kcr_housekeeper::state::Store::open(config.state.sqlite_path().unwrap()).unwrap();
    let metrics = std::sync::Arc::new(kcr_housekeeper::metrics::Metrics::new());
    let gauge = |m: &kcr_housekeeper::metrics::Metrics| -> Option<String> {
        m.render()
            .lines()
            .find_map(|l| {
                l.strip_prefix("kcr_housekeeper_token_registry_reachable{token=\"ci-pull\"} ")
            })
            .map(str::to_owned)
    };
    let mut probes = 0;
    for (opened, want) in [(false, "0"), (true, "1"), (false, "0")] {
        sim.world(|w| w.instances[0].external_endpoint.opened = opened);
        let ctx = JobContext {
            client: common::client_for(&sim),
            config: config.clone(),
            state: state.clone(),
            metrics: metrics.clone(),
            cancel: Default::default(),
            run_id: Some(
                state
                    .start_run("tokens", "test", chrono::Utc::now())
                    .unwrap(),
            ),
            inventory: Default::default(),
            trigger: kcr_housekeeper::jobs::Trigger::Api,
            clock: kcr_housekeeper::jobs::system_clock(),
            watch: std::sync::Arc::new(kcr_housekeeper::jobs::Unwatched),
        };
        let result = kcr_housekeeper::tokens::TokensJob.run(&ctx).await;
        assert!(result.is_ok(), "dry-run: {result:?}");
        assert_eq!(gauge(&metrics).as_deref(), Some(want), "opened = {opened}");
        let v2: Vec<_> = sim
            .requests()
            .into_iter()
            .filter(|e| e.path.starts_with("/v2"))
            .collect();
        assert_eq!(v2.len(), probes + 1, "one anonymous probe per run: {v2:?}");
        probes = v2.len();
    }
    assert_eq!(sim.count("CreateInstanceToken"), 0, "nothing rotated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_exports_the_registry_as_unreachable() {
    let sim = closed_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        &sim,
        dir.path(),
        "[server]\nlisten = \"127.0.0.1:0\"\n[scheduler]\nrun_on_start = true\njitter = \"0s\"",
    );
    let log_path = dir.path().join("daemon.log");
    let mut child = binary(&sim, &["run"], &config)
        .stdout(std::fs::File::create(dir.path().join("daemon.out")).unwrap())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let listen = loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("no tokens run within 30 s: {log}");
        }
        let listen = log
            .lines()
            .find(|l| l.contains("kcr-housekeeper ready"))
            .and_then(|l| l.split("listen=").nth(1))
            .map(|rest| rest.split_whitespace().next().unwrap().to_string());
        if let Some(listen) = listen
            && log.contains("job=\"tokens\"")
            && log.contains("result=\"failure\"")
        {
            break listen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let metrics = reqwest::get(format!("http://{listen}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        metrics.contains("kcr_housekeeper_token_registry_reachable{token=\"ci-pull\"} 0"),
        "{metrics}"
    );
    assert_eq!(sim.count("CreateInstanceToken"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_endpoint_rotates() {
    let sim = sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), "");
    let out = apply_tokens(&sim, &config);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sim.count("CreateInstanceToken"), 1);
    let env = std::fs::read_to_string(dir.path().join("ci-pull.env")).unwrap();
    assert!(env.contains("KCR_TOKEN_ID="), "delivered");
    // One anonymous probe (401) before the create, then the login (200).
    let v2: Vec<u16> = sim
        .requests()
        .into_iter()
        .filter(|e| e.path.starts_with("/v2"))
        .map(|e| e.status)
        .collect();
    assert_eq!(v2[..2], [401, 200], "{v2:?}");
    // After the run, at most the gauge's anonymous probe.
    assert!(v2[2..].iter().all(|s| *s == 401) && v2.len() <= 3, "{v2:?}");
}

/// A registry that answers every request 200, credentials or not (review
/// finding: a login there "verified" any token and the old one was retired).
async fn open_to_anyone() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let _ = conn
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
                    )
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_lets_anyone_in_cannot_verify_a_token_so_none_is_created() {
    let sim = sim(SimOptions::default()).await;
    let stub = open_to_anyone().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path(), "");
    let text = std::fs::read_to_string(&config).unwrap();
    let registry = sim.endpoint().trim_start_matches("http://").to_string();
    std::fs::write(
        &config,
        text.replace(
            &format!("registry = \"{registry}\""),
            &format!("registry = \"{stub}\""),
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking({
        let config = config.clone();
        let cmd = binary(&sim, &["apply", "tokens", "--yes"], &config);
        move || {
            let mut cmd = cmd;
            cmd.output().unwrap()
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(sim.count("CreateInstanceToken"), 0, "{stderr}");
    assert!(
        stderr.contains("without credentials, so a login cannot prove a token"),
        "{stderr}"
    );
    assert!(!dir.path().join("ci-pull.env").exists());
}
