//! The networks' input tensors as the reference builds them (`NetInput.toBatchTensor`): a
//! region of the image, padded with zeros to a square (`padToSquare`), resized with TF.js's
//! bilinear kernel (no corner alignment, no half-pixel centres) unless it already has the
//! target side. Values stay in 0..255; each network normalises its own way.

use crate::face::preprocess::RgbImage;

/// Where the padding goes when the region is not square.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Padding {
    /// All of it after the image (right or bottom): the detector's input.
    After,
    /// Centred, `round(diff / 2)` after and the rest before: the landmark network's input.
    Centred,
}

/// A `width` × `height` region of an image at (`x`, `y`), entirely inside it, seen through its
/// zero padding to a square of `side`.
pub(crate) struct PaddedSquare<'a> {
    image: &'a RgbImage,
    x: usize,
    y: usize,
    width: usize,
    height: usize,
    left: usize,
    top: usize,
    side: usize,
}

impl<'a> PaddedSquare<'a> {
    /// The region at (`x`, `y`) of `width` × `height` (non-zero, inside the image).
    pub fn new(
        image: &'a RgbImage,
        (x, y, width, height): (usize, usize, usize, usize),
        padding: Padding,
    ) -> Self {
        debug_assert!(width > 0 && height > 0);
        debug_assert!(x + width <= image.width() as usize && y + height <= image.height() as usize);
        let side = width.max(height);
        let diff = side - width.min(height);
        let before = match padding {
            Padding::After => 0,
            // Math.round(diff * 0.5) after: halves round up, as floor(v + 0.5) does.
            Padding::Centred => diff - (diff as f64 * 0.5 + 0.5).floor() as usize,
        };
        let (left, top) = if height > width {
            (before, 0)
        } else {
            (0, before)
        };
        Self {
            image,
            x,
            y,
            width,
            height,
            left,
            top,
            side,
        }
    }

    /// The whole image, padded after.
    pub fn whole(image: &'a RgbImage) -> Self {
        let (w, h) = (image.width() as usize, image.height() as usize);
        Self::new(image, (0, 0, w, h), Padding::After)
    }

    #[inline]
    fn sample(&self, sx: usize, sy: usize) -> [f64; 3] {
        if sx < self.left || sy < self.top {
            return [0.0; 3];
        }
        let (cx, cy) = (sx - self.left, sy - self.top);
        if cx >= self.width || cy >= self.height {
            return [0.0; 3];
        }
        let px = self.image.pixel(self.x + cx, self.y + cy);
        [f64::from(px[0]), f64::from(px[1]), f64::from(px[2])]
    }

    /// The square resized to `out` × `out` (RGB, 0..255, NHWC), appended to `dst`.
    ///
    /// TF.js's CPU kernel reads f32, interpolates in f64 and stores f32; so does this.
    pub fn resize_into(&self, out: usize, dst: &mut Vec<f32>) {
        dst.reserve(out * out * 3);
        if self.side == out {
            // The reference skips the resize when the square already has the target side.
            for sy in 0..out {
                for sx in 0..out {
                    dst.extend(self.sample(sx, sy).map(|v| v as f32));
                }
            }
            return;
        }
        let ratio = self.side as f64 / out as f64;
        let last = self.side - 1;
        let taps = |i: usize| {
            let src = ratio * i as f64;
            let lo = src.floor();
            (lo as usize, (src.ceil() as usize).min(last), src - lo)
        };
        let columns: Vec<(usize, usize, f64)> = (0..out).map(taps).collect();
        for oy in 0..out {
            let (y0, y1, fy) = taps(oy);
            for &(x0, x1, fx) in &columns {
                let (tl, tr) = (self.sample(x0, y0), self.sample(x1, y0));
                let (bl, br) = (self.sample(x0, y1), self.sample(x1, y1));
                for c in 0..3 {
                    let top = tl[c] + (tr[c] - tl[c]) * fx;
                    let bottom = bl[c] + (br[c] - bl[c]) * fx;
                    dst.push((top + (bottom - top) * fy) as f32);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centred_padding_puts_the_larger_half_after() {
        let image = RgbImage::from_raw(3, 8, vec![255; 3 * 8 * 3]).unwrap();
        // diff 5: round(2.5) = 3 columns after, 2 before.
        let square = PaddedSquare::new(&image, (0, 0, 3, 8), Padding::Centred);
        let mut values = Vec::new();
        square.resize_into(8, &mut values);
        let row: Vec<f32> = values[..8 * 3].iter().step_by(3).copied().collect();
        assert_eq!(row, [0.0, 0.0, 255.0, 255.0, 255.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn padding_after_keeps_the_image_at_the_origin() {
        let image = RgbImage::from_raw(2, 1, vec![10; 6]).unwrap();
        let mut values = Vec::new();
        PaddedSquare::whole(&image).resize_into(2, &mut values);
        assert_eq!(
            values,
            [
                10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
            ]
        );
    }
}
