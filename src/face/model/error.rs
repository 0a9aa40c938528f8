//! Errors of reading, converting and loading model weights.

use std::path::PathBuf;

/// Why a model could not be read, converted or loaded.
///
/// Variants that concern a file name it; the message says what to do next where there is
/// something to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The model file does not exist.
    #[error(
        "model file {path} not found; create it with `scripts/fetch-model.sh` and then \
         `gatematch model import --out {path}`"
    )]
    FileMissing {
        /// The path that was looked for.
        path: PathBuf,
    },
    /// A file could not be read or written.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating-system error.
        source: std::io::Error,
    },
    /// A file is larger than this reader accepts.
    #[error("{path} has {actual_bytes} bytes, more than the {limit_bytes} accepted")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Largest size accepted.
        limit_bytes: u64,
        /// Size found.
        actual_bytes: u64,
    },
    /// The manifest is not JSON of the TF.js weights-manifest form.
    #[error("{path} is not a TF.js weights manifest: {source}")]
    ManifestSyntax {
        /// The manifest.
        path: PathBuf,
        /// Where parsing stopped.
        source: serde_json::Error,
    },
    /// The manifest is well formed but not of the one-group, one-file form this model uses.
    #[error("{path}: unsupported manifest layout: {reason}")]
    ManifestLayout {
        /// The manifest.
        path: PathBuf,
        /// What was found.
        reason: String,
    },
    /// A tensor's storage type is not one this reader decodes.
    #[error("{path}: tensor {name} has unsupported storage {storage}")]
    UnsupportedStorage {
        /// The manifest.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// The dtype or quantisation dtype found.
        storage: String,
    },
    /// The tensors of the manifest do not add up to the binary's length.
    #[error(
        "{path}: the manifest's tensors take {expected_bytes} bytes but the file has \
         {actual_bytes}; the weights file is truncated or belongs to another model, fetch it again"
    )]
    SizeMismatch {
        /// The weights binary.
        path: PathBuf,
        /// Bytes the manifest accounts for.
        expected_bytes: u64,
        /// Bytes in the file.
        actual_bytes: u64,
    },
    /// An expected tensor is absent.
    #[error("tensor {name} is missing")]
    MissingTensor {
        /// The tensor.
        name: String,
    },
    /// A tensor the architecture does not have is present.
    #[error("unexpected tensor {name}: the weights are not of this architecture")]
    UnexpectedTensor {
        /// The tensor.
        name: String,
    },
    /// A tensor has the wrong shape.
    #[error("tensor {name} has shape {actual:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The tensor.
        name: String,
        /// Shape of the architecture.
        expected: Vec<usize>,
        /// Shape found.
        actual: Vec<usize>,
    },
    /// A tensor holds NaN or infinity.
    #[error("tensor {name} holds a non-finite value at index {index}")]
    NonFinite {
        /// The tensor.
        name: String,
        /// Flat index of the first such value.
        index: usize,
    },
    /// The HDF5 library refused the file or an object in it.
    #[error(
        "{path}: cannot use HDF5 model file ({source}); it is damaged or not a model file: \
         re-create it with `gatematch model import`"
    )]
    Hdf5 {
        /// The model file.
        path: PathBuf,
        /// The library's error.
        source: hdf5::Error,
    },
    /// A metadata attribute is missing or holds an unexpected value.
    #[error("{path}: attribute {name}: {reason}; re-create the file with `gatematch model import`")]
    Attribute {
        /// The model file.
        path: PathBuf,
        /// The attribute.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The weights read back do not hash to the digest recorded at import.
    #[error(
        "{path}: weights digest {actual} differs from the recorded {expected}: the file is \
         corrupt; re-create it with `gatematch model import`"
    )]
    DigestMismatch {
        /// The model file.
        path: PathBuf,
        /// Digest stored in the file.
        expected: String,
        /// Digest of the data read.
        actual: String,
    },
    /// A tensor check failed while reading a file; wraps the check's error with the file.
    #[error("{path}: {source}")]
    InFile {
        /// The file.
        path: PathBuf,
        /// The failed check.
        source: Box<ModelError>,
    },
}

impl ModelError {
    /// Attaches `path` to a tensor-level error.
    pub(crate) fn in_file(self, path: &std::path::Path) -> Self {
        match self {
            Self::MissingTensor { .. }
            | Self::UnexpectedTensor { .. }
            | Self::ShapeMismatch { .. }
            | Self::NonFinite { .. } => Self::InFile {
                path: path.to_owned(),
                source: Box::new(self),
            },
            other => other,
        }
    }
}
