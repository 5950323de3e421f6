//! `history`: the job runs, from the daemon (schedule, start, api) and from
//! one-shot `apply` commands (cli) alike.

use super::term;
use super::{CliError, OutputFormat, io};
use crate::config::Config;
use crate::state::{RunRecord, RunResult};
use clap::{Args, ValueEnum};
use std::io::Write;

/// The jobs that record runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HistoryJob {
    Retention,
    Tokens,
    Namespaces,
    Quota,
}

impl HistoryJob {
    fn as_str(self) -> &'static str {
        match self {
            HistoryJob::Retention => "retention",
            HistoryJob::Tokens => "tokens",
            HistoryJob::Namespaces => "namespaces",
            HistoryJob::Quota => "quota",
        }
    }
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Only runs of this job
    #[arg(long, value_enum)]
    pub job: Option<HistoryJob>,
    /// The newest N runs
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub limit: u32,
    #[arg(long, value_enum, default_value = "table")]
    pub format: OutputFormat,
}

pub(super) fn run(c: &Config, args: &HistoryArgs, out: &mut dyn Write) -> Result<(), CliError> {
    if let Some(path) = c.state.sqlite_path()
        && !path.exists()
    {
        return Err(CliError::Usage(format!(
            "state {}: no database yet (the daemon or an apply creates it)",
            path.display()
        )));
    }
    let store = crate::state::Store::open_config(&c.state).map_err(super::state_failed)?;
    let runs = store
        .runs(args.job.map(HistoryJob::as_str), args.limit)
        .map_err(|e| CliError::Failed(e.into()))?;
    let text = match args.format {
        OutputFormat::Json => serde_json::to_string_pretty(&runs).expect("runs serialise") + "\n",
        OutputFormat::Table => table(&runs),
    };
    out.write_all(text.as_bytes()).map_err(io)
}

fn table(runs: &[RunRecord]) -> String {
    let mut t = format!(
        "{:>6}  {:<20}  {:<10}  {:<8}  {:<8}  {:>8}  {}\n",
        "ID", "STARTED", "JOB", "TRIGGER", "RESULT", "TOOK", "SUMMARY"
    );
    let colour = super::term::stdout_colour();
    for r in runs {
        let took = r.finished_at.map_or("-".to_owned(), |f| {
            let d = (f - r.started_at).to_std().unwrap_or_default();
            crate::duration::format(std::time::Duration::from_secs(d.as_secs()))
        });
        let summary = match (&r.error, r.summary.as_str()) {
            (Some(e), "") => format!("error: {e}"),
            (Some(e), s) => format!("error: {e}; {s}"),
            (None, s) => s.to_owned(),
        };
        let result = r.result.map_or("running", |x| x.as_str());
        // Padded before painting, so the columns stay aligned.
        let style = match r.result {
            Some(RunResult::Success) => Some(term::green()),
            Some(RunResult::Failure) => Some(term::red()),
            Some(RunResult::Blocked) => Some(term::yellow()),
            _ => None,
        };
        let result = match style {
            Some(s) => term::paint(colour, s, &format!("{result:<8}")),
            None => format!("{result:<8}"),
        };
        t.push_str(&format!(
            "{:>6}  {:<20}  {:<10}  {:<8}  {}  {:>8}  {}\n",
            r.id,
            r.started_at.format("%Y-%m-%dT%H:%M:%SZ"),
            r.job,
            r.trigger,
            result,
            took,
            summary
        ));
    }
    t.push_str(&format!(
        "{} run{}\n",
        runs.len(),
        if runs.len() == 1 { "" } else { "s" }
    ));
    t
}
