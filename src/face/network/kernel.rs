//! The register-tiled matrix product every CPU convolution ends in: `MR` rows of an activation
//! matrix times a `K × NR` panel of filters packed at load, summed in 12 AVX2 registers.
//!
//! Why our own and not a GEMM crate's: a crate packs both operands on every call, and a
//! network calls it thousands of times a pass on small operands (K of 32 to 2,304, 32 to 256
//! output channels). Here the filters are packed once, when the model loads, and the
//! activation rows are read where the caller built them, so all that is left per call is the
//! arithmetic: per step of K, two loads of the panel, six broadcasts, twelve fused
//! multiply-adds.
//!
//! Without AVX2 and FMA the same product runs as a plain loop nest (same summation order per
//! output, so results differ from the AVX2 path only by FMA's single rounding).

/// Rows of the activation matrix per microkernel call.
pub(crate) const MR: usize = 6;
/// Output channels per packed panel (two 8-wide registers).
pub(crate) const NR: usize = 16;

/// Steps of K ahead that the AVX2 kernel prefetches the panel (one 64-byte line a step).
#[cfg(target_arch = "x86_64")]
const PREFETCH_STEPS: usize = 32;

/// A `K × N` filter matrix cut into panels of `NR` columns, each `K × NR` row-major and
/// contiguous, so that the microkernel walks one panel front to back. `N` is padded with zero
/// columns up to a multiple of `NR`.
#[derive(Clone, Debug)]
pub(crate) struct PackedPanels {
    k: usize,
    n: usize,
    data: Vec<f32>,
}

impl PackedPanels {
    /// Packs `matrix`, `k × n` row-major.
    pub fn new(matrix: &[f32], k: usize, n: usize) -> Self {
        debug_assert_eq!(matrix.len(), k * n);
        let panels = n.div_ceil(NR);
        let mut data = vec![0.0; panels * k * NR];
        for (p, panel) in data.chunks_exact_mut(k * NR).enumerate() {
            let cols = p * NR..((p + 1) * NR).min(n);
            for (row, dst) in panel.chunks_exact_mut(NR).enumerate() {
                dst[..cols.len()]
                    .copy_from_slice(&matrix[row * n + cols.start..row * n + cols.end]);
            }
        }
        Self { k, n, data }
    }

    /// Rows (K).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Number of panels.
    pub fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    /// Panel `p`, `K × NR`.
    pub fn panel(&self, p: usize) -> &[f32] {
        &self.data[p * self.k * NR..(p + 1) * self.k * NR]
    }
}

/// `out = a · panel`: `a` is `MR` rows of `panel.len() / NR` values, row `r` starting at
/// `a[r * lda]`; `out` is `MR × NR`, row-major.
///
/// # Panics
/// If `a` is shorter than the rows it must hold.
#[inline]
pub(crate) fn product(a: &[f32], lda: usize, panel: &[f32], out: &mut [[f32; NR]; MR]) {
    // SAFETY: `out` is exactly `MR` rows of `NR` values at a stride of `NR`.
    unsafe { product_to(a, lda, panel, out.as_mut_ptr().cast(), NR) }
}

/// `c = a · panel` as [`product`], with row `r` of the result written to `c[r * ldc..][..NR]`.
///
/// # Safety
/// `c` must be valid for writes of `NR` values at each of `c`, `c + ldc`, … `c + (MR - 1) × ldc`,
/// and no other thread may access those values meanwhile.
///
/// # Panics
/// If `a` is shorter than the rows it must hold.
#[inline]
pub(crate) unsafe fn product_to(a: &[f32], lda: usize, panel: &[f32], c: *mut f32, ldc: usize) {
    let k = panel.len() / NR;
    assert!(
        k == 0 || a.len() >= (MR - 1) * lda + k,
        "activation rows out of bounds"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA (checked above); the bounds of `a` were checked
            // above, `panel` holds exactly `k × NR` values, and `c` is the caller's to vouch for.
            unsafe { product_avx2(k, a.as_ptr(), lda, panel.as_ptr(), c, ldc) };
            return;
        }
    }
    // SAFETY: as above.
    unsafe { product_portable(k, a, lda, panel, c, ldc) };
}

/// Whether this CPU runs the AVX2 + FMA code paths.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// # Safety
/// As [`product_to`].
unsafe fn product_portable(
    k: usize,
    a: &[f32],
    lda: usize,
    panel: &[f32],
    c: *mut f32,
    ldc: usize,
) {
    let mut out = [[0.0f32; NR]; MR];
    for p in 0..k {
        let b = &panel[p * NR..(p + 1) * NR];
        for (r, row) in out.iter_mut().enumerate() {
            let x = a[r * lda + p];
            for (o, &w) in row.iter_mut().zip(b) {
                *o = x.mul_add(w, *o);
            }
        }
    }
    for (r, row) in out.iter().enumerate() {
        // SAFETY: per the function's contract.
        unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), c.add(r * ldc), NR) };
    }
}

/// # Safety
/// AVX2 and FMA must be present; `a` must hold `MR` rows of `k` values at stride `lda`, `b`
/// `k × NR` values, and `c` as in [`product_to`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn product_avx2(
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
) {
    use std::arch::x86_64::*;
    // SAFETY (whole body): every pointer offset stays inside the extents the caller vouches
    // for: row r < MR, step p < k.
    unsafe {
        let rows = [
            a,
            a.add(lda),
            a.add(2 * lda),
            a.add(3 * lda),
            a.add(4 * lda),
            a.add(5 * lda),
        ];
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        for p in 0..k {
            // Each step reads one 64-byte line of the panel; ask for the line PREFETCH_STEPS
            // ahead, as the deep layers at small batches stream their filters from memory.
            _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add((p + PREFETCH_STEPS) * NR).cast());
            let b0 = _mm256_loadu_ps(b.add(p * NR));
            let b1 = _mm256_loadu_ps(b.add(p * NR + 8));
            for r in 0..MR {
                let x = _mm256_broadcast_ss(&*rows[r].add(p));
                acc[r][0] = _mm256_fmadd_ps(x, b0, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(x, b1, acc[r][1]);
            }
        }
        for (r, [lo, hi]) in acc.iter().enumerate() {
            _mm256_storeu_ps(c.add(r * ldc), *lo);
            _mm256_storeu_ps(c.add(r * ldc + 8), *hi);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The packed product against the definition, at K values around the unroll and with N
    /// not a multiple of the panel width.
    #[test]
    fn product_matches_the_definition() {
        let mut seed = 0x9e37_79b9_u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            (seed as f32 / u32::MAX as f32) - 0.5
        };
        for (k, n) in [(1, 16), (3, 20), (32, 32), (147, 32), (289, 48)] {
            let lda = k + 3;
            let a: Vec<f32> = (0..MR * lda).map(|_| next()).collect();
            let w: Vec<f32> = (0..k * n).map(|_| next()).collect();
            let packed = PackedPanels::new(&w, k, n);
            for p in 0..packed.panels() {
                let mut out = [[0.0; NR]; MR];
                product(&a, lda, packed.panel(p), &mut out);
                for (r, row) in out.iter().enumerate() {
                    for (j, &got) in row.iter().enumerate() {
                        let col = p * NR + j;
                        let want: f64 = if col < n {
                            (0..k)
                                .map(|i| a[r * lda + i] as f64 * w[i * n + col] as f64)
                                .sum()
                        } else {
                            0.0
                        };
                        assert!(
                            (got as f64 - want).abs() < 1e-5,
                            "k {k} n {n} r {r} col {col}"
                        );
                    }
                }
            }
        }
    }
}
