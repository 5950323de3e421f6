//! Stored reports: the latest few of each job and format, served over HTTP.

use super::{StateError, Store, time_at, ts};
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

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
        self.with(|c| {
            c.execute(
                "INSERT INTO reports (job, run_id, generated_at, format, body) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![job, run_id, ts(generated_at), format, body],
            )?;
            // Keep the latest few of each kind; reports are regenerated every run.
            c.execute(
                "DELETE FROM reports WHERE job = ?1 AND format = ?2 AND id NOT IN
                 (SELECT id FROM reports WHERE job = ?1 AND format = ?2 ORDER BY id DESC LIMIT 10)",
                params![job, format],
            )
            .map(|_| ())
        })
    }

    pub fn latest_report(
        &self,
        job: &str,
        format: &str,
    ) -> Result<Option<StoredReport>, StateError> {
        self.with(|c| {
            c.query_row(
                "SELECT generated_at, body FROM reports WHERE job = ?1 AND format = ?2 ORDER BY id DESC LIMIT 1",
                params![job, format],
                |r| {
                    Ok(StoredReport {
                        generated_at: time_at(r, 0, "reports.generated_at")?,
                        body: r.get(1)?,
                    })
                },
            )
            .optional()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::now;
    use super::*;

    #[test]
    fn the_latest_ten_reports_are_kept() {
        let s = Store::in_memory().unwrap();
        for i in 0..12 {
            s.put_report("retention", None, now(), "json", format!("{i}").as_bytes())
                .unwrap();
        }
        assert_eq!(
            s.latest_report("retention", "json").unwrap().unwrap().body,
            b"11"
        );
        assert!(s.latest_report("retention", "html").unwrap().is_none());
        let kept: i64 = s
            .with(|c| c.query_row("SELECT COUNT(*) FROM reports", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(kept, 10);
    }
}
