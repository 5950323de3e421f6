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
