//! The real daemon binary end to end against the simulator: HTTP endpoints,
//! the job trigger's auth, signals, reload, overlap, and bad input.

mod common;

use common::*;
use kcr_housekeeper::sim::{Faults, SimOptions, Simulator};
use secrecy::ExposeSecret;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_kcr-housekeeper");
const ADMIN: &str = "admin-token-for-tests-0123456789";

struct Daemon {
    child: Child,
    base: String,
    logs: mpsc::Receiver<String>,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Wait for a log line containing `needle` (JSON logs).
    fn wait_log(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.logs.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("no log line containing {needle:?} within {within:?}");
    }

    fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config_text(sim: &Simulator, state: &Path, extra: &str) -> String {
    format!(
        "[kcr]\nendpoint = \"{}\"\naccess_key_id = \"{}\"\nsecret_access_key = {{ env = \"TEST_SK\" }}\nrequests_per_second = 200\n\
         [[instances]]\nid = \"{DEMO_INSTANCE}\"\nname = \"demo\"\nregistry = \"demo.ksyunkcr.com\"\n\
         [server]\nlisten = \"127.0.0.1:0\"\n{extra}\n\
         [state]\npath = \"{}\"\n[scheduler]\njitter = \"0s\"\nshutdown_timeout = \"10s\"\n[log]\nformat = \"json\"\nlevel = \"info\"\n\
         [quota]\nschedule = \"0 0 0 1 1 *\"\n",
        sim.endpoint(),
        sim.credentials().access_key_id,
        state.display()
    )
}

fn start(sim: &Simulator, extra: &str) -> Daemon {
    start_with(sim, extra, &[])
}

/// [`start`] with more environment variables (e.g. a failpoint).
fn start_with(sim: &Simulator, extra: &str, envs: &[(&str, &str)]) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        config_text(sim, &dir.path().join("state/state.db"), extra),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--config", config.to_str().unwrap()])
        .env(
            "TEST_SK",
            sim.credentials().secret_access_key.expose_secret(),
        )
        .env("ADMIN_TOKEN", ADMIN)
        .env_remove("KCR_HOUSEKEEPER_LOG")
        .envs(envs.iter().copied())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut d = Daemon {
        child,
        base: String::new(),
        logs: rx,
        config,
        _dir: dir,
    };
    let ready = d.wait_log("kcr-housekeeper ready", Duration::from_secs(15));
    let v: serde_json::Value = serde_json::from_str(&ready).expect("JSON log line");
    d.base = format!("http://{}", v["listen"].as_str().unwrap());
    d
}

fn get(url: &str) -> (u16, String) {
    let r = reqwest::blocking::get(url).unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

fn post(url: &str, token: Option<&str>) -> (u16, String) {
    let c = reqwest::blocking::Client::new();
    let mut req = c.post(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

/// A tiny parser for the text exposition format: (name, labels, value) per sample.
fn parse_metrics(text: &str) -> Vec<(String, String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("sample without value: {l}"));
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n.to_owned(), rest.trim_end_matches('}').to_owned()),
                None => (series.to_owned(), String::new()),
            };
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "metric name {name}"
            );
            (
                name,
                labels,
                value
                    .parse::<f64>()
                    .unwrap_or_else(|_| panic!("value of {l}")),
            )
        })
        .collect()
}

fn sample(samples: &[(String, String, f64)], name: &str, labels: &str) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| n == name && l == labels)
        .map(|(_, _, v)| *v)
}

/// GET `url` every 100 ms until it answers 200 or `within` has passed: the
/// last answer.
fn poll_200(url: &str, within: Duration) -> (u16, String) {
    let deadline = Instant::now() + within;
    loop {
        let answer = get(url);
        if answer.0 == 200 || Instant::now() > deadline {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(f).join().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn endpoints_metrics_jobs_and_trigger_auth() {
    let sim = sim(SimOptions::default()).await;
    let d = start(&sim, "admin_token = { env = \"ADMIN_TOKEN\" }");
    let base = d.base.clone();
    let d = blocking(move || {
        assert_eq!(get(&format!("{base}/healthz")).0, 200);
        assert_eq!(get(&format!("{base}/readyz")), (200, "ready\n".into()));
        assert_eq!(get(&format!("{base}/nope")).0, 404);
        assert_eq!(get(&format!("{base}/reports/retention/latest")).0, 404);

        // The trigger: no token, a wrong one, then the right one.
        let url = format!("{base}/jobs/quota/run");
        assert_eq!(post(&url, None).0, 401);
        assert_eq!(post(&url, Some("wrong-token-wrong-token")).0, 401);
        assert_eq!(post(&format!("{base}/jobs/nosuch/run"), Some(ADMIN)).0, 404);
        let (status, body) = post(&url, Some(ADMIN));
        assert_eq!(status, 202, "{body}");
        d.wait_log("job run finished", Duration::from_secs(10));

        let (status, text) = get(&format!("{base}/metrics"));
        assert_eq!(status, 200);
        let samples = parse_metrics(&text);
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            sample(
                &samples,
                "kcr_housekeeper_build_info",
                &format!("version=\"{version}\"")
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &samples,
                "kcr_housekeeper_state_backend_up",
                "backend=\"sqlite\""
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &samples,
                "kcr_quota_used",
                "instance=\"demo\",resource=\"namespaces\""
            ),
            Some(8.0)
        );
        assert_eq!(
            sample(
                &samples,
                "kcr_quota_usage_ratio",
                "instance=\"demo\",resource=\"namespaces\""
            ),
            Some(0.8)
        );
        assert_eq!(sample(&samples, "kcr_up", "instance=\"demo\""), Some(1.0));
        assert_eq!(
            sample(
                &samples,
                "kcr_housekeeper_job_runs_total",
                "job=\"quota\",result=\"success\""
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &samples,
                "kcr_housekeeper_api_requests_total",
                "action=\"DescribeInstanceUsage\",code=\"OK\""
            ),
            Some(1.0)
        );
        assert!(sample(&samples, "process_resident_memory_bytes", "").unwrap() > 0.0);
        assert!(
            !text.contains(ADMIN),
            "the admin token never appears in metrics"
        );

        let (status, jobs) = get(&format!("{base}/jobs"));
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&jobs).unwrap();
        let quota = &v["jobs"][0];
        assert_eq!(quota["job"], "quota");
        assert_eq!(quota["schedule"], "0 0 0 1 1 *");
        assert_eq!(quota["last_run"]["result"], "success");
        assert_eq!(quota["last_run"]["trigger"], "api");
        assert!(
            quota["next_run"]
                .as_str()
                .unwrap()
                .contains("-01-01T00:00:00")
        );
        d
    });
    drop(d);
}

#[tokio::test(flavor = "multi_thread")]
async fn trigger_is_disabled_without_an_admin_token() {
    let sim = sim(SimOptions::default()).await;
    let d = start(&sim, "");
    let base = d.base.clone();
    let (status, body) = blocking(move || post(&format!("{base}/jobs/quota/run"), Some(ADMIN)));
    assert_eq!(status, 403);
    assert!(body.contains("no [server] admin_token"));
}

#[tokio::test(flavor = "multi_thread")]
async fn overlapping_triggers_run_the_job_once() {
    let sim = sim_with_faults(Faults {
        latency: Duration::from_millis(800),
        ..Default::default()
    })
    .await;
    let d = start(&sim, "admin_token = { env = \"ADMIN_TOKEN\" }");
    let base = d.base.clone();
    let d = blocking(move || {
        let url = format!("{base}/jobs/quota/run");
        assert_eq!(post(&url, Some(ADMIN)).0, 202);
        let (status, body) = post(&url, Some(ADMIN));
        assert_eq!(status, 409, "{body}");
        assert!(body.contains("already running"));
        d.wait_log("job run finished", Duration::from_secs(10));
        let samples = parse_metrics(&get(&format!("{base}/metrics")).1);
        assert_eq!(
            sample(
                &samples,
                "kcr_housekeeper_job_runs_total",
                "job=\"quota\",result=\"skipped\""
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &samples,
                "kcr_housekeeper_job_runs_total",
                "job=\"quota\",result=\"success\""
            ),
            Some(1.0)
        );
        d
    });
    assert_eq!(sim.count("DescribeInstanceUsage"), 1, "one run, one call");
    drop(d);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_while_a_job_runs_exits_0_after_it_finishes() {
    let sim = sim_with_faults(Faults {
        latency: Duration::from_millis(1500),
        ..Default::default()
    })
    .await;
    let d = start(&sim, "admin_token = { env = \"ADMIN_TOKEN\" }");
    let base = d.base.clone();
    let mut d = blocking(move || {
        let mut d = d;
        assert_eq!(post(&format!("{base}/jobs/quota/run"), Some(ADMIN)).0, 202);
        std::thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        d.signal("TERM");
        let status = d
            .wait_exit(Duration::from_secs(10))
            .expect("exits within shutdown_timeout");
        assert_eq!(status.code(), Some(0));
        assert!(t.elapsed() < Duration::from_secs(10));
        d
    });
    // The running job finished its call rather than being cut off.
    d.wait_log("job run finished", Duration::from_secs(2));
    assert!(d.wait_exit(Duration::from_secs(1)).is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_with_a_broken_config_keeps_the_old_one() {
    let sim = sim(SimOptions::default()).await;
    let d = start(&sim, "");
    let base = d.base.clone();
    let good = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(&d.config, good.replace("[quota]", "[quota]\nbogus_key = 1")).unwrap();
    d.signal("HUP");
    d.wait_log("configuration reload refused", Duration::from_secs(10));
    let b = base.clone();
    let text = blocking(move || get(&format!("{b}/metrics")).1);
    assert_eq!(
        sample(
            &parse_metrics(&text),
            "kcr_housekeeper_config_reload_failures_total",
            ""
        ),
        Some(1.0)
    );
    let b = base.clone();
    assert_eq!(blocking(move || get(&format!("{b}/healthz")).0), 200);
    // A good config is taken: the new schedule shows in /jobs.
    std::fs::write(&d.config, good.replace("0 0 0 1 1 *", "0 0 12 * * *")).unwrap();
    d.signal("HUP");
    d.wait_log("configuration reloaded", Duration::from_secs(10));
    let b = base.clone();
    let jobs = blocking(move || get(&format!("{b}/jobs")).1);
    assert!(jobs.contains("\"schedule\":\"0 0 12 * * *\""), "{jobs}");
}

/// A `[tokens]` section managing one token `name` (its schedule never
/// fires within a test), its sink an env file in `dir`.
fn one_token(dir: &std::path::Path, name: &str) -> String {
    format!(
        "[tokens]\nschedule = \"0 0 0 1 1 *\"\n[[tokens.managed]]\nname = \"{name}\"\ninstance = \"demo\"\nlifetime = \"30d\"\n\
         sinks = [ {{ kind = \"file\", path = \"{}\", format = \"env\" }} ]\n",
        dir.join("ci.env").display()
    )
}

/// Review 7: the tokens' delivery status is cached for 2 s; a reload inside
/// that window showed the old config's tokens under the new config in
/// `/jobs` (and kept their gauges). It is read again for the new config,
/// and says when it was read.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_is_not_answered_from_the_old_configs_delivery_status() {
    let sim = sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = one_token(dir.path(), "ci-old");
    let d = start(&sim, &tokens);
    let base = d.base.clone();
    let jobs = |base: String| -> serde_json::Value {
        let body = blocking(move || get(&format!("{base}/jobs")).1);
        serde_json::from_str(&body).unwrap()
    };
    let before = jobs(base.clone());
    let delivery = &before["token_delivery"];
    assert_eq!(delivery["tokens"][0]["token"], "ci-old", "{before}");
    assert!(delivery["read_at"].is_string(), "{before}");
    let text = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(&d.config, text.replace("ci-old", "ci-new")).unwrap();
    d.signal("HUP");
    d.wait_log("configuration reloaded", Duration::from_secs(10));
    let after = jobs(base.clone());
    let names: Vec<&str> = after["token_delivery"]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["token"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ci-new"], "{after}");
}

/// Review 7: a run history that could not be read showed in `/jobs` as
/// `last_run: null` — "never ran" — with nothing to say it was an error.
#[tokio::test(flavor = "multi_thread")]
async fn jobs_says_when_the_run_history_cannot_be_read() {
    let sim = sim(SimOptions::default()).await;
    let d = start(&sim, "");
    let b = d.base.clone();
    let jobs: serde_json::Value =
        serde_json::from_str(&blocking(move || get(&format!("{b}/jobs")).1)).unwrap();
    assert!(jobs.get("state_error").is_none(), "{jobs}");
    drop(d);
    let d = start_with(
        &sim,
        "",
        &[("KCR_HOUSEKEEPER_FAILPOINT", "server.jobs.runs=error")],
    );
    let b = d.base.clone();
    let (status, body) = blocking(move || get(&format!("{b}/jobs")));
    assert_eq!(status, 200, "{body}");
    let jobs: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        jobs["state_error"]
            .as_str()
            .is_some_and(|e| e.contains("server.jobs.runs")),
        "{jobs}"
    );
}

/// A token whose delivery state cannot be read is listed in `/jobs` with the
/// error and `delivered: null` (unknown), not left out as if not managed.
#[tokio::test(flavor = "multi_thread")]
async fn jobs_lists_a_token_whose_delivery_cannot_be_read_with_the_error() {
    let sim = sim(SimOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = one_token(dir.path(), "ci-pull");
    let d = start_with(
        &sim,
        &tokens,
        &[("KCR_HOUSEKEEPER_FAILPOINT", "tokens.delivery_status=error")],
    );
    let b = d.base.clone();
    let (status, body) = blocking(move || get(&format!("{b}/jobs")));
    assert_eq!(status, 200, "{body}");
    let jobs: serde_json::Value = serde_json::from_str(&body).unwrap();
    let t = &jobs["token_delivery"]["tokens"][0];
    assert_eq!(t["token"], "ci-pull", "{jobs}");
    assert!(t["delivered"].is_null(), "unknown, not false: {jobs}");
    assert!(
        t["error"]
            .as_str()
            .is_some_and(|e| e.contains("tokens.delivery_status")),
        "{jobs}"
    );
}

/// A SIGTERM that arrives while a SIGHUP reload runs stops the daemon once
/// the reload is done: the signal streams outlive each wait.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_a_reload_is_not_lost() {
    let sim = sim(SimOptions::default()).await;
    let mut d = start(&sim, "");
    // The new config reads its secret from a FIFO, so the reload blocks until
    // the test writes it: the SIGTERM surely arrives during the reload.
    let fifo = d.config.with_file_name("secret.fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let text = std::fs::read_to_string(&d.config).unwrap().replace(
        "{ env = \"TEST_SK\" }",
        &format!("{{ file = \"{}\" }}", fifo.display()),
    );
    std::fs::write(&d.config, text).unwrap();
    d.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    d.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    let secret = sim
        .credentials()
        .secret_access_key
        .expose_secret()
        .to_owned();
    std::fs::write(&fifo, secret).unwrap();
    let status = d.wait_exit(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "the daemon did not stop on the SIGTERM that followed a SIGHUP: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_http_gets_4xx_and_the_server_lives_on() {
    let sim = sim(SimOptions::default()).await;
    let d = start(&sim, "");
    let addr = d.base.trim_start_matches("http://").to_owned();
    let base = d.base.clone();
    blocking(move || {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GARBAGE / HTTP/9.9\r\n\x00\x01\r\n\r\n")
            .unwrap();
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
        assert!(buf.starts_with("HTTP/1.1 4"), "{buf:?}");
        assert_eq!(get(&format!("{base}/healthz")).0, 200);
    });
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Defect 29 (Step 7): 150 idle connections used to take 150 file descriptors
/// and break the jobs. Now an idle connection is closed after
/// `header_timeout`, at most `max_connections` are held, and the jobs go on.
#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_are_capped_and_timed_out_and_jobs_keep_running() {
    let sim = sim(SimOptions::default()).await;
    let d = start(
        &sim,
        "max_connections = 4\nheader_timeout = \"2s\"\n\
         [namespaces]\nschedule = \"* * * * * *\"\nmode = \"dry-run\"\n",
    );
    let addr = d.base.trim_start_matches("http://").to_owned();
    let base = d.base.clone();
    let pid = d.child.id();
    let (d, held_fds, baseline) = blocking(move || {
        // One idle connection is closed by the server after the header timeout.
        let mut idle = std::net::TcpStream::connect(&addr).unwrap();
        idle.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        let t = Instant::now();
        let mut buf = [0u8; 64];
        let n = idle.read(&mut buf).unwrap_or(usize::MAX);
        let waited = t.elapsed();
        assert!(
            n == 0 || n == usize::MAX && waited < Duration::from_secs(8),
            "the idle connection was not closed: read {n} bytes"
        );
        assert!(
            waited >= Duration::from_millis(1500) && waited < Duration::from_secs(6),
            "closed after {waited:?}, header_timeout is 2s"
        );

        let baseline = open_fds(pid);
        let flood: Vec<_> = (0..150)
            .map(|_| std::net::TcpStream::connect(&addr).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(1500));
        let held_fds = open_fds(pid);
        while d.logs.try_recv().is_ok() {}
        // The scheduled job still runs (and finishes) while the flood lasts.
        let line = d.wait_log("\"job\":\"namespaces\"", Duration::from_secs(10));
        assert!(line.contains("job run finished"), "{line}");
        assert!(line.contains("\"result\":\"success\""), "{line}");
        drop(flood);
        (d, held_fds, baseline)
    });
    assert!(
        held_fds <= baseline + 4 + 4,
        "150 idle clients took {} descriptors (baseline {baseline}, cap 4)",
        held_fds - baseline
    );
    // Once the idle clients are gone the server answers again at once.
    let (status, _) =
        blocking(move || poll_200(&format!("{base}/healthz"), Duration::from_secs(10)));
    assert_eq!(status, 200);
    drop(d);
}

fn run_once(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let mut c = Command::new(BIN);
    c.args(args);
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_exits_2_with_path_and_cause() {
    let sim = sim(SimOptions::default()).await;
    let sk = sim
        .credentials()
        .secret_access_key
        .expose_secret()
        .to_owned();
    let dir = tempfile::tempdir().unwrap();

    // Port in use.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cfg = dir.path().join("port.toml");
    let text = config_text(&sim, &dir.path().join("s1/state.db"), "").replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    std::fs::write(&cfg, text).unwrap();
    let c = cfg.to_str().unwrap().to_owned();
    let envs_sk = sk.clone();
    let o = blocking(move || run_once(&["run", "--config", &c], &[("TEST_SK", &envs_sk)]));
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("server.listen 127.0.0.1:{port}: cannot listen")),
        "{err}"
    );

    // Unwritable state path.
    let cfg = dir.path().join("state.toml");
    std::fs::write(
        &cfg,
        config_text(&sim, Path::new("/proc/kcr-housekeeper/state.db"), ""),
    )
    .unwrap();
    let c = cfg.to_str().unwrap().to_owned();
    let o = blocking(move || run_once(&["run", "--config", &c], &[("TEST_SK", &sk)]));
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("/proc/kcr-housekeeper"), "{err}");

    // Unreadable config.
    let o = blocking(|| run_once(&["run", "--config", "/nonexistent/config.toml"], &[]));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("/nonexistent/config.toml: cannot read config")
    );
    drop(taken);
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_command_lists_records() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.db");
    let store = kcr_housekeeper::state::Store::open(&state).unwrap();
    let rec = kcr_housekeeper::state::Mutation {
        job: "retention",
        run_id: None,
        instance: "demo",
        action: "delete_tag",
        target: "apps/web:pr-1",
        detail: "rule ci-builds",
    };
    let applied = kcr_housekeeper::state::AuditStatus::Applied;
    store
        .audit_unsent(
            &rec,
            applied,
            None,
            chrono::Utc::now() - chrono::Duration::days(3),
        )
        .unwrap();
    store
        .audit_unsent(&rec, applied, None, chrono::Utc::now())
        .unwrap();
    drop(store);
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!("[kcr]\nendpoint = \"sim:demo\"\n[[instances]]\nid = \"i\"\nname = \"demo\"\nregistry = \"r\"\n[state]\npath = \"{}\"\n", state.display()),
    )
    .unwrap();
    let c = cfg.to_str().unwrap().to_owned();
    let o = blocking(move || {
        run_once(
            &["audit", "--config", &c, "--since", "1d", "--format", "json"],
            &[],
        )
    });
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["target"], "apps/web:pr-1");
    let c = cfg.to_str().unwrap().to_owned();
    let o = blocking(move || run_once(&["audit", "--config", &c], &[]));
    assert!(String::from_utf8_lossy(&o.stdout).contains("2 records"));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Debian's Prometheus scraping `target` every second, with this extra config
/// (`rule_files`, scrape options); killed on drop. Returns it and its API base.
struct Prometheus {
    child: std::process::Child,
    api: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_prometheus(target: &str, rule_files: &str, scrape_options: &str) -> Prometheus {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n{rule_files}scrape_configs:\n  - job_name: kcr-housekeeper\n{scrape_options}    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Prometheus {
        child,
        api: format!("http://127.0.0.1:{port}/api/v1"),
        _dir: dir,
    }
}

fn prometheus_installed() -> bool {
    if Command::new("prometheus").arg("--version").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must install Debian's prometheus package"
    );
    eprintln!("prometheus is not installed; skipping (CI installs it)");
    false
}

/// A real Prometheus (Debian's package) scrapes the daemon; its HTTP API must
/// report the target up and a `kcr_` series.
#[tokio::test(flavor = "multi_thread")]
async fn real_prometheus_scrapes_the_daemon() {
    if !prometheus_installed() {
        return;
    }
    let sim = sim(SimOptions::default()).await;
    let d = start(&sim, "admin_token = { env = \"ADMIN_TOKEN\" }");
    let base = d.base.clone();
    let target = base.trim_start_matches("http://").to_owned();
    blocking(move || {
        assert_eq!(post(&format!("{base}/jobs/quota/run"), Some(ADMIN)).0, 202);
        let prom = start_prometheus(&target, "", "");
        let api = format!("{}/query?query=", prom.api);
        let query = |q: &str| -> Option<serde_json::Value> {
            let r = reqwest::blocking::get(format!("{api}{q}")).ok()?;
            r.json::<serde_json::Value>().ok()
        };
        let mut up = false;
        let mut series = false;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline && !(up && series) {
            if let Some(v) = query("up%7Bjob%3D%22kcr-housekeeper%22%7D") {
                up = v["data"]["result"][0]["value"][1] == "1";
            }
            if let Some(v) = query("kcr_quota_used") {
                series = v["data"]["result"]
                    .as_array()
                    .is_some_and(|a| !a.is_empty());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        drop(prom);
        assert!(up, "Prometheus reports the daemon target up == 1");
        assert!(series, "Prometheus has a kcr_ series from the daemon");
    });
    drop(d);
}

/// Under systemd: READY=1 once serving, watchdog pings from the scheduler loop,
/// STOPPING=1 on SIGTERM. Also: with debug logging, no secret reaches the logs.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn sd_notify_ready_watchdog_and_no_secrets_in_debug_logs() {
    use std::os::unix::net::UnixDatagram;
    let sim = sim(SimOptions::default()).await;
    let sk = sim
        .credentials()
        .secret_access_key
        .expose_secret()
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        config_text(
            &sim,
            &dir.path().join("state.db"),
            "admin_token = { env = \"ADMIN_TOKEN\" }",
        )
        .replace("level = \"info\"", "level = \"debug\"")
        .replace("[scheduler]\n", "[scheduler]\nrun_on_start = true\n"),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--config", cfg.to_str().unwrap()])
        .env("TEST_SK", &sk)
        .env("ADMIN_TOKEN", ADMIN)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "10000000")
        .env_remove("WATCHDOG_PID")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let logs = std::thread::spawn(move || {
        let mut s = String::new();
        BufReader::new(stderr).read_to_string(&mut s).unwrap();
        s
    });
    let pid = child.id().to_string();
    let messages = blocking(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        while !(seen.iter().any(|m: &String| m.contains("READY=1"))
            && seen.iter().any(|m| m.contains("WATCHDOG=1")))
        {
            let n = sock.recv(&mut buf).expect("a notification within 10 s");
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        while !seen.iter().any(|m| m.contains("STOPPING=1")) {
            let n = sock.recv(&mut buf).expect("STOPPING=1 on SIGTERM");
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        seen
    });
    assert!(child.wait().unwrap().success());
    assert!(
        messages.iter().any(|m| m.contains("READY=1")),
        "{messages:?}"
    );
    let logs = logs.join().unwrap();
    assert!(logs.contains("\"level\":\"DEBUG\""), "debug logging was on");
    assert!(logs.contains("job run finished"));
    for secret in [sk.as_str(), ADMIN] {
        assert!(!logs.contains(secret), "a secret reached the logs");
    }
}

/// A daemon whose stderr goes away (the terminal closed, the log pipe's reader
/// died: EPIPE; or started with fd 2 closed: EBADF) keeps running: jobs run
/// and are recorded, HTTP answers, and SIGTERM stops it with exit 0. Its log
/// lines are lost, nothing more (it used to panic and exit 101 on the first
/// line it could not write, through tracing-subscriber's `eprintln!`).
#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_whose_stderr_is_closed_keeps_running_and_stops_with_0() {
    let sim = sim(SimOptions::default()).await;
    let sk = sim
        .credentials()
        .secret_access_key
        .expose_secret()
        .to_owned();
    for closed in ["a pipe with no reader (EPIPE)", "no fd 2 (EBADF)"] {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let cfg = dir.path().join("c.toml");
        std::fs::write(
            &cfg,
            config_text(&sim, &dir.path().join("state.db"), "")
                .replace("127.0.0.1:0\"", &format!("127.0.0.1:{port}\""))
                // Plenty of lines to write, from the first moment on.
                .replace("level = \"info\"", "level = \"debug\"")
                .replace("[scheduler]\n", "[scheduler]\nrun_on_start = true\n"),
        )
        .unwrap();
        let mut cmd = if closed.contains("EPIPE") {
            let mut c = Command::new(BIN);
            c.stderr(Stdio::piped());
            c
        } else {
            // `2>&-`: the daemon starts with file descriptor 2 closed.
            let mut c = Command::new("sh");
            c.args(["-c", "exec \"$0\" \"$@\" 2>&-", BIN]);
            c
        };
        let mut child = cmd
            .args(["run", "--config", cfg.to_str().unwrap()])
            .env("TEST_SK", &sk)
            .env_remove("KCR_HOUSEKEEPER_LOG")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        // The reader goes away at once: every log line meets a closed pipe.
        drop(child.stderr.take());
        let base = format!("http://127.0.0.1:{port}");
        let (jobs, exited) = blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    return (String::new(), Some(status));
                }
                if let Ok(r) = reqwest::blocking::get(format!("{base}/jobs"))
                    && let Ok(text) = r.text()
                    && text.contains("\"result\":\"success\"")
                {
                    // Still alive after its first run and a few more lines.
                    std::thread::sleep(Duration::from_millis(300));
                    assert!(child.try_wait().unwrap().is_none(), "{closed}: died");
                    assert_eq!(get(&format!("{base}/healthz")).0, 200);
                    Command::new("kill")
                        .args(["-TERM", &child.id().to_string()])
                        .status()
                        .unwrap();
                    return (text, child.wait().ok());
                }
                assert!(
                    Instant::now() < deadline,
                    "{closed}: no finished run in 20 s"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        assert!(
            jobs.contains("\"job\":\"quota\""),
            "{closed}: exited early with {exited:?}"
        );
        let status = exited.expect("exit status");
        assert_eq!(status.code(), Some(0), "{closed}: SIGTERM stops it with 0");
    }
}

/// The README's first command: the demo serves metrics, jobs and the retention
/// report (dry-run: nothing deleted), and stops on SIGINT with exit 0.
#[test]
fn demo_serves_the_retention_report_and_stops_on_sigint() {
    let mut child = Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0"])
        .env_remove("KCR_HOUSEKEEPER_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let metrics = loop {
        let line = lines.next().expect("demo prints its URLs").unwrap();
        if let Some(url) = line.strip_prefix("metrics: ") {
            break url.trim().to_owned();
        }
    };
    let base = metrics.trim_end_matches("/metrics").to_owned();
    let (status, report) = poll_200(
        &format!("{base}/reports/retention/latest.json"),
        Duration::from_secs(20),
    );
    assert_eq!(status, 200, "no retention report within 20 s");
    let v: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(v["schema"], "kcr-housekeeper/retention-report/v1");
    assert_eq!(v["mode"], "dry-run");
    assert!(v["summary"]["delete_image"].as_u64().unwrap() > 0);
    let (status, html) = get(&format!("{base}/reports/retention/latest"));
    assert_eq!(status, 200);
    assert!(html.starts_with("<!doctype html>"));
    let (_, md) = get(&format!("{base}/reports/retention/latest.md"));
    assert!(md.starts_with("## Retention report"));
    let samples = parse_metrics(&get(&metrics).1);
    assert!(
        sample(
            &samples,
            "kcr_housekeeper_retention_planned",
            "action=\"delete_image\",instance=\"demo\""
        )
        .unwrap()
            > 0.0
    );
    assert!(
        sample(
            &samples,
            "kcr_housekeeper_retention_deleted_total",
            "action=\"delete_image\",instance=\"demo\""
        )
        .is_none(),
        "dry-run deletes nothing"
    );
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}

/// An instance at 96% of its namespace quota: a real Prometheus that loads the
/// shipped rules (deploy/prometheus) and scrapes the daemon reports the
/// critical quota alert's expression true, and the alert active.
#[tokio::test(flavor = "multi_thread")]
async fn prometheus_with_the_shipped_rules_sees_the_critical_quota_alert() {
    if !prometheus_installed() {
        return;
    }
    let sim = sim(SimOptions::default()).await;
    // 24 of 25 namespaces used: 96 %.
    sim.world(|w| {
        let inst = &mut w.instances[0];
        let template = inst.namespaces.values().next().unwrap().clone();
        let mut n = 0;
        while inst.namespaces.len() < 24 {
            let mut ns = template.clone();
            ns.repos.clear();
            inst.namespaces.insert(format!("extra{n}"), ns);
            n += 1;
        }
        inst.namespace_quota = 25;
    });
    let d = start(&sim, "admin_token = { env = \"ADMIN_TOKEN\" }");
    let base = d.base.clone();
    let target = base.trim_start_matches("http://").to_owned();
    let rules =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/kcr-housekeeper.rules.yml");
    blocking(move || {
        assert_eq!(post(&format!("{base}/jobs/quota/run"), Some(ADMIN)).0, 202);
        let prom = start_prometheus(
            &target,
            &format!("rule_files:\n  - {}\n", rules.display()),
            "    honor_labels: true\n",
        );
        let api = prom.api.clone();
        let get_json = |path: &str| -> Option<serde_json::Value> {
            reqwest::blocking::get(format!("{api}{path}"))
                .ok()?
                .json()
                .ok()
        };
        // The critical rule as Prometheus loaded it from the shipped file.
        let mut critical: Option<serde_json::Value> = None;
        let mut expression_true = None;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(v) = get_json("/rules?type=alert") {
                critical = v["data"]["groups"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                    .find(|r| r["name"] == "KcrQuotaCritical");
            }
            if let Some(rule) = &critical
                && rule["state"] != "inactive"
            {
                let q = rule["query"].as_str().unwrap().to_owned();
                let url = reqwest::Url::parse_with_params(
                    &format!("{api}/query"),
                    &[("query", q.as_str())],
                )
                .unwrap();
                let v: serde_json::Value = reqwest::blocking::get(url).unwrap().json().unwrap();
                expression_true = v["data"]["result"].as_array().cloned();
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        drop(prom);
        let rule = critical.expect("Prometheus loaded KcrQuotaCritical from the shipped rules");
        assert_ne!(rule["state"], "inactive", "{rule}");
        let alert = &rule["alerts"][0];
        assert_eq!(alert["labels"]["instance"], "demo", "{rule}");
        assert_eq!(alert["labels"]["resource"], "namespaces", "{rule}");
        assert_eq!(alert["labels"]["severity"], "critical", "{rule}");
        let result = expression_true.expect("the alert's expression was queried");
        assert_eq!(result.len(), 1, "{result:?}");
        assert_eq!(result[0]["value"][1], "0.96", "{result:?}");
    });
    drop(d);
}
