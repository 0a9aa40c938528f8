//! Synthetic occluders drawn over a real face, to measure the cover checks without a
//! collection of masked photos: a mask over mouth and chin, a brim over the forehead, dark
//! glasses over the eyes. Shapes follow the face's landmarks; size, colour and texture vary
//! with a seeded generator, so an evaluation is repeatable and a test can hold its rates.
//!
//! The generator is deliberately not kind to the checks: a mask may be beige, near the
//! wearer's skin; a brim may stop short of the brows; glasses may be smaller than the eye
//! region the check looks at.

use rand::Rng;

use super::{Face, Polygon, inside};
use crate::face::preprocess::{Point, RgbImage};

/// What is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Occluder {
    /// A face mask over nose, mouth and chin.
    Mask,
    /// The brim of a hat or cap over the forehead.
    Brim,
    /// Dark glasses over both eyes.
    DarkGlasses,
}

impl Occluder {
    /// Every kind, in a fixed order.
    pub const ALL: [Occluder; 3] = [Occluder::Mask, Occluder::Brim, Occluder::DarkGlasses];
}

/// A fill: a base colour with stripes or noise.
struct Fill {
    base: [f64; 3],
    /// Stripe direction (unit vector), period in pixels and amplitude; amplitude 0 is flat.
    stripes: ((f64, f64), f64, f64),
    noise: f64,
}

impl Fill {
    fn random(rng: &mut impl Rng, base: [f64; 3], scale: f64) -> Fill {
        let angle: f64 = rng.random_range(0.0..std::f64::consts::PI);
        let striped = rng.random_bool(0.4);
        Fill {
            base,
            stripes: (
                (angle.cos(), angle.sin()),
                rng.random_range(0.04..0.2) * scale,
                if striped {
                    rng.random_range(10.0..45.0)
                } else {
                    0.0
                },
            ),
            noise: rng.random_range(0.0..18.0),
        }
    }

    fn colour(&self, x: f64, y: f64, rng: &mut impl Rng) -> [u8; 3] {
        let ((dx, dy), period, amplitude) = self.stripes;
        let wave = if amplitude > 0.0 {
            amplitude * ((x * dx + y * dy) / period.max(1.0) * std::f64::consts::TAU).sin()
        } else {
            0.0
        };
        let jitter = if self.noise > 0.0 {
            rng.random_range(-self.noise..self.noise)
        } else {
            0.0
        };
        self.base
            .map(|c| (c + wave + jitter).round().clamp(0.0, 255.0) as u8)
    }
}

/// A random colour: any hue, or (one time in four) a skin-like beige.
fn cloth_colour(rng: &mut impl Rng) -> [f64; 3] {
    if rng.random_bool(0.25) {
        let l: f64 = rng.random_range(150.0..225.0);
        return [l, l * 0.82, l * 0.68];
    }
    let hue: f64 = rng.random_range(0.0..6.0);
    let (sat, val): (f64, f64) = (rng.random_range(0.0..0.9), rng.random_range(30.0..245.0));
    let c = val * sat;
    let x = c * (1.0 - ((hue % 2.0) - 1.0).abs());
    let (r, g, b) = match hue as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = val - c;
    [r + m, g + m, b + m]
}

/// `image` with `occluder` drawn over the face of `landmarks` (68 points); `None` when the
/// landmarks are not usable.
pub fn draw(
    image: &RgbImage,
    landmarks: &[Point],
    occluder: Occluder,
    rng: &mut impl Rng,
) -> Option<RgbImage> {
    let face = Face::new(landmarks)?;
    let scale = face.inter_eye;
    let shapes: Vec<Polygon> = match occluder {
        Occluder::Mask => vec![mask(&face, rng)],
        Occluder::Brim => vec![brim(&face, rng)],
        Occluder::DarkGlasses => glasses(&face, rng),
    };
    let base = match occluder {
        Occluder::DarkGlasses => {
            let l: f64 = rng.random_range(8.0..60.0);
            [
                l,
                l * rng.random_range(0.8..1.2),
                l * rng.random_range(0.8..1.3),
            ]
        }
        _ => cloth_colour(rng),
    };
    let fill = Fill::random(rng, base, scale);
    let mut pixels = image.as_bytes().to_vec();
    let width = image.width() as usize;
    for shape in &shapes {
        let (lo_x, hi_x, lo_y, hi_y) = shape.iter().fold(
            (f64::MAX, f64::MIN, f64::MAX, f64::MIN),
            |(a, b, c, d), p| (a.min(p.x), b.max(p.x), c.min(p.y), d.max(p.y)),
        );
        let clamp = |v: f64, n: u32| v.clamp(0.0, f64::from(n)) as usize;
        for y in clamp(lo_y.floor(), image.height())..clamp(hi_y.ceil(), image.height()) {
            for x in clamp(lo_x.floor(), image.width())..clamp(hi_x.ceil(), image.width()) {
                let (cx, cy) = (x as f64 + 0.5, y as f64 + 0.5);
                if inside(shape, cx, cy) {
                    let at = (y * width + x) * 3;
                    pixels[at..at + 3].copy_from_slice(&fill.colour(cx, cy, rng));
                }
            }
        }
    }
    RgbImage::from_raw(image.width(), image.height(), pixels)
}

/// From ear to ear below the eyes: the top edge runs over the nose between its bridge and its
/// tip, the bottom edge follows the jaw a little outside it.
fn mask(face: &Face<'_>, rng: &mut impl Rng) -> Polygon {
    let top: f64 = rng.random_range(0.0..0.6);
    let nose = {
        let (a, b) = (face.p(29), face.p(33));
        Point {
            x: a.x + top * (b.x - a.x),
            y: a.y + top * (b.y - a.y),
        }
    };
    let spread = rng.random_range(0.02..0.15);
    let mut shape = vec![face.offset(face.p(1), -spread, 0.0), nose];
    shape.push(face.offset(face.p(15), spread, 0.0));
    for i in (2..=14).rev() {
        let p = face.p(i);
        // Push each jaw point away from the chin's centre line and downwards.
        let side = if i < 8 {
            -spread
        } else if i > 8 {
            spread
        } else {
            0.0
        };
        let down = if (5..=11).contains(&i) { -spread } else { 0.0 };
        shape.push(face.offset(p, side, down));
    }
    shape
}

/// A band across the whole head from a little above the brows upwards.
fn brim(face: &Face<'_>, rng: &mut impl Rng) -> Polygon {
    let gap = rng.random_range(0.0..0.15);
    let height = rng.random_range(0.6..1.6);
    let wide = rng.random_range(0.2..0.7);
    let left = face.offset(face.p(17), -wide, gap);
    let right = face.offset(face.p(26), wide, gap);
    let mut shape = vec![left];
    shape.extend((18..26).map(|i| face.offset(face.p(i), 0.0, gap)));
    shape.push(right);
    shape.push(face.offset(right, 0.0, height));
    shape.push(face.offset(left, 0.0, height));
    shape
}

/// Two lenses (ellipses around the eye centres) and a bridge between them.
fn glasses(face: &Face<'_>, rng: &mut impl Rng) -> Vec<Polygon> {
    let half_width = rng.random_range(0.32..0.5);
    let half_height = rng.random_range(0.2..0.34);
    let lift = rng.random_range(-0.04..0.06);
    let lens = |centre: Point| -> Polygon {
        (0..32)
            .map(|k| {
                let t = f64::from(k) / 32.0 * std::f64::consts::TAU;
                face.offset(centre, half_width * t.cos(), lift + half_height * t.sin())
            })
            .collect()
    };
    let bridge = vec![
        face.offset(face.left_eye, half_width * 0.8, lift + 0.05),
        face.offset(face.right_eye, -half_width * 0.8, lift + 0.05),
        face.offset(face.right_eye, -half_width * 0.8, lift - 0.03),
        face.offset(face.left_eye, half_width * 0.8, lift - 0.03),
    ];
    vec![lens(face.left_eye), lens(face.right_eye), bridge]
}
