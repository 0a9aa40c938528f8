//! The compute: scoring probes against the gallery, behind one [`Backend`] interface.
//!
//! A backend works on gallery *slots* (one template each); turning slots into persons,
//! thresholds into decisions and requests into batches is the job of [`crate::flows`] and
//! [`batcher`]. The CPU backend in [`cpu`] is the reference every other backend is checked
//! against, and the fallback when a GPU is missing or lost; [`gpu`] scores on a GPU through
//! wgpu and fails over to the CPU engine when the device is lost.
//!
//! # Scores
//!
//! Every backend returns the same scores, computed directly from the definitions:
//!
//! * cosine similarity, `p·g / (|p| |g|)`, higher is more alike;
//! * Euclidean distance, `sqrt(Σ (p_i − g_i)²)`, lower is more alike.
//!
//! Scans may rank with a cheaper key built from dot products and squared norms (the same
//! dot-product work serves both measures), but the scores a backend hands back are recomputed
//! from the definitions in double precision, so that the distance of a near-identical pair does
//! not suffer the cancellation of `|p|² + |g|² − 2 p·g`.

pub mod batcher;
pub mod cpu;
pub mod gpu;
mod kernels;
mod topk;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::gallery::Shard;

pub use topk::TopK;

/// How two templates are compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Measure {
    /// Cosine similarity; higher is more alike; a match is `score >= threshold`.
    Cosine,
    /// Euclidean distance; lower is more alike; a match is `score < threshold`, strictly, as
    /// the face model's reference (face-api's `FaceMatcher`) decides.
    Euclidean,
}

impl Measure {
    /// True when `a` is a better (more alike) score than `b`.
    pub fn is_better(self, a: f32, b: f32) -> bool {
        match self {
            Measure::Cosine => a > b,
            Measure::Euclidean => a < b,
        }
    }

    /// The decision at `threshold`.
    pub fn is_match(self, score: f32, threshold: f32) -> bool {
        match self {
            Measure::Cosine => score >= threshold,
            Measure::Euclidean => score < threshold,
        }
    }

    /// The worst possible score, a start value for "best so far".
    pub fn worst(self) -> f32 {
        match self {
            Measure::Cosine => f32::NEG_INFINITY,
            Measure::Euclidean => f32::INFINITY,
        }
    }

    /// Orders candidates best first, ties by the lower slot, so that every backend returns
    /// the same ranking.
    pub fn rank(self, a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
        let by_score = match self {
            Measure::Cosine => b.score.total_cmp(&a.score),
            Measure::Euclidean => a.score.total_cmp(&b.score),
        };
        by_score.then(a.slot.cmp(&b.slot))
    }

    /// The score of `probe` against `template`, from the definition, accumulated in f64.
    pub fn score(self, probe: &[f32], template: &[f32]) -> f32 {
        match self {
            Measure::Cosine => {
                let (mut dot, mut pp, mut gg) = (0f64, 0f64, 0f64);
                for (&p, &g) in probe.iter().zip(template) {
                    let (p, g) = (f64::from(p), f64::from(g));
                    dot += p * g;
                    pp += p * p;
                    gg += g * g;
                }
                let denominator = pp.sqrt() * gg.sqrt();
                if denominator == 0.0 {
                    0.0
                } else {
                    (dot / denominator) as f32
                }
            }
            Measure::Euclidean => {
                let sum: f64 = probe
                    .iter()
                    .zip(template)
                    .map(|(&p, &g)| {
                        let d = f64::from(p) - f64::from(g);
                        d * d
                    })
                    .sum();
                sum.sqrt() as f32
            }
        }
    }
}

impl fmt::Display for Measure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Measure::Cosine => "cosine",
            Measure::Euclidean => "euclidean",
        })
    }
}

/// One gallery slot and its score against a probe.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    /// The gallery slot (one template).
    pub slot: u32,
    /// The score, in the shard's [`Measure`].
    pub score: f32,
}

/// What can fail inside a backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The probe block is not a whole number of vectors of the shard's dimension.
    #[error("probe block of {len} values is not a multiple of dimension {dim}")]
    ProbeShape {
        /// Values handed in.
        len: usize,
        /// The shard's dimension.
        dim: usize,
    },
    /// The device failed; the work may be retried on another backend.
    #[error("device failed: {0}")]
    Device(String),
    /// A 1:1 comparison named a slot beyond the shard.
    #[error("slot {slot} is out of range ({slots} slots)")]
    SlotOutOfRange {
        /// The slot asked for.
        slot: u32,
        /// Slots in the shard.
        slots: usize,
    },
}

/// The compute behind scoring: the CPU engine, or a GPU.
pub trait Backend: Send + Sync {
    /// A short name for logs and metrics ("cpu", "gpu").
    fn name(&self) -> &'static str;

    /// For each probe (row-major, `shard.dimension()` values each), the `k` best live slots,
    /// best first (ties by lower slot); fewer when the shard holds fewer live templates.
    fn identify(
        &self,
        shard: &Shard,
        probes: &[f32],
        k: usize,
    ) -> Result<Vec<Vec<Candidate>>, EngineError>;

    /// Bytes of gallery storage one value occupies in the scan this backend runs for a batch
    /// of `batch` probes (for bandwidth figures).
    fn scan_bytes_per_value(&self, shard: &Shard, batch: usize) -> usize {
        let _ = (shard, batch);
        4
    }

    /// For each probe, its score against each slot in `slots[i]`, in the same order.
    fn verify(
        &self,
        shard: &Shard,
        probes: &[f32],
        slots: &[Vec<u32>],
    ) -> Result<Vec<Vec<f32>>, EngineError>;
}

/// How many probes a block of `len` values holds, or the shape error.
pub(crate) fn probe_count(len: usize, dim: usize) -> Result<usize, EngineError> {
    if dim == 0 || !len.is_multiple_of(dim) {
        return Err(EngineError::ProbeShape { len, dim });
    }
    Ok(len / dim)
}
