//! Winograd's minimal filtering, F(2 × 2, 3 × 3), for the network's 3 × 3, stride-1, SAME
//! convolutions.
//!
//! Each 2 × 2 patch of outputs is computed from the 4 × 4 patch of inputs around it as
//! `Y = Aᵀ [U ⊙ V] A`, with `V = Bᵀ d B` (the input patch transformed: additions only),
//! `U = G g Gᵀ` (the filter transformed, once, at load) and the element-wise product summed
//! over input channels. That sum is, for each of the 16 patch positions, a matrix product
//! `[patches, C_in] · [C_in, C_out]`, which the packed microkernel computes; per output the
//! network then does 16 / 4 = 4 multiply-adds per channel pair instead of 9.
//!
//! Numerically F(2 × 2, 3 × 3) is the benign member of the family: its transforms have
//! coefficients 0, ±1 and ±½, so it rounds about as often as the direct sum. On the fixture
//! photos the descriptors stay within the 1e-4 of the reference that MODEL.md asks of the CPU
//! (`tests/face_fidelity.rs`), and the unit test below bounds a layer against the definition.
//!
//! Patches are processed in blocks sized so that one block's transformed inputs and products
//! stay in the core's L2 cache between the three steps.

use std::cell::RefCell;

use rayon::prelude::*;

use crate::face::model::{ConvSpec, Padding};

use super::conv::{Epilogue, OutPtr, WorkSplit};
#[cfg(target_arch = "x86_64")]
use super::kernel::has_avx2_fma;
use super::kernel::{MR, NR, PackedPanels, product_to};
use super::tensor::FeatureMap;

/// Patch positions: a 4 × 4 input patch, transformed, has 16 values per channel.
const POSITIONS: usize = 16;
/// Bytes of transformed inputs a block holds at most (the products take as much again).
const BLOCK_BYTES: usize = 128 * 1024;
/// Patches per block at most.
const MAX_BLOCK_PATCHES: usize = 96;

thread_local! {
    /// Per-worker buffers: transformed inputs, then products.
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// A 3 × 3 convolution's filters transformed for F(2 × 2, 3 × 3): for each of the 16 patch
/// positions, a `C_in × C_out` matrix packed for the microkernel.
#[derive(Clone, Debug)]
pub(crate) struct Winograd {
    c_in: usize,
    c_out: usize,
    positions: Vec<PackedPanels>,
}

impl Winograd {
    /// Whether `spec` is a convolution this algorithm computes.
    pub fn fits(spec: &ConvSpec) -> bool {
        spec.kernel == 3 && spec.stride == 1 && spec.padding == Padding::Same
    }

    /// Transforms `weights`, `[3, 3, c_in, c_out]` row-major (already folded), in f64.
    pub fn new(weights: &[f32], c_in: usize, c_out: usize) -> Self {
        const G: [[f64; 3]; 4] = [
            [1.0, 0.0, 0.0],
            [0.5, 0.5, 0.5],
            [0.5, -0.5, 0.5],
            [0.0, 0.0, 1.0],
        ];
        debug_assert_eq!(weights.len(), 9 * c_in * c_out);
        let mut transformed = vec![vec![0.0f32; c_in * c_out]; POSITIONS];
        for ci in 0..c_in {
            for co in 0..c_out {
                let g =
                    |ky: usize, kx: usize| weights[((ky * 3 + kx) * c_in + ci) * c_out + co] as f64;
                for i in 0..4 {
                    for j in 0..4 {
                        let mut u = 0.0;
                        for (a, ga) in G[i].iter().enumerate() {
                            for (b, gb) in G[j].iter().enumerate() {
                                u += ga * g(a, b) * gb;
                            }
                        }
                        transformed[i * 4 + j][ci * c_out + co] = u as f32;
                    }
                }
            }
        }
        Self {
            c_in,
            c_out,
            positions: transformed
                .iter()
                .map(|u| PackedPanels::new(u, c_in, c_out))
                .collect(),
        }
    }

    /// `y = epilogue(conv(x) + bias)`; `y` has `x`'s batch and size and `c_out` channels.
    pub fn forward(
        &self,
        x: &FeatureMap,
        y: &mut FeatureMap,
        bias: &[f32],
        epilogue: Epilogue<'_>,
        threads: usize,
    ) {
        debug_assert_eq!((x.c, y.c, x.h, x.w), (self.c_in, self.c_out, y.h, y.w));
        let (tiles_y, tiles_x) = (x.h.div_ceil(2), x.w.div_ceil(2));
        let patches = x.n * tiles_y * tiles_x;
        let panels = self.c_out.div_ceil(NR);
        let max_patches = (BLOCK_BYTES / (4 * POSITIONS * self.c_in)).min(MAX_BLOCK_PATCHES);
        let split = WorkSplit::new(patches, max_patches, threads, panels, false);
        let per_task = split.max_units();
        let out = OutPtr(y.data.as_mut_ptr());
        let geometry = Geometry {
            tiles_y,
            tiles_x,
            h: x.h,
            w: x.w,
        };

        (0..split.tasks()).into_par_iter().for_each(|task| {
            let block = split.units(task);
            let group_panels = split.panels(task);
            if block.is_empty() || group_panels.is_empty() {
                return;
            }
            SCRATCH.with_borrow_mut(|scratch| {
                let cols = group_panels.start * NR..(group_panels.end * NR).min(self.c_out);
                let width = group_panels.len() * NR;
                scratch.fit(per_task, self.c_in, width);
                self.transform_inputs(x, geometry, block.clone(), per_task, scratch);
                for (position, packed) in self.positions.iter().enumerate() {
                    let v = &scratch.inputs[position * per_task * self.c_in..];
                    let m =
                        &mut scratch.products[position * per_task * width..][..per_task * width];
                    for (k, p) in group_panels.clone().enumerate() {
                        for patch in (0..block.len()).step_by(MR) {
                            let c = &mut m[patch * width + k * NR..];
                            assert!(c.len() >= (MR - 1) * width + NR);
                            // SAFETY: `c` holds the MR rows of NR values at a stride of
                            // `width` (asserted), and is this thread's own.
                            unsafe {
                                product_to(
                                    &v[patch * self.c_in..],
                                    self.c_in,
                                    packed.panel(p),
                                    c.as_mut_ptr(),
                                    width,
                                )
                            };
                        }
                    }
                }
                // SAFETY: this task writes only the outputs of its own patches, in its own
                // channel range.
                unsafe {
                    self.transform_outputs(
                        scratch, width, geometry, block, per_task, cols, bias, epilogue, out,
                    )
                };
            });
        });
    }

    /// `inputs[position][patch][channel]` = `Bᵀ d B` of each patch of `block`, with zeros for
    /// the padding around the image. The rows past the block's end (up to `stride`) are left
    /// as they are: their products are computed and never read.
    fn transform_inputs(
        &self,
        x: &FeatureMap,
        geometry: Geometry,
        block: std::ops::Range<usize>,
        stride: usize,
        scratch: &mut Scratch,
    ) {
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: the CPU has AVX2 (checked above).
            unsafe { self.transform_inputs_avx2(x, geometry, block, stride, scratch) };
            return;
        }
        self.transform_inputs_body(x, geometry, block, stride, scratch);
    }

    /// [`Self::transform_inputs`] compiled for 8-wide vectors.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn transform_inputs_avx2(
        &self,
        x: &FeatureMap,
        geometry: Geometry,
        block: std::ops::Range<usize>,
        stride: usize,
        scratch: &mut Scratch,
    ) {
        use std::arch::x86_64::*;
        let c = self.c_in;
        if !c.is_multiple_of(8) {
            self.transform_inputs_body(x, geometry, block, stride, scratch);
            return;
        }
        let zeros = &scratch.zeros[..c];
        let inputs = &mut scratch.inputs[..POSITIONS * stride * c];
        for (local, patch) in block.enumerate() {
            let d = patch_pixels(x, geometry, patch, zeros);
            // Eight channels at a time, the whole patch in registers: the same additions as
            // the portable body, in the same order.
            for ch in (0..c).step_by(8) {
                // SAFETY: every slice of `d` holds `c` values and `ch + 8 <= c`; each store
                // lands in row `local < stride` of a position's plane, inside `inputs`.
                unsafe {
                    let v: [__m256; POSITIONS] =
                        std::array::from_fn(|k| _mm256_loadu_ps(d[k].as_ptr().add(ch)));
                    let mut e = [[_mm256_setzero_ps(); 4]; 4];
                    for j in 0..4 {
                        e[0][j] = _mm256_sub_ps(v[j], v[8 + j]);
                        e[1][j] = _mm256_add_ps(v[4 + j], v[8 + j]);
                        e[2][j] = _mm256_sub_ps(v[8 + j], v[4 + j]);
                        e[3][j] = _mm256_sub_ps(v[4 + j], v[12 + j]);
                    }
                    let base = inputs.as_mut_ptr().add(local * c + ch);
                    let plane = stride * c;
                    for (i, r) in e.iter().enumerate() {
                        let at = base.add(i * 4 * plane);
                        _mm256_storeu_ps(at, _mm256_sub_ps(r[0], r[2]));
                        _mm256_storeu_ps(at.add(plane), _mm256_add_ps(r[1], r[2]));
                        _mm256_storeu_ps(at.add(2 * plane), _mm256_sub_ps(r[2], r[1]));
                        _mm256_storeu_ps(at.add(3 * plane), _mm256_sub_ps(r[1], r[3]));
                    }
                }
            }
        }
    }

    #[inline(always)]
    fn transform_inputs_body(
        &self,
        x: &FeatureMap,
        geometry: Geometry,
        block: std::ops::Range<usize>,
        stride: usize,
        scratch: &mut Scratch,
    ) {
        let c = self.c_in;
        let Scratch {
            inputs,
            staged,
            zeros,
            ..
        } = scratch;
        let zeros = &zeros[..c];
        let mut planes: Vec<&mut [f32]> = inputs[..POSITIONS * stride * c]
            .chunks_exact_mut(stride * c)
            .collect();
        for (local, patch) in block.enumerate() {
            let d = patch_pixels(x, geometry, patch, zeros);
            // Bᵀ d: combine rows, channel planes at a time (so that each loop vectorises).
            let e = planes_mut(&mut staged[..POSITIONS * c], c);
            let [e0, e1, e2, e3] = split4(e);
            for j in 0..4 {
                sub(e0[j], d[j], d[8 + j]);
                add(e1[j], d[4 + j], d[8 + j]);
                sub(e2[j], d[8 + j], d[4 + j]);
                sub(e3[j], d[4 + j], d[12 + j]);
            }
            // (Bᵀ d) B: combine columns, into the patch's row of each position's plane.
            for (i, row) in [&e0, &e1, &e2, &e3].into_iter().enumerate() {
                let at = local * c..(local + 1) * c;
                sub(&mut planes[i * 4][at.clone()], row[0], row[2]);
                add(&mut planes[i * 4 + 1][at.clone()], row[1], row[2]);
                sub(&mut planes[i * 4 + 2][at.clone()], row[2], row[1]);
                sub(&mut planes[i * 4 + 3][at], row[1], row[3]);
            }
        }
    }

    /// Turns the products of `block` back into outputs, `Aᵀ M A`, and finishes them.
    ///
    /// # Safety
    /// No other thread may write the outputs of `block`'s patches in channels `cols`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn transform_outputs(
        &self,
        scratch: &mut Scratch,
        width: usize,
        geometry: Geometry,
        block: std::ops::Range<usize>,
        stride: usize,
        cols: std::ops::Range<usize>,
        bias: &[f32],
        epilogue: Epilogue<'_>,
        out: OutPtr,
    ) {
        let args = (
            scratch, width, geometry, block, stride, cols, bias, epilogue, out,
        );
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: the CPU has AVX2 (checked above); the rest per this function's contract.
            unsafe { self.transform_outputs_avx2(args) };
            return;
        }
        // SAFETY: per this function's contract.
        unsafe { self.transform_outputs_body(args) };
    }

    /// [`Self::transform_outputs`] compiled for 8-wide vectors.
    ///
    /// # Safety
    /// The CPU must have AVX2; and as [`Self::transform_outputs`].
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn transform_outputs_avx2(&self, args: OutputArgs<'_, '_>) {
        use std::arch::x86_64::*;
        if !args.5.len().is_multiple_of(8) {
            // SAFETY: per this function's contract.
            unsafe { self.transform_outputs_body(args) };
            return;
        }
        let (scratch, width, geometry, block, stride, cols, bias, epilogue, out) = args;
        let n = cols.len();
        let products = &scratch.products[..POSITIONS * stride * width];
        let bias = &bias[cols.clone()];
        let zero = _mm256_setzero_ps();
        for (local, patch) in block.enumerate() {
            let (b, ty, tx) = geometry.patch(patch);
            let at: [Option<usize>; 4] = std::array::from_fn(|k| {
                let (oy, ox) = (2 * ty + k / 2, 2 * tx + k % 2);
                (oy < geometry.h && ox < geometry.w)
                    .then(|| ((b * geometry.h + oy) * geometry.w + ox) * self.c_out + cols.start)
            });
            for ch in (0..n).step_by(8) {
                // SAFETY: the loads stay inside `products` (position k, row `local < stride`,
                // columns `ch..ch + 8 <= n <= width`) and `bias`; the stores go to outputs of
                // this patch in this task's channels (the function's contract), and the
                // shortcut, when there is one, has the output's shape.
                unsafe {
                    let m: [__m256; POSITIONS] = std::array::from_fn(|k| {
                        _mm256_loadu_ps(products.as_ptr().add((k * stride + local) * width + ch))
                    });
                    let mut t = [[zero; 4]; 2];
                    for j in 0..4 {
                        t[0][j] = _mm256_add_ps(_mm256_add_ps(m[j], m[4 + j]), m[8 + j]);
                        t[1][j] = _mm256_sub_ps(_mm256_sub_ps(m[4 + j], m[8 + j]), m[12 + j]);
                    }
                    let y = [
                        _mm256_add_ps(_mm256_add_ps(t[0][0], t[0][1]), t[0][2]),
                        _mm256_sub_ps(_mm256_sub_ps(t[0][1], t[0][2]), t[0][3]),
                        _mm256_add_ps(_mm256_add_ps(t[1][0], t[1][1]), t[1][2]),
                        _mm256_sub_ps(_mm256_sub_ps(t[1][1], t[1][2]), t[1][3]),
                    ];
                    let bias = _mm256_loadu_ps(bias.as_ptr().add(ch));
                    for (value, at) in y.into_iter().zip(at) {
                        let Some(at) = at else {
                            continue; // the patch hangs over the map's last row or column
                        };
                        let mut v = _mm256_add_ps(value, bias);
                        if let Some(shortcut) = epilogue.shortcut {
                            let s = &shortcut.data[at + ch..at + ch + 8];
                            v = _mm256_add_ps(v, _mm256_loadu_ps(s.as_ptr()));
                        }
                        if epilogue.relu {
                            v = _mm256_max_ps(v, zero);
                        }
                        _mm256_storeu_ps(out.at(at + ch), v);
                    }
                }
            }
        }
    }

    /// # Safety
    /// As [`Self::transform_outputs`].
    #[inline(always)]
    unsafe fn transform_outputs_body(&self, args: OutputArgs<'_, '_>) {
        let (scratch, width, geometry, block, stride, cols, bias, epilogue, out) = args;
        let n = cols.len();
        let Scratch {
            products, staged, ..
        } = scratch;
        for (local, patch) in block.enumerate() {
            let (b, ty, tx) = geometry.patch(patch);
            let m: [&[f32]; POSITIONS] = std::array::from_fn(|k| {
                let at = (k * stride + local) * width;
                &products[at..at + n]
            });
            let mut planes = planes_mut(&mut staged[..12 * n], n);
            let (t, y) = planes.split_at_mut(8);
            let (t0, t1) = t.split_at_mut(4);
            // Aᵀ M: combine rows.
            for j in 0..4 {
                add3(t0[j], m[j], m[4 + j], m[8 + j]);
                sub3(t1[j], m[4 + j], m[8 + j], m[12 + j]);
            }
            // (Aᵀ M) A: combine columns; y holds the patch's outputs in row-major order.
            for (r, t) in [&*t0, &*t1].into_iter().enumerate() {
                add3(y[2 * r], t[0], t[1], t[2]);
                sub3(y[2 * r + 1], t[1], t[2], t[3]);
            }
            for (k, values) in y.iter().enumerate() {
                let (oy, ox) = (2 * ty + k / 2, 2 * tx + k % 2);
                if oy >= geometry.h || ox >= geometry.w {
                    continue; // the patch hangs over the map's last row or column
                }
                let at = ((b * geometry.h + oy) * geometry.w + ox) * self.c_out + cols.start;
                // SAFETY: per the function's contract; `at..at + n` is inside the output.
                unsafe { epilogue.store(values, &bias[cols.clone()], at, out.at(at)) };
            }
        }
    }
}

/// The arguments of [`Winograd::transform_outputs`], passed on whole to its variants.
type OutputArgs<'s, 'e> = (
    &'s mut Scratch,
    usize,
    Geometry,
    std::ops::Range<usize>,
    usize,
    std::ops::Range<usize>,
    &'s [f32],
    Epilogue<'e>,
    OutPtr,
);

/// One worker's buffers, kept between layers and grown as needed.
#[derive(Default)]
struct Scratch {
    /// Transformed inputs, `[position][patch][C_in]`.
    inputs: Vec<f32>,
    /// Products, `[position][patch][width]`.
    products: Vec<f32>,
    /// One patch's intermediate planes.
    staged: Vec<f32>,
    /// A pixel of zeros, for the padding.
    zeros: Vec<f32>,
}

impl Scratch {
    /// Makes room for blocks of `patches` patches of `c_in` inputs and `width` outputs. New
    /// room is zeroed once; old contents are overwritten before they are read.
    fn fit(&mut self, patches: usize, c_in: usize, width: usize) {
        let grow = |buffer: &mut Vec<f32>, len: usize| {
            if buffer.len() < len {
                buffer.resize(len, 0.0);
            }
        };
        grow(&mut self.inputs, POSITIONS * patches * c_in);
        grow(&mut self.products, POSITIONS * patches * width);
        grow(&mut self.staged, POSITIONS * c_in.max(width));
        grow(&mut self.zeros, c_in);
    }
}

/// `buffer` cut into planes of `len` values.
#[inline(always)]
fn planes_mut(buffer: &mut [f32], len: usize) -> Vec<&mut [f32]> {
    buffer.chunks_exact_mut(len).collect()
}

/// Sixteen planes as four rows of four.
#[inline(always)]
fn split4(planes: Vec<&mut [f32]>) -> [[&mut [f32]; 4]; 4] {
    let mut it = planes.into_iter();
    std::array::from_fn(|_| std::array::from_fn(|_| it.next().unwrap_or_else(|| unreachable!())))
}

#[inline(always)]
fn add(out: &mut [f32], a: &[f32], b: &[f32]) {
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = x + y;
    }
}

#[inline(always)]
fn sub(out: &mut [f32], a: &[f32], b: &[f32]) {
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = x - y;
    }
}

#[inline(always)]
fn add3(out: &mut [f32], a: &[f32], b: &[f32], c: &[f32]) {
    for (((o, x), y), z) in out.iter_mut().zip(a).zip(b).zip(c) {
        *o = x + y + z;
    }
}

#[inline(always)]
fn sub3(out: &mut [f32], a: &[f32], b: &[f32], c: &[f32]) {
    for (((o, x), y), z) in out.iter_mut().zip(a).zip(b).zip(c) {
        *o = x - y - z;
    }
}

/// The 16 input pixels of patch `patch` (rows 2ty-1.., columns 2tx-1..), each a slice of the
/// map's channels, `zeros` where the patch reaches past the map's edge.
#[inline(always)]
fn patch_pixels<'a>(
    x: &'a FeatureMap,
    geometry: Geometry,
    patch: usize,
    zeros: &'a [f32],
) -> [&'a [f32]; POSITIONS] {
    let (b, ty, tx) = geometry.patch(patch);
    std::array::from_fn(|k| {
        let (iy, ix) = (
            (2 * ty + k / 4).wrapping_sub(1),
            (2 * tx + k % 4).wrapping_sub(1),
        );
        if iy < x.h && ix < x.w {
            let at = x.index(b, iy, ix);
            &x.data[at..at + x.c]
        } else {
            zeros
        }
    })
}

/// How a layer's maps are cut into 2 × 2 output patches.
#[derive(Clone, Copy)]
struct Geometry {
    tiles_y: usize,
    tiles_x: usize,
    h: usize,
    w: usize,
}

impl Geometry {
    /// (image, patch row, patch column) of patch number `patch`.
    fn patch(&self, patch: usize) -> (usize, usize, usize) {
        let per_image = self.tiles_y * self.tiles_x;
        (
            patch / per_image,
            patch % per_image / self.tiles_x,
            patch % self.tiles_x,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::face::model::ConvSpec;

    /// A layer against the definition (direct sums in f64) at odd and even sizes, with the
    /// shortcut and ReLU, on more threads than there is work for.
    #[test]
    fn winograd_layer_matches_the_definition() {
        let mut seed = 0x2545_f491_u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            (seed as f32 / u32::MAX as f32) - 0.5
        };
        for (n, size, c_in, c_out, threads) in [
            (1, 1, 16, 16, 2),
            (2, 3, 32, 48, 2),
            (1, 8, 8, 32, 3),
            (3, 35, 32, 32, 2),
        ] {
            let spec = ConvSpec {
                prefix: String::new(),
                kernel: 3,
                stride: 1,
                padding: Padding::Same,
                c_in,
                c_out,
            };
            assert!(Winograd::fits(&spec));
            let weights: Vec<f32> = (0..9 * c_in * c_out).map(|_| next() * 0.2).collect();
            let bias: Vec<f32> = (0..c_out).map(|_| next()).collect();
            let mut x = FeatureMap::zeros(n, size, size, c_in);
            x.data.iter_mut().for_each(|v| *v = next());
            let mut shortcut = FeatureMap::zeros(n, size, size, c_out);
            shortcut.data.iter_mut().for_each(|v| *v = next());
            let mut y = FeatureMap::zeros(n, size, size, c_out);
            let epilogue = Epilogue {
                shortcut: Some(&shortcut),
                relu: true,
            };
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                Winograd::new(&weights, c_in, c_out).forward(&x, &mut y, &bias, epilogue, threads)
            });
            for b in 0..n {
                for oy in 0..size {
                    for ox in 0..size {
                        for co in 0..c_out {
                            let mut want = bias[co] as f64;
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let (iy, ix) =
                                        ((oy + ky).wrapping_sub(1), (ox + kx).wrapping_sub(1));
                                    if iy >= size || ix >= size {
                                        continue;
                                    }
                                    for ci in 0..c_in {
                                        want += x.data[x.index(b, iy, ix) + ci] as f64
                                            * weights[((ky * 3 + kx) * c_in + ci) * c_out + co]
                                                as f64;
                                    }
                                }
                            }
                            want = (want + shortcut.data[shortcut.index(b, oy, ox) + co] as f64)
                                .max(0.0);
                            let got = y.data[y.index(b, oy, ox) + co] as f64;
                            assert!(
                                (got - want).abs() < 1e-5,
                                "n {n} size {size} at {b},{oy},{ox},{co}: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
