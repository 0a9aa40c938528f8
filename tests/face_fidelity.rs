//! The CPU pipeline against the reference (face-api 1.7.15 on TF.js's CPU backend): same
//! pixels, same box, descriptors within 1e-4 per element, same decisions.

mod face_support;

use face_support::{fixture, fixture_dir, model};
use gatematch::face::model::DEFAULT_THRESHOLD;
use gatematch::face::network::reference;
use gatematch::face::preprocess::{DecodeLimits, FaceBatch, RgbImage, decode_image};
use gatematch::face::{CpuNetwork, Descriptor};
use sha2::{Digest, Sha256};

/// MODEL.md's bar for the CPU.
const TOLERANCE: f32 = 1e-4;

fn decoded(name: &str) -> RgbImage {
    let bytes = std::fs::read(fixture_dir().join(name)).expect("fixture image");
    decode_image(&bytes, &DecodeLimits::default()).expect("decodes")
}

/// Every fixture face, preprocessed from its landmarks, in fixture order.
fn fixture_batch() -> FaceBatch {
    let mut batch = FaceBatch::default();
    for image in &fixture().images {
        let rgb = decoded(&image.image);
        for face in &image.faces {
            batch.push_face(&rgb, face.descriptor_box()).unwrap();
        }
    }
    batch
}

fn reference_descriptors() -> Vec<&'static [f32]> {
    fixture()
        .images
        .iter()
        .flat_map(|i| &i.faces)
        .map(|f| f.descriptor.as_slice())
        .collect()
}

fn assert_close(ours: &[Descriptor], label: &str) {
    let theirs = reference_descriptors();
    assert_eq!(ours.len(), theirs.len());
    let mut worst = 0.0f32;
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        let diff = a.max_abs_diff(b);
        assert!(
            diff <= TOLERANCE,
            "{label}: face {i} differs by {diff:e} (> {TOLERANCE:e})"
        );
        worst = worst.max(diff);
    }
    println!("{label}: max |difference| {worst:e}");
}

#[test]
fn decoded_pixels_equal_the_reference_decoders() {
    for image in &fixture().images {
        let rgb = decoded(&image.image);
        assert_eq!((rgb.width(), rgb.height()), (image.width, image.height));
        let digest: String = Sha256::digest(rgb.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            digest, image.rgb_sha256,
            "{}: decoded pixels differ",
            image.image
        );
    }
}

#[test]
fn descriptor_box_equals_the_reference_box() {
    for image in &fixture().images {
        for face in &image.faces {
            let clipped = face
                .descriptor_box()
                .clipped(image.width, image.height)
                .unwrap();
            assert_eq!(clipped, face.reference_box(), "{}", image.image);
        }
    }
    // One fixture face runs off the image's left edge, so the clipped, non-square path is
    // covered.
    let boxes = fixture()
        .images
        .iter()
        .flat_map(|i| &i.faces)
        .map(|f| &f.face_box);
    assert!(boxes.into_iter().any(|b| b.width != b.height));
}

#[test]
fn network_input_matches_the_reference_statistics() {
    let batch = fixture_batch();
    let faces = fixture().images.iter().flat_map(|i| &i.faces);
    for (input, face) in batch.as_slice().chunks(150 * 150 * 3).zip(faces) {
        let stats = &face.input_stats.normalized;
        let sum: f64 = input.iter().map(|&v| f64::from(v)).sum();
        let min = input.iter().copied().fold(f32::INFINITY, f32::min);
        let max = input.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert!((sum - stats.sum).abs() < 1e-3, "sum {sum} vs {}", stats.sum);
        assert_eq!(f64::from(min), stats.min);
        assert_eq!(f64::from(max), stats.max);
    }
}

#[test]
fn plain_reference_network_matches_within_1e_4() {
    assert_close(
        &reference::describe(model(), &fixture_batch()),
        "reference network",
    );
}

#[test]
fn fast_network_matches_within_1e_4_batched_and_single() {
    let batch = fixture_batch();
    for threads in [1, 2, 3] {
        let network = CpuNetwork::new(model(), threads).unwrap();
        assert_close(
            &network.describe(&batch),
            &format!("batched, {threads} threads"),
        );
    }
    let network = CpuNetwork::new(model(), 2).unwrap();
    let one_by_one: Vec<Descriptor> = batch
        .as_slice()
        .chunks(150 * 150 * 3)
        .flat_map(|input| {
            let mut single = FaceBatch::default();
            assert!(single.push_normalized(input));
            network.describe(&single)
        })
        .collect();
    assert_close(&one_by_one, "one face per call");
}

#[test]
fn same_person_matches_and_different_people_do_not() {
    let network = CpuNetwork::new(model(), 2).unwrap();
    let descriptors = network.describe(&fixture_batch());
    let names: Vec<&str> = fixture()
        .images
        .iter()
        .flat_map(|i| i.faces.iter().map(|_| i.image.as_str()))
        .collect();
    let mut pairs = (0, 0);
    for i in 0..names.len() {
        for j in i + 1..names.len() {
            let same = names[i].starts_with("obama") == names[j].starts_with("obama");
            let d = descriptors[i].distance(&descriptors[j]);
            if same {
                pairs.0 += 1;
                assert!(
                    d < DEFAULT_THRESHOLD,
                    "{} vs {}: {d} not below threshold",
                    names[i],
                    names[j]
                );
            } else {
                pairs.1 += 1;
                assert!(
                    d > DEFAULT_THRESHOLD,
                    "{} vs {}: {d} not above threshold",
                    names[i],
                    names[j]
                );
            }
        }
    }
    assert!(
        pairs.0 >= 1 && pairs.1 >= 1,
        "fixture lacks same- or different-person pairs"
    );
}

#[test]
fn empty_batch_gives_no_descriptors() {
    let network = CpuNetwork::new(model(), 2).unwrap();
    assert!(network.describe(&FaceBatch::default()).is_empty());
}
