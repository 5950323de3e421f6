//! kcr-housekeeper: keeps a Kingsoft Cloud Container Registry tidy and safe.
#![forbid(unsafe_code)]

pub mod app;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod failpoint;
pub mod inventory;
pub mod jobs;
pub mod metrics;
pub mod namespaces;
pub mod pattern;
pub mod quota;
pub mod retention;
pub mod schedule;
pub mod scheduler;
pub mod server;
pub mod signal;
pub mod state;
pub mod tokens;

// The layers below the daemon live in their own crates (crates/); re-exported
// under their old paths so `kcr_housekeeper::kcr::Client` keeps working.
pub use kcr;
pub use kcr_duration as duration;
#[cfg(feature = "sim")]
pub use kcr_sim as sim;
