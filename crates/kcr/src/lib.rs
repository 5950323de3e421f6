#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
//! The KCR OpenAPI (service `kcrs`, version 2021-11-09): signer, typed
//! actions, tolerant decoding, and the client with retries and rate limiting.

pub mod client;
pub mod decode;
pub mod error;
pub mod ratelimit;
pub mod signer;
pub mod types;

pub use client::{
    ApiObserver, Client, ClientConfig, Credentials, MutationGate, Reservation, RetryPolicy,
};
pub use decode::KcrTime;
pub use error::{Error, TransportKind};
pub use types::*;
