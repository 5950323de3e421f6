//! Step 2 figures: start-to-ready, idle RSS, and `/metrics` latency under a
//! paced 500 requests/s load, for the release daemon against an external
//! simulator on loopback. Also wrk's closed-loop maximum, when wrk is installed.
//!
//! Run: `cargo bench --bench daemon`. Bounded: about 40 s in all.

use kcr_housekeeper::sim::{SimOptions, Simulator};
use secrecy::ExposeSecret;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_kcr-housekeeper");
const STARTS: usize = 9;
const RATE: u64 = 500;
const LOAD: Duration = Duration::from_secs(10);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Start the daemon; return it, its address and the time from spawn to `/readyz` = 200.
fn start(sim: &Simulator, dir: &std::path::Path) -> (Child, String, Duration) {
    let cfg = dir.join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[kcr]\nendpoint = \"{}\"\naccess_key_id = \"{}\"\nsecret_access_key = {{ env = \"BENCH_SK\" }}\n\
             [[instances]]\nid = \"eb1d0d73-4845-4283-a736-000000000001\"\nname = \"demo\"\nregistry = \"r\"\n\
             [server]\nlisten = \"127.0.0.1:0\"\n[state]\npath = \"{}\"\n[log]\nformat = \"json\"\n\
             [scheduler]\njitter = \"0s\"\nrun_on_start = true\n[quota]\n",
            sim.endpoint(),
            sim.credentials().access_key_id,
            dir.join("state.db").display()
        ),
    )
    .unwrap();
    let t0 = Instant::now();
    let mut child = Command::new(BIN)
        .args(["run", "--config", cfg.to_str().unwrap()])
        .env(
            "BENCH_SK",
            sim.credentials().secret_access_key.expose_secret(),
        )
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("daemon log").unwrap();
        if line.contains("kcr-housekeeper ready") {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            break v["listen"].as_str().unwrap().to_owned();
        }
    };
    let ready = t0.elapsed();
    std::thread::spawn(move || for _ in lines {});
    (child, addr, ready)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

async fn paced_load(url: &str) -> (Vec<f64>, usize) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + LOAD;
    let mut tasks = Vec::new();
    while Instant::now() < end {
        ticker.tick().await;
        let c = client.clone();
        let u = url.to_owned();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = c.get(&u).send().await.ok()?;
            let ok = r.status().is_success();
            let _ = r.bytes().await.ok()?;
            ok.then(|| t.elapsed().as_secs_f64() * 1000.0)
        }));
    }
    let mut lat = Vec::new();
    let mut failed = 0;
    for t in tasks {
        match t.await.unwrap() {
            Some(ms) => lat.push(ms),
            None => failed += 1,
        }
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (lat, failed)
}

#[tokio::main]
async fn main() {
    let sim = Simulator::start(SimOptions {
        log_in_memory: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut readies = Vec::new();
    for _ in 0..STARTS {
        let dir = tempfile::tempdir().unwrap();
        let (mut child, _, ready) = start(&sim, dir.path());
        readies.push(ready.as_secs_f64() * 1000.0);
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
    }

    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr, _) = start(&sim, dir.path());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_rss = rss_kib(child.id());
    let url = format!("http://{addr}/metrics");
    let (lat, failed) = paced_load(&url).await;
    let loaded_rss = rss_kib(child.id());
    let wrk = Command::new("wrk")
        .args(["-t1", "-c8", "-d5s", "--latency", &url])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();

    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("kcr-housekeeper Step 2 benchmarks ({cores} cores)");
    println!("{:<52} {:>10}", "figure", "value");
    println!(
        "{:<52} {:>7.1} ms   (median of {STARTS}; target <= 200)",
        "start to ready (spawn -> ready log line)",
        median(readies.clone())
    );
    println!(
        "{:<52} {:>7.1} MB   (target <= 20)",
        "idle RSS after 5 s",
        idle_rss as f64 / 1024.0
    );
    println!(
        "{:<52} {:>7.2} ms   (p50 {:.2}, p90 {:.2}, max {:.2}; target <= 5)",
        format!(
            "/metrics p99 at {RATE} req/s for {}s ({} requests)",
            LOAD.as_secs(),
            lat.len()
        ),
        percentile(&lat, 0.99),
        percentile(&lat, 0.50),
        percentile(&lat, 0.90),
        lat.last().copied().unwrap_or(0.0)
    );
    println!("{:<52} {:>10}", "failed requests", failed);
    println!(
        "{:<52} {:>7.1} MB",
        "RSS after the load",
        loaded_rss as f64 / 1024.0
    );
    println!("start-to-ready runs (ms): {readies:.1?}");
    if let Some(w) = wrk {
        println!("wrk -t1 -c8 -d5s (closed loop, as fast as it goes):");
        for l in w.lines().filter(|l| {
            l.contains("Requests/sec")
                || l.trim_start().starts_with("99%")
                || l.trim_start().starts_with("50%")
        }) {
            println!("  {}", l.trim());
        }
    }
}
