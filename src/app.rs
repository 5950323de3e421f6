//! Wiring shared by the CLI commands and (later) the daemon: a client for the
//! configured endpoint, with the built-in simulator started when the config
//! says `endpoint = "sim:demo"`.

use crate::config::{Config, Endpoint};
use crate::kcr::{Client, ClientConfig};
#[cfg(feature = "sim")]
use crate::sim::{SimOptions, WorldSource};

/// The simulator embedded for `endpoint = "sim:demo"`, kept alive with its client.
#[cfg(feature = "sim")]
pub type Embedded = crate::sim::Simulator;
/// Built without the `sim` feature nothing can be embedded: this type has no values.
#[cfg(not(feature = "sim"))]
pub enum Embedded {}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[cfg(feature = "sim")]
    #[error("cannot start the built-in simulator: {0}")]
    Simulator(#[from] crate::sim::SimError),
    #[cfg(not(feature = "sim"))]
    #[error("{NO_SIMULATOR}")]
    NoSimulator,
    #[error("cannot build the KCR client: {0}")]
    Client(#[from] crate::kcr::Error),
    #[error("configuration has no credentials for {0}")]
    NoCredentials(String),
}

/// A client, and the embedded simulator it talks to (kept alive as long as the client is used).
pub struct Connection {
    pub client: Client,
    pub simulator: Option<Embedded>,
}

pub async fn connect(config: &Config) -> Result<Connection, AppError> {
    connect_observed(config, None).await
}

/// As [`connect`], reporting every API request to `observer` (the metrics).
pub async fn connect_observed(
    config: &Config,
    observer: Option<std::sync::Arc<dyn crate::kcr::ApiObserver>>,
) -> Result<Connection, AppError> {
    let k = &config.kcr;
    let (endpoint, credentials, simulator) = match &k.endpoint {
        #[cfg(not(feature = "sim"))]
        Endpoint::SimDemo => return Err(AppError::NoSimulator),
        #[cfg(feature = "sim")]
        Endpoint::SimDemo => {
            let sim = Embedded::start(SimOptions {
                source: WorldSource::Demo,
                region: k.region.clone(),
                log_in_memory: false,
                ..Default::default()
            })
            .await?;
            (sim.endpoint(), sim.credentials(), Some(sim))
        }
        Endpoint::Url(url) => {
            let creds = k
                .credentials
                .clone()
                .ok_or_else(|| AppError::NoCredentials(url.clone()))?;
            (url.clone(), creds, None)
        }
    };
    let mut cc = ClientConfig::new(endpoint, credentials);
    cc.region = k.region.clone();
    cc.timezone = k.timezone;
    cc.requests_per_second = k.requests_per_second;
    cc.max_in_flight = k.max_in_flight;
    cc.timeout = k.timeout;
    cc.max_consecutive_failures = k.max_consecutive_failures;
    Ok(Connection {
        client: Client::with_observer(cc, observer)?,
        simulator,
    })
}

/// What a build without the simulator says when asked for it.
pub const NO_SIMULATOR: &str = "this build of kcr-housekeeper has no built-in simulator \
     (it was built without the default cargo feature `sim`); build it with default \
     features (`cargo build --release`) or point [kcr] endpoint at a KCR endpoint";
