//! kcr-housekeeper: keeps a Kingsoft Cloud Container Registry tidy and safe.
#![forbid(unsafe_code)]

pub mod duration;
pub mod kcr;
pub mod sim;
