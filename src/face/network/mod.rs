//! The descriptor network on the CPU: normalised 150×150 crops in, 128-d descriptors out.
//!
//! Two implementations of the same function:
//!
//! - [`reference`](mod@reference): the network as MODEL.md writes it, one plain loop nest per
//!   operation, no folding, single-threaded. Slow and obviously right; the oracle for the fast
//!   path.
//! - [`CpuNetwork`]: the production path. Bias and scale are folded into the filters at load
//!   and packed for a register-tiled AVX2 product; the 3 × 3 stride-1 convolutions run as
//!   Winograd F(2 × 2, 3 × 3), the others as im2col products, tiled over a thread pool, with
//!   the bias, shortcut and ReLU applied to each tile while it is in cache.
//!
//! And the same function on a GPU, [`GpuNetwork`] (WGSL on wgpu, many faces per dispatch),
//! within 1e-3 of [`CpuNetwork`]. [`Network`] is either, for callers that take both.

pub mod failover;
pub mod reference;

mod conv;
mod cpu;
mod gpu;
mod kernel;
mod tensor;
mod winograd;

pub use cpu::{CpuNetwork, MAX_FACES_PER_PASS};
pub use failover::FailoverEmbedder;
pub use gpu::{DEFAULT_FACES_PER_PASS, GpuNetwork};

use std::fmt;
use std::path::PathBuf;

use crate::engine::gpu::GpuError;
use crate::face::model::{DESCRIPTOR_DIM, ModelError};
use crate::face::preprocess::{FaceBatch, ImageError};

/// A descriptor network that the engine batches faces through: [`CpuNetwork`], or the WGSL one.
pub trait Embedder: Send + Sync {
    /// The backend's name, "cpu" or "gpu", for logs, metrics and the status answer.
    fn name(&self) -> &'static str;

    /// Descriptors of every face in `batch`, in order.
    fn embed(&self, batch: &FaceBatch) -> Result<Vec<Descriptor>, EmbedError>;
}

impl Embedder for CpuNetwork {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn embed(&self, batch: &FaceBatch) -> Result<Vec<Descriptor>, EmbedError> {
        Ok(self.describe(batch))
    }
}

impl Embedder for GpuNetwork {
    fn name(&self) -> &'static str {
        "gpu"
    }

    fn embed(&self, batch: &FaceBatch) -> Result<Vec<Descriptor>, EmbedError> {
        self.describe(batch)
    }
}

/// The descriptor network on either backend.
#[derive(Debug)]
pub enum Network {
    /// On the CPU's threads.
    Cpu(CpuNetwork),
    /// On a GPU.
    Gpu(GpuNetwork),
}

impl Network {
    /// Descriptors of every face in `batch`, in order. The CPU cannot fail; the GPU returns
    /// [`EmbedError::Gpu`] when its device fails.
    pub fn describe(&self, batch: &FaceBatch) -> Result<Vec<Descriptor>, EmbedError> {
        match self {
            Network::Cpu(cpu) => Ok(cpu.describe(batch)),
            Network::Gpu(gpu) => gpu.describe(batch),
        }
    }

    /// `"cpu"` or `"gpu"`, as the command line names them.
    pub fn backend_name(&self) -> &'static str {
        match self {
            Network::Cpu(_) => "cpu",
            Network::Gpu(_) => "gpu",
        }
    }
}

/// A face descriptor: 128 values compared by Euclidean distance (not unit length; the norm is
/// near 1.4 for real faces).
///
/// `Debug` does not show the values: a descriptor is biometric data and must not reach logs.
#[derive(Clone, Copy, PartialEq)]
pub struct Descriptor([f32; DESCRIPTOR_DIM]);

impl Descriptor {
    /// Wraps 128 values.
    pub fn new(values: [f32; DESCRIPTOR_DIM]) -> Self {
        Self(values)
    }

    /// The values.
    pub fn as_slice(&self) -> &[f32] {
        &self.0
    }

    /// Euclidean distance to `other`; the same person when below the threshold (0.6 by default).
    pub fn distance(&self, other: &Descriptor) -> f32 {
        self.0
            .iter()
            .zip(&other.0)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f32>()
            .sqrt()
    }

    /// Largest absolute difference of any element, for fidelity checks.
    pub fn max_abs_diff(&self, other: &[f32]) -> f32 {
        self.0
            .iter()
            .zip(other)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    }
}

impl fmt::Debug for Descriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Descriptor({DESCRIPTOR_DIM} values, redacted)")
    }
}

/// Why descriptors could not be computed: the network could not be set up, or an input of
/// `gatematch embed` was refused.
///
/// Messages name files, sizes and counts, never pixels, landmarks or descriptors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmbedError {
    /// The GPU network could not be set up or failed to run (no adapter, device lost,
    /// submission failed, out of device memory). The CPU network can compute the same
    /// descriptors.
    #[error("GPU descriptor network: {source}")]
    Gpu {
        /// What the GPU path reported.
        source: GpuError,
    },
    /// The image could not be read.
    #[error("{path}: {source}")]
    Image {
        /// The image file.
        path: PathBuf,
        /// Why it was refused.
        source: ImageError,
    },
    /// The faces of an image could not be found.
    #[error("{path}: {source}")]
    Capture {
        /// The image file.
        path: PathBuf,
        /// Why (sizes and counts only).
        source: Box<crate::face::capture::CaptureError>,
    },
    /// A landmarks file is not of the accepted form.
    #[error("{path}: {reason}")]
    Landmarks {
        /// The landmarks file.
        path: PathBuf,
        /// What is wrong with it (never its values).
        reason: String,
    },
    /// The model file could not be loaded.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating-system error.
        source: std::io::Error,
    },
    /// Face regions were given neither once for all images nor once per image.
    #[error("{regions} face regions for {images} images: give one for all, or one per image")]
    RegionCount {
        /// Images given.
        images: usize,
        /// Boxes or landmark files given.
        regions: usize,
    },
    /// The operating system refused the worker threads.
    #[error("cannot start {threads} worker threads: {source}")]
    ThreadPool {
        /// Threads asked for.
        threads: usize,
        /// The pool's error.
        source: rayon::ThreadPoolBuildError,
    },
    /// The backend name is not one gatematch knows.
    #[error("unknown embed backend {backend:?}; use cpu or gpu")]
    UnknownBackend {
        /// The name given.
        backend: String,
    },
    /// The output could not be written.
    #[error("cannot write the output: {source}")]
    Write {
        /// The operating-system error.
        source: std::io::Error,
    },
    /// A thread count of zero was asked for.
    #[error("thread count must be at least 1")]
    ZeroThreads,
}
