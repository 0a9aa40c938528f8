//! One face capture examined before it is described: where the face is (the gate's landmarks,
//! a ready crop, or found by the appliance's own detector), whether the capture is good enough
//! to match (the [`quality`](super::quality) checks), and the box the descriptor network's
//! crop is cut from.
//!
//! This is the step between decoding and the descriptor network, for the gate protocol and for
//! `gatematch embed` alike, so that both judge a capture the same way.

use std::sync::Arc;

use super::preprocess::{FaceBox, ImageError, Point, RgbImage, descriptor_box};
use super::quality::{CaptureIssue, Check, Measures, QualityPolicy, SeveralFaces, measure};

/// A face the detector found, with the landmarks the landmark network placed on it.
#[derive(Clone, PartialEq)]
pub struct FoundFace {
    /// The detector's box, in image pixels (clipped to the image).
    pub detection: DetectionBox,
    /// The detector's confidence in 0..=1.
    pub score: f32,
    /// The 68 landmarks, in image pixels.
    pub landmarks: Vec<Point>,
    /// Width and height of the region the landmarks were found in (the landmark network's
    /// input crop): the reference limits the descriptor box by it.
    pub landmarks_frame: (u32, u32),
}

impl std::fmt::Debug for FoundFace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Where a face is and its landmarks are biometric data: keep them out of logs.
        f.debug_struct("FoundFace").finish_non_exhaustive()
    }
}

/// An axis-aligned box in image pixels, fractional.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DetectionBox {
    /// Left edge.
    pub x: f64,
    /// Top edge.
    pub y: f64,
    /// Width.
    pub width: f64,
    /// Height.
    pub height: f64,
}

impl DetectionBox {
    /// Width × height.
    pub fn area(&self) -> f64 {
        self.width.max(0.0) * self.height.max(0.0)
    }
}

/// Finds the faces in an image and their landmarks: the detector and the landmark network.
pub trait FindFaces: Send + Sync {
    /// Every face found in `image`, most confident first.
    fn find(&self, image: &RgbImage) -> Result<Vec<FoundFace>, CaptureError>;
}

/// Where the face of a capture is.
#[derive(Clone)]
pub enum Region {
    /// The gate's 68 landmarks, in image pixels, found in a `frame_width` × `frame_height`
    /// region (the image, unless the gate's landmark network ran on a cut-out).
    Landmarks {
        /// The points, in iBUG 300-W order.
        points: Vec<Point>,
        /// Width of the region the landmarks were found in.
        frame_width: u32,
        /// Height of that region.
        frame_height: u32,
    },
    /// The image is the face crop already.
    ReadyCrop,
    /// Find the face with the detector.
    Find,
}

/// What examining one capture found.
#[derive(Clone, Default)]
pub struct Capture {
    /// Faces the detector found (0 when the face was given).
    pub faces_found: usize,
    /// The detected face used, when the detector ran and found one to use.
    pub found: Option<FoundFace>,
    /// The landmarks of the face used (given or found); `None` for a ready crop.
    pub landmarks: Option<Vec<Point>>,
    /// The quality measures, when the face has landmarks and quality checks are on.
    pub measures: Option<Measures>,
    /// Every check of `measures` against the policy, in a fixed order.
    pub checks: Vec<Check>,
    /// What the traveller should fix; empty for a good capture.
    pub issues: Vec<CaptureIssue>,
    /// The box the descriptor's crop is cut from; `None` when there is no face to describe.
    pub face_box: Option<FaceBox>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("faces_found", &self.faces_found)
            .field("issues", &self.issues)
            .finish_non_exhaustive()
    }
}

impl Capture {
    /// True when nothing is to be fixed and there is a face to describe.
    pub fn is_good(&self) -> bool {
        self.issues.is_empty() && self.face_box.is_some()
    }
}

/// Why a capture could not be examined at all (as against examined and found wanting, which
/// is a [`Capture`] with issues).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaptureError {
    /// The landmarks or the image are unusable.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The face is to be found, but this model file has no detector.
    #[error(
        "the face model file has no face detector; send the 68 landmarks or the cut-out \
         face, or import the detector into the model file (gatematch model import)"
    )]
    NoDetector,
    /// The detector refused the image (too large for it, or it failed).
    #[error("face detection failed: {reason}")]
    Detection {
        /// What went wrong, without pixels or coordinates.
        reason: String,
    },
}

/// Examines one capture: locates the face per `region` (with `finder` for [`Region::Find`]),
/// measures it and holds it against `policy`.
pub fn examine(
    image: &RgbImage,
    region: Region,
    finder: Option<&Arc<dyn FindFaces>>,
    policy: &QualityPolicy,
) -> Result<Capture, CaptureError> {
    let (width, height) = (image.width(), image.height());
    let mut capture = Capture::default();
    let (landmarks, frame) = match region {
        Region::ReadyCrop => {
            capture.face_box = Some(FaceBox::whole(width, height));
            return Ok(capture);
        }
        Region::Landmarks {
            points,
            frame_width,
            frame_height,
        } => (points, (frame_width, frame_height)),
        Region::Find => {
            let finder = finder.ok_or(CaptureError::NoDetector)?;
            let mut faces = finder.find(image)?;
            capture.faces_found = faces.len();
            if faces.is_empty() {
                capture.issues.push(CaptureIssue::NoFace);
                return Ok(capture);
            }
            if faces.len() > 1 && policy.enabled && policy.several_faces == SeveralFaces::Refuse {
                capture.issues.push(CaptureIssue::SeveralFaces);
                return Ok(capture);
            }
            let largest = (0..faces.len())
                .max_by(|&a, &b| {
                    faces[a]
                        .detection
                        .area()
                        .total_cmp(&faces[b].detection.area())
                })
                .unwrap_or(0);
            let face = faces.swap_remove(largest);
            let (points, frame) = (face.landmarks.clone(), face.landmarks_frame);
            capture.found = Some(face);
            (points, frame)
        }
    };
    let face_box = descriptor_box(&landmarks, frame.0, frame.1)?;
    // A face outside the image is a bad region, not a poor capture: refuse it as such before
    // measuring pixels that are not there.
    face_box.clipped(width, height)?;
    capture.face_box = Some(face_box);
    if policy.enabled {
        // `descriptor_box` accepted the points, so only coincident eyes make this `None`:
        // such a face cannot be judged, and is no usable capture.
        match measure(image, &landmarks) {
            Some(measures) => {
                capture.checks = policy.checks(&measures);
                capture.issues = policy.issues(&measures);
                capture.measures = Some(measures);
            }
            None => capture.issues.push(CaptureIssue::NoFace),
        }
    }
    capture.landmarks = Some(landmarks);
    Ok(capture)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Returns the faces it was made with.
    struct Fixed(Vec<FoundFace>);

    impl FindFaces for Fixed {
        fn find(&self, _: &RgbImage) -> Result<Vec<FoundFace>, CaptureError> {
            Ok(self.0.clone())
        }
    }

    /// A plausible frontal face centred at (`cx`, `cy`) with eyes `eye_gap` apart: the eye
    /// rings, the mouth, the rest of the points spread around them.
    fn face_at(cx: f64, cy: f64, eye_gap: f64) -> FoundFace {
        let mut points = vec![Point { x: cx, y: cy }; 68];
        for i in 36..42 {
            let a = (i - 36) as f64 / 6.0 * std::f64::consts::TAU;
            points[i] = Point {
                x: cx - eye_gap / 2.0 + 8.0 * a.cos(),
                y: cy - 20.0 + 3.0 * a.sin(),
            };
            points[i + 6] = Point {
                x: cx + eye_gap / 2.0 + 8.0 * a.cos(),
                y: cy - 20.0 + 3.0 * a.sin(),
            };
        }
        for (k, p) in points[48..68].iter_mut().enumerate() {
            let a = k as f64 / 20.0 * std::f64::consts::TAU;
            *p = Point {
                x: cx + 20.0 * a.cos(),
                y: cy + 40.0 + 6.0 * a.sin(),
            };
        }
        for (k, p) in points[0..17].iter_mut().enumerate() {
            let a = std::f64::consts::PI * k as f64 / 16.0;
            *p = Point {
                x: cx - 60.0 * a.cos(),
                y: cy + 60.0 * a.sin() - 10.0,
            };
        }
        FoundFace {
            detection: DetectionBox {
                x: cx - 70.0,
                y: cy - 80.0,
                width: 140.0 * eye_gap / 60.0,
                height: 160.0,
            },
            score: 0.9,
            landmarks: points,
            landmarks_frame: (140, 160),
        }
    }

    fn grey(width: u32, height: u32) -> RgbImage {
        RgbImage::from_raw(width, height, vec![128; (width * height * 3) as usize]).unwrap()
    }

    fn finder(faces: Vec<FoundFace>) -> Arc<dyn FindFaces> {
        Arc::new(Fixed(faces))
    }

    #[test]
    fn no_face_and_several_faces_are_issues_not_errors() {
        let image = grey(400, 300);
        let policy = QualityPolicy::default();
        let none = examine(&image, Region::Find, Some(&finder(vec![])), &policy).unwrap();
        assert_eq!(none.issues, [CaptureIssue::NoFace]);
        assert!(none.face_box.is_none() && !none.is_good());

        let two = vec![face_at(100.0, 150.0, 60.0), face_at(300.0, 150.0, 50.0)];
        let refused = examine(&image, Region::Find, Some(&finder(two.clone())), &policy).unwrap();
        assert_eq!(refused.faces_found, 2);
        assert_eq!(refused.issues, [CaptureIssue::SeveralFaces]);

        // By policy, the largest face is taken instead.
        let largest = QualityPolicy {
            several_faces: SeveralFaces::Largest,
            ..QualityPolicy::default()
        };
        let taken = examine(&image, Region::Find, Some(&finder(two)), &largest).unwrap();
        assert_eq!(taken.faces_found, 2);
        let used = taken.found.as_ref().unwrap();
        assert_eq!(used.detection.x, 30.0, "the wider box was the first face");
        assert!(taken.face_box.is_some());
        assert_eq!(taken.checks.len(), 10, "every measure is checked");
        // A flat grey image has no contrast and no sharpness.
        assert!(taken.issues.contains(&CaptureIssue::LowContrast));
    }

    #[test]
    fn finding_needs_a_detector_and_a_ready_crop_is_not_measured() {
        let image = grey(200, 200);
        let policy = QualityPolicy::default();
        let err = examine(&image, Region::Find, None, &policy).unwrap_err();
        assert!(matches!(err, CaptureError::NoDetector), "{err}");
        let crop = examine(&image, Region::ReadyCrop, None, &policy).unwrap();
        assert!(crop.is_good() && crop.checks.is_empty() && crop.measures.is_none());
        assert_eq!(crop.face_box, Some(FaceBox::whole(200, 200)));
    }

    #[test]
    fn checks_can_be_turned_off() {
        let image = grey(400, 300);
        let off = QualityPolicy {
            enabled: false,
            ..QualityPolicy::default()
        };
        let two = vec![face_at(100.0, 150.0, 60.0), face_at(300.0, 150.0, 60.0)];
        let capture = examine(&image, Region::Find, Some(&finder(two)), &off).unwrap();
        assert!(capture.is_good(), "{capture:?}");
        assert!(capture.checks.is_empty());
    }
}
