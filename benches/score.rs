//! 1:N scoring on the CPU engine: 1,000,000 templates of 128 and 512 values, batches of 1 and
//! 64 probes, k = 10. Throughput is in comparisons (probe × template pairs).
//!
//! Beside it, the same on the GPU engine (group `score_gpu`, f32/f16/int8 at 128 values) when
//! an adapter opens; software ones count, so on lavapipe it runs but proves nothing about
//! speed. Without an adapter the group says why it is skipped.
//!
//! `cargo bench --bench score`; `GATEMATCH_BENCH_ROWS` shrinks the gallery for a quick look.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

use gatematch::bench::random_gallery;
use gatematch::engine::Backend;
use gatematch::engine::cpu::CpuEngine;
use gatematch::engine::gpu::{GpuEngine, GpuOptions, StorageFormat};
use gatematch::gate::travellers::random_block;

fn rows() -> usize {
    std::env::var("GATEMATCH_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn score(c: &mut Criterion) {
    let engine = CpuEngine::new(0);
    let rows = rows();
    let mut group = c.benchmark_group("score_cpu");
    group.sample_size(10);
    for dimension in [128, 512] {
        let gallery = random_gallery(rows, dimension, 1);
        let shard = &gallery.shards()[0];
        for batch in [1, 64] {
            let probes = random_block(batch, dimension, 2);
            group.throughput(Throughput::Elements((rows * batch) as u64));
            let id = BenchmarkId::new(format!("n{rows}_d{dimension}_k10"), format!("batch{batch}"));
            group.bench_with_input(id, &probes, |b, probes| {
                b.iter(|| {
                    engine
                        .identify(shard, probes, 10)
                        .expect("probe shape is right")
                })
            });
        }
    }
    group.finish();
}

fn score_gpu(c: &mut Criterion) {
    let rows = rows();
    let dimension = 128;
    let gallery = random_gallery(rows, dimension, 1);
    let shard = &gallery.shards()[0];
    let mut group = c.benchmark_group("score_gpu");
    group.sample_size(10);
    for format in StorageFormat::ALL {
        let options = GpuOptions {
            format,
            allow_software: true,
            ..GpuOptions::default()
        };
        let engine = match GpuEngine::new(&options) {
            Ok(engine) => engine,
            Err(e) => {
                eprintln!("score_gpu skipped: {e}");
                return;
            }
        };
        for batch in [1, 64] {
            let probes = random_block(batch, dimension, 2);
            // The first call copies the gallery to the device and builds the pipelines.
            engine
                .identify(shard, &probes, 10)
                .expect("probe shape is right");
            group.throughput(Throughput::Elements((rows * batch) as u64));
            let name = format!("n{rows}_d{dimension}_k10_{}", engine.format());
            let id = BenchmarkId::new(name, format!("batch{batch}"));
            group.bench_with_input(id, &probes, |b, probes| {
                b.iter(|| {
                    engine
                        .identify(shard, probes, 10)
                        .expect("probe shape is right")
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, score, score_gpu);
criterion_main!(benches);
