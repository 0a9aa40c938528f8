//! The CPU engine against the naive reference, on seeded random galleries at edge sizes.
//!
//! The reference scores every live slot from the definition and sorts; the engine scans with
//! SIMD or a matrix product, keeps candidates by a rank key, and re-scores them. They must
//! agree exactly in ranking and to 1e-5 in score.

use gatematch::engine::cpu::{CpuEngine, reference_identify};
use gatematch::engine::{Backend, Measure};
use gatematch::gallery::{Gallery, ModelSpec};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SCORE_TOLERANCE: f32 = 1e-5;

/// A gallery of `rows` random templates, with every seventh person erased again so that the
/// scan meets tombstones (and their slots are reused by later inserts).
fn gallery(rows: usize, dimension: usize, measure: Measure, seed: u64) -> Gallery {
    let spec = ModelSpec {
        id: "m".into(),
        dimension,
        measure,
        threshold: 0.0,
    };
    let mut g = Gallery::new(vec![spec]);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for i in 0..rows {
        let v: Vec<f32> = (0..dimension)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        g.add(&format!("p{i}"), "m", &v).unwrap();
        if i % 7 == 3 {
            g.remove_person(&format!("p{}", i - 2));
        }
    }
    g
}

fn probes(batch: usize, dimension: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..batch * dimension)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect()
}

fn check(
    engine: &CpuEngine,
    rows: usize,
    dimension: usize,
    batch: usize,
    k: usize,
    measure: Measure,
) {
    let g = gallery(
        rows,
        dimension,
        measure,
        rows as u64 * 31 + dimension as u64,
    );
    let shard = &g.shards()[0];
    let p = probes(batch, dimension, 17 + batch as u64);
    let found = engine.identify(shard, &p, k).unwrap();
    assert_eq!(found.len(), batch);
    for (i, got) in found.iter().enumerate() {
        let probe = &p[i * dimension..(i + 1) * dimension];
        let want = reference_identify(shard, probe, k);
        let context =
            format!("rows={rows} dim={dimension} batch={batch} k={k} {measure} probe {i}");
        assert_eq!(got.len(), want.len(), "{context}: candidate count");
        assert_eq!(
            got.len(),
            k.min(shard.live_count()),
            "{context}: k or every live template"
        );
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.slot, w.slot, "{context}: ranking");
            assert!(
                (g.score - w.score).abs() <= SCORE_TOLERANCE,
                "{context}: {} vs {}",
                g.score,
                w.score
            );
        }
    }
}

#[test]
fn empty_and_tiny_galleries() {
    let engine = CpuEngine::new(2);
    for measure in [Measure::Cosine, Measure::Euclidean] {
        for rows in [0, 1, 2] {
            for k in [1, 5] {
                check(&engine, rows, 16, 1, k, measure);
                check(&engine, rows, 16, 9, k, measure);
            }
        }
    }
}

#[test]
fn dimensions_around_the_vector_width() {
    let engine = CpuEngine::new(2);
    for dimension in [1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 128, 512] {
        for batch in [1, 3, 4, 5, 8] {
            // In one dimension every cosine is exactly ±1: the order among hundreds of equal
            // scores is a tie-break, not a ranking, so only the distance is checked there.
            if dimension > 1 {
                check(&engine, 300, dimension, batch, 10, Measure::Cosine);
            }
            check(&engine, 300, dimension, batch, 10, Measure::Euclidean);
        }
    }
}

#[test]
fn batches_on_both_scan_paths() {
    let engine = CpuEngine::new(2);
    // Batches under 8 take the row kernel, from 8 the matrix product; 64 is a typical batch.
    for batch in [1, 2, 7, 8, 9, 63, 64, 65] {
        check(&engine, 1000, 128, batch, 10, Measure::Cosine);
        check(&engine, 1000, 128, batch, 10, Measure::Euclidean);
    }
}

#[test]
fn galleries_around_the_thread_split() {
    // The engine splits the slots into chunks of 16 Ki across threads.
    let engine = CpuEngine::new(2);
    for rows in [16 * 1024 - 1, 16 * 1024, 16 * 1024 + 1, 3 * 16 * 1024 + 5] {
        check(&engine, rows, 32, 1, 10, Measure::Cosine);
        check(&engine, rows, 32, 8, 10, Measure::Euclidean);
    }
    // A pool of one thread and of three give the same answers.
    check(&CpuEngine::new(1), 40_000, 16, 3, 7, Measure::Cosine);
    check(&CpuEngine::new(3), 40_000, 16, 3, 7, Measure::Cosine);
}

#[test]
fn k_larger_than_the_gallery_returns_every_live_template() {
    let engine = CpuEngine::new(2);
    for measure in [Measure::Cosine, Measure::Euclidean] {
        check(&engine, 10, 8, 1, 100, measure);
        check(&engine, 10, 8, 12, 100, measure);
    }
}

#[test]
fn verify_scores_equal_the_definition() {
    let engine = CpuEngine::new(2);
    let g = gallery(50, 128, Measure::Euclidean, 4);
    let shard = &g.shards()[0];
    let p = probes(2, 128, 8);
    let live: Vec<u32> = (0..shard.slot_count() as u32)
        .filter(|&s| shard.is_live(s))
        .take(5)
        .collect();
    let scores = engine
        .verify(shard, &p, &[live.clone(), vec![live[0]]])
        .unwrap();
    for (j, &slot) in live.iter().enumerate() {
        let want = Measure::Euclidean.score(&p[..128], shard.row(slot));
        assert_eq!(scores[0][j], want);
    }
    assert_eq!(scores[1].len(), 1);
    // An identical template is at distance 0 exactly, which the dot-product form
    // |p|² + |g|² − 2p·g would miss by rounding.
    let same = shard.row(live[0]).to_vec();
    assert_eq!(
        engine.verify(shard, &same, &[vec![live[0]]]).unwrap()[0][0],
        0.0
    );
}

#[test]
fn a_probe_of_the_wrong_shape_is_refused() {
    let engine = CpuEngine::new(1);
    let g = gallery(5, 8, Measure::Cosine, 1);
    assert!(engine.identify(&g.shards()[0], &[0.0; 9], 1).is_err());
}

#[test]
fn near_ties_below_f16_resolution_fall_back_to_f32_and_stay_exact() {
    // Rows that differ by less than f16 can tell apart (but f32 can): the f16 scan cannot prove its
    // candidates, so the engine must scan again in f32 and still match the reference.
    let engine = CpuEngine::new(2);
    let dimension = 64;
    let spec = ModelSpec {
        id: "m".into(),
        dimension,
        measure: Measure::Cosine,
        threshold: 0.0,
    };
    let mut g = Gallery::new(vec![spec]);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let base: Vec<f32> = (0..dimension)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    for i in 0..500 {
        let v: Vec<f32> = base
            .iter()
            .map(|x| x + rng.random_range(-1e-4..1e-4))
            .collect();
        g.add(&format!("twin{i}"), "m", &v).unwrap();
    }
    let shard = &g.shards()[0];
    let probe: Vec<f32> = (0..dimension)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let before = engine.f32_rescans();
    let got = engine.identify(shard, &probe, 5).unwrap().remove(0);
    assert!(
        engine.f32_rescans() > before,
        "the f16 scan must not claim an unprovable ranking"
    );
    let want = reference_identify(shard, &probe, 5);
    assert_eq!(
        got.iter().map(|c| c.slot).collect::<Vec<_>>(),
        want.iter().map(|c| c.slot).collect::<Vec<_>>()
    );
}

#[test]
fn random_galleries_rarely_need_the_f32_rescan() {
    let engine = CpuEngine::new(2);
    let g = gallery(50_000, 128, Measure::Cosine, 3);
    let p = probes(4, 128, 5);
    for _ in 0..5 {
        engine.identify(&g.shards()[0], &p, 10).unwrap();
    }
    assert_eq!(
        engine.f32_rescans(),
        0,
        "well-separated scores are proven from the f16 scan"
    );
}
