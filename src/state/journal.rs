//! The token rotation journal (its record type is the tokens job's,
//! [`RotationRecord`]), the backoff after failed rotations, per token and
//! instance.

use super::{StateError, Store, enum_at, opt_time_at, time_at, ts};
use crate::tokens::journal::RotationRecord;
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

/// Consecutive failed rotations of one managed token on one instance: the
/// next attempt waits (exponentially, capped by the planner).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenBackoff {
    pub failures: u32,
    pub last_failure_at: DateTime<Utc>,
    pub error: String,
    /// A fingerprint of the token's config when it failed: a changed config
    /// (the operator fixed a sink) is tried at once.
    pub config: String,
}

impl Store {
    /// Insert or replace rotation journal records in one transaction (a step
    /// that moves two rotations, like marking one current and superseding the
    /// other, lands whole or not at all).
    pub fn journal_put(&self, records: &[RotationRecord]) -> Result<(), StateError> {
        self.with_tx(|tx| {
            let mut up = tx.prepare(
                "INSERT INTO rotation_journal (rotation_id, token_name, instance, token_id, previous_token_id, step, expires_at, created_at, updated_at, error, absent_since)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT(rotation_id) DO UPDATE SET token_name = excluded.token_name, instance = excluded.instance,
                   token_id = excluded.token_id, previous_token_id = excluded.previous_token_id, step = excluded.step,
                   expires_at = excluded.expires_at, created_at = excluded.created_at, updated_at = excluded.updated_at,
                   error = excluded.error, absent_since = excluded.absent_since",
            )?;
            for r in records {
                up.execute(params![
                    r.rotation_id,
                    r.token_name,
                    r.instance,
                    r.token_id,
                    r.previous_token_id,
                    r.step.as_str(),
                    r.expires_at.map(ts),
                    ts(r.created_at),
                    ts(r.updated_at),
                    r.error,
                    r.absent_since.map(ts)
                ])?;
            }
            Ok(())
        })
    }

    /// The journal of one managed token (every instance it lived on), oldest
    /// first. A step or time this build cannot read is an error.
    pub fn journal_for(&self, token_name: &str) -> Result<Vec<RotationRecord>, StateError> {
        self.with(|c| {
            c.prepare(
                "SELECT rotation_id, token_name, instance, token_id, previous_token_id, step, expires_at, created_at, updated_at, error, absent_since
                 FROM rotation_journal WHERE token_name = ?1 ORDER BY created_at, rotation_id",
            )?
            .query_map(params![token_name], |r| {
                Ok(RotationRecord {
                    rotation_id: r.get(0)?,
                    token_name: r.get(1)?,
                    instance: r.get(2)?,
                    token_id: r.get(3)?,
                    previous_token_id: r.get(4)?,
                    step: enum_at(r, 5, "rotation_journal.step")?,
                    expires_at: opt_time_at(r, 6, "rotation_journal.expires_at")?,
                    created_at: time_at(r, 7, "rotation_journal.created_at")?,
                    updated_at: time_at(r, 8, "rotation_journal.updated_at")?,
                    error: r.get(9)?,
                    absent_since: opt_time_at(r, 10, "rotation_journal.absent_since")?,
                })
            })?
            .collect()
        })
    }

    /// The backoff of a managed token on an instance after failed rotations.
    pub fn token_backoff(
        &self,
        token_name: &str,
        instance: &str,
    ) -> Result<Option<TokenBackoff>, StateError> {
        self.with(|c| {
            c.query_row(
                "SELECT failures, last_failure_at, error, config FROM token_backoff WHERE token_name = ?1 AND instance = ?2",
                params![token_name, instance],
                |r| {
                    Ok(TokenBackoff {
                        failures: r.get(0)?,
                        last_failure_at: time_at(r, 1, "token_backoff.last_failure_at")?,
                        error: r.get(2)?,
                        config: r.get(3)?,
                    })
                },
            )
            .optional()
        })
    }

    /// Count one more failed rotation under the config `config` (a
    /// fingerprint; failures under another config start over at 1); returns
    /// the consecutive failures.
    pub fn token_backoff_fail(
        &self,
        token_name: &str,
        instance: &str,
        at: DateTime<Utc>,
        error: &str,
        config: &str,
    ) -> Result<u32, StateError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO token_backoff (token_name, instance, failures, last_failure_at, error, config) VALUES (?1, ?2, 1, ?3, ?4, ?5)
                 ON CONFLICT(token_name, instance) DO UPDATE SET
                   failures = CASE WHEN config = excluded.config THEN failures + 1 ELSE 1 END,
                   last_failure_at = excluded.last_failure_at, error = excluded.error, config = excluded.config",
                params![token_name, instance, ts(at), error, config],
            )?;
            c.query_row(
                "SELECT failures FROM token_backoff WHERE token_name = ?1 AND instance = ?2",
                params![token_name, instance],
                |r| r.get(0),
            )
        })
    }

    /// A rotation succeeded: no more backoff.
    pub fn token_backoff_clear(&self, token_name: &str, instance: &str) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM token_backoff WHERE token_name = ?1 AND instance = ?2",
                params![token_name, instance],
            )
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::now;
    use super::*;
    use crate::tokens::journal::Step;

    fn record() -> RotationRecord {
        RotationRecord {
            rotation_id: "r1".into(),
            token_name: "t".into(),
            instance: "prod".into(),
            token_id: Some("x".into()),
            previous_token_id: None,
            step: Step::Current,
            expires_at: None,
            created_at: now(),
            updated_at: now(),
            error: None,
            absent_since: Some(now()),
        }
    }

    #[test]
    fn an_unknown_step_is_an_error_not_a_skipped_record() {
        let s = Store::in_memory().unwrap();
        s.journal_put(&[record()]).unwrap();
        assert_eq!(s.journal_for("t").unwrap()[0].step, Step::Current);
        s.with(|c| c.execute("UPDATE rotation_journal SET step = 'retired'", []))
            .unwrap();
        let e = s.journal_for("t").unwrap_err();
        assert!(matches!(e, StateError::Unreadable { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("\"retired\" in rotation_journal.step"),
            "{e}"
        );
    }

    #[test]
    fn an_unreadable_backoff_time_is_an_error() {
        let s = Store::in_memory().unwrap();
        s.token_backoff_fail("t", "prod", now(), "boom", "c1")
            .unwrap();
        s.with(|c| c.execute("UPDATE token_backoff SET last_failure_at = ''", []))
            .unwrap();
        assert!(matches!(
            s.token_backoff("t", "prod"),
            Err(StateError::Unreadable { .. })
        ));
    }

    #[test]
    fn install_id_backoff_and_absence_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let s = Store::open(&path).unwrap();
        let id = s.install_id().unwrap();
        assert_eq!(id.len(), 12);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(
            s.token_backoff_fail("t", "prod", now(), "boom", "c1")
                .unwrap(),
            1
        );
        assert_eq!(
            s.token_backoff_fail("t", "prod", now(), "bang", "c1")
                .unwrap(),
            2
        );
        s.journal_put(&[RotationRecord {
            rotation_id: "r1".into(),
            token_name: "t".into(),
            instance: "prod".into(),
            token_id: Some("x".into()),
            previous_token_id: None,
            step: Step::Current,
            expires_at: None,
            created_at: now(),
            updated_at: now(),
            error: None,
            absent_since: Some(now()),
        }])
        .unwrap();
        drop(s);
        let s = Store::open(&path).unwrap();
        assert_eq!(s.install_id().unwrap(), id, "generated once per state");
        let b = s.token_backoff("t", "prod").unwrap().unwrap();
        assert_eq!((b.failures, b.error.as_str()), (2, "bang"));
        assert_eq!(s.token_backoff("t", "staging").unwrap(), None);
        assert_eq!(s.journal_for("t").unwrap()[0].absent_since, Some(now()));
        assert_eq!(b.config, "c1");
        assert_eq!(
            s.token_backoff_fail("t", "prod", now(), "x", "c2").unwrap(),
            1,
            "another config starts over"
        );
        s.token_backoff_clear("t", "prod").unwrap();
        assert_eq!(s.token_backoff("t", "prod").unwrap(), None);
    }
}
