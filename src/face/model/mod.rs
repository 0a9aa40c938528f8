//! The face descriptor network's weights: what tensors it has, where they come from and how
//! they are kept.
//!
//! The published weights are a TF.js manifest plus one binary ([`tfjs`]); gatematch converts
//! them once (`gatematch model import`) into a single HDF5 model file ([`file`]) and loads
//! that file at start-up. Both
//! readers check every tensor against [`ARCHITECTURE`] so that a wrong or damaged file fails at
//! load, with a [`ModelError`] naming the file and what to do, and never mid-inference.

pub mod file;
pub mod tfjs;

mod error;
mod spec;

pub use error::ModelError;
pub use spec::{
    ARCHITECTURE, Block, BlockKind, ConvSpec, HEAD_IN, Padding, conv_specs, tensor_specs,
};

use std::collections::HashMap;

/// Name of the architecture, as stored in the model file.
pub const ARCHITECTURE_NAME: &str =
    "dlib_face_recognition_resnet_model_v1 (face-api FaceRecognitionNet)";
/// Side of the square RGB input crop, in pixels.
pub const INPUT_SIZE: usize = 150;
/// Per-channel mean subtracted from RGB values in 0..255 before dividing by 255.
pub const MEAN_RGB: [f32; 3] = [122.782, 117.001, 104.298];
/// Length of a face descriptor.
pub const DESCRIPTOR_DIM: usize = 128;
/// How descriptors are compared.
pub const DISTANCE: &str = "euclidean";
/// The customary same-person threshold on the Euclidean distance (same person when below).
pub const DEFAULT_THRESHOLD: f32 = 0.6;

/// Facts about a model that travel with its weights in the model file.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelInfo {
    /// Architecture name; must equal [`ARCHITECTURE_NAME`].
    pub architecture: String,
    /// Input side in pixels (150).
    pub input_size: usize,
    /// Mean RGB subtracted before scaling by 1/255.
    pub mean_rgb: [f32; 3],
    /// Descriptor length (128).
    pub output_dim: usize,
    /// Distance measure name ("euclidean").
    pub distance: String,
    /// Default decision threshold on that distance (0.6).
    pub default_threshold: f32,
}

impl Default for ModelInfo {
    fn default() -> Self {
        Self {
            architecture: ARCHITECTURE_NAME.to_owned(),
            input_size: INPUT_SIZE,
            mean_rgb: MEAN_RGB,
            output_dim: DESCRIPTOR_DIM,
            distance: DISTANCE.to_owned(),
            default_threshold: DEFAULT_THRESHOLD,
        }
    }
}

/// One named tensor, row-major, f32.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Dimensions, outermost first (filters are `[kh, kw, c_in, c_out]`).
    pub shape: Vec<usize>,
    /// Values in row-major order; `data.len()` is the product of `shape`.
    pub data: Vec<f32>,
}

/// The complete, validated weights of the descriptor network.
///
/// Construct it with [`FaceModel::from_tensors`] (which checks names, shapes and values) or
/// through the [`tfjs`] and [`file`] readers.
#[derive(Clone, Debug)]
pub struct FaceModel {
    info: ModelInfo,
    tensors: HashMap<String, Tensor>,
}

impl FaceModel {
    /// Checks that `tensors` holds exactly the tensors of [`tensor_specs`], each with its shape
    /// and finite values, and wraps them.
    pub fn from_tensors(
        info: ModelInfo,
        mut tensors: HashMap<String, Tensor>,
    ) -> Result<Self, ModelError> {
        let mut checked = HashMap::with_capacity(tensors.len());
        for (name, shape) in tensor_specs() {
            let tensor = tensors
                .remove(&name)
                .ok_or_else(|| ModelError::MissingTensor { name: name.clone() })?;
            if tensor.shape != shape || tensor.data.len() != shape.iter().product::<usize>() {
                return Err(ModelError::ShapeMismatch {
                    name,
                    expected: shape,
                    actual: tensor.shape,
                });
            }
            if let Some(index) = tensor.data.iter().position(|v| !v.is_finite()) {
                return Err(ModelError::NonFinite { name, index });
            }
            checked.insert(name, tensor);
        }
        if let Some(name) = tensors.into_keys().next() {
            return Err(ModelError::UnexpectedTensor { name });
        }
        Ok(Self {
            info,
            tensors: checked,
        })
    }

    /// The model's metadata.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The tensor called `name`, if the architecture has one.
    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// Number of scalar parameters (5,614,592 for the published weights).
    pub fn parameter_count(&self) -> usize {
        self.tensors.values().map(|t| t.data.len()).sum()
    }

    /// The tensor called `name`. Only for names from [`tensor_specs`], which
    /// [`FaceModel::from_tensors`] guaranteed present.
    pub(crate) fn expect_tensor(&self, name: &str) -> &Tensor {
        // Invariant: from_tensors admitted this model only with every spec'd tensor present,
        // and callers only ask for spec'd names.
        self.tensors
            .get(name)
            .unwrap_or_else(|| unreachable!("validated tensor {name} missing"))
    }
}
