//! A batch of feature maps (NHWC, f32) and the cheap, memory-bound operations on it: pooling,
//! the residual-down shortcut and the head's spatial mean.
//!
//! Allocation, pooling and the shortcut run across the current rayon pool, one output row a
//! task: done on one thread they left the others idle between layers, about a tenth of a
//! batch's time.

use rayon::prelude::*;

/// `n` feature maps of `h` × `w` × `c`, row-major NHWC.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct FeatureMap {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub data: Vec<f32>,
}

impl FeatureMap {
    pub fn zeros(n: usize, h: usize, w: usize, c: usize) -> Self {
        let len = n * h * w * c;
        // Zeroing megabytes is worth spreading; a small map is not worth the tasks.
        let data = if len >= 1 << 16 {
            (0..len).into_par_iter().map(|_| 0.0).collect()
        } else {
            vec![0.0; len]
        };
        Self { n, h, w, c, data }
    }

    #[inline]
    pub fn index(&self, b: usize, y: usize, x: usize) -> usize {
        ((b * self.h + y) * self.w + x) * self.c
    }

    /// Max pool, square window `k`, stride `s`, VALID.
    pub fn max_pool(&self, k: usize, s: usize) -> Self {
        let (ho, wo) = ((self.h - k) / s + 1, (self.w - k) / s + 1);
        let mut out = Self::zeros(self.n, ho, wo, self.c);
        let c = self.c;
        out.data
            .par_chunks_mut(wo * c)
            .enumerate()
            .for_each(|(row, dst_row)| {
                let (b, oy) = (row / ho, row % ho);
                for (ox, dst) in dst_row.chunks_exact_mut(c).enumerate() {
                    dst.fill(f32::NEG_INFINITY);
                    for ky in 0..k {
                        for kx in 0..k {
                            let i = self.index(b, oy * s + ky, ox * s + kx);
                            for (d, &v) in dst.iter_mut().zip(&self.data[i..i + c]) {
                                *d = d.max(v);
                            }
                        }
                    }
                }
            });
        out
    }

    /// The residual-down block's tail: `ReLU(conv + shortcut)`, where the shortcut is a 2×2
    /// stride-2 VALID average pool of `input` with zero channels appended up to `self.c`, and
    /// `self` (the conv path) is taken as zero past its last row and column when it came out one
    /// smaller than the shortcut. Returns the block output at the shortcut's size.
    pub fn add_pooled_shortcut_relu(&self, input: &FeatureMap) -> Self {
        let (ho, wo) = ((input.h - 2) / 2 + 1, (input.w - 2) / 2 + 1);
        let mut out = Self::zeros(self.n, ho, wo, self.c);
        let c = self.c;
        out.data
            .par_chunks_mut(wo * c)
            .enumerate()
            .for_each(|(row, dst_row)| {
                let (b, oy) = (row / ho, row % ho);
                for (ox, dst) in dst_row.chunks_exact_mut(c).enumerate() {
                    if oy < self.h && ox < self.w {
                        let i = self.index(b, oy, ox);
                        dst.copy_from_slice(&self.data[i..i + c]);
                    }
                    let corners = [(0, 0), (0, 1), (1, 0), (1, 1)]
                        .map(|(dy, dx)| input.index(b, 2 * oy + dy, 2 * ox + dx));
                    for (ch, d) in dst[..input.c].iter_mut().enumerate() {
                        // TF's CPU avgPool sums the window then divides by its size.
                        let sum = corners.iter().map(|&i| input.data[i + ch]).sum::<f32>();
                        *d += sum / 4.0;
                    }
                    for v in dst.iter_mut() {
                        *v = v.max(0.0);
                    }
                }
            });
        out
    }

    /// Mean over height and width: `n` vectors of `c`.
    pub fn spatial_mean(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.n * self.c];
        let count = (self.h * self.w) as f32;
        for b in 0..self.n {
            let dst = &mut out[b * self.c..(b + 1) * self.c];
            for p in 0..self.h * self.w {
                let i = (b * self.h * self.w + p) * self.c;
                for (d, &v) in dst.iter_mut().zip(&self.data[i..i + self.c]) {
                    *d += v;
                }
            }
            for d in dst.iter_mut() {
                *d /= count;
            }
        }
        out
    }
}
