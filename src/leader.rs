//! The leader (DESIGN §11): replicas sharing a PostgreSQL state elect one
//! through the lease row of `state::lease`; only the leader runs jobs.
//!
//! [`Leadership::run`] renews the lease every `[leader] renew` (a follower
//! tries to take it as often). Each time this replica takes the lease it
//! starts a *term*: a new epoch, a store fenced at that epoch with this
//! host's deadline ([`Store::fenced_until`]), and a cancellation token.
//! Every job of the term writes through that store, and the runner cancels
//! every running job when the token fires. The term ends — the token fires
//! at once — when a renewal fails, when the database names another holder,
//! or when this host's monotonic clock, counted from when the last
//! successful renewal was *sent*, leaves no more than `needed` of the lease
//! (`[kcr] timeout` + a margin: the most a KCR call that starts now can
//! take). A replica that leads again does so in a new term, with a new
//! epoch, so nothing fenced with the old one is ever accepted again.
//!
//! With SQLite (one host) the one replica simply leads: one term, epoch 1,
//! no statement and no renewal.
//!
//! The lease is renewed on a connection of its own, so a long job query
//! never delays a renewal.

use crate::config::LeaderConfig;
use crate::metrics::Metrics;
use crate::state::{Fence, LeaseState, LocalDeadline, StateError, Store};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The name of the daemon's lease row.
pub const LEASE: &str = "leader";

/// Until when a lease granted with `remaining` lasts on this host's
/// monotonic clock: counted from when the request was *sent*, so never
/// later than the database's own end of it, however long the answer took.
pub fn deadline(sent: Instant, remaining: Duration) -> Instant {
    sent + remaining
}

/// Whether a term whose lease ends at `deadline` may still act at `now`:
/// more than `needed` (a call's timeout and a margin) must be left.
pub fn may_act(now: Instant, deadline: Instant, needed: Duration) -> bool {
    deadline.saturating_duration_since(now) > needed
}

/// When the next attempt to renew (or take) the lease is due: `renew`
/// after the last one was sent, but never later than the moment the term
/// would end (`deadline - needed`), so a leader always tries once more.
pub fn next_attempt(
    sent: Instant,
    renew: Duration,
    term_end: Option<(Instant, Duration)>,
) -> Instant {
    let due = sent + renew;
    match term_end {
        Some((deadline, needed)) => due.min(deadline.checked_sub(needed).unwrap_or(sent).max(sent)),
        None => due,
    }
}

/// A default holder id: hostname, process id and a random suffix (not a
/// secret; two processes on one host never share it).
pub fn default_id() -> String {
    format!(
        "{}-{}-{:06x}",
        crate::tokens::config::host_name(),
        std::process::id(),
        rand::random::<u32>() & 0xff_ffff
    )
}

/// A configured `[leader] id` as the lease holder: the id and a random
/// suffix chosen at start (review finding 3). Two replicas given the same
/// id by mistake are still two holders: one leads, the other follows,
/// instead of both taking the lease from each other in turn.
pub fn with_nonce(id: &str) -> String {
    format!("{id}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// Run with a new term's store before the term is published.
pub type OnLead = Arc<dyn Fn(&Store) -> Result<(), StateError> + Send + Sync>;

/// One term of leadership: what a run of a job gets.
#[derive(Clone, Debug)]
pub struct Term {
    /// The fencing token (`None` without a lease: tests, SQLite CLI).
    pub epoch: Option<i64>,
    /// The state, fenced at this term's epoch.
    pub store: Store,
    /// Fires when the term ends (the lease is lost): cancel everything.
    pub lost: CancellationToken,
}

impl Term {
    /// The gate a run's KCR client asks right before every mutating request
    /// (each attempt, after any rate-limiter wait): shut once `cancel` (the
    /// run's cancellation) or this term's `lost` fired, or when this host's
    /// clock leaves no more of the lease than a call may take
    /// ([`may_act`] with the fence's margin, `[kcr] timeout` + margin). An
    /// unfenced term (SQLite, one replica) never ends: only `cancel` shuts it.
    pub fn gate(&self, cancel: &CancellationToken) -> Arc<dyn crate::kcr::MutationGate> {
        Arc::new(TermGate {
            cancel: cancel.clone(),
            term: self.clone(),
        })
    }

    /// The term is over, or too close to its end for a KCR call: its
    /// `lost` fired, or [`may_act`] says no on this host's clock.
    pub fn over(&self) -> bool {
        self.lost.is_cancelled()
            || self
                .store
                .lease_deadline()
                .is_some_and(|(deadline, needed)| !may_act(Instant::now(), deadline, needed))
    }
}

/// [`Term::gate`].
struct TermGate {
    cancel: CancellationToken,
    term: Term,
}

/// Why a term's mutation gate withholds a request when the lease is the reason.
pub const LEASE_LOST: &str = "the leader lease is lost or about to end";

impl crate::kcr::MutationGate for TermGate {
    fn check(&self, _action: &'static str) -> Result<(), String> {
        if self.term.over() {
            return Err(LEASE_LOST.into());
        }
        if self.cancel.is_cancelled() {
            return Err("the run is cancelled".into());
        }
        Ok(())
    }
}

/// Why no run may start here: another replica leads (or none yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotLeader {
    /// The leader the database last named, and its epoch.
    pub leader: Option<(String, i64)>,
}

impl std::fmt::Display for NotLeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.leader {
            Some((holder, epoch)) => write!(
                f,
                "this replica is not the leader; {holder} leads (epoch {epoch})"
            ),
            None => write!(
                f,
                "this replica is not the leader, and no leader is known yet"
            ),
        }
    }
}

/// What `/jobs` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub leader: bool,
    /// This replica's holder id.
    pub id: String,
    /// The leader the database last named (this replica while it leads).
    pub holder: Option<String>,
    pub epoch: Option<i64>,
}

struct Held {
    epoch: i64,
    deadline: Arc<LocalDeadline>,
    term: Term,
}

#[derive(Default)]
struct View {
    held: Option<Held>,
    /// Who the database said holds the lease, when not this replica.
    other: Option<(String, i64)>,
}

/// This replica's part in the election.
pub struct Leadership {
    id: String,
    /// The lease's own connection.
    lease_store: Store,
    /// The store jobs use; fenced per term.
    store: Store,
    renew: Duration,
    lease: Duration,
    needed: Duration,
    metrics: Arc<Metrics>,
    view: Mutex<View>,
    sqlite: bool,
    /// A lease call still in flight: when it was sent, for which term, and its answer.
    pending: Mutex<Option<Pending>>,
}

type Pending = (
    Instant,
    Option<i64>,
    tokio::task::JoinHandle<Result<LeaseState, StateError>>,
);

impl Leadership {
    /// `lease_store` should be a connection of its own (the same store
    /// with SQLite). `call_timeout` is `[kcr] timeout`.
    pub fn new(
        lease_store: Store,
        store: Store,
        config: &LeaderConfig,
        call_timeout: Duration,
        id: String,
        metrics: Arc<Metrics>,
    ) -> Arc<Leadership> {
        let sqlite = store.backend_name() != "postgresql";
        let l = Arc::new(Leadership {
            id,
            lease_store,
            store,
            renew: config.renew,
            lease: config.lease,
            needed: config.needed(call_timeout),
            metrics,
            view: Mutex::new(View::default()),
            sqlite,
            pending: Mutex::new(None),
        });
        if sqlite {
            // One host, one replica: it simply leads, for good.
            let deadline = Arc::new(LocalDeadline::new(far_future()));
            l.begin(1, deadline);
        }
        l
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether the lease's connection answered last time (a follower is
    /// ready while it can see the database; SQLite: always).
    pub fn connected(&self) -> bool {
        self.lease_store.is_up()
    }

    /// The current term, or who leads instead.
    pub fn term(&self) -> Result<Term, NotLeader> {
        let view = self.view.lock().expect("leader lock");
        match &view.held {
            Some(h) if !h.term.lost.is_cancelled() => Ok(h.term.clone()),
            _ => Err(NotLeader {
                leader: view.other.clone(),
            }),
        }
    }

    pub fn status(&self) -> Status {
        let view = self.view.lock().expect("leader lock");
        match &view.held {
            Some(h) => Status {
                leader: true,
                id: self.id.clone(),
                holder: Some(self.id.clone()),
                epoch: Some(h.epoch),
            },
            None => Status {
                leader: false,
                id: self.id.clone(),
                holder: view.other.as_ref().map(|o| o.0.clone()),
                epoch: view.other.as_ref().map(|o| o.1),
            },
        }
    }

    /// Start a term at `epoch` (the view's lock is taken here).
    fn begin(&self, epoch: i64, deadline: Arc<LocalDeadline>) -> Term {
        let fence = Fence {
            name: LEASE.into(),
            holder: self.id.clone(),
            epoch,
            margin: self.needed,
        };
        let term = Term {
            epoch: Some(epoch),
            store: self.store.fenced_until(fence, deadline.clone()),
            lost: CancellationToken::new(),
        };
        let mut view = self.view.lock().expect("leader lock");
        view.held = Some(Held {
            epoch,
            deadline,
            term: term.clone(),
        });
        view.other = None;
        self.metrics.daemon.leadership(true, epoch);
        self.metrics.daemon.leader_transition();
        tracing::info!(holder = %self.id, epoch, "this replica leads: jobs run here");
        term
    }

    /// End the current term, if any: every running job is cancelled at once.
    fn end(&self, why: &str, other: Option<(String, i64)>) {
        let mut view = self.view.lock().expect("leader lock");
        if let Some(h) = view.held.take() {
            h.deadline.set(Instant::now());
            h.term.lost.cancel();
            self.metrics.daemon.leader_transition();
            if why == STOPPING {
                // A clean shutdown is no loss (review finding 7).
                tracing::info!(holder = %self.id, epoch = h.epoch, "stopping: giving the lease back; running jobs cancelled");
            } else {
                tracing::warn!(holder = %self.id, epoch = h.epoch, why, "leader lease lost: running jobs cancelled, nothing more runs here until it leads again");
            }
        }
        if other.is_some() {
            view.other = other;
        }
        let epoch = view.other.as_ref().map_or(0, |o| o.1);
        self.metrics.daemon.leadership(false, epoch);
    }

    /// One attempt to renew (leading) or take (following) the lease, and
    /// when the next is due. `on_lead` runs with a new term's store before
    /// the term is published (the daemon closes the previous leader's
    /// abandoned runs there); if it fails, the lease is given back.
    pub async fn step(&self, on_lead: &OnLead) -> Instant {
        let sent = Instant::now();
        if self.sqlite {
            return sent + Duration::from_secs(3600);
        }
        let held = {
            let view = self.view.lock().expect("leader lock");
            view.held.as_ref().map(|h| (h.epoch, h.deadline.clone()))
        };
        let renewing = held.as_ref().map(|h| h.0);
        // At most one call in flight: one that outlived the last step (the
        // database is slow or unreachable) is waited for again rather than
        // queueing another behind it, its send time kept.
        let pending = self.pending.lock().expect("pending lock").take();
        let (sent, asked, mut call) = match pending {
            Some(p) => p,
            None => {
                let (store, id, ttl) = (self.lease_store.clone(), self.id.clone(), self.lease);
                let call = tokio::task::spawn_blocking(move || {
                    store.lease_take(LEASE, &id, ttl, renewing)
                });
                (sent, renewing, call)
            }
        };
        // A leader waits for the answer only while its term may last.
        let limit = match &held {
            Some((_, d)) => d.get().checked_sub(self.needed).unwrap_or(sent),
            None => Instant::now().max(sent) + self.renew,
        };
        let answer = tokio::time::timeout_at(limit.into(), &mut call).await;
        let answer = match answer {
            Err(elapsed) => {
                *self.pending.lock().expect("pending lock") = Some((sent, asked, call));
                Err(elapsed)
            }
            // Asked for another term than the current one (it ended
            // meanwhile): not an answer to act on; ask again.
            Ok(_) if asked != renewing => return Instant::now(),
            Ok(a) => Ok(a),
        };
        match answer {
            Ok(Ok(Ok(LeaseState::Held { epoch, remaining }))) => match held {
                Some((_, d)) => {
                    d.set(deadline(sent, remaining));
                    if !may_act(Instant::now(), d.get(), self.needed) {
                        self.end("the renewal was answered too late to act on", None);
                    }
                }
                None => {
                    let d = Arc::new(LocalDeadline::new(deadline(sent, remaining)));
                    let fence = Fence {
                        name: LEASE.into(),
                        holder: self.id.clone(),
                        epoch,
                        margin: self.needed,
                    };
                    let store = self.store.fenced_until(fence, d.clone());
                    let prepare = on_lead.clone();
                    let prepared = tokio::task::spawn_blocking(move || prepare(&store))
                        .await
                        .unwrap_or_else(|_| {
                            Err(StateError::WorkerGone {
                                at: self.store.location().into(),
                            })
                        });
                    match prepared {
                        Ok(()) => {
                            self.begin(epoch, d);
                        }
                        Err(e) => {
                            tracing::error!(holder = %self.id, epoch, error = %e, "took the lease but could not prepare the state; giving it back");
                            let (store, id) = (self.lease_store.clone(), self.id.clone());
                            let _ = tokio::task::spawn_blocking(move || {
                                store.lease_release(LEASE, &id, epoch)
                            })
                            .await;
                        }
                    }
                }
            },
            Ok(Ok(Ok(LeaseState::HeldBy { holder, epoch, .. }))) => {
                self.end("another replica holds the lease", Some((holder, epoch)));
            }
            Ok(Ok(Err(e))) => {
                if held.is_some() {
                    self.end(&format!("renewal failed: {e}"), None);
                } else {
                    tracing::warn!(holder = %self.id, error = %e, "cannot read the leader lease");
                }
            }
            Ok(Err(e)) => self.end(&format!("renewal task failed: {e}"), None),
            Err(_) => self.end("no answer to the renewal before the lease ran short", None),
        }
        let term_end = {
            let view = self.view.lock().expect("leader lock");
            view.held.as_ref().map(|h| (h.deadline.get(), self.needed))
        };
        next_attempt(sent, self.renew, term_end)
    }

    /// Renew or take the lease until `stop`; end the term as soon as this
    /// host's clock says it is too short. On `stop` the term ends and the
    /// lease is given back, so another replica need not wait for it.
    pub async fn run(self: Arc<Self>, stop: CancellationToken, on_lead: OnLead) {
        loop {
            let next = self.step(&on_lead).await;
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep_until(next.into()) => {}
            }
        }
    }

    /// Give the lease back (a clean shutdown, after the jobs stopped).
    pub async fn release(&self) {
        let epoch = {
            let view = self.view.lock().expect("leader lock");
            view.held.as_ref().map(|h| h.epoch)
        };
        self.end(STOPPING, None);
        if let (Some(epoch), false) = (epoch, self.sqlite) {
            let (store, id) = (self.lease_store.clone(), self.id.clone());
            match tokio::task::spawn_blocking(move || store.lease_release(LEASE, &id, epoch)).await
            {
                Ok(Ok(true)) => tracing::info!(epoch, "leader lease given back"),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot give the leader lease back; it expires by itself")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot give the leader lease back; it expires by itself")
                }
            }
        }
    }
}

/// Why a term ends when this replica stops ([`Leadership::release`]).
const STOPPING: &str = "stopping";

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_counts_from_when_the_renewal_was_sent() {
        let sent = Instant::now();
        // The answer took 3s: the lease still ends 15s after sending.
        assert_eq!(
            deadline(sent, Duration::from_secs(15)),
            sent + Duration::from_secs(15)
        );
    }

    #[test]
    fn a_term_may_act_only_with_more_than_a_call_left() {
        let t0 = Instant::now();
        let d = t0 + Duration::from_secs(15);
        let needed = Duration::from_secs(6);
        let table = [
            (0, true),
            (8_999, true),
            (9_000, false), // exactly `needed` left: no
            (9_001, false),
            (15_000, false),
            (60_000, false), // long past (a paused process)
        ];
        for (ms, ok) in table {
            assert_eq!(
                may_act(t0 + Duration::from_millis(ms), d, needed),
                ok,
                "at +{ms}ms"
            );
        }
    }

    #[test]
    fn a_leader_tries_again_before_its_term_would_end() {
        let t0 = Instant::now();
        let renew = Duration::from_secs(5);
        // Following: every `renew`.
        assert_eq!(next_attempt(t0, renew, None), t0 + renew);
        // Leading with plenty left: every `renew`.
        let far = (t0 + Duration::from_secs(37), Duration::from_secs(31));
        assert_eq!(next_attempt(t0, renew, Some(far)), t0 + renew);
        // Leading with little left: before the term would end.
        let near = (t0 + Duration::from_secs(10), Duration::from_secs(8));
        assert_eq!(
            next_attempt(t0, renew, Some(near)),
            t0 + Duration::from_secs(2)
        );
        // Already too late: at once.
        let past = (t0 + Duration::from_secs(1), Duration::from_secs(8));
        assert_eq!(next_attempt(t0, renew, Some(past)), t0);
    }

    #[test]
    fn a_default_id_names_the_host_and_process_and_differs_each_time() {
        let (a, b) = (default_id(), default_id());
        assert!(a.contains(&format!("-{}-", std::process::id())), "{a}");
        assert_ne!(a, b);
    }

    fn leader_config() -> LeaderConfig {
        LeaderConfig {
            renew: Duration::from_secs(5),
            lease: Duration::from_secs(37),
            id: None,
        }
    }

    #[tokio::test]
    async fn with_sqlite_the_one_replica_leads_without_renewing() {
        let store = Store::in_memory().unwrap();
        let metrics = Arc::new(Metrics::new());
        let l = Leadership::new(
            store.clone(),
            store,
            &leader_config(),
            Duration::from_secs(30),
            "solo".into(),
            metrics.clone(),
        );
        let term = l.term().expect("leads at once");
        assert_eq!(term.epoch, Some(1));
        assert_eq!(term.store.epoch(), None, "SQLite writes are not fenced");
        assert!(metrics.daemon.is_leader());
        let no_term: OnLead =
            Arc::new(|_: &Store| -> Result<(), StateError> { panic!("no new term") });
        let next = l.step(&no_term).await;
        assert!(
            next > Instant::now() + Duration::from_secs(60),
            "no renewals"
        );
        l.release().await;
        assert!(term.lost.is_cancelled());
        assert_eq!(l.term().unwrap_err(), NotLeader { leader: None }, "stopped");
    }

    /// Review findings 1 and 2: the gate a run's client asks before each
    /// mutating request is open while the term lasts and the run runs,
    /// and shut — naming the lease — once the term is lost.
    #[test]
    fn the_mutation_gate_shuts_when_the_run_is_cancelled_or_the_lease_lost() {
        let term = Term {
            epoch: Some(3),
            store: Store::in_memory().unwrap(),
            lost: CancellationToken::new(),
        };
        let cancel = CancellationToken::new();
        let gate = term.gate(&cancel);
        assert_eq!(gate.check("DeleteImages"), Ok(()));
        assert!(!term.over(), "an unfenced term never runs out");
        cancel.cancel();
        assert_eq!(
            gate.check("DeleteImages"),
            Err("the run is cancelled".into())
        );
        let (term2, cancel2) = (term.clone(), CancellationToken::new());
        let gate2 = term2.gate(&cancel2);
        term.lost.cancel();
        assert!(term2.over());
        let why = gate2.check("DeleteImages").unwrap_err();
        assert_eq!(why, LEASE_LOST);
    }
}
