//! Shared helpers of the face tests: the reference fixture, the fetched model files and the
//! model, built once per test binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use gatematch::face::FaceModel;
use gatematch::face::preprocess::{FaceBox, Point};
use serde::Deserialize;

/// `tests/fixtures/face/reference.json`, written by scripts/reference/make_fixtures.mjs.
#[derive(Deserialize)]
pub struct Fixture {
    pub images: Vec<FixtureImage>,
}

#[derive(Deserialize)]
pub struct FixtureImage {
    pub image: String,
    pub width: u32,
    pub height: u32,
    pub rgb_sha256: String,
    pub faces: Vec<FixtureFace>,
}

#[derive(Deserialize)]
pub struct FixtureFace {
    pub landmarks: Vec<[f64; 2]>,
    pub landmarks_frame: Frame,
    #[serde(rename = "box")]
    pub face_box: FixtureBox,
    pub input_stats: InputStats,
    pub descriptor: Vec<f32>,
}

#[derive(Deserialize)]
pub struct Frame {
    pub width: u32,
    pub height: u32,
}

#[derive(Deserialize)]
pub struct FixtureBox {
    pub x: i64,
    pub y: i64,
    pub width: i64,
    pub height: i64,
}

#[derive(Deserialize)]
pub struct InputStats {
    pub normalized: Stats,
}

#[derive(Deserialize)]
pub struct Stats {
    pub min: f64,
    pub max: f64,
    pub sum: f64,
}

impl FixtureFace {
    pub fn points(&self) -> Vec<Point> {
        self.landmarks
            .iter()
            .map(|&[x, y]| Point { x, y })
            .collect()
    }

    /// The unclipped descriptor box, computed as the reference does.
    pub fn descriptor_box(&self) -> FaceBox {
        let frame = &self.landmarks_frame;
        gatematch::face::preprocess::descriptor_box(&self.points(), frame.width, frame.height)
            .expect("fixture landmarks are valid")
    }

    pub fn reference_box(&self) -> FaceBox {
        let b = &self.face_box;
        FaceBox {
            x: b.x,
            y: b.y,
            width: b.width,
            height: b.height,
        }
    }
}

pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/face")
}

pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let text = std::fs::read(fixture_dir().join("reference.json")).expect("fixture readable");
        serde_json::from_slice(&text).expect("fixture parses")
    })
}

/// The unpacked npm package's model directory, where `scripts/setup.sh` (through
/// `scripts/fetch-model.sh`) puts it; `GATEMATCH_FACE_MODELS` overrides it. A missing model
/// fails the test: CI fetches it, so its absence is a broken setup, not a reason to skip.
pub fn models_dir() -> PathBuf {
    let dir = std::env::var_os("GATEMATCH_FACE_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models/face-api-1.7.15"));
    require_models(dir)
}

/// `dir` when it holds the descriptor network's files; a panic naming the fix otherwise.
pub fn require_models(dir: PathBuf) -> PathBuf {
    let present = [
        "face_recognition_model.bin",
        "face_recognition_model-weights_manifest.json",
    ]
    .iter()
    .all(|name| dir.join(name).is_file());
    assert!(
        present,
        "face model files not found in {}: run scripts/fetch-model.sh (scripts/setup.sh does)",
        dir.display()
    );
    dir
}

pub fn manifest_path() -> PathBuf {
    models_dir().join("face_recognition_model-weights_manifest.json")
}

/// A fresh temporary directory, removed when dropped.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("gatematch-face-")
        .tempdir()
        .expect("temporary directory")
}

/// Imports the fetched network into an HDF5 model file in `dir`, as `gatematch model import`
/// does, and returns its path.
pub fn model_file(dir: &Path) -> PathBuf {
    let path = dir.join("face.h5");
    gatematch::face::model::file::import_tfjs(&manifest_path(), &path).expect("import");
    path
}

/// The model imported into HDF5 and loaded back, as the server would use it.
pub fn model() -> &'static FaceModel {
    static MODEL: OnceLock<FaceModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = temp_dir();
        gatematch::face::model::file::load_model(&model_file(dir.path())).expect("load")
    })
}

/// As [`model_file`], with the face detector and the landmark network in the file too, as
/// `gatematch model import` writes it.
pub fn model_file_with_detection(dir: &Path) -> PathBuf {
    let path = dir.join("face-detect.h5");
    gatematch::face::detect::import_tfjs_with_detection(&models_dir(), &path).expect("import");
    path
}
