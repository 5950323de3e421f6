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

use super::{StateError, Store, args, ts};
use chrono::{DateTime, Utc};
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

/// How one mutation of any job settled — the one outcome vocabulary the
/// executors share, and the one map from it to an audit row's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settled {
    Applied,
    /// The effect was already in place: counted as done.
    AlreadyDone,
    /// Dropped by verification: the registry no longer matches the plan.
    Stale(String),
    Failed(String),
    /// The call was sent and its answer lost (timeout, reset, server
    /// error), and no later check settled whether it happened: audited
    /// `interrupted` with the call's error, counted apart from failures.
    Unknown(String),
}

impl Settled {
    /// The audit status and error its record is finished with.
    pub fn audit(&self) -> (AuditStatus, Option<&str>) {
        match self {
            Settled::Applied => (AuditStatus::Applied, None),
            Settled::AlreadyDone => (AuditStatus::AlreadyDone, None),
            Settled::Stale(why) => (AuditStatus::Stale, Some(why)),
            Settled::Failed(why) => (AuditStatus::Failed, Some(why)),
            Settled::Unknown(why) => (AuditStatus::Interrupted, Some(why)),
        }
    }
}

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
    /// The leader epoch it was written under (PostgreSQL; `None` with
    /// SQLite, where one replica simply leads): a deposed leader's epoch
    /// never appears after its successor's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
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
        self.store.exec(
            "UPDATE audit SET outcome = $1, error = $2, target = COALESCE($3, target) WHERE id = $4",
            args![status.as_str(), error, target, self.id],
        )?;
        Ok(())
    }
}

impl Drop for AuditGuard {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        let r = self.store.exec(
            "UPDATE audit SET outcome = 'interrupted', error = $1 WHERE id = $2 AND outcome = 'started'",
            args![AUDIT_INTERRUPTED_WHY, self.id],
        );
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
        self.query(
            "INSERT INTO audit (at, job, run_id, instance, action, target, detail, outcome, error, epoch) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
            args![ts(at), m.job, m.run_id, m.instance, m.action, m.target, m.detail, status.as_str(), error, self.epoch()],
            |r| r.int(0, "audit.id"),
        )?
        .pop()
        .ok_or_else(|| self.unreadable("audit.id (no id returned)".into()))
    }

    /// Records left `started` by a process that died mid-call: their outcome
    /// is unknown. A store fenced at an epoch (a new leader) closes only the
    /// records of earlier epochs (and of none): never its own term's.
    pub fn close_interrupted_audit(&self) -> Result<usize, StateError> {
        let n = self.exec(
            "UPDATE audit SET outcome = 'interrupted', error = $1 WHERE outcome = 'started'
             AND ($2 IS NULL OR epoch IS NULL OR epoch < $2)",
            args![AUDIT_INTERRUPTED_WHY, self.epoch()],
        )?;
        Ok(n as usize)
    }

    /// The records of one run left `started` (the run stopped mid-call):
    /// their outcome is unknown. Touches no other process's records.
    pub fn close_interrupted_audit_of_run(&self, run_id: i64) -> Result<usize, StateError> {
        let n = self.exec(
            "UPDATE audit SET outcome = 'interrupted', error = $1 WHERE outcome = 'started' AND run_id = $2",
            args![AUDIT_INTERRUPTED_WHY, run_id],
        )?;
        Ok(n as usize)
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
        let limit = limit.map_or(i64::MAX, i64::from);
        let mut records = self.query(
            "SELECT id, at, job, run_id, instance, action, target, detail, outcome, error, epoch FROM audit
             WHERE at >= $1 AND ($2 IS NULL OR job = $2) ORDER BY id DESC LIMIT $3",
            args![since, job, limit],
            |r| {
                Ok(AuditRecord {
                    id: r.int(0, "audit.id")?,
                    at: r.time(1, "audit.at")?,
                    job: r.text(2, "audit.job")?,
                    run_id: r.opt_int(3, "audit.run_id")?,
                    instance: r.text(4, "audit.instance")?,
                    action: r.text(5, "audit.action")?,
                    target: r.text(6, "audit.target")?,
                    detail: r.text(7, "audit.detail")?,
                    outcome: r.parse(8, "audit.outcome")?,
                    error: r.opt_text(9, "audit.error")?,
                    epoch: r.opt_int(10, "audit.epoch")?,
                })
            },
        )?;
        records.reverse();
        Ok(records)
    }
}
