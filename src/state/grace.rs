//! Grace marks: when each planned action was first planned, forgotten as
//! soon as a run does not plan it (grace needs continuity).

use super::{StateError, Store, time_at, ts};
use chrono::{DateTime, Utc};
use rusqlite::params;
use std::collections::HashMap;

impl Store {
    /// Note that `keys` were planned at `now`; forget marks not planned in
    /// this run (grace needs continuity). Returns when each key was first planned.
    pub fn update_grace_marks(
        &self,
        keys: &[String],
        now: DateTime<Utc>,
    ) -> Result<HashMap<String, DateTime<Utc>>, StateError> {
        let at = ts(now);
        self.with_tx(|tx| {
            tx.execute(
                "CREATE TEMP TABLE IF NOT EXISTS planned_now (key TEXT PRIMARY KEY)",
                [],
            )?;
            tx.execute("DELETE FROM planned_now", [])?;
            {
                let mut ins = tx.prepare("INSERT OR IGNORE INTO planned_now (key) VALUES (?1)")?;
                let mut up = tx.prepare(
                    "INSERT INTO grace_marks (key, first_planned_at, last_planned_at) VALUES (?1, ?2, ?2)
                     ON CONFLICT(key) DO UPDATE SET last_planned_at = excluded.last_planned_at",
                )?;
                for k in keys {
                    ins.execute(params![k])?;
                    up.execute(params![k, at])?;
                }
            }
            tx.execute(
                "DELETE FROM grace_marks WHERE key NOT IN (SELECT key FROM planned_now)",
                [],
            )?;
            let mut q = tx.prepare("SELECT key, first_planned_at FROM grace_marks")?;
            q.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, time_at(r, 1, "grace_marks.first_planned_at")?))
            })?
            .collect()
        })
    }

    /// When each marked key was first planned (read only).
    pub fn grace_marks(&self) -> Result<HashMap<String, DateTime<Utc>>, StateError> {
        self.with(|c| {
            let mut q = c.prepare("SELECT key, first_planned_at FROM grace_marks")?;
            q.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    time_at(r, 1, "grace_marks.first_planned_at")?,
                ))
            })?
            .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::now;
    use super::*;

    #[test]
    fn grace_marks_need_continuity() {
        let s = Store::in_memory().unwrap();
        let keys = |v: &[&str]| v.iter().map(|k| k.to_string()).collect::<Vec<_>>();
        let m = s.update_grace_marks(&keys(&["a", "b"]), now()).unwrap();
        assert_eq!(m["a"], now());
        let later = now() + chrono::Duration::hours(1);
        let m = s.update_grace_marks(&keys(&["a"]), later).unwrap();
        assert_eq!(m["a"], now(), "first planned time kept");
        assert!(!m.contains_key("b"), "b was not planned: forgotten");
        let m = s
            .update_grace_marks(&keys(&["a", "b"]), later + chrono::Duration::hours(1))
            .unwrap();
        assert_eq!(m["b"], later + chrono::Duration::hours(1), "b starts over");
    }

    #[test]
    fn an_unreadable_mark_is_an_error_not_a_fresh_start() {
        let s = Store::in_memory().unwrap();
        s.update_grace_marks(&["a".to_string()], now()).unwrap();
        s.with(|c| c.execute("UPDATE grace_marks SET first_planned_at = 'soon'", []))
            .unwrap();
        let e = s.update_grace_marks(&["a".to_string()], now()).unwrap_err();
        assert!(matches!(e, StateError::Unreadable { .. }), "{e}");
    }
}
