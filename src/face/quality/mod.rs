//! Capture quality: is this photo of a face good enough to enrol or to match, and if not, what
//! should the traveller fix?
//!
//! The measures follow the spirit of ISO/IEC 29794-5 (face image quality; its reference
//! implementation is the BSI's OFIQ) but are computed from what gatematch already has, the 68
//! landmarks and the pixels, without a face-parsing network:
//!
//! | measure | how | the traveller is told |
//! | --- | --- | --- |
//! | inter-eye distance | pixels between the eye centres | come closer |
//! | yaw, pitch, roll | a generic 3D face fitted to 7 landmarks (scaled orthographic) | look at the camera |
//! | sharpness | Laplacian energy against contrast, on the face resampled to 112 px | hold still |
//! | brightness, contrast | mean and spread of luma inside the face outline | (lighting) |
//! | eye openness | eye height over eye width, from the eyelid landmarks | open your eyes |
//! | eyes covered | share of the eye regions far darker than the face's skin | take off dark glasses |
//! | lower face covered | share of mouth and chin unlike the face's skin | take off your mask |
//! | forehead covered | share of the band above the brows unlike the face's skin | take off your hat |
//!
//! Each cover check compares its region with the face's skin, sampled where its own occluder
//! does not reach (mouth and chin against forehead and nose ridge; the forehead against the
//! ridge and cheeks; the eyes against forehead and cheeks), taking the two patches that agree
//! best so that one more occluder elsewhere does not spoil the reference.
//!
//! Each measure has a threshold in [`QualityPolicy`] (the `[face.quality]` configuration) and
//! a [`CaptureIssue`] that a gate can turn into words. How well the cover measures do is
//! measured on real photos with synthetic occluders ([`occluder`]); the rates are in the
//! closing notes and kept as bounds by `tests/face_quality.rs`.
//!
//! Landmark positions, pixels and the values measured are biometric data; none appears in a
//! log line (the measures go back to the gate that sent the photo, nowhere else).

pub mod occluder;

use serde::Deserialize;

use super::preprocess::crop::LANDMARK_COUNT;
use super::preprocess::{Point, RgbImage};

/// What the traveller should fix, one per failed check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CaptureIssue {
    /// The detector found no face in the image.
    NoFace,
    /// The detector found several faces and the policy is to refuse: only the traveller
    /// should be in front of the camera.
    SeveralFaces,
    /// The face is too small in the frame: come closer.
    FaceTooSmall,
    /// The head is turned, tilted or nodding: look straight at the camera.
    HeadPose,
    /// The photo is blurred: hold still.
    Blurred,
    /// The face is too dark.
    TooDark,
    /// The face is over-exposed.
    TooBright,
    /// The face has too little contrast (fog, glare, a flat grey image).
    LowContrast,
    /// The eyes are closed: open your eyes.
    EyesClosed,
    /// The eyes are hidden (dark glasses): take them off.
    EyesCovered,
    /// Mouth and chin are hidden (a mask, a scarf): take it off.
    LowerFaceCovered,
    /// The forehead is hidden (a hat, a cap, a hood): take it off.
    ForeheadCovered,
}

impl CaptureIssue {
    /// The issue's name in metrics and on the command line (`snake_case`).
    pub fn label(self) -> &'static str {
        match self {
            Self::NoFace => "no_face",
            Self::SeveralFaces => "several_faces",
            Self::FaceTooSmall => "face_too_small",
            Self::HeadPose => "head_pose",
            Self::Blurred => "blurred",
            Self::TooDark => "too_dark",
            Self::TooBright => "too_bright",
            Self::LowContrast => "low_contrast",
            Self::EyesClosed => "eyes_closed",
            Self::EyesCovered => "eyes_covered",
            Self::LowerFaceCovered => "lower_face_covered",
            Self::ForeheadCovered => "forehead_covered",
        }
    }

    /// A sentence a gate could show the traveller.
    pub fn advice(self) -> &'static str {
        match self {
            Self::NoFace => "look at the camera",
            Self::SeveralFaces => "only one person in front of the camera, please",
            Self::FaceTooSmall => "come closer to the camera",
            Self::HeadPose => "look straight at the camera",
            Self::Blurred => "hold still",
            Self::TooDark => "the face is too dark; step into the light",
            Self::TooBright => "the face is over-exposed; step out of direct light",
            Self::LowContrast => "the face has too little contrast",
            Self::EyesClosed => "open your eyes",
            Self::EyesCovered => "take off your glasses",
            Self::LowerFaceCovered => "take off your mask",
            Self::ForeheadCovered => "take off your hat",
        }
    }
}

/// Everything measured on one face. Angles in degrees, distances in image pixels, shares in
/// 0..=1, luma in 0..=255.
#[derive(Clone, Copy, PartialEq, Default)]
pub struct Measures {
    /// Distance between the eye centres (means of points 36–41 and 42–47).
    pub inter_eye_px: f64,
    /// Head turned left or right; 0 is frontal.
    pub yaw_deg: f64,
    /// Head nodding up or down; 0 is frontal.
    pub pitch_deg: f64,
    /// Head tilted towards a shoulder: the angle of the line between the eyes.
    pub roll_deg: f64,
    /// Laplacian energy over contrast on the face resampled to 112 px; higher is sharper.
    pub sharpness: f64,
    /// Mean luma inside the face outline.
    pub brightness: f64,
    /// Standard deviation of luma inside the face outline.
    pub contrast: f64,
    /// Eye height over eye width, the mean of both eyes (about 0.25–0.35 open, below 0.15 shut).
    pub eye_openness: f64,
    /// Share of the eye regions much darker than the skin.
    pub eyes_covered: f64,
    /// Share of the mouth-and-chin region unlike the skin.
    pub lower_face_covered: f64,
    /// Share of the band above the brows unlike the skin.
    pub forehead_covered: f64,
}

impl std::fmt::Debug for Measures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Measures(redacted)")
    }
}

/// The thresholds a capture is held to; the `[face.quality]` section of the configuration.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QualityPolicy {
    /// Check captures at all. Default true.
    pub enabled: bool,
    /// What to do when the detector finds several faces in one capture: refuse it
    /// ([`CaptureIssue::SeveralFaces`]) or take the largest. Default `refuse`.
    pub several_faces: SeveralFaces,
    /// Smallest inter-eye distance in pixels. Default 40.
    pub min_inter_eye_px: f64,
    /// Largest |yaw| in degrees. Default 30.
    pub max_yaw_deg: f64,
    /// Largest |pitch| in degrees. Default 30.
    pub max_pitch_deg: f64,
    /// Largest |roll| in degrees. Default 25.
    pub max_roll_deg: f64,
    /// Lowest sharpness. Default 0.12.
    pub min_sharpness: f64,
    /// Lowest and highest mean luma of the face. Defaults 40 and 225.
    pub min_brightness: f64,
    /// See `min_brightness`.
    pub max_brightness: f64,
    /// Lowest luma standard deviation. Default 12.
    pub min_contrast: f64,
    /// Lowest eye openness. Default 0.12.
    pub min_eye_openness: f64,
    /// Largest share of the eye regions covered. Default 0.6.
    pub max_eyes_covered: f64,
    /// Largest share of mouth and chin covered. Default 0.55.
    pub max_lower_face_covered: f64,
    /// Largest share of the forehead band covered. Default 0.6.
    pub max_forehead_covered: f64,
}

impl Default for QualityPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            several_faces: SeveralFaces::Refuse,
            min_inter_eye_px: 40.0,
            max_yaw_deg: 30.0,
            max_pitch_deg: 30.0,
            max_roll_deg: 25.0,
            min_sharpness: 0.12,
            min_brightness: 40.0,
            max_brightness: 225.0,
            min_contrast: 12.0,
            min_eye_openness: 0.12,
            max_eyes_covered: 0.6,
            max_lower_face_covered: 0.55,
            max_forehead_covered: 0.6,
        }
    }
}

/// The policy for a capture in which the detector found more than one face.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SeveralFaces {
    /// Refuse the capture: at a gate, a second face is someone standing too close.
    #[default]
    Refuse,
    /// Take the largest face (by detection box area), for a camera that sees a queue.
    Largest,
}

/// One measure held against its threshold.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Check {
    /// The issue raised when the check fails.
    pub issue: CaptureIssue,
    /// The value measured.
    pub value: f64,
    /// The threshold (a lower bound for size, sharpness, openness, contrast and the low end
    /// of brightness; an upper bound for the rest).
    pub threshold: f64,
    /// Whether the capture passes this check.
    pub passed: bool,
}

impl QualityPolicy {
    /// Every check of `m`, in a fixed order (pose reports its worst angle against its own
    /// limit, as a share of it).
    pub fn checks(&self, m: &Measures) -> Vec<Check> {
        let at_least = |issue, value: f64, threshold: f64| Check {
            issue,
            value,
            threshold,
            passed: value >= threshold,
        };
        let at_most = |issue, value: f64, threshold: f64| Check {
            issue,
            value,
            threshold,
            passed: value <= threshold,
        };
        // Pose as the worst of the three angles, each as a share of its limit: one check, one
        // piece of advice.
        let pose = [
            m.yaw_deg.abs() / self.max_yaw_deg,
            m.pitch_deg.abs() / self.max_pitch_deg,
            m.roll_deg.abs() / self.max_roll_deg,
        ]
        .into_iter()
        .fold(0.0, f64::max);
        vec![
            at_least(
                CaptureIssue::FaceTooSmall,
                m.inter_eye_px,
                self.min_inter_eye_px,
            ),
            at_most(CaptureIssue::HeadPose, pose, 1.0),
            at_least(CaptureIssue::Blurred, m.sharpness, self.min_sharpness),
            at_least(CaptureIssue::TooDark, m.brightness, self.min_brightness),
            at_most(CaptureIssue::TooBright, m.brightness, self.max_brightness),
            at_least(CaptureIssue::LowContrast, m.contrast, self.min_contrast),
            at_least(
                CaptureIssue::EyesClosed,
                m.eye_openness,
                self.min_eye_openness,
            ),
            at_most(
                CaptureIssue::EyesCovered,
                m.eyes_covered,
                self.max_eyes_covered,
            ),
            at_most(
                CaptureIssue::LowerFaceCovered,
                m.lower_face_covered,
                self.max_lower_face_covered,
            ),
            at_most(
                CaptureIssue::ForeheadCovered,
                m.forehead_covered,
                self.max_forehead_covered,
            ),
        ]
    }

    /// The issues of `m` (empty: the capture is good).
    pub fn issues(&self, m: &Measures) -> Vec<CaptureIssue> {
        self.checks(m)
            .into_iter()
            .filter(|c| !c.passed)
            .map(|c| c.issue)
            .collect()
    }
}

/// Measures the face with `landmarks` (68 points, image pixels) in `image`. `None` when the
/// landmarks are not 68 finite points with distinct eyes.
pub fn measure(image: &RgbImage, landmarks: &[Point]) -> Option<Measures> {
    if landmarks.len() != LANDMARK_COUNT
        || !landmarks.iter().all(|p| p.x.is_finite() && p.y.is_finite())
    {
        return None;
    }
    let face = Face::new(landmarks)?;
    let luma = Luma::new(image);
    use SkinPatch::{Forehead, LeftCheek, Ridge, RightCheek};
    let upper_skin = face.skin_reference(&luma, &[Forehead, Ridge]);
    // The nose ridge anchors the forehead's reference: two masked cheeks agree with each other
    // better than either does with skin, and would make the mask the "skin".
    let lower_skin = face.skin_reference_anchored(&luma, Ridge, &[LeftCheek, RightCheek]);
    let any_skin = face.skin_reference(&luma, &[Forehead, LeftCheek, RightCheek]);
    let (yaw_deg, pitch_deg) = face.pose();
    let roll_deg = face.across.1.atan2(face.across.0).to_degrees();
    let (brightness, contrast) = luma.mean_and_spread(&face.outline());
    Some(Measures {
        inter_eye_px: face.inter_eye,
        yaw_deg,
        pitch_deg,
        roll_deg,
        sharpness: luma.sharpness(&face.outline()),
        brightness,
        contrast,
        eye_openness: face.eye_openness(),
        eyes_covered: {
            let (left, right) = face.eye_regions();
            let dark = |p: &Polygon| luma.share(p, |px| px.y < 0.45 * any_skin.y);
            (dark(&left) + dark(&right)) / 2.0
        },
        // The lips are left out: lipstick and teeth are unlike skin too, and refused smiles
        // (6 of 22 clean faces in the package's demo photos) taught that. A mask hides far more
        // than the lips, so what is left of the region still shows it.
        lower_face_covered: luma.share_outside(&face.lower_face(), &face.lips(), |px| {
            !upper_skin.is_like(px)
        }),
        forehead_covered: luma.share(&face.forehead(), |px| !lower_skin.is_like(px)),
    })
}

/// A pixel in luma and chroma (BT.601, full range).
#[derive(Clone, Copy, Debug, Default)]
struct Ycc {
    y: f64,
    cb: f64,
    cr: f64,
}

impl Ycc {
    fn from_rgb(p: &[u8]) -> Ycc {
        let (r, g, b) = (f64::from(p[0]), f64::from(p[1]), f64::from(p[2]));
        Ycc {
            y: 0.299 * r + 0.587 * g + 0.114 * b,
            cb: 128.0 - 0.168_736 * r - 0.331_264 * g + 0.5 * b,
            cr: 128.0 + 0.5 * r - 0.418_688 * g - 0.081_312 * b,
        }
    }

    /// Whether `px` could be this skin under the face's own shading: chroma close, luma within
    /// a shadow or a highlight of it.
    fn is_like(&self, px: Ycc) -> bool {
        let chroma = (px.cb - self.cb).hypot(px.cr - self.cr);
        let ratio = px.y / self.y.max(1.0);
        chroma < 14.0 && (0.45..=1.7).contains(&ratio)
    }
}

/// The image as a sampler of pixels inside polygons.
struct Luma<'a> {
    image: &'a RgbImage,
}

/// A closed polygon in image pixels.
type Polygon = Vec<Point>;

impl<'a> Luma<'a> {
    fn new(image: &'a RgbImage) -> Self {
        Self { image }
    }

    /// Calls `f` with every pixel whose centre lies inside `polygon`, clipped to the image.
    fn for_each_inside(&self, polygon: &[Point], mut f: impl FnMut(usize, usize, Ycc)) {
        let (w, h) = (self.image.width() as usize, self.image.height() as usize);
        let (lo_x, hi_x, lo_y, hi_y) = polygon.iter().fold(
            (f64::MAX, f64::MIN, f64::MAX, f64::MIN),
            |(a, b, c, d), p| (a.min(p.x), b.max(p.x), c.min(p.y), d.max(p.y)),
        );
        let clamp = |v: f64, n: usize| v.clamp(0.0, n as f64) as usize;
        for y in clamp(lo_y.floor(), h)..clamp(hi_y.ceil(), h) {
            for x in clamp(lo_x.floor(), w)..clamp(hi_x.ceil(), w) {
                if inside(polygon, x as f64 + 0.5, y as f64 + 0.5) {
                    f(x, y, Ycc::from_rgb(self.image.pixel(x, y)));
                }
            }
        }
    }

    /// Share of the pixels inside `polygon` for which `test` holds; 0 for a polygon with none.
    fn share(&self, polygon: &[Point], test: impl Fn(Ycc) -> bool) -> f64 {
        self.share_outside(polygon, &[], test)
    }

    /// As [`Luma::share`], over the pixels of `polygon` that are not inside `hole` (none are
    /// when `hole` is empty).
    fn share_outside(&self, polygon: &[Point], hole: &[Point], test: impl Fn(Ycc) -> bool) -> f64 {
        let (mut hits, mut all) = (0usize, 0usize);
        self.for_each_inside(polygon, |x, y, px| {
            if !hole.is_empty() && inside(hole, x as f64 + 0.5, y as f64 + 0.5) {
                return;
            }
            all += 1;
            hits += usize::from(test(px));
        });
        if all == 0 {
            0.0
        } else {
            hits as f64 / all as f64
        }
    }

    /// Mean colour inside `polygon`, and the pixel count.
    fn mean(&self, polygon: &[Point]) -> (Ycc, usize) {
        let mut sum = Ycc::default();
        let mut n = 0usize;
        self.for_each_inside(polygon, |_, _, px| {
            sum.y += px.y;
            sum.cb += px.cb;
            sum.cr += px.cr;
            n += 1;
        });
        let d = n.max(1) as f64;
        (
            Ycc {
                y: sum.y / d,
                cb: sum.cb / d,
                cr: sum.cr / d,
            },
            n,
        )
    }

    /// Mean and standard deviation of luma inside `polygon`.
    fn mean_and_spread(&self, polygon: &[Point]) -> (f64, f64) {
        let (mut sum, mut sum_sq, mut n) = (0.0, 0.0, 0usize);
        self.for_each_inside(polygon, |_, _, px| {
            sum += px.y;
            sum_sq += px.y * px.y;
            n += 1;
        });
        if n == 0 {
            return (0.0, 0.0);
        }
        let mean = sum / n as f64;
        (mean, (sum_sq / n as f64 - mean * mean).max(0.0).sqrt())
    }

    /// Laplacian energy over contrast: the luma of the polygon's bounding box is resampled
    /// (box filter) to [`SHARPNESS_SIDE`] pixels square, so the measure does not depend on
    /// how large the face is in the frame; blur lowers the Laplacian far more than it lowers
    /// the spread of luma.
    fn sharpness(&self, polygon: &[Point]) -> f64 {
        let (w, h) = (self.image.width() as f64, self.image.height() as f64);
        let (lo_x, hi_x, lo_y, hi_y) = polygon.iter().fold(
            (f64::MAX, f64::MIN, f64::MAX, f64::MIN),
            |(a, b, c, d), p| (a.min(p.x), b.max(p.x), c.min(p.y), d.max(p.y)),
        );
        let (lo_x, lo_y) = (lo_x.max(0.0), lo_y.max(0.0));
        let (hi_x, hi_y) = (hi_x.min(w), hi_y.min(h));
        if hi_x - lo_x < 4.0 || hi_y - lo_y < 4.0 {
            return 0.0;
        }
        let n = SHARPNESS_SIDE;
        let mut grid = vec![0.0f64; n * n];
        let (step_x, step_y) = ((hi_x - lo_x) / n as f64, (hi_y - lo_y) / n as f64);
        for gy in 0..n {
            for gx in 0..n {
                let x0 = (lo_x + gx as f64 * step_x) as usize;
                let y0 = (lo_y + gy as f64 * step_y) as usize;
                let x1 = ((lo_x + (gx + 1) as f64 * step_x) as usize).max(x0 + 1);
                let y1 = ((lo_y + (gy + 1) as f64 * step_y) as usize).max(y0 + 1);
                let (mut sum, mut count) = (0.0, 0usize);
                for y in y0..y1.min(self.image.height() as usize) {
                    for x in x0..x1.min(self.image.width() as usize) {
                        sum += Ycc::from_rgb(self.image.pixel(x, y)).y;
                        count += 1;
                    }
                }
                grid[gy * n + gx] = sum / count.max(1) as f64;
            }
        }
        let (mut lap_sq, mut sum, mut sum_sq, mut count) = (0.0, 0.0, 0.0, 0usize);
        for y in 1..n - 1 {
            for x in 1..n - 1 {
                let c = grid[y * n + x];
                let lap = grid[y * n + x - 1]
                    + grid[y * n + x + 1]
                    + grid[(y - 1) * n + x]
                    + grid[(y + 1) * n + x]
                    - 4.0 * c;
                lap_sq += lap * lap;
                sum += c;
                sum_sq += c * c;
                count += 1;
            }
        }
        let count = count as f64;
        let spread = (sum_sq / count - (sum / count).powi(2)).max(0.0).sqrt();
        (lap_sq / count).sqrt() / (spread + 1.0)
    }
}

/// Side of the square the face is resampled to for sharpness, in pixels.
const SHARPNESS_SIDE: usize = 112;

/// Even-odd rule: whether (`x`, `y`) is inside `polygon`.
fn inside(polygon: &[Point], x: f64, y: f64) -> bool {
    let mut inside = false;
    let mut j = polygon.len() - 1;
    for i in 0..polygon.len() {
        let (a, b) = (polygon[i], polygon[j]);
        if (a.y > y) != (b.y > y) && x < (b.x - a.x) * (y - a.y) / (b.y - a.y) + a.x {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// Where skin is sampled. Each cover check takes its reference from patches its own occluder
/// does not reach: a mask covers both cheeks (which would then agree on the mask's colour), a
/// brim the forehead, glasses the top of the nose ridge.
#[derive(Clone, Copy, Debug)]
enum SkinPatch {
    Forehead,
    Ridge,
    LeftCheek,
    RightCheek,
}

/// The landmarks and the face's own frame: eye line, up direction, inter-eye distance.
struct Face<'a> {
    points: &'a [Point],
    left_eye: Point,
    right_eye: Point,
    /// Unit vector from the left eye centre to the right one.
    across: (f64, f64),
    /// Unit vector towards the top of the head.
    up: (f64, f64),
    inter_eye: f64,
}

fn mean_of(points: &[Point]) -> Point {
    let n = points.len() as f64;
    let (x, y) = points
        .iter()
        .fold((0.0, 0.0), |(x, y), p| (x + p.x, y + p.y));
    Point { x: x / n, y: y / n }
}

impl<'a> Face<'a> {
    fn new(points: &'a [Point]) -> Option<Self> {
        let left_eye = mean_of(&points[36..42]);
        let right_eye = mean_of(&points[42..48]);
        let (dx, dy) = (right_eye.x - left_eye.x, right_eye.y - left_eye.y);
        let inter_eye = dx.hypot(dy);
        if inter_eye < 1.0 {
            return None;
        }
        let across = (dx / inter_eye, dy / inter_eye);
        // Image rows grow downwards; turning `across` by -90 degrees points up the face.
        let up = (across.1, -across.0);
        Some(Face {
            points,
            left_eye,
            right_eye,
            across,
            up,
            inter_eye,
        })
    }

    fn p(&self, i: usize) -> Point {
        self.points[i]
    }

    /// `p` moved by `a` along the face's width and `b` up the face, in inter-eye distances.
    fn offset(&self, p: Point, a: f64, b: f64) -> Point {
        let d = self.inter_eye;
        Point {
            x: p.x + d * (a * self.across.0 + b * self.up.0),
            y: p.y + d * (a * self.across.1 + b * self.up.1),
        }
    }

    /// A square patch of half-side `r` inter-eye distances around `c`, in the face's frame.
    fn patch(&self, c: Point, r: f64) -> Polygon {
        vec![
            self.offset(c, -r, r),
            self.offset(c, r, r),
            self.offset(c, r, -r),
            self.offset(c, -r, -r),
        ]
    }

    /// The jaw line and the brows: the whole face.
    fn outline(&self) -> Polygon {
        let mut outline: Polygon = (0..17).map(|i| self.p(i)).collect();
        outline.extend((17..27).rev().map(|i| self.p(i)));
        outline
    }

    /// Mouth and chin: the jaw from point 3 to 13, closed along the base of the nose.
    fn lower_face(&self) -> Polygon {
        let mut region: Polygon = (3..14).map(|i| self.p(i)).collect();
        region.extend([35, 33, 31].map(|i| self.p(i)));
        region
    }

    /// The outer lip line (points 48–59), widened by a tenth of the inter-eye distance.
    fn lips(&self) -> Polygon {
        let (top, bottom) = (self.p(51), self.p(57));
        let centre = Point {
            x: (top.x + bottom.x) / 2.0,
            y: (top.y + bottom.y) / 2.0,
        };
        (48..60)
            .map(|i| {
                let p = self.p(i);
                let (dx, dy) = (p.x - centre.x, p.y - centre.y);
                let reach = dx.hypot(dy).max(1e-9);
                let grow = 1.0 + 0.1 * self.inter_eye / reach;
                Point {
                    x: centre.x + dx * grow,
                    y: centre.y + dy * grow,
                }
            })
            .collect()
    }

    /// The band above the brows, 0.45 inter-eye distances high.
    fn forehead(&self) -> Polygon {
        let brows: Vec<Point> = (17..27)
            .map(|i| self.offset(self.p(i), 0.0, 0.08))
            .collect();
        let mut band = brows.clone();
        band.extend(brows.iter().rev().map(|&p| self.offset(p, 0.0, 0.45)));
        band
    }

    /// A box around each eye: its corners widened by a quarter and 0.22 inter-eye distances
    /// above and below its centre, where dark lenses sit.
    fn eye_regions(&self) -> (Polygon, Polygon) {
        let region = |outer: usize, inner: usize, centre: Point| {
            let (a, b) = (self.p(outer), self.p(inner));
            let half = 0.5 * (b.x - a.x).hypot(b.y - a.y) / self.inter_eye * 1.25;
            vec![
                self.offset(centre, -half, 0.22),
                self.offset(centre, half, 0.22),
                self.offset(centre, half, -0.22),
                self.offset(centre, -half, -0.22),
            ]
        };
        (
            region(36, 39, self.left_eye),
            region(42, 45, self.right_eye),
        )
    }

    /// Eye height (the two eyelid pairs) over eye width, mean of both eyes.
    fn eye_openness(&self) -> f64 {
        let dist = |a: usize, b: usize| {
            let (p, q) = (self.p(a), self.p(b));
            (p.x - q.x).hypot(p.y - q.y)
        };
        let eye =
            |c0, t1, t2, c1, b1, b2| (dist(t1, b1) + dist(t2, b2)) / (2.0 * dist(c0, c1).max(1e-9));
        (eye(36, 37, 38, 39, 41, 40) + eye(42, 43, 44, 45, 47, 46)) / 2.0
    }

    /// The skin's colour as seen from `patches` (a subset of [`SkinPatch`]): the mean of the
    /// two whose colours agree best.
    fn skin_reference(&self, luma: &Luma<'_>, patches: &[SkinPatch]) -> Ycc {
        let means: Vec<(Ycc, usize)> = patches
            .iter()
            .map(|&patch| luma.mean(&self.skin_patch(patch)))
            .collect();
        let mut best = (f64::MAX, Ycc::default());
        for i in 0..means.len() {
            for j in i + 1..means.len() {
                let ((a, na), (b, nb)) = (means[i], means[j]);
                if na == 0 || nb == 0 {
                    continue;
                }
                let gap = (a.cb - b.cb).hypot(a.cr - b.cr) + 0.1 * (a.y - b.y).abs();
                if gap < best.0 {
                    best = (
                        gap,
                        Ycc {
                            y: (a.y + b.y) / 2.0,
                            cb: (a.cb + b.cb) / 2.0,
                            cr: (a.cr + b.cr) / 2.0,
                        },
                    );
                }
            }
        }
        best.1
    }

    /// The skin's colour as seen from `anchor` and whichever of `others` agrees with it best;
    /// `anchor` alone when none is close (they are covered).
    fn skin_reference_anchored(
        &self,
        luma: &Luma<'_>,
        anchor: SkinPatch,
        others: &[SkinPatch],
    ) -> Ycc {
        let (a, na) = luma.mean(&self.skin_patch(anchor));
        let mut best = (f64::MAX, a);
        for &other in others {
            let (b, nb) = luma.mean(&self.skin_patch(other));
            let gap = (a.cb - b.cb).hypot(a.cr - b.cr) + 0.1 * (a.y - b.y).abs();
            if nb > 0 && na > 0 && gap < best.0 {
                best = (
                    gap,
                    Ycc {
                        y: (a.y + b.y) / 2.0,
                        cb: (a.cb + b.cb) / 2.0,
                        cr: (a.cr + b.cr) / 2.0,
                    },
                );
            }
        }
        // Farther apart than the skin test's own chroma tolerance: not the same surface.
        if best.0 > 14.0 { a } else { best.1 }
    }

    fn skin_patch(&self, patch: SkinPatch) -> Polygon {
        match patch {
            SkinPatch::Forehead => {
                let brows = mean_of(&[self.p(19), self.p(24)]);
                self.patch(self.offset(brows, 0.0, 0.25), 0.15)
            }
            SkinPatch::Ridge => self.patch(mean_of(&[self.p(27), self.p(28)]), 0.07),
            SkinPatch::LeftCheek => self.patch(
                mean_of(&[self.p(1), self.p(3), self.p(31), self.p(41)]),
                0.12,
            ),
            SkinPatch::RightCheek => self.patch(
                mean_of(&[self.p(15), self.p(13), self.p(35), self.p(46)]),
                0.12,
            ),
        }
    }

    /// Yaw and pitch in degrees, from a generic 3D face fitted to seven landmarks by
    /// scaled orthographic projection: the 2×3 linear map that best carries the model's
    /// centred points onto the image's is the first two rows of a rotation times a scale.
    fn pose(&self) -> (f64, f64) {
        // A generic adult face in millimetres, x to the subject's left in the image (the
        // image's right), y up, z towards the camera; nose tip at the origin. Rough
        // anthropometric averages: the angles come out within a few degrees for frontal
        // faces, which is all a capture check needs.
        const MODEL: [(usize, [f64; 3]); 7] = [
            (36, [-45.0, 35.0, -30.0]),
            (45, [45.0, 35.0, -30.0]),
            (27, [0.0, 38.0, -18.0]),
            (30, [0.0, 0.0, 0.0]),
            (48, [-25.0, -30.0, -22.0]),
            (54, [25.0, -30.0, -22.0]),
            (8, [0.0, -70.0, -25.0]),
        ];
        let n = MODEL.len() as f64;
        let model_mean = MODEL.iter().fold([0.0; 3], |m, (_, p)| {
            [m[0] + p[0] / n, m[1] + p[1] / n, m[2] + p[2] / n]
        });
        let image: Vec<(f64, f64)> = MODEL
            .iter()
            .map(|&(i, _)| (self.p(i).x, -self.p(i).y))
            .collect();
        let image_mean = image
            .iter()
            .fold((0.0, 0.0), |m, p| (m.0 + p.0 / n, m.1 + p.1 / n));
        // Least squares: M (2x3) = (Σ u Xᵀ)(Σ X Xᵀ)⁻¹ with centred model points X and image
        // points u.
        let mut xx = [[0.0; 3]; 3];
        let mut ux = [[0.0; 3]; 2];
        for (&(_, p), &(u, v)) in MODEL.iter().zip(&image) {
            let x = [
                p[0] - model_mean[0],
                p[1] - model_mean[1],
                p[2] - model_mean[2],
            ];
            let (u, v) = (u - image_mean.0, v - image_mean.1);
            for r in 0..3 {
                for c in 0..3 {
                    xx[r][c] += x[r] * x[c];
                }
                ux[0][r] += u * x[r];
                ux[1][r] += v * x[r];
            }
        }
        let Some(inv) = invert3(&xx) else {
            return (0.0, 0.0);
        };
        let row = |k: usize| -> [f64; 3] {
            std::array::from_fn(|c| (0..3).map(|r| ux[k][r] * inv[r][c]).sum())
        };
        let (r1, r2) = (row(0), row(1));
        let norm = |v: [f64; 3]| (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt().max(1e-12);
        let r1 = r1.map(|v| v / norm(r1));
        // Gram-Schmidt: make the second row orthogonal to the first.
        let dot = r1[0] * r2[0] + r1[1] * r2[1] + r1[2] * r2[2];
        let r2 = [
            r2[0] - dot * r1[0],
            r2[1] - dot * r1[1],
            r2[2] - dot * r1[2],
        ];
        let r2 = r2.map(|v| v / norm(r2));
        let r3 = [
            r1[1] * r2[2] - r1[2] * r2[1],
            r1[2] * r2[0] - r1[0] * r2[2],
            r1[0] * r2[1] - r1[1] * r2[0],
        ];
        // R = Rz(roll) Ry(yaw) Rx(pitch): its third row is
        // (-sin yaw, cos yaw sin pitch, cos yaw cos pitch).
        let yaw = (-r3[0]).clamp(-1.0, 1.0).asin();
        let pitch = r3[1].atan2(r3[2]);
        (yaw.to_degrees(), pitch.to_degrees())
    }
}

/// The inverse of a 3×3 matrix; `None` when it is singular.
fn invert3(m: &[[f64; 3]; 3]) -> Option<[[f64; 3]; 3]> {
    let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    if det.abs() < 1e-12 {
        return None;
    }
    let c =
        |r0: usize, r1: usize, c0: usize, c1: usize| m[r0][c0] * m[r1][c1] - m[r0][c1] * m[r1][c0];
    Some([
        [
            c(1, 2, 1, 2) / det,
            -c(0, 2, 1, 2) / det,
            c(0, 1, 1, 2) / det,
        ],
        [
            -c(1, 2, 0, 2) / det,
            c(0, 2, 0, 2) / det,
            -c(0, 1, 0, 2) / det,
        ],
        [
            c(1, 2, 0, 1) / det,
            -c(0, 2, 0, 1) / det,
            c(0, 1, 0, 1) / det,
        ],
    ])
}
