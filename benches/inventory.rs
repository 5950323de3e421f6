//! Inventory sweep of a generated 20×20×60 registry at three simulated
//! latencies (5, 20 and 50 ms per call): API calls against the lower bound
//! (must be 1.00), wall time against the rate-limit/latency bound (must be
//! ≤ 1.2), and, at 20 ms, the same sweep written sequentially with the
//! official Python SDK as the baseline.
//!
//! Run: `cargo bench --bench inventory` (the SDK baseline needs the venv that
//! `tests/conformance/run.sh` creates in target/conformance-venv).

use kcr_housekeeper::config::InstanceConfig;
use kcr_housekeeper::inventory::Inventory;
use kcr_housekeeper::kcr::{Client, ClientConfig};
use kcr_housekeeper::sim::{Faults, GenerateSpec, SimOptions, Simulator, WorldSource};
use secrecy::ExposeSecret;
use std::process::Command;
use std::time::{Duration, Instant};

const SPEC: &str = "namespaces=20,repos=20,images=60,seed=7";
/// The latency of the SDK baseline.
const LATENCY: Duration = Duration::from_millis(20);

fn lower_bound(sim: &Simulator) -> usize {
    let pages = |n: usize| n.div_ceil(99).max(1);
    sim.world(|w| {
        let i = &w.instances[0];
        pages(i.namespaces.len())
            + i.namespaces
                .values()
                .map(|ns| {
                    pages(ns.repos.len())
                        + ns.repos
                            .values()
                            .map(|r| pages(r.images.len()))
                            .sum::<usize>()
                })
                .sum::<usize>()
    })
}

/// The generated registry behind `latency` of simulated latency per call.
async fn start_sim(spec: &GenerateSpec, latency: Duration) -> Simulator {
    let faults = Faults {
        latency,
        ..Default::default()
    };
    Simulator::start(SimOptions {
        source: WorldSource::Generate(spec.clone()),
        faults,
        ..Default::default()
    })
    .await
    .unwrap()
}

#[tokio::main]
async fn main() {
    let spec: GenerateSpec = SPEC.parse().unwrap();
    println!("inventory sweep of a generated registry ({SPEC})");
    println!(
        "{:>8} {:>6} {:>9} {:>7} {:>7} {:>9} {:>9} {:>8}",
        "latency", "rps", "in-flight", "calls", "bound", "wall s", "bound s", "ratio"
    );
    let mut ours = Vec::new();
    let runs = [
        (Duration::from_millis(5), 400.0, 16usize),
        (LATENCY, 100.0, 8),
        (LATENCY, 400.0, 16),
        (Duration::from_millis(50), 400.0, 16),
    ];
    for (latency, rps, in_flight) in runs {
        let sim = start_sim(&spec, latency).await;
        let mut cfg = ClientConfig::new(sim.endpoint(), sim.credentials());
        cfg.requests_per_second = rps;
        cfg.max_in_flight = in_flight;
        let client = Client::new(cfg).unwrap();
        let id = sim.world(|w| w.instances[0].id.clone());
        let inst = [InstanceConfig {
            id,
            name: "gen".into(),
            registry: Some("r".into()),
            scope: Vec::new(),
        }];
        let t = Instant::now();
        let inv = Inventory::collect(&client, &inst, chrono::Utc::now()).await;
        let wall = t.elapsed().as_secs_f64();
        assert_eq!(inv.image_count(), 20 * 20 * 60);
        let calls = sim.requests().len();
        let bound = lower_bound(&sim);
        let time_bound = calls as f64 / rps.min(in_flight as f64 / latency.as_secs_f64());
        println!(
            "{:>8} {:>6} {:>9} {:>7} {:>7} {:>9.2} {:>9.2} {:>8.2}   calls/bound = {:.2}",
            format!("{}ms", latency.as_millis()),
            rps,
            in_flight,
            calls,
            bound,
            wall,
            time_bound,
            wall / time_bound,
            calls as f64 / bound as f64
        );
        if latency == LATENCY {
            ours.push((rps, in_flight, wall));
        }
    }
    // The baseline: the official SDK, sequential, as a user would write it.
    let python =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/conformance-venv/bin/python");
    if !python.exists() {
        println!(
            "SDK baseline skipped: run tests/conformance/run.sh once to create {}",
            python.display()
        );
        return;
    }
    let sim = start_sim(&spec, LATENCY).await;
    let c = sim.credentials();
    let id = sim.world(|w| w.instances[0].id.clone());
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/sdk_inventory.py");
    let addr = sim.addr().to_string();
    let sk = c.secret_access_key.expose_secret().to_owned();
    let out = std::thread::spawn(move || {
        Command::new(python)
            .arg(script)
            .args([&addr, &c.access_key_id, &sk, &id])
            .output()
            .unwrap()
    })
    .join()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<&str> = text.split_whitespace().collect();
    if f.len() == 3 {
        let sdk: f64 = f[2].parse().unwrap_or(f64::NAN);
        println!(
            "official Python SDK, sequential, {LATENCY:?} latency: {} calls, {} images, {sdk:.2} s",
            f[0], f[1]
        );
        for (rps, in_flight, wall) in ours {
            println!(
                "  kcr-housekeeper at {rps} rps / {in_flight} in flight is {:.1}x faster",
                sdk / wall
            );
        }
    } else {
        println!(
            "SDK baseline failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
