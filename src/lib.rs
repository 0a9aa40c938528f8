//! gatematch: the match server behind automated border-control gates.
//!
//! Gates connect over QUIC with mutual TLS ([`server`]) and ask the appliance to enrol, verify
//! (1:1), identify (1:N) or erase travellers. [`flows`] makes those decisions over the
//! durable [`registry`], the in-memory [`gallery`] and the batched compute of [`engine`].
//! [`metrics`] names every Prometheus series; [`gate`] plays gates for the demo and the
//! capacity benchmark. [`face`] turns face photos into descriptors (CPU only so far).
//!
//! # Glossary
//!
//! * **person**: a traveller as the registry knows them, by state and personal number, for
//!   life (a new passport does not make a new person).
//! * **template**: a feature vector of one biometric capture, made by a named model.
//! * **probe**: the template of a live capture, to be compared.
//! * **gallery**: every enrolled template, in memory, split into one **shard** per model.
//! * **score**: how alike a probe and a template are, in the model's measure (cosine
//!   similarity, higher is closer; or Euclidean distance, lower is closer).
//! * **threshold**: the score at which a comparison counts as a match.

pub mod app;
pub mod bench;
pub mod config;
pub mod engine;
pub mod face;
pub mod flows;
pub mod gallery;
pub mod gate;
pub mod metrics;
pub mod pki;
pub mod registry;
pub mod server;

/// The gate protocol's messages, generated from `proto/gatematch.proto`.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/gatematch.v1.rs"));
}
