//! The GPU descriptor network against the CPU one: the fixture photos and seeded random crops,
//! at batch sizes 1 and 3 and across a pass boundary, within MODEL.md's 1e-3 per value, with
//! the same decisions at the threshold; and a lost device answered with an error, not a panic.
//!
//! On lavapipe each face takes seconds: batches stay small. Without an adapter the tests skip
//! and say why (or fail, with GATEMATCH_REQUIRE_GPU=1).

mod common;
mod face_support;

use std::sync::OnceLock;

use common::gpu::{context, own_context};
use face_support::{fixture, fixture_dir, model};
use gatematch::face::model::DEFAULT_THRESHOLD;
use gatematch::face::preprocess::crop::INPUT_LEN;
use gatematch::face::preprocess::{DecodeLimits, FaceBatch, decode_image};
use gatematch::face::{CpuNetwork, Descriptor, EmbedError, network::GpuNetwork};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// MODEL.md's bar for the GPU, per descriptor value.
const TOLERANCE: f32 = 1e-3;

fn cpu() -> &'static CpuNetwork {
    static CPU: OnceLock<CpuNetwork> = OnceLock::new();
    CPU.get_or_init(|| CpuNetwork::new(model(), 2).expect("cpu network"))
}

/// The network on the shared context, or `None` after saying why there is none.
fn gpu() -> Option<&'static GpuNetwork> {
    static GPU: OnceLock<GpuNetwork> = OnceLock::new();
    let ctx = context()?;
    Some(GPU.get_or_init(|| GpuNetwork::new(model(), ctx.clone()).expect("gpu network")))
}

fn fixture_batch() -> FaceBatch {
    let mut batch = FaceBatch::default();
    for image in &fixture().images {
        let bytes = std::fs::read(fixture_dir().join(&image.image)).expect("fixture image");
        let rgb = decode_image(&bytes, &DecodeLimits::default()).expect("decodes");
        for face in &image.faces {
            batch.push_face(&rgb, face.descriptor_box()).unwrap();
        }
    }
    batch
}

/// `faces` crops of uniform noise over the normalised range (-0.48 .. 0.6), from `seed`.
fn random_batch(faces: usize, seed: u64) -> FaceBatch {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut batch = FaceBatch::with_capacity(faces);
    let mut input = vec![0.0f32; INPUT_LEN];
    for _ in 0..faces {
        input.fill_with(|| rng.random_range(-0.48f32..0.6));
        assert!(batch.push_normalized(&input));
    }
    batch
}

/// Asserts every GPU descriptor within [`TOLERANCE`] of the CPU's; returns the largest
/// difference.
fn assert_close(gpu: &[Descriptor], cpu: &[Descriptor], label: &str) -> f32 {
    assert_eq!(gpu.len(), cpu.len(), "{label}: descriptor count");
    let mut worst = 0.0f32;
    for (i, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        let diff = g.max_abs_diff(c.as_slice());
        assert!(
            diff <= TOLERANCE,
            "{label}: face {i} differs by {diff:e} (> {TOLERANCE:e})"
        );
        // A descriptor of zeros or NaN would pass a loose comparison against a bad CPU path.
        let norm = g.as_slice().iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!(
            norm.is_finite() && norm > 0.1,
            "{label}: face {i} norm {norm}"
        );
        worst = worst.max(diff);
    }
    println!("{label}: max |GPU - CPU| {worst:e}");
    worst
}

#[test]
fn fixture_descriptors_match_the_cpu_and_decide_the_same() {
    let Some(gpu) = gpu() else { return };
    let batch = fixture_batch();
    assert_eq!(batch.len(), 3);
    let ours = gpu.describe(&batch).expect("gpu describe");
    let theirs = cpu().describe(&batch);
    assert_close(&ours, &theirs, "fixtures, batch 3");

    // The same decision at the threshold for every pair, and the pairs the fixture names:
    // the two photos of one person match, the other person matches neither.
    let mut decisions = Vec::new();
    for i in 0..ours.len() {
        for j in i + 1..ours.len() {
            let (g, c) = (ours[i].distance(&ours[j]), theirs[i].distance(&theirs[j]));
            assert!(
                (g - c).abs() < 2e-3,
                "pair {i},{j}: distance {g} against {c}"
            );
            let matched = g < DEFAULT_THRESHOLD;
            assert_eq!(matched, c < DEFAULT_THRESHOLD, "pair {i},{j}");
            decisions.push(matched);
        }
    }
    assert_eq!(decisions, [true, false, false]);

    // Each fixture face alone (batch 1) gives the descriptor it had in the batch of 3.
    for (i, image) in fixture().images.iter().enumerate() {
        let bytes = std::fs::read(fixture_dir().join(&image.image)).unwrap();
        let rgb = decode_image(&bytes, &DecodeLimits::default()).unwrap();
        let mut single = FaceBatch::default();
        single
            .push_face(&rgb, image.faces[0].descriptor_box())
            .unwrap();
        let alone = gpu.describe(&single).expect("gpu describe");
        assert_close(&alone, &theirs[i..=i], &format!("fixture {i}, batch 1"));
        assert!(alone[0].max_abs_diff(ours[i].as_slice()) <= 1e-6);
    }
}

#[test]
fn random_inputs_match_the_cpu_at_batch_1_and_3() {
    let Some(gpu) = gpu() else { return };
    for (faces, seed) in [(1, 11), (3, 12)] {
        let batch = random_batch(faces, seed);
        let ours = gpu.describe(&batch).expect("gpu describe");
        assert_close(
            &ours,
            &cpu().describe(&batch),
            &format!("random, batch {faces}"),
        );
    }
}

#[test]
fn batches_larger_than_a_pass_are_split_and_match() {
    let Some(ctx) = context() else { return };
    let split = GpuNetwork::new(model(), ctx.clone())
        .expect("gpu network")
        .with_faces_per_pass(2);
    assert_eq!(split.faces_per_pass(), 2);
    // Five faces: two full passes and a short one, through buffers sized for two.
    let batch = random_batch(5, 13);
    let ours = split.describe(&batch).expect("gpu describe");
    let theirs = cpu().describe(&batch);
    assert_close(&ours, &theirs, "random, batch 5 in passes of 2");
    // Faces in different passes differ: no pass reused another's output.
    assert!(ours[0].max_abs_diff(ours[2].as_slice()) > 1e-3);
    assert!(ours[1].max_abs_diff(ours[4].as_slice()) > 1e-3);
}

#[test]
fn an_empty_batch_needs_no_device_work() {
    let Some(gpu) = gpu() else { return };
    assert!(gpu.describe(&FaceBatch::default()).unwrap().is_empty());
}

#[test]
fn a_lost_device_is_an_error_not_a_panic() {
    let Some(ctx) = own_context() else { return };
    let network = GpuNetwork::new(model(), ctx.clone()).expect("gpu network");
    ctx.destroy_device();
    let err = network
        .describe(&random_batch(1, 14))
        .expect_err("a destroyed device cannot describe");
    assert!(matches!(err, EmbedError::Gpu { .. }), "{err}");
    // And it stays failed: the caller moves to the CPU for good.
    assert!(network.describe(&random_batch(1, 15)).is_err());
}
