//! The CPU engine: the reference every other backend is checked against, and the fallback.
//!
//! A 1:N request for a batch of probes makes one pass over the gallery: the slots are cut
//! into chunks, the chunks are spread over a thread pool, and each chunk keeps its own top
//! entries per probe, merged at the end. The scan keeps a few more candidates than asked
//! ([`RESCORE_MARGIN`]) by a rank key, and the survivors are re-scored from the definition
//! (see [`Measure::score`]) before the final cut, so the scores are exact and the ranking is
//! the same as a naive loop's.

use rayon::prelude::*;

use super::kernels::{self, RowRun};
use super::{Backend, Candidate, EngineError, Measure, TopK, probe_count};
use crate::gallery::Shard;

/// Extra candidates kept by the scan beyond `k`, so that rounding in the fast rank key cannot
/// push a true top-k entry out before the exact re-score.
pub const RESCORE_MARGIN: usize = 8;

/// Slots per unit of parallel work: big enough to amortise the per-chunk top-k state, small
/// enough to balance the last chunks across threads.
const CHUNK_SLOTS: usize = 16 * 1024;

/// The CPU backend.
pub struct CpuEngine {
    pool: rayon::ThreadPool,
}

impl CpuEngine {
    /// An engine on `threads` worker threads (0: one per core).
    pub fn new(threads: usize) -> Self {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("gatematch-cpu-{i}"))
            .build()
            .expect("a thread pool of plain threads builds unless the OS refuses threads");
        CpuEngine { pool }
    }

    /// Worker threads in the pool.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Scans `shard` for `probes`, keeping `keep` entries per probe by rank key.
    fn scan(&self, shard: &Shard, probes: &[f32], batch: usize, keep: usize) -> Vec<TopK> {
        let dim = shard.dimension();
        let slots = shard.slot_count();
        let chunks = slots.div_ceil(CHUNK_SLOTS);
        let scan_chunk = |chunk: usize| {
            let start = chunk * CHUNK_SLOTS;
            let end = (start + CHUNK_SLOTS).min(slots);
            let run = RowRun {
                rows: &shard.rows()[start * dim..end * dim],
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
        let tops = self.scan(shard, probes, batch, keep);
        Ok(tops
            .iter()
            .enumerate()
            .map(|(p, top)| rescore(shard, &probes[p * dim..(p + 1) * dim], top, k))
            .collect())
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
