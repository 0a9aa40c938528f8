//! HDF5 snapshots of a gallery, for audits, migration and capacity tests.
//!
//! One file holds one model:
//!
//! * `templates`: an N × D dataset of f32, one template per row;
//! * `person_ids`: N variable-length UTF-8 strings, the owner of each row;
//! * file attributes `model_id` (string), `dimension` (u32) and `format_version` (u32).
//!
//! h5py reads it as it is (`f["templates"][:]`, `f.attrs["model_id"]`). Values are written
//! and read as raw f32, so a round trip is bit-exact.

use std::path::{Path, PathBuf};

use hdf5::types::VarLenUnicode;

/// The layout version written into every snapshot.
pub const FORMAT_VERSION: u32 = 1;

/// What can fail reading or writing a snapshot.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The HDF5 library failed.
    #[error("{path}: {source}")]
    Hdf5 {
        /// The file.
        path: PathBuf,
        /// What the library said.
        source: hdf5::Error,
    },
    /// The file does not have the snapshot layout.
    #[error("{path}: not a gatematch snapshot: {problem}")]
    Layout {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// A snapshot in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// The model all templates belong to.
    pub model_id: String,
    /// Values per template.
    pub dimension: usize,
    /// Row-major templates, `dimension` values each.
    pub templates: Vec<f32>,
    /// One owner per template.
    pub person_ids: Vec<String>,
}

impl Snapshot {
    /// Templates held.
    pub fn len(&self) -> usize {
        self.person_ids.len()
    }

    /// Whether the snapshot holds no template.
    pub fn is_empty(&self) -> bool {
        self.person_ids.is_empty()
    }
}

/// Writes `snapshot` to `path`, replacing any file there.
pub fn write(path: &Path, snapshot: &Snapshot) -> Result<(), SnapshotError> {
    let h5 = |source| SnapshotError::Hdf5 {
        path: path.to_owned(),
        source,
    };
    let layout = |problem: &str| SnapshotError::Layout {
        path: path.to_owned(),
        problem: problem.into(),
    };
    if snapshot.templates.len() != snapshot.len() * snapshot.dimension {
        return Err(layout("template block does not match the person ids"));
    }
    let file = hdf5::File::create(path).map_err(h5)?;
    let templates = file
        .new_dataset::<f32>()
        .shape((snapshot.len(), snapshot.dimension))
        .create("templates")
        .map_err(h5)?;
    templates.write_raw(&snapshot.templates).map_err(h5)?;
    let ids = snapshot
        .person_ids
        .iter()
        .map(|id| {
            id.parse::<VarLenUnicode>()
                .map_err(|_| layout("person id is not valid text"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let person_ids = file
        .new_dataset::<VarLenUnicode>()
        .shape(snapshot.len())
        .create("person_ids")
        .map_err(h5)?;
    person_ids.write_raw(&ids).map_err(h5)?;
    let model_id: VarLenUnicode = snapshot
        .model_id
        .parse()
        .map_err(|_| layout("model id is not valid text"))?;
    file.new_attr::<VarLenUnicode>()
        .create("model_id")
        .map_err(h5)?
        .write_scalar(&model_id)
        .map_err(h5)?;
    file.new_attr::<u32>()
        .create("dimension")
        .map_err(h5)?
        .write_scalar(&(snapshot.dimension as u32))
        .map_err(h5)?;
    file.new_attr::<u32>()
        .create("format_version")
        .map_err(h5)?
        .write_scalar(&FORMAT_VERSION)
        .map_err(h5)?;
    file.close().map_err(h5)
}

/// Reads the snapshot at `path`, checking its layout.
pub fn read(path: &Path) -> Result<Snapshot, SnapshotError> {
    let h5 = |source| SnapshotError::Hdf5 {
        path: path.to_owned(),
        source,
    };
    let layout = |problem: String| SnapshotError::Layout {
        path: path.to_owned(),
        problem,
    };
    let file = hdf5::File::open(path).map_err(h5)?;
    let model_id: VarLenUnicode = file
        .attr("model_id")
        .and_then(|a| a.read_scalar())
        .map_err(|e| layout(format!("attribute model_id: {e}")))?;
    let dimension: u32 = file
        .attr("dimension")
        .and_then(|a| a.read_scalar())
        .map_err(|e| layout(format!("attribute dimension: {e}")))?;
    let templates_ds = file
        .dataset("templates")
        .map_err(|e| layout(format!("dataset templates: {e}")))?;
    let shape = templates_ds.shape();
    if shape.len() != 2 || shape[1] != dimension as usize {
        return Err(layout(format!(
            "templates have shape {shape:?}, dimension is {dimension}"
        )));
    }
    let templates: Vec<f32> = templates_ds.read_raw().map_err(h5)?;
    let ids: Vec<VarLenUnicode> = file
        .dataset("person_ids")
        .and_then(|d| d.read_raw())
        .map_err(|e| layout(format!("dataset person_ids: {e}")))?;
    if ids.len() != shape[0] {
        return Err(layout(format!(
            "{} person ids for {} templates",
            ids.len(),
            shape[0]
        )));
    }
    if !templates.iter().all(|v| v.is_finite()) {
        return Err(layout("templates hold values that are not finite".into()));
    }
    Ok(Snapshot {
        model_id: model_id.as_str().to_owned(),
        dimension: dimension as usize,
        templates,
        person_ids: ids.iter().map(|s| s.as_str().to_owned()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.h5");
        let snapshot = Snapshot {
            model_id: "synthetic-128".into(),
            dimension: 3,
            templates: vec![0.1, -2.5e-30, 7.0, f32::MIN_POSITIVE, 1.0 / 3.0, -0.0],
            person_ids: vec!["D:T22000129".into(), "NLD:ÅÆØ-7".into()],
        };
        write(&path, &snapshot).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back.model_id, snapshot.model_id);
        assert_eq!(back.person_ids, snapshot.person_ids);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back.templates), bits(&snapshot.templates));
    }

    #[test]
    fn empty_snapshot_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.h5");
        let snapshot = Snapshot {
            model_id: "m".into(),
            dimension: 8,
            templates: vec![],
            person_ids: vec![],
        };
        write(&path, &snapshot).unwrap();
        assert_eq!(read(&path).unwrap(), snapshot);
    }

    #[test]
    fn a_file_that_is_not_a_snapshot_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.h5");
        let file = hdf5::File::create(&path).unwrap();
        file.new_dataset::<f32>()
            .shape((2, 2))
            .create("something")
            .unwrap();
        file.close().unwrap();
        assert!(matches!(read(&path), Err(SnapshotError::Layout { .. })));
        assert!(matches!(
            read(&dir.path().join("missing.h5")),
            Err(SnapshotError::Hdf5 { .. })
        ));
    }
}
