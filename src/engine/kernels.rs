//! The inner loop of the CPU scan: rank keys of a run of gallery rows against a batch of probes.
//!
//! One register-tiled kernel serves every batch size. It multiplies a tile of gallery rows
//! with a group of probes, keeping twelve running dot products in registers, and reduces them
//! at the end of the rows: two rows by six probes for full groups (eight loads feed twelve
//! fused multiply-adds, and a block of rows is re-read by a third fewer groups than with four
//! probes), three rows by four probes for the smaller groups of small batches. Rows are visited in blocks that fit the per-core L2 cache; for each block the probe
//! groups take turns, so a row is read from memory once per batch, however large the batch:
//!
//! * at batch 1 the scan streams the gallery once and is bound by memory bandwidth;
//! * at large batches eight loads feed twelve fused multiply-adds, so the scan is bound by the
//!   FMA units and the L2 cache, not by packing or memory.
//!
//! The kernel is written with `std::arch` AVX2 + FMA behind run-time detection rather than
//! left to the auto-vectoriser (which neither keeps twelve accumulators in registers nor fuses
//! the multiply-adds) or to a general matrix-product crate (which re-packs both operands on
//! every call and leaves the top-k selection to a second pass over a score matrix). A scalar
//! path serves other CPUs and checks the SIMD one.

use super::TopK;

/// Probes that share one pass over a tile of rows: twelve accumulators of two rows × six
/// probes, plus two row registers and one probe register, fit the sixteen AVX2 registers
/// without spills. (Measured on the development machine at batch 64 and 128 values: 2.4–2.9e8
/// comparisons/s against 2.0e8 with tiles of three rows by four probes.)
pub const PROBES_PER_TILE: usize = 6;

/// Bytes of gallery rows per cache block: the block stays in L2 while every probe group of
/// the batch passes over it.
const BLOCK_BYTES: usize = 128 * 1024;

/// Row-major gallery values in one of the stored formats.
#[derive(Clone, Copy)]
pub enum Rows<'a> {
    /// The canonical f32 rows.
    F32(&'a [f32]),
    /// The f16 copy, as IEEE half-precision bits: half the bytes for bandwidth-bound scans.
    F16(&'a [u16]),
}

impl<'a> Rows<'a> {
    fn len(&self) -> usize {
        match self {
            Rows::F32(v) => v.len(),
            Rows::F16(v) => v.len(),
        }
    }

    fn range(&self, start: usize, end: usize) -> Rows<'a> {
        match *self {
            Rows::F32(v) => Rows::F32(&v[start..end]),
            Rows::F16(v) => Rows::F16(&v[start..end]),
        }
    }

    fn value(&self, i: usize) -> f32 {
        match self {
            Rows::F32(v) => v[i],
            Rows::F16(v) => f32::from(half::f16::from_bits(v[i])),
        }
    }

    fn bytes_per_value(&self) -> usize {
        match self {
            Rows::F32(_) => 4,
            Rows::F16(_) => 2,
        }
    }
}

/// The gallery rows a scan covers, with their rank keys.
pub struct RowRun<'a> {
    /// Row-major templates, `dim` values each.
    pub rows: Rows<'a>,
    /// Rank-key scale per row.
    pub key_scale: &'a [f32],
    /// Rank-key bias per row.
    pub key_bias: &'a [f32],
    /// The slot of the first row.
    pub first_slot: u32,
    /// Values per row.
    pub dim: usize,
}

/// Offers every row of `run` to `tops[i]` with its key against `probes[i]`.
pub fn scan(run: &RowRun<'_>, probes: &[&[f32]], tops: &mut [TopK]) {
    debug_assert_eq!(probes.len(), tops.len());
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            // SAFETY: the features the kernel is compiled for were detected just above.
            scan_blocked(run, probes, tops, x86::block);
            return;
        }
    }
    scan_blocked(run, probes, tops, block_portable);
}

/// [`scan`] on the scalar kernel alone, as a check on the SIMD one.
#[cfg(test)]
pub fn scan_portable(run: &RowRun<'_>, probes: &[&[f32]], tops: &mut [TopK]) {
    scan_blocked(run, probes, tops, block_portable);
}

/// Dot products of `rows` (row-major, `dim` values each) with up to [`PROBES_PER_TILE`]
/// probes, written to `dots[p * row_count + r]`.
type BlockFn = unsafe fn(Rows<'_>, usize, &[&[f32]], &mut [f32]);

#[inline(always)]
fn scan_blocked(run: &RowRun<'_>, probes: &[&[f32]], tops: &mut [TopK], block_fn: BlockFn) {
    let dim = run.dim;
    let rows = run.rows.len() / dim;
    let block_rows = (BLOCK_BYTES / (run.rows.bytes_per_value() * dim)).max(8);
    let mut dots = vec![0f32; PROBES_PER_TILE * block_rows];
    let mut block = 0;
    while block < rows {
        let end = (block + block_rows).min(rows);
        let n = end - block;
        let block_values = run.rows.range(block * dim, end * dim);
        let scale = &run.key_scale[block..end];
        let bias = &run.key_bias[block..end];
        for (group, group_tops) in probes
            .chunks(PROBES_PER_TILE)
            .zip(tops.chunks_mut(PROBES_PER_TILE))
        {
            // SAFETY: `block_fn` is the portable kernel, or the AVX2 one, which `scan` passes
            // only after detecting the features; it reads `dim` values of each row and probe
            // and writes `group.len() * n` dots, all within the slices handed over.
            unsafe { block_fn(block_values, dim, group, &mut dots[..group.len() * n]) };
            for (p, top) in group_tops.iter_mut().enumerate() {
                offer_keys(
                    &dots[p * n..(p + 1) * n],
                    scale,
                    bias,
                    run.first_slot + block as u32,
                    top,
                );
            }
        }
        block = end;
    }
}

/// Turns dots into rank keys and offers those that can enter `top`.
#[inline(always)]
fn offer_keys(dots: &[f32], scale: &[f32], bias: &[f32], first_slot: u32, top: &mut TopK) {
    for (r, ((&dot, &s), &b)) in dots.iter().zip(scale).zip(bias).enumerate() {
        let key = dot * s + b;
        if key >= top.floor() {
            top.offer(key, first_slot + r as u32);
        }
    }
}

/// The scalar block kernel.
fn block_portable(rows: Rows<'_>, dim: usize, probes: &[&[f32]], dots: &mut [f32]) {
    let n = rows.len() / dim;
    for (p, probe) in probes.iter().enumerate() {
        for r in 0..n {
            dots[p * n + r] = (0..dim).map(|i| rows.value(r * dim + i) * probe[i]).sum();
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::Rows;

    /// Sum of the eight lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn lane_sum(v: __m256) -> f32 {
        let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
        _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps::<0b01>(pair, pair)))
    }

    /// A block of rows against up to six probes (see [`super::BlockFn`]).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn block(rows: Rows<'_>, dim: usize, probes: &[&[f32]], dots: &mut [f32]) {
        // SAFETY: the caller hands whole rows and probes of `dim` values, and room for
        // `probes.len()` dots per row.
        unsafe {
            match (rows, probes.len()) {
                (Rows::F32(r), 1) => {
                    block_n::<1, false>(r.as_ptr().cast(), r.len(), dim, probes, dots)
                }
                (Rows::F32(r), 2) => {
                    block_n::<2, false>(r.as_ptr().cast(), r.len(), dim, probes, dots)
                }
                (Rows::F32(r), 3) => {
                    block_n::<3, false>(r.as_ptr().cast(), r.len(), dim, probes, dots)
                }
                (Rows::F32(r), 4) => {
                    block_n::<4, false>(r.as_ptr().cast(), r.len(), dim, probes, dots)
                }
                (Rows::F32(r), 5) => {
                    block_n::<5, false>(r.as_ptr().cast(), r.len(), dim, probes, dots)
                }
                (Rows::F32(r), _) => {
                    block_n::<6, false>(r.as_ptr().cast(), r.len(), dim, probes, dots)
                }
                (Rows::F16(r), 1) => {
                    block_n::<1, true>(r.as_ptr().cast(), r.len(), dim, probes, dots)
                }
                (Rows::F16(r), 2) => {
                    block_n::<2, true>(r.as_ptr().cast(), r.len(), dim, probes, dots)
                }
                (Rows::F16(r), 3) => {
                    block_n::<3, true>(r.as_ptr().cast(), r.len(), dim, probes, dots)
                }
                (Rows::F16(r), 4) => {
                    block_n::<4, true>(r.as_ptr().cast(), r.len(), dim, probes, dots)
                }
                (Rows::F16(r), 5) => {
                    block_n::<5, true>(r.as_ptr().cast(), r.len(), dim, probes, dots)
                }
                (Rows::F16(r), _) => {
                    block_n::<6, true>(r.as_ptr().cast(), r.len(), dim, probes, dots)
                }
            }
        }
    }

    /// `values` values at `base`: f32, or f16 bits when `HALF`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn block_n<const P: usize, const HALF: bool>(
        base: *const u8,
        values: usize,
        dim: usize,
        probes: &[&[f32]],
        dots: &mut [f32],
    ) {
        let n = values / dim;
        let width = if HALF { 2 } else { 4 };
        // SAFETY: row r starts r·dim values past `base` and r < n = values / dim.
        let row = |r: usize| unsafe { base.add(r * dim * width) };
        let mut r = 0;
        // Twelve accumulators either way (three rows by up to four probes, or two rows by five
        // or six): enough independent FMA chains to cover the FMA latency.
        // SAFETY (all three calls): every row and probe holds `dim` values and `dots` has
        // room for P dots per row.
        if P <= 4 {
            while r + 3 <= n {
                unsafe {
                    tile_n::<3, P, HALF>([row(r), row(r + 1), row(r + 2)], dim, probes, dots, n, r)
                };
                r += 3;
            }
        }
        while r + 2 <= n {
            unsafe { tile_n::<2, P, HALF>([row(r), row(r + 1)], dim, probes, dots, n, r) };
            r += 2;
        }
        if r < n {
            unsafe { tile_n::<1, P, HALF>([row(r)], dim, probes, dots, n, r) };
        }
    }

    /// Eight values of a row, widened to f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8<const HALF: bool>(row: *const u8, d: usize) -> __m256 {
        // SAFETY: the caller keeps d + 8 within the row.
        unsafe {
            if HALF {
                _mm256_cvtph_ps(_mm_loadu_si128(row.cast::<u16>().add(d).cast()))
            } else {
                _mm256_loadu_ps(row.cast::<f32>().add(d))
            }
        }
    }

    /// One value of a row, widened to f32.
    #[inline]
    unsafe fn load1<const HALF: bool>(row: *const u8, d: usize) -> f32 {
        // SAFETY: the caller keeps d within the row.
        unsafe {
            if HALF {
                f32::from(half::f16::from_bits(*row.cast::<u16>().add(d)))
            } else {
                *row.cast::<f32>().add(d)
            }
        }
    }

    /// `R` rows against `P` probes; writes `dots[p * n + first + i]`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile_n<const R: usize, const P: usize, const HALF: bool>(
        rows: [*const u8; R],
        dim: usize,
        probes: &[&[f32]],
        dots: &mut [f32],
        n: usize,
        first: usize,
    ) {
        let wide = dim - dim % 8;
        let mut acc = [[_mm256_setzero_ps(); R]; P];
        let mut d = 0;
        while d < wide {
            // SAFETY: d + 8 <= wide <= dim, the length of every row and probe.
            unsafe {
                let mut g = [_mm256_setzero_ps(); R];
                for i in 0..R {
                    g[i] = load8::<HALF>(rows[i], d);
                }
                for p in 0..P {
                    let q = _mm256_loadu_ps(probes[p].as_ptr().add(d));
                    for i in 0..R {
                        acc[p][i] = _mm256_fmadd_ps(g[i], q, acc[p][i]);
                    }
                }
            }
            d += 8;
        }
        for p in 0..P {
            for i in 0..R {
                let mut dot = lane_sum(acc[p][i]);
                let tail = &probes[p][wide..dim];
                for (j, &q) in (wide..dim).zip(tail) {
                    // SAFETY: j < dim.
                    dot += unsafe { load1::<HALF>(rows[i], j) } * q;
                }
                dots[p * n + first + i] = dot;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SIMD and scalar kernels keep the same candidates at every batch and dimension.
    #[test]
    fn simd_and_portable_kernels_agree() {
        let mut state = 12345u32;
        let mut next = || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for dim in [1, 5, 8, 13, 16, 64, 130] {
            let rows: Vec<f32> = (0..37 * dim).map(|_| next()).collect();
            let probes: Vec<f32> = (0..9 * dim).map(|_| next()).collect();
            let scale = vec![1.0; 37];
            let bias = vec![0.0; 37];
            let halves: Vec<u16> = rows
                .iter()
                .map(|&v| half::f16::from_f32(v).to_bits())
                .collect();
            for stored in [Rows::F32(&rows), Rows::F16(&halves)] {
                let run = RowRun {
                    rows: stored,
                    key_scale: &scale,
                    key_bias: &bias,
                    first_slot: 0,
                    dim,
                };
                for batch in 1..=9 {
                    let group: Vec<&[f32]> = probes.chunks(dim).take(batch).collect();
                    let mut fast = vec![TopK::new(37); batch];
                    let mut slow = vec![TopK::new(37); batch];
                    scan(&run, &group, &mut fast);
                    scan_portable(&run, &group, &mut slow);
                    for (f, s) in fast.iter().zip(&slow) {
                        assert_eq!(f.entries().len(), 37);
                        for (a, b) in f.entries().iter().zip(s.entries()) {
                            assert!((a.0 - b.0).abs() < 1e-5, "dim {dim} batch {batch}");
                        }
                    }
                }
            }
        }
    }
}
