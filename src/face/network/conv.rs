//! Fast convolution: im2col + single-precision matrix product, tiled across a thread pool, with
//! bias, shortcut and ReLU applied to each output tile while it is still in cache.
//!
//! The convolution is `Y[M, C_out] = X_cols[M, K] · W[K, C_out]` with `M = n × h_out × w_out`
//! output pixels and `K = k × k × C_in`. NHWC activations and `[k, k, C_in, C_out]` filters
//! make `W` the filter tensor as stored, and each row of `X_cols` a run of `k` copies of
//! `k × C_in` contiguous input values, so im2col is a handful of `memcpy`s per row.
//!
//! Why this and not something else, measured on the 2-core AMD EPYC (Zen 3, AVX2 + FMA) it was
//! written on (details in NOTES.md):
//! - im2col + `matrixmultiply` 0.3 ran the whole network about 3.8× faster than the direct
//!   loops of [`super::reference`] (one thread, batch 4: 100 against 27 faces/s);
//! - on this network's eight product shapes, one thread, `gemm` 0.18 beat `matrixmultiply`
//!   0.3 on every one, by 20–60% (e.g. 42 against 27 GFLOP/s at M 19,600, K 288, N 32; 64
//!   against 53 at M 256, K 2304, N 256), so the product is `gemm`'s. Computing the transpose
//!   instead (channels as `gemm`'s M, to fill its 16-wide microkernel) measured slower. The
//!   crate is now at 0.19 (the version the rest of the lockfile carries); not re-measured.

use std::cell::RefCell;

use rayon::prelude::*;

use crate::face::model::{ConvSpec, FaceModel};

use super::tensor::FeatureMap;

/// Output rows per tile: enough that repacking the filters for each tile costs little, few
/// enough that a batch-1 layer still splits across threads.
const TARGET_TILE_ROWS: usize = 256;

thread_local! {
    /// Per-worker im2col buffer, reused across tiles and layers.
    static COLUMNS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// A convolution with bias and the batch-norm "scale" step folded into it:
/// `W' = W × scale/weights` per output channel, `b' = bias × scale/weights + scale/biases`.
#[derive(Clone, Debug)]
pub(crate) struct FoldedConv {
    pub spec: ConvSpec,
    /// `[K, C_out]`, row-major.
    weights: Vec<f32>,
    bias: Vec<f32>,
}

/// What to do to each output value after the matrix product.
#[derive(Clone, Copy)]
pub(crate) struct Epilogue<'a> {
    /// Same-shaped map added before the ReLU (the residual block's identity shortcut).
    pub shortcut: Option<&'a FeatureMap>,
    pub relu: bool,
}

/// The output pointer shared by tiles. Tiles write disjoint `[rows, cols]` rectangles.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every task writes only its own rectangle of the output (see `FoldedConv::forward`),
// and the buffer outlives the parallel section, which joins before returning.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl FoldedConv {
    pub fn new(model: &FaceModel, spec: ConvSpec) -> Self {
        let param = |suffix: &str| {
            &model
                .expect_tensor(&format!("{}/{suffix}", spec.prefix))
                .data
        };
        let (filters, bias) = (param("conv/filters"), param("conv/bias"));
        let (scale, shift) = (param("scale/weights"), param("scale/biases"));
        let weights = filters
            .chunks_exact(spec.c_out)
            .flat_map(|row| row.iter().zip(scale).map(|(w, s)| w * s))
            .collect();
        let bias = bias
            .iter()
            .zip(scale)
            .zip(shift)
            .map(|((b, s), t)| b * s + t)
            .collect();
        Self {
            spec,
            weights,
            bias,
        }
    }

    /// The folded filters, `[K, C_out]` row-major, and the folded bias (`C_out`): what the GPU
    /// path uploads, so that both backends fold the same way.
    pub fn folded(&self) -> (&[f32], &[f32]) {
        (&self.weights, &self.bias)
    }

    fn k_len(&self) -> usize {
        self.spec.kernel * self.spec.kernel * self.spec.c_in
    }

    /// Runs the convolution on `x` in `pool`'s threads, then the epilogue.
    pub fn forward(&self, x: &FeatureMap, epilogue: Epilogue<'_>, threads: usize) -> FeatureMap {
        let (ho, wo) = (self.spec.output_size(x.h), self.spec.output_size(x.w));
        let c_out = self.spec.c_out;
        let mut y = FeatureMap::zeros(x.n, ho, wo, c_out);
        let m = x.n * ho * wo;

        // Row tiles, as many as keeps each near TARGET_TILE_ROWS, rounded up to a multiple of
        // the thread count so that no thread idles at the end of a layer. When there are too
        // few rows for that (deep layers at small batch), split the output channels instead,
        // so that each thread packs only its share of the filters.
        let row_tiles = m.div_ceil(TARGET_TILE_ROWS).div_ceil(threads) * threads;
        let row_tiles = row_tiles.min(m.div_ceil(8)).max(1);
        let col_tiles = if row_tiles < threads {
            threads.min(c_out / 16).max(1)
        } else {
            1
        };
        let rows_per_tile = m.div_ceil(row_tiles);
        let cols_per_tile = c_out.div_ceil(col_tiles);

        let out = OutPtr(y.data.as_mut_ptr());
        (0..row_tiles * col_tiles).into_par_iter().for_each(|tile| {
            let rows =
                (tile / col_tiles) * rows_per_tile..((tile / col_tiles + 1) * rows_per_tile).min(m);
            let cols = (tile % col_tiles) * cols_per_tile
                ..((tile % col_tiles + 1) * cols_per_tile).min(c_out);
            if rows.is_empty() || cols.is_empty() {
                return;
            }
            COLUMNS.with_borrow_mut(|columns| {
                self.im2col(x, ho, wo, rows.clone(), columns);
                // SAFETY: `rows` × `cols` lies inside the `m` × `c_out` output, and no other tile
                // has an overlapping rectangle.
                unsafe { self.tile_product(columns, rows.clone(), cols.clone(), out) };
            });
            // SAFETY: as above; the product for this rectangle has completed.
            unsafe { self.tile_epilogue(rows, cols, out, epilogue) };
        });
        y
    }

    /// Writes the im2col rows `rows` of `x` into `columns` (`rows.len() × K`).
    fn im2col(
        &self,
        x: &FeatureMap,
        ho: usize,
        wo: usize,
        rows: std::ops::Range<usize>,
        columns: &mut Vec<f32>,
    ) {
        let (k, s, pad, c_in) = (
            self.spec.kernel,
            self.spec.stride,
            self.spec.pad_before(),
            self.spec.c_in,
        );
        let k_len = self.k_len();
        columns.clear();
        columns.resize(rows.len() * k_len, 0.0);
        for (r, row) in rows.enumerate() {
            let (b, oy, ox) = (row / (ho * wo), row / wo % ho, row % wo);
            let dst = &mut columns[r * k_len..(r + 1) * k_len];
            for ky in 0..k {
                let Some(iy) = (oy * s + ky).checked_sub(pad).filter(|&iy| iy < x.h) else {
                    continue; // zero padding: the buffer is already zero
                };
                // The kernel row's columns that fall inside the image are contiguous in NHWC.
                let first = pad.saturating_sub(ox * s);
                let last = (x.w + pad).saturating_sub(ox * s).min(k);
                if first >= last {
                    continue;
                }
                let ix = ox * s + first - pad;
                let src = x.index(b, iy, ix);
                let len = (last - first) * c_in;
                let at = (ky * k + first) * c_in;
                dst[at..at + len].copy_from_slice(&x.data[src..src + len]);
            }
        }
    }

    /// `out[rows, cols] = columns · W[:, cols]`, single-threaded.
    ///
    /// # Safety
    /// `out` must point at an `m × c_out` buffer containing the `rows × cols` rectangle, which no
    /// other thread accesses meanwhile.
    unsafe fn tile_product(
        &self,
        columns: &[f32],
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
        out: OutPtr,
    ) {
        let (k_len, c_out) = (self.k_len(), self.spec.c_out);
        debug_assert_eq!(columns.len(), rows.len() * k_len);
        // SAFETY: the operands' extents follow from the shapes checked at load; `out` per the
        // function's contract.
        unsafe {
            gemm::gemm(
                rows.len(),
                cols.len(),
                k_len,
                out.0.add(rows.start * c_out + cols.start),
                1,
                c_out as isize,
                false, // overwrite the tile: it is not read, so it need not be initialised
                columns.as_ptr(),
                1,
                k_len as isize,
                self.weights.as_ptr().add(cols.start),
                1,
                c_out as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                // Threads are ours (tiles across the pool); nested parallelism would oversubscribe.
                gemm::Parallelism::None,
            );
        }
    }

    /// Adds the folded bias and the shortcut, then applies the ReLU, on one tile.
    ///
    /// # Safety
    /// As [`Self::tile_product`].
    unsafe fn tile_epilogue(
        &self,
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
        out: OutPtr,
        epilogue: Epilogue<'_>,
    ) {
        let c_out = self.spec.c_out;
        let bias = &self.bias[cols.clone()];
        for row in rows {
            let at = row * c_out + cols.start;
            // SAFETY: this row segment is inside the tile's rectangle.
            let values = unsafe { std::slice::from_raw_parts_mut(out.0.add(at), cols.len()) };
            for (v, b) in values.iter_mut().zip(bias) {
                *v += b;
            }
            if let Some(shortcut) = epilogue.shortcut {
                for (v, s) in values.iter_mut().zip(&shortcut.data[at..at + cols.len()]) {
                    *v += s;
                }
            }
            if epilogue.relu {
                for v in values.iter_mut() {
                    *v = v.max(0.0);
                }
            }
        }
    }
}
