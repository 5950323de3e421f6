#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
//! A KCR simulator faithful enough that passing against it means passing
//! against the real service (DESIGN §10): SigV4 verification with the
//! reference's error codes, GET and POST (form and JSON) requests, parameter
//! validation, offset pagination, the documented quirks, the registry API v2
//! (login, manifests, config blobs, tag lists; Basic or Bearer auth against
//! live tokens), scenarios, fault injection and a request log.
//!
//! Tests start it on `127.0.0.1:0` with [`Simulator::start`]; the CLI runs it
//! with `kcr-housekeeper sim`; `endpoint = "sim:demo"` embeds it.

pub mod auth;
pub mod iam;
pub mod scenario;
mod server;
pub mod world;

pub use scenario::{GenerateSpec, Scenario, ScenarioError};
pub use server::{FaultKind, Faults, LogEntry, SimError, SimOptions, Simulator, WorldSource};
