//! The detector's and the landmark network's weights in gatematch's HDF5 model file, beside
//! the descriptor network's, so that the appliance loads every network from one file.
//!
//! Layout added to [`crate::face::model::file`]'s (which is unchanged, so a file without these
//! groups, written before them, still loads for the descriptor network alone):
//!
//! ```text
//! /detector              attributes: architecture, source, input_size (512), weights_sha256
//! /detector/weights/<name>    one f32 dataset per tensor, named as in the TF.js manifest
//! /landmarks             attributes: architecture, source, input_size (112), weights_sha256
//! /landmarks/weights/<name>
//! ```
//!
//! Only the tensors the code reads are stored (the SSD manifest's graph constants are not).
//! Each group's digest is computed as the descriptor network's (name, dimensions, values, in
//! table order) and checked at load.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hdf5::{File, Group};

use crate::face::model::file::{
    ensure_parent, link_path_exists, read_scalar, read_string, tensors_digest, write_model,
    write_string,
};
use crate::face::model::{FaceModel, ModelError, Tensor, tfjs};

use super::spec::{detector_tensor_specs, landmark_tensor_specs, take_checked};

/// The detector's group in the model file.
pub const DETECTOR_GROUP: &str = "detector";
/// The landmark network's group in the model file.
pub const LANDMARKS_GROUP: &str = "landmarks";
/// The detector's architecture name, as stored.
pub const DETECTOR_ARCHITECTURE: &str = "ssd_mobilenetv1 (face-api SsdMobilenetv1)";
/// The landmark network's architecture name, as stored.
pub const LANDMARKS_ARCHITECTURE: &str = "face_landmark_68 (face-api FaceLandmark68Net)";
/// The detector's TF.js manifest in the npm package's model directory.
pub const DETECTOR_MANIFEST: &str = "ssd_mobilenetv1_model-weights_manifest.json";
/// The landmark network's TF.js manifest in the npm package's model directory.
pub const LANDMARKS_MANIFEST: &str = "face_landmark_68_model-weights_manifest.json";
/// The descriptor network's TF.js manifest in the npm package's model directory.
pub const DESCRIPTOR_MANIFEST: &str = "face_recognition_model-weights_manifest.json";
const WEIGHTS: &str = "weights";

/// One network of the pair: its group, architecture, input side and tensor table.
struct Network {
    group: &'static str,
    architecture: &'static str,
    source: &'static str,
    input_size: u64,
    specs: fn() -> Vec<(String, Vec<usize>)>,
}

const DETECTOR: Network = Network {
    group: DETECTOR_GROUP,
    architecture: DETECTOR_ARCHITECTURE,
    source: "npm @vladmandic/face-api@1.7.15 model/ssd_mobilenetv1_model (MIT)",
    input_size: 512,
    specs: detector_tensor_specs,
};

const LANDMARKS: Network = Network {
    group: LANDMARKS_GROUP,
    architecture: LANDMARKS_ARCHITECTURE,
    source: "npm @vladmandic/face-api@1.7.15 model/face_landmark_68_model (MIT)",
    input_size: 112,
    specs: landmark_tensor_specs,
};

/// The checked weights of the detector and the landmark network: exactly the tensors of
/// their tables, each of its shape and finite.
#[derive(Clone, Debug)]
pub struct DetectionWeights {
    /// `ssd_mobilenetv1_model`'s tensors, for [`super::Detector::new`].
    pub detector: HashMap<String, Tensor>,
    /// `face_landmark_68_model`'s tensors, for [`super::LandmarkNet::new`].
    pub landmarks: HashMap<String, Tensor>,
}

impl DetectionWeights {
    /// Checks `detector` and `landmarks` against the networks' tables, keeping only the
    /// tensors the code reads.
    pub fn from_tensors(
        detector: &HashMap<String, Tensor>,
        landmarks: &HashMap<String, Tensor>,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            detector: take_checked(&detector_tensor_specs(), detector)?,
            landmarks: take_checked(&landmark_tensor_specs(), landmarks)?,
        })
    }
}

/// Reads the detector's and the landmark network's TF.js files from the npm package's model
/// directory `models_dir`.
pub fn read_tfjs_detection(models_dir: &Path) -> Result<DetectionWeights, ModelError> {
    let read = |name: &str| -> Result<(PathBuf, HashMap<String, Tensor>), ModelError> {
        let path = models_dir.join(name);
        let tensors = tfjs::read_tensors(&path)?;
        Ok((path, tensors))
    };
    let (detector_path, detector) = read(DETECTOR_MANIFEST)?;
    let (landmarks_path, landmarks) = read(LANDMARKS_MANIFEST)?;
    Ok(DetectionWeights {
        detector: take_checked(&detector_tensor_specs(), &detector)
            .map_err(|e| e.in_file(&detector_path))?,
        landmarks: take_checked(&landmark_tensor_specs(), &landmarks)
            .map_err(|e| e.in_file(&landmarks_path))?,
    })
}

/// Converts the descriptor network, the detector and the landmark network from the npm
/// package's model directory `models_dir` into one HDF5 model file at `out_path`, replacing
/// any file there. The file is assembled beside the target and renamed into place.
///
/// [`crate::face::model::file::import_tfjs`] still writes the descriptor network alone.
pub fn import_tfjs_with_detection(
    models_dir: &Path,
    out_path: &Path,
) -> Result<FaceModel, ModelError> {
    let model = tfjs::read_model(&models_dir.join(DESCRIPTOR_MANIFEST))?;
    let detection = read_tfjs_detection(models_dir)?;
    let staging = out_path.with_extension("h5.assembling");
    write_model(&model, &staging)?;
    add_detection(&staging, &detection)?;
    std::fs::rename(&staging, out_path).map_err(|source| ModelError::Io {
        path: out_path.to_owned(),
        source,
    })?;
    Ok(model)
}

/// Adds (or replaces) the detection groups in the existing model file at `path`.
pub fn add_detection(path: &Path, weights: &DetectionWeights) -> Result<(), ModelError> {
    let h5 = |source| ModelError::Hdf5 {
        path: path.to_owned(),
        source,
    };
    let file = File::open_rw(path).map_err(h5)?;
    for (network, tensors) in [
        (&DETECTOR, &weights.detector),
        (&LANDMARKS, &weights.landmarks),
    ] {
        if file.link_exists(network.group) {
            file.unlink(network.group).map_err(h5)?;
        }
        write_network(&file, network, tensors).map_err(h5)?;
    }
    file.flush().map_err(h5)
}

fn write_network(
    file: &File,
    network: &Network,
    tensors: &HashMap<String, Tensor>,
) -> hdf5::Result<()> {
    let specs = (network.specs)();
    let group = file.create_group(network.group)?;
    write_string(&group, "architecture", network.architecture)?;
    write_string(&group, "source", network.source)?;
    write_string(&group, "weights_sha256", &digest(&specs, tensors))?;
    group
        .new_attr::<u64>()
        .create("input_size")?
        .write_scalar(&network.input_size)?;
    let root = group.create_group(WEIGHTS)?;
    for (name, _) in &specs {
        let Some(tensor) = tensors.get(name) else {
            return Err(hdf5::Error::from(format!("tensor {name} missing")));
        };
        let (parent, leaf) = ensure_parent(&root, name)?;
        parent
            .new_dataset::<f32>()
            .shape(tensor.shape.clone())
            .create(leaf)?
            .write_raw(&tensor.data[..])?;
    }
    Ok(())
}

/// Loads the detection groups of the model file at `path`: `None` when the file has none (one
/// written for the descriptor network alone), an error when they are damaged or incomplete.
pub fn load_detection(path: &Path) -> Result<Option<DetectionWeights>, ModelError> {
    if !path.exists() {
        return Err(ModelError::FileMissing {
            path: path.to_owned(),
        });
    }
    let h5 = |source| ModelError::Hdf5 {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(h5)?;
    let present = [DETECTOR_GROUP, LANDMARKS_GROUP].map(|g| file.link_exists(g));
    match present {
        [false, false] => return Ok(None),
        [true, true] => {}
        _ => {
            let name = if present[0] {
                LANDMARKS_GROUP
            } else {
                DETECTOR_GROUP
            };
            return Err(ModelError::MissingTensor {
                name: format!("{name}/ (group)"),
            }
            .in_file(path));
        }
    }
    Ok(Some(DetectionWeights {
        detector: read_network(&file, &DETECTOR, path)?,
        landmarks: read_network(&file, &LANDMARKS, path)?,
    }))
}

fn read_network(
    file: &File,
    network: &Network,
    path: &Path,
) -> Result<HashMap<String, Tensor>, ModelError> {
    let h5 = |source| ModelError::Hdf5 {
        path: path.to_owned(),
        source,
    };
    let group: Group = file.group(network.group).map_err(h5)?;
    let attribute = |name: &str, reason: String| ModelError::Attribute {
        path: path.to_owned(),
        name: format!("{}/{name}", network.group),
        reason,
    };
    let architecture = read_string(&group, "architecture", path)?;
    if architecture != network.architecture {
        return Err(attribute(
            "architecture",
            "value differs from the architecture this build runs".to_owned(),
        ));
    }
    let input_size: u64 = read_scalar(&group, "input_size", path)?;
    if input_size != network.input_size {
        return Err(attribute(
            "input_size",
            format!("{input_size}, this build runs {}", network.input_size),
        ));
    }
    let specs = (network.specs)();
    let root = group.group(WEIGHTS).map_err(h5)?;
    let mut tensors = HashMap::with_capacity(specs.len());
    for (name, _) in &specs {
        if !link_path_exists(&root, name) {
            return Err(ModelError::MissingTensor {
                name: format!("{}/{name}", network.group),
            }
            .in_file(path));
        }
        let dataset = root.dataset(name).map_err(h5)?;
        let tensor = Tensor {
            shape: dataset.shape(),
            data: dataset.read_raw::<f32>().map_err(h5)?,
        };
        tensors.insert(name.clone(), tensor);
    }
    let tensors = take_checked(&specs, &tensors).map_err(|e| e.in_file(path))?;
    let expected = read_string(&group, "weights_sha256", path)?;
    let actual = digest(&specs, &tensors);
    if expected != actual {
        return Err(ModelError::DigestMismatch {
            path: path.to_owned(),
            expected,
            actual,
        });
    }
    Ok(tensors)
}

/// SHA-256 over the tensors in table order: name, a zero byte, each dimension as little-endian
/// u64, the values as little-endian f32. Hex, lowercase. A missing tensor hashes as absent.
fn digest(specs: &[(String, Vec<usize>)], tensors: &HashMap<String, Tensor>) -> String {
    tensors_digest(
        specs
            .iter()
            .filter_map(|(name, _)| Some((name.as_str(), tensors.get(name)?))),
    )
}
