//! Throughput of the CPU network, `gatematch bench embed`: faces per second at a given batch
//! size and thread count, on a fixed synthetic input (speed does not depend on pixel values).
//!
//! The procedure is the ONNX Runtime peer's (`ort_peer.py`): warm up, time several runs, report
//! the median run's rate, so that the two figures compare.

use std::fmt;
use std::time::{Duration, Instant};

use crate::face::network::CpuNetwork;
use crate::face::preprocess::FaceBatch;
use crate::face::preprocess::crop::INPUT_LEN;

/// One measurement; `Display` gives `gatematch bench embed`'s line,
/// `embed backend=cpu batch=… threads=… faces_per_s=… runs=… run_s=…`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Throughput {
    /// Faces per call.
    pub batch: usize,
    /// Worker threads.
    pub threads: usize,
    /// Median over the timed runs, faces per second.
    pub faces_per_second: f64,
    /// Timed runs.
    pub runs: usize,
    /// Least length of each timed run.
    pub run_length: Duration,
}

impl fmt::Display for Throughput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "embed backend=cpu batch={} threads={} faces_per_s={:.2} runs={} run_s={:.2}",
            self.batch,
            self.threads,
            self.faces_per_second,
            self.runs,
            self.run_length.as_secs_f64()
        )
    }
}

/// A batch of `faces` deterministic pseudo-random inputs in the normalised range.
pub fn synthetic_batch(faces: usize) -> FaceBatch {
    let mut batch = FaceBatch::with_capacity(faces);
    let mut state = 0x9e37_79b9_u32;
    let mut input = vec![0.0f32; INPUT_LEN];
    for _ in 0..faces {
        for v in &mut input {
            // xorshift32: reproducible, no dependency.
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            *v = (state % 256) as f32 / 255.0 - 0.45;
        }
        batch.push_normalized(&input);
    }
    batch
}

/// Times `network` on batches of `batch` faces: warms up for `min_run / 2` (at least three
/// calls), then `runs` timed runs of at least `min_run` each, and reports the median rate.
pub fn measure(network: &CpuNetwork, batch: usize, runs: usize, min_run: Duration) -> Throughput {
    let input = synthetic_batch(batch);
    let warm_until = Instant::now() + min_run / 2;
    let mut calls = 0;
    while calls < 3 || Instant::now() < warm_until {
        std::hint::black_box(network.describe(&input));
        calls += 1;
    }
    let runs = runs.max(1);
    let mut rates: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            let mut calls = 0usize;
            loop {
                std::hint::black_box(network.describe(&input));
                calls += 1;
                let elapsed = start.elapsed();
                if elapsed >= min_run {
                    break (calls * batch) as f64 / elapsed.as_secs_f64();
                }
            }
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    Throughput {
        batch,
        threads: network.threads(),
        faces_per_second: rates[rates.len() / 2],
        runs,
        run_length: min_run,
    }
}
