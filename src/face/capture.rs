//! One face capture examined before it is described: where the face is (the gate's landmarks,
//! a ready crop, or found by the appliance's own detector), whether the capture is good enough
//! to match (the [`quality`](super::quality) checks), and the box the descriptor network's
//! crop is cut from.
//!
//! This is the step between decoding and the descriptor network, for the gate protocol and for
//! `gatematch embed` alike, so that both judge a capture the same way.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::detect::{DetectError, FaceFinder, FoundFace, GpuFaceFinder};
use super::preprocess::{FaceBox, ImageError, Point, RgbImage, descriptor_box};
use super::quality::{CaptureIssue, Check, Measures, QualityPolicy, SeveralFaces, measure};

/// Finds the faces in an image and their landmarks: the detector and the landmark network.
pub trait FindFaces: Send + Sync {
    /// Every face found in `image`, most confident first.
    fn find(&self, image: &RgbImage) -> Result<Vec<FoundFace>, CaptureError>;

    /// The faces of each of `images`, in order: each image's own result (an image the
    /// detector refuses does not stop the others), or an error for the whole batch (a failed
    /// device). A finder that runs several frames through its networks at once (the GPU's)
    /// overrides this; the default finds them one at a time.
    fn find_batch(&self, images: &[&RgbImage]) -> Result<FoundBatch, CaptureError> {
        Ok(images.iter().map(|image| self.find(image)).collect())
    }
}

/// What [`FindFaces::find_batch`] returns per image.
pub type FoundBatch = Vec<Result<Vec<FoundFace>, CaptureError>>;

/// Whether `error` is the GPU's failure, the one error a failover finder acts on.
fn is_gpu_failure(error: &CaptureError) -> bool {
    matches!(error, CaptureError::Detection(DetectError::Gpu { .. }))
}

/// A [`FaceFinder`] on a thread pool of its own, so that detection neither waits for nor
/// crowds the descriptor network's threads.
pub struct PooledFinder {
    finder: FaceFinder,
    pool: rayon::ThreadPool,
}

impl std::fmt::Debug for PooledFinder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledFinder")
            .field("threads", &self.pool.current_num_threads())
            .finish_non_exhaustive()
    }
}

impl PooledFinder {
    /// `finder` on `threads` worker threads (at least 1).
    pub fn new(finder: FaceFinder, threads: usize) -> Result<Self, CaptureError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("face-detect-{i}"))
            .build()
            .map_err(|e| CaptureError::ThreadPool {
                reason: e.to_string(),
            })?;
        Ok(Self { finder, pool })
    }
}

impl FindFaces for PooledFinder {
    fn find(&self, image: &RgbImage) -> Result<Vec<FoundFace>, CaptureError> {
        let started = std::time::Instant::now();
        let faces = self.pool.install(|| self.finder.find(image))?;
        crate::metrics::face_detect(started.elapsed());
        Ok(faces)
    }
}

impl FindFaces for GpuFaceFinder {
    fn find(&self, image: &RgbImage) -> Result<Vec<FoundFace>, CaptureError> {
        let started = std::time::Instant::now();
        let faces = GpuFaceFinder::find(self, image)?;
        crate::metrics::face_detect(started.elapsed());
        Ok(faces)
    }

    /// One detector pass over all of `images` and one landmark pass over all their faces.
    fn find_batch(&self, images: &[&RgbImage]) -> Result<FoundBatch, CaptureError> {
        let found = GpuFaceFinder::find_batch(self, images)?;
        Ok(found
            .into_iter()
            .map(|faces| faces.map_err(CaptureError::from))
            .collect())
    }
}

/// A GPU finder with the CPU finder behind it: the first failure of the GPU (a lost device, a
/// failed submission, [`DetectError::Gpu`]) moves every later image to the CPU, and the image
/// that failed is searched there too, so no gate sees the GPU's failure. Other errors (an
/// image the detector refuses) are the image's, and are returned as they are.
pub struct FailoverFinder {
    primary: Box<dyn FindFaces>,
    fallback: Box<dyn FindFaces>,
    failed: AtomicBool,
}

impl std::fmt::Debug for FailoverFinder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailoverFinder")
            .field("failed_over", &self.has_failed_over())
            .finish_non_exhaustive()
    }
}

impl FailoverFinder {
    /// `primary` first, `fallback` after its first GPU failure.
    pub fn new(primary: Box<dyn FindFaces>, fallback: Box<dyn FindFaces>) -> Self {
        Self {
            primary,
            fallback,
            failed: AtomicBool::new(false),
        }
    }

    /// Whether the primary has failed and the fallback finds every face now.
    pub fn has_failed_over(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
}

impl FailoverFinder {
    /// Records the primary's failure `error`, logging and counting the first.
    fn fail_over(&self, error: &CaptureError) {
        if !self.failed.swap(true, Ordering::Relaxed) {
            tracing::error!(
                error = %error,
                "face detector failed on the GPU; moving it to the CPU for good"
            );
            crate::metrics::backend_failover("gpu", "cpu", "face detector");
        }
    }
}

impl FindFaces for FailoverFinder {
    fn find(&self, image: &RgbImage) -> Result<Vec<FoundFace>, CaptureError> {
        if !self.has_failed_over() {
            match self.primary.find(image) {
                Err(error) if is_gpu_failure(&error) => self.fail_over(&error),
                other => return other,
            }
        }
        self.fallback.find(image)
    }

    /// The whole batch goes to the fallback when the primary failed on any of its images:
    /// after a device failure none of the batch's answers is trusted.
    fn find_batch(&self, images: &[&RgbImage]) -> Result<FoundBatch, CaptureError> {
        if !self.has_failed_over() {
            match self.primary.find_batch(images) {
                Err(error) if is_gpu_failure(&error) => self.fail_over(&error),
                Err(other) => return Err(other),
                Ok(found) => {
                    let mut errors = found.iter().filter_map(|r| r.as_ref().err());
                    let Some(error) = errors.find(|e| is_gpu_failure(e)) else {
                        return Ok(found);
                    };
                    self.fail_over(error);
                }
            }
        }
        self.fallback.find_batch(images)
    }
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
#[derive(Clone, Default, PartialEq)]
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
    /// The detector refused the image (too large or too elongated for it).
    #[error("face detection: {0}")]
    Detection(#[from] DetectError),
    /// The operating system refused the detector's threads.
    #[error("cannot start the face detector's threads: {reason}")]
    ThreadPool {
        /// The pool's error.
        reason: String,
    },
    /// The frame could not be queued for the detector (its queue is full, or it stopped).
    #[error("face detection queue: {0}")]
    Queue(#[from] crate::engine::batcher::BatchError),
}

/// Examines one capture: locates the face per `region` (with `finder` for [`Region::Find`]),
/// measures it and holds it against `policy`.
pub fn examine(
    image: &RgbImage,
    region: Region,
    finder: Option<&Arc<dyn FindFaces>>,
    policy: &QualityPolicy,
) -> Result<Capture, CaptureError> {
    let mut capture = Capture::default();
    let (landmarks, frame) = match region {
        Region::ReadyCrop => {
            capture.face_box = Some(FaceBox::whole(image.width(), image.height()));
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
                    let area = |i: usize| faces[i].detection.width * faces[i].detection.height;
                    area(a).total_cmp(&area(b))
                })
                .unwrap_or(0);
            let found = faces.len();
            return examine_found(image, faces.swap_remove(largest), found, policy);
        }
    };
    judge(image, landmarks, frame, policy, capture)
}

/// Examines one face the detector found among `faces_found`, on its own (`gatematch embed`
/// reports every face of an image this way).
pub fn examine_found(
    image: &RgbImage,
    face: FoundFace,
    faces_found: usize,
    policy: &QualityPolicy,
) -> Result<Capture, CaptureError> {
    // The landmark network's crop is the frame the reference limits the box by.
    let crop = face.landmarks.crop();
    let frame = (crop.width as u32, crop.height as u32);
    let landmarks = face.landmarks.points().to_vec();
    let capture = Capture {
        faces_found,
        found: Some(face),
        ..Capture::default()
    };
    judge(image, landmarks, frame, policy, capture)
}

/// The descriptor box of the face with `landmarks` (found in a `frame`-sized region) and its
/// quality checks, into `capture`.
fn judge(
    image: &RgbImage,
    landmarks: Vec<Point>,
    frame: (u32, u32),
    policy: &QualityPolicy,
    mut capture: Capture,
) -> Result<Capture, CaptureError> {
    let face_box = descriptor_box(&landmarks, frame.0, frame.1)?;
    // A face outside the image is a bad region, not a poor capture: refuse it as such before
    // measuring pixels that are not there.
    face_box.clipped(image.width(), image.height())?;
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
        use crate::face::detect::{Detection, FaceLandmarks};
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
        let detection = Detection {
            x: cx - 70.0,
            y: cy - 80.0,
            width: 140.0 * eye_gap / 60.0,
            height: 160.0,
            score: 0.9,
        };
        let crop = FaceBox {
            x: detection.x as i64,
            y: detection.y as i64,
            width: detection.width as i64,
            height: detection.height as i64,
        };
        FoundFace {
            detection,
            landmarks: FaceLandmarks::new(points, crop),
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

    /// Fails on the GPU from its second call on.
    struct FlakyGpu(std::sync::atomic::AtomicUsize);

    impl FindFaces for FlakyGpu {
        fn find(&self, _: &RgbImage) -> Result<Vec<FoundFace>, CaptureError> {
            if self.0.fetch_add(1, Ordering::Relaxed) == 0 {
                return Ok(vec![face_at(100.0, 150.0, 60.0)]);
            }
            let source = crate::engine::gpu::GpuError::DeviceLost {
                reason: "test".into(),
            };
            Err(DetectError::Gpu { source }.into())
        }
    }

    /// Refuses every image as too large, as the detector does.
    struct Refusing;

    impl FindFaces for Refusing {
        fn find(&self, image: &RgbImage) -> Result<Vec<FoundFace>, CaptureError> {
            Err(DetectError::ImageTooLarge {
                width: image.width(),
                height: image.height(),
                limit_pixels: 1,
            }
            .into())
        }
    }

    #[test]
    fn the_failed_image_and_every_later_one_go_to_the_cpu() {
        let image = grey(400, 300);
        let cpu = vec![face_at(300.0, 150.0, 50.0), face_at(100.0, 150.0, 60.0)];
        let finder = FailoverFinder::new(
            Box::new(FlakyGpu(Default::default())),
            Box::new(Fixed(cpu.clone())),
        );
        assert_eq!(finder.find(&image).unwrap().len(), 1, "the GPU's answer");
        assert!(!finder.has_failed_over());
        assert_eq!(
            finder.find(&image).unwrap(),
            cpu,
            "the failed call, on the CPU"
        );
        assert!(finder.has_failed_over());
        assert_eq!(finder.find(&image).unwrap(), cpu);
    }

    #[test]
    fn a_batch_with_a_failed_image_goes_to_the_cpu_whole() {
        let image = grey(400, 300);
        let cpu = vec![face_at(300.0, 150.0, 50.0)];
        let finder = FailoverFinder::new(
            Box::new(FlakyGpu(Default::default())),
            Box::new(Fixed(cpu.clone())),
        );
        // The default find_batch asks the GPU image by image: the first answers, the second
        // fails, and the CPU answers both.
        let found = finder.find_batch(&[&image, &image]).unwrap();
        assert!(finder.has_failed_over());
        let found: Vec<_> = found.into_iter().map(Result::unwrap).collect();
        assert_eq!(found, [cpu.clone(), cpu]);
    }

    #[test]
    fn an_image_the_detector_refuses_is_no_reason_to_fail_over() {
        let finder = FailoverFinder::new(Box::new(Refusing), Box::new(Fixed(vec![])));
        let err = finder.find(&grey(10, 10)).unwrap_err();
        assert!(
            matches!(
                err,
                CaptureError::Detection(DetectError::ImageTooLarge { .. })
            ),
            "{err}"
        );
        assert!(!finder.has_failed_over());
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
