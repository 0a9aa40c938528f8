//! The CPU engine: the reference every other backend is checked against, and the fallback.
//!
//! A 1:N request for a batch of probes makes one pass over the gallery: the slots are cut
//! into chunks, the chunks are spread over a thread pool, and each chunk keeps its own top
//! entries per probe, merged at the end. The scan keeps a few more candidates than asked
//! ([`RESCORE_MARGIN`]) by a rank key, and the survivors are re-scored from the definition
//! (see [`Measure::score`]) before the final cut, so the scores are exact and the ranking is
//! the same as a naive loop's.
//!
//! A batch of at most [`F16_MAX_BATCH`] probes is bound by memory bandwidth, so it scans the
//! shard's f16 copy (half the bytes) instead of the f32 rows. The f16 keys can be off by at
//! most [`Shard::f16_key_error`]; after the exact re-score the engine checks that no row left
//! out of the candidates could have beaten the k-th answer even with that error, and scans
//! the probe again in f32 when it cannot prove it. The answer is the f32 answer either way.

use rayon::prelude::*;

use std::sync::atomic::{AtomicU64, Ordering};

use super::kernels::{self, RowRun, Rows};
use super::{Backend, Candidate, EngineError, Measure, TopK, probe_count};
use crate::gallery::Shard;

/// Extra candidates kept by the scan beyond `k`, so that rounding in the fast rank key cannot
/// push a true top-k entry out before the exact re-score.
pub const RESCORE_MARGIN: usize = 8;

/// Batches up to this size scan the f16 copy: they are bound by memory bandwidth, while
/// larger ones are bound by arithmetic and gain nothing from fewer bytes.
pub const F16_MAX_BATCH: usize = kernels::PROBES_PER_TILE;

/// Slots per unit of parallel work: big enough to amortise the per-chunk top-k state, small
/// enough to balance the last chunks across threads.
const CHUNK_SLOTS: usize = 16 * 1024;

/// The CPU backend.
pub struct CpuEngine {
    pool: rayon::ThreadPool,
    f32_rescans: AtomicU64,
}

/// Which stored copy a scan reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Copy16 {
    F32,
    F16,
}

impl CpuEngine {
    /// An engine on `threads` worker threads (0: one per core).
    pub fn new(threads: usize) -> Self {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("gatematch-cpu-{i}"))
            .build()
            .expect("a thread pool of plain threads builds unless the OS refuses threads");
        CpuEngine {
            pool,
            f32_rescans: AtomicU64::new(0),
        }
    }

    /// Probes whose f16 scan could not be proven exact and were scanned again in f32, since
    /// the engine started.
    pub fn f32_rescans(&self) -> u64 {
        self.f32_rescans.load(Ordering::Relaxed)
    }

    /// Worker threads in the pool.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Scans `shard` for `probes`, keeping `keep` entries per probe by rank key.
    fn scan(
        &self,
        shard: &Shard,
        probes: &[f32],
        batch: usize,
        keep: usize,
        copy: Copy16,
    ) -> Vec<TopK> {
        let dim = shard.dimension();
        let slots = shard.slot_count();
        let chunks = slots.div_ceil(CHUNK_SLOTS);
        let scan_chunk = |chunk: usize| {
            let start = chunk * CHUNK_SLOTS;
            let end = (start + CHUNK_SLOTS).min(slots);
            let run = RowRun {
                rows: match copy {
                    Copy16::F32 => Rows::F32(&shard.rows()[start * dim..end * dim]),
                    Copy16::F16 => Rows::F16(&shard.rows_f16()[start * dim..end * dim]),
                },
                key_scale: &shard.key_scale()[start..end],
                key_bias: &shard.key_bias()[start..end],
                first_slot: start as u32,
                dim,
            };
            scan_run(&run, probes, batch, keep)
        };
        let empty = || vec![TopK::new(keep); batch];
        let fold = |mut acc: Vec<TopK>, part: Vec<TopK>| {
            for (a, p) in acc.iter_mut().zip(&part) {
                a.merge(p);
            }
            acc
        };
        if chunks <= 1 {
            return (0..chunks).map(scan_chunk).fold(empty(), fold);
        }
        self.pool.install(|| {
            (0..chunks)
                .into_par_iter()
                .map(scan_chunk)
                .reduce(empty, fold)
        })
    }
}

/// Keys of one run of rows against the whole batch.
fn scan_run(run: &RowRun<'_>, probes: &[f32], batch: usize, keep: usize) -> Vec<TopK> {
    let dim = run.dim;
    let mut tops = vec![TopK::new(keep); batch];
    let probes: Vec<&[f32]> = probes.chunks_exact(dim).collect();
    kernels::scan(run, &probes, &mut tops);
    tops
}

/// The exact scores of the kept slots, best first, cut to `k`.
fn rescore(shard: &Shard, probe: &[f32], top: &TopK, k: usize) -> Vec<Candidate> {
    let measure = shard.measure();
    let mut candidates: Vec<Candidate> = top
        .entries()
        .iter()
        .map(|&(_, slot)| Candidate {
            slot,
            score: measure.score(probe, shard.row(slot)),
        })
        .collect();
    candidates.sort_by(|a, b| measure.rank(a, b));
    candidates.truncate(k);
    candidates
}

impl Backend for CpuEngine {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn identify(
        &self,
        shard: &Shard,
        probes: &[f32],
        k: usize,
    ) -> Result<Vec<Vec<Candidate>>, EngineError> {
        let dim = shard.dimension();
        let batch = probe_count(probes.len(), dim)?;
        if batch == 0 || k == 0 {
            return Ok(vec![Vec::new(); batch]);
        }
        let keep = k
            .saturating_add(RESCORE_MARGIN)
            .min(shard.live_count().max(1));
        let copy = if batch <= F16_MAX_BATCH && shard.f16_usable() {
            Copy16::F16
        } else {
            Copy16::F32
        };
        let tops = self.scan(shard, probes, batch, keep, copy);
        let mut found = Vec::with_capacity(batch);
        let mut unproven = Vec::new();
        for (p, top) in tops.iter().enumerate() {
            let probe = &probes[p * dim..(p + 1) * dim];
            let candidates = rescore(shard, probe, top, k);
            if copy == Copy16::F16 && !proven(shard, probe, top, &candidates, keep) {
                unproven.push(p);
            }
            found.push(candidates);
        }
        if !unproven.is_empty() {
            self.f32_rescans
                .fetch_add(unproven.len() as u64, Ordering::Relaxed);
            let again: Vec<f32> = unproven
                .iter()
                .flat_map(|&p| probes[p * dim..(p + 1) * dim].iter().copied())
                .collect();
            let tops = self.scan(shard, &again, unproven.len(), keep, Copy16::F32);
            for (top, &p) in tops.iter().zip(&unproven) {
                found[p] = rescore(shard, &probes[p * dim..(p + 1) * dim], top, k);
            }
        }
        Ok(found)
    }

    fn scan_bytes_per_value(&self, shard: &Shard, batch: usize) -> usize {
        if batch <= F16_MAX_BATCH && shard.f16_usable() {
            2
        } else {
            4
        }
    }

    fn verify(
        &self,
        shard: &Shard,
        probes: &[f32],
        slots: &[Vec<u32>],
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let dim = shard.dimension();
        let batch = probe_count(probes.len(), dim)?;
        debug_assert_eq!(batch, slots.len());
        let measure: Measure = shard.measure();
        Ok(slots
            .iter()
            .enumerate()
            .map(|(p, wanted)| {
                let probe = &probes[p * dim..(p + 1) * dim];
                wanted
                    .iter()
                    .map(|&slot| measure.score(probe, shard.row(slot)))
                    .collect()
            })
            .collect())
    }
}

/// Whether an f16 scan's candidates are certainly the true top: every slot the scan left out
/// had an f16 key at most the last kept one's, so its exact key is at most that plus the
/// error bound, which must fall short of the k-th answer's exact key.
fn proven(shard: &Shard, probe: &[f32], top: &TopK, answer: &[Candidate], keep: usize) -> bool {
    let entries = top.entries();
    if entries.len() < keep {
        // Every live slot was kept.
        return true;
    }
    let Some(kth) = answer.last() else {
        return true;
    };
    let probe_norm = probe.iter().map(|v| v * v).sum::<f32>().sqrt();
    let probe_l1 = probe.iter().map(|v| v.abs()).sum::<f32>();
    let error = f64::from(shard.f16_key_error(probe_norm, probe_l1));
    let last_kept = f64::from(entries[entries.len() - 1].0);
    last_kept + error < exact_key(shard, probe, kth.slot)
}

/// The rank key of `slot` for `probe` (see [`crate::gallery`]), from the f32 row in f64.
fn exact_key(shard: &Shard, probe: &[f32], slot: u32) -> f64 {
    let row = shard.row(slot);
    let dot: f64 = probe
        .iter()
        .zip(row)
        .map(|(&p, &g)| f64::from(p) * f64::from(g))
        .sum();
    let norm_sq: f64 = row.iter().map(|&g| f64::from(g) * f64::from(g)).sum();
    match shard.measure() {
        Measure::Cosine if norm_sq > 0.0 => dot / norm_sq.sqrt(),
        Measure::Cosine => 0.0,
        Measure::Euclidean => dot - norm_sq / 2.0,
    }
}

/// The naive reference: every live slot scored from the definition, sorted, cut to `k`.
/// Slow on purpose; tests and the GPU checks compare against it.
pub fn reference_identify(shard: &Shard, probe: &[f32], k: usize) -> Vec<Candidate> {
    let measure = shard.measure();
    let mut all: Vec<Candidate> = (0..shard.slot_count() as u32)
        .filter(|&slot| shard.is_live(slot))
        .map(|slot| Candidate {
            slot,
            score: measure.score(probe, shard.row(slot)),
        })
        .collect();
    all.sort_by(|a, b| measure.rank(a, b));
    all.truncate(k);
    all
}
