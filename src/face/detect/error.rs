//! Errors of face detection and landmarking.

use crate::engine::gpu::GpuError;
use crate::face::model::ModelError;

/// Why faces could not be detected or landmarked in an image.
///
/// Messages carry sizes, counts and limits only, never pixels, boxes or landmarks: they may
/// reach logs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DetectError {
    /// The image has more pixels than the detector accepts.
    #[error("image of {width}x{height} pixels exceeds the detector's limit of {limit_pixels}")]
    ImageTooLarge {
        /// Width of the image.
        width: u32,
        /// Height of the image.
        height: u32,
        /// Largest pixel count accepted.
        limit_pixels: u64,
    },
    /// The image is so elongated that its short side vanishes at the network's input size
    /// (the reference would compute infinite boxes).
    #[error("image of {width}x{height} pixels is too elongated to detect faces in")]
    ImageShape {
        /// Width of the image.
        width: u32,
        /// Height of the image.
        height: u32,
    },
    /// A detection's box has no pixel inside the image, so there is nothing to landmark.
    #[error("the detection box lies outside the {image_width}x{image_height} image")]
    EmptyFaceCrop {
        /// Width of the image.
        image_width: u32,
        /// Height of the image.
        image_height: u32,
    },
    /// An option is outside its range.
    #[error("invalid detector option {name}: {reason}")]
    InvalidOption {
        /// The option.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The weights are missing a tensor or have one of the wrong shape.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The GPU networks could not be set up or failed to run (no adapter, device lost,
    /// submission failed, out of device memory, a kernel left an output unwritten). The CPU
    /// networks compute the same faces: fail over to them.
    #[error("GPU face detector: {source}")]
    Gpu {
        /// What the GPU path reported.
        source: GpuError,
    },
}
