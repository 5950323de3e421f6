//! `audit`: the audit records.

use super::{CliError, OutputFormat, io};
use crate::config::Config;
use crate::duration;
use chrono::Utc;
use clap::Args;
use std::io::Write;

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only records at or after this: an RFC 3339 time or a duration ago (e.g. 7d)
    #[arg(long)]
    pub since: Option<String>,
    /// Only records of this job (retention, tokens, namespaces)
    #[arg(long)]
    pub job: Option<String>,
    /// Only the newest N records
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: OutputFormat,
}

pub(super) fn run(c: &Config, args: &AuditArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let since = match args.since.as_deref() {
        None => None,
        Some(s) => Some(match chrono::DateTime::parse_from_rfc3339(s) {
            Ok(t) => t.with_timezone(&Utc),
            Err(_) => {
                let ago = duration::parse(s).map_err(|e| {
                    CliError::Usage(format!("--since {s:?}: not an RFC 3339 time, and {e}"))
                })?;
                Utc::now()
                    - chrono::Duration::from_std(ago)
                        .map_err(|_| CliError::Usage(format!("--since {s:?}: too far back")))?
            }
        }),
    };
    if let Some(path) = c.state.sqlite_path()
        && !path.exists()
    {
        return Err(CliError::Usage(format!(
            "state {}: no database yet (the daemon creates it)",
            path.display()
        )));
    }
    let store = crate::state::Store::open_config(&c.state).map_err(super::state_failed)?;
    let records = store
        .audit_query(since, args.job.as_deref(), args.limit)
        .map_err(|e| CliError::Failed(e.into()))?;
    let text = match args.format {
        OutputFormat::Json => {
            serde_json::to_string_pretty(&records).expect("audit serialises") + "\n"
        }
        OutputFormat::Table => {
            let mut t = format!(
                "{:<24}  {:<10}  {:<10}  {:<22}  {:<40}  {:<12}  {}\n",
                "AT", "JOB", "INSTANCE", "ACTION", "TARGET", "OUTCOME", "ERROR"
            );
            for r in &records {
                t.push_str(&format!(
                    "{:<24}  {:<10}  {:<10}  {:<22}  {:<40}  {:<12}  {}\n",
                    r.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    r.job,
                    r.instance,
                    r.action,
                    r.target,
                    r.outcome.as_str(),
                    r.error.as_deref().unwrap_or_default()
                ));
            }
            t.push_str(&format!(
                "{} record{}\n",
                records.len(),
                if records.len() == 1 { "" } else { "s" }
            ));
            t
        }
    };
    out.write_all(text.as_bytes()).map_err(io)
}
