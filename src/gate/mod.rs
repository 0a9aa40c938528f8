//! Gates, played by the appliance's own tools: a protocol client, synthetic travellers and
//! the open-loop load generator behind `gatematch gate` and `gatematch demo`, and the photos
//! of the demo's face phase.

pub mod client;
pub mod photos;
pub mod simulate;
pub mod travellers;

pub use client::{GateClient, GateError};
