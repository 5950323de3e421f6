//! Step 1 figures: simulator throughput (signed requests/s on loopback) and
//! the client's CPU per request (signing, encoding, decoding).
//!
//! Run: `cargo bench --bench sim_and_client`. Prints medians of several rounds.

use kcr_housekeeper::kcr::client::decode_response;
use kcr_housekeeper::kcr::{
    Action, Client, ClientConfig, DescribeImages, DescribeInstanceUsage, Params,
};
use kcr_housekeeper::sim::{GenerateSpec, SimOptions, Simulator, WorldSource};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const ROUNDS: usize = 5;
const ROUND: Duration = Duration::from_secs(2);
const CONCURRENCY: usize = 32;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Requests/s the simulator answers with 200 for one pre-signed request replayed
/// by `CONCURRENCY` connections (each answer is fully verified: SigV4 included).
async fn sim_throughput<A: Action>(sim: &Simulator, client: &Client, params: &Params) -> Vec<f64> {
    let template = client.build_request::<A>(params).unwrap();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .unwrap();
    let _ = sim;
    let mut rates = Vec::new();
    for _ in 0..ROUNDS {
        let ok = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + ROUND;
        let started = Instant::now();
        let tasks: Vec<_> = (0..CONCURRENCY)
            .map(|_| {
                let http = http.clone();
                let req = template.try_clone().unwrap();
                let ok = ok.clone();
                tokio::spawn(async move {
                    while Instant::now() < deadline {
                        let r = http.execute(req.try_clone().unwrap()).await.unwrap();
                        let status = r.status();
                        let _ = r.bytes().await.unwrap();
                        assert!(status.is_success(), "{status}");
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        rates.push(ok.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64());
    }
    rates
}

fn client_cpu_per_request(client: &Client, body: &[u8]) -> Vec<f64> {
    let params = {
        let mut p = Params::default();
        DescribeImages::all("eb1d0d73-4845-4283-a736-000000000001", "team0", "app0")
            .write_params(&mut p);
        p.set("Marker", "0").set("MaxResults", "99");
        p
    };
    let iterations = 5_000;
    let mut per_request = Vec::new();
    for _ in 0..ROUNDS + 2 {
        let start = Instant::now();
        for _ in 0..iterations {
            let req = client.build_request::<DescribeImages>(&params).unwrap();
            std::hint::black_box(&req);
            let out = decode_response::<DescribeImages>(200, body).unwrap();
            std::hint::black_box(&out);
        }
        per_request.push(start.elapsed().as_secs_f64() * 1e6 / iterations as f64);
    }
    per_request
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let spec: GenerateSpec = "namespaces=1,repos=1,images=99,seed=1".parse().unwrap();
    let sim = Simulator::start(SimOptions {
        source: WorldSource::Generate(spec),
        log_in_memory: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut cfg = ClientConfig::new(sim.endpoint(), sim.credentials());
    cfg.requests_per_second = 1000.0;
    let client = Client::new(cfg).unwrap();
    let instance = sim.world(|w| w.instances[0].id.clone());

    let mut usage = Params::default();
    DescribeInstanceUsage {
        instance_id: instance.clone(),
    }
    .write_params(&mut usage);
    let small = sim_throughput::<DescribeInstanceUsage>(&sim, &client, &usage).await;

    let mut images = Params::default();
    DescribeImages::all(&instance, "team0", "app0").write_params(&mut images);
    images.set("Marker", "0").set("MaxResults", "99");
    let page = sim_throughput::<DescribeImages>(&sim, &client, &images).await;

    // A real 99-image page as the simulator serves it, for the decode half of the client cost.
    let req = client.build_request::<DescribeImages>(&images).unwrap();
    let body = reqwest::Client::new()
        .execute(req)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let cpu = client_cpu_per_request(&client, &body);

    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("kcr-housekeeper Step 1 benchmarks ({cores} cores, {ROUNDS} rounds, medians)");
    println!("{:<58} {:>12}", "figure", "median");
    println!(
        "{:<58} {:>9.0} /s",
        "simulator: signed DescribeInstanceUsage answered",
        median(small.clone())
    );
    println!(
        "{:<58} {:>9.0} /s",
        "simulator: signed DescribeImages (99-image page) answered",
        median(page.clone())
    );
    println!(
        "{:<58} {:>9.1} us",
        "client: sign + encode + decode one 99-image page",
        median(cpu.clone())
    );
    println!("{:<58} {:>9} B", "  (response body size)", body.len());
    println!("rounds: usage {small:.0?} images {page:.0?} cpu_us {cpu:.1?}");
    let target_ok = median(small) >= 5000.0 && median(cpu) < 100.0;
    println!(
        "targets (>= 5000 req/s, < 100 us/request): {}",
        if target_ok { "met" } else { "NOT met" }
    );
}
