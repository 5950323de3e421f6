//! The rotation engine: lists the tokens, plans each managed token
//! ([`super::planner`]) and carries the plan out, journaling every step in
//! state before taking it and auditing every mutation.
//!
//! Order of a rotation (DESIGN §6 tokens): journal `creating` → create →
//! journal `created` → log in with the in-memory secret → journal
//! `delivering` → file sinks, then exec sinks → journal `verified` → mark
//! current. Failure rules:
//! - before any sink was written, the new token is disabled and deleted
//!   (its secret was never kept) and the rotation is `abandoned`;
//! - once delivery began, the file sinks are put back; the token is discarded
//!   only if every file sink was restored and no exec sink was started (an
//!   exec consumer cannot be undone). Otherwise it is kept (journal
//!   `delivering`) and retired like a superseded token once a newer rotation
//!   is current;
//! - after every sink holds it, nothing discards it: a failed journal write
//!   leaves it `delivering` (kept), a failed "mark current" leaves it
//!   `verified` (finished next cycle);
//! - every failure counts towards the backoff before the next attempt.
//!
//! Every fallible call on this path passes a failpoint first
//! ([`crate::failpoint`], names in [`FAILPOINTS`]); `fp_sites_cover_every_question_mark`
//! below checks that no `?` lacks one.

use super::journal::{DeliveryRecord, RotationRecord};
use super::planner::{self, Current, Inputs, Listed, Planned, Step, TokenPlan};
use super::sinks::{self, Delivery, SinkError};
use super::verify;
use crate::config::{Config, InstanceConfig, ManagedToken, Sink, TokenLifetime as CfgLifetime};
use crate::kcr::{
    Action, Client, CreateInstanceToken, DeleteInstanceToken, DescribeExternalEndpoint,
    DescribeInstanceToken, ModifyInstanceTokenStatus, Supported, TokenLifetime,
};
use crate::metrics::Metrics;
use crate::state::{AuditGuard, AuditStatus, Mutation, StateError, Store};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token {token}: {what}: {source}")]
    Api {
        token: String,
        what: String,
        source: Box<crate::kcr::Error>,
    },
    #[error("token {token}: sink {source}")]
    Sink { token: String, source: SinkError },
    #[error("token {token}: verification failed: {source}")]
    Verify {
        token: String,
        source: verify::VerifyError,
    },
    /// The preflight probe found the registry unreachable from this host:
    /// nothing was created.
    #[error(
        "token {token}: registry {registry} is not reachable from this host ({source}); no token was created. \
         Allow this host's address in the KCR instance's external endpoint access policy \
         (console: 访问控制 > 外网访问; API: DescribeExternalEndpoint){endpoint}"
    )]
    RegistryUnreachable {
        token: String,
        registry: String,
        source: verify::VerifyError,
        /// `: DescribeExternalEndpoint says …` when it could be read.
        endpoint: String,
    },
    #[error("token {token}: instance {instance:?} is not configured")]
    UnknownInstance { token: String, instance: String },
    #[error("listing the tokens of instance {instance}: {source}")]
    Listing {
        instance: String,
        source: Box<crate::kcr::Error>,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{path}: another kcr-housekeeper process is rotating tokens with this state")]
    Locked { path: String },
    #[error("{path}: cannot lock: {source}")]
    LockIo {
        path: String,
        source: std::io::Error,
    },
    /// A safety invariant would be broken; nothing was done.
    #[error("{0}")]
    Invariant(String),
    /// A rotation is due, but waits after failed ones: the run is not a success.
    #[error("token {token}: {what}")]
    BackingOff { token: String, what: String },
    /// A test's fault injection ([`crate::failpoint`]).
    #[error("{0}")]
    Injected(String),
    #[error("cancelled before finishing")]
    Cancelled,
}

impl TokenError {
    /// A stable short label for metrics ([`crate::jobs::JobError::code`]).
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Api { .. } | TokenError::Listing { .. } => "api",
            TokenError::Sink { .. } => "sink",
            TokenError::Verify { .. } => "verify",
            TokenError::RegistryUnreachable { .. } => "registry_unreachable",
            TokenError::UnknownInstance { .. } => "config",
            TokenError::State(_) | TokenError::LockIo { .. } => "state",
            TokenError::Locked { .. } => "locked",
            TokenError::Invariant(_) => "invariant",
            TokenError::BackingOff { .. } => "backoff",
            TokenError::Injected(_) => "injected",
            TokenError::Cancelled => "cancelled",
        }
    }
}

/// Passes the failpoint `name` (an injected fault becomes [`TokenError::Injected`]).
#[inline]
fn fp(name: &'static str) -> Result<(), TokenError> {
    crate::failpoint::hit(name, TokenError::Injected)
}

/// Every failpoint of the rotation path, in the order a clean rotation
/// first passes them (then the retirement steps).
pub const FAILPOINTS: &[&str] = &[
    "tokens.lock",
    "tokens.state.install_id",
    "tokens.api.list",
    "tokens.state.journal_read",
    "tokens.state.deliveries_read",
    "tokens.state.backoff_read",
    "tokens.rotate.preflight",
    "tokens.rotate.registry_probe",
    "tokens.state.journal_creating",
    "tokens.state.audit_create",
    "tokens.api.create",
    "tokens.state.journal_create_failed",
    "tokens.state.audit_finish",
    "tokens.state.journal_created",
    "tokens.verify",
    "tokens.rotate.snapshot",
    "tokens.state.journal_delivering",
    "tokens.rotate.deliver",
    "tokens.rotate.sink_done",
    "tokens.rotate.restore",
    "tokens.state.journal_restored",
    "tokens.state.journal_kept",
    "tokens.state.journal_verified",
    "tokens.state.mark_current",
    "tokens.state.backoff_clear",
    "tokens.state.backoff_fail",
    "tokens.state.journal_adopt",
    "tokens.state.journal_absence",
    "tokens.state.journal_forget",
    "tokens.state.audit_disable",
    "tokens.api.disable",
    "tokens.state.journal_disabled",
    "tokens.state.audit_delete",
    "tokens.api.delete",
    "tokens.state.journal_deleted",
    "tokens.state.journal_abandoned",
];

/// Tunables that are not config keys (tests shorten them).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Attempts per sink and per login within one cycle.
    pub attempts: u32,
    /// Wait between attempts (doubled each time).
    pub backoff: Duration,
    /// Timeout of one registry login.
    pub verify_timeout: Duration,
    /// Log in here instead of the instance's registry (the embedded simulator).
    pub registry_override: Option<String>,
    /// The wait after a failed rotation before the next attempt, doubled
    /// after each further failure (capped at `rotate_before / 4`).
    pub retry_base: Duration,
    /// Plan-and-apply passes per token per cycle: every step due now is
    /// applied, including those the previous pass made due.
    pub max_passes: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            attempts: 3,
            backoff: Duration::from_millis(500),
            verify_timeout: Duration::from_secs(15),
            registry_override: None,
            retry_base: Duration::from_secs(15 * 60),
            max_passes: 8,
        }
    }
}

/// What one cycle did for one managed token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenOutcome {
    pub name: String,
    /// Steps carried out (or, without `apply`, that would be).
    pub done: Vec<String>,
    /// The new current token, if this cycle rotated.
    pub rotated_to: Option<String>,
    pub error: Option<String>,
    /// [`TokenError::code`] of the error.
    pub code: Option<&'static str>,
}

pub struct Engine<'a> {
    pub client: &'a Client,
    pub config: &'a Config,
    pub state: &'a Store,
    pub metrics: &'a Metrics,
    pub run_id: Option<i64>,
    pub cancel: &'a CancellationToken,
    /// The time; injectable so tests can move it with the simulator's clock.
    pub clock: &'a (dyn Fn() -> DateTime<Utc> + Send + Sync),
    pub settings: Settings,
}

/// `: DescribeExternalEndpoint says Closed` (or the allowed ranges), or
/// nothing when the action is not offered or fails: it only explains.
pub async fn describe_endpoint(client: &Client, instance_id: &str) -> String {
    let ask = DescribeExternalEndpoint {
        instance_id: instance_id.to_string(),
    };
    match client.call_if_supported(&ask).await {
        Ok(Supported::Yes(e)) if e.is_open() => {
            let entries: Vec<&str> = e.policies.iter().map(|p| p.entry.as_str()).collect();
            format!(
                "; DescribeExternalEndpoint: Opened, allowing only [{}]",
                entries.join(", ")
            )
        }
        Ok(Supported::Yes(e)) => format!(
            "; DescribeExternalEndpoint: {}",
            if e.status.is_empty() { "?" } else { &e.status }
        ),
        Ok(Supported::No { .. }) => String::new(),
        Err(e) => format!("; DescribeExternalEndpoint could not be read: {}", e.code()),
    }
}

fn lifetime(l: CfgLifetime) -> TokenLifetime {
    match l {
        CfgLifetime::Hours(h) => TokenLifetime::Hours(h),
        CfgLifetime::Days(d) => TokenLifetime::Days(d),
    }
}

/// Write the outcome of a token mutation. A failure here is logged: the
/// record exists (write-ahead) and reads `started` (or `interrupted`), so the
/// call is audited either way.
fn finish_audit(audit: AuditGuard, status: AuditStatus, error: Option<&str>, target: Option<&str>) {
    let r = fp("tokens.state.audit_finish").and_then(|()| {
        match target {
            Some(t) => audit.finish_as(status, error, t),
            None => audit.finish(status, error),
        }
        .map_err(TokenError::from)
    });
    if let Err(e) = r {
        tracing::error!(error = %e, "cannot write the audit record's outcome");
    }
}

/// Holds the cross-process lock for the duration of a cycle.
struct CycleLock {
    _file: Option<std::fs::File>,
}

/// How a rotation that failed after its token was created ends.
enum Disposition {
    /// No sink holds it: disable and delete it now.
    Discard,
    /// A sink may hold it: keep it (journal `delivering`), retire it normally later.
    Keep(String),
}

impl<'a> Engine<'a> {
    fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }

    fn list_lag(&self) -> Duration {
        self.config
            .tokens
            .as_ref()
            .map_or(Duration::from_secs(120), |t| t.list_lag)
    }

    /// This replica's `[tokens] delivery_group`.
    fn group(&self) -> &str {
        self.config
            .tokens
            .as_ref()
            .map_or("localhost", |t| t.delivery_group.as_str())
    }

    /// This group's delivery record of `rec`'s token: begun now, or done.
    fn delivery(
        &self,
        rec: &RotationRecord,
        began_at: DateTime<Utc>,
        done: bool,
    ) -> DeliveryRecord {
        DeliveryRecord {
            rotation_id: rec.rotation_id.clone(),
            token_name: rec.token_name.clone(),
            group: self.group().to_string(),
            token_id: rec.token_id.clone().unwrap_or_default(),
            began_at,
            delivered_at: done.then(|| self.now()),
        }
    }

    fn cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// One rotation at a time per token across processes (the daemon and a
    /// one-shot `apply tokens`): an exclusive lock beside the state file,
    /// released by the kernel if the holder dies.
    fn lock(&self) -> Result<CycleLock, TokenError> {
        let Some(lock_path) = self.state.lock_path("tokens") else {
            return Ok(CycleLock { _file: None });
        };
        let mut options = std::fs::OpenOptions::new();
        options.create(true).truncate(false).write(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        fp("tokens.lock")?;
        let file = options
            .open(&lock_path)
            .map_err(|source| TokenError::LockIo {
                path: lock_path.display().to_string(),
                source,
            })?;
        // A child forked by another thread of this process (an exec sink)
        // holds a copy of a just-released lock until it execs: wait briefly.
        let mut tries = 0;
        let outcome = loop {
            match file.try_lock() {
                Err(std::fs::TryLockError::WouldBlock) if tries < 40 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(25));
                }
                other => break other,
            }
        };
        match outcome {
            Ok(()) => Ok(CycleLock { _file: Some(file) }),
            Err(std::fs::TryLockError::WouldBlock) => Err(TokenError::Locked {
                path: lock_path.display().to_string(),
            }),
            Err(std::fs::TryLockError::Error(source)) => Err(TokenError::LockIo {
                path: lock_path.display().to_string(),
                source,
            }),
        }
    }

    fn install_id(&self) -> Result<String, TokenError> {
        fp("tokens.state.install_id")?;
        Ok(self.state.install_id()?)
    }

    fn instance_named(&self, token: &str, name: &str) -> Result<&'a InstanceConfig, TokenError> {
        self.config
            .instance_by_name(name)
            .ok_or_else(|| TokenError::UnknownInstance {
                token: token.to_string(),
                instance: name.to_string(),
            })
    }

    fn instance(&self, mt: &ManagedToken) -> Result<&'a InstanceConfig, TokenError> {
        self.instance_named(&mt.name, &mt.instance)
    }

    async fn list(&self, inst: &InstanceConfig) -> Result<Vec<Listed>, TokenError> {
        let tz = *self.client.timezone();
        fp("tokens.api.list")?;
        let raw = self
            .client
            .list_all(DescribeInstanceToken {
                instance_id: inst.id.clone(),
                marker: None,
                max_results: None,
            })
            .await
            .map_err(|source| TokenError::Listing {
                instance: inst.name.clone(),
                source: Box::new(source),
            })?;
        Ok(raw
            .into_iter()
            .map(|t| Listed {
                token_id: t.token_id,
                enabled: t.enable,
                desc: t.desc,
                created_at: t.create_time.map(|c| c.to_utc(&tz)),
                expires_at: t.expire_time.map(|e| e.to_utc(&tz)),
            })
            .collect())
    }

    fn journal(&self, name: &str) -> Result<Vec<RotationRecord>, TokenError> {
        fp("tokens.state.journal_read")?;
        Ok(self.state.journal_for(name)?)
    }

    /// Write-ahead audit record for a mutation about to be sent; no record, no mutation.
    fn audit_start(
        &self,
        point: &'static str,
        inst: &str,
        action: &str,
        target: &str,
        detail: &str,
    ) -> Result<AuditGuard, TokenError> {
        let m = Mutation {
            job: "tokens",
            run_id: self.run_id,
            instance: inst,
            action,
            target,
            detail,
        };
        fp(point)?;
        Ok(self.state.audited(&m, self.now())?)
    }

    /// Plan one managed token: its journal, the listing of its instance and
    /// of every configured instance its journal still has tokens on, its
    /// backoff. `listings` caches listings within one planning round.
    async fn plan_one(
        &self,
        mt: &ManagedToken,
        install_id: &str,
        listings: &mut HashMap<String, Vec<Listed>>,
    ) -> Result<TokenPlan, TokenError> {
        let journal = self.journal(&mt.name)?;
        let mut wanted = vec![mt.instance.clone()];
        for r in &journal {
            let live = r.step != Step::Deleted;
            if live
                && !wanted.contains(&r.instance)
                && self.config.instance_by_name(&r.instance).is_some()
            {
                wanted.push(r.instance.clone());
            }
        }
        for name in wanted {
            if let std::collections::hash_map::Entry::Vacant(slot) = listings.entry(name) {
                let inst = self.instance_named(&mt.name, slot.key())?;
                slot.insert(self.list(inst).await?);
            }
        }
        fp("tokens.state.deliveries_read")?;
        let deliveries = self.state.deliveries_for(&mt.name)?;
        fp("tokens.state.backoff_read")?;
        let backoff = self.state.token_backoff(&mt.name, &mt.instance)?;
        let plan = planner::plan_token(
            mt,
            &Inputs {
                install_id,
                journal: &journal,
                listings,
                backoff: backoff.as_ref(),
                retry_base: self.settings.retry_base,
                list_lag: self.list_lag(),
                group: self.group(),
                deliveries: &deliveries,
                now: self.now(),
            },
        );
        self.metrics
            .tokens
            .foreign(&mt.name, &mt.instance, plan.foreign.len());
        self.metrics.tokens.delivered(&mt.name, plan.delivered_here);
        if let Some(c) = plan.current.as_ref().filter(|_| !plan.delivered_here) {
            tracing::warn!(token = %mt.name, token_id = %c.token_id, delivery_group = %self.group(), "this replica's sinks never received the current token (kcr_housekeeper_token_delivered 0): another replica created and delivered it; a leader rotates to get one it can deliver");
        }
        for f in &plan.foreign {
            tracing::warn!(token = %mt.name, token_id = %f.token_id, why = %f.why, "a token of this name is not this installation's: left alone");
        }
        Ok(plan)
    }

    /// Plan every managed token (no changes).
    pub async fn plan(&self) -> Result<Vec<TokenPlan>, TokenError> {
        let Some(tc) = &self.config.tokens else {
            return Ok(Vec::new());
        };
        let install_id = self.install_id()?;
        let mut listings = HashMap::new();
        let mut plans = Vec::new();
        for mt in &tc.managed {
            self.instance(mt)?;
            plans.push(self.plan_one(mt, &install_id, &mut listings).await?);
        }
        Ok(plans)
    }

    /// One cycle: for each managed token, plan and carry out every step due
    /// now. A failure of one token does not stop the others.
    pub async fn run(&self) -> Result<Vec<TokenOutcome>, TokenError> {
        let Some(tc) = &self.config.tokens else {
            return Ok(Vec::new());
        };
        let _lock = self.lock()?;
        let install_id = self.install_id()?;
        let mut outcomes = Vec::new();
        for mt in &tc.managed {
            if self.cancelled() {
                return Err(TokenError::Cancelled);
            }
            let mut outcome = TokenOutcome {
                name: mt.name.clone(),
                ..Default::default()
            };
            if let Err(e) = self.cycle_one(mt, &install_id, &mut outcome).await {
                tracing::error!(token = %mt.name, error = %e, "token cycle failed; the current token stays in place");
                outcome.error = Some(e.to_string());
                outcome.code = Some(e.code());
            }
            outcomes.push(outcome);
        }
        self.export_expiry().await;
        self.export_registry_reachable().await;
        Ok(outcomes)
    }

    /// Plan and apply until nothing is due now (bounded): a step can make
    /// another due (a rotation makes the adoption of an earlier token due,
    /// the adoption of a disabled one its `disable` record).
    async fn cycle_one(
        &self,
        mt: &ManagedToken,
        install_id: &str,
        outcome: &mut TokenOutcome,
    ) -> Result<(), TokenError> {
        self.instance(mt)?;
        let mut rotated = false;
        let mut backing_off = None;
        for pass in 0..self.settings.max_passes.max(1) {
            let plan = self.plan_one(mt, install_id, &mut HashMap::new()).await?;
            if pass == 0 {
                for n in &plan.notes {
                    tracing::warn!(token = %mt.name, note = %n, "token note");
                }
            }
            backing_off = plan.backoff_until.map(|at| {
                let what = plan.upcoming.iter().find(|u| u.at == at);
                match what {
                    Some(u) => format!("backing off until {}: {}", at.to_rfc3339(), u.what),
                    None => format!("next rotation attempt at {}", at.to_rfc3339()),
                }
            });
            let mut applied = 0;
            for step in &plan.steps {
                if self.cancelled() {
                    return Err(TokenError::Cancelled);
                }
                match step {
                    // One rotation per cycle at most.
                    Planned::Rotate { .. } if rotated => continue,
                    Planned::AwaitListing { .. } => {
                        tracing::info!(token = %mt.name, step = %step.describe(), "waiting");
                        continue;
                    }
                    _ => {}
                }
                tracing::info!(token = %mt.name, step = %step.describe(), "token step");
                self.execute(mt, &plan, install_id, step, outcome).await?;
                outcome.done.push(step.describe());
                applied += 1;
                if matches!(step, Planned::Rotate { .. } | Planned::MarkCurrent { .. }) {
                    // The current token changed: plan again before retiring anything.
                    rotated |= matches!(step, Planned::Rotate { .. });
                    break;
                }
            }
            if applied == 0 {
                break;
            }
        }
        match backing_off {
            // Skipped, not done: never reported as a success.
            Some(what) if !rotated => Err(TokenError::BackingOff {
                token: mt.name.clone(),
                what,
            }),
            _ => Ok(()),
        }
    }

    fn record(
        &self,
        journal: &[RotationRecord],
        rotation_id: &str,
    ) -> Result<RotationRecord, TokenError> {
        journal
            .iter()
            .find(|r| r.rotation_id == rotation_id)
            .cloned()
            .ok_or_else(|| {
                TokenError::Invariant(format!("rotation {rotation_id} is not in the journal"))
            })
    }

    /// The journal record of a rotation, fresh from state.
    fn fresh_record(&self, name: &str, rotation_id: &str) -> Result<RotationRecord, TokenError> {
        let journal = self.journal(name)?;
        self.record(&journal, rotation_id)
    }

    fn put(&self, point: &'static str, records: &[RotationRecord]) -> Result<(), TokenError> {
        fp(point)?;
        self.state.journal_put(records)?;
        Ok(())
    }

    /// Journal `rec` at `step` together with this group's delivery record.
    fn put_delivery(
        &self,
        point: &'static str,
        mut rec: RotationRecord,
        step: Step,
        delivery: &DeliveryRecord,
    ) -> Result<RotationRecord, TokenError> {
        rec.step = step;
        rec.updated_at = self.now();
        fp(point)?;
        self.state
            .journal_put_delivery(std::slice::from_ref(&rec), Some(delivery))?;
        Ok(rec)
    }

    fn set_step(
        &self,
        point: &'static str,
        mut rec: RotationRecord,
        step: Step,
        error: Option<String>,
    ) -> Result<RotationRecord, TokenError> {
        rec.step = step;
        rec.updated_at = self.now();
        if error.is_some() {
            rec.error = error;
        }
        self.put(point, std::slice::from_ref(&rec))?;
        Ok(rec)
    }

    async fn execute(
        &self,
        mt: &ManagedToken,
        plan: &TokenPlan,
        install_id: &str,
        step: &Planned,
        outcome: &mut TokenOutcome,
    ) -> Result<(), TokenError> {
        let name = mt.name.as_str();
        match step {
            Planned::AwaitListing { .. } => Ok(()),
            Planned::Discard {
                rotation_id,
                instance,
                token_id,
                enabled,
                why,
            } => {
                let rec = self.fresh_record(name, rotation_id)?;
                if let Some(id) = token_id {
                    let inst = self.instance_named(name, instance)?;
                    self.discard_token(mt, inst, id, *enabled, why).await?;
                }
                self.set_step(
                    "tokens.state.journal_abandoned",
                    rec,
                    Step::Abandoned,
                    Some(why.clone()),
                )?;
                Ok(())
            }
            Planned::MarkCurrent { rotation_id } => {
                self.mark_current(name, rotation_id)?;
                self.backoff_clear(mt);
                Ok(())
            }
            Planned::Rotate { reason } => {
                let inst = self.instance(mt)?;
                self.metrics.tokens.rotating(name, true);
                let result = self
                    .rotate(mt, inst, install_id, plan.current.as_ref(), reason)
                    .await;
                self.metrics.tokens.rotating(name, false);
                self.metrics
                    .tokens
                    .rotated(name, result.is_ok(), self.now());
                match &result {
                    Ok(_) => self.backoff_clear(mt),
                    Err(e) => self.backoff_fail(mt, e),
                }
                outcome.rotated_to = Some(result?);
                Ok(())
            }
            Planned::Adopt {
                rotation_id,
                token_id,
            } => {
                let now = self.now();
                self.put(
                    "tokens.state.journal_adopt",
                    &[RotationRecord {
                        rotation_id: rotation_id.clone(),
                        token_name: mt.name.clone(),
                        instance: mt.instance.clone(),
                        token_id: Some(token_id.clone()),
                        previous_token_id: None,
                        step: Step::Superseded,
                        expires_at: None,
                        created_at: now,
                        updated_at: now,
                        error: Some(
                            "adopted: an earlier version's token of this name, not in the journal"
                                .into(),
                        ),
                        absent_since: None,
                    }],
                )
            }
            Planned::NoteListing {
                rotation_id,
                absent,
                ..
            } => {
                let mut rec = self.fresh_record(name, rotation_id)?;
                rec.absent_since = absent.then(|| self.now());
                self.put("tokens.state.journal_absence", &[rec])
            }
            Planned::Disable {
                rotation_id,
                instance,
                token_id,
            } => {
                self.guard_not_current(plan, token_id)?;
                let rec = self.fresh_record(name, rotation_id)?;
                let inst = self.instance_named(name, instance)?;
                self.disable(mt, inst, token_id, "overlap ended").await?;
                self.set_step("tokens.state.journal_disabled", rec, Step::Disabled, None)?;
                Ok(())
            }
            Planned::Delete {
                rotation_id,
                instance,
                token_id,
            } => {
                self.guard_not_current(plan, token_id)?;
                let rec = self.fresh_record(name, rotation_id)?;
                let inst = self.instance_named(name, instance)?;
                self.delete(mt, inst, token_id, "delete_after elapsed")
                    .await?;
                self.set_step("tokens.state.journal_deleted", rec, Step::Deleted, None)?;
                Ok(())
            }
            Planned::Forget { rotation_id, .. } => {
                let rec = self.fresh_record(name, rotation_id)?;
                self.set_step(
                    "tokens.state.journal_forget",
                    rec,
                    Step::Deleted,
                    Some("missing from two listings list_lag apart".into()),
                )?;
                Ok(())
            }
        }
    }

    /// A failed rotation: the next attempt backs off (journaled, survives restarts).
    fn backoff_fail(&self, mt: &ManagedToken, e: &TokenError) {
        let r = fp("tokens.state.backoff_fail").and_then(|()| {
            self.state
                .token_backoff_fail(
                    &mt.name,
                    &mt.instance,
                    self.now(),
                    &e.to_string(),
                    &planner::config_fingerprint(mt),
                )
                .map_err(TokenError::from)
        });
        match r {
            Ok(n) => {
                tracing::warn!(token = %mt.name, failures = n, "rotation failed; backing off before the next attempt")
            }
            Err(w) => {
                tracing::error!(token = %mt.name, error = %w, "cannot record the rotation's failure; the next cycle may try again without waiting")
            }
        }
    }

    fn backoff_clear(&self, mt: &ManagedToken) {
        let r = fp("tokens.state.backoff_clear").and_then(|()| {
            self.state
                .token_backoff_clear(&mt.name, &mt.instance)
                .map_err(TokenError::from)
        });
        if let Err(e) = r {
            tracing::error!(token = %mt.name, error = %e, "cannot clear the rotation backoff; the next rotation may wait longer");
        }
    }

    /// The last delivered, verified token is never disabled or deleted.
    fn guard_not_current(&self, plan: &TokenPlan, token_id: &str) -> Result<(), TokenError> {
        if plan
            .current
            .as_ref()
            .is_some_and(|c| c.token_id == token_id)
            || plan.current.is_none()
        {
            return Err(TokenError::Invariant(format!(
                "refusing to retire token {token_id}: it is the current token or there is none"
            )));
        }
        Ok(())
    }

    /// Is the token gone from the registry (a mutation that failed may have applied)?
    async fn gone(&self, inst: &InstanceConfig, token_id: &str) -> bool {
        self.list(inst)
            .await
            .is_ok_and(|l| l.iter().all(|t| t.token_id != token_id))
    }

    /// One token mutation: audited write-ahead, then sent. With `done_if_gone`,
    /// a failure whose token is no longer listed counts as done (a retried
    /// delete may find its first attempt applied).
    #[allow(clippy::too_many_arguments)] // each is one fact about the one call
    async fn mutate<A: Action>(
        &self,
        points: (&'static str, &'static str),
        mt: &ManagedToken,
        inst: &InstanceConfig,
        action: &str,
        token_id: &str,
        why: &str,
        request: A,
        done_if_gone: bool,
    ) -> Result<(), TokenError> {
        let detail = format!("{}: {why}", mt.name);
        let audit = self.audit_start(points.0, &inst.name, action, token_id, &detail)?;
        if let Err(e) = fp(points.1) {
            finish_audit(audit, AuditStatus::Failed, Some("injected"), None);
            return Err(e);
        }
        match self.client.call(&request).await {
            Ok(_) => {
                finish_audit(audit, AuditStatus::Applied, None, None);
                Ok(())
            }
            Err(_) if done_if_gone && self.gone(inst, token_id).await => {
                finish_audit(audit, AuditStatus::AlreadyDone, None, None);
                Ok(())
            }
            Err(e) => {
                finish_audit(audit, AuditStatus::Failed, Some(e.code()), None);
                Err(TokenError::Api {
                    token: mt.name.clone(),
                    what: format!("{action} {token_id}"),
                    source: Box::new(e),
                })
            }
        }
    }

    async fn disable(
        &self,
        mt: &ManagedToken,
        inst: &InstanceConfig,
        token_id: &str,
        why: &str,
    ) -> Result<(), TokenError> {
        let request = ModifyInstanceTokenStatus {
            instance_id: inst.id.clone(),
            token_id: token_id.to_string(),
            enable: false,
        };
        let points = ("tokens.state.audit_disable", "tokens.api.disable");
        self.mutate(
            points,
            mt,
            inst,
            "disable_token",
            token_id,
            why,
            request,
            false,
        )
        .await
    }

    async fn delete(
        &self,
        mt: &ManagedToken,
        inst: &InstanceConfig,
        token_id: &str,
        why: &str,
    ) -> Result<(), TokenError> {
        let request = DeleteInstanceToken {
            instance_id: inst.id.clone(),
            token_id: token_id.to_string(),
        };
        let points = ("tokens.state.audit_delete", "tokens.api.delete");
        self.mutate(
            points,
            mt,
            inst,
            "delete_token",
            token_id,
            why,
            request,
            true,
        )
        .await
    }

    /// Disable, then delete, a token whose secret is lost.
    async fn discard_token(
        &self,
        mt: &ManagedToken,
        inst: &InstanceConfig,
        token_id: &str,
        enabled: bool,
        why: &str,
    ) -> Result<(), TokenError> {
        if enabled {
            match self.disable(mt, inst, token_id, why).await {
                Ok(()) => {}
                Err(_) if self.gone(inst, token_id).await => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        self.delete(mt, inst, token_id, why).await
    }

    fn mark_current(&self, name: &str, rotation_id: &str) -> Result<(), TokenError> {
        let now = self.now();
        let mut changed = Vec::new();
        // Every instance's: a token moved to another instance supersedes the old one.
        for mut r in self.journal(name)? {
            if r.rotation_id == rotation_id {
                r.step = Step::Current;
                r.updated_at = now;
                changed.push(r);
            } else if r.step == Step::Current {
                r.step = Step::Superseded;
                r.updated_at = now;
                changed.push(r);
            }
        }
        // One transaction: there is always exactly one current rotation.
        self.put("tokens.state.mark_current", &changed)
    }

    fn new_rotation_id(&self) -> String {
        let id = format!(
            "r{}-{:04x}",
            self.now().format("%Y%m%dT%H%M%SZ"),
            rand::random::<u16>()
        );
        debug_assert_eq!(id.len(), planner::ROTATION_ID_LEN);
        id
    }

    /// A rotation that failed after its token was created, before any sink
    /// was written: disable and delete the token, close the rotation. If
    /// that fails, the journal still says `creating`/`created` and the next
    /// cycle discards it.
    async fn discard_new(
        &self,
        mt: &ManagedToken,
        inst: &InstanceConfig,
        rotation_id: &str,
        token_id: &str,
        why: &str,
    ) {
        let r = async {
            self.discard_token(mt, inst, token_id, true, why).await?;
            let latest = self.fresh_record(&mt.name, rotation_id)?;
            self.set_step(
                "tokens.state.journal_abandoned",
                latest,
                Step::Abandoned,
                Some(why.to_string()),
            )?;
            Ok::<(), TokenError>(())
        }
        .await;
        if let Err(d) = r {
            tracing::error!(token = %mt.name, token_id = %token_id, error = %d, "cannot discard the failed rotation's token; the next cycle retries");
        }
    }

    /// The registry answers an anonymous `/v2/` from here ([`verify::probe`]);
    /// sets `kcr_housekeeper_token_registry_reachable`. When it does not, the
    /// error names the host, the KCR setting, and the external endpoint's
    /// status when `DescribeExternalEndpoint` can tell it.
    async fn registry_preflight(
        &self,
        mt: &ManagedToken,
        inst: &InstanceConfig,
    ) -> Result<(), TokenError> {
        let host = inst.registry.as_deref().unwrap_or_default();
        let base = self
            .settings
            .registry_override
            .clone()
            .unwrap_or_else(|| verify::base_url(host));
        let timeout = self.settings.verify_timeout;
        // A 403 is an answer, not a glitch: only a missing answer is tried again.
        let probed = match verify::probe(&base, timeout).await {
            Err(verify::VerifyError::Unreachable { .. } | verify::VerifyError::TimedOut { .. }) => {
                self.with_retries(|| verify::probe(&base, timeout)).await
            }
            other => other,
        };
        self.metrics.tokens.registry_reachable(
            &mt.name,
            probed
                .as_ref()
                .map_or_else(verify::VerifyError::reached, |()| true),
        );
        let source = match probed {
            Ok(()) => return Ok(()),
            // Reachable, but a login there would prove nothing: refuse to
            // create a token whose verification would be empty.
            // A redirect: not the registry host itself; opening the
            // external endpoint would not help either.
            Err(
                source @ (verify::VerifyError::OpenToAnonymous { .. }
                | verify::VerifyError::Redirected { .. }),
            ) => {
                return Err(TokenError::Verify {
                    token: mt.name.clone(),
                    source,
                });
            }
            Err(source) => source,
        };
        let endpoint = describe_endpoint(self.client, &inst.id).await;
        Err(TokenError::RegistryUnreachable {
            token: mt.name.clone(),
            registry: host.to_string(),
            source,
            endpoint,
        })
    }

    /// create → journal → verify → deliver → mark current. Returns the new token id.
    async fn rotate(
        &self,
        mt: &ManagedToken,
        inst: &InstanceConfig,
        install_id: &str,
        current: Option<&Current>,
        reason: &str,
    ) -> Result<String, TokenError> {
        let token = mt.name.clone();
        // Checked up front: a sink that cannot work fails the rotation before a token exists.
        for sink in &mt.sinks {
            fp("tokens.rotate.preflight")?;
            sinks::preflight(sink).map_err(|source| TokenError::Sink {
                token: token.clone(),
                source,
            })?;
        }
        // A token that cannot log in would be created and discarded every
        // cycle: when it must be verified, the registry must answer first.
        if mt.verify {
            fp("tokens.rotate.registry_probe")?;
            self.registry_preflight(mt, inst).await?;
        }
        let now = self.now();
        let rotation_id = self.new_rotation_id();
        let mut rec = RotationRecord {
            rotation_id: rotation_id.clone(),
            token_name: mt.name.clone(),
            instance: inst.name.clone(),
            token_id: None,
            previous_token_id: current.map(|c| c.token_id.clone()),
            step: Step::Creating,
            expires_at: None,
            created_at: now,
            updated_at: now,
            error: None,
            absent_since: None,
        };
        self.put("tokens.state.journal_creating", std::slice::from_ref(&rec))?;
        let detail = format!("{}: rotation {rotation_id}: {reason}", mt.name);
        // The token id is known only once created: the record names the rotation until then.
        let audit = self.audit_start(
            "tokens.state.audit_create",
            &inst.name,
            "create_token",
            &format!("rotation {rotation_id}"),
            &detail,
        )?;
        let request = CreateInstanceToken {
            instance_id: inst.id.clone(),
            lifetime: lifetime(mt.lifetime),
            desc: Some(planner::desc(&mt.name, install_id, &rotation_id)),
        };
        let sent = match fp("tokens.api.create") {
            // An injected fault before sending: surely not applied.
            Err(e) => Err((e, true, "injected".to_string())),
            Ok(()) => self.client.call(&request).await.map_err(|e| {
                let (applied, code) = (e.surely_not_applied(), e.code().to_string());
                let err = TokenError::Api {
                    token: token.clone(),
                    what: "create_token".into(),
                    source: Box::new(e),
                };
                (err, applied, code)
            }),
        };
        let created = match sent {
            Ok(c) => c,
            Err((err, surely_not_applied, code)) => {
                finish_audit(audit, AuditStatus::Failed, Some(&code), None);
                if surely_not_applied {
                    rec.step = Step::Abandoned;
                    rec.error = Some(format!("create failed: {code}"));
                } else {
                    // Maybe created: the next cycle finds it by its rotation id and discards it.
                    rec.error = Some(format!("create outcome unknown: {code}"));
                }
                rec.updated_at = self.now();
                if let Err(w) = self.put(
                    "tokens.state.journal_create_failed",
                    std::slice::from_ref(&rec),
                ) {
                    // Still `creating`: the next cycle waits out list_lag, then closes it.
                    tracing::error!(token = %mt.name, error = %w, "cannot journal the failed create");
                }
                return Err(err);
            }
        };
        let tz = *self.client.timezone();
        let token_id = created.token_id.clone();
        rec.token_id = Some(token_id.clone());
        rec.expires_at = created.expire_time.map(|t| t.to_utc(&tz));
        finish_audit(audit, AuditStatus::Applied, None, Some(&token_id));
        tracing::info!(token = %mt.name, token_id = %token_id, rotation = %rotation_id, "token created");
        let rec = match self.set_step("tokens.state.journal_created", rec, Step::Created, None) {
            Ok(r) => r,
            Err(e) => {
                let why = format!("rotation failed: {e}");
                self.discard_new(mt, inst, &rotation_id, &token_id, &why)
                    .await;
                return Err(e);
            }
        };

        let delivery = Delivery {
            registry: inst.registry.as_deref().unwrap_or_default(),
            username: &created.username,
            secret: &created.token,
            token_id: &token_id,
            expires_at: rec.expires_at,
            rotates_at: rec.expires_at.and_then(|e| {
                chrono::Duration::from_std(mt.rotate_before)
                    .ok()
                    .map(|b| e - b)
            }),
        };
        // Verify before any sink sees it: a refused token is discarded while nothing depends on it.
        let prepared = async {
            if mt.verify {
                let base = self.settings.registry_override.clone().unwrap_or_else(|| {
                    verify::base_url(inst.registry.as_deref().unwrap_or_default())
                });
                let timeout = self.settings.verify_timeout;
                fp("tokens.verify")?;
                self.with_retries(|| {
                    verify::login(&base, &created.username, &created.token, timeout)
                })
                .await
                .map_err(|source| TokenError::Verify {
                    token: token.clone(),
                    source,
                })?;
            }
            let mut priors = Vec::new();
            for sink in &mt.sinks {
                fp("tokens.rotate.snapshot")?;
                priors.extend(sinks::snapshot(sink).map_err(|source| TokenError::Sink {
                    token: token.clone(),
                    source,
                })?);
            }
            // From here this group's sinks may hold it: recorded with the step.
            let began = self.now();
            let rec = self.put_delivery(
                "tokens.state.journal_delivering",
                rec.clone(),
                Step::Delivering,
                &self.delivery(&rec, began, false),
            )?;
            Ok::<_, TokenError>((priors, rec, began))
        }
        .await;
        let (priors, rec, began) = match prepared {
            Ok(p) => p,
            Err(e) => {
                let why = format!("rotation failed: {e}");
                self.discard_new(mt, inst, &rotation_id, &token_id, &why)
                    .await;
                return Err(e);
            }
        };

        // File sinks first: they can be put back; exec sinks cannot.
        let mut order: Vec<&Sink> = mt.sinks.iter().collect();
        order.sort_by_key(|s| matches!(s, Sink::Exec { .. }));
        let mut exec_started = false;
        let mut failure = None;
        for sink in order {
            exec_started |= matches!(sink, Sink::Exec { .. });
            let r = match fp("tokens.rotate.deliver") {
                Err(e) => Err(e),
                Ok(()) => self
                    .with_retries(|| sinks::deliver(sink, &delivery))
                    .await
                    .map_err(|source| TokenError::Sink {
                        token: token.clone(),
                        source,
                    })
                    .and_then(|()| fp("tokens.rotate.sink_done")),
            };
            if let Err(e) = r {
                failure = Some(e);
                break;
            }
        }
        let result = match failure {
            Some(e) => Err(e),
            // Every sink holds it: from here on it is never discarded.
            None => match self.put_delivery(
                "tokens.state.journal_verified",
                rec.clone(),
                Step::Verified,
                &self.delivery(&rec, began, true),
            ) {
                Err(e) => {
                    tracing::error!(token = %mt.name, token_id = %token_id, error = %e, "delivered everywhere but cannot journal it; the token is kept and retired once a newer one is current");
                    return Err(e);
                }
                Ok(_) => Ok(()),
            },
        };
        match result {
            Ok(()) => {
                if let Err(e) = self.mark_current(&mt.name, &rotation_id) {
                    tracing::error!(token = %mt.name, token_id = %token_id, error = %e, "delivered and verified but not yet marked current; the next cycle finishes it");
                    return Err(e);
                }
                if let Some(e) = rec.expires_at {
                    self.metrics
                        .tokens
                        .expires(&inst.name, &token_id, true, true, e);
                }
                tracing::info!(token = %mt.name, token_id = %token_id, "rotation complete: new token current");
                Ok(token_id)
            }
            Err(e) => {
                let why = format!("rotation failed: {e}");
                match self.put_back(&priors, exec_started) {
                    Disposition::Discard => {
                        // Journal first that no sink holds it; if that fails it stays `delivering` (kept).
                        match self.set_step(
                            "tokens.state.journal_restored",
                            rec,
                            Step::Created,
                            Some(format!("{why}; every sink put back")),
                        ) {
                            Ok(_) => {
                                self.discard_new(mt, inst, &rotation_id, &token_id, &why)
                                    .await
                            }
                            Err(w) => {
                                tracing::error!(token = %mt.name, token_id = %token_id, error = %w, "cannot journal the restored sinks; the token is kept");
                            }
                        }
                    }
                    Disposition::Keep(because) => {
                        tracing::warn!(token = %mt.name, token_id = %token_id, because = %because, "the failed rotation's token is kept until a newer one is current");
                        let mut kept = rec;
                        kept.error = Some(format!("{why}; kept: {because}"));
                        if let Err(w) = self.put("tokens.state.journal_kept", &[kept]) {
                            tracing::error!(token = %mt.name, error = %w, "cannot journal why the token is kept; it stays `delivering`");
                        }
                    }
                }
                Err(e)
            }
        }
    }

    /// Put every file sink back after a failed delivery, and say whether the
    /// token may be discarded.
    fn put_back(&self, priors: &[sinks::Prior], exec_started: bool) -> Disposition {
        let mut failed = 0;
        for p in priors {
            let r = fp("tokens.rotate.restore").and_then(|()| {
                sinks::restore(p).map_err(|source| TokenError::Sink {
                    token: String::new(),
                    source,
                })
            });
            if let Err(e) = r {
                failed += 1;
                tracing::error!(error = %e, "cannot restore a sink after a failed rotation");
            }
        }
        match (exec_started, failed) {
            (true, _) => Disposition::Keep("an exec sink may have received it".into()),
            (false, 0) => Disposition::Discard,
            (false, n) => {
                Disposition::Keep(format!("{n} sink(s) could not be put back and may hold it"))
            }
        }
    }

    async fn with_retries<T, E: std::fmt::Display, F, Fut>(&self, mut f: F) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let mut wait = self.settings.backoff;
        let mut attempt = 1;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) if attempt >= self.settings.attempts.max(1) => return Err(e),
                Err(e) => {
                    tracing::warn!(attempt, error = %e, "attempt failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                    attempt += 1;
                }
            }
        }
    }

    /// `kcr_housekeeper_token_registry_reachable` for every managed token
    /// whose instance names a registry, on every run (a rotation's preflight
    /// alone would leave it stale between rotations, which may be weeks
    /// apart): one anonymous `GET /v2/` per distinct registry ([`verify::probe`]),
    /// no credentials sent, nothing created. Tokens with `verify = false` are
    /// probed too: the gauge says what this host can reach.
    pub async fn export_registry_reachable(&self) {
        let m = self.metrics;
        let mut probed: HashMap<String, bool> = HashMap::new();
        for mt in self.config.tokens.iter().flat_map(|t| &t.managed) {
            let Some(inst) = self.config.instance_by_name(&mt.instance) else {
                continue;
            };
            let Some(host) = inst.registry.as_deref() else {
                continue;
            };
            let base = self
                .settings
                .registry_override
                .clone()
                .unwrap_or_else(|| verify::base_url(host));
            let reachable = match probed.get(&base) {
                Some(r) => *r,
                None => {
                    let r = verify::probe(&base, self.settings.verify_timeout)
                        .await
                        .map_or_else(|e| e.reached(), |()| true);
                    if !r {
                        tracing::warn!(token = %mt.name, registry = %host, "the registry does not answer this host (kcr_housekeeper_token_registry_reachable 0): a rotation would fail before creating a token");
                    }
                    probed.insert(base, r);
                    r
                }
            };
            m.tokens.registry_reachable(&mt.name, reachable);
        }
    }

    /// `kcr_token_expiry_timestamp_seconds` for every token of every instance.
    pub async fn export_expiry(&self) {
        let m = self.metrics;
        let managed: Vec<&str> = self
            .config
            .tokens
            .iter()
            .flat_map(|t| &t.managed)
            .map(|t| t.name.as_str())
            .collect();
        let mut rows = Vec::new();
        for inst in &self.config.instances {
            match self.list(inst).await {
                Ok(listed) => {
                    m.api.reached(&inst.name, true);
                    for t in listed {
                        let is_managed = t
                            .desc
                            .as_deref()
                            .and_then(planner::parse_desc)
                            .is_some_and(|d| managed.contains(&d.name));
                        if let Some(e) = t.expires_at {
                            rows.push((inst.name.clone(), t.token_id, is_managed, t.enabled, e));
                        }
                    }
                }
                Err(e) => {
                    m.api.reached(&inst.name, false);
                    tracing::warn!(error = %e, "cannot list tokens for the expiry metrics; keeping the last values");
                    return;
                }
            }
        }
        // A token created moments ago may not be listed yet: its journal knows its expiry.
        for name in &managed {
            let Ok(journal) = self.state.journal_for(name) else {
                continue;
            };
            for r in journal {
                if r.step != Step::Current {
                    continue;
                }
                if let (Some(id), Some(e)) = (r.token_id, r.expires_at)
                    && !rows.iter().any(|row| row.1 == id)
                {
                    rows.push((r.instance, id, true, true, e));
                }
            }
        }
        m.tokens
            .expiries(rows.iter().map(|(inst, id, managed, enabled, e)| {
                (inst.as_str(), id.as_str(), *managed, *enabled, *e)
            }));
    }
}

#[cfg(test)]
mod tests {
    use super::FAILPOINTS;
    use std::collections::BTreeSet;

    /// This file without its tests, string literals and comments, one entry per line.
    fn code() -> Vec<String> {
        let src = include_str!("rotate.rs");
        let end = src.find("#[cfg(test)]\nmod tests").unwrap_or(src.len());
        src[..end]
            .lines()
            .map(|l| {
                let mut out = String::new();
                let mut in_str = false;
                let mut prev = ' ';
                for c in l.chars() {
                    if c == '"' && prev != '\\' {
                        in_str = !in_str;
                        out.push('"');
                    } else if !in_str {
                        if c == '/' && out.ends_with('/') {
                            out.pop();
                            break;
                        }
                        out.push(c);
                    }
                    prev = c;
                }
                out
            })
            .collect()
    }

    /// Engine methods whose own fallible calls pass a failpoint (each is
    /// checked by this same test), and pure lookups that do no I/O.
    const COVERED: &[&str] = &[
        "self.lock(",
        "self.install_id(",
        "self.list(",
        "self.journal(",
        "self.audit_start(",
        "self.put(",
        "self.set_step(",
        "self.put_delivery(",
        "self.fresh_record(",
        "self.plan_one(",
        "self.execute(",
        "self.mark_current(",
        "self.discard_token(",
        "self.disable(",
        "self.delete(",
        "self.mutate(",
        "self.rotate(",
        // Pure: config and journal lookups, the current-token guard.
        "self.instance(",
        "self.instance_named(",
        "self.record(",
        "self.guard_not_current(",
    ];

    /// The method's proof that every `?` on the rotation path has a
    /// failpoint: each `?` is a failpoint itself, is the next `?` after one
    /// (the raw call it guards, within a few lines), or propagates from a
    /// method listed in [`COVERED`].
    #[test]
    fn fp_sites_cover_every_question_mark() {
        let lines = code();
        let mut statement = String::new();
        let mut guard: Option<usize> = None;
        let mut uncovered = Vec::new();
        let mut sites = 0;
        for (i, line) in lines.iter().enumerate() {
            statement.push_str(line.trim());
            if line.contains('?') {
                sites += 1;
                if line.trim_start().starts_with("fp(") {
                    guard = Some(i);
                } else {
                    let ok = COVERED.iter().any(|c| statement.contains(c))
                        || guard.is_some_and(|g| i - g <= 14)
                        // Re-raising the rotation's own result, already recorded.
                        || statement.contains("Some(result?)");
                    if !ok {
                        uncovered.push(format!("rotate.rs:{}: {}", i + 1, line.trim()));
                    }
                    guard = None;
                }
            }
            let t = line.trim_end();
            if t.ends_with(';') || t.ends_with('{') || t.ends_with('}') {
                statement.clear();
            }
        }
        assert!(sites > 40, "{sites} sites: the scan found the code");
        assert!(
            uncovered.is_empty(),
            "`?` without a failpoint: {uncovered:#?}"
        );
    }

    /// [`FAILPOINTS`] lists exactly the points this file passes.
    #[test]
    fn the_failpoint_list_matches_the_code() {
        let src = include_str!("rotate.rs");
        let end = src.find("#[cfg(test)]\nmod tests").unwrap_or(src.len());
        let list_start = src.find("pub const FAILPOINTS").unwrap();
        let list_end = list_start + src[list_start..].find("];").unwrap();
        let code = format!("{}{}", &src[..list_start], &src[list_end..end]);
        let used: BTreeSet<&str> = code
            .split('"')
            .skip(1)
            .step_by(2)
            .filter(|s| s.starts_with("tokens.") && !s.contains(' '))
            .collect();
        let listed: BTreeSet<&str> = FAILPOINTS.iter().copied().collect();
        assert_eq!(used, listed);
        assert_eq!(listed.len(), FAILPOINTS.len(), "no duplicates");
    }
}
