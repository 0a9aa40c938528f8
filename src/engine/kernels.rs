//! The inner loops of the CPU scan: rank keys of a run of gallery rows against a few probes.
//!
//! Two paths, chosen by batch size:
//!
//! * **few probes** ([`scan_rows`]): each gallery row is read once and multiplied with up to
//!   [`MAX_ROW_PROBES`] probes held in L1. At batch 1 the scan is bound by memory bandwidth,
//!   so the goal is to stream rows with as little work per byte as possible. Hand-written with
//!   `std::arch` AVX2 + FMA behind run-time detection, because the portable fallback leaves
//!   the horizontal sums and the fused multiply-adds to chance; a scalar loop serves other CPUs.
//! * **many probes** ([`scan_block_gemm`]): a block of rows against the whole batch is a small
//!   matrix product, bound by arithmetic. The `gemm` crate packs operands and runs
//!   register-blocked micro-kernels for the CPU it finds at run time; writing that by hand
//!   would buy nothing it does not already do.
//!
//! Both produce the same keys up to float rounding; final scores are recomputed elsewhere.

use super::TopK;

/// At most this many probes share one pass over the rows in [`scan_rows`]; more cost
/// registers without saving memory traffic.
pub const MAX_ROW_PROBES: usize = 4;

/// Batches at least this large go through [`scan_block_gemm`].
pub const GEMM_MIN_BATCH: usize = 8;

/// Rows per matrix-product block: the block (rows × dim) and its scores (batch × rows) stay
/// in the per-core L2 for dimensions up to 512 and batches up to 64.
pub const GEMM_BLOCK_ROWS: usize = 256;

/// The gallery rows a scan covers, with their rank keys.
pub struct RowRun<'a> {
    /// Row-major templates, `dim` values each.
    pub rows: &'a [f32],
    /// Rank-key scale per row.
    pub key_scale: &'a [f32],
    /// Rank-key bias per row.
    pub key_bias: &'a [f32],
    /// The slot of the first row.
    pub first_slot: u32,
    /// Values per row.
    pub dim: usize,
}

/// Offers every row of `run` to `tops[i]` with its key against `probes[i]` (at most
/// [`MAX_ROW_PROBES`] probes).
pub fn scan_rows(run: &RowRun<'_>, probes: &[&[f32]], tops: &mut [TopK]) {
    debug_assert!(probes.len() <= MAX_ROW_PROBES && probes.len() == tops.len());
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the features the function is compiled for were detected just above.
            unsafe {
                match probes.len() {
                    1 => x86::scan_rows::<1>(run, probes, tops),
                    2 => x86::scan_rows::<2>(run, probes, tops),
                    3 => x86::scan_rows::<3>(run, probes, tops),
                    _ => x86::scan_rows::<4>(run, probes, tops),
                }
            }
            return;
        }
    }
    scan_rows_portable(run, probes, tops);
}

/// The scalar version of [`scan_rows`], for CPUs without AVX2 and as a check on it.
pub fn scan_rows_portable(run: &RowRun<'_>, probes: &[&[f32]], tops: &mut [TopK]) {
    for (r, row) in run.rows.chunks_exact(run.dim).enumerate() {
        for (probe, top) in probes.iter().zip(tops.iter_mut()) {
            let dot: f32 = row.iter().zip(probe.iter()).map(|(a, b)| a * b).sum();
            let key = dot * run.key_scale[r] + run.key_bias[r];
            if key >= top.floor() {
                top.offer(key, run.first_slot + r as u32);
            }
        }
    }
}

/// Offers every row of `run` to `tops[i]` with its key against probe `i` of `probes`
/// (row-major, `run.dim` values each), through one matrix product per block of rows.
///
/// `scores` is scratch space, reused between calls to spare the allocator.
pub fn scan_block_gemm(run: &RowRun<'_>, probes: &[f32], tops: &mut [TopK], scores: &mut Vec<f32>) {
    let dim = run.dim;
    let batch = tops.len();
    let rows = run.rows.len() / dim;
    scores.resize(batch * GEMM_BLOCK_ROWS, 0.0);
    let mut start = 0;
    while start < rows {
        let n = GEMM_BLOCK_ROWS.min(rows - start);
        let block = &run.rows[start * dim..(start + n) * dim];
        // SAFETY: the strides describe `probes` (batch × dim, row-major), the transpose of
        // `block` (dim × n: element (d, r) at r·dim + d) and `scores` (batch × n, row stride
        // n), and every pointer covers the extent those strides reach.
        unsafe {
            gemm::gemm(
                batch,
                n,
                dim,
                scores.as_mut_ptr(),
                1,
                n as isize,
                false,
                probes.as_ptr(),
                1,
                dim as isize,
                block.as_ptr(),
                dim as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        let scale = &run.key_scale[start..start + n];
        let bias = &run.key_bias[start..start + n];
        for (p, top) in tops.iter_mut().enumerate() {
            let dots = &scores[p * n..(p + 1) * n];
            for r in 0..n {
                let key = dots[r] * scale[r] + bias[r];
                if key >= top.floor() {
                    top.offer(key, run.first_slot + (start + r) as u32);
                }
            }
        }
        start += n;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{RowRun, TopK};

    /// Sum of the eight lanes.
    #[target_feature(enable = "avx2,fma")]
    fn horizontal_sum(v: __m256) -> f32 {
        let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
        let one = _mm_add_ss(pair, _mm_shuffle_ps::<0b01>(pair, pair));
        _mm_cvtss_f32(one)
    }

    /// `P` probes against every row; two accumulators per probe hide the FMA latency.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn scan_rows<const P: usize>(
        run: &RowRun<'_>,
        probes: &[&[f32]],
        tops: &mut [TopK],
    ) {
        let dim = run.dim;
        let wide = dim - dim % 16;
        for (r, row) in run.rows.chunks_exact(dim).enumerate() {
            let mut acc = [[_mm256_setzero_ps(); 2]; P];
            let mut d = 0;
            while d < wide {
                // SAFETY: d + 16 <= wide <= dim, the length of `row` and of every probe.
                unsafe {
                    let g0 = _mm256_loadu_ps(row.as_ptr().add(d));
                    let g1 = _mm256_loadu_ps(row.as_ptr().add(d + 8));
                    for p in 0..P {
                        let q = probes[p].as_ptr().add(d);
                        acc[p][0] = _mm256_fmadd_ps(g0, _mm256_loadu_ps(q), acc[p][0]);
                        acc[p][1] = _mm256_fmadd_ps(g1, _mm256_loadu_ps(q.add(8)), acc[p][1]);
                    }
                }
                d += 16;
            }
            let slot = run.first_slot + r as u32;
            for p in 0..P {
                let mut dot = horizontal_sum(_mm256_add_ps(acc[p][0], acc[p][1]));
                for i in wide..dim {
                    dot += row[i] * probes[p][i];
                }
                let key = dot * run.key_scale[r] + run.key_bias[r];
                if key >= tops[p].floor() {
                    tops[p].offer(key, slot);
                }
            }
        }
    }
}
