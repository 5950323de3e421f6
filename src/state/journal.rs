//! The token rotation journal (its record type is the tokens job's,
//! [`RotationRecord`]), the backoff after failed rotations, per token and
//! instance.

use super::{StateError, Stmt, Store, args, ts};
use crate::tokens::journal::{DeliveryRecord, RotationRecord};
use chrono::{DateTime, Utc};

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
        self.journal_put_delivery(records, None)
    }

    /// [`Store::journal_put`] and, in the same transaction, a delivery
    /// record (inserted or replaced): a step that reaches the sinks and the
    /// record of who they are land together or not at all.
    pub fn journal_put_delivery(
        &self,
        records: &[RotationRecord],
        delivery: Option<&DeliveryRecord>,
    ) -> Result<(), StateError> {
        let mut stmts: Vec<Stmt> = records
            .iter()
            .map(|r| {
                Stmt::new(
                    "INSERT INTO rotation_journal (rotation_id, token_name, instance, token_id, previous_token_id, step, expires_at, created_at, updated_at, error, absent_since)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                     ON CONFLICT (rotation_id) DO UPDATE SET token_name = excluded.token_name, instance = excluded.instance,
                       token_id = excluded.token_id, previous_token_id = excluded.previous_token_id, step = excluded.step,
                       expires_at = excluded.expires_at, created_at = excluded.created_at, updated_at = excluded.updated_at,
                       error = excluded.error, absent_since = excluded.absent_since",
                    args![
                        &r.rotation_id,
                        &r.token_name,
                        &r.instance,
                        &r.token_id,
                        &r.previous_token_id,
                        r.step.as_str(),
                        r.expires_at.map(ts),
                        ts(r.created_at),
                        ts(r.updated_at),
                        &r.error,
                        r.absent_since.map(ts)
                    ],
                )
            })
            .collect();
        if let Some(d) = delivery {
            stmts.push(Stmt::new(
                "INSERT INTO token_delivery (rotation_id, delivery_group, token_name, token_id, began_at, delivered_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (rotation_id, delivery_group) DO UPDATE SET token_name = excluded.token_name,
                   token_id = excluded.token_id, began_at = excluded.began_at, delivered_at = excluded.delivered_at",
                args![
                    &d.rotation_id,
                    &d.group,
                    &d.token_name,
                    &d.token_id,
                    ts(d.began_at),
                    d.delivered_at.map(ts)
                ],
            ));
        }
        self.tx(stmts)?;
        Ok(())
    }

    /// Every delivery record of one managed token, oldest first.
    pub fn deliveries_for(&self, token_name: &str) -> Result<Vec<DeliveryRecord>, StateError> {
        self.query(
            "SELECT rotation_id, token_name, delivery_group, token_id, began_at, delivered_at
             FROM token_delivery WHERE token_name = $1 ORDER BY began_at, rotation_id, delivery_group",
            args![token_name],
            |r| {
                Ok(DeliveryRecord {
                    rotation_id: r.text(0, "token_delivery.rotation_id")?,
                    token_name: r.text(1, "token_delivery.token_name")?,
                    group: r.text(2, "token_delivery.delivery_group")?,
                    token_id: r.text(3, "token_delivery.token_id")?,
                    began_at: r.time(4, "token_delivery.began_at")?,
                    delivered_at: r.opt_time(5, "token_delivery.delivered_at")?,
                })
            },
        )
    }

    /// The journal of one managed token (every instance it lived on), oldest
    /// first. A step or time this build cannot read is an error.
    pub fn journal_for(&self, token_name: &str) -> Result<Vec<RotationRecord>, StateError> {
        self.query(
            "SELECT rotation_id, token_name, instance, token_id, previous_token_id, step, expires_at, created_at, updated_at, error, absent_since
             FROM rotation_journal WHERE token_name = $1 ORDER BY created_at, rotation_id",
            args![token_name],
            |r| {
                Ok(RotationRecord {
                    rotation_id: r.text(0, "rotation_journal.rotation_id")?,
                    token_name: r.text(1, "rotation_journal.token_name")?,
                    instance: r.text(2, "rotation_journal.instance")?,
                    token_id: r.opt_text(3, "rotation_journal.token_id")?,
                    previous_token_id: r.opt_text(4, "rotation_journal.previous_token_id")?,
                    step: r.parse(5, "rotation_journal.step")?,
                    expires_at: r.opt_time(6, "rotation_journal.expires_at")?,
                    created_at: r.time(7, "rotation_journal.created_at")?,
                    updated_at: r.time(8, "rotation_journal.updated_at")?,
                    error: r.opt_text(9, "rotation_journal.error")?,
                    absent_since: r.opt_time(10, "rotation_journal.absent_since")?,
                })
            },
        )
    }

    /// The backoff of a managed token on an instance after failed rotations.
    pub fn token_backoff(
        &self,
        token_name: &str,
        instance: &str,
    ) -> Result<Option<TokenBackoff>, StateError> {
        Ok(self
            .query(
                "SELECT failures, last_failure_at, error, config FROM token_backoff WHERE token_name = $1 AND instance = $2",
                args![token_name, instance],
                |r| {
                    Ok(TokenBackoff {
                        failures: failures(r.int(0, "token_backoff.failures")?)?,
                        last_failure_at: r.time(1, "token_backoff.last_failure_at")?,
                        error: r.text(2, "token_backoff.error")?,
                        config: r.text(3, "token_backoff.config")?,
                    })
                },
            )?
            .pop())
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
        self.query(
            "INSERT INTO token_backoff (token_name, instance, failures, last_failure_at, error, config) VALUES ($1, $2, 1, $3, $4, $5)
             ON CONFLICT (token_name, instance) DO UPDATE SET
               failures = CASE WHEN token_backoff.config = excluded.config THEN token_backoff.failures + 1 ELSE 1 END,
               last_failure_at = excluded.last_failure_at, error = excluded.error, config = excluded.config
             RETURNING failures",
            args![token_name, instance, ts(at), error, config],
            |r| failures(r.int(0, "token_backoff.failures")?),
        )?
        .pop()
        .ok_or_else(|| self.unreadable("token_backoff.failures (none returned)".into()))
    }

    /// A rotation succeeded: no more backoff.
    pub fn token_backoff_clear(&self, token_name: &str, instance: &str) -> Result<(), StateError> {
        self.exec(
            "DELETE FROM token_backoff WHERE token_name = $1 AND instance = $2",
            args![token_name, instance],
        )?;
        Ok(())
    }
}

fn failures(n: i64) -> Result<u32, super::Unreadable> {
    u32::try_from(n).map_err(|_| format!("value {n} in token_backoff.failures"))
}
