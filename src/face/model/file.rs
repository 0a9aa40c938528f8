//! gatematch's own model file: one HDF5 file per network, holding every tensor as a dataset and
//! the facts needed to use it (input size, mean, output length, distance, threshold) as
//! attributes.
//!
//! Layout:
//!
//! ```text
//! /                      attributes: format_version, architecture, source, input_size,
//!                        mean_rgb[3], output_dim, distance, default_threshold, weights_sha256
//! /weights/<name>        one f32 dataset per tensor, named as in the TF.js manifest
//!                        (e.g. /weights/conv64_down/conv1/conv/filters, shape [3, 3, 32, 64])
//! ```
//!
//! HDF5 checksums its own metadata but not raw data, so the importer records a SHA-256 over all
//! tensors (`weights_sha256`) and the loader recomputes it: a flipped bit anywhere in the
//! weights is refused at load.

use std::collections::HashMap;
use std::path::Path;

use hdf5::types::VarLenUnicode;
use hdf5::{File, Group, Location};
use sha2::{Digest, Sha256};

use super::{FaceModel, ModelError, ModelInfo, Tensor, tensor_specs};

/// Version of the layout above; bump on any incompatible change.
pub const FORMAT_VERSION: u32 = 1;
/// Where the weights came from, recorded for audits.
pub const SOURCE: &str = "npm @vladmandic/face-api@1.7.15 model/face_recognition_model (MIT)";
const WEIGHTS_GROUP: &str = "weights";

/// Converts the TF.js descriptor network at `manifest_path` (the
/// `face_recognition_model-weights_manifest.json` of the npm package, with its `.bin` beside it)
/// into one HDF5 model file at `out_path`, replacing any file there.
pub fn import_tfjs(manifest_path: &Path, out_path: &Path) -> Result<FaceModel, ModelError> {
    let model = super::tfjs::read_model(manifest_path)?;
    write_model(&model, out_path)?;
    Ok(model)
}

/// Writes `model` to `out_path`. The file is written beside the target and renamed into place,
/// so a crash never leaves a half-written model under the final name.
pub fn write_model(model: &FaceModel, out_path: &Path) -> Result<(), ModelError> {
    let tmp_path = out_path.with_extension("h5.partial");
    let h5 = |source| ModelError::Hdf5 {
        path: tmp_path.clone(),
        source,
    };
    {
        let file = File::create(&tmp_path).map_err(h5)?;
        write_attributes(&file, model.info(), &weights_digest(model)).map_err(h5)?;
        let root = file.create_group(WEIGHTS_GROUP).map_err(h5)?;
        for (name, _) in tensor_specs() {
            let tensor = model.expect_tensor(&name);
            let (group, leaf) = ensure_parent(&root, &name).map_err(h5)?;
            let dataset = group
                .new_dataset::<f32>()
                .shape(tensor.shape.clone())
                .create(leaf);
            dataset
                .and_then(|d| d.write_raw(&tensor.data[..]))
                .map_err(h5)?;
        }
        file.flush().map_err(h5)?;
    }
    std::fs::rename(&tmp_path, out_path).map_err(|source| ModelError::Io {
        path: out_path.to_owned(),
        source,
    })
}

/// Loads and checks the model file at `path`: metadata, every tensor's shape, finiteness and
/// the weights digest.
pub fn load_model(path: &Path) -> Result<FaceModel, ModelError> {
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
    let info = read_attributes(&file, path)?;
    let root = file.group(WEIGHTS_GROUP).map_err(h5)?;
    let mut tensors = HashMap::new();
    for (name, _) in tensor_specs() {
        if !link_path_exists(&root, &name) {
            return Err(ModelError::MissingTensor { name }.in_file(path));
        }
        let dataset = root.dataset(&name).map_err(h5)?;
        let tensor = Tensor {
            shape: dataset.shape(),
            data: dataset.read_raw::<f32>().map_err(h5)?,
        };
        tensors.insert(name, tensor);
    }
    let model = FaceModel::from_tensors(info, tensors).map_err(|e| e.in_file(path))?;

    let expected = read_string(&file, "weights_sha256", path)?;
    let actual = weights_digest(&model);
    if expected != actual {
        return Err(ModelError::DigestMismatch {
            path: path.to_owned(),
            expected,
            actual,
        });
    }
    Ok(model)
}

/// SHA-256 over every tensor in architecture order: name, a zero byte, each dimension as
/// little-endian u64, then the values as little-endian f32. Hex, lowercase.
pub fn weights_digest(model: &FaceModel) -> String {
    let specs = tensor_specs();
    tensors_digest(
        specs
            .iter()
            .map(|(name, _)| (name.as_str(), model.expect_tensor(name))),
    )
}

/// SHA-256 over `tensors` in the order given, each as [`weights_digest`] hashes one. Hex,
/// lowercase. Every weight group of the model file is digested this way.
pub(crate) fn tensors_digest<'a>(tensors: impl Iterator<Item = (&'a str, &'a Tensor)>) -> String {
    let mut hasher = Sha256::new();
    for (name, tensor) in tensors {
        hasher.update(name.as_bytes());
        hasher.update([0u8]);
        for &dim in &tensor.shape {
            hasher.update((dim as u64).to_le_bytes());
        }
        for value in &tensor.data {
            hasher.update(value.to_le_bytes());
        }
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Returns the group that will hold `name`'s last component, creating the groups above it.
pub(crate) fn ensure_parent<'n>(root: &Group, name: &'n str) -> hdf5::Result<(Group, &'n str)> {
    let (dirs, leaf) = name.rsplit_once('/').unwrap_or(("", name));
    let mut group = root.clone();
    for part in dirs.split('/').filter(|p| !p.is_empty()) {
        group = if group.link_exists(part) {
            group.group(part)?
        } else {
            group.create_group(part)?
        };
    }
    Ok((group, leaf))
}

/// `link_exists` on a nested path fails inside HDF5 when a middle component is missing, so walk
/// it one component at a time.
pub(crate) fn link_path_exists(root: &Group, name: &str) -> bool {
    let mut group = root.clone();
    let mut parts = name.split('/').peekable();
    while let Some(part) = parts.next() {
        if !group.link_exists(part) {
            return false;
        }
        if parts.peek().is_some() {
            match group.group(part) {
                Ok(next) => group = next,
                Err(_) => return false,
            }
        }
    }
    true
}

fn write_attributes(loc: &Location, info: &ModelInfo, digest: &str) -> hdf5::Result<()> {
    write_string(loc, "architecture", &info.architecture)?;
    write_string(loc, "source", SOURCE)?;
    write_string(loc, "distance", &info.distance)?;
    write_string(loc, "weights_sha256", digest)?;
    loc.new_attr::<u32>()
        .create("format_version")?
        .write_scalar(&FORMAT_VERSION)?;
    loc.new_attr::<u64>()
        .create("input_size")?
        .write_scalar(&(info.input_size as u64))?;
    loc.new_attr::<u64>()
        .create("output_dim")?
        .write_scalar(&(info.output_dim as u64))?;
    loc.new_attr::<f32>()
        .create("default_threshold")?
        .write_scalar(&info.default_threshold)?;
    loc.new_attr::<f32>()
        .shape([3])
        .create("mean_rgb")?
        .write_raw(&info.mean_rgb[..])?;
    Ok(())
}

pub(crate) fn write_string(loc: &Location, name: &str, value: &str) -> hdf5::Result<()> {
    let value: VarLenUnicode = value
        .parse()
        .map_err(|e| hdf5::Error::from(format!("attribute {name}: {e}")))?;
    loc.new_attr::<VarLenUnicode>()
        .create(name)?
        .write_scalar(&value)
}

fn read_attributes(loc: &Location, path: &Path) -> Result<ModelInfo, ModelError> {
    let bad = |name: &str, reason: String| ModelError::Attribute {
        path: path.to_owned(),
        name: name.to_owned(),
        reason,
    };
    let version: u32 = read_scalar(loc, "format_version", path)?;
    if version != FORMAT_VERSION {
        return Err(bad(
            "format_version",
            format!("{version}, this build reads {FORMAT_VERSION}"),
        ));
    }
    let expected = ModelInfo::default();
    let info = ModelInfo {
        architecture: read_string(loc, "architecture", path)?,
        input_size: read_scalar::<u64>(loc, "input_size", path)? as usize,
        mean_rgb: read_mean(loc, path)?,
        output_dim: read_scalar::<u64>(loc, "output_dim", path)? as usize,
        distance: read_string(loc, "distance", path)?,
        default_threshold: read_scalar(loc, "default_threshold", path)?,
    };
    // The network code is written for this one architecture; any other value means another
    // model, which must not be run as this one.
    let checks = [
        ("architecture", info.architecture == expected.architecture),
        ("input_size", info.input_size == expected.input_size),
        ("mean_rgb", info.mean_rgb == expected.mean_rgb),
        ("output_dim", info.output_dim == expected.output_dim),
        ("distance", info.distance == expected.distance),
    ];
    if let Some((name, _)) = checks.iter().find(|(_, ok)| !ok) {
        return Err(bad(
            name,
            "value differs from the architecture this build runs".to_owned(),
        ));
    }
    if !(info.default_threshold.is_finite() && info.default_threshold > 0.0) {
        return Err(bad(
            "default_threshold",
            format!("{} is not a positive number", info.default_threshold),
        ));
    }
    Ok(info)
}

pub(crate) fn read_scalar<T: hdf5::H5Type>(
    loc: &Location,
    name: &str,
    path: &Path,
) -> Result<T, ModelError> {
    loc.attr(name)
        .and_then(|a| a.read_scalar::<T>())
        .map_err(|e| ModelError::Attribute {
            path: path.to_owned(),
            name: name.to_owned(),
            reason: e.to_string(),
        })
}

pub(crate) fn read_string(loc: &Location, name: &str, path: &Path) -> Result<String, ModelError> {
    read_scalar::<VarLenUnicode>(loc, name, path).map(|s| s.as_str().to_owned())
}

fn read_mean(loc: &Location, path: &Path) -> Result<[f32; 3], ModelError> {
    let values = loc.attr("mean_rgb").and_then(|a| a.read_raw::<f32>());
    match values.as_deref() {
        Ok(&[r, g, b]) => Ok([r, g, b]),
        Ok(other) => Err(ModelError::Attribute {
            path: path.to_owned(),
            name: "mean_rgb".to_owned(),
            reason: format!("{} values, expected 3", other.len()),
        }),
        Err(e) => Err(ModelError::Attribute {
            path: path.to_owned(),
            name: "mean_rgb".to_owned(),
            reason: e.to_string(),
        }),
    }
}
