//! Token rotation (DESIGN §6, Step 4). This step's first piece: the sinks
//! that receive a new secret.

pub mod sinks;
