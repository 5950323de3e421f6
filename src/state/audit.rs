//! The one audited-mutation API, used by every mutation of every job
//! (retention deletes, namespace changes, token create/disable/delete):
//!
//! ```ignore
//! let audit = state.audited(&Mutation { job, run_id, instance, action, target, detail }, now)?;
//! // ... send the call ...
//! audit.finish(AuditStatus::Applied, None)?;
//! ```
//!
//! [`Store::audited`] writes the record `started` before the call is sent
//! (no record, no call); [`AuditGuard::finish`] sets the outcome. A guard
//! dropped unfinished (the job's future dropped mid-call, a panic) marks its
//! record `interrupted`; a process that dies leaves it `started`, and the next
//! start closes it as `interrupted` ([`Store::close_interrupted_audit`]).

use super::{StateError, Store, enum_at, time_at, ts};
use chrono::{DateTime, Utc};
use rusqlite::params;
use serde::Serialize;

/// Where an audited mutation stands: the one outcome enum of every job.
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
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum AuditStatus {
    /// Written before the call was sent; the call has not returned (yet).
    Started,
    Applied,
    /// The effect was already in place: nothing sent, or a retry found it done.
    AlreadyDone,
    /// Dropped: the registry no longer matches what was planned.
    Stale,
    Failed,
    /// The process stopped during the call: the outcome is unknown.
    Interrupted,
}

super::text_column!(AuditStatus);

/// The error of an interrupted record.
pub const AUDIT_INTERRUPTED_WHY: &str =
    "the process stopped during the call; the next run re-checks it";

/// One applied (or attempted) mutation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuditRecord {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub job: String,
    pub run_id: Option<i64>,
    pub instance: String,
    /// e.g. `delete_image`, `delete_tag`, `modify_namespace_type`, `create_token`.
    pub action: String,
    /// e.g. `apps/web@sha256:…` or a token id.
    pub target: String,
    pub detail: String,
    pub outcome: AuditStatus,
    /// Why it failed, was stale or was interrupted.
    pub error: Option<String>,
}

/// A mutation about to be sent (or decided without sending one).
#[derive(Clone, Debug)]
pub struct Mutation<'a> {
    pub job: &'a str,
    pub run_id: Option<i64>,
    pub instance: &'a str,
    /// e.g. `delete_image`, `modify_namespace_type`, `create_token`.
    pub action: &'a str,
    /// What it changes; a guard may name it better once the call returns
    /// ([`AuditGuard::finish_as`]).
    pub target: &'a str,
    pub detail: &'a str,
}

/// A `started` audit record; [`AuditGuard::finish`] writes the outcome.
/// Dropped unfinished, it marks the record `interrupted`.
#[must_use = "finish the audit record with the call's outcome"]
pub struct AuditGuard {
    store: Store,
    id: i64,
    open: bool,
}

impl std::fmt::Debug for AuditGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditGuard").field("id", &self.id).finish()
    }
}

impl AuditGuard {
    /// The record's id.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// Set the outcome (`error`: why it failed, was stale or interrupted).
    pub fn finish(self, status: AuditStatus, error: Option<&str>) -> Result<(), StateError> {
        self.close(status, error, None)
    }

    /// Set the outcome and the target known only now (a created token's id).
    pub fn finish_as(
        self,
        status: AuditStatus,
        error: Option<&str>,
        target: &str,
    ) -> Result<(), StateError> {
        self.close(status, error, Some(target))
    }

    fn close(
        mut self,
        status: AuditStatus,
        error: Option<&str>,
        target: Option<&str>,
    ) -> Result<(), StateError> {
        debug_assert!(status != AuditStatus::Started, "an outcome, not `started`");
        // Tried once: a failed write leaves the record `started`, which the
        // next start closes as interrupted; Drop does not write it again.
        self.open = false;
        self.store.with(|c| {
            c.execute(
                "UPDATE audit SET outcome = ?2, error = ?3, target = COALESCE(?4, target) WHERE id = ?1",
                params![self.id, status.as_str(), error, target],
            )
            .map(|_| ())
        })
    }
}

impl Drop for AuditGuard {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        let r = self.store.with(|c| {
            c.execute(
                "UPDATE audit SET outcome = 'interrupted', error = ?2 WHERE id = ?1 AND outcome = 'started'",
                params![self.id, AUDIT_INTERRUPTED_WHY],
            )
        });
        match r {
            Ok(_) => tracing::warn!(
                audit_id = self.id,
                "a mutation stopped before its outcome was known: audited interrupted"
            ),
            Err(e) => {
                tracing::error!(audit_id = self.id, error = %e, "cannot mark the audit record interrupted")
            }
        }
    }
}

impl Store {
    /// Write-ahead: record `m` as `started` before its call is sent, so a
    /// process killed between the call and the record still leaves a trace.
    /// No guard, no call.
    pub fn audited(&self, m: &Mutation<'_>, at: DateTime<Utc>) -> Result<AuditGuard, StateError> {
        let id = self.insert_audit(m, AuditStatus::Started, None, at)?;
        Ok(AuditGuard {
            store: self.clone(),
            id,
            open: true,
        })
    }

    /// Record a mutation decided without sending its call: the re-read found
    /// it already done, or failed so that nothing was sent.
    pub fn audit_unsent(
        &self,
        m: &Mutation<'_>,
        status: AuditStatus,
        error: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<i64, StateError> {
        self.insert_audit(m, status, error, at)
    }

    fn insert_audit(
        &self,
        m: &Mutation<'_>,
        status: AuditStatus,
        error: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<i64, StateError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO audit (at, job, run_id, instance, action, target, detail, outcome, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![ts(at), m.job, m.run_id, m.instance, m.action, m.target, m.detail, status.as_str(), error],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    /// Records left `started` by a process that died mid-call: their outcome is unknown.
    pub fn close_interrupted_audit(&self) -> Result<usize, StateError> {
        self.with(|c| {
            c.execute(
                "UPDATE audit SET outcome = 'interrupted', error = ?1 WHERE outcome = 'started'",
                params![AUDIT_INTERRUPTED_WHY],
            )
        })
    }

    /// The records of one run left `started` (the run stopped mid-call):
    /// their outcome is unknown. Touches no other process's records.
    pub fn close_interrupted_audit_of_run(&self, run_id: i64) -> Result<usize, StateError> {
        self.with(|c| {
            c.execute(
                "UPDATE audit SET outcome = 'interrupted', error = ?1 WHERE outcome = 'started' AND run_id = ?2",
                params![AUDIT_INTERRUPTED_WHY, run_id],
            )
        })
    }

    /// Audit records at or after `since`, oldest first.
    pub fn audit_since(
        &self,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<AuditRecord>, StateError> {
        self.audit_query(since, None, None)
    }

    /// Audit records at or after `since`, of `job` if given, the newest
    /// `limit` if given; oldest first.
    pub fn audit_query(
        &self,
        since: Option<DateTime<Utc>>,
        job: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Vec<AuditRecord>, StateError> {
        let since = since.map(ts).unwrap_or_default();
        let limit = limit.map_or(-1, i64::from);
        let mut records = self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, at, job, run_id, instance, action, target, detail, outcome, error FROM audit
                 WHERE at >= ?1 AND (?2 IS NULL OR job = ?2) ORDER BY id DESC LIMIT ?3",
            )?;
            stmt.query_map(params![since, job, limit], |r| {
                Ok(AuditRecord {
                    id: r.get(0)?,
                    at: time_at(r, 1, "audit.at")?,
                    job: r.get(2)?,
                    run_id: r.get(3)?,
                    instance: r.get(4)?,
                    action: r.get(5)?,
                    target: r.get(6)?,
                    detail: r.get(7)?,
                    outcome: enum_at(r, 8, "audit.outcome")?,
                    error: r.get(9)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        records.reverse();
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::super::MIGRATIONS;
    use super::super::tests::now;
    use super::*;
    use rusqlite::Connection;

    fn mutation(job: &'static str, action: &'static str) -> Mutation<'static> {
        Mutation {
            job,
            run_id: None,
            instance: "prod",
            action,
            target: "apps/web:pr-1",
            detail: "rule ci-builds",
        }
    }

    #[test]
    fn audit_records_filter_by_time() {
        let s = Store::in_memory().unwrap();
        let rec = mutation("retention", "delete_tag");
        s.audit_unsent(&rec, AuditStatus::Applied, None, now())
            .unwrap();
        s.audit_unsent(
            &rec,
            AuditStatus::Applied,
            None,
            now() + chrono::Duration::hours(2),
        )
        .unwrap();
        assert_eq!(s.audit_since(None).unwrap().len(), 2);
        assert_eq!(
            s.audit_since(Some(now() + chrono::Duration::hours(1)))
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn write_ahead_audit_records_survive_a_crash_as_interrupted() {
        let s = Store::in_memory().unwrap();
        let rec = Mutation {
            target: "rotation r1",
            detail: "ci-pull",
            ..mutation("tokens", "create_token")
        };
        let done = s.audited(&rec, now()).unwrap();
        let crashed = s.audited(&rec, now()).unwrap();
        let crashed_id = crashed.id();
        // A process that dies runs no destructor.
        std::mem::forget(crashed);
        done.finish_as(AuditStatus::Applied, None, "tok-1").unwrap();
        let all = s.audit_since(None).unwrap();
        assert_eq!(
            (all[0].outcome.as_str(), all[0].target.as_str()),
            ("applied", "tok-1")
        );
        assert_eq!(
            (all[1].id, all[1].outcome.as_str()),
            (crashed_id, "started")
        );
        assert_eq!(s.close_interrupted_audit().unwrap(), 1);
        let all = s.audit_since(None).unwrap();
        assert_eq!(all[0].outcome, "applied");
        assert_eq!(all[1].outcome, "interrupted");
        assert_eq!(all[1].target, "rotation r1");
    }

    #[test]
    fn a_guard_dropped_mid_call_records_interrupted_and_a_finished_one_its_outcome() {
        let s = Store::in_memory().unwrap();
        let rec = mutation("retention", "delete_image");
        drop(s.audited(&rec, now()).unwrap());
        s.audited(&rec, now())
            .unwrap()
            .finish(AuditStatus::Failed, Some("AccessDenied"))
            .unwrap();
        let all = s.audit_since(None).unwrap();
        assert_eq!(all[0].outcome, AuditStatus::Interrupted);
        assert_eq!(all[0].error.as_deref(), Some(AUDIT_INTERRUPTED_WHY));
        assert_eq!(
            (all[1].outcome, all[1].error.as_deref()),
            (AuditStatus::Failed, Some("AccessDenied"))
        );
    }

    #[test]
    fn statuses_round_trip_and_unknown_ones_are_refused() {
        for s in [
            AuditStatus::Started,
            AuditStatus::Applied,
            AuditStatus::AlreadyDone,
            AuditStatus::Stale,
            AuditStatus::Failed,
            AuditStatus::Interrupted,
        ] {
            assert_eq!(s.as_str().parse::<AuditStatus>().unwrap(), s);
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::json!(s.as_str())
            );
        }
        assert_eq!(AuditStatus::AlreadyDone.as_str(), "already_done");
        assert!("already-done".parse::<AuditStatus>().is_err());
    }

    #[test]
    fn an_unreadable_audit_time_is_an_error() {
        let s = Store::in_memory().unwrap();
        s.audit_unsent(
            &mutation("retention", "delete_tag"),
            AuditStatus::Applied,
            None,
            now(),
        )
        .unwrap();
        s.with(|c| c.execute("UPDATE audit SET at = 'not a time'", []))
            .unwrap();
        let e = s.audit_since(None).unwrap_err();
        assert!(e.to_string().contains("\"not a time\" in audit.at"), "{e}");
    }

    #[test]
    fn a_version_1_audit_table_migrates_to_statuses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
            for (i, outcome) in [
                "applied",
                "already-done",
                "failed: InvalidParameterValue: tag not found",
                "skipped: the namespace is gone",
                "started",
                "interrupted: the process stopped during the call; the next run re-checks it",
            ]
            .iter()
            .enumerate()
            {
                c.execute(
                    "INSERT INTO audit (id, at, job, instance, action, target, outcome) VALUES (?1, '2026-01-01T00:00:00.000Z', 'retention', 'prod', 'delete_tag', 't', ?2)",
                    params![i as i64 + 1, outcome],
                )
                .unwrap();
            }
        }
        let s = Store::open(&path).unwrap();
        let got: Vec<(String, Option<String>)> = s
            .audit_since(None)
            .unwrap()
            .into_iter()
            .map(|r| (r.outcome.as_str().to_owned(), r.error))
            .collect();
        let want = [
            ("applied", None),
            ("already_done", None),
            ("failed", Some("InvalidParameterValue: tag not found")),
            ("stale", Some("the namespace is gone")),
            ("started", None),
            (
                "interrupted",
                Some("the process stopped during the call; the next run re-checks it"),
            ),
        ];
        let want: Vec<(String, Option<String>)> = want
            .iter()
            .map(|(o, e)| (o.to_string(), e.map(str::to_owned)))
            .collect();
        assert_eq!(got, want);
        // Only statuses can be stored.
        let bad = s.with(|c| c.execute("UPDATE audit SET outcome = 'failed: x' WHERE id = 1", []));
        assert!(bad.is_err());
        let id = s
            .audit_unsent(
                &Mutation {
                    job: "tokens",
                    run_id: None,
                    instance: "prod",
                    action: "delete_token",
                    target: "t",
                    detail: "",
                },
                AuditStatus::Failed,
                Some("AccessDenied"),
                now(),
            )
            .unwrap();
        let last = s.audit_query(None, Some("tokens"), Some(1)).unwrap();
        assert_eq!(
            (last[0].id, last[0].outcome, last[0].error.as_deref()),
            (id, AuditStatus::Failed, Some("AccessDenied"))
        );
    }
}
