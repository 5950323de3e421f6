//! kcr-housekeeper: keeps a Kingsoft Cloud Container Registry tidy and safe.
#![forbid(unsafe_code)]

pub mod app;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod duration;
pub mod failpoint;
pub mod inventory;
pub mod jobs;
pub mod kcr;
pub mod metrics;
pub mod namespaces;
pub mod pattern;
pub mod quota;
pub mod retention;
pub mod schedule;
pub mod scheduler;
pub mod server;
pub mod signal;
pub mod sim;
pub mod state;
pub mod tokens;
