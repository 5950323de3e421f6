//! Step 10 figures, against a real PostgreSQL (`KCR_TEST_PG_URL`, e.g. after
//! `source .ci/postgres.sh`), the daemon binary and the simulator on loopback:
//!
//! 1. **Failover**: two replicas (`[leader] renew = 500ms`, `lease = 4s`,
//!    `[kcr] timeout = 1s`); the leader is killed (SIGKILL) `KILLS` times and
//!    each time the time until the other one answers `/jobs` with
//!    `"leader": true` is measured (polled every 20 ms); the killed one is
//!    started again as a follower. Target: at most lease + renew + 1 s.
//! 2. **Idle database load**: transactions per second committed in the
//!    state's database (`pg_stat_database.xact_commit` deltas, read from
//!    another database so the reading does not count) with one replica,
//!    then two; a follower's share is the difference.
//! 3. **Apply throughput**: a one-shot `apply retention` over a generated
//!    registry with SQLite state and with PostgreSQL state (each mutation
//!    writes its audit record first and its outcome after).
//!
//! Run: `cargo bench --bench ha` (bounded: about 4 minutes);
//! `HA_BENCH_ONLY=failover` or `apply` runs one part.

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use common::pg;
use common::replica::Replica;
use kcr_housekeeper::sim::{GenerateSpec, SimOptions, Simulator, WorldSource};
use std::time::{Duration, Instant};

const KILLS: usize = 20;
const IDLE_WINDOW: Duration = Duration::from_secs(30);
const URL_ENV: &str = "KCR_HOUSEKEEPER_DATABASE_URL";

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn replica_config(sim: &Simulator, id: &str) -> String {
    format!(
        "[kcr]\nendpoint = \"{endpoint}\"\naccess_key_id = \"{ak}\"\nsecret_access_key = {{ env = \"TEST_SK\" }}\n\
         timeout = \"1s\"\n\
         [[instances]]\nid = \"{instance}\"\nname = \"demo\"\nregistry = \"r\"\n\
         [server]\nlisten = \"127.0.0.1:0\"\n[state]\nurl = {{ env = \"{URL_ENV}\" }}\n\
         [leader]\nrenew = \"500ms\"\nlease = \"4s\"\nid = \"{id}\"\n\
         [scheduler]\njitter = \"0s\"\n[log]\nformat = \"json\"\nlevel = \"info\"\n\
         [quota]\nschedule = \"0 0 3 * * *\"\n",
        endpoint = sim.endpoint(),
        ak = sim.credentials().access_key_id,
        instance = common::DEMO_INSTANCE,
    )
}

fn start(sim: &Simulator, url: &str, id: &str) -> Replica {
    Replica::start(
        &replica_config(sim, id),
        &[("TEST_SK", &common::sim_secret(sim)), (URL_ENV, url)],
    )
}

/// The index of the one replica that leads (waits up to 15 s).
fn leader(replicas: &[Replica]) -> usize {
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let leads: Vec<usize> = (0..replicas.len())
            .filter(|&i| replicas[i].leads() == Some(true))
            .collect();
        assert!(leads.len() <= 1, "two leaders: {leads:?}");
        if let [i] = leads[..] {
            return i;
        }
        assert!(Instant::now() < end, "no leader");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn xact_commit(admin: &str, db: &str) -> i64 {
    pg::scalar(
        admin,
        &format!("SELECT xact_commit FROM pg_stat_database WHERE datname = '{db}'"),
    )
    .unwrap()
    .parse()
    .unwrap()
}

/// Transactions per second committed in `db` over `IDLE_WINDOW`, after a settle.
fn idle_rate(admin: &str, db: &str) -> f64 {
    std::thread::sleep(Duration::from_secs(11));
    let (a, t) = (xact_commit(admin, db), Instant::now());
    std::thread::sleep(IDLE_WINDOW);
    let b = xact_commit(admin, db);
    (b - a) as f64 / t.elapsed().as_secs_f64()
}

fn failover_and_idle(sim: &Simulator, admin: &str) {
    let db = pg::Db::create().unwrap();
    let mut replicas = vec![
        start(sim, &db.url, "replica-0"),
        start(sim, &db.url, "replica-1"),
    ];
    let mut times = Vec::new();
    for kill in 0..KILLS {
        let l = leader(&replicas);
        let other = 1 - l;
        replicas[l].kill();
        let t0 = Instant::now();
        while replicas[other].leads() != Some(true) {
            assert!(t0.elapsed() < Duration::from_secs(20), "no failover");
            std::thread::sleep(Duration::from_millis(20));
        }
        times.push(t0.elapsed().as_secs_f64());
        replicas[l] = start(sim, &db.url, &format!("replica-{}", kill + 2));
    }
    let max = times.iter().cloned().fold(0.0, f64::max);
    let min = times.iter().cloned().fold(f64::MAX, f64::min);
    println!(
        "failover over {KILLS} kills (lease 4s, renew 500ms): median {:.2} s, min {min:.2} s, max {max:.2} s (target <= 5.5 s)",
        median(&times)
    );
    let two = idle_rate(admin, &db.name);
    let l = leader(&replicas);
    replicas.remove(1 - l).kill();
    let one = idle_rate(admin, &db.name);
    println!(
        "idle transactions/s in the state database: leader alone {one:.2}, leader + follower {two:.2} (follower {:.2})",
        two - one
    );
}

/// Deletions sent, seconds to plan, seconds to apply.
async fn apply_once(spec: &GenerateSpec, pg_url: Option<&str>) -> (u64, f64, f64) {
    let sim = Simulator::start(SimOptions {
        source: WorldSource::Generate(spec.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::generated_config(
        &sim,
        dir.path(),
        "[retention]\nmode = \"enforce\"\nmax_deletions_per_run = 100000\nmax_deletion_ratio = 1.0\n\
         [retention.protect]\nnewest_images_per_repository = 1\n\
         [[retention.rules]]\nname = \"ci\"\ntags = [\"pr-*\", \"sha-*\", \"main-*\"]\nkeep_latest = 2\n\
         [[retention.rules]]\nname = \"untagged\"\nuntagged = true\nolder_than = \"1d\"\n",
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("requests_per_second = 500", "requests_per_second = 1000");
    let text = match pg_url {
        Some(_) => {
            let line = text
                .lines()
                .find(|l| l.starts_with("path = "))
                .unwrap()
                .to_string();
            text.replace(&line, &format!("url = {{ env = \"{URL_ENV}\" }}"))
        }
        None => text,
    };
    config = dir.path().join("bench.toml").to_str().unwrap().to_string();
    std::fs::write(&config, text).unwrap();
    let timed = |args: &[&str]| {
        let mut cmd = common::bin(&common::sim_secret(&sim), args);
        cmd.args(["--config", &config]);
        if let Some(u) = pg_url {
            cmd.env(URL_ENV, u);
        }
        let t = Instant::now();
        let out = common::output(cmd);
        assert!(out.status.success(), "{}", common::text(&out));
        t.elapsed().as_secs_f64()
    };
    // The plan alone (inventory and planner, one run recorded), then the
    // apply (the same plan, then every mutation audited before and after).
    let plan = timed(&["plan", "retention", "--format", "json"]);
    let apply = timed(&["apply", "retention", "--yes"]);
    let deletes = sim
        .requests()
        .iter()
        .filter(|e| matches!(e.action.as_deref(), Some("DeleteRepoTag")) && e.code == "OK")
        .count() as u64;
    (deletes, plan, apply)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Some(admin) = pg::url() else { return };
    let sim = std::sync::Arc::new(common::sim(SimOptions::default()).await);
    // HA_BENCH_ONLY=failover|apply runs one part.
    let only = std::env::var("HA_BENCH_ONLY").unwrap_or_default();
    if only != "apply" {
        let s = sim.clone();
        let a = admin.clone();
        tokio::task::spawn_blocking(move || failover_and_idle(&s, &a))
            .await
            .unwrap();
    }
    if only == "failover" {
        return;
    }

    let spec: GenerateSpec = "namespaces=2,repos=10,images=120,seed=11".parse().unwrap();
    for backend in ["sqlite", "postgresql"] {
        let (mut plans, mut applies, mut rates) = (Vec::new(), Vec::new(), Vec::new());
        let mut n = 0;
        for _ in 0..3 {
            let db = (backend == "postgresql").then(|| pg::Db::create().unwrap());
            let (deletes, plan, apply) =
                apply_once(&spec, db.as_ref().map(|d| d.url.as_str())).await;
            n = deletes;
            plans.push(plan);
            applies.push(apply);
            rates.push(deletes as f64 / apply);
        }
        println!(
            "{backend} state: plan retention {:.2} s, apply retention {:.2} s for {n} deletions ({:.1} deletions/s), medians of 3",
            median(&plans),
            median(&applies),
            median(&rates)
        );
    }
}
