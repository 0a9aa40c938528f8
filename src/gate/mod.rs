//! Gates, played by the appliance's own tools: a protocol client, synthetic travellers and
//! the open-loop load generator behind `gatematch gate` and `gatematch demo`.

pub mod client;
pub mod simulate;
pub mod travellers;

pub use client::{GateClient, GateError};
