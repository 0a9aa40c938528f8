//! Throughput of the descriptor network, `gatematch bench embed`: faces per second at a given
//! batch size on the CPU (at a thread count) or the GPU, on a fixed synthetic input (speed
//! does not depend on pixel values). And the time to find the faces of a real frame,
//! `gatematch bench detect` (the detector's work does depend on the image: the faces found go
//! through the landmark network).
//!
//! The procedure is the ONNX Runtime peer's (`ort_peer.py`): warm up, time several runs, report
//! the median run's rate, so that the two figures compare.

use std::fmt;
use std::time::{Duration, Instant};

use crate::face::network::{EmbedError, Network};
use crate::face::preprocess::FaceBatch;
use crate::face::preprocess::crop::INPUT_LEN;

/// One measurement; `Display` gives `gatematch bench embed`'s line,
/// `embed backend=cpu batch=… threads=… faces_per_s=… runs=… run_s=…` (no `threads` on the
/// GPU).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Throughput {
    /// `"cpu"` or `"gpu"`.
    pub backend: &'static str,
    /// Faces per call.
    pub batch: usize,
    /// Worker threads of the CPU network; `None` on the GPU.
    pub threads: Option<usize>,
    /// Median over the timed runs, faces per second.
    pub faces_per_second: f64,
    /// Timed runs.
    pub runs: usize,
    /// Least length of each timed run.
    pub run_length: Duration,
}

impl fmt::Display for Throughput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "embed backend={} batch={}", self.backend, self.batch)?;
        if let Some(threads) = self.threads {
            write!(f, " threads={threads}")?;
        }
        write!(
            f,
            " faces_per_s={:.2} runs={} run_s={:.2}",
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
/// calls; on the GPU the first builds the pipelines and buffers), then `runs` timed runs of at
/// least `min_run` each, and reports the median rate. A GPU failure ends the measurement.
pub fn measure(
    network: &Network,
    batch: usize,
    runs: usize,
    min_run: Duration,
) -> Result<Throughput, EmbedError> {
    let input = synthetic_batch(batch);
    let warm_until = Instant::now() + min_run / 2;
    let mut calls = 0;
    while calls < 3 || Instant::now() < warm_until {
        std::hint::black_box(network.describe(&input)?);
        calls += 1;
    }
    let runs = runs.max(1);
    let mut rates = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let mut calls = 0usize;
        let rate = loop {
            std::hint::black_box(network.describe(&input)?);
            calls += 1;
            let elapsed = start.elapsed();
            if elapsed >= min_run {
                break (calls * batch) as f64 / elapsed.as_secs_f64();
            }
        };
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    let threads = match network {
        Network::Cpu(cpu) => Some(cpu.threads()),
        Network::Gpu(_) => None,
    };
    Ok(Throughput {
        backend: network.backend_name(),
        batch,
        threads,
        faces_per_second: rates[rates.len() / 2],
        runs,
        run_length: min_run,
    })
}

/// One measurement of face finding; `Display` gives `gatematch bench detect`'s line,
/// `detect backend=… threads=… image=WxH faces=… ms_per_frame=… runs=… run_s=…`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FindTime {
    /// Where the networks ran.
    pub backend: &'static str,
    /// Worker threads.
    pub threads: usize,
    /// The frame's width and height.
    pub image: (u32, u32),
    /// Faces found in it (each also went through the landmark network).
    pub faces: usize,
    /// Median over the timed runs: detection plus landmarks, milliseconds per frame.
    pub ms_per_frame: f64,
    /// Timed runs.
    pub runs: usize,
    /// Least length of each timed run.
    pub run_length: Duration,
}

impl fmt::Display for FindTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "detect backend={} threads={} image={}x{} faces={} ms_per_frame={:.2} runs={} \
             run_s={:.2}",
            self.backend,
            self.threads,
            self.image.0,
            self.image.1,
            self.faces,
            self.ms_per_frame,
            self.runs,
            self.run_length.as_secs_f64()
        )
    }
}

/// Times `finder` (detector and landmark network) on `image` as [`measure`] times the
/// descriptor network: a warm-up, then `runs` runs of at least `min_run`, the median reported.
pub fn measure_find(
    finder: &dyn crate::face::capture::FindFaces,
    backend: &'static str,
    threads: usize,
    image: &crate::face::preprocess::RgbImage,
    runs: usize,
    min_run: Duration,
) -> Result<FindTime, crate::face::capture::CaptureError> {
    let faces = finder.find(image)?.len();
    let warm_until = Instant::now() + min_run / 2;
    while Instant::now() < warm_until {
        std::hint::black_box(finder.find(image)?);
    }
    let runs = runs.max(1);
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let mut calls = 0u32;
        while calls == 0 || start.elapsed() < min_run {
            std::hint::black_box(finder.find(image)?);
            calls += 1;
        }
        times.push(start.elapsed().as_secs_f64() * 1e3 / f64::from(calls));
    }
    times.sort_by(f64::total_cmp);
    Ok(FindTime {
        backend,
        threads,
        image: (image.width(), image.height()),
        faces,
        ms_per_frame: times[times.len() / 2],
        runs,
        run_length: min_run,
    })
}
