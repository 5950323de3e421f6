//! `sim`: the KCR simulator.

use super::{CliError, io};
use crate::duration;
use crate::kcr::Credentials;
use crate::sim::{FaultKind, Faults, GenerateSpec, Scenario, SimOptions, Simulator, WorldSource};
use clap::Args;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct SimArgs {
    /// Address to listen on (port 0 picks a free one)
    #[arg(long, default_value = "127.0.0.1:9188")]
    pub listen: SocketAddr,
    /// Scenario JSON file, in the format --print-scenario prints [default: the built-in demo]
    #[arg(long, value_name = "FILE", conflicts_with = "generate")]
    pub scenario: Option<PathBuf>,
    /// Generate a scenario, e.g. namespaces=20,repos=20,images=60,seed=7
    #[arg(long, value_name = "SPEC")]
    pub generate: Option<String>,
    /// Print the scenario as JSON and exit instead of serving it
    #[arg(long)]
    pub print_scenario: bool,
    #[arg(
        long,
        env = "KSYUN_ACCESS_KEY_ID",
        requires = "secret_access_key",
        hide_env_values = true
    )]
    pub access_key_id: Option<String>,
    #[arg(
        long,
        env = "KSYUN_SECRET_ACCESS_KEY",
        requires = "access_key_id",
        hide_env_values = true
    )]
    pub secret_access_key: Option<String>,
    #[arg(long, default_value = "cn-beijing-6")]
    pub region: String,
    /// Latency added to every API answer, e.g. 20ms
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub latency: Duration,
    /// Requests per second served; the excess gets 409 LimitExceeded
    #[arg(long)]
    pub rate_limit: Option<u32>,
    /// Share (0-1) of API requests answered with an injected fault
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub fault_rate: f64,
    /// Faults to draw from (comma-separated): 5xx, 409, timeout, reset, truncated, ill-typed, total-count, total-count-low
    #[arg(long, value_delimiter = ',', default_value = "5xx,409")]
    pub fault_kinds: Vec<FaultKind>,
    /// How long a `timeout` fault holds its answer
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub stall: Duration,
    /// Image listings drift between pages (a push and a delete while paging)
    #[arg(long)]
    pub page_drift: bool,
    /// Seed for faults and generated ids (replayable runs)
    #[arg(long)]
    pub seed: Option<u64>,
    /// Append one JSON line per request to this file
    #[arg(long, value_name = "FILE")]
    pub request_log: Option<PathBuf>,
    /// Further access keys scoped by IAM policies: JSON
    /// `{"<AccessKeyId>": {"secret", "user", "statements": [{"effect", "actions", "resources"}]}}`
    #[arg(long, value_name = "FILE")]
    pub policies: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    duration::parse(s).map_err(|e| e.to_string())
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a number from 0 to 1")),
    }
}

pub(super) async fn run(args: SimArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let source = match (&args.scenario, &args.generate) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                CliError::Usage(format!("{}: cannot read scenario: {e}", path.display()))
            })?;
            let name = path.display().to_string();
            let scenario =
                Scenario::from_json(&name, &text).map_err(|e| CliError::Usage(e.to_string()))?;
            WorldSource::Scenario { name, scenario }
        }
        (None, Some(spec)) => WorldSource::Generate(
            spec.parse::<GenerateSpec>()
                .map_err(|e| CliError::Usage(e.to_string()))?,
        ),
        (None, None) => WorldSource::Demo,
    };
    if args.print_scenario {
        let scenario = match source {
            WorldSource::Demo => crate::sim::scenario::demo(),
            WorldSource::Scenario { scenario, .. } => scenario,
            WorldSource::Generate(spec) => crate::sim::scenario::generate(&spec),
        };
        let text = serde_json::to_string_pretty(&scenario).expect("scenario serialises");
        return writeln!(out, "{text}").map_err(io);
    }
    let credentials = match (args.access_key_id, args.secret_access_key) {
        (Some(id), Some(sk)) => Some(Credentials::new(id, sk)),
        _ => None,
    };
    let generated = credentials.is_none();
    let policies = match &args.policies {
        Some(path) => Some(
            crate::sim::iam::Policies::load(path).map_err(|e| CliError::Usage(e.to_string()))?,
        ),
        None => None,
    };
    let sim = Simulator::start(SimOptions {
        listen: args.listen,
        source,
        credentials,
        region: args.region,
        faults: Faults {
            latency: args.latency,
            rate_limit: args.rate_limit,
            fault_rate: args.fault_rate,
            kinds: args.fault_kinds,
            seed: args.seed,
            stall: args.stall,
            page_drift: args.page_drift,
            page_cap: None,
        },
        request_log: args.request_log,
        log_in_memory: false,
        policies,
    })
    .await
    .map_err(|e| match e {
        crate::sim::SimError::Scenario(s) => CliError::Usage(s.to_string()),
        other => CliError::Failed(other.into()),
    })?;
    if generated {
        use secrecy::ExposeSecret;
        let c = sim.credentials();
        // Printed once, as DESIGN §10 says: these are throwaway simulator credentials.
        writeln!(
            out,
            "generated credentials: KSYUN_ACCESS_KEY_ID={} KSYUN_SECRET_ACCESS_KEY={}",
            c.access_key_id,
            c.secret_access_key.expose_secret()
        )
        .map_err(io)?;
    }
    writeln!(out, "listening on {}", sim.endpoint()).map_err(io)?;
    // What it serves: the instance ids to put in [[instances]] and the
    // registry host each answers to (as the Host of a request here).
    let instances: Vec<(String, String, String)> = sim.world(|w| {
        w.instances
            .iter()
            .map(|i| (i.id.clone(), i.name.clone(), i.registry_host.clone()))
            .collect()
    });
    for (id, name, host) in instances {
        // A reader that took the readiness line and left does not stop the simulator.
        let _ = writeln!(out, "instance {id} ({name}), registry host {host}");
    }
    let _ = out.flush();
    crate::signal::shutdown().await.map_err(io)?;
    sim.stop().await;
    Ok(())
}
