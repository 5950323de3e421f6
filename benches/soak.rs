//! Soak: the release daemon with every job scheduled every few seconds
//! against a faulty simulator (5xx, 409, timeouts, resets, truncated and
//! ill-typed bodies, a lying TotalCount; 10 % of calls) for SOAK_SECONDS
//! (default 600). Samples RSS, open file descriptors and live async tasks
//! every 5 s and compares the first minute with the last; then checks that
//! every run was recorded (state = metrics) and that runs kept coming.
//!
//! Run: `cargo bench --bench soak` (or `SOAK_SECONDS=120 cargo bench --bench soak`).

use kcr_housekeeper::sim::{FaultKind, Faults, SimOptions, Simulator};
use kcr_housekeeper::state::Store;
use secrecy::ExposeSecret;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_kcr-housekeeper");
const SAMPLE: Duration = Duration::from_secs(5);
const JOBS: [&str; 4] = ["quota", "retention", "tokens", "namespaces"];

fn config(sim: &Simulator, dir: &std::path::Path) -> String {
    format!(
        r#"[kcr]
endpoint = "{endpoint}"
access_key_id = "{ak}"
secret_access_key = {{ env = "SOAK_SK" }}
requests_per_second = 200
timeout = "1s"
[[instances]]
id = "eb1d0d73-4845-4283-a736-000000000001"
name = "demo"
registry = "{registry}"
[server]
listen = "127.0.0.1:0"
[state]
path = "{dir}/state.db"
[log]
format = "json"
level = "info"
[scheduler]
jitter = "0s"
run_on_start = true
[inventory]
max_age = "0s"
[quota]
schedule = "*/3 * * * * *"
storage = "repository"
[retention]
schedule = "*/4 * * * * *"
mode = "dry-run"
[[retention.rules]]
name = "ci"
tags = ["pr-*", "sha-*"]
keep_latest = 1
[[retention.rules]]
name = "untagged"
untagged = true
older_than = "1d"
[namespaces]
schedule = "*/5 * * * * *"
mode = "enforce"
allow_make_public = true
rules = [ {{ match = "public*", visibility = "public" }} ]
[tokens]
schedule = "*/5 * * * * *"
list_lag = "2s"
[[tokens.managed]]
name = "ci-pull"
instance = "demo"
lifetime = "2h"
# A minute after each rotation the token is due again; the old one retires at once.
rotate_before = "119m"
overlap = "0s"
delete_after = "0s"
sinks = [ {{ kind = "file", path = "{dir}/ci-pull.env", format = "env" }} ]
"#,
        endpoint = sim.endpoint(),
        ak = sim.credentials().access_key_id,
        registry = sim.endpoint().trim_start_matches("http://"),
        dir = dir.display(),
    )
}

fn proc_status(pid: u32, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(f64::NAN)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn scrape(base: &str) -> String {
    reqwest::blocking::get(format!("{base}/metrics"))
        .and_then(|r| r.text())
        .unwrap_or_default()
}

fn value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn main() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sim = rt.block_on(async {
        Simulator::start(SimOptions {
            faults: Faults {
                fault_rate: 0.1,
                kinds: FaultKind::ALL.to_vec(),
                seed: Some(5),
                stall: Duration::from_secs(2),
                ..Default::default()
            },
            log_in_memory: false,
            ..Default::default()
        })
        .await
        .unwrap()
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, config(&sim, dir.path())).unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--config", cfg.to_str().unwrap()])
        .env(
            "SOAK_SK",
            sim.credentials().secret_access_key.expose_secret(),
        )
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let base = loop {
        let Some(Ok(line)) = lines.next() else {
            panic!("the daemon stopped before it was ready: {:?}", child.wait());
        };
        eprintln!("{line}");
        if line.contains("kcr-housekeeper ready") {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            break format!("http://{}", v["listen"].as_str().unwrap());
        }
    };
    // Drain the log (a line per run) so the pipe never fills.
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    println!("soak: {seconds} s, every job every 3-5 s, 10 % faults of every kind");
    println!(
        "{:>6} {:>9} {:>5} {:>6} {:>6}",
        "t s", "RSS MB", "fds", "tasks", "runs"
    );
    let started = Instant::now();
    let mut samples: Vec<(f64, f64, f64, f64, f64)> = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(SAMPLE);
        let m = scrape(&base);
        let runs: f64 = m
            .lines()
            .filter(|l| l.starts_with("kcr_housekeeper_job_runs_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        let s = (
            started.elapsed().as_secs_f64(),
            proc_status(pid, "VmRSS:") / 1024.0,
            fds(pid) as f64,
            value(&m, "kcr_housekeeper_tokio_tasks "),
            runs,
        );
        if samples.len().is_multiple_of(12) {
            println!("{:>6.0} {:>9.1} {:>5} {:>6} {:>6}", s.0, s.1, s.2, s.3, s.4);
        }
        samples.push(s);
    }
    let final_metrics = scrape(&base);
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let status = child.wait().unwrap();

    let minute = (60.0 / SAMPLE.as_secs_f64()) as usize;
    let n = samples.len();
    let first = &samples[..minute.min(n)];
    let last = &samples[n.saturating_sub(minute)..];
    let col = |s: &[(f64, f64, f64, f64, f64)], f: fn(&(f64, f64, f64, f64, f64)) -> f64| {
        mean(&s.iter().map(f).collect::<Vec<_>>())
    };
    println!();
    println!(
        "{:<28} {:>12} {:>12} {:>8}",
        "", "first minute", "last minute", "ratio"
    );
    for (name, f) in [
        (
            "RSS MB",
            (|s: &(f64, f64, f64, f64, f64)| s.1) as fn(&_) -> f64,
        ),
        ("open fds", |s| s.2),
        ("live async tasks", |s| s.3),
    ] {
        let (a, b) = (col(first, f), col(last, f));
        println!("{name:<28} {a:>12.1} {b:>12.1} {:>8.2}", b / a);
    }
    // Every run recorded: the state's runs equal the metrics' count per job.
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    println!();
    println!(
        "{:<12} {:>8} {:>8} {:>8} {:>8}",
        "job", "state", "metrics", "success", "failure"
    );
    let mut all_recorded = true;
    for job in JOBS {
        let in_state = store.runs(Some(job), 1_000_000).unwrap();
        let count = |r: &str| {
            value(
                &final_metrics,
                &format!("kcr_housekeeper_job_runs_total{{job=\"{job}\",result=\"{r}\"}} "),
            )
        };
        let in_metrics: f64 = ["success", "failure", "blocked", "skipped"]
            .iter()
            .map(|r| count(r))
            .sum();
        // A run finishing between the last scrape and SIGTERM is in state only.
        all_recorded &= (in_state.len() as f64 - in_metrics).abs() <= 1.0;
        println!(
            "{job:<12} {:>8} {:>8} {:>8} {:>8}",
            in_state.len(),
            in_metrics,
            count("success"),
            count("failure")
        );
    }
    println!();
    println!(
        "daemon exited {status}; every run recorded: {}",
        if all_recorded { "yes" } else { "NO" }
    );
}
