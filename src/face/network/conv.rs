//! Fast convolution on the CPU: filters folded with their bias and batch-norm scale and packed
//! into panels once, at load; each layer then runs as register-tiled products
//! ([`kernel`](super::kernel)) over a thread pool, with bias, shortcut and ReLU applied to each
//! output tile while it is still in cache.
//!
//! Two algorithms, chosen per layer:
//!
//! - 3 × 3, stride 1, SAME (every residual convolution, four fifths of the network's
//!   multiply-adds): Winograd's F(2 × 2, 3 × 3) ([`super::winograd`]), which computes each 2 × 2
//!   output patch with 16 multiply-adds per channel pair where the direct form needs 36.
//! - Everything else (the 7 × 7 stem, the stride-2 down convolutions): im2col into a per-worker
//!   buffer, then the same products. NHWC activations and `[k, k, C_in, C_out]` filters make
//!   each im2col row `k` runs of `k × C_in` contiguous input values: a handful of `memcpy`s.
//!
//! History, measured on the 2-core AMD EPYC (Zen 3, AVX2 + FMA) this was written on
//! (BENCHMARKS.md): im2col + the `gemm` crate reached 155 faces/s at batch 16 and 87 at batch
//! 1, about 0.6 of ONNX Runtime; most of the gap was the crate packing both operands on every
//! call, which packing the filters once removes.

use std::cell::RefCell;

use rayon::prelude::*;

use crate::face::model::{ConvSpec, FaceModel};

use super::kernel::{MR, NR, PackedPanels, product};
use super::tensor::FeatureMap;
use super::winograd::Winograd;

/// Bytes of im2col rows a task builds at most, so that they stay in the core's L2 while every
/// filter panel passes over them.
const TILE_COLUMN_BYTES: usize = 96 * 1024;
/// Output rows per task at most, so that the early, large layers spread over all threads.
const MAX_TILE_ROWS: usize = 240;

thread_local! {
    /// Per-worker im2col buffer, reused across tasks and layers.
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
    /// `W'` packed for the im2col products.
    panels: PackedPanels,
    /// `W'` transformed for Winograd, where the layer's shape allows it.
    winograd: Option<Winograd>,
}

/// Output pixels a pass needs before a Winograd layer runs as such: Winograd reads 16/9 as many
/// filter values as the direct form, and on the small maps of the deep layers at small batches
/// (3 × 3 pixels a face) reading the filters, not the arithmetic, is what takes the time.
const WINOGRAD_MIN_PIXELS: usize = 32;

/// What to do to each output value after the matrix product.
#[derive(Clone, Copy)]
pub(crate) struct Epilogue<'a> {
    /// Same-shaped map added before the ReLU (the residual block's identity shortcut).
    pub shortcut: Option<&'a FeatureMap>,
    pub relu: bool,
}

impl Epilogue<'_> {
    /// Finishes `values`, the outputs of channels `cols.start..` at output pixel `pixel`:
    /// adds `bias` and the shortcut, applies the ReLU, and stores them at `dst`.
    ///
    /// # Safety
    /// `dst` must be valid for `values.len()` writes that no other thread touches meanwhile.
    #[inline(always)]
    pub(crate) unsafe fn store(
        &self,
        values: &[f32],
        bias: &[f32],
        shortcut_at: usize,
        dst: *mut f32,
    ) {
        // SAFETY: per the function's contract.
        let dst = unsafe { std::slice::from_raw_parts_mut(dst, values.len()) };
        for ((d, &v), &b) in dst.iter_mut().zip(values).zip(bias) {
            *d = v + b;
        }
        if let Some(shortcut) = self.shortcut {
            for (d, &s) in dst.iter_mut().zip(&shortcut.data[shortcut_at..]) {
                *d += s;
            }
        }
        if self.relu {
            for d in dst.iter_mut() {
                *d = d.max(0.0);
            }
        }
    }
}

/// The output pointer shared by tasks. Tasks write disjoint `[pixels, channels]` rectangles.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub *mut f32);
// SAFETY: every task writes only its own rectangle of the output (see `FoldedConv::forward`
// and `Winograd::forward`), and the buffer outlives the parallel section, which joins before
// returning.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The output value at `offset`. A method rather than a field access so that closures
    /// capture the whole (`Send`) wrapper, not the bare pointer inside it.
    #[inline]
    pub(crate) fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// How a layer's work is cut into tasks for the pool: its `units` (output rows, or Winograd
/// patches) in blocks of `MR`, spread evenly over a multiple of the thread count, and, when
/// that gives few tasks (the deep layers at small batches), its output panels split as well.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WorkSplit {
    units: usize,
    blocks: usize,
    unit_tasks: usize,
    col_groups: usize,
    panels: usize,
}

impl WorkSplit {
    /// At most about `max_units` units a task, for `threads` threads and `panels` panels.
    /// `filters_dominate`: whether reading the filters outweighs preparing the inputs when
    /// there are fewer units than output channels (true of the direct form; Winograd's input
    /// transform is worth not repeating).
    pub fn new(
        units: usize,
        max_units: usize,
        threads: usize,
        panels: usize,
        filters_dominate: bool,
    ) -> Self {
        let max_units = (max_units / MR * MR).max(MR);
        let blocks = units.div_ceil(MR).max(1);
        let (unit_tasks, col_groups) = if filters_dominate && units < panels * NR {
            // Fewer rows than output channels (the deep layers at small batches): the filters
            // are most of what is read, so each is read by one task only, and the threads
            // divide the channels between them.
            let unit_tasks = units.div_ceil(max_units).clamp(1, blocks);
            (unit_tasks, panels.min(4 * threads))
        } else {
            let unit_tasks = units
                .div_ceil(max_units)
                .div_ceil(threads)
                .saturating_mul(threads)
                .clamp(1, blocks);
            let col_groups = if unit_tasks < 2 * threads {
                (2 * threads).div_ceil(unit_tasks).min(panels).max(1)
            } else {
                1
            };
            (unit_tasks, col_groups)
        };
        Self {
            units,
            blocks,
            unit_tasks,
            col_groups,
            panels,
        }
    }

    /// Tasks in all.
    pub fn tasks(&self) -> usize {
        self.unit_tasks * self.col_groups
    }

    /// Units a task holds at most: a multiple of `MR`.
    pub fn max_units(&self) -> usize {
        self.blocks.div_ceil(self.unit_tasks) * MR
    }

    /// The units of task `task`; tasks differ by one block at most.
    pub fn units(&self, task: usize) -> std::ops::Range<usize> {
        let t = task / self.col_groups;
        let first = t * self.blocks / self.unit_tasks * MR;
        let end = (t + 1) * self.blocks / self.unit_tasks * MR;
        first.min(self.units)..end.min(self.units)
    }

    /// The output panels of task `task`.
    pub fn panels(&self, task: usize) -> std::ops::Range<usize> {
        let per_group = self.panels.div_ceil(self.col_groups);
        let g = task % self.col_groups;
        (g * per_group).min(self.panels)..((g + 1) * per_group).min(self.panels)
    }
}

impl FoldedConv {
    pub fn new(model: &FaceModel, spec: ConvSpec) -> Self {
        let param = |suffix: &str| {
            &model
                .expect_tensor(&format!("{}/{suffix}", spec.prefix))
                .data
        };
        let (filters, bias) = (param("conv/filters"), param("conv/bias"));
        let (scale, shift) = (param("scale/weights"), param("scale/biases"));
        let weights: Vec<f32> = filters
            .chunks_exact(spec.c_out)
            .flat_map(|row| row.iter().zip(scale).map(|(w, s)| w * s))
            .collect();
        let bias = bias
            .iter()
            .zip(scale)
            .zip(shift)
            .map(|((b, s), t)| b * s + t)
            .collect();
        let k_len = spec.kernel * spec.kernel * spec.c_in;
        let winograd =
            Winograd::fits(&spec).then(|| Winograd::new(&weights, spec.c_in, spec.c_out));
        Self {
            panels: PackedPanels::new(&weights, k_len, spec.c_out),
            winograd,
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

    /// Runs the convolution on `x` in the current pool's threads (`threads` of them), then the
    /// epilogue.
    pub fn forward(&self, x: &FeatureMap, epilogue: Epilogue<'_>, threads: usize) -> FeatureMap {
        let (ho, wo) = (self.spec.output_size(x.h), self.spec.output_size(x.w));
        let mut y = FeatureMap::zeros(x.n, ho, wo, self.spec.c_out);
        match &self.winograd {
            Some(winograd) if y.n * y.h * y.w >= WINOGRAD_MIN_PIXELS => {
                winograd.forward(x, &mut y, &self.bias, epilogue, threads)
            }
            _ => self.forward_direct(x, &mut y, epilogue, threads),
        }
        y
    }

    fn forward_direct(
        &self,
        x: &FeatureMap,
        y: &mut FeatureMap,
        epilogue: Epilogue<'_>,
        threads: usize,
    ) {
        let panels = &self.panels;
        let (k_len, c_out) = (panels.k(), self.spec.c_out);
        let m = y.n * y.h * y.w;
        let max_rows = (TILE_COLUMN_BYTES / (4 * k_len)).min(MAX_TILE_ROWS);
        let split = WorkSplit::new(m, max_rows, threads, panels.panels(), true);
        let (ho, wo) = (y.h, y.w);
        let out = OutPtr(y.data.as_mut_ptr());

        (0..split.tasks()).into_par_iter().for_each(|task| {
            let rows = split.units(task);
            let group_panels = split.panels(task);
            if rows.is_empty() || group_panels.is_empty() {
                return;
            }
            COLUMNS.with_borrow_mut(|columns| {
                self.im2col(x, ho, wo, rows.clone(), columns);
                let mut acc = [[0.0; NR]; MR];
                for p in group_panels {
                    let cols = p * NR..((p + 1) * NR).min(c_out);
                    for block in (0..rows.len()).step_by(MR) {
                        product(&columns[block * k_len..], k_len, panels.panel(p), &mut acc);
                        for (r, values) in acc.iter().enumerate().take(rows.len() - block) {
                            let row = rows.start + block + r;
                            let at = row * c_out + cols.start;
                            // SAFETY: (row, cols) lies in this task's rectangle of the
                            // `m × c_out` output, which no other task writes.
                            unsafe {
                                epilogue.store(
                                    &values[..cols.len()],
                                    &self.bias[cols.clone()],
                                    at,
                                    out.at(at),
                                )
                            };
                        }
                    }
                }
            });
        });
    }

    /// Writes the im2col rows `rows` of `x` into `columns` (`rows.len()` rounded up to `MR`,
    /// × K). Every value of the rows is written once, zeros where the kernel reaches into the
    /// padding; the rows past the end keep whatever they held (their products are never read).
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
        let k_len = k * k * c_in;
        let len = rows.len().div_ceil(MR) * MR * k_len;
        if columns.len() < len {
            columns.resize(len, 0.0);
        }
        for (r, row) in rows.enumerate() {
            let (b, oy, ox) = (row / (ho * wo), row / wo % ho, row % wo);
            let dst = &mut columns[r * k_len..(r + 1) * k_len];
            for (ky, run) in dst.chunks_exact_mut(k * c_in).enumerate() {
                let Some(iy) = (oy * s + ky).checked_sub(pad).filter(|&iy| iy < x.h) else {
                    run.fill(0.0); // the kernel row lies in the padding
                    continue;
                };
                // The kernel row's columns that fall inside the image are contiguous in NHWC.
                let first = pad.saturating_sub(ox * s).min(k);
                let last = (x.w + pad).saturating_sub(ox * s).min(k).max(first);
                run[..first * c_in].fill(0.0);
                run[last * c_in..].fill(0.0);
                if first < last {
                    let src = x.index(b, iy, ox * s + first - pad);
                    let len = (last - first) * c_in;
                    run[first * c_in..last * c_in].copy_from_slice(&x.data[src..src + len]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_split_covers_every_unit_and_panel_once() {
        for (units, max_units, threads, panels) in [
            (1, 240, 2, 2),
            (9, 12, 2, 16),
            (5184, 240, 2, 2),
            (324, 60, 2, 2),
            (81, 30, 2, 4),
            (7, 6, 3, 1),
        ] {
            for filters_dominate in [false, true] {
                let split = WorkSplit::new(units, max_units, threads, panels, filters_dominate);
                let mut covered = vec![0; units * panels];
                for task in 0..split.tasks() {
                    let rows = split.units(task);
                    assert_eq!(rows.start % MR, 0);
                    assert!(rows.len() <= split.max_units());
                    for row in rows {
                        for panel in split.panels(task) {
                            covered[row * panels + panel] += 1;
                        }
                    }
                }
                assert!(
                    covered.iter().all(|&c| c == 1),
                    "{units} units, {panels} panels"
                );
            }
        }
    }
}
