//! Reader for TF.js weights: a JSON manifest listing tensors in order, and one binary holding
//! them back to back with no header or padding.
//!
//! A tensor with a `quantization` entry is stored as one uint8 per value and decodes as
//! `q * scale + min`. TF.js evaluates that in f64 (JavaScript numbers) and rounds once to f32;
//! so does this reader, so that its weights are bit-identical to the reference's.
//!
//! The SSD detector's manifest also lists a few int32 graph constants (slice bounds, axes) that
//! the network does not use; they decode as TF.js decodes them (rounded to the nearest integer)
//! and are returned as f32, so that the manifest reads whole and its size check still holds.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{FaceModel, ModelError, ModelInfo, Tensor};

/// Largest manifest accepted, in bytes (the real one is about 12 KB).
const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// Largest weights binary accepted, in bytes (the real one is 6.4 MB).
const MAX_BINARY_BYTES: u64 = 256 << 20;

#[derive(Deserialize)]
struct WeightGroup {
    paths: Vec<String>,
    weights: Vec<WeightEntry>,
}

#[derive(Deserialize)]
struct WeightEntry {
    name: String,
    shape: Vec<usize>,
    dtype: String,
    #[serde(default)]
    quantization: Option<Quantization>,
}

#[derive(Deserialize)]
struct Quantization {
    dtype: String,
    scale: f64,
    min: f64,
}

/// How one tensor is stored in the binary.
enum Storage {
    F32,
    U8 {
        scale: f64,
        min: f64,
    },
    /// Raw little-endian int32.
    I32,
    /// uint8-quantised int32: `round(q * scale + min)`.
    U8Int {
        scale: f64,
        min: f64,
    },
}

impl Storage {
    fn bytes_per_value(&self) -> usize {
        match self {
            Self::F32 | Self::I32 => 4,
            Self::U8 { .. } | Self::U8Int { .. } => 1,
        }
    }
}

/// Reads the manifest at `manifest_path` and the binary it names (in the same directory) into a
/// validated [`FaceModel`].
pub fn read_model(manifest_path: &Path) -> Result<FaceModel, ModelError> {
    let tensors = read_tensors(manifest_path)?;
    FaceModel::from_tensors(ModelInfo::default(), tensors).map_err(|e| e.in_file(manifest_path))
}

/// Reads the manifest at `manifest_path` and its binary into named tensors, without checking
/// them against the architecture.
pub fn read_tensors(manifest_path: &Path) -> Result<HashMap<String, Tensor>, ModelError> {
    let manifest = read_bounded(manifest_path, MAX_MANIFEST_BYTES)?;
    let group = parse_manifest(manifest_path, &manifest)?;
    let bin_path = binary_path(manifest_path, &group)?;
    let binary = read_bounded(&bin_path, MAX_BINARY_BYTES)?;
    decode(&group, &bin_path, &binary)
}

/// Decodes `binary` by the manifest JSON `manifest`; `bin_path` only names the binary in errors.
/// Exposed for tests that feed altered bytes.
pub fn decode_bytes(
    manifest: &[u8],
    binary: &[u8],
    bin_path: &Path,
) -> Result<HashMap<String, Tensor>, ModelError> {
    let group = parse_manifest(bin_path, manifest)?;
    decode(&group, bin_path, binary)
}

fn read_bounded(path: &Path, limit_bytes: u64) -> Result<Vec<u8>, ModelError> {
    let io = |source| ModelError::Io {
        path: path.to_owned(),
        source,
    };
    let len = match fs::metadata(path) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ModelError::FileMissing {
                path: path.to_owned(),
            });
        }
        Err(e) => return Err(io(e)),
    };
    if len > limit_bytes {
        return Err(ModelError::TooLarge {
            path: path.to_owned(),
            limit_bytes,
            actual_bytes: len,
        });
    }
    fs::read(path).map_err(io)
}

fn parse_manifest(path: &Path, bytes: &[u8]) -> Result<WeightGroup, ModelError> {
    let mut groups: Vec<WeightGroup> =
        serde_json::from_slice(bytes).map_err(|source| ModelError::ManifestSyntax {
            path: path.to_owned(),
            source,
        })?;
    let layout = |reason: String| ModelError::ManifestLayout {
        path: path.to_owned(),
        reason,
    };
    if groups.len() != 1 {
        return Err(layout(format!(
            "{} weight groups, expected 1",
            groups.len()
        )));
    }
    let group = groups.remove(0);
    if group.paths.len() != 1 {
        return Err(layout(format!(
            "{} data files, expected 1",
            group.paths.len()
        )));
    }
    Ok(group)
}

fn binary_path(manifest_path: &Path, group: &WeightGroup) -> Result<PathBuf, ModelError> {
    let name = Path::new(&group.paths[0]);
    // The binary must sit beside the manifest: a manifest must not point elsewhere on disk.
    if name.components().count() != 1 || name.file_name().is_none() {
        return Err(ModelError::ManifestLayout {
            path: manifest_path.to_owned(),
            reason: format!("data file {:?} is not a plain file name", group.paths[0]),
        });
    }
    Ok(manifest_path.parent().unwrap_or(Path::new(".")).join(name))
}

fn storage_of(entry: &WeightEntry, path: &Path) -> Result<Storage, ModelError> {
    let unsupported = |storage: String| ModelError::UnsupportedStorage {
        path: path.to_owned(),
        name: entry.name.clone(),
        storage,
    };
    let int = match entry.dtype.as_str() {
        "float32" => false,
        "int32" => true,
        other => return Err(unsupported(other.to_owned())),
    };
    match &entry.quantization {
        None if int => Ok(Storage::I32),
        None => Ok(Storage::F32),
        Some(q) if q.dtype == "uint8" && q.scale.is_finite() && q.min.is_finite() => {
            let (scale, min) = (q.scale, q.min);
            Ok(if int {
                Storage::U8Int { scale, min }
            } else {
                Storage::U8 { scale, min }
            })
        }
        Some(q) => Err(unsupported(format!(
            "quantization {} ({}, {})",
            q.dtype, q.scale, q.min
        ))),
    }
}

fn decode(
    group: &WeightGroup,
    bin_path: &Path,
    binary: &[u8],
) -> Result<HashMap<String, Tensor>, ModelError> {
    // First the layout and the total size, so that a short file is reported as such rather
    // than as whichever tensor happened to run off its end.
    let mut plan = Vec::with_capacity(group.weights.len());
    let mut expected_bytes: u64 = 0;
    for entry in &group.weights {
        let storage = storage_of(entry, bin_path)?;
        let count = entry
            .shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d));
        let bytes = count.and_then(|c| c.checked_mul(storage.bytes_per_value()));
        let (Some(count), Some(bytes)) = (count, bytes) else {
            return Err(ModelError::ManifestLayout {
                path: bin_path.to_owned(),
                reason: format!(
                    "tensor {} has an impossible shape {:?}",
                    entry.name, entry.shape
                ),
            });
        };
        expected_bytes = expected_bytes.saturating_add(bytes as u64);
        plan.push((entry, storage, count, bytes));
    }
    if expected_bytes != binary.len() as u64 {
        return Err(ModelError::SizeMismatch {
            path: bin_path.to_owned(),
            expected_bytes,
            actual_bytes: binary.len() as u64,
        });
    }

    let mut tensors = HashMap::with_capacity(plan.len());
    let mut rest = binary;
    for (entry, storage, count, bytes) in plan {
        let (chunk, tail) = rest.split_at(bytes);
        rest = tail;
        let data = match storage {
            Storage::F32 => chunk
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Storage::U8 { scale, min } => chunk
                .iter()
                .map(|&q| (f64::from(q) * scale + min) as f32)
                .collect(),
            Storage::I32 => chunk
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32)
                .collect(),
            Storage::U8Int { scale, min } => chunk
                .iter()
                .map(|&q| (f64::from(q) * scale + min).round() as f32)
                .collect(),
        };
        debug_assert_eq!(Vec::<f32>::len(&data), count);
        let tensor = Tensor {
            shape: entry.shape.clone(),
            data,
        };
        if tensors.insert(entry.name.clone(), tensor).is_some() {
            return Err(ModelError::ManifestLayout {
                path: bin_path.to_owned(),
                reason: format!("tensor {} is listed twice", entry.name),
            });
        }
    }
    Ok(tensors)
}
