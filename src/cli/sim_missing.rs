//! `sim` in a build without the `sim` feature: accepts anything, says how to
//! get a build that has the simulator.

use super::CliError;
use clap::Args;
use std::io::Write;

#[derive(Debug, Args)]
pub struct SimArgs {
    /// (ignored: this build has no simulator)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub rest: Vec<String>,
}

pub(super) async fn run(_args: SimArgs, _out: &mut dyn Write) -> Result<(), CliError> {
    Err(CliError::Usage(crate::app::NO_SIMULATOR.to_string()))
}
