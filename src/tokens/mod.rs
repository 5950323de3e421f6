//! Token rotation (DESIGN §6 tokens, Step 4): a pure planner, the journaled
//! rotation engine, the sinks that receive a new secret, the registry login
//! that proves it works, and the scheduled job.
//!
//! The job's house: `config.rs` (`[tokens]`: raw → valid, sinks included),
//! `planner.rs` (pure), `rotate.rs` (the executor: the journaled engine),
//! `sinks.rs`, `verify.rs`, `journal.rs` (the record and its typed step),
//! `helper.rs` (the docker credential helper).
//!
//! Several replicas on one PostgreSQL state (Step 10): the journal is
//! shared, so a new leader continues or recovers the previous leader's
//! rotation as a restarted daemon does (the planner reads only the journal
//! and the listing). The secret is never stored, the database included:
//! only the replica that created a token holds it, for one cycle. Sinks are
//! local, so delivery is per *delivery group* (`[tokens] delivery_group`,
//! default the host name: the consumers a replica's sinks reach). The
//! journal step `delivering` is written together with a
//! [`journal::DeliveryRecord`] `(rotation, group, token id, began_at)`, and
//! `verified` completes it (`delivered_at`). The planner then
//! - rotates at once when this replica's group never received the current
//!   token ([`planner::delivered_to`]): a new leader cannot know the secret
//!   it would have to deliver, so it gets a token of its own; the replica
//!   says so (log, `kcr_housekeeper_token_delivered{token} 0`, the plan's
//!   reason);
//! - never disables a token, past its overlap, while a group that received
//!   it has not received a newer one in full ([`planner::stranded`]), unless
//!   it has expired: "a credential that any consumer may hold is never
//!   retired before its replacement is proven" holds per group;
//! - treats a rotation with no delivery record (journaled before Step 10)
//!   as delivered everywhere, so an upgrade changes nothing by itself.
//!
//! Replicas whose sinks reach the same consumers (a shared volume, an exec
//! hook that writes one secret store) share a group, and then a failover
//! never rotates. Chosen over "sinks only on the leader plus a hook" alone
//! because a per-host file sink is common and its consumers must not be cut
//! off silently; the hook is the shared-group case of the same design.

pub mod config;
pub mod helper;
pub mod journal;
pub mod planner;
pub mod rotate;
pub mod sinks;
pub mod verify;

use crate::config::{Config, Endpoint};
use crate::jobs::{JobContext, JobError, Outcome};
use rotate::{Engine, Settings, TokenOutcome};

/// Settings for this config: with the embedded simulator (`sim:demo`),
/// registry logins go to it rather than to the configured registry host.
pub fn settings_for(config: &Config, client: &crate::kcr::Client) -> Settings {
    Settings {
        registry_override: matches!(config.kcr.endpoint, Endpoint::SimDemo)
            .then(|| client.endpoint().as_str().trim_end_matches('/').to_string()),
        ..Settings::default()
    }
}

/// One line per token for logs and the run summary.
pub fn outcome_summary(outcomes: &[TokenOutcome]) -> String {
    outcomes
        .iter()
        .map(|o| {
            let what = match (&o.error, &o.rotated_to) {
                (Some(e), _) => format!("FAILED: {e}"),
                (None, Some(id)) => format!("rotated to {id}"),
                (None, None) if o.done.is_empty() => "nothing to do".into(),
                (None, None) => o.done.join("; "),
            };
            format!("{}: {what}", o.name)
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// One managed token's delivery as this replica sees it from the shared
/// state (`/jobs`, `kcr_housekeeper_token_delivered` on every replica,
/// followers included): the current token's id and whether this replica's
/// delivery group received it — or why that could not be read.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Delivered {
    pub token: String,
    pub token_id: Option<String>,
    /// `None` (JSON `null`) when the state could not be read: unknown.
    pub delivered: Option<bool>,
    /// Why the state could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// [`Delivered`] for every managed token, read from the journal and the
/// delivery records (no KCR call), and exported to `metrics`. A token whose
/// state cannot be read is listed with its error, `delivered` unknown; its
/// gauge keeps its last value (an unreadable state is
/// `kcr_housekeeper_state_backend_up`'s to say, not a delivery's).
pub fn delivery_status(
    config: &Config,
    state: &crate::state::Store,
    metrics: &crate::metrics::Metrics,
) -> Vec<Delivered> {
    let Some(tc) = &config.tokens else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for mt in &tc.managed {
        let read =
            crate::failpoint::hit("tokens.delivery_status", crate::state::StateError::Injected)
                .and_then(|()| {
                    Ok((
                        state.journal_for(&mt.name)?,
                        state.deliveries_for(&mt.name)?,
                    ))
                });
        let (journal, deliveries) = match read {
            Ok(r) => r,
            Err(e) => {
                out.push(Delivered {
                    token: mt.name.clone(),
                    token_id: None,
                    delivered: None,
                    error: Some(e.to_string()),
                });
                continue;
            }
        };
        let (token_id, delivered) =
            planner::delivery_status(mt, &journal, &deliveries, &tc.delivery_group);
        metrics.tokens.delivered(&mt.name, delivered);
        out.push(Delivered {
            token: mt.name.clone(),
            token_id,
            delivered: Some(delivered),
            error: None,
        });
    }
    out
}

/// What the token job plans: each managed token's steps due now and
/// upcoming (the rotation re-plans each token right before acting, from
/// the journal and a fresh listing).
pub struct TokensPlan {
    pub plans: Vec<planner::TokenPlan>,
    /// Does apply change anything (enforce mode, or a one-shot `apply`)?
    pub enforce: bool,
}

impl TokensPlan {
    /// No step due now.
    pub fn is_empty(&self) -> bool {
        self.plans.iter().all(|p| p.steps.is_empty())
    }

    /// A rotation is due but backs off after failed attempts.
    pub fn backing_off(&self) -> bool {
        self.plans.iter().any(|p| p.backoff_until.is_some())
    }
}

impl<'a> Engine<'a> {
    /// The engine of a job run: the run's client, config, state, metrics,
    /// cancellation and clock.
    pub fn for_job(ctx: &'a JobContext) -> Engine<'a> {
        Engine {
            client: &ctx.client,
            config: &ctx.config,
            state: &ctx.state,
            metrics: &ctx.metrics,
            run_id: ctx.run_id,
            cancel: &ctx.cancel,
            clock: &*ctx.clock,
            settings: settings_for(&ctx.config, &ctx.client),
        }
    }
}

fn tokens_config(ctx: &JobContext) -> Result<&crate::config::TokensConfig, JobError> {
    ctx.config
        .tokens
        .as_ref()
        .ok_or_else(|| JobError::Config("no [tokens] section in the configuration".into()))
}

/// The token job: plan every managed token; apply rotates, adopts,
/// disables and deletes as due (journaled), or in dry-run says what it would.
pub struct TokensJob;

impl crate::jobs::Steps for TokensJob {
    const NAME: &'static str = "tokens";
    type Plan = TokensPlan;

    async fn plan(&self, ctx: &JobContext) -> Result<TokensPlan, JobError> {
        let tc = tokens_config(ctx)?;
        let plans = Engine::for_job(ctx).plan().await?;
        Ok(TokensPlan {
            plans,
            enforce: ctx.enforcing(tc.mode),
        })
    }

    async fn apply(&self, ctx: &JobContext, plan: TokensPlan) -> Result<Outcome, JobError> {
        tokens_config(ctx)?;
        let engine = Engine::for_job(ctx);
        if !plan.enforce {
            engine.export_expiry().await;
            engine.export_registry_reachable().await;
            let text = plan
                .plans
                .iter()
                .map(|p| {
                    let steps: Vec<String> = p.steps.iter().map(|s| s.describe()).collect();
                    format!(
                        "{}: {}",
                        p.name,
                        if steps.is_empty() {
                            "nothing to do".into()
                        } else {
                            steps.join("; ")
                        }
                    )
                })
                .collect::<Vec<_>>()
                .join(" | ");
            return Ok(Outcome::Success(format!("dry-run: {text}")));
        }
        let outcomes = engine.run().await?;
        let text = outcome_summary(&outcomes);
        if let Some(failed) = outcomes.iter().find(|o| o.error.is_some()) {
            return Err(JobError::Actions {
                summary: text,
                code: failed.code.unwrap_or("actions"),
            });
        }
        Ok(Outcome::Success(text))
    }
}
