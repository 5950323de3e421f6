//! `doctor` (and `check --online`): per instance, each check with ✔/✘ and a
//! one-line fix (the checks live in [`crate::doctor`]). Exit 1 on any ✘.

use super::{CliError, OutputFormat, failed, io};
use crate::config::Config;
use crate::{app, doctor};
use clap::Args;
use std::io::Write;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[arg(long, value_enum, default_value = "table")]
    pub format: OutputFormat,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Also run every `doctor` check against the API and the registry
    #[arg(long)]
    pub online: bool,
    /// The online checks' form (`json`: the doctor's JSON alone on stdout,
    /// the offline summary on stderr); needs --online
    #[arg(long, value_enum, default_value = "table", requires = "online")]
    pub format: OutputFormat,
}

pub(super) async fn run(
    c: &Config,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let conn = app::connect(c).await.map_err(|e| failed(e, "connecting"))?;
    let report = doctor::diagnose(&conn.client, c, chrono::Utc::now()).await;
    let text = match format {
        OutputFormat::Table => report.render(),
        OutputFormat::Json => report.to_json(),
    };
    out.write_all(text.as_bytes()).map_err(io)?;
    if report.ok {
        Ok(())
    } else {
        Err(CliError::Failed(anyhow::anyhow!(
            "doctor: a check failed (✘ above, each with its fix)"
        )))
    }
}
