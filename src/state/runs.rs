//! Job runs: one row per run (started, then finished with a result), plus
//! skipped triggers and runs a dead process left open.

use super::{StateError, Store, enum_at, opt_time_at, time_at, ts};
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};
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

fn run_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRecord> {
    let result = match r.get_ref(5)? {
        rusqlite::types::ValueRef::Null => None,
        _ => Some(enum_at(r, 5, "runs.result")?),
    };
    Ok(RunRecord {
        id: r.get(0)?,
        job: r.get(1)?,
        trigger: r.get(2)?,
        started_at: time_at(r, 3, "runs.started_at")?,
        finished_at: opt_time_at(r, 4, "runs.finished_at")?,
        result,
        summary: r.get(6)?,
        error: r.get(7)?,
    })
}

impl Store {
    pub fn start_run(
        &self,
        job: &str,
        trigger: &str,
        at: DateTime<Utc>,
    ) -> Result<i64, StateError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO runs (job, trigger, started_at) VALUES (?1, ?2, ?3)",
                params![job, trigger, ts(at)],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    pub fn finish_run(
        &self,
        id: i64,
        at: DateTime<Utc>,
        result: RunResult,
        summary: &str,
        error: Option<&str>,
    ) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "UPDATE runs SET finished_at = ?2, result = ?3, summary = ?4, error = ?5 WHERE id = ?1",
                params![id, ts(at), result.as_str(), summary, error],
            )
            .map(|_| ())
        })
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

    /// The latest finished, non-skipped run of `job`.
    pub fn last_run(&self, job: &str) -> Result<Option<RunRecord>, StateError> {
        self.with(|c| {
            c.query_row(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE job = ?1 AND result IS NOT NULL AND result != 'skipped' ORDER BY id DESC LIMIT 1"
                ),
                params![job],
                run_from_row,
            )
            .optional()
        })
    }

    pub fn last_success(&self, job: &str) -> Result<Option<RunRecord>, StateError> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {RUN_COLUMNS} FROM runs WHERE job = ?1 AND result = 'success' ORDER BY id DESC LIMIT 1"),
                params![job],
                run_from_row,
            )
            .optional()
        })
    }

    /// One run by its id.
    pub fn run(&self, id: i64) -> Result<Option<RunRecord>, StateError> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"),
                params![id],
                run_from_row,
            )
            .optional()
        })
    }

    /// Runs of `job` (or of every job), newest first.
    pub fn runs(&self, job: Option<&str>, limit: u32) -> Result<Vec<RunRecord>, StateError> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE (?1 IS NULL OR job = ?1) ORDER BY id DESC LIMIT ?2"
            ))?;
            stmt.query_map(params![job, limit], run_from_row)?
                .collect()
        })
    }

    /// Runs left without a result by a process that died; marked failed on start.
    pub fn close_abandoned_runs(&self, at: DateTime<Utc>) -> Result<usize, StateError> {
        self.with(|c| {
            c.execute(
                "UPDATE runs SET finished_at = ?1, result = 'failure', error = 'interrupted: the process stopped during the run' WHERE result IS NULL",
                params![ts(at)],
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::now;
    use super::*;

    #[test]
    fn runs_round_trip() {
        let s = Store::in_memory().unwrap();
        let id = s.start_run("quota", "schedule", now()).unwrap();
        assert_eq!(s.runs(Some("quota"), 10).unwrap()[0].result, None);
        s.finish_run(id, now(), RunResult::Success, "2 instances", None)
            .unwrap();
        s.record_skipped("quota", "api", now(), "already running")
            .unwrap();
        let last = s.last_run("quota").unwrap().unwrap();
        assert_eq!(
            (last.id, last.result, last.summary.as_str()),
            (id, Some(RunResult::Success), "2 instances")
        );
        assert_eq!(s.last_success("quota").unwrap().unwrap().id, id);
        assert!(s.last_run("retention").unwrap().is_none());
        assert_eq!(s.runs(None, 10).unwrap().len(), 2);
    }

    #[test]
    fn abandoned_runs_are_closed_as_failures() {
        let s = Store::in_memory().unwrap();
        s.start_run("retention", "schedule", now()).unwrap();
        assert_eq!(s.close_abandoned_runs(now()).unwrap(), 1);
        let r = s.last_run("retention").unwrap().unwrap();
        assert_eq!(r.result, Some(RunResult::Failure));
        assert!(r.error.unwrap().contains("interrupted"));
    }

    #[test]
    fn an_unreadable_time_or_result_is_an_error_never_1970() {
        let s = Store::in_memory().unwrap();
        let id = s.start_run("quota", "schedule", now()).unwrap();
        s.with(|c| {
            c.execute(
                "UPDATE runs SET started_at = 'yesterday' WHERE id = ?1",
                [id],
            )
        })
        .unwrap();
        let e = s.runs(None, 10).unwrap_err();
        assert!(matches!(e, StateError::Unreadable { .. }), "{e}");
        assert!(
            e.to_string().contains("\"yesterday\" in runs.started_at"),
            "{e}"
        );
        s.with(|c| {
            c.execute(
                "UPDATE runs SET started_at = '2026-11-22T10:00:00.000Z', result = 'maybe' WHERE id = ?1",
                [id],
            )
        })
        .unwrap();
        let e = s.runs(None, 10).unwrap_err();
        assert!(e.to_string().contains("\"maybe\" in runs.result"), "{e}");
    }
}
