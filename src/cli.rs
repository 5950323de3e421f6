//! Command-line interface (clap) and the commands themselves. `main.rs` only
//! parses, calls [`run`], and turns the outcome into an exit code.

use crate::config::{self, Config, ConfigErrors, Endpoint, LogFormat, ProcessEnv};
use crate::daemon::{self, DaemonError};
use crate::kcr::Credentials;
use crate::sim::{FaultKind, Faults, GenerateSpec, Scenario, SimOptions, Simulator, WorldSource};
use crate::{app, duration, quota, retention};
use chrono::Utc;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "kcr-housekeeper",
    version,
    about = "Keeps a Kingsoft Cloud Container Registry tidy and safe"
)]
pub struct Cli {
    /// Config file [default: $KCR_HOUSEKEEPER_CONFIG, else /etc/kcr-housekeeper/config.toml]
    #[arg(long, short, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: scheduled jobs, metrics and the admin HTTP server
    Run,
    /// Run the daemon on the built-in simulator with the demo config (no account needed)
    Demo(DemoArgs),
    /// Validate the config; print the jobs and their next three fire times
    Check,
    /// Show what a job would do, without changing anything
    Plan(PlanArgs),
    /// Apply a job once, now (asks for confirmation on a terminal unless --yes)
    Apply(ApplyArgs),
    /// Why each image and tag of NAMESPACE/REPOSITORY is kept or deleted
    Explain(ExplainArgs),
    /// List audit records (every mutation the jobs applied)
    Audit(AuditArgs),
    /// Show quota usage per instance: namespaces and repositories used / limit
    Quota(QuotaArgs),
    /// Run the KCR simulator (for tests, demos and benchmarks)
    Sim(Box<SimArgs>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

/// Jobs that can be planned and applied on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlannableJob {
    Retention,
    Tokens,
    Namespaces,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Table,
    Json,
    Markdown,
    Html,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    pub job: PlannableJob,
    #[arg(long, value_enum, default_value = "table")]
    pub format: ReportFormat,
    /// Write the report here instead of standard output (a JSON plan can be applied with apply --plan)
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    pub job: PlannableJob,
    /// Do not ask for confirmation
    #[arg(long)]
    pub yes: bool,
    /// Execute exactly this reviewed JSON plan (after re-verifying each action)
    #[arg(long, value_name = "FILE")]
    pub plan: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// NAMESPACE/REPOSITORY
    pub target: String,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Address of the admin server
    #[arg(long, default_value = "127.0.0.1:9187")]
    pub listen: SocketAddr,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only records at or after this: an RFC 3339 time or a duration ago (e.g. 7d)
    #[arg(long)]
    pub since: Option<String>,
    /// Only records of this job (retention, tokens, namespaces)
    #[arg(long)]
    pub job: Option<String>,
    /// Only the newest N records
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: OutputFormat,
}

#[derive(Debug, Args)]
pub struct QuotaArgs {
    #[arg(long, value_enum, default_value = "table")]
    pub format: OutputFormat,
}

#[derive(Debug, Args)]
pub struct SimArgs {
    /// Address to listen on (port 0 picks a free one)
    #[arg(long, default_value = "127.0.0.1:9188")]
    pub listen: SocketAddr,
    /// Scenario JSON file (DESIGN §10 format) [default: the built-in demo]
    #[arg(long, value_name = "FILE", conflicts_with = "generate")]
    pub scenario: Option<PathBuf>,
    /// Generate a scenario, e.g. namespaces=20,repos=20,images=60,seed=7
    #[arg(long, value_name = "SPEC")]
    pub generate: Option<String>,
    /// Print the scenario as JSON and exit instead of serving it
    #[arg(long)]
    pub print_scenario: bool,
    #[arg(
        long,
        env = "KSYUN_ACCESS_KEY_ID",
        requires = "secret_access_key",
        hide_env_values = true
    )]
    pub access_key_id: Option<String>,
    #[arg(
        long,
        env = "KSYUN_SECRET_ACCESS_KEY",
        requires = "access_key_id",
        hide_env_values = true
    )]
    pub secret_access_key: Option<String>,
    #[arg(long, default_value = "cn-beijing-6")]
    pub region: String,
    /// Latency added to every API answer, e.g. 20ms
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub latency: Duration,
    /// Requests per second served; the excess gets 409 LimitExceeded
    #[arg(long)]
    pub rate_limit: Option<u32>,
    /// Share (0-1) of API requests answered with an injected fault
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub fault_rate: f64,
    /// Faults to draw from (comma-separated): 5xx, 409, timeout, reset, truncated, ill-typed, total-count
    #[arg(long, value_delimiter = ',', default_value = "5xx,409")]
    pub fault_kinds: Vec<FaultKind>,
    /// How long a `timeout` fault holds its answer
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub stall: Duration,
    /// Image listings drift between pages (a push and a delete while paging)
    #[arg(long)]
    pub page_drift: bool,
    /// Seed for faults and generated ids (replayable runs)
    #[arg(long)]
    pub seed: Option<u64>,
    /// Append one JSON line per request to this file
    #[arg(long, value_name = "FILE")]
    pub request_log: Option<PathBuf>,
    /// Further access keys scoped by IAM policies: JSON
    /// {"<AccessKeyId>": {"secret", "user", "statements": [{"effect", "actions", "resources"}]}}
    #[arg(long, value_name = "FILE")]
    pub policies: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    duration::parse(s).map_err(|e| e.to_string())
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a number from 0 to 1")),
    }
}

/// How a command ended, and so the exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Exit 2: bad usage or config.
    #[error("{0}")]
    Config(ConfigErrors),
    /// Exit 2.
    #[error("{0}")]
    Usage(String),
    /// Exit 1: the work failed.
    #[error("{0:#}")]
    Failed(anyhow::Error),
    /// Exit 3: a safety limit blocked the whole run.
    #[error("{0}")]
    Blocked(String),
    /// Exit 130: stopped by Ctrl-C (SIGINT) between two actions.
    #[error("{0}")]
    Interrupted(String),
    /// Exit 143: stopped by SIGTERM (as by Ctrl-C, with SIGTERM's code).
    #[error("{0}")]
    Terminated(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Failed(_) => 1,
            CliError::Config(_) | CliError::Usage(_) => 2,
            CliError::Blocked(_) => 3,
            CliError::Interrupted(_) => 130,
            CliError::Terminated(_) => 143,
        }
    }
}

fn load_config(flag: Option<&Path>) -> Result<Config, CliError> {
    let path = config::resolve_path(flag, &ProcessEnv);
    config::load(&path, &ProcessEnv).map_err(CliError::Config)
}

/// Set up logging once; `KCR_HOUSEKEEPER_LOG` overrides the level.
pub fn init_logging(format: LogFormat, level: &str) {
    let mut level = std::env::var("KCR_HOUSEKEEPER_LOG").unwrap_or_else(|_| level.to_owned());
    // The scheduler crate narrates its own start-up at info; keep it quiet unless asked for.
    if !level.contains("tokio_cron_scheduler") {
        level.push_str(",tokio_cron_scheduler=warn");
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&level).unwrap_or_else(|_| "info".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

/// The demo: the built-in config (config/demo.toml) on the embedded simulator,
/// with state in a fresh temporary directory.
pub fn demo_config(listen: SocketAddr, state_dir: &Path) -> Result<Config, CliError> {
    let mut c = config::parse(
        include_str!("../config/demo.toml"),
        "config/demo.toml (built in)",
        Path::new("."),
        &ProcessEnv,
    )
    .map_err(CliError::Config)?;
    c.server.listen = listen;
    c.state.path = state_dir.join("state.db");
    // Token sinks go beside the demo's state, not into /tmp/kcr-housekeeper-demo.
    for mt in c.tokens.iter_mut().flat_map(|t| t.managed.iter_mut()) {
        for sink in &mut mt.sinks {
            if let config::Sink::DockerConfig { path } | config::Sink::File { path, .. } = sink
                && let Some(name) = path.file_name()
            {
                *path = state_dir.join(name);
            }
        }
    }
    Ok(c)
}

fn daemon_error(e: DaemonError) -> CliError {
    match e {
        DaemonError::Setup(m) => CliError::Usage(m),
        DaemonError::Runtime(m) => CliError::Failed(anyhow::anyhow!(m)),
    }
}

pub async fn run(cli: Cli, out: &mut dyn Write) -> Result<(), CliError> {
    match cli.command {
        Command::Run => {
            let path = config::resolve_path(cli.config.as_deref(), &ProcessEnv);
            let c = config::load(&path, &ProcessEnv).map_err(CliError::Config)?;
            init_logging(c.log.format, &c.log.level);
            daemon::run(c, Some(path), |_| {})
                .await
                .map_err(daemon_error)
        }
        Command::Demo(args) => {
            let dir = tempfile::Builder::new()
                .prefix("kcr-housekeeper-demo-")
                .tempdir()
                .map_err(|e| {
                    CliError::Failed(anyhow::Error::new(e).context("creating the demo directory"))
                })?;
            let c = demo_config(args.listen, dir.path())?;
            init_logging(c.log.format, &c.log.level);
            let state_dir = dir.path().display().to_string();
            daemon::run(c, None, |s| {
                let base = format!("http://{}", s.listen);
                // Printed once serving has started, so the URLs work when read.
                let _ = write!(
                    out,
                    "kcr-housekeeper demo: the built-in simulator with config/demo.toml\n\
                     retention and namespaces run dry; the ci-pull token rotates inside the simulator\n\
                     and its new secret is written under the state directory\n\
                     metrics: {base}/metrics\n\
                     jobs:    {base}/jobs\n\
                     report:  {base}/reports/retention/latest\n\
                     state:   {state_dir}\n\
                     press Ctrl-C to stop\n"
                );
                let _ = out.flush();
            })
            .await
            .map_err(daemon_error)
        }
        Command::Audit(args) => audit(&load_config(cli.config.as_deref())?, &args, out),
        Command::Check => check(&load_config(cli.config.as_deref())?, out),
        Command::Plan(args) => plan_cmd(&load_config(cli.config.as_deref())?, &args, out).await,
        Command::Apply(args) => apply_cmd(&load_config(cli.config.as_deref())?, &args, out).await,
        Command::Explain(args) => {
            explain_cmd(&load_config(cli.config.as_deref())?, &args, out).await
        }
        Command::Quota(args) => quota_cmd(&load_config(cli.config.as_deref())?, &args, out).await,
        Command::Sim(args) => sim(*args, out).await,
    }
}

fn io(e: std::io::Error) -> CliError {
    CliError::Failed(anyhow::Error::new(e).context("writing output"))
}

fn check(c: &Config, out: &mut dyn Write) -> Result<(), CliError> {
    let endpoint = match &c.kcr.endpoint {
        Endpoint::Url(u) => u.clone(),
        Endpoint::SimDemo => "sim:demo (built-in simulator)".into(),
    };
    let mut s = format!(
        "{}: OK\nendpoint: {endpoint} (region {})\n",
        c.source, c.kcr.region
    );
    if let Some(creds) = &c.kcr.credentials {
        s.push_str(&format!(
            "access key: {}\n",
            crate::kcr::client::redact_key_id(&creds.access_key_id)
        ));
    }
    s.push_str("instances:\n");
    for i in &c.instances {
        s.push_str(&format!(
            "  {} ({}), registry {}\n",
            i.name,
            i.id,
            i.registry.as_deref().unwrap_or("(none)")
        ));
    }
    let tz = c.scheduler.timezone;
    let jobs = c.jobs();
    if jobs.is_empty() {
        s.push_str("jobs: none enabled\n");
    } else {
        s.push_str(&format!("jobs (cron read in {tz}):\n"));
        let now = Utc::now();
        for j in jobs {
            let next: Vec<String> = j
                .schedule
                .next_times(now, &tz, 3)
                .iter()
                .map(|t| t.format("%Y-%m-%d %H:%M:%S %Z").to_string())
                .collect();
            let mode = j.mode.map_or("-", |m| m.as_str());
            s.push_str(&format!(
                "  {:<11} {:<8} {:<16} next: {}\n",
                j.job,
                mode,
                format!("\"{}\"", j.schedule),
                next.join(", ")
            ));
        }
    }
    for w in rule_warnings(c) {
        s.push_str(&format!("warning: {w}\n"));
    }
    for w in c.warnings(Utc::now()) {
        s.push_str(&format!("warning: {w}\n"));
    }
    out.write_all(s.as_bytes()).map_err(io)
}

/// Retention rules that can match nothing whatever the registry holds. (Rules
/// that match nothing in the current registry are reported by `plan`.)
pub fn rule_warnings(c: &Config) -> Vec<String> {
    let Some(rc) = &c.retention else {
        return Vec::new();
    };
    let impossible_ns = |p: &crate::pattern::Pattern| {
        !p.is_regex()
            && !p
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"*?[]!-^".contains(&b))
    };
    let mut out = Vec::new();
    for r in &rc.rules {
        if !r.namespaces.is_empty() && r.namespaces.iter().all(impossible_ns) {
            out.push(format!(
                "retention rule {:?} matches nothing: namespace names are lowercase letters and digits, and no pattern in {:?} can match one",
                r.name,
                r.namespaces.iter().map(|p| p.as_str()).collect::<Vec<_>>()
            ));
        }
        if !r.repositories.is_empty()
            && r.repositories.iter().all(|p| {
                r.exclude_repositories
                    .iter()
                    .any(|e| e.as_str() == p.as_str() || e.as_str() == "**")
            })
        {
            out.push(format!("retention rule {:?} matches nothing: exclude_repositories excludes every repository it names", r.name));
        }
    }
    out
}

/// A progress bar on a terminal (standard error); nothing otherwise.
struct Bar(Option<indicatif::ProgressBar>);

impl Bar {
    fn new(what: &str, unit: &str, len: u64) -> Bar {
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            return Bar(None);
        }
        let pb = indicatif::ProgressBar::new(len);
        let template = format!("{{msg}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{elapsed}})");
        if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
            pb.set_style(style.progress_chars("=> "));
        }
        pb.set_message(what.to_owned());
        Bar(Some(pb))
    }
    fn inc(&self) {
        if let Some(pb) = &self.0 {
            pb.inc(1);
        }
    }
    fn finish(&self) {
        if let Some(pb) = &self.0 {
            pb.finish_and_clear();
        }
    }
}

impl crate::inventory::Progress for Bar {
    fn found(&self, n: u64) {
        if let Some(pb) = &self.0 {
            pb.inc_length(n);
        }
    }
    fn listed(&self) {
        self.inc();
    }
}

async fn collect_inventory(
    client: &crate::kcr::Client,
    c: &Config,
    now: chrono::DateTime<Utc>,
) -> crate::inventory::Inventory {
    let bar = Bar::new("listing", "repositories", 0);
    let inv = crate::inventory::Inventory::collect_with(client, &c.instances, now, &bar).await;
    bar.finish();
    for i in inv.instances.iter().filter(|i| i.error.is_some()) {
        eprintln!(
            "warning: instance {}: {}",
            i.name,
            i.error.as_deref().unwrap_or_default()
        );
    }
    inv
}

fn retention_config(c: &Config) -> Result<&crate::config::RetentionConfig, CliError> {
    c.retention.as_ref().ok_or_else(|| {
        CliError::Usage(format!(
            "{}: no [retention] section: the retention job is off",
            c.source
        ))
    })
}

fn failed(e: impl Into<anyhow::Error>, what: &str) -> CliError {
    CliError::Failed(e.into().context(what.to_owned()))
}

async fn plan_cmd(c: &Config, args: &PlanArgs, out: &mut dyn Write) -> Result<(), CliError> {
    if args.job == PlannableJob::Tokens {
        return plan_tokens_cmd(c, args, out).await;
    }
    if args.job == PlannableJob::Namespaces {
        return plan_namespaces_cmd(c, args, out).await;
    }
    let rc = retention_config(c)?;
    let conn = app::connect(c).await.map_err(|e| failed(e, "connecting"))?;
    let now = Utc::now();
    let inventory = collect_inventory(&conn.client, c, now).await;
    let plan = retention::plan(&inventory, rc, now);
    for r in &plan.idle_rules {
        eprintln!("warning: rule {r:?} matches nothing in this registry");
    }
    let mut report = retention::report::Report::from_plan(
        &plan,
        rc.mode.as_str(),
        retention::report_instances(c),
    );
    report.config_fingerprint = Some(retention::config_fingerprint(rc));
    let text = match args.format {
        ReportFormat::Table => retention::report::render_table(&report),
        ReportFormat::Json => report.to_json(),
        ReportFormat::Markdown => retention::report::render_markdown(&report),
        ReportFormat::Html => retention::report::render_html(&report),
    };
    emit(args.output.as_deref(), &text, out)?;
    partial_result(&plan)
}

/// Exit 1 when anything could not be listed completely (DESIGN §4: never 0
/// when something was skipped); the report has already been written.
fn partial_result(plan: &retention::Plan) -> Result<(), CliError> {
    match plan.partial_reason() {
        Some(why) => Err(CliError::Failed(anyhow::anyhow!("retention: {why}"))),
        None => Ok(()),
    }
}

fn namespaces_config(c: &Config) -> Result<&crate::config::NamespacesConfig, CliError> {
    c.namespaces.as_ref().ok_or_else(|| {
        CliError::Usage(format!(
            "{}: no [namespaces] section: nothing to plan",
            c.source
        ))
    })
}

async fn namespace_plan(
    c: &Config,
    conn: &app::Connection,
) -> Result<crate::namespaces::NamespacePlan, CliError> {
    let nc = namespaces_config(c)?;
    let listed = crate::namespaces::list(&conn.client, c)
        .await
        .map_err(|e| failed(e, "listing namespaces"))?;
    Ok(crate::namespaces::plan(nc, &listed))
}

async fn plan_namespaces_cmd(
    c: &Config,
    args: &PlanArgs,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    namespaces_config(c)?;
    let conn = app::connect(c).await.map_err(|e| failed(e, "connecting"))?;
    let plan = namespace_plan(c, &conn).await?;
    let text = match args.format {
        ReportFormat::Json => {
            serde_json::to_string_pretty(&serde_json::json!({
                "schema": "kcr-housekeeper/namespace-plan/v1",
                "summary": crate::namespaces::summary(&plan),
                "blocked": plan.blocked,
                "namespaces": plan.decisions,
            }))
            .expect("serialises")
                + "\n"
        }
        ReportFormat::Table => {
            crate::namespaces::render_table(&plan) + &crate::namespaces::summary(&plan) + "\n"
        }
        f => {
            return Err(CliError::Usage(format!(
                "plan namespaces: format {f:?} is not available (table or json)"
            )));
        }
    };
    emit(args.output.as_deref(), &text, out)
}

async fn apply_namespaces_cmd(
    c: &Config,
    args: &ApplyArgs,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    use crate::namespaces::Applied;
    namespaces_config(c)?;
    if let Some(p) = &args.plan {
        return Err(CliError::Usage(format!(
            "{}: apply namespaces takes no --plan; it re-reads every namespace before changing it",
            p.display()
        )));
    }
    let conn = app::connect(c).await.map_err(|e| failed(e, "connecting"))?;
    let state =
        crate::state::Store::open(&c.state.path).map_err(|e| CliError::Usage(e.to_string()))?;
    let plan = namespace_plan(c, &conn).await?;
    out.write_all(crate::namespaces::render_table(&plan).as_bytes())
        .map_err(io)?;
    if let Some(b) = &plan.blocked {
        return Err(CliError::Blocked(b.clone()));
    }
    let n = plan.changes().count();
    if n == 0 {
        writeln!(out, "nothing to do").map_err(io)?;
        return Ok(());
    }
    if !confirmed(args.yes, &format!("change {n} namespaces?"), out)? {
        return Ok(());
    }
    let env = crate::namespaces::ExecEnv {
        client: &conn.client,
        config: c,
        state: &state,
        metrics: None,
        cancel: None,
        run_id: None,
    };
    let applied = crate::namespaces::execute(&env, &plan).await;
    let mut failures = 0;
    for (d, r) in &applied {
        let what = match r {
            Applied::Applied => "changed".to_string(),
            Applied::AlreadyDone => "already as desired".to_string(),
            Applied::Stale(why) => format!("skipped: {why}"),
            Applied::Failed(why) => {
                failures += 1;
                format!("FAILED: {why}")
            }
        };
        writeln!(
            out,
            "{}/{} → {}: {what}",
            d.instance, d.namespace, d.desired
        )
        .map_err(io)?;
    }
    if failures > 0 {
        return Err(CliError::Failed(anyhow::anyhow!(
            "{failures} namespace changes failed"
        )));
    }
    Ok(())
}

fn tokens_config(c: &Config) -> Result<&crate::config::TokensConfig, CliError> {
    c.tokens.as_ref().ok_or_else(|| {
        CliError::Usage(format!(
            "{}: no [tokens] section: nothing to plan",
            c.source
        ))
    })
}

fn token_plans_text(plans: &[crate::tokens::planner::TokenPlan]) -> String {
    let mut text = String::new();
    for p in plans {
        text.push_str(&format!("{} (instance {}):\n", p.name, p.instance));
        match &p.current {
            Some(cur) => text.push_str(&format!(
                "  current: token {} (rotation {}), expires {}\n",
                cur.token_id,
                cur.rotation_id,
                cur.expires_at
                    .map_or("never".to_string(), |e| e.to_rfc3339())
            )),
            None => text.push_str("  current: none usable\n"),
        }
        if p.steps.is_empty() {
            text.push_str("  now: nothing to do\n");
        }
        for step in &p.steps {
            text.push_str(&format!("  now: {}\n", step.describe()));
        }
        for u in &p.upcoming {
            text.push_str(&format!("  at {}: {}\n", u.at.to_rfc3339(), u.what));
        }
        if let Some(at) = p.backoff_until {
            text.push_str(&format!(
                "  backing off after failed rotations: next attempt at {}\n",
                at.to_rfc3339()
            ));
        }
        for f in &p.foreign {
            text.push_str(&format!(
                "  foreign: token {} is left alone: {}\n",
                f.token_id, f.why
            ));
        }
        for n in &p.notes {
            text.push_str(&format!("  note: {n}\n"));
        }
    }
    text
}

fn token_plans_json(plans: &[crate::tokens::planner::TokenPlan]) -> String {
    let doc: Vec<serde_json::Value> = plans
        .iter()
        .map(|p| {
            serde_json::json!({
                "token": p.name,
                "instance": p.instance,
                "current": p.current.as_ref().map(|c| serde_json::json!({
                    "token_id": c.token_id,
                    "rotation_id": c.rotation_id,
                    "expires_at": c.expires_at.map(|e| e.to_rfc3339()),
                })),
                "now": p.steps.iter().map(|s| s.describe()).collect::<Vec<_>>(),
                "upcoming": p.upcoming.iter().map(|u| serde_json::json!({
                    "at": u.at.to_rfc3339(), "what": u.what,
                })).collect::<Vec<_>>(),
                "next_attempt_at": p.backoff_until.map(|at| at.to_rfc3339()),
                "foreign": p.foreign.iter().map(|f| serde_json::json!({
                    "token_id": f.token_id, "why": f.why,
                })).collect::<Vec<_>>(),
                "notes": p.notes,
            })
        })
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({
        "schema": "kcr-housekeeper/token-plan/v1",
        "tokens": doc,
    }))
    .expect("serialises")
        + "\n"
}

fn token_engine<'a>(
    c: &'a Config,
    conn: &'a app::Connection,
    state: &'a crate::state::Store,
) -> crate::tokens::rotate::Engine<'a> {
    crate::tokens::rotate::Engine {
        client: &conn.client,
        config: c,
        state,
        metrics: None,
        run_id: None,
        cancel: None,
        clock: &|| Utc::now(),
        settings: crate::tokens::settings_for(c, &conn.client),
    }
}

async fn plan_tokens_cmd(c: &Config, args: &PlanArgs, out: &mut dyn Write) -> Result<(), CliError> {
    tokens_config(c)?;
    let conn = app::connect(c).await.map_err(|e| failed(e, "connecting"))?;
    let state =
        crate::state::Store::open(&c.state.path).map_err(|e| CliError::Usage(e.to_string()))?;
    let plans = token_engine(c, &conn, &state)
        .plan()
        .await
        .map_err(|e| failed(e, "planning tokens"))?;
    let text = match args.format {
        ReportFormat::Json => token_plans_json(&plans),
        ReportFormat::Table => token_plans_text(&plans),
        f => {
            return Err(CliError::Usage(format!(
                "plan tokens: format {f:?} is not available (table or json)"
            )));
        }
    };
    emit(args.output.as_deref(), &text, out)
}

async fn apply_tokens_cmd(
    c: &Config,
    args: &ApplyArgs,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    tokens_config(c)?;
    if let Some(p) = &args.plan {
        return Err(CliError::Usage(format!(
            "{}: apply tokens takes no --plan: a rotation is planned and applied in one step",
            p.display()
        )));
    }
    let conn = app::connect(c).await.map_err(|e| failed(e, "connecting"))?;
    let state =
        crate::state::Store::open(&c.state.path).map_err(|e| CliError::Usage(e.to_string()))?;
    let engine = token_engine(c, &conn, &state);
    let plans = engine
        .plan()
        .await
        .map_err(|e| failed(e, "planning tokens"))?;
    out.write_all(token_plans_text(&plans).as_bytes())
        .map_err(io)?;
    if plans.iter().all(|p| p.steps.is_empty()) {
        writeln!(out, "nothing to do").map_err(io)?;
        if plans.iter().any(|p| p.backoff_until.is_some()) {
            return Err(CliError::Failed(anyhow::anyhow!(
                "a rotation is due but backs off after failed attempts (see above)"
            )));
        }
        return Ok(());
    }
    if !confirmed(args.yes, "apply these token steps?", out)? {
        return Ok(());
    }
    let outcomes = engine
        .run()
        .await
        .map_err(|e| failed(e, "rotating tokens"))?;
    writeln!(out, "tokens: {}", crate::tokens::outcome_summary(&outcomes)).map_err(io)?;
    if outcomes.iter().any(|o| o.error.is_some()) {
        return Err(CliError::Failed(anyhow::anyhow!("a token step failed")));
    }
    Ok(())
}

/// Write a report to `--output FILE`, or to standard output.
fn emit(output: Option<&Path>, text: &str, out: &mut dyn Write) -> Result<(), CliError> {
    match output {
        Some(path) => std::fs::write(path, text)
            .map_err(|e| CliError::Usage(format!("{}: cannot write: {e}", path.display()))),
        None => out.write_all(text.as_bytes()).map_err(io),
    }
}

/// `--yes`, or a "y" on the terminal; off a terminal without `--yes` is a usage error.
fn confirmed(yes: bool, prompt: &str, out: &mut dyn Write) -> Result<bool, CliError> {
    if yes {
        return Ok(true);
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return Err(CliError::Usage(
            "not a terminal: pass --yes to apply without confirmation".into(),
        ));
    }
    if confirm(prompt, out)? {
        return Ok(true);
    }
    writeln!(out, "nothing applied").map_err(io)?;
    Ok(false)
}

fn confirm(prompt: &str, out: &mut dyn Write) -> Result<bool, CliError> {
    write!(out, "{prompt} [y/N] ").map_err(io)?;
    out.flush().map_err(io)?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer).map_err(io)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES"))
}

async fn apply_cmd(c: &Config, args: &ApplyArgs, out: &mut dyn Write) -> Result<(), CliError> {
    if args.job == PlannableJob::Tokens {
        return apply_tokens_cmd(c, args, out).await;
    }
    if args.job == PlannableJob::Namespaces {
        return apply_namespaces_cmd(c, args, out).await;
    }
    apply_retention_cmd(c, args, out).await
}

/// Read and check a reviewed plan file: readable, a retention plan, bound to
/// this configuration's instances, not older than `max_plan_age`.
fn read_plan_file(
    c: &Config,
    rc: &crate::config::RetentionConfig,
    path: &Path,
    now: chrono::DateTime<Utc>,
) -> Result<retention::report::Report, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("{}: cannot read plan: {e}", path.display())))?;
    let report = retention::report::Report::from_json(&text)
        .map_err(|e| CliError::Usage(format!("{}: not a retention plan: {e}", path.display())))?;
    if report.instances.is_empty() {
        return Err(CliError::Usage(format!(
            "{}: the plan has no `instances` binding (name → id); make a new one with plan retention --format json",
            path.display()
        )));
    }
    for inst in &report.instances {
        match c.instance_by_name(&inst.name) {
            Some(mine) if mine.id == inst.id => {}
            _ => {
                return Err(CliError::Usage(format!(
                    "{}: the plan is for instance {} ({}), which this configuration does not have",
                    path.display(),
                    inst.name,
                    inst.id
                )));
            }
        }
    }
    if let Some((r, _)) = report
        .actions()
        .find(|(r, _)| !report.instances.iter().any(|i| i.name == r.instance))
    {
        return Err(CliError::Usage(format!(
            "{}: the plan names instance {:?}, which its `instances` binding does not",
            path.display(),
            r.instance
        )));
    }
    let age = now.signed_duration_since(report.generated_at);
    let max = chrono::Duration::from_std(rc.max_plan_age).unwrap_or(chrono::Duration::MAX);
    if age > max {
        return Err(CliError::Usage(format!(
            "{}: the plan was made at {}, {} ago, longer than [retention] max_plan_age ({}): make a new plan",
            path.display(),
            report
                .generated_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            duration::format(age.to_std().unwrap_or_default()),
            duration::format(rc.max_plan_age)
        )));
    }
    // A little clock skew is fine; a plan from the future never ages out.
    if age < -chrono::Duration::minutes(5) {
        return Err(CliError::Usage(format!(
            "{}: the plan claims to be made at {}, in the future",
            path.display(),
            report
                .generated_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )));
    }
    Ok(report)
}

/// SIGINT or SIGTERM during an apply: the first stops at the next action
/// boundary (`soft`), a second abandons the current action (`hard`); the
/// caller closes the run and its audit records either way. `code()` is the
/// exit code of the first signal: 130 (SIGINT) or 143 (SIGTERM).
struct StopSignals {
    hard: tokio_util::sync::CancellationToken,
    code: std::sync::Arc<std::sync::atomic::AtomicU8>,
    task: tokio::task::JoinHandle<()>,
}

impl StopSignals {
    fn install(soft: &tokio_util::sync::CancellationToken) -> Result<StopSignals, CliError> {
        use std::sync::atomic::{AtomicU8, Ordering};
        let (soft, hard) = (soft.clone(), tokio_util::sync::CancellationToken::new());
        let code = std::sync::Arc::new(AtomicU8::new(130));
        #[cfg(unix)]
        let (mut int, mut term) = {
            use tokio::signal::unix::{SignalKind, signal};
            let install = |k| signal(k).map_err(|e| failed(e, "installing signal handlers"));
            (
                install(SignalKind::interrupt())?,
                install(SignalKind::terminate())?,
            )
        };
        let task = {
            let (hard, code) = (hard.clone(), code.clone());
            tokio::spawn(async move {
                #[cfg(unix)]
                let mut next = async || {
                    tokio::select! {
                        _ = int.recv() => 130u8,
                        _ = term.recv() => 143u8,
                    }
                };
                #[cfg(not(unix))]
                let next = async || {
                    let _ = tokio::signal::ctrl_c().await;
                    130u8
                };
                code.store(next().await, Ordering::SeqCst);
                eprintln!(
                    "stopping after the current action (Ctrl-C or SIGTERM again to stop now)"
                );
                soft.cancel();
                next().await;
                eprintln!("stopping now: the current action's outcome is unknown");
                hard.cancel();
            })
        };
        Ok(StopSignals { hard, code, task })
    }

    fn code(&self) -> u8 {
        self.code.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn error(&self, text: String) -> CliError {
        match self.code() {
            143 => CliError::Terminated(text),
            _ => CliError::Interrupted(text),
        }
    }
}

impl Drop for StopSignals {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `apply retention [--plan FILE]`: a fresh plan (current config, fresh
/// inventory, now), or its intersection with a reviewed plan file; then
/// caps, grace and execution.
async fn apply_retention_cmd(
    c: &Config,
    args: &ApplyArgs,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    use crate::failpoint;
    use retention::executor::{self, ExecEnv, Outcome};
    let rc = retention_config(c)?;
    let now = Utc::now();
    let file = match &args.plan {
        Some(path) => Some((path, read_plan_file(c, rc, path, now)?)),
        None => None,
    };
    let conn = app::connect(c).await.map_err(|e| failed(e, "connecting"))?;
    let state = failpoint::hit("retention.state.open", crate::state::StateError::Injected)
        .and_then(|()| crate::state::Store::open(&c.state.path))
        .map_err(|e| CliError::Usage(e.to_string()))?;
    failpoint::hit("retention.api.list", |m| {
        failed(anyhow::anyhow!(m), "listing")
    })?;
    let inventory = collect_inventory(&conn.client, c, now).await;
    let fresh = retention::plan(&inventory, rc, now);
    // Partial: an instance, a namespace or a repository could not be listed;
    // what was listed is applied.
    let partial: Vec<String> = fresh.incomplete();
    let (items, dropped, summary) = match &file {
        Some((path, report)) => {
            let current = retention::config_fingerprint(rc);
            let changed = match &report.config_fingerprint {
                Some(f) if *f == current => false,
                Some(_) => {
                    writeln!(
                        out,
                        "note: the retention config changed since {} was made (its fingerprint differs): only what the current rules condemn is applied",
                        path.display()
                    )
                    .map_err(io)?;
                    true
                }
                None => {
                    writeln!(
                        out,
                        "note: {} carries no config fingerprint: only what the current rules condemn is applied",
                        path.display()
                    )
                    .map_err(io)?;
                    true
                }
            };
            let (items, dropped) = retention::intersect(report, &fresh, &inventory, c, changed);
            let count =
                |k: retention::ActionKind| items.iter().filter(|(_, a)| a.action == k).count();
            let summary = format!(
                "{} delete_image, {} delete_tag: the actions of {} that a fresh plan also holds ({} of the file's {} dropped)",
                count(retention::ActionKind::DeleteImage),
                count(retention::ActionKind::DeleteTag),
                path.display(),
                dropped.len(),
                report.actions().count()
            );
            (items, dropped, summary)
        }
        None => (
            retention::plan_targets(&fresh, c),
            Vec::new(),
            retention::plan_summary(&fresh),
        ),
    };
    for d in &dropped {
        let kind = if d.reason.starts_with("stale") {
            "dropped (stale)"
        } else {
            "dropped"
        };
        writeln!(
            out,
            "{kind}: {} {}/{}/{} {} {}: {}",
            d.action.action.as_str(),
            d.target.instance,
            d.target.namespace,
            d.target.repository,
            d.action.digest,
            d.action.tags.join(","),
            d.reason
        )
        .map_err(io)?;
    }
    // The caps apply to what runs, exactly as to a fresh run: the fresh
    // plan's own run cap only when it is what runs (a plan file runs the
    // intersection, capped below; ratio-blocked repositories have no
    // actions in the fresh plan, so none in the intersection either).
    if file.is_none()
        && let Some(b) = &fresh.blocked
    {
        return Err(CliError::Blocked(format!("retention: {b}")));
    }
    if items.len() as u64 > rc.max_deletions_per_run {
        return Err(CliError::Blocked(format!(
            "retention: {} actions exceed max_deletions_per_run {}",
            items.len(),
            rc.max_deletions_per_run
        )));
    }
    writeln!(out, "retention: {summary}").map_err(io)?;
    let partial_error = || {
        CliError::Failed(anyhow::anyhow!(
            "partial: {} could not be listed completely: {}",
            partial.len(),
            partial.join("; ")
        ))
    };
    if items.is_empty() {
        writeln!(out, "nothing to do").map_err(io)?;
        let executed = executor::Executed::default();
        writeln!(out, "retention: {}", retention::executed_summary(&executed)).map_err(io)?;
        return if partial.is_empty() {
            Ok(())
        } else {
            Err(partial_error())
        };
    }
    // Grace: marks are kept for the whole fresh plan (as a fresh run keeps
    // them); what runs is the part of `items` planned long enough.
    let (ready, waiting) = {
        let all = retention::plan_targets(&fresh, c);
        let (ready_all, _) = executor::apply_grace(&state, all, rc.grace, now)
            .map_err(|e| failed(e, "grace marks"))?;
        let keys: std::collections::HashSet<String> = ready_all
            .iter()
            .map(|(t, a)| executor::grace_key(t, a))
            .collect();
        let (ready, waiting): (Vec<_>, Vec<_>) = items
            .into_iter()
            .partition(|(t, a)| keys.contains(&executor::grace_key(t, a)));
        (ready, waiting.len())
    };
    let prompt = if waiting > 0 {
        format!(
            "apply {} actions ({waiting} more wait for grace)?",
            ready.len()
        )
    } else {
        format!("apply {} actions?", ready.len())
    };
    if !ready.is_empty() && !confirmed(args.yes, &prompt, out)? {
        // Declined: nothing applied, but a partial listing still is one.
        return if partial.is_empty() {
            Ok(())
        } else {
            Err(partial_error())
        };
    }
    let metrics = crate::metrics::Metrics::new();
    let cancel = tokio_util::sync::CancellationToken::new();
    failpoint::hit(
        "retention.state.run_start",
        crate::state::StateError::Injected,
    )
    .map_err(|e| failed(e, "recording the run"))?;
    // Before the run row exists: from here on a stop signal closes it.
    let signals = StopSignals::install(&cancel)?;
    let run_id = state
        .start_run("retention", "cli", Utc::now())
        .map_err(|e| failed(e, "recording the run"))?;
    let bar = Bar::new("deleting", "actions", ready.len() as u64);
    let tick = || bar.inc();
    let env = ExecEnv {
        client: &conn.client,
        state: &state,
        metrics: &metrics,
        cancel: &cancel,
        job: "retention",
        run_id: Some(run_id),
        // A reviewed plan is always re-verified: the registry may have moved on.
        verify: rc.verify_before_delete || file.is_some(),
        tick: &tick,
    };
    let total = ready.len();
    let executed = tokio::select! {
        biased;
        e = executor::execute(&env, ready) => Some(e),
        _ = signals.hard.cancelled() => None,
    };
    bar.finish();
    let Some(mut executed) = executed else {
        // Stopped in the middle of an action: its record and the run are
        // closed here, so nothing stays `started` or open.
        let closed = state.close_interrupted_audit_of_run(run_id);
        let text = format!(
            "stopped during an action by a second signal ({total} actions were to run); the outcome of the action in flight is unknown (audited interrupted)"
        );
        let finished = state.finish_run(
            run_id,
            Utc::now(),
            crate::state::RunResult::Failure,
            &text,
            Some("interrupted"),
        );
        closed
            .and(finished)
            .map_err(|e| failed(e, "recording the run"))?;
        writeln!(out, "retention: {text}").map_err(io)?;
        return Err(signals.error(format!("retention: interrupted; {text}")));
    };
    executed.waiting = waiting;
    for (t, a, o) in &executed.results {
        if let Outcome::Stale(why) | Outcome::Failed(why) | Outcome::Unknown(why) = o {
            let kind = match o {
                Outcome::Stale(_) => "dropped (stale)",
                Outcome::Unknown(_) => "UNKNOWN",
                _ => "FAILED",
            };
            writeln!(
                out,
                "{kind}: {} {}/{}/{} {} {}: {why}",
                a.action.as_str(),
                t.instance,
                t.namespace,
                t.repository,
                a.digest,
                a.tags.join(",")
            )
            .map_err(io)?;
        }
    }
    let text = retention::executed_summary(&executed);
    writeln!(out, "retention: {text}").map_err(io)?;
    let (result, error) = if executed.cancelled {
        (crate::state::RunResult::Failure, Some("interrupted"))
    } else if executed.has_failures() || !partial.is_empty() {
        (crate::state::RunResult::Failure, Some("failed"))
    } else {
        (crate::state::RunResult::Success, None)
    };
    failpoint::hit(
        "retention.state.run_finish",
        crate::state::StateError::Injected,
    )
    .and_then(|()| state.finish_run(run_id, Utc::now(), result, &text, error))
    .map_err(|e| failed(e, "recording the run"))?;
    if executed.cancelled {
        return Err(signals.error(format!("retention: interrupted; {text}")));
    }
    if executed.has_failures() {
        return Err(CliError::Failed(anyhow::anyhow!("retention: {text}")));
    }
    if !partial.is_empty() {
        return Err(partial_error());
    }
    Ok(())
}

async fn explain_cmd(c: &Config, args: &ExplainArgs, out: &mut dyn Write) -> Result<(), CliError> {
    use retention::planner::{ImageOutcome, Verdict};
    let rc = retention_config(c)?;
    let (namespace, repository) = args
        .target
        .split_once('/')
        .filter(|(n, r)| !n.is_empty() && !r.is_empty())
        .ok_or_else(|| {
            CliError::Usage(format!("{:?}: expected NAMESPACE/REPOSITORY", args.target))
        })?;
    let conn = app::connect(c).await.map_err(|e| failed(e, "connecting"))?;
    let now = Utc::now();
    let mut instances = Vec::new();
    for inst in &c.instances {
        let images = crate::inventory::list_images(&conn.client, &inst.id, namespace, repository)
            .await
            .map_err(|e| {
                failed(
                    e,
                    &format!("listing {}/{namespace}/{repository}", inst.name),
                )
            })?;
        instances.push(crate::inventory::InstanceInventory {
            name: inst.name.clone(),
            id: inst.id.clone(),
            namespaces: vec![crate::inventory::NamespaceInventory {
                name: namespace.to_owned(),
                public: false,
                repositories: vec![crate::inventory::RepositoryInventory {
                    name: repository.to_owned(),
                    images,
                    skipped: None,
                }],
                error: None,
            }],
            error: None,
        });
    }
    let plan = retention::plan_explained(
        &crate::inventory::Inventory {
            taken_at: now,
            instances,
        },
        rc,
        now,
    );
    let verdict_text = |v: &Verdict| match v {
        Verdict::Unmatched => "kept: no rule matches".to_owned(),
        Verdict::Protected { reason } => format!("kept: {reason}"),
        Verdict::Kept { reason, .. } => format!("kept: {reason}"),
        Verdict::Spared { reason, .. } => format!("kept: {reason}"),
        Verdict::Condemned { reason, .. } => format!("DELETE: {reason}"),
    };
    let mut text = String::new();
    for r in &plan.repositories {
        text.push_str(&format!(
            "{}/{}/{}: {} images
",
            r.instance, r.namespace, r.repository, r.images
        ));
        if let Some(b) = &r.blocked {
            text.push_str(&format!(
                "  BLOCKED: {b}
"
            ));
        }
        for d in &r.decisions {
            let outcome = match d.outcome {
                ImageOutcome::Kept => "kept",
                ImageOutcome::DeleteImage => "delete_image",
                ImageOutcome::DeleteTags => "delete_tag",
            };
            text.push_str(&format!(
                "  {} pushed {} {} -> {outcome}
",
                d.digest,
                d.pushed_at.format("%Y-%m-%d %H:%M"),
                retention::report::human_bytes(d.size)
            ));
            if let Some(v) = &d.untagged {
                text.push_str(&format!(
                    "    (untagged)  {}
",
                    verdict_text(v)
                ));
            }
            for t in &d.tags {
                text.push_str(&format!(
                    "    {:<24} {}
",
                    t.tag,
                    verdict_text(&t.verdict)
                ));
            }
        }
    }
    out.write_all(text.as_bytes()).map_err(io)
}

fn audit(c: &Config, args: &AuditArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let since = match args.since.as_deref() {
        None => None,
        Some(s) => Some(match chrono::DateTime::parse_from_rfc3339(s) {
            Ok(t) => t.with_timezone(&Utc),
            Err(_) => {
                let ago = duration::parse(s).map_err(|e| {
                    CliError::Usage(format!("--since {s:?}: not an RFC 3339 time, and {e}"))
                })?;
                Utc::now()
                    - chrono::Duration::from_std(ago)
                        .map_err(|_| CliError::Usage(format!("--since {s:?}: too far back")))?
            }
        }),
    };
    if !c.state.path.exists() {
        return Err(CliError::Usage(format!(
            "state {}: no database yet (the daemon creates it)",
            c.state.path.display()
        )));
    }
    let store =
        crate::state::Store::open(&c.state.path).map_err(|e| CliError::Usage(e.to_string()))?;
    let records = store
        .audit_query(since, args.job.as_deref(), args.limit)
        .map_err(|e| CliError::Failed(e.into()))?;
    let text = match args.format {
        OutputFormat::Json => {
            serde_json::to_string_pretty(&records).expect("audit serialises") + "\n"
        }
        OutputFormat::Table => {
            let mut t = format!(
                "{:<24}  {:<10}  {:<10}  {:<22}  {:<40}  {:<12}  {}\n",
                "AT", "JOB", "INSTANCE", "ACTION", "TARGET", "OUTCOME", "ERROR"
            );
            for r in &records {
                t.push_str(&format!(
                    "{:<24}  {:<10}  {:<10}  {:<22}  {:<40}  {:<12}  {}\n",
                    r.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    r.job,
                    r.instance,
                    r.action,
                    r.target,
                    r.outcome.as_str(),
                    r.error.as_deref().unwrap_or_default()
                ));
            }
            t.push_str(&format!(
                "{} record{}\n",
                records.len(),
                if records.len() == 1 { "" } else { "s" }
            ));
            t
        }
    };
    out.write_all(text.as_bytes()).map_err(io)
}

async fn quota_cmd(c: &Config, args: &QuotaArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let conn = app::connect(c)
        .await
        .map_err(|e| CliError::Failed(e.into()))?;
    let rows = quota::measure(&conn.client, &c.instances)
        .await
        .map_err(|e| CliError::Failed(anyhow::Error::new(e).context("quota")))?;
    let granularity = c
        .quota
        .as_ref()
        .map_or(crate::config::StorageGranularity::None, |q| q.storage);
    let mut incomplete = Vec::new();
    let storage = if granularity == crate::config::StorageGranularity::None {
        Vec::new()
    } else {
        let inventory = collect_inventory(&conn.client, c, Utc::now()).await;
        incomplete = quota::incomplete(&inventory);
        quota::storage_rows(&inventory, granularity)
    };
    let text = match args.format {
        OutputFormat::Table if storage.is_empty() => quota::render_table(&rows),
        OutputFormat::Table => quota::render_table(&rows) + "\n" + &quota::render_storage(&storage),
        OutputFormat::Json => {
            serde_json::to_string_pretty(&serde_json::json!({ "usage": rows, "storage": storage }))
                .expect("usage serialises")
                + "\n"
        }
    };
    out.write_all(text.as_bytes()).map_err(io)?;
    if !incomplete.is_empty() {
        return Err(CliError::Failed(anyhow::anyhow!(
            "quota: partial: storage left out where listings failed: {}",
            incomplete.join("; ")
        )));
    }
    Ok(())
}

async fn sim(args: SimArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let source = match (&args.scenario, &args.generate) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                CliError::Usage(format!("{}: cannot read scenario: {e}", path.display()))
            })?;
            let name = path.display().to_string();
            let scenario =
                Scenario::from_json(&name, &text).map_err(|e| CliError::Usage(e.to_string()))?;
            WorldSource::Scenario { name, scenario }
        }
        (None, Some(spec)) => WorldSource::Generate(
            spec.parse::<GenerateSpec>()
                .map_err(|e| CliError::Usage(e.to_string()))?,
        ),
        (None, None) => WorldSource::Demo,
    };
    if args.print_scenario {
        let scenario = match source {
            WorldSource::Demo => crate::sim::scenario::demo(),
            WorldSource::Scenario { scenario, .. } => scenario,
            WorldSource::Generate(spec) => crate::sim::scenario::generate(&spec),
        };
        let text = serde_json::to_string_pretty(&scenario).expect("scenario serialises");
        return writeln!(out, "{text}").map_err(io);
    }
    let credentials = match (args.access_key_id, args.secret_access_key) {
        (Some(id), Some(sk)) => Some(Credentials::new(id, sk)),
        _ => None,
    };
    let generated = credentials.is_none();
    let policies = match &args.policies {
        Some(path) => Some(
            crate::sim::iam::Policies::load(path).map_err(|e| CliError::Usage(e.to_string()))?,
        ),
        None => None,
    };
    let sim = Simulator::start(SimOptions {
        listen: args.listen,
        source,
        credentials,
        region: args.region,
        faults: Faults {
            latency: args.latency,
            rate_limit: args.rate_limit,
            fault_rate: args.fault_rate,
            kinds: args.fault_kinds,
            seed: args.seed,
            stall: args.stall,
            page_drift: args.page_drift,
        },
        request_log: args.request_log,
        log_in_memory: false,
        policies,
    })
    .await
    .map_err(|e| match e {
        crate::sim::SimError::Scenario(s) => CliError::Usage(s.to_string()),
        other => CliError::Failed(other.into()),
    })?;
    if generated {
        use secrecy::ExposeSecret;
        let c = sim.credentials();
        // Printed once, as DESIGN §10 says: these are throwaway simulator credentials.
        writeln!(
            out,
            "generated credentials: KSYUN_ACCESS_KEY_ID={} KSYUN_SECRET_ACCESS_KEY={}",
            c.access_key_id,
            c.secret_access_key.expose_secret()
        )
        .map_err(io)?;
    }
    writeln!(out, "listening on {}", sim.endpoint()).map_err(io)?;
    out.flush().map_err(io)?;
    crate::signal::shutdown().await.map_err(io)?;
    sim.stop().await;
    Ok(())
}
