//! Shared helpers: a simulator on 127.0.0.1:0 and a client pointed at it.
#![allow(dead_code)]

use kcr_housekeeper::kcr::{Client, ClientConfig, RetryPolicy};
use kcr_housekeeper::sim::{Faults, SimOptions, Simulator};
use std::time::Duration;

pub const DEMO_INSTANCE: &str = "eb1d0d73-4845-4283-a736-000000000001";

pub async fn sim(opts: SimOptions) -> Simulator {
    Simulator::start(opts).await.expect("simulator starts")
}

pub async fn sim_with_faults(faults: Faults) -> Simulator {
    sim(SimOptions {
        faults,
        ..Default::default()
    })
    .await
}

pub fn config_for(sim: &Simulator) -> ClientConfig {
    let mut c = ClientConfig::new(sim.endpoint(), sim.credentials());
    c.requests_per_second = 1000.0;
    c.max_in_flight = 8;
    c.timeout = Duration::from_secs(10);
    c.retry = RetryPolicy {
        max_attempts: 5,
        base: Duration::from_millis(2),
        cap: Duration::from_millis(20),
    };
    c
}

pub fn client_for(sim: &Simulator) -> Client {
    Client::new(config_for(sim)).expect("client builds")
}

/// The head of a test config: `[kcr]` pointing at the simulator with
/// credentials from `$AK`/`$SK`, the demo instance (its registry is the
/// simulator itself, which serves `/v2/`) and `[state]` in `dir`.
pub fn demo_head(sim: &Simulator, dir: &std::path::Path) -> String {
    format!(
        "[kcr]\nendpoint = \"{endpoint}\"\naccess_key_id = {{ env = \"AK\" }}\nsecret_access_key = {{ env = \"SK\" }}\n\
         [[instances]]\nid = \"{DEMO_INSTANCE}\"\nname = \"demo\"\nregistry = \"{registry}\"\n\
         [state]\npath = \"{state}\"\n",
        endpoint = sim.endpoint(),
        registry = sim.endpoint().trim_start_matches("http://"),
        state = dir.join("state.db").display(),
    )
}

/// Parse a config whose credentials are `$AK`/`$SK`, answered with the simulator's.
pub fn parse_config(
    sim: &Simulator,
    text: &str,
    dir: &std::path::Path,
) -> kcr_housekeeper::config::Config {
    use secrecy::ExposeSecret;
    let creds = sim.credentials();
    let (ak, sk) = (
        creds.access_key_id.clone(),
        creds.secret_access_key.expose_secret().to_string(),
    );
    kcr_housekeeper::config::parse(text, "test.toml", dir, &move |k: &str| match k {
        "AK" => Some(ak.clone()),
        "SK" => Some(sk.clone()),
        _ => None,
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The simulator's clock in UTC (it keeps Beijing time, UTC+8).
pub fn sim_utc(sim: &Simulator) -> chrono::DateTime<chrono::Utc> {
    use chrono::TimeZone;
    chrono::Utc.from_utc_datetime(&(sim.now() - chrono::Duration::hours(8)))
}

/// Each namespace of the simulator's first instance: public or not.
pub fn namespace_visibility(sim: &Simulator) -> std::collections::BTreeMap<String, bool> {
    sim.world(|w| {
        w.instances[0]
            .namespaces
            .iter()
            .map(|(n, ns)| (n.clone(), ns.public))
            .collect()
    })
}

/// A simulator over a generated registry, with faults.
pub fn generated_world(spec: &str, faults: Faults) -> SimOptions {
    SimOptions {
        source: kcr_housekeeper::sim::WorldSource::Generate(
            spec.parse::<kcr_housekeeper::sim::GenerateSpec>().unwrap(),
        ),
        faults,
        ..Default::default()
    }
}

/// Registry contents: (namespace/repo, digest) → tags.
pub fn registry_snapshot(
    sim: &Simulator,
) -> std::collections::BTreeMap<(String, String), std::collections::BTreeSet<String>> {
    sim.world(|w| {
        let mut m = std::collections::BTreeMap::new();
        for (ns_name, ns) in &w.instances[0].namespaces {
            for (repo_name, repo) in &ns.repos {
                for img in &repo.images {
                    m.insert(
                        (format!("{ns_name}/{repo_name}"), img.digest.clone()),
                        img.tags.iter().cloned().collect(),
                    );
                }
            }
        }
        m
    })
}
