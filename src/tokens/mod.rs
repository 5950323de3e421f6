//! Token rotation (DESIGN §6 tokens, Step 4): a pure planner, the journaled
//! rotation engine, the sinks that receive a new secret, the registry login
//! that proves it works, and the scheduled job.
//!
//! The job's house: `config.rs` (`[tokens]`: raw → valid, sinks included),
//! `planner.rs` (pure), `rotate.rs` (the executor: the journaled engine),
//! `sinks.rs`, `verify.rs`, `journal.rs` (the record and its typed step),
//! `helper.rs` (the docker credential helper).

pub mod config;
pub mod helper;
pub mod journal;
pub mod planner;
pub mod rotate;
pub mod sinks;
pub mod verify;

use crate::config::{Config, Endpoint, Mode};
use crate::jobs::{Job, JobContext, JobError, Outcome};
use futures::future::BoxFuture;
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

fn system_clock() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

pub struct TokensJob;

impl TokensJob {
    async fn run_inner(&self, ctx: &JobContext) -> Result<Outcome, JobError> {
        let Some(tc) = &ctx.config.tokens else {
            return Err(JobError::Config(
                "no [tokens] section in the configuration".into(),
            ));
        };
        let engine = Engine {
            client: &ctx.client,
            config: &ctx.config,
            state: &ctx.state,
            metrics: Some(&ctx.metrics),
            run_id: ctx.run_id,
            cancel: Some(&ctx.cancel),
            clock: &system_clock,
            settings: settings_for(&ctx.config, &ctx.client),
        };
        if tc.mode == Mode::DryRun {
            let plans = engine.plan().await?;
            engine.export_expiry().await;
            engine.export_registry_reachable().await;
            let text = plans
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

impl Job for TokensJob {
    fn name(&self) -> &'static str {
        "tokens"
    }

    fn run<'a>(&'a self, ctx: &'a JobContext) -> BoxFuture<'a, Result<Outcome, JobError>> {
        Box::pin(self.run_inner(ctx))
    }
}
