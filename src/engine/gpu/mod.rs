//! The GPU backend: 1:N top-k and 1:1 scoring in WGSL compute shaders on wgpu, with the CPU
//! engine behind it.
//!
//! [`GpuEngine`] implements [`crate::engine::Backend`]. It opens a headless adapter
//! ([`GpuContext`]), keeps a copy of every shard it is asked about in device memory, in the
//! configured [`StorageFormat`], and brings that copy up to date from the shard's change log at
//! the start of each call (see [`crate::gallery`]), so enrolments and erasures reach the GPU
//! as single-row writes, never as a re-upload.
//!
//! # How identify works
//!
//! 1. `scan` (one dispatch per chunk of the gallery): each workgroup streams a stripe of the
//!    chunk and keeps its best `kc` rank keys in workgroup memory (`shaders/select.wgsl`).
//! 2. `merge`: one workgroup per probe merges the stripes' lists into one of `kc`.
//! 3. Only `kc` (key, slot) pairs per probe come back; the host re-scores them from the
//!    shard's f32 rows with [`crate::engine::Measure::score`] and keeps the best `k`.
//!    `kc = min(128, k + max(k, 16))`: the margin lets f16 and int8 scans, whose keys are
//!    approximate, still hold the exact top k.
//!
//! # Failover
//!
//! When the device is lost or a submission fails, the call that saw it and every later one
//! run on the CPU engine; the switch is logged once at error level and counted in
//! [`crate::metrics::BACKEND_FAILOVERS`]. Inputs the GPU path does not take (a dimension that
//! is not a multiple of 4, `k` over [`MAX_K`], a non-finite probe) are scored on the CPU for
//! that call only.
//!
//! # Limitations
//!
//! - Each probe's workgroups stream the gallery on their own: a batch of B probes reads the
//!   gallery B times and leans on the cache. Right for batch 1; large batches want a kernel
//!   that tiles several probes per workgroup.
//! - Re-scoring runs on one host thread: `B · kc · dim` multiply-adds per call.
//! - Without timestamp queries, the bench times whole calls (upload of probes, scan, merge,
//!   read-back and re-score).

mod context;
mod engine;
mod error;
mod gallery;
mod identify;
pub mod shaders;

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

pub use context::GpuContext;
pub use engine::{GpuEngine, GpuOptions};
pub use error::GpuError;

use crate::engine::Measure;

/// Largest `k` the GPU path takes; larger ones are scored on the CPU.
pub const MAX_K: usize = 100;

/// Most probes in one submission; larger batches are split.
pub const MAX_BATCH: usize = 1024;

/// Largest template dimension the GPU path takes.
pub const MAX_DIM: usize = 4096;

/// How templates are stored on the GPU for the scan. Re-scoring is always from f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum StorageFormat {
    /// 4 bytes per value.
    #[default]
    F32,
    /// 2 bytes per value; needs `SHADER_F16` ([`GpuContext::supports_f16`]).
    F16,
    /// 1 byte per value plus one f32 scale per template (symmetric, max-abs).
    Int8,
}

impl StorageFormat {
    /// Every format.
    pub const ALL: [StorageFormat; 3] =
        [StorageFormat::F32, StorageFormat::F16, StorageFormat::Int8];

    /// Bytes of one unit of 4 values in a chunk.
    pub fn unit_bytes(self) -> usize {
        match self {
            StorageFormat::F32 => 16,
            StorageFormat::F16 => 8,
            StorageFormat::Int8 => 4,
        }
    }

    /// The name used in the configuration and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            StorageFormat::F32 => "f32",
            StorageFormat::F16 => "f16",
            StorageFormat::Int8 => "int8",
        }
    }
}

impl fmt::Display for StorageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for StorageFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StorageFormat::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| format!("unknown storage format {s:?}: use f32, f16 or int8"))
    }
}

/// The value the kernels test for (`MEASURE_COSINE` in the WGSL is 0).
fn measure_code(measure: Measure) -> u32 {
    match measure {
        Measure::Cosine => 0,
        Measure::Euclidean => 1,
    }
}
