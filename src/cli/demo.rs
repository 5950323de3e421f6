//! `demo`: the daemon on the built-in simulator with the demo config.

use super::CliError;
use super::run::daemon_error;
use crate::config::{self, Config, ProcessEnv};
use crate::daemon;
use clap::Args;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Address of the admin server
    #[arg(long, default_value = "127.0.0.1:9187")]
    pub listen: SocketAddr,
}

/// The demo: the built-in config (config/demo.toml) on the embedded simulator,
/// with state in a fresh temporary directory.
pub fn demo_config(listen: SocketAddr, state_dir: &Path) -> Result<Config, CliError> {
    let mut c = config::parse(
        include_str!("../../config/demo.toml"),
        "config/demo.toml (built in)",
        Path::new("."),
        &ProcessEnv,
    )
    .map_err(CliError::Config)?;
    c.server.listen = listen;
    c.state = config::StateConfig::Sqlite {
        path: state_dir.join("state.db"),
    };
    // Token sinks go beside the demo's state, not into /tmp/kcr-housekeeper-demo.
    for mt in c.tokens.iter_mut().flat_map(|t| t.managed.iter_mut()) {
        for sink in &mut mt.sinks {
            if let config::Sink::DockerConfig { path }
            | config::Sink::ContainersAuth { path }
            | config::Sink::File { path, .. } = sink
                && let Some(name) = path.file_name()
            {
                *path = state_dir.join(name);
            }
        }
    }
    Ok(c)
}

/// `demo`: state in a fresh temporary directory, the URLs printed once serving.
pub(super) async fn run(args: DemoArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let dir = tempfile::Builder::new()
        .prefix("kcr-housekeeper-demo-")
        .tempdir()
        .map_err(|e| {
            CliError::Failed(anyhow::Error::new(e).context("creating the demo directory"))
        })?;
    let c = demo_config(args.listen, dir.path())?;
    super::init_logging(c.log.format, &c.log.level);
    let state_dir = dir.path().display().to_string();
    daemon::run(c, None, |s| {
        let base = format!("http://{}", s.listen);
        // Printed once serving has started, so the URLs work when read.
        let _ = write!(
            out,
            "kcr-housekeeper demo: the built-in simulator with config/demo.toml\n\
             retention and namespaces run dry; the ci-pull token rotates inside the simulator\n\
             and its new secret is written under the state directory\n\
             metrics: {base}/metrics\n\
             jobs:    {base}/jobs\n\
             report:  {base}/reports/retention/latest\n\
             state:   {state_dir}\n\
             press Ctrl-C to stop\n"
        );
        let _ = out.flush();
    })
    .await
    .map_err(daemon_error)
}
