//! Job runs: one row per run (started, then finished with a result), plus
//! skipped triggers and runs a dead process left open.

use super::{Row, StateError, Store, Unreadable, args, ts};
use chrono::{DateTime, Utc};
use serde::Serialize;

/// How a run ended.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Serialize,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::Display,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum RunResult {
    Success,
    Failure,
    Blocked,
    Skipped,
}

super::text_column!(RunResult);

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunRecord {
    pub id: i64,
    pub job: String,
    pub trigger: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// `None` while the run is in progress (or if the process died during it).
    pub result: Option<RunResult>,
    pub summary: String,
    pub error: Option<String>,
}

const RUN_COLUMNS: &str = "id, job, trigger, started_at, finished_at, result, summary, error";

fn run_from_row(r: &Row) -> Result<RunRecord, Unreadable> {
    let result = match r.opt_text(5, "runs.result")? {
        None => None,
        Some(_) => Some(r.parse(5, "runs.result")?),
    };
    Ok(RunRecord {
        id: r.int(0, "runs.id")?,
        job: r.text(1, "runs.job")?,
        trigger: r.text(2, "runs.trigger")?,
        started_at: r.time(3, "runs.started_at")?,
        finished_at: r.opt_time(4, "runs.finished_at")?,
        result,
        summary: r.text(6, "runs.summary")?,
        error: r.opt_text(7, "runs.error")?,
    })
}

impl Store {
    pub fn start_run(
        &self,
        job: &str,
        trigger: &str,
        at: DateTime<Utc>,
    ) -> Result<i64, StateError> {
        let ids = self.query(
            "INSERT INTO runs (job, trigger, started_at) VALUES ($1, $2, $3) RETURNING id",
            args![job, trigger, ts(at)],
            |r| r.int(0, "runs.id"),
        )?;
        ids.first()
            .copied()
            .ok_or_else(|| self.unreadable("runs.id (no id returned)".into()))
    }

    pub fn finish_run(
        &self,
        id: i64,
        at: DateTime<Utc>,
        result: RunResult,
        summary: &str,
        error: Option<&str>,
    ) -> Result<(), StateError> {
        self.exec(
            "UPDATE runs SET finished_at = $1, result = $2, summary = $3, error = $4 WHERE id = $5",
            args![ts(at), result.as_str(), summary, error, id],
        )?;
        Ok(())
    }

    /// A run that never started (skipped because another was running).
    pub fn record_skipped(
        &self,
        job: &str,
        trigger: &str,
        at: DateTime<Utc>,
        why: &str,
    ) -> Result<i64, StateError> {
        let id = self.start_run(job, trigger, at)?;
        self.finish_run(id, at, RunResult::Skipped, why, None)?;
        Ok(id)
    }

    fn one_run(&self, sql: &str, arg: super::Param) -> Result<Option<RunRecord>, StateError> {
        Ok(self.query(sql, vec![arg], run_from_row)?.pop())
    }

    /// The latest finished, non-skipped run of `job`.
    pub fn last_run(&self, job: &str) -> Result<Option<RunRecord>, StateError> {
        self.one_run(
            &format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE job = $1 AND result IS NOT NULL AND result != 'skipped' ORDER BY id DESC LIMIT 1"
            ),
            job.into(),
        )
    }

    pub fn last_success(&self, job: &str) -> Result<Option<RunRecord>, StateError> {
        self.one_run(
            &format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE job = $1 AND result = 'success' ORDER BY id DESC LIMIT 1"
            ),
            job.into(),
        )
    }

    /// One run by its id.
    pub fn run(&self, id: i64) -> Result<Option<RunRecord>, StateError> {
        self.one_run(
            &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1"),
            id.into(),
        )
    }

    /// Runs of `job` (or of every job), newest first.
    pub fn runs(&self, job: Option<&str>, limit: u32) -> Result<Vec<RunRecord>, StateError> {
        self.query(
            &format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE ($1 IS NULL OR job = $1) ORDER BY id DESC LIMIT $2"
            ),
            args![job, i64::from(limit)],
            run_from_row,
        )
    }

    /// Runs left without a result by a process that died; marked failed on start.
    pub fn close_abandoned_runs(&self, at: DateTime<Utc>) -> Result<usize, StateError> {
        let n = self.exec(
            "UPDATE runs SET finished_at = $1, result = 'failure', error = 'interrupted: the process stopped during the run' WHERE result IS NULL",
            args![ts(at)],
        )?;
        Ok(n as usize)
    }
}
