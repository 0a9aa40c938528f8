//! The descriptor network's input crop, as the reference pipeline computes it.
//!
//! Every step follows the TF.js code it reproduces, including its arithmetic: box geometry in
//! f64 (JavaScript numbers), the resize interpolation in f64 with one rounding to f32 (the CPU
//! kernel reads f32, computes in JavaScript numbers, stores into a Float32Array), and the
//! normalisation in f32 (two f32 tensor ops: subtract, then divide).

use crate::face::model::{INPUT_SIZE, MEAN_RGB};

use super::{ImageError, RgbImage};

/// Number of values in one network input (150 × 150 × 3).
pub const INPUT_LEN: usize = INPUT_SIZE * INPUT_SIZE * 3;
/// Landmarks per face in the 68-point scheme.
pub const LANDMARK_COUNT: usize = 68;
/// Largest landmark coordinate accepted, in pixels; far beyond any real image, small enough
/// that box arithmetic stays exact.
const MAX_COORDINATE: f64 = 1e7;

/// A landmark position in image pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    /// Column, from the left edge.
    pub x: f64,
    /// Row, from the top edge.
    pub y: f64,
}

/// An axis-aligned box in image pixels; may extend past the image until clipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaceBox {
    /// Left column.
    pub x: i64,
    /// Top row.
    pub y: i64,
    /// Width in pixels.
    pub width: i64,
    /// Height in pixels.
    pub height: i64,
}

impl std::str::FromStr for FaceBox {
    type Err = ImageError;

    /// Parses `X,Y,W,H` in image pixels (integers; width and height positive), the form of
    /// `gatematch embed --box`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| ImageError::InvalidBox {
            reason: reason.to_owned(),
        };
        let values: Vec<i64> = text
            .split(',')
            .map(|part| part.trim().parse::<i64>())
            .collect::<Result<_, _>>()
            .map_err(|_| invalid("expected four integers X,Y,W,H"))?;
        let [x, y, width, height] = values[..] else {
            return Err(invalid("expected four integers X,Y,W,H"));
        };
        let limit = MAX_COORDINATE as i64;
        if [x, y, width, height].iter().any(|v| v.abs() > limit) {
            return Err(invalid("a value is out of range"));
        }
        if width <= 0 || height <= 0 {
            return Err(invalid("width and height must be positive"));
        }
        Ok(Self {
            x,
            y,
            width,
            height,
        })
    }
}

impl FaceBox {
    /// The whole of a `width` × `height` image: the box of a ready-made crop.
    pub fn whole(width: u32, height: u32) -> Self {
        Self {
            x: 0,
            y: 0,
            width: i64::from(width),
            height: i64::from(height),
        }
    }

    /// The part of the box inside a `image_width` × `image_height` image (the reference's
    /// `clipAtImageBorders`); an error when nothing is left.
    pub fn clipped(&self, image_width: u32, image_height: u32) -> Result<FaceBox, ImageError> {
        let (w, h) = (i64::from(image_width), i64::from(image_height));
        let x = self.x.max(0);
        let y = self.y.max(0);
        let width = (self.x.saturating_add(self.width) - x).min(w - x);
        let height = (self.y.saturating_add(self.height) - y).min(h - y);
        if width <= 0 || height <= 0 {
            return Err(ImageError::EmptyFaceBox {
                image_width,
                image_height,
            });
        }
        Ok(FaceBox {
            x,
            y,
            width,
            height,
        })
    }
}

/// The box the reference crops for the descriptor, from 68 landmarks in image pixels (MODEL.md
/// step 1, face-api's `FaceLandmarks.align(.., { useDlibAlignment: true })`). Not yet clipped to
/// the image: [`FaceBatch::push_face`] does that.
///
/// `frame_width` × `frame_height` is the region the landmarks were found in. The reference
/// limits the box to `min(s, frame_width + x)` × `min(s, frame_height + y)`, where its frame is
/// the detector's face crop, not the image: near the left or top edge that cuts the box
/// narrower than the image border would. Pass the landmark detector's input crop size to
/// reproduce the reference; pass the image size when the landmarks came from elsewhere.
pub fn descriptor_box(
    landmarks: &[Point],
    frame_width: u32,
    frame_height: u32,
) -> Result<FaceBox, ImageError> {
    if landmarks.len() != LANDMARK_COUNT {
        return Err(ImageError::InvalidLandmarks {
            reason: format!("{} points, expected {LANDMARK_COUNT}", landmarks.len()),
        });
    }
    if !landmarks
        .iter()
        .all(|p| p.x.abs() <= MAX_COORDINATE && p.y.abs() <= MAX_COORDINATE)
    {
        return Err(ImageError::InvalidLandmarks {
            reason: "a coordinate is not finite or out of range".to_owned(),
        });
    }
    let left_eye = centre(&landmarks[36..42]);
    let right_eye = centre(&landmarks[42..48]);
    let mouth = centre(&landmarks[48..68]);
    let to_mouth = |p: Point| (mouth.x - p.x).hypot_js(mouth.y - p.y);
    let eye_to_mouth = (to_mouth(left_eye) + to_mouth(right_eye)) / 2.0;
    let size = (eye_to_mouth / 0.45).floor();
    if size < 1.0 {
        return Err(ImageError::InvalidLandmarks {
            reason: "face box side below 1 pixel".to_owned(),
        });
    }
    let reference = centre(&[left_eye, right_eye, mouth]);
    let x = (reference.x - 0.5 * size).max(0.0).floor();
    let y = (reference.y - 0.43 * size).max(0.0).floor();
    // The coordinates are bounded by MAX_COORDINATE above, so these conversions are exact.
    let (x, y, size) = (x as i64, y as i64, size as i64);
    Ok(FaceBox {
        x,
        y,
        width: size.min(i64::from(frame_width) + x),
        height: size.min(i64::from(frame_height) + y),
    })
}

/// Mean of `points`, summed in order from zero then divided, as face-api's `getCenterPoint`.
fn centre(points: &[Point]) -> Point {
    let sum = points.iter().fold(Point { x: 0.0, y: 0.0 }, |s, p| Point {
        x: s.x + p.x,
        y: s.y + p.y,
    });
    let n = points.len() as f64;
    Point {
        x: sum.x / n,
        y: sum.y / n,
    }
}

/// `Math.sqrt(x ** 2 + y ** 2)`, which is not `f64::hypot` (that avoids the intermediate
/// rounding and so can differ in the last bit, enough to move a `floor`).
trait HypotJs {
    fn hypot_js(self, other: f64) -> f64;
}

impl HypotJs for f64 {
    fn hypot_js(self, other: f64) -> f64 {
        (self * self + other * other).sqrt()
    }
}

/// A batch of network inputs, `len() * INPUT_LEN` normalised values, NHWC.
///
/// `Debug` shows only the count: the values are a face.
#[derive(Clone, Default)]
pub struct FaceBatch {
    values: Vec<f32>,
}

impl std::fmt::Debug for FaceBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FaceBatch({} faces)", self.len())
    }
}

impl FaceBatch {
    /// An empty batch with room for `faces` inputs.
    pub fn with_capacity(faces: usize) -> Self {
        Self {
            values: Vec::with_capacity(faces * INPUT_LEN),
        }
    }

    /// Number of faces in the batch.
    pub fn len(&self) -> usize {
        self.values.len() / INPUT_LEN
    }

    /// Whether the batch holds no face.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The normalised inputs, `[len, 150, 150, 3]` row-major.
    pub fn as_slice(&self) -> &[f32] {
        &self.values
    }

    /// Removes every face, keeping the allocation.
    pub fn clear(&mut self) {
        self.values.clear();
    }

    /// Appends an already normalised input of exactly [`INPUT_LEN`] values; `false` (and
    /// nothing appended) when the length is wrong.
    pub fn push_normalized(&mut self, input: &[f32]) -> bool {
        let ok = input.len() == INPUT_LEN;
        if ok {
            self.values.extend_from_slice(input);
        }
        ok
    }

    /// Cuts `face` (clipped at the image's borders) out of `image`, pads it to a centred
    /// square, resizes it to 150×150 and appends it normalised (MODEL.md steps 2–4).
    pub fn push_face(&mut self, image: &RgbImage, face: FaceBox) -> Result<(), ImageError> {
        let face = face.clipped(image.width(), image.height())?;
        let start = self.values.len();
        self.values.resize(start + INPUT_LEN, 0.0);
        write_input(image, face, &mut self.values[start..]);
        Ok(())
    }
}

/// The crop padded to a square of zeros, read in place: the crop sits at (`left`, `top`) inside
/// the square.
struct PaddedCrop<'a> {
    image: &'a RgbImage,
    face: FaceBox,
    left: usize,
    top: usize,
}

impl PaddedCrop<'_> {
    /// Channel values at column `x`, row `y` of the square (zero in the padding).
    #[inline]
    fn sample(&self, x: usize, y: usize) -> [f32; 3] {
        let (w, h) = (self.face.width as usize, self.face.height as usize);
        if x < self.left || y < self.top || x - self.left >= w || y - self.top >= h {
            return [0.0; 3];
        }
        let px = self.image.pixel(
            self.face.x as usize + x - self.left,
            self.face.y as usize + y - self.top,
        );
        [f32::from(px[0]), f32::from(px[1]), f32::from(px[2])]
    }
}

/// Fills `out` ([`INPUT_LEN`] values) from the clipped `face` of `image`.
fn write_input(image: &RgbImage, face: FaceBox, out: &mut [f32]) {
    let (w, h) = (face.width as usize, face.height as usize);
    let side = w.max(h);
    // face-api's padToSquare(centred): round(diff / 2) zeros after, the rest before. The
    // division by 2 is exact, and Math.round rounds halves up, as does floor(v + 0.5) here.
    let diff = side - w.min(h);
    let after = (diff as f64 / 2.0 + 0.5).floor() as usize;
    let before = diff - after;
    let (left, top) = if h > w { (before, 0) } else { (0, before) };
    let crop = PaddedCrop {
        image,
        face,
        left,
        top,
    };

    let mean = MEAN_RGB;
    let mut put = |index: usize, rgb: [f32; 3]| {
        for c in 0..3 {
            out[index * 3 + c] = (rgb[c] - mean[c]) / 255.0;
        }
    };
    if side == INPUT_SIZE {
        // The reference skips the resize when the square is already 150×150.
        for y in 0..INPUT_SIZE {
            for x in 0..INPUT_SIZE {
                put(y * INPUT_SIZE + x, crop.sample(x, y));
            }
        }
        return;
    }
    // tf.image.resizeBilinear(alignCorners = false, halfPixelCenters = false): source position
    // = output index × (in / out), neighbours floor and min(ceil, in - 1).
    let ratio = side as f64 / INPUT_SIZE as f64;
    let taps = |i: usize| {
        let src = ratio * i as f64;
        let lo = src.floor().max(0.0);
        let hi = (src.ceil() as usize).min(side - 1);
        (lo as usize, hi, src - lo)
    };
    for oy in 0..INPUT_SIZE {
        let (y0, y1, fy) = taps(oy);
        for ox in 0..INPUT_SIZE {
            let (x0, x1, fx) = taps(ox);
            let (tl, tr) = (crop.sample(x0, y0), crop.sample(x1, y0));
            let (bl, br) = (crop.sample(x0, y1), crop.sample(x1, y1));
            let mut rgb = [0.0f32; 3];
            for c in 0..3 {
                let top = f64::from(tl[c]) + (f64::from(tr[c]) - f64::from(tl[c])) * fx;
                let bottom = f64::from(bl[c]) + (f64::from(br[c]) - f64::from(bl[c])) * fx;
                rgb[c] = (top + (bottom - top) * fy) as f32;
            }
            put(oy * INPUT_SIZE + ox, rgb);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(width: u32, height: u32) -> RgbImage {
        let pixels = (0..width * height * 3).map(|i| (i % 251) as u8).collect();
        RgbImage::from_raw(width, height, pixels).unwrap()
    }

    #[test]
    fn clip_keeps_only_the_inside() {
        let b = FaceBox {
            x: -5,
            y: 10,
            width: 20,
            height: 100,
        };
        assert_eq!(
            b.clipped(30, 50).unwrap(),
            FaceBox {
                x: 0,
                y: 10,
                width: 15,
                height: 40
            }
        );
        assert!(
            FaceBox {
                x: 40,
                y: 0,
                width: 5,
                height: 5
            }
            .clipped(30, 50)
            .is_err()
        );
    }

    #[test]
    fn padding_puts_the_larger_half_after() {
        // A 150-high, 141-wide crop: diff 9, round(4.5) = 5 columns after, 4 before.
        let img = image(141, 150);
        let mut batch = FaceBatch::default();
        batch
            .push_face(
                &img,
                FaceBox {
                    x: 0,
                    y: 0,
                    width: 141,
                    height: 150,
                },
            )
            .unwrap();
        let v = batch.as_slice();
        let zero_red = -MEAN_RGB[0] / 255.0;
        let at = |x: usize, y: usize| v[(y * INPUT_SIZE + x) * 3];
        assert_eq!(at(3, 7), zero_red);
        assert_ne!(at(4, 7), zero_red);
        assert_eq!(at(145, 7), zero_red);
        assert_ne!(at(144, 7), zero_red);
    }

    #[test]
    fn wrong_landmark_counts_are_refused() {
        let pts = vec![Point { x: 1.0, y: 1.0 }; 5];
        assert!(matches!(
            descriptor_box(&pts, 10, 10),
            Err(ImageError::InvalidLandmarks { .. })
        ));
        let mut pts = vec![Point { x: 1.0, y: 1.0 }; 68];
        pts[3].x = f64::NAN;
        assert!(matches!(
            descriptor_box(&pts, 10, 10),
            Err(ImageError::InvalidLandmarks { .. })
        ));
    }
}
