//! The engine alone, timed: `gatematch bench score`.
//!
//! Capacity engineers script this, so it prints one line per run in a fixed
//! `key=value` format. The gallery is random unit vectors; the measure is cosine (the scan
//! does the same dot-product work for either measure). A GPU run adds the adapter's name and
//! the scan format, and counts gallery bytes in that format.

use std::fmt;
use std::time::{Duration, Instant};

use crate::engine::gpu::StorageFormat;
use crate::engine::{Backend, Measure};
use crate::gallery::{Gallery, ModelSpec};
use crate::gate::travellers::random_block;

/// What to time.
#[derive(Clone, Copy, Debug)]
pub struct ScoreBench {
    /// Gallery templates.
    pub gallery: usize,
    /// Values per template.
    pub dimension: usize,
    /// Probes per call.
    pub batch: usize,
    /// Candidates per probe.
    pub k: usize,
    /// How long to keep calling.
    pub duration: Duration,
}

/// What was measured.
#[derive(Clone, Debug)]
pub struct ScoreBenchResult {
    /// The settings.
    pub bench: ScoreBench,
    /// The backend's name.
    pub backend: &'static str,
    /// Worker threads.
    pub threads: usize,
    /// The GPU adapter and scan format, for a GPU run.
    pub gpu: Option<(String, StorageFormat)>,
    /// Probes answered per second.
    pub queries_per_s: f64,
    /// Probe-template comparisons per second.
    pub comparisons_per_s: f64,
    /// Gallery bytes per second, counting one pass over the gallery per call, in the format
    /// the scan reads (on the CPU: the f16 copy for batches up to 4, f32 above). At batch 1
    /// this is the memory bandwidth the scan reached; the GPU scan reads the gallery once per
    /// probe, so at larger batches it understates the traffic its caches served.
    pub gallery_bytes_per_s: f64,
    /// Bytes of one gallery row in the format the scan reads.
    pub row_bytes: usize,
    /// Median call time.
    pub median_call: Duration,
    /// Timed calls (the warm-up call excluded).
    pub calls: usize,
}

/// A gallery of `rows` random templates, as one shard.
pub fn random_gallery(rows: usize, dimension: usize, seed: u64) -> Gallery {
    let spec = ModelSpec {
        id: "bench".into(),
        dimension,
        measure: Measure::Cosine,
        threshold: 0.5,
    };
    let mut gallery = Gallery::new(vec![spec]);
    let block = random_block(rows, dimension, seed);
    for (i, row) in block.chunks_exact(dimension).enumerate() {
        gallery
            .add(&format!("p{i}"), "bench", row)
            .expect("rows have the shard's dimension");
    }
    gallery
}

/// Calls `backend.identify` on a random gallery until `bench.duration` has passed.
pub fn score(backend: &dyn Backend, threads: usize, bench: ScoreBench) -> ScoreBenchResult {
    let gallery = random_gallery(bench.gallery, bench.dimension, 1);
    score_on(backend, &gallery, threads, None, bench)
}

/// Calls `backend.identify` on `gallery` (from [`random_gallery`] with `bench.gallery` rows)
/// until `bench.duration` has passed; `gpu` names the adapter and scan format of a GPU run.
pub fn score_on(
    backend: &dyn Backend,
    gallery: &Gallery,
    threads: usize,
    gpu: Option<(String, StorageFormat)>,
    bench: ScoreBench,
) -> ScoreBenchResult {
    let shard = &gallery.shards()[0];
    let probes = random_block(bench.batch, bench.dimension, 2);
    // One call first: it pages the gallery in and, on a GPU, compiles the pipelines.
    let _ = backend.identify(shard, &probes, bench.k);
    let mut calls = Vec::new();
    let started = Instant::now();
    while started.elapsed() < bench.duration || calls.len() < 3 {
        let t = Instant::now();
        let _ = backend.identify(shard, &probes, bench.k);
        calls.push(t.elapsed());
    }
    calls.sort();
    let median_call = calls[calls.len() / 2];
    let per_s = 1.0 / median_call.as_secs_f64().max(1e-12);
    let row_bytes = match &gpu {
        None => bench.dimension * backend.scan_bytes_per_value(shard, bench.batch),
        Some((_, format)) => bench.dimension.div_ceil(4) * format.unit_bytes(),
    };
    let gallery_bytes = (bench.gallery * row_bytes) as f64;
    ScoreBenchResult {
        bench,
        backend: backend.name(),
        threads,
        gpu,
        queries_per_s: bench.batch as f64 * per_s,
        comparisons_per_s: (bench.batch * bench.gallery) as f64 * per_s,
        gallery_bytes_per_s: gallery_bytes * per_s,
        row_bytes,
        median_call,
        calls: calls.len(),
    }
}

impl fmt::Display for ScoreBenchResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "score backend={}", self.backend)?;
        if let Some((adapter, format)) = &self.gpu {
            write!(f, " adapter={adapter:?} format={format}")?;
        }
        write!(
            f,
            " n={} dim={} batch={} k={} threads={} queries_per_s={:.1} \
             comparisons_per_s={:.4e} row_bytes={} gallery_gb_per_s={:.2} median_call_ms={:.3} \
             calls={}",
            self.bench.gallery,
            self.bench.dimension,
            self.bench.batch,
            self.bench.k,
            self.threads,
            self.queries_per_s,
            self.comparisons_per_s,
            self.row_bytes,
            self.gallery_bytes_per_s / 1e9,
            self.median_call.as_secs_f64() * 1e3,
            self.calls,
        )
    }
}
