//! Model weights: the TF.js reader checks sizes exactly, the HDF5 model file round-trips, and
//! damaged or missing files are refused with errors that name the file.

mod face_support;

use std::fs;

use face_support::{manifest_path, models_dir, temp_dir};
use gatematch::face::ModelError;
use gatematch::face::model::{file, tfjs};

fn manifest_and_bin() -> (Vec<u8>, Vec<u8>) {
    let dir = models_dir();
    (
        fs::read(dir.join("face_recognition_model-weights_manifest.json")).unwrap(),
        fs::read(dir.join("face_recognition_model.bin")).unwrap(),
    )
}

#[test]
fn published_weights_decode_completely() {
    let model = tfjs::read_model(&manifest_path()).unwrap();
    assert_eq!(model.parameter_count(), 5_614_592);
    // First value of the stem filters: q * scale + min with the manifest's constants.
    let first = model.tensor("conv32_down/conv/filters").unwrap().data[0];
    assert!(first.is_finite());
}

#[test]
fn truncated_or_padded_binary_is_a_size_mismatch() {
    let (manifest, bin) = manifest_and_bin();
    let path = std::path::Path::new("face_recognition_model.bin");
    for damaged in [&bin[..bin.len() - 1], &[bin.as_slice(), &[0]].concat()[..]] {
        let err = tfjs::decode_bytes(&manifest, damaged, path).unwrap_err();
        match err {
            ModelError::SizeMismatch {
                expected_bytes,
                actual_bytes,
                ..
            } => {
                assert_eq!(expected_bytes, bin.len() as u64);
                assert_eq!(actual_bytes, damaged.len() as u64);
            }
            other => panic!("expected SizeMismatch, got {other}"),
        }
    }
}

#[test]
fn malformed_manifests_are_typed_errors() {
    let (manifest, bin) = manifest_and_bin();
    let path = std::path::Path::new("m.json");
    let err = tfjs::decode_bytes(b"{not json", &bin, path).unwrap_err();
    assert!(matches!(err, ModelError::ManifestSyntax { .. }), "{err}");
    let err = tfjs::decode_bytes(b"[]", &bin, path).unwrap_err();
    assert!(matches!(err, ModelError::ManifestLayout { .. }), "{err}");
    let text = String::from_utf8(manifest)
        .unwrap()
        .replacen("\"uint8\"", "\"uint16\"", 1);
    let err = tfjs::decode_bytes(text.as_bytes(), &bin, path).unwrap_err();
    assert!(
        matches!(err, ModelError::UnsupportedStorage { .. }),
        "{err}"
    );
}

#[test]
fn hdf5_model_round_trips_with_metadata() {
    let from_tfjs = tfjs::read_model(&manifest_path()).unwrap();
    let dir = temp_dir();
    let path = dir.path().join("roundtrip.h5");
    file::write_model(&from_tfjs, &path).unwrap();
    let loaded = file::load_model(&path).unwrap();
    assert_eq!(loaded.info(), from_tfjs.info());
    assert_eq!(loaded.info().output_dim, 128);
    assert_eq!(loaded.info().distance, "euclidean");
    assert_eq!(loaded.info().default_threshold, 0.6);
    assert_eq!(
        file::weights_digest(&loaded),
        file::weights_digest(&from_tfjs)
    );
    for (name, _) in gatematch::face::model::tensor_specs() {
        assert_eq!(loaded.tensor(&name), from_tfjs.tensor(&name), "{name}");
    }
}

#[test]
fn missing_model_file_names_the_file_and_the_fix() {
    let dir = temp_dir();
    let path = dir.path().join("absent.h5");
    let err = file::load_model(&path).unwrap_err();
    assert!(matches!(err, ModelError::FileMissing { .. }));
    let message = err.to_string();
    assert!(
        message.contains("absent.h5") && message.contains("fetch-model.sh"),
        "{message}"
    );
}

#[test]
fn corrupt_model_files_are_refused() {
    let model = tfjs::read_model(&manifest_path()).unwrap();
    let dir = temp_dir();
    let good = dir.path().join("good.h5");
    file::write_model(&model, &good).unwrap();
    let bytes = fs::read(&good).unwrap();

    // Bit flips in the weight data (most of the file), truncation, and garbage.
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    for fraction in [3, 2] {
        let mut flipped = bytes.clone();
        flipped[bytes.len() / fraction] ^= 0x40;
        cases.push(("bit flip", flipped));
    }
    cases.push(("truncated", bytes[..bytes.len() / 2].to_vec()));
    cases.push(("not hdf5", b"definitely not an HDF5 file".to_vec()));

    for (i, (what, damaged)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("damaged-{i}.h5"));
        fs::write(&path, damaged).unwrap();
        let err = file::load_model(&path).expect_err(what);
        let message = err.to_string();
        assert!(
            message.contains(&format!("damaged-{i}.h5")),
            "{what}: {message}"
        );
        assert!(
            matches!(
                err,
                ModelError::DigestMismatch { .. } | ModelError::Hdf5 { .. }
            ),
            "{what}: {err}"
        );
    }
}

#[test]
fn absent_model_files_fail_the_tests_with_the_fix() {
    let dir = temp_dir();
    let panic = std::panic::catch_unwind(|| face_support::require_models(dir.path().to_owned()))
        .expect_err("an empty directory has no model");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("scripts/fetch-model.sh"), "{message}");
}
