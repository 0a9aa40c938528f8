//! The GPU engine against the CPU oracle on seeded random galleries, at edge sizes.
//!
//! The oracle is `reference_identify` (every live slot scored from the definition, sorted)
//! for 1:N and the CPU engine for 1:1. The GPU engine pre-fills every output with a sentinel
//! and fails with `BadOutput` (and so fails over) if one survives or a dead slot comes back,
//! so each test also checks that the engine is still on the GPU at the end.
//!
//! Tolerances: identify re-scores its candidates on the host with the CPU's own formula, so
//! rankings and scores must be identical. Verify sums in f32 on the GPU: scores within 1e-5
//! relative (absolute below 1).

mod common;

use common::gpu::{context, engine, formats};
use gatematch::engine::cpu::{CpuEngine, reference_identify};
use gatematch::engine::gpu::shaders::WORKGROUP_SIZE;
use gatematch::engine::gpu::{GpuContext, GpuEngine, MAX_BATCH, MAX_K, StorageFormat};
use gatematch::engine::{Backend, EngineError, Measure};
use gatematch::gallery::{Gallery, ModelSpec};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const WG: usize = WORKGROUP_SIZE as usize;
const MEASURES: [Measure; 2] = [Measure::Cosine, Measure::Euclidean];
const VERIFY_TOLERANCE: f32 = 1e-5;

fn spec(dimension: usize, measure: Measure) -> ModelSpec {
    ModelSpec {
        id: "m".into(),
        dimension,
        measure,
        threshold: 0.0,
    }
}

fn random_rows(seed: u64, rows: usize, dim: usize) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..rows * dim)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect()
}

/// A gallery of `rows` random templates, person `p{i}` owning slot `i`.
fn gallery(rows: usize, dim: usize, measure: Measure, seed: u64) -> Gallery {
    let mut g = Gallery::new(vec![spec(dim, measure)]);
    for (i, row) in random_rows(seed, rows, dim).chunks_exact(dim).enumerate() {
        g.add(&format!("p{i}"), "m", row).unwrap();
    }
    g
}

/// Every probe's GPU list equals the reference's, slot for slot and bit for bit.
fn assert_matches_reference(
    label: &str,
    engine: &GpuEngine,
    g: &Gallery,
    probes: &[f32],
    k: usize,
) {
    let shard = &g.shards()[0];
    let got = engine.identify(shard, probes, k).unwrap();
    let dim = shard.dimension();
    assert_eq!(got.len(), probes.len() / dim, "{label}");
    for (i, probe) in probes.chunks_exact(dim).enumerate() {
        let want = reference_identify(shard, probe, k);
        assert_eq!(got[i], want, "{label}: probe {i}");
    }
    assert!(
        !engine.has_failed_over(),
        "{label}: the engine left the GPU"
    );
}

#[allow(clippy::too_many_arguments)]
fn check(
    ctx: &GpuContext,
    format: StorageFormat,
    measure: Measure,
    dim: usize,
    rows: usize,
    chunk_rows: Option<usize>,
    batch: usize,
    k: usize,
    seed: u64,
) {
    let label = format!("{format} {measure} dim {dim} rows {rows} batch {batch} k {k}");
    let engine = engine(ctx, format, chunk_rows);
    let g = gallery(rows, dim, measure, seed);
    let probes = random_rows(seed ^ 0xABCD, batch, dim);
    assert_matches_reference(&label, &engine, &g, &probes, k);
}

#[test]
fn adapter_is_reported() {
    let Some(ctx) = context() else { return };
    let info = ctx.adapter_info();
    eprintln!(
        "adapter {} ({:?}, {:?}), f16 {}",
        info.name,
        info.device_type,
        info.backend,
        ctx.supports_f16()
    );
    assert!(!info.name.is_empty());
}

#[test]
fn identify_matches_the_reference_at_edge_sizes() {
    let Some(ctx) = context() else { return };
    for format in formats(ctx) {
        for measure in MEASURES {
            for (seed, rows) in [0, 1, WG - 1, WG, WG + 1].into_iter().enumerate() {
                check(ctx, format, measure, 128, rows, None, 3, 10, seed as u64);
            }
        }
    }
}

#[test]
fn identify_spans_several_chunks() {
    let Some(ctx) = context() else { return };
    for format in formats(ctx) {
        for measure in MEASURES {
            // 4 chunks of one tile each, the last one partly filled.
            check(ctx, format, measure, 128, 3 * WG + 5, Some(WG), 4, 25, 11);
            check(
                ctx,
                format,
                measure,
                512,
                2 * WG + 1,
                Some(2 * WG),
                2,
                MAX_K,
                12,
            );
        }
    }
}

#[test]
fn k_beyond_the_gallery_returns_every_live_template() {
    let Some(ctx) = context() else { return };
    for format in formats(ctx) {
        for measure in MEASURES {
            check(ctx, format, measure, 64, 7, None, 2, MAX_K, 21);
            check(ctx, format, measure, 128, WG + 1, Some(WG), 1, MAX_K, 22);
        }
    }
}

#[test]
fn batches_of_the_workgroup_size_plus_one_and_beyond_one_submission() {
    let Some(ctx) = context() else { return };
    for format in formats(ctx) {
        check(
            ctx,
            format,
            Measure::Cosine,
            128,
            2 * WG - 1,
            None,
            WG + 1,
            5,
            31,
        );
    }
    check(
        ctx,
        StorageFormat::F32,
        Measure::Euclidean,
        8,
        300,
        None,
        MAX_BATCH + 1,
        2,
        32,
    );
}

#[test]
fn long_stripes_raise_the_bar_many_times() {
    let Some(ctx) = context() else { return };
    // 512 probes leave 4 workgroups per probe, so each stripe runs many rounds of selection.
    for format in formats(ctx) {
        check(
            ctx,
            format,
            Measure::Euclidean,
            32,
            16 * WG,
            None,
            512,
            3,
            35,
        );
    }
}

#[test]
fn small_dimensions() {
    let Some(ctx) = context() else { return };
    for format in formats(ctx) {
        for measure in MEASURES {
            check(ctx, format, measure, 4, 300, None, 2, 1, 41);
            check(ctx, format, measure, 12, 300, Some(WG), 2, 17, 42);
        }
    }
}

#[test]
fn erasure_and_slot_reuse_reach_the_gpu_without_a_reload() {
    let Some(ctx) = context() else { return };
    let dim = 128;
    for format in formats(ctx) {
        for measure in MEASURES {
            let label = format!("{format} {measure}");
            let engine = engine(ctx, format, Some(WG));
            let mut g = gallery(2 * WG + 3, dim, measure, 51);
            let probes = random_rows(52, 2, dim);
            assert_matches_reference(&label, &engine, &g, &probes, 5);

            // Erase every current top-5 result and a slot in another chunk (few changes:
            // single-row writes), then enrol the first probe itself into a freed slot.
            let before = engine.identify(&g.shards()[0], &probes, 5).unwrap();
            let mut erased: Vec<u32> = before.iter().flatten().map(|c| c.slot).collect();
            erased.push((2 * WG) as u32);
            for &slot in &erased {
                g.remove_person(&format!("p{slot}"));
            }
            let reused = g.add("probe-0", "m", &probes[..dim]).unwrap().slot;
            assert!(erased.contains(&reused), "a freed slot is reused");
            assert_matches_reference(&label, &engine, &g, &probes, 20);
            let first = engine.identify(&g.shards()[0], &probes[..dim], 1).unwrap();
            assert_eq!(first[0][0].slot, reused);

            // Many changes at once go up as whole tiles.
            for i in (0..2 * WG).step_by(5) {
                g.remove_person(&format!("p{i}"));
            }
            assert_matches_reference(&label, &engine, &g, &probes, 20);
        }
    }
}

#[test]
fn erasing_everything_leaves_empty_lists() {
    let Some(ctx) = context() else { return };
    let engine = engine(ctx, StorageFormat::F32, Some(WG));
    let mut g = gallery(3, 16, Measure::Cosine, 61);
    let probes = random_rows(62, 2, 16);
    assert_eq!(
        engine.identify(&g.shards()[0], &probes, 2).unwrap()[0].len(),
        2
    );
    for i in 0..3 {
        g.remove_person(&format!("p{i}"));
    }
    let got = engine.identify(&g.shards()[0], &probes, 10).unwrap();
    assert_eq!(got, vec![Vec::new(), Vec::new()]);
}

#[test]
fn growth_one_enrolment_at_a_time_keeps_old_rows() {
    let Some(ctx) = context() else { return };
    let dim = 32;
    for format in formats(ctx) {
        let engine = engine(ctx, format, Some(2 * WG));
        let mut g = Gallery::new(vec![spec(dim, Measure::Euclidean)]);
        let probes = random_rows(72, 2, dim);
        // One slot at a time, as enrolment does, scanning now and then: the last chunk grows
        // by device copies, then new chunks are added.
        for (i, row) in random_rows(71, 5 * WG, dim).chunks_exact(dim).enumerate() {
            g.add(&format!("p{i}"), "m", row).unwrap();
            if i % 97 == 0 || i == 5 * WG - 1 {
                assert_matches_reference(&format!("{format} at {i}"), &engine, &g, &probes, 30);
            }
        }
    }
}

#[test]
fn a_trimmed_change_log_falls_back_to_a_full_copy() {
    let Some(ctx) = context() else { return };
    let engine = engine(ctx, StorageFormat::F32, None);
    let mut g = gallery(10, 8, Measure::Cosine, 81);
    let probes = random_rows(82, 2, 8);
    assert_matches_reference("before", &engine, &g, &probes, 5);
    // More changes than the log keeps (4096, or the shard's size when larger).
    for round in 0..9 {
        for i in 0..500 {
            let id = format!("q{i}");
            g.remove_person(&id);
            g.add(&id, "m", &random_rows(round * 1000 + i, 1, 8))
                .unwrap();
        }
    }
    assert!(g.shards()[0].changes_since(0).is_none());
    assert_matches_reference("after", &engine, &g, &probes, 5);
}

#[test]
fn zero_templates_and_probes_rank_as_on_the_cpu() {
    let Some(ctx) = context() else { return };
    for format in formats(ctx) {
        let engine = engine(ctx, format, None);
        let mut g = gallery(20, 8, Measure::Cosine, 91);
        g.add("zero", "m", &[0.0; 8]).unwrap();
        let mut probes = random_rows(92, 1, 8);
        probes.extend([0.0; 8]);
        assert_matches_reference(&format!("{format}"), &engine, &g, &probes, 21);
    }
}

#[test]
fn many_galleries_through_one_engine() {
    let Some(ctx) = context() else { return };
    let engine = engine(ctx, StorageFormat::F32, None);
    // More shards than the engine keeps on the device: the oldest are dropped and rebuilt.
    let galleries: Vec<Gallery> = (0..20)
        .map(|i| gallery(50 + i, 16, Measure::Cosine, 100 + i as u64))
        .collect();
    let probes = random_rows(99, 2, 16);
    for round in 0..2 {
        for (i, g) in galleries.iter().enumerate() {
            assert_matches_reference(
                &format!("round {round} gallery {i}"),
                &engine,
                g,
                &probes,
                4,
            );
        }
    }
}

#[test]
fn verify_matches_the_cpu_engine() {
    let Some(ctx) = context() else { return };
    let cpu = CpuEngine::new(1);
    for format in formats(ctx) {
        for measure in MEASURES {
            for dim in [128, 512] {
                let engine = engine(ctx, format, None);
                let g = gallery(WG + 1, dim, measure, 81);
                let shard = &g.shards()[0];
                for batch in [0, 1, WG - 1, WG + 1] {
                    let probes = random_rows(82 + batch as u64, batch, dim);
                    let slots: Vec<Vec<u32>> = (0..batch)
                        .map(|i| {
                            (0..i % 3 + 1)
                                .map(|j| ((i * 7 + j) % (WG + 1)) as u32)
                                .collect()
                        })
                        .collect();
                    let got = engine.verify(shard, &probes, &slots).unwrap();
                    let want = cpu.verify(shard, &probes, &slots).unwrap();
                    assert_eq!(got.len(), batch);
                    for (g_scores, w_scores) in got.iter().zip(&want) {
                        assert_eq!(g_scores.len(), w_scores.len());
                        for (&g, &w) in g_scores.iter().zip(w_scores) {
                            let close = (g - w).abs() <= VERIFY_TOLERANCE * w.abs().max(1.0);
                            assert!(close, "{format} {measure} dim {dim}: {g} vs {w}");
                        }
                    }
                }
                assert!(!engine.has_failed_over());
            }
        }
    }
}

#[test]
fn inputs_the_gpu_does_not_take_are_answered_by_the_cpu() {
    let Some(ctx) = context() else { return };
    let engine = engine(ctx, StorageFormat::F32, None);
    // A dimension that is not a multiple of 4.
    let g = gallery(40, 130, Measure::Cosine, 111);
    assert_matches_reference("dim 130", &engine, &g, &random_rows(112, 2, 130), 3);
    // k over the GPU's list length.
    let g = gallery(300, 8, Measure::Euclidean, 113);
    assert_matches_reference("k 101", &engine, &g, &random_rows(114, 2, 8), MAX_K + 1);
    // A probe that is not finite, a probe block of the wrong shape, a slot beyond the shard.
    let shard = &g.shards()[0];
    let mut probe = random_rows(115, 1, 8);
    probe[3] = f32::NAN;
    let cpu = CpuEngine::new(1).identify(shard, &probe, 2).unwrap();
    assert_eq!(engine.identify(shard, &probe, 2).unwrap(), cpu);
    assert!(matches!(
        engine.identify(shard, &[1.0; 9], 1),
        Err(EngineError::ProbeShape { len: 9, dim: 8 })
    ));
    assert!(matches!(
        engine.verify(shard, &[1.0; 8], &[vec![300]]),
        Err(EngineError::SlotOutOfRange {
            slot: 300,
            slots: 300
        })
    ));
    assert_eq!(
        engine.identify(shard, &[], 5).unwrap(),
        Vec::<Vec<_>>::new()
    );
    assert_eq!(
        engine.identify(shard, &[1.0; 8], 0).unwrap(),
        vec![Vec::new()]
    );
    assert!(
        !engine.has_failed_over(),
        "refused input is not a device failure"
    );
    assert_eq!(engine.name(), "gpu");
}
