//! Face detection and 68-point landmarks on the CPU: from a photo to the landmarks the
//! descriptor box is derived from, as the reference pipeline
//! (`detectAllFaces(img).withFaceLandmarks()`, face-api 1.7.15 on TF.js) computes them.
//!
//! - [`Detector`]: the SSD MobileNet v1 face detector ([`ssd`]), the reference's default.
//! - [`LandmarkNet`]: the full 68-point landmark network ([`landmarks`]).
//! - [`FaceFinder`]: both, detection then landmarks for every face of an image.
//! - [`store`]: their weights in the HDF5 model file beside the descriptor network's.
//! - [`gpu`]: both networks' forward passes in WGSL ([`GpuFaceFinder`]), the rest shared.
//!
//! Both networks run in the current rayon pool (call them inside `pool.install` to choose
//! the threads); 1×1 convolutions and im2col'd full convolutions are `gemm` products, 3×3
//! depthwise convolutions a direct loop over NHWC. Batch norms are folded in at load.
//!
//! # Limitations
//!
//! - The tiny landmark net ([`LandmarkNet::new_tiny`]) runs, for comparison, but has no group
//!   in the model file; the tiny detector (TinyYolov2-style) is not ported.
//! - On the CPU, one image per detector pass; several faces of one image do share a landmark
//!   pass. On the GPU, several frames share a detector pass and all their faces a landmark
//!   pass, when the caller hands them over together.

pub mod boxes;
pub mod gpu;
pub mod landmarks;
pub mod ssd;
pub mod store;

mod error;
mod input;
mod layers;
mod spec;

pub use error::DetectError;
pub use gpu::{GpuDetector, GpuFaceFinder, GpuLandmarkNet};
pub use landmarks::{
    FaceLandmarks, LANDMARK_INPUT_LEN, LANDMARK_INPUT_SIZE, LandmarkNet, landmark_inputs,
};
pub use spec::{
    LANDMARK_OUTPUTS, detector_tensor_specs, landmark_tensor_specs, tiny_landmark_tensor_specs,
};
pub use ssd::{
    DETECTOR_INPUT_LEN, DETECTOR_INPUT_SIZE, Detector, DetectorOptions, SsdOutputs, detector_input,
};
pub use store::{DetectionWeights, import_tfjs_with_detection, load_detection};

use crate::face::preprocess::RgbImage;

/// One detected face: its box in image pixels (it may reach into the part of the padded
/// square outside the image, as the reference's does) and its score.
///
/// `Debug` shows the score only: the box locates a face.
#[derive(Clone, Copy, PartialEq)]
pub struct Detection {
    /// Left edge, pixels from the image's left.
    pub x: f64,
    /// Top edge, pixels from the image's top.
    pub y: f64,
    /// Width in pixels.
    pub width: f64,
    /// Height in pixels.
    pub height: f64,
    /// The detector's confidence, in (min_confidence, 1).
    pub score: f32,
}

impl std::fmt::Debug for Detection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Detection(score {:.3}, box redacted)", self.score)
    }
}

/// A face found by [`FaceFinder`]: its detection and its landmarks.
#[derive(Clone, Debug, PartialEq)]
pub struct FoundFace {
    /// The detector's box and score.
    pub detection: Detection,
    /// The 68 landmarks in image pixels.
    pub landmarks: FaceLandmarks,
}

/// Detection then landmarks, for every face in an image.
#[derive(Debug)]
pub struct FaceFinder {
    detector: Detector,
    landmark_net: LandmarkNet,
}

impl FaceFinder {
    /// Both networks from checked weights (from [`load_detection`] or
    /// [`store::read_tfjs_detection`]), the detector with default options.
    pub fn new(weights: &DetectionWeights) -> Result<Self, DetectError> {
        Self::with_options(weights, DetectorOptions::default())
    }

    /// As [`FaceFinder::new`], with the detector's `options`.
    pub fn with_options(
        weights: &DetectionWeights,
        options: DetectorOptions,
    ) -> Result<Self, DetectError> {
        Ok(Self {
            detector: Detector::with_options(&weights.detector, options)?,
            landmark_net: LandmarkNet::new(&weights.landmarks)?,
        })
    }

    /// The detector.
    pub fn detector(&self) -> &Detector {
        &self.detector
    }

    /// The landmark network.
    pub fn landmark_net(&self) -> &LandmarkNet {
        &self.landmark_net
    }

    /// Every face in `image` with its landmarks, strongest detection first (the reference's
    /// order). A detection whose box has no pixel inside the image is dropped, as the
    /// reference drops it.
    pub fn find(&self, image: &RgbImage) -> Result<Vec<FoundFace>, DetectError> {
        let detections = self.detector.detect(image)?;
        let landmarks = self.landmark_net.landmarks_batch(image, &detections)?;
        Ok(found_faces(detections, landmarks))
    }
}

/// The faces of `detections` that got `landmarks` (a detection without a crop has none, and is
/// dropped as the reference drops it).
fn found_faces(
    detections: Vec<Detection>,
    landmarks: Vec<Result<FaceLandmarks, DetectError>>,
) -> Vec<FoundFace> {
    detections
        .into_iter()
        .zip(landmarks)
        .filter_map(|(detection, landmarks)| {
            let landmarks = landmarks.ok()?;
            Some(FoundFace {
                detection,
                landmarks,
            })
        })
        .collect()
}
