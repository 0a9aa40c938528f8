//! 1:N scoring on the CPU engine: 1,000,000 templates of 128 and 512 values, batches of 1 and
//! 64 probes, k = 10. Throughput is in comparisons (probe × template pairs).
//!
//! `cargo bench --bench score`; `GATEMATCH_BENCH_ROWS` shrinks the gallery for a quick look.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

use gatematch::bench::random_gallery;
use gatematch::engine::Backend;
use gatematch::engine::cpu::CpuEngine;
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

criterion_group!(benches, score);
criterion_main!(benches);
