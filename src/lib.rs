//! kcr-housekeeper: keeps a Kingsoft Cloud Container Registry tidy and safe.
//!
//! Modules by layer, lowest first; a module uses only those above it in this
//! list (the CLI and the daemon sit on top, nothing imports them). One
//! exception by design: `config` assembles each job's `config.rs`, which
//! uses only `config`'s validator machinery.
//! `docs/architecture.md` tells the flow and how to add a job.
#![forbid(unsafe_code)]

// Foundations (no I/O of their own).
// Durations as operators write them (`crates/duration`).
pub use kcr_duration as duration;
// Test-only fault injection at every fallible call of the mutation paths.
pub mod failpoint;
// Globs and anchored regexes over names, as rules write them.
pub mod pattern;
// Six-field cron expressions read in a configured zone.
pub mod schedule;
// Running an operator's program: cleared environment, own process group, timeout.
pub mod hook;

// The service.
// The KCR OpenAPI client: signer, typed actions, pagination, retries (`crates/kcr`).
pub use kcr;
// The KCR simulator (`crates/kcr-sim`), compiled in by the default feature `sim`.
#[cfg(feature = "sim")]
pub use kcr_sim as sim;

// What the daemon knows and keeps.
// The config file: raw TOML → validated `Config`, every error at once with file, line and key;
// core sections and the validator here, each job's section in its folder's `config.rs`.
pub mod config;
// Durable state (SQLite, or PostgreSQL for replicas): runs, audit, token journal, grace marks, reports.
pub mod state;
// The Prometheus registry and every metric, grouped per subsystem.
pub mod metrics;
// A snapshot of the registry shared by the jobs, never partial.
pub mod inventory;

// The jobs: each a folder of one shape — config.rs (its section, raw → valid),
// planner.rs (pure), executor.rs, report.rs (renderers), mod.rs (the job).
// Prune tags and images by retention rules.
pub mod retention;
// Rotate registry access tokens and deliver them to sinks.
pub mod tokens;
// Enforce the public/private policy of namespaces.
pub mod namespaces;
// Measure quota usage.
pub mod quota;
// Read-only checks of credentials, instance, permissions, registry access, state (`doctor`).
pub mod doctor;

// Running the jobs.
// The leader lease: only one replica per database runs jobs; followers serve.
pub mod leader;
// The `Job` trait and the `Runner`: the one path for scheduled, HTTP and CLI runs.
pub mod jobs;
// A client for the configured endpoint (or the embedded simulator).
pub mod app;
// The process's signals (SIGTERM, SIGINT, SIGHUP), in one place.
pub mod signal;
// tokio-cron-scheduler wiring.
pub mod scheduler;
// The admin HTTP server: metrics, health, jobs, reports.
pub mod server;
// The long-running daemon.
pub mod daemon;
// The command-line interface, one file per command.
pub mod cli;
