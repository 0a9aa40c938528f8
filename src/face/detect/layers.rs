//! The layers both networks are built from, on NHWC f32 activations: full convolutions
//! (im2col + `gemm`), 1×1 convolutions (`gemm` straight on the activations), 3×3 depthwise
//! convolutions (a direct loop, channels innermost), with TF's "SAME" padding.
//!
//! Work is split into row tiles across the current rayon pool; each tile writes its own
//! disjoint slice of the output, so no unsafe sharing is needed.

use std::cell::RefCell;

use rayon::prelude::*;

/// Output rows per tile at most: enough that `gemm`'s packing of the filters costs little per
/// tile, small enough that the early, large layers still spread over all threads.
const MAX_TILE_ROWS: usize = 256;
/// Output rows per tile at least, so that the filter packing (K × N) stays a small share of
/// the tile's work (rows × K × N) on the deep, wide layers.
const MIN_TILE_ROWS: usize = 32;

thread_local! {
    /// Per-worker im2col buffer, reused across tiles and layers.
    static COLUMNS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `n` feature maps of `h` × `w` × `c`, row-major NHWC.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Activations {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub data: Vec<f32>,
}

impl Activations {
    pub fn zeros(n: usize, h: usize, w: usize, c: usize) -> Self {
        Self {
            n,
            h,
            w,
            c,
            data: vec![0.0; n * h * w * c],
        }
    }

    /// Element-wise `self + other` (same shape), as one TF.js `add`.
    pub fn add(&self, other: &Activations) -> Activations {
        let mut out = self.clone();
        for (o, v) in out.data.iter_mut().zip(&other.data) {
            *o += v;
        }
        out
    }

    /// Clamps every value below zero to zero.
    pub fn relu_in_place(&mut self) {
        for v in &mut self.data {
            *v = v.max(0.0);
        }
    }
}

/// What follows the bias add.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Activation {
    /// Nothing.
    Identity,
    /// `min(max(0, x), 6)`, TF's `clipByValue(x, 0, 6)`.
    Relu6,
}

impl Activation {
    #[inline(always)]
    fn apply(self, v: f32) -> f32 {
        match self {
            Self::Identity => v,
            Self::Relu6 => v.clamp(0.0, 6.0),
        }
    }
}

/// TF "SAME" padding along one axis: the output size `ceil(in / stride)` and the zeros
/// before the first input (the total is split with the odd one after, so a stride-2 3×3
/// convolution of an even input pads nothing before and one after).
pub(crate) fn same_padding(size: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = size.div_ceil(stride);
    let total = ((out.saturating_sub(1)) * stride + kernel).saturating_sub(size);
    (out, total / 2)
}

/// Rows per tile for `rows` output rows on the current pool.
fn tile_rows(rows: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    rows.div_ceil(threads * 2)
        .clamp(MIN_TILE_ROWS, MAX_TILE_ROWS)
        .max(1)
}

/// A convolution with "SAME" padding and a per-channel bias (batch norms folded in).
#[derive(Clone, Debug)]
pub(crate) struct Conv {
    kernel: usize,
    stride: usize,
    c_in: usize,
    c_out: usize,
    /// `[kernel, kernel, c_in, c_out]` row-major, which is im2col's `[K, c_out]`.
    weights: Vec<f32>,
    bias: Vec<f32>,
}

impl Conv {
    /// `weights` laid out `[kernel, kernel, c_in, c_out]`; `bias` of `c_out` (zeros when the
    /// layer has none).
    pub fn new(
        kernel: usize,
        stride: usize,
        c_in: usize,
        c_out: usize,
        weights: Vec<f32>,
        bias: Vec<f32>,
    ) -> Self {
        debug_assert_eq!(weights.len(), kernel * kernel * c_in * c_out);
        debug_assert_eq!(bias.len(), c_out);
        Self {
            kernel,
            stride,
            c_in,
            c_out,
            weights,
            bias,
        }
    }

    /// Side of the square kernel.
    pub fn kernel(&self) -> usize {
        self.kernel
    }

    /// Stride along both axes.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Output channels.
    pub fn c_out(&self) -> usize {
        self.c_out
    }

    /// The folded filters, `[kernel, kernel, c_in, c_out]` row-major (the GPU uploads these).
    pub fn weights(&self) -> &[f32] {
        &self.weights
    }

    /// The folded bias, `c_out` values.
    pub fn bias(&self) -> &[f32] {
        &self.bias
    }

    /// Runs the convolution on `x`, adds the bias and applies `activation`.
    pub fn forward(&self, x: &Activations, activation: Activation) -> Activations {
        debug_assert_eq!(x.c, self.c_in);
        let (ho, pad_top) = same_padding(x.h, self.kernel, self.stride);
        let (wo, pad_left) = same_padding(x.w, self.kernel, self.stride);
        let mut y = Activations::zeros(x.n, ho, wo, self.c_out);
        let rows = x.n * ho * wo;
        if rows == 0 {
            return y;
        }
        let direct = self.kernel == 1 && self.stride == 1;
        let k_len = self.kernel * self.kernel * self.c_in;
        let per_tile = tile_rows(rows);
        y.data
            .par_chunks_mut(per_tile * self.c_out)
            .enumerate()
            .for_each(|(tile, out)| {
                let first = tile * per_tile;
                let count = out.len() / self.c_out;
                if direct {
                    // A 1×1 stride-1 convolution is a product on the activations as they are.
                    let lhs = &x.data[first * self.c_in..(first + count) * self.c_in];
                    self.product(lhs, count, out);
                } else {
                    COLUMNS.with_borrow_mut(|columns| {
                        columns.clear();
                        columns.resize(count * k_len, 0.0);
                        let geometry = (ho, wo, pad_top, pad_left);
                        self.im2col(x, geometry, first..first + count, columns);
                        self.product(columns, count, out);
                    });
                }
                for row in out.chunks_exact_mut(self.c_out) {
                    for (v, b) in row.iter_mut().zip(&self.bias) {
                        *v = activation.apply(*v + b);
                    }
                }
            });
        y
    }

    /// Writes im2col rows `rows` of `x` into `columns` (zeroed, `rows.len() × K`).
    fn im2col(
        &self,
        x: &Activations,
        (ho, wo, pad_top, pad_left): (usize, usize, usize, usize),
        rows: std::ops::Range<usize>,
        columns: &mut [f32],
    ) {
        let (k, s, c) = (self.kernel, self.stride, self.c_in);
        let k_len = k * k * c;
        for (r, row) in rows.enumerate() {
            let (b, oy, ox) = (row / (ho * wo), row / wo % ho, row % wo);
            let dst = &mut columns[r * k_len..(r + 1) * k_len];
            for ky in 0..k {
                let Some(iy) = (oy * s + ky).checked_sub(pad_top).filter(|&iy| iy < x.h) else {
                    continue; // zero padding: the buffer is already zero
                };
                for kx in 0..k {
                    let Some(ix) = (ox * s + kx).checked_sub(pad_left).filter(|&ix| ix < x.w)
                    else {
                        continue;
                    };
                    let src = ((b * x.h + iy) * x.w + ix) * c;
                    let at = (ky * k + kx) * c;
                    dst[at..at + c].copy_from_slice(&x.data[src..src + c]);
                }
            }
        }
    }

    /// `out[rows, c_out] = lhs[rows, K] · W[K, c_out]`, single-threaded (tiles are the
    /// parallelism).
    fn product(&self, lhs: &[f32], rows: usize, out: &mut [f32]) {
        let k_len = self.kernel * self.kernel * self.c_in;
        assert!(lhs.len() >= rows * k_len && out.len() >= rows * self.c_out);
        // SAFETY: the extents were checked just above: `lhs` holds `rows × k_len` values,
        // `out` `rows × c_out`, and `weights` `k_len × c_out` (checked at construction).
        unsafe {
            gemm::gemm(
                rows,
                self.c_out,
                k_len,
                out.as_mut_ptr(),
                1,
                self.c_out as isize,
                false, // overwrite: the output need not be read
                lhs.as_ptr(),
                1,
                k_len as isize,
                self.weights.as_ptr(),
                1,
                self.c_out as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
}

/// A 3×3 depthwise convolution with "SAME" padding and a per-channel bias (zeros when the
/// layer has none, or the folded batch norm).
#[derive(Clone, Debug)]
pub(crate) struct Depthwise {
    stride: usize,
    c: usize,
    /// `[3, 3, c]` row-major.
    weights: Vec<f32>,
    bias: Vec<f32>,
}

impl Depthwise {
    /// `weights` laid out `[3, 3, c, 1]`, `bias` of `c`.
    pub fn new(stride: usize, c: usize, weights: Vec<f32>, bias: Vec<f32>) -> Self {
        debug_assert_eq!(weights.len(), 9 * c);
        debug_assert_eq!(bias.len(), c);
        Self {
            stride,
            c,
            weights,
            bias,
        }
    }

    /// Stride along both axes.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Channels in and out.
    pub fn channels(&self) -> usize {
        self.c
    }

    /// The folded filters, `[3, 3, c]` row-major (the GPU uploads these).
    pub fn weights(&self) -> &[f32] {
        &self.weights
    }

    /// The folded bias, `c` values.
    pub fn bias(&self) -> &[f32] {
        &self.bias
    }

    /// Runs the convolution on `x`, adds the bias and applies `activation`.
    pub fn forward(&self, x: &Activations, activation: Activation) -> Activations {
        debug_assert_eq!(x.c, self.c);
        let (ho, pad_top) = same_padding(x.h, 3, self.stride);
        let (wo, pad_left) = same_padding(x.w, 3, self.stride);
        let c = self.c;
        let mut y = Activations::zeros(x.n, ho, wo, c);
        if y.data.is_empty() {
            return y;
        }
        // One task per output row: each reads three input rows and writes one output row.
        let geometry = (ho, wo, pad_top, pad_left);
        y.data
            .par_chunks_mut(wo * c)
            .enumerate()
            .for_each(|(row, out)| self.output_row(x, geometry, row, activation, out));
        y
    }

    /// Computes output row `row` (image `row / ho`, row `row % ho`) into `out`.
    fn output_row(
        &self,
        x: &Activations,
        geometry: (usize, usize, usize, usize),
        row: usize,
        activation: Activation,
        out: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            unsafe { self.output_row_avx2(x, geometry, row, activation, out) };
            return;
        }
        self.output_row_body(x, geometry, row, activation, out);
    }

    /// [`Self::output_row`] compiled for 8-wide vectors. The same multiplies and adds in the
    /// same order (no fused multiply-add), so the results are bit for bit the baseline's.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn output_row_avx2(
        &self,
        x: &Activations,
        geometry: (usize, usize, usize, usize),
        row: usize,
        activation: Activation,
        out: &mut [f32],
    ) {
        self.output_row_body(x, geometry, row, activation, out);
    }

    #[inline(always)]
    fn output_row_body(
        &self,
        x: &Activations,
        (ho, wo, pad_top, pad_left): (usize, usize, usize, usize),
        row: usize,
        activation: Activation,
        out: &mut [f32],
    ) {
        let c = self.c;
        let (b, oy) = (row / ho, row % ho);
        for ox in 0..wo {
            let acc = &mut out[ox * c..(ox + 1) * c];
            for ky in 0..3 {
                let Some(iy) = (oy * self.stride + ky)
                    .checked_sub(pad_top)
                    .filter(|&iy| iy < x.h)
                else {
                    continue;
                };
                for kx in 0..3 {
                    let Some(ix) = (ox * self.stride + kx)
                        .checked_sub(pad_left)
                        .filter(|&ix| ix < x.w)
                    else {
                        continue;
                    };
                    let src = ((b * x.h + iy) * x.w + ix) * c;
                    let w = &self.weights[(ky * 3 + kx) * c..(ky * 3 + kx + 1) * c];
                    for ((a, &v), &k) in acc.iter_mut().zip(&x.data[src..src + c]).zip(w) {
                        *a += v * k;
                    }
                }
            }
            for (a, b) in acc.iter_mut().zip(&self.bias) {
                *a = activation.apply(*a + b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain loop-nest convolution with TF "SAME" padding, the oracle for both layers.
    fn direct_conv(x: &Activations, k: usize, s: usize, w: &[f32], c_out: usize) -> Vec<f32> {
        let (ho, pt) = same_padding(x.h, k, s);
        let (wo, pl) = same_padding(x.w, k, s);
        let mut out = vec![0.0; x.n * ho * wo * c_out];
        for b in 0..x.n {
            for oy in 0..ho {
                for ox in 0..wo {
                    for co in 0..c_out {
                        let mut sum = 0.0;
                        for ky in 0..k {
                            for kx in 0..k {
                                let (iy, ix) = (oy * s + ky, ox * s + kx);
                                if iy < pt || ix < pl || iy - pt >= x.h || ix - pl >= x.w {
                                    continue;
                                }
                                for ci in 0..x.c {
                                    let xv =
                                        x.data[((b * x.h + iy - pt) * x.w + ix - pl) * x.c + ci];
                                    sum += xv * w[((ky * k + kx) * x.c + ci) * c_out + co];
                                }
                            }
                        }
                        out[((b * ho + oy) * wo + ox) * c_out + co] = sum;
                    }
                }
            }
        }
        out
    }

    fn input(n: usize, h: usize, w: usize, c: usize) -> Activations {
        let mut x = Activations::zeros(n, h, w, c);
        for (i, v) in x.data.iter_mut().enumerate() {
            *v = ((i * 37 % 101) as f32 - 50.0) / 50.0;
        }
        x
    }

    #[test]
    fn same_padding_follows_tf() {
        assert_eq!(same_padding(112, 3, 2), (56, 0));
        assert_eq!(same_padding(7, 3, 2), (4, 1));
        assert_eq!(same_padding(5, 3, 1), (5, 1));
        assert_eq!(same_padding(1, 3, 2), (1, 1));
        assert_eq!(same_padding(16, 1, 1), (16, 0));
    }

    #[test]
    fn convolutions_match_the_loop_nest() {
        for (n, h, w, c_in, c_out, k, s) in [
            (1, 9, 7, 3, 5, 3, 2),
            (2, 8, 8, 4, 6, 3, 2),
            (2, 5, 6, 3, 4, 3, 1),
            (3, 4, 4, 8, 16, 1, 1),
        ] {
            let x = input(n, h, w, c_in);
            let weights: Vec<f32> = (0..k * k * c_in * c_out)
                .map(|i| ((i * 13 % 17) as f32 - 8.0) / 8.0)
                .collect();
            let conv = Conv::new(k, s, c_in, c_out, weights.clone(), vec![0.0; c_out]);
            let ours = conv.forward(&x, Activation::Identity);
            let theirs = direct_conv(&x, k, s, &weights, c_out);
            let worst = ours
                .data
                .iter()
                .zip(&theirs)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(worst < 1e-4, "{n}x{h}x{w}x{c_in} k{k} s{s}: {worst}");
        }
    }

    #[test]
    fn depthwise_matches_the_loop_nest_per_channel() {
        let (c, s) = (5, 2);
        let x = input(2, 7, 6, c);
        let weights: Vec<f32> = (0..9 * c).map(|i| (i % 7) as f32 - 3.0).collect();
        let ours =
            Depthwise::new(s, c, weights.clone(), vec![0.5; c]).forward(&x, Activation::Relu6);
        // The depthwise convolution is, per channel, a full convolution of one channel.
        for ch in 0..c {
            let mut one = Activations::zeros(x.n, x.h, x.w, 1);
            for (o, v) in one.data.iter_mut().zip(x.data.iter().skip(ch).step_by(c)) {
                *o = *v;
            }
            let w: Vec<f32> = weights.iter().skip(ch).step_by(c).copied().collect();
            let theirs = direct_conv(&one, 3, s, &w, 1);
            for (i, t) in theirs.iter().enumerate() {
                let expected = (t + 0.5).clamp(0.0, 6.0);
                assert!((ours.data[i * c + ch] - expected).abs() < 1e-5);
            }
        }
    }
}
