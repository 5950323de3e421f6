//! The leader lease (Step 10, PostgreSQL): one row `(name, holder, epoch,
//! valid_until)` per lease, written only with the database's clock
//! (`clock_timestamp()`), so replicas' clocks never matter. A holder
//! acquires a free or expired lease, or renews its own, in one atomic
//! upsert; the epoch grows by one on every change of holder and is the
//! fencing token. [`Store::fenced`] gives a store whose every statement runs
//! in a transaction that first checks, `FOR SHARE`, that the lease is still
//! this holder's at this epoch with more than a margin left — a takeover
//! waits for such a transaction, and a write behind a lost lease is
//! [`StateError::Fenced`], never applied. No advisory lock: the lease is a
//! row, so it works through PgBouncer's transaction pooling.
//!
//! With SQLite (one host, one replica) the lease is simply held: epoch 1,
//! nothing stored, and a fence checks nothing.
//!
//! The daemon's leadership loop (`crate::leader`) renews the lease and
//! hands each job a store fenced at its epoch, with the local deadline too
//! ([`Store::fenced_until`]): a statement is refused without a round trip
//! once this host's monotonic clock says the lease is too close to its end.

use super::{Param, StateError, Stmt, Store, args};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Until when this replica holds the lease by its own monotonic clock,
/// measured from when the renewal that granted it was *sent* (so never
/// later than the database's `valid_until`). The leadership loop moves it
/// on with each renewal and to the past when the lease is lost.
#[derive(Debug)]
pub struct LocalDeadline(Mutex<Instant>);

impl LocalDeadline {
    pub fn new(at: Instant) -> LocalDeadline {
        LocalDeadline(Mutex::new(at))
    }

    pub fn set(&self, at: Instant) {
        *self.0.lock().expect("deadline lock") = at;
    }

    pub fn get(&self) -> Instant {
        *self.0.lock().expect("deadline lock")
    }

    /// What is left of the lease at `now` (zero once it is over).
    pub fn left(&self, now: Instant) -> Duration {
        self.get().saturating_duration_since(now)
    }
}

/// What a fenced write checks first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub name: String,
    pub holder: String,
    pub epoch: i64,
    /// The lease must stay valid for more than this after the check.
    pub margin: Duration,
}

/// The answer of [`Store::lease_take`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// Ours, at `epoch`, for `remaining` (by the database's clock, from when
    /// it answered).
    Held { epoch: i64, remaining: Duration },
    /// Another holder's (a follower reports it).
    HeldBy {
        holder: String,
        epoch: i64,
        remaining: Duration,
    },
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn remaining(v: i64) -> Duration {
    Duration::from_millis(v.max(0) as u64)
}

impl Store {
    fn is_postgres(&self) -> bool {
        self.backend_name() == "postgresql"
    }

    /// Run `upsert` and read who holds `name` afterwards: `Held` when it is
    /// `holder`'s, unexpired, at an epoch `epoch_ok` accepts.
    fn lease_upsert(
        &self,
        name: &str,
        holder: &str,
        upsert: Stmt,
        epoch_ok: impl Fn(i64) -> bool,
    ) -> Result<LeaseState, StateError> {
        let out = self.tx(vec![
            upsert,
            Stmt::new(
                "SELECT holder, epoch,
                   (extract(epoch FROM (valid_until - clock_timestamp())) * 1000)::bigint
                 FROM leader_lease WHERE name = $1",
                args![name],
            ),
        ])?;
        let rows = self.read(&out[1].rows, |r| {
            Ok((
                r.text(0, "leader_lease.holder")?,
                r.int(1, "leader_lease.epoch")?,
                r.int(2, "leader_lease.valid_until")?,
            ))
        })?;
        let (who, epoch, left) = rows
            .into_iter()
            .next()
            .ok_or_else(|| self.unreadable("leader_lease (no row after the upsert)".into()))?;
        Ok(if who == holder && left > 0 && epoch_ok(epoch) {
            LeaseState::Held {
                epoch,
                remaining: remaining(left),
            }
        } else {
            LeaseState::HeldBy {
                holder: who,
                epoch,
                remaining: remaining(left),
            }
        })
    }

    /// Take the lease `name` for `holder` for `ttl`, as a leadership loop
    /// does. `renewing: None` starts a new term: it succeeds when the lease
    /// is free, expired or already `holder`'s, and always with a new epoch
    /// (a replica that lost its lease and takes it again never reuses the
    /// epoch its cancelled jobs were fenced with). `Some(epoch)` renews that
    /// term only: it succeeds when the lease is still `holder`'s at `epoch`
    /// and not expired. The answer names whoever holds it afterwards.
    pub fn lease_take(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        renewing: Option<i64>,
    ) -> Result<LeaseState, StateError> {
        if !self.is_postgres() {
            return Ok(LeaseState::Held {
                epoch: 1,
                remaining: ttl,
            });
        }
        let upsert = Stmt::new(
            "INSERT INTO leader_lease (name, holder, epoch, valid_until)
             VALUES ($1, $2, 1, clock_timestamp() + ($3::float8 * interval '1 millisecond'))
             ON CONFLICT (name) DO UPDATE SET
               epoch = CASE WHEN $4::bigint IS NULL THEN leader_lease.epoch + 1
                       ELSE leader_lease.epoch END,
               holder = excluded.holder,
               valid_until = excluded.valid_until
             WHERE CASE WHEN $4::bigint IS NULL
               THEN leader_lease.holder = excluded.holder
                 OR leader_lease.valid_until <= clock_timestamp()
               ELSE leader_lease.holder = excluded.holder AND leader_lease.epoch = $4::bigint
                 AND leader_lease.valid_until > clock_timestamp() END",
            args![name, holder, ms(ttl), renewing],
        );
        self.lease_upsert(name, holder, upsert, |epoch| {
            renewing.is_none_or(|e| e == epoch)
        })
    }

    /// Who holds the lease `name` now, without taking it (`None`: nobody
    /// ever did, or it expired). With SQLite: nobody.
    pub fn lease_holder(&self, name: &str) -> Result<Option<(String, i64)>, StateError> {
        if !self.is_postgres() {
            return Ok(None);
        }
        Ok(self
            .query(
                "SELECT holder, epoch FROM leader_lease WHERE name = $1 AND valid_until > clock_timestamp()",
                args![name],
                |r| Ok((r.text(0, "leader_lease.holder")?, r.int(1, "leader_lease.epoch")?)),
            )?
            .pop())
    }

    /// Give the lease up at once (a clean shutdown): the next replica need
    /// not wait for it to expire. Only if it is still `holder`'s at `epoch`.
    pub fn lease_release(&self, name: &str, holder: &str, epoch: i64) -> Result<bool, StateError> {
        if !self.is_postgres() {
            return Ok(true);
        }
        let n = self.exec(
            "UPDATE leader_lease SET valid_until = clock_timestamp() - interval '1 millisecond'
             WHERE name = $1 AND holder = $2 AND epoch = $3",
            vec![Param::from(name), Param::from(holder), Param::from(epoch)],
        )?;
        Ok(n == 1)
    }

    /// This store, its every statement behind `fence` (PostgreSQL; with
    /// SQLite the same store).
    pub fn fenced(&self, fence: Fence) -> Store {
        let mut s = self.clone();
        if self.is_postgres() {
            s.fence = Some(Arc::new(fence));
        }
        s
    }

    /// As [`Store::fenced`], and every statement is refused at once, without
    /// asking the database, when `deadline` leaves no more than the fence's
    /// margin (this host's clock may know first that the lease is lost).
    pub fn fenced_until(&self, fence: Fence, deadline: Arc<LocalDeadline>) -> Store {
        let mut s = self.fenced(fence);
        if s.fence.is_some() {
            s.deadline = Some(deadline);
        }
        s
    }

    /// This host's deadline of the lease the store is fenced with, and the
    /// fence's margin (`None`: unfenced, SQLite — no lease ends).
    pub fn lease_deadline(&self) -> Option<(Instant, Duration)> {
        match (&self.fence, &self.deadline) {
            (Some(f), Some(d)) => Some((d.get(), f.margin)),
            _ => None,
        }
    }

    /// The epoch this store's writes are fenced with (`None`: unfenced).
    pub fn epoch(&self) -> Option<i64> {
        self.fence.as_ref().map(|f| f.epoch)
    }

    /// Refuse a fenced statement locally when the local deadline is too
    /// close: nothing is sent.
    pub(super) fn check_local_deadline(&self) -> Result<(), StateError> {
        if let (Some(f), Some(d)) = (&self.fence, &self.deadline)
            && d.left(Instant::now()) <= f.margin
        {
            return Err(StateError::Fenced {
                at: self.at.to_string(),
                name: f.name.clone(),
                epoch: f.epoch,
            });
        }
        Ok(())
    }
}
