//! `run`: the daemon.

use super::CliError;
use crate::config::{self, ProcessEnv};
use crate::daemon::{self, DaemonError};
use std::path::Path;

pub(super) fn daemon_error(e: DaemonError) -> CliError {
    match e {
        DaemonError::Setup(m) => CliError::Usage(m),
        DaemonError::Runtime(m) => CliError::Failed(anyhow::anyhow!(m)),
    }
}

/// `run`: load the config, switch to its [log] settings, run the daemon.
pub(super) async fn run(config_flag: Option<&Path>) -> Result<(), CliError> {
    let path = config::resolve_path(config_flag, &ProcessEnv);
    let c = config::load(&path, &ProcessEnv).map_err(CliError::Config)?;
    super::init_logging(c.log.format, &c.log.level);
    daemon::run(c, Some(path), |_| {})
        .await
        .map_err(daemon_error)
}
