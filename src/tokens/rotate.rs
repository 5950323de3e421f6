//! The rotation engine: lists the tokens, plans each managed token
//! ([`super::planner`]) and carries the plan out, journaling every step in
//! state before taking it and auditing every mutation.
//!
//! Failure keeps the old token in place: a sink that cannot be written or a
//! login that fails puts the file sinks back as they were, then disables and
//! deletes the new token (its secret was never kept). `exec` sinks that
//! already ran cannot be undone; they run after the file sinks, in order.

use super::planner::{self, Current, Listed, Planned, Step, TokenPlan};
use super::sinks::{self, Delivery, SinkError};
use super::verify;
use crate::config::{Config, InstanceConfig, ManagedToken, TokenLifetime as CfgLifetime};
use crate::kcr::{
    Action, Client, CreateInstanceToken, DeleteInstanceToken, DescribeInstanceToken,
    ModifyInstanceTokenStatus, TokenLifetime,
};
use crate::metrics::Metrics;
use crate::state::{NewAudit, RotationRecord, StateError, Store};
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
    #[error("cancelled before finishing")]
    Cancelled,
}

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
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            attempts: 3,
            backoff: Duration::from_millis(500),
            verify_timeout: Duration::from_secs(15),
            registry_override: None,
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
}

pub struct Engine<'a> {
    pub client: &'a Client,
    pub config: &'a Config,
    pub state: &'a Store,
    pub metrics: Option<&'a Metrics>,
    pub run_id: Option<i64>,
    pub cancel: Option<&'a CancellationToken>,
    /// The time; injectable so tests can move it with the simulator's clock.
    pub clock: &'a (dyn Fn() -> DateTime<Utc> + Send + Sync),
    pub settings: Settings,
}

/// Test-only crash points: with the `failpoints` feature, the process aborts
/// at the named step boundary (`KCR_HOUSEKEEPER_FAILPOINT=after-create`).
#[inline]
fn failpoint(_name: &str) {
    #[cfg(feature = "failpoints")]
    if std::env::var("KCR_HOUSEKEEPER_FAILPOINT").as_deref() == Ok(_name) {
        eprintln!("failpoint {_name}: aborting");
        std::process::abort();
    }
}

/// The names of the crash points, in the order a rotation passes them.
pub const FAILPOINTS: [&str; 7] = [
    "after-journal-creating",
    "after-create",
    "after-journal-delivering",
    "after-first-sink",
    "after-deliver",
    "after-verify",
    "after-mark-current",
];

fn lifetime(l: CfgLifetime) -> TokenLifetime {
    match l {
        CfgLifetime::Hours(h) => TokenLifetime::Hours(h),
        CfgLifetime::Days(d) => TokenLifetime::Days(d),
    }
}

/// A started audit record, finished with the call's outcome.
struct Audited<'s> {
    state: &'s Store,
    id: i64,
}

impl Audited<'_> {
    fn finish(self, outcome: &str, target: Option<&str>) {
        if let Err(e) = self.state.audit_finish(self.id, outcome, target) {
            tracing::error!(error = %e, "cannot write the audit record");
        }
    }
}

/// Holds the cross-process lock for the duration of a cycle.
struct CycleLock {
    _file: Option<std::fs::File>,
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

    fn cancelled(&self) -> bool {
        self.cancel.is_some_and(|c| c.is_cancelled())
    }

    /// One rotation at a time per token across processes (the daemon and a
    /// one-shot `apply tokens`): an exclusive lock beside the state file,
    /// released by the kernel if the holder dies.
    fn lock(&self) -> Result<CycleLock, TokenError> {
        let path = self.state.path();
        if path.as_os_str() == ":memory:" {
            return Ok(CycleLock { _file: None });
        }
        let lock_path = path.with_extension("tokens.lock");
        let mut options = std::fs::OpenOptions::new();
        options.create(true).truncate(false).write(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options
            .open(&lock_path)
            .map_err(|source| TokenError::LockIo {
                path: lock_path.display().to_string(),
                source,
            })?;
        match file.try_lock() {
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

    fn instance(&self, mt: &ManagedToken) -> Result<&'a InstanceConfig, TokenError> {
        self.config
            .instance_by_name(&mt.instance)
            .ok_or_else(|| TokenError::UnknownInstance {
                token: mt.name.clone(),
                instance: mt.instance.clone(),
            })
    }

    async fn list(&self, inst: &InstanceConfig) -> Result<Vec<Listed>, TokenError> {
        let tz = *self.client.timezone();
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
                expires_at: t.expire_time.map(|e| e.to_utc(&tz)),
            })
            .collect())
    }

    fn journal(&self, name: &str) -> Result<Vec<RotationRecord>, TokenError> {
        Ok(self.state.journal_for(name)?)
    }

    /// Write-ahead audit record for a mutation about to be sent; no record, no mutation.
    fn audit_start(
        &self,
        inst: &str,
        action: &str,
        target: &str,
        detail: &str,
    ) -> Result<Audited<'_>, TokenError> {
        let rec = NewAudit {
            job: "tokens",
            run_id: self.run_id,
            instance: inst,
            action,
            target,
            detail,
            outcome: "",
        };
        let id = self.state.audit_begin(&rec, self.now())?;
        Ok(Audited {
            state: self.state,
            id,
        })
    }

    /// Plan every managed token (no changes).
    pub async fn plan(&self) -> Result<Vec<TokenPlan>, TokenError> {
        let Some(tc) = &self.config.tokens else {
            return Ok(Vec::new());
        };
        let mut listings: HashMap<String, Vec<Listed>> = HashMap::new();
        let mut plans = Vec::new();
        for mt in &tc.managed {
            let inst = self.instance(mt)?;
            if !listings.contains_key(&inst.name) {
                listings.insert(inst.name.clone(), self.list(inst).await?);
            }
            let journal = self.journal(&mt.name)?;
            plans.push(planner::plan_token(
                mt,
                &journal,
                &listings[&inst.name],
                tc.list_lag,
                self.now(),
            ));
        }
        Ok(plans)
    }

    /// One cycle: for each managed token, plan and carry the plan out. A
    /// failure of one token does not stop the others.
    pub async fn run(&self) -> Result<Vec<TokenOutcome>, TokenError> {
        let Some(tc) = &self.config.tokens else {
            return Ok(Vec::new());
        };
        let _lock = self.lock()?;
        let mut outcomes = Vec::new();
        for mt in &tc.managed {
            if self.cancelled() {
                return Err(TokenError::Cancelled);
            }
            let mut outcome = TokenOutcome {
                name: mt.name.clone(),
                ..Default::default()
            };
            if let Err(e) = self.cycle_one(mt, &mut outcome).await {
                tracing::error!(token = %mt.name, error = %e, "token cycle failed; the current token stays in place");
                outcome.error = Some(e.to_string());
            }
            outcomes.push(outcome);
        }
        self.export_expiry().await;
        Ok(outcomes)
    }

    async fn cycle_one(
        &self,
        mt: &ManagedToken,
        outcome: &mut TokenOutcome,
    ) -> Result<(), TokenError> {
        let inst = self.instance(mt)?;
        // Pass 1 may rotate; pass 2 retires what the rotation replaced
        // (adoption, interrupted deliveries, the previous token's schedule).
        for pass in 0..2 {
            let listed = self.list(inst).await?;
            let journal = self.journal(&mt.name)?;
            let plan = planner::plan_token(mt, &journal, &listed, self.list_lag(), self.now());
            let mut changed_current = false;
            for step in &plan.steps {
                if self.cancelled() {
                    return Err(TokenError::Cancelled);
                }
                match step {
                    Planned::Rotate { .. } if pass > 0 => continue,
                    Planned::AwaitListing { .. } => {
                        tracing::info!(token = %mt.name, step = %step.describe(), "waiting");
                        continue;
                    }
                    _ => {}
                }
                tracing::info!(token = %mt.name, step = %step.describe(), "token step");
                self.execute(mt, inst, &plan, &journal, step, outcome)
                    .await?;
                outcome.done.push(step.describe());
                changed_current |=
                    matches!(step, Planned::Rotate { .. } | Planned::MarkCurrent { .. });
            }
            if !changed_current {
                break;
            }
        }
        Ok(())
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

    fn set_step(
        &self,
        mut rec: RotationRecord,
        step: Step,
        error: Option<String>,
    ) -> Result<RotationRecord, TokenError> {
        rec.step = step.as_str().to_string();
        rec.updated_at = self.now();
        if error.is_some() {
            rec.error = error;
        }
        self.state.journal_put(std::slice::from_ref(&rec))?;
        Ok(rec)
    }

    async fn execute(
        &self,
        mt: &ManagedToken,
        inst: &InstanceConfig,
        plan: &TokenPlan,
        journal: &[RotationRecord],
        step: &Planned,
        outcome: &mut TokenOutcome,
    ) -> Result<(), TokenError> {
        match step {
            Planned::AwaitListing { .. } => Ok(()),
            Planned::Discard {
                rotation_id,
                token_id,
                enabled,
                why,
            } => {
                if let Some(id) = token_id {
                    self.discard_token(mt, inst, id, *enabled, why).await?;
                }
                let rec = self.record(journal, rotation_id)?;
                self.set_step(rec, Step::Abandoned, Some(why.clone()))?;
                Ok(())
            }
            Planned::MarkCurrent { rotation_id } => self.mark_current(&mt.name, rotation_id),
            Planned::Rotate { reason } => {
                let metrics = self.metrics;
                let progress =
                    metrics.map(|m| m.token_rotation_in_progress.with_label_values(&[&mt.name]));
                if let Some(p) = &progress {
                    p.set(1);
                }
                let result = self.rotate(mt, inst, plan.current.as_ref(), reason).await;
                if let Some(p) = &progress {
                    p.set(0);
                }
                let label = if result.is_ok() { "success" } else { "failure" };
                if let Some(m) = metrics {
                    m.token_rotations
                        .with_label_values(&[&mt.name, label])
                        .inc();
                    if result.is_ok() {
                        m.token_last_rotation
                            .with_label_values(&[&mt.name])
                            .set(self.now().timestamp() as f64);
                    }
                }
                outcome.rotated_to = Some(result?);
                Ok(())
            }
            Planned::Adopt {
                rotation_id,
                token_id,
            } => {
                let now = self.now();
                self.state.journal_put(&[RotationRecord {
                    rotation_id: rotation_id.clone(),
                    token_name: mt.name.clone(),
                    instance: inst.name.clone(),
                    token_id: Some(token_id.clone()),
                    previous_token_id: None,
                    step: Step::Superseded.as_str().into(),
                    expires_at: None,
                    created_at: now,
                    updated_at: now,
                    error: Some(
                        "adopted: carries this token's Desc but was not in the journal".into(),
                    ),
                }])?;
                Ok(())
            }
            Planned::Disable {
                rotation_id,
                token_id,
            } => {
                self.guard_not_current(plan, token_id)?;
                self.disable(mt, inst, token_id, "overlap ended").await?;
                let rec = self.record(journal, rotation_id)?;
                self.set_step(rec, Step::Disabled, None)?;
                Ok(())
            }
            Planned::Delete {
                rotation_id,
                token_id,
            } => {
                self.guard_not_current(plan, token_id)?;
                self.delete(mt, inst, token_id, "delete_after elapsed")
                    .await?;
                let rec = self.record(journal, rotation_id)?;
                self.set_step(rec, Step::Deleted, None)?;
                Ok(())
            }
            Planned::Forget { rotation_id, .. } => {
                let rec = self.record(journal, rotation_id)?;
                self.set_step(rec, Step::Deleted, Some("no longer listed".into()))?;
                Ok(())
            }
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
        mt: &ManagedToken,
        inst: &InstanceConfig,
        action: &str,
        token_id: &str,
        why: &str,
        request: A,
        done_if_gone: bool,
    ) -> Result<(), TokenError> {
        let detail = format!("{}: {why}", mt.name);
        let audit = self.audit_start(&inst.name, action, token_id, &detail)?;
        match self.client.call(&request).await {
            Ok(_) => {
                audit.finish("applied", None);
                Ok(())
            }
            Err(_) if done_if_gone && self.gone(inst, token_id).await => {
                audit.finish("already-done", None);
                Ok(())
            }
            Err(e) => {
                audit.finish(&format!("failed: {}", e.code()), None);
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
        self.mutate(mt, inst, "disable_token", token_id, why, request, false)
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
        self.mutate(mt, inst, "delete_token", token_id, why, request, true)
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
        for mut r in self.journal(name)? {
            if r.rotation_id == rotation_id {
                r.step = Step::Current.as_str().into();
                r.updated_at = now;
                changed.push(r);
            } else if Step::parse(&r.step) == Some(Step::Current) {
                r.step = Step::Superseded.as_str().into();
                r.updated_at = now;
                changed.push(r);
            }
        }
        // One transaction: there is always exactly one current rotation.
        self.state.journal_put(&changed)?;
        Ok(())
    }

    fn new_rotation_id(&self) -> String {
        format!(
            "r{}-{:04x}",
            self.now().format("%Y%m%dT%H%M%SZ"),
            rand::random::<u16>()
        )
    }

    /// create → deliver → verify → mark current. Returns the new token id.
    async fn rotate(
        &self,
        mt: &ManagedToken,
        inst: &InstanceConfig,
        current: Option<&Current>,
        reason: &str,
    ) -> Result<String, TokenError> {
        let token = mt.name.clone();
        // Checked up front: a sink that cannot work fails the rotation before a token exists.
        for sink in &mt.sinks {
            sinks::preflight(sink).map_err(|source| TokenError::Sink {
                token: token.clone(),
                source,
            })?;
        }
        let now = self.now();
        let rotation_id = self.new_rotation_id();
        let mut rec = RotationRecord {
            rotation_id: rotation_id.clone(),
            token_name: mt.name.clone(),
            instance: inst.name.clone(),
            token_id: None,
            previous_token_id: current.map(|c| c.token_id.clone()),
            step: Step::Creating.as_str().into(),
            expires_at: None,
            created_at: now,
            updated_at: now,
            error: None,
        };
        self.state.journal_put(std::slice::from_ref(&rec))?;
        failpoint("after-journal-creating");
        let detail = format!("{}: rotation {rotation_id}: {reason}", mt.name);
        // The token id is known only once created: the record names the rotation until then.
        let audit = self.audit_start(
            &inst.name,
            "create_token",
            &format!("rotation {rotation_id}"),
            &detail,
        )?;
        let created = match self
            .client
            .call(&CreateInstanceToken {
                instance_id: inst.id.clone(),
                lifetime: lifetime(mt.lifetime),
                desc: Some(planner::desc(&mt.name, &rotation_id)),
            })
            .await
        {
            Ok(c) => c,
            Err(e) => {
                audit.finish(&format!("failed: {}", e.code()), None);
                if e.surely_not_applied() {
                    self.set_step(
                        rec,
                        Step::Abandoned,
                        Some(format!("create failed: {}", e.code())),
                    )?;
                } else {
                    // Maybe created: the next cycle finds it by its rotation id and discards it.
                    rec.error = Some(format!("create outcome unknown: {}", e.code()));
                    self.state.journal_put(std::slice::from_ref(&rec))?;
                }
                return Err(TokenError::Api {
                    token,
                    what: "create_token".into(),
                    source: Box::new(e),
                });
            }
        };
        let tz = *self.client.timezone();
        let token_id = created.token_id.clone();
        rec.token_id = Some(token_id.clone());
        rec.expires_at = created.expire_time.map(|t| t.to_utc(&tz));
        audit.finish("applied", Some(&token_id));
        let rec = self.set_step(rec, Step::Created, None)?;
        failpoint("after-create");
        tracing::info!(token = %mt.name, token_id = %token_id, rotation = %rotation_id, "token created");

        let delivery = Delivery {
            registry: inst.registry.as_deref().unwrap_or_default(),
            username: &created.username,
            secret: &created.token,
            token_id: &token_id,
            expires_at: rec.expires_at,
        };
        let result = self
            .deliver_and_verify(mt, inst, rec.clone(), &delivery)
            .await;
        match result {
            Ok(()) => {
                self.mark_current(&mt.name, &rotation_id)?;
                failpoint("after-mark-current");
                if let Some(m) = self.metrics
                    && let Some(e) = rec.expires_at
                {
                    m.set_token_expiry(&inst.name, &token_id, true, true, e);
                }
                tracing::info!(token = %mt.name, token_id = %token_id, "rotation complete: new token current");
                Ok(token_id)
            }
            Err(e) => {
                let why = format!("rotation failed: {e}");
                if let Err(d) = self.discard_token(mt, inst, &token_id, true, &why).await {
                    tracing::error!(token = %mt.name, token_id = %token_id, error = %d, "cannot discard the failed rotation's token; the next cycle retries");
                    return Err(e);
                }
                let latest = self.record(&self.journal(&mt.name)?, &rotation_id)?;
                self.set_step(latest, Step::Abandoned, Some(why))?;
                Err(e)
            }
        }
    }

    async fn deliver_and_verify(
        &self,
        mt: &ManagedToken,
        inst: &InstanceConfig,
        rec: RotationRecord,
        d: &Delivery<'_>,
    ) -> Result<(), TokenError> {
        let token = mt.name.clone();
        let sink_err = |source| TokenError::Sink {
            token: token.clone(),
            source,
        };
        let mut priors = Vec::new();
        for sink in &mt.sinks {
            priors.extend(sinks::snapshot(sink).map_err(sink_err)?);
        }
        let rec = self.set_step(rec, Step::Delivering, None)?;
        failpoint("after-journal-delivering");
        let mut delivered = 0;
        // File sinks first: they can be undone if a later step fails.
        let mut order: Vec<_> = mt.sinks.iter().collect();
        order.sort_by_key(|s| matches!(s, crate::config::Sink::Exec { .. }));
        let mut failure = None;
        for sink in order {
            if let Err(e) = self.with_retries(|| sinks::deliver(sink, d)).await {
                failure = Some(sink_err(e));
                break;
            }
            delivered += 1;
            if delivered == 1 {
                failpoint("after-first-sink");
            }
        }
        if failure.is_none() {
            let rec = self.set_step(rec, Step::Delivered, None)?;
            failpoint("after-deliver");
            if mt.verify {
                let base = self.settings.registry_override.clone().unwrap_or_else(|| {
                    verify::base_url(inst.registry.as_deref().unwrap_or_default())
                });
                let timeout = self.settings.verify_timeout;
                if let Err(e) = self
                    .with_retries(|| verify::login(&base, d.username, d.secret, timeout))
                    .await
                {
                    failure = Some(TokenError::Verify {
                        token: token.clone(),
                        source: e,
                    });
                }
            }
            if failure.is_none() {
                self.set_step(rec, Step::Verified, None)?;
                failpoint("after-verify");
                return Ok(());
            }
        }
        // Put the file sinks back: the old token stays what they hold.
        for p in &priors {
            if let Err(e) = sinks::restore(p) {
                tracing::error!(error = %e, "cannot restore a sink after a failed rotation");
            }
        }
        Err(failure.expect("set on every path here"))
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

    /// `kcr_token_expiry_timestamp_seconds` for every token of every instance.
    pub async fn export_expiry(&self) {
        let Some(m) = self.metrics else { return };
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
                    m.up.with_label_values(&[&inst.name]).set(1);
                    for t in listed {
                        let is_managed = t
                            .desc
                            .as_deref()
                            .and_then(planner::parse_desc)
                            .is_some_and(|(n, _)| managed.contains(&n));
                        if let Some(e) = t.expires_at {
                            rows.push((inst.name.clone(), t.token_id, is_managed, t.enabled, e));
                        }
                    }
                }
                Err(e) => {
                    m.up.with_label_values(&[&inst.name]).set(0);
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
                if Step::parse(&r.step) != Some(Step::Current) {
                    continue;
                }
                if let (Some(id), Some(e)) = (r.token_id, r.expires_at)
                    && !rows.iter().any(|row| row.1 == id)
                {
                    rows.push((r.instance, id, true, true, e));
                }
            }
        }
        m.token_expiry.reset();
        for (inst, id, is_managed, enabled, e) in rows {
            m.set_token_expiry(&inst, &id, is_managed, enabled, e);
        }
    }
}
