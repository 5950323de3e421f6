//! Stored reports: the latest few of each job and format, served over HTTP.

use super::{StateError, Stmt, Store, args, ts};
use chrono::{DateTime, Utc};

/// A stored report: when it was generated, and its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredReport {
    pub generated_at: DateTime<Utc>,
    pub body: Vec<u8>,
}

impl Store {
    pub fn put_report(
        &self,
        job: &str,
        run_id: Option<i64>,
        generated_at: DateTime<Utc>,
        format: &str,
        body: &[u8],
    ) -> Result<(), StateError> {
        self.tx(vec![
            Stmt::new(
                "INSERT INTO reports (job, run_id, generated_at, format, body) VALUES ($1, $2, $3, $4, $5)",
                args![job, run_id, ts(generated_at), format, body],
            ),
            // Keep the latest few of each kind; reports are regenerated every run.
            Stmt::new(
                "DELETE FROM reports WHERE job = $1 AND format = $2 AND id NOT IN
                 (SELECT id FROM reports WHERE job = $1 AND format = $2 ORDER BY id DESC LIMIT 10)",
                args![job, format],
            ),
        ])?;
        Ok(())
    }

    pub fn latest_report(
        &self,
        job: &str,
        format: &str,
    ) -> Result<Option<StoredReport>, StateError> {
        Ok(self
            .query(
                "SELECT generated_at, body FROM reports WHERE job = $1 AND format = $2 ORDER BY id DESC LIMIT 1",
                args![job, format],
                |r| {
                    Ok(StoredReport {
                        generated_at: r.time(0, "reports.generated_at")?,
                        body: r.blob(1, "reports.body")?,
                    })
                },
            )?
            .pop())
    }
}
