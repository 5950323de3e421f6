//! Grace marks: when each planned action was first planned, forgotten as
//! soon as a run does not plan it (grace needs continuity).

use super::{StateError, Stmt, Store, args, ts};
use chrono::{DateTime, Utc};
use std::collections::HashMap;

impl Store {
    /// Note that `keys` were planned at `now`; forget marks not planned in
    /// this run (grace needs continuity). Returns when each key was first planned.
    ///
    /// One transaction: every mark is first flagged unplanned (an empty
    /// `last_planned_at`), each planned key is upserted, and what is still
    /// flagged is deleted — no temporary table (session state, which a
    /// transaction-pooling PgBouncer does not keep).
    pub fn update_grace_marks(
        &self,
        keys: &[String],
        now: DateTime<Utc>,
    ) -> Result<HashMap<String, DateTime<Utc>>, StateError> {
        let at = ts(now);
        let mut stmts = Vec::with_capacity(keys.len() + 3);
        stmts.push(Stmt::new(
            "UPDATE grace_marks SET last_planned_at = ''",
            vec![],
        ));
        for k in keys {
            stmts.push(Stmt::new(
                "INSERT INTO grace_marks (key, first_planned_at, last_planned_at) VALUES ($1, $2, $2)
                 ON CONFLICT (key) DO UPDATE SET last_planned_at = excluded.last_planned_at",
                args![k, at.as_str()],
            ));
        }
        stmts.push(Stmt::new(
            "DELETE FROM grace_marks WHERE last_planned_at = ''",
            vec![],
        ));
        stmts.push(Stmt::new(
            "SELECT key, first_planned_at FROM grace_marks",
            vec![],
        ));
        let out = self.tx(stmts)?;
        let rows = &out.last().expect("the SELECT").rows;
        Ok(self
            .read(rows, |r| {
                Ok((
                    r.text(0, "grace_marks.key")?,
                    r.time(1, "grace_marks.first_planned_at")?,
                ))
            })?
            .into_iter()
            .collect())
    }

    /// When each marked key was first planned (read only).
    pub fn grace_marks(&self) -> Result<HashMap<String, DateTime<Utc>>, StateError> {
        Ok(self
            .query(
                "SELECT key, first_planned_at FROM grace_marks",
                vec![],
                |r| {
                    Ok((
                        r.text(0, "grace_marks.key")?,
                        r.time(1, "grace_marks.first_planned_at")?,
                    ))
                },
            )?
            .into_iter()
            .collect())
    }
}
