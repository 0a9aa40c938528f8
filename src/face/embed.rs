//! The face pipeline driven from files, as `gatematch embed` runs it: read and decode each
//! image within [`DecodeLimits`], find its face region, compute the descriptors in batches of
//! up to [`MAX_FACES_PER_PASS`] and hand back one [`Embedding`] per face, in order.
//!
//! A face region is a box in image pixels (step 1 of MODEL.md's preprocessing, done by the
//! caller), 68 landmarks from which that box is computed, the whole image as the crop (a
//! ready 150×150 crop passes through unchanged), or [`FaceRegion::Find`]: the detector finds
//! every face, the landmark network places its landmarks, and each face is measured against
//! the capture-quality policy ([`crate::face::capture`]).
//!
//! A landmarks file is JSON, either a bare array of 68 points or an object with a `landmarks`
//! array and an optional `frame` (alias `landmarks_frame`) `{"width": W, "height": H}`; a
//! point is `[x, y]` or `{"x": x, "y": y}`. Other fields are ignored, so a face object of the
//! reference fixture (`tests/fixtures/face/reference.json`) is a landmarks file as it stands.
//! The frame is the region the landmarks were detected in; the reference limits the box by its
//! size (see [`descriptor_box`]). Without one, the image's size is used.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::capture::{Capture, FindFaces, examine_found};
use super::model::file::load_model;
use super::network::{CpuNetwork, Descriptor, EmbedError, GpuNetwork, MAX_FACES_PER_PASS, Network};
use super::preprocess::{
    DecodeLimits, FaceBatch, FaceBox, ImageError, Point, RgbImage, decode_image, descriptor_box,
};
use super::quality::QualityPolicy;

/// Largest landmarks file accepted, in bytes (68 points take about 3 KB).
const MAX_LANDMARKS_BYTES: u64 = 1 << 20;

/// Where the descriptors are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// [`CpuNetwork`].
    Cpu,
    /// [`GpuNetwork`], on the first adapter wgpu offers (a software one included).
    Gpu,
}

impl Backend {
    /// The backend's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Gpu => "gpu",
        }
    }

    /// The backend `network` runs on.
    pub fn of(network: &Network) -> Self {
        match network {
            Network::Cpu(_) => Self::Cpu,
            Network::Gpu(_) => Self::Gpu,
        }
    }
}

impl FromStr for Backend {
    type Err = EmbedError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "cpu" => Ok(Self::Cpu),
            "gpu" => Ok(Self::Gpu),
            other => Err(EmbedError::UnknownBackend {
                backend: other.to_owned(),
            }),
        }
    }
}

/// 68 landmarks of one face in image pixels, and the size of the frame they were detected in
/// when known.
///
/// `Debug` shows no coordinates: landmarks are biometric data.
#[derive(Clone, PartialEq)]
pub struct Landmarks {
    points: Vec<Point>,
    frame: Option<(u32, u32)>,
}

impl fmt::Debug for Landmarks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Landmarks({} points, redacted)", self.points.len())
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PointJson {
    Pair([f64; 2]),
    Named { x: f64, y: f64 },
}

#[derive(Deserialize)]
struct FrameJson {
    width: u32,
    height: u32,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum LandmarksJson {
    Bare(Vec<PointJson>),
    Object {
        landmarks: Vec<PointJson>,
        #[serde(default, alias = "landmarks_frame")]
        frame: Option<FrameJson>,
    },
}

impl Landmarks {
    /// Wraps `points` (checked when the box is computed) and the detection frame's
    /// `(width, height)`, if known.
    pub fn new(points: Vec<Point>, frame: Option<(u32, u32)>) -> Self {
        Self { points, frame }
    }

    /// Parses a landmarks file's JSON (see the module docs). The error says where parsing
    /// stopped, never what values it found.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let parsed: LandmarksJson = serde_json::from_slice(bytes).map_err(|e| {
            format!(
                "not a landmarks file ({:?} error at line {}, column {}): expected 68 [x, y] \
                 points, bare or as {{\"landmarks\": [...], \"frame\": {{...}}}}",
                e.classify(),
                e.line(),
                e.column()
            )
        })?;
        let (points, frame) = match parsed {
            LandmarksJson::Bare(points) => (points, None),
            LandmarksJson::Object { landmarks, frame } => (landmarks, frame),
        };
        let points = points
            .into_iter()
            .map(|p| match p {
                PointJson::Pair([x, y]) | PointJson::Named { x, y } => Point { x, y },
            })
            .collect();
        Ok(Self::new(points, frame.map(|f| (f.width, f.height))))
    }

    /// Reads and parses the landmarks file at `path`.
    pub fn read(path: &Path) -> Result<Self, EmbedError> {
        let bytes = read_bounded(path, MAX_LANDMARKS_BYTES)?;
        Self::from_json(&bytes).map_err(|reason| EmbedError::Landmarks {
            path: path.to_owned(),
            reason,
        })
    }

    /// The descriptor box in a `width` × `height` image, not yet clipped.
    pub fn face_box(&self, width: u32, height: u32) -> Result<FaceBox, ImageError> {
        let (frame_width, frame_height) = self.frame.unwrap_or((width, height));
        descriptor_box(&self.points, frame_width, frame_height)
    }
}

/// Where the face is in an image.
#[derive(Clone, Debug, PartialEq)]
pub enum FaceRegion {
    /// Find every face with the detector.
    Find,
    /// The whole image is the crop.
    Whole,
    /// A box in image pixels, clipped at the image's borders.
    Box(FaceBox),
    /// The box computed from 68 landmarks.
    Landmarks(Landmarks),
}

impl FaceRegion {
    /// The clipped box this region gives in `image`.
    pub fn face_box(&self, image: &RgbImage) -> Result<FaceBox, ImageError> {
        let (width, height) = (image.width(), image.height());
        let unclipped = match self {
            Self::Whole | Self::Find => FaceBox::whole(width, height),
            Self::Box(face) => *face,
            Self::Landmarks(landmarks) => landmarks.face_box(width, height)?,
        };
        unclipped.clipped(width, height)
    }
}

/// The descriptor of the face in one image.
#[derive(Clone, Debug, PartialEq)]
pub struct Embedding {
    /// The image, as it was named.
    pub image: PathBuf,
    /// The clipped box the crop was cut from, in image pixels.
    pub face_box: FaceBox,
    /// Where the descriptor was computed.
    pub backend: Backend,
    /// The network's output.
    pub descriptor: Descriptor,
    /// For a face the detector found: its detection, landmarks and quality.
    pub capture: Option<Capture>,
}

#[derive(Serialize)]
struct BoxJson {
    x: i64,
    y: i64,
    width: i64,
    height: i64,
}

#[derive(Serialize)]
struct EmbeddingJson<'a> {
    image: String,
    #[serde(rename = "box")]
    face_box: BoxJson,
    backend: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detection: Option<DetectionJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    landmarks: Option<Vec<[f64; 2]>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    quality: Option<QualityJson>,
    descriptor: &'a [f32],
}

#[derive(Serialize)]
struct DetectionJson {
    x: f64,
    y: f64,
    width: f64,
    height: f64,
    score: f32,
    /// Faces the detector found in the image.
    faces_in_image: usize,
}

#[derive(Serialize)]
struct QualityJson {
    /// Each measure by name, with its value, threshold and whether it passed.
    checks: Vec<CheckJson>,
    /// The failed checks' issues; empty for a good capture.
    issues: Vec<&'static str>,
}

#[derive(Serialize)]
struct CheckJson {
    issue: &'static str,
    value: f64,
    threshold: f64,
    passed: bool,
}

impl Embedding {
    /// One line of `gatematch embed`'s output: a JSON object with `image`, `box` (`x`, `y`,
    /// `width`, `height`), `backend` and the 128 `descriptor` values (shortest round-trip
    /// decimals), no newline. For a face the detector found, also `detection` (its box, score
    /// and the number of faces in the image), the 68 `landmarks` as `[x, y]` pairs and
    /// `quality` (every check with its value and threshold, and the `issues`).
    pub fn to_json_line(&self) -> String {
        let FaceBox {
            x,
            y,
            width,
            height,
        } = self.face_box;
        let json = EmbeddingJson {
            image: self.image.display().to_string(),
            face_box: BoxJson {
                x,
                y,
                width,
                height,
            },
            backend: self.backend.name(),
            detection: self.capture.as_ref().and_then(|c| {
                c.found.as_ref().map(|f| DetectionJson {
                    x: f.detection.x,
                    y: f.detection.y,
                    width: f.detection.width,
                    height: f.detection.height,
                    score: f.detection.score,
                    faces_in_image: c.faces_found,
                })
            }),
            landmarks: self
                .capture
                .as_ref()
                .and_then(|c| c.landmarks.as_ref())
                .map(|points| points.iter().map(|p| [p.x, p.y]).collect()),
            quality: self.capture.as_ref().map(|c| QualityJson {
                checks: c
                    .checks
                    .iter()
                    .map(|check| CheckJson {
                        issue: check.issue.label(),
                        value: check.value,
                        threshold: check.threshold,
                        passed: check.passed,
                    })
                    .collect(),
                issues: c.issues.iter().map(|i| i.label()).collect(),
            }),
            descriptor: self.descriptor.as_slice(),
        };
        // Serialising plain numbers and strings cannot fail.
        serde_json::to_string(&json).unwrap_or_else(|e| unreachable!("embedding to JSON: {e}"))
    }
}

/// The worker count for `threads`, where 0 means one per core.
pub fn resolve_threads(threads: usize) -> usize {
    if threads > 0 {
        return threads;
    }
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Loads the model file at `model_path` and prepares it on `backend`: on `threads` workers
/// (0: one per core) for the CPU; for the GPU on the adapter wgpu prefers, a software one
/// (lavapipe) included, as the engine's `backend = "gpu"` does.
pub fn open_network(
    model_path: &Path,
    backend: Backend,
    threads: usize,
) -> Result<Network, EmbedError> {
    let model = load_model(model_path)?;
    match backend {
        Backend::Cpu => Ok(Network::Cpu(CpuNetwork::new(
            &model,
            resolve_threads(threads),
        )?)),
        Backend::Gpu => {
            let gpu = GpuNetwork::open(&model, true)?;
            let info = gpu.context().adapter_info();
            tracing::info!(
                adapter = %info.name,
                device_type = ?info.device_type,
                faces_per_pass = gpu.faces_per_pass(),
                "face descriptor network on the GPU"
            );
            Ok(Network::Gpu(gpu))
        }
    }
}

/// How `gatematch embed` finds faces: the detector and the quality policy their captures are
/// measured against.
pub struct Finding<'a> {
    /// The detector and landmark network.
    pub finder: &'a dyn FindFaces,
    /// The thresholds each face's measures are reported against.
    pub policy: &'a QualityPolicy,
}

/// Computes the descriptor of each face of `images` and passes the results to `emit` in
/// order.
///
/// `regions` is empty (every face is found with `finding`, or with none every image is a
/// crop), holds one region for all images, or one per image. Stops at the first image that
/// cannot be read, decoded or cut, naming it; what was emitted before stays emitted; an error
/// from `emit` stops it too. An image in which the detector finds no face is reported to
/// `no_face` and skipped. Returns the number of faces described.
pub fn embed_files<E, N>(
    network: &Network,
    images: &[PathBuf],
    regions: &[FaceRegion],
    finding: Option<&Finding<'_>>,
    limits: &DecodeLimits,
    mut emit: E,
    mut no_face: N,
) -> Result<usize, EmbedError>
where
    E: FnMut(Embedding) -> std::io::Result<()>,
    N: FnMut(&Path),
{
    let default = if finding.is_some() {
        FaceRegion::Find
    } else {
        FaceRegion::Whole
    };
    let region_of = |i: usize| match regions.len() {
        0 => Ok(&default),
        1 => Ok(&regions[0]),
        n if n == images.len() => Ok(&regions[i]),
        n => Err(EmbedError::RegionCount {
            images: images.len(),
            regions: n,
        }),
    };
    // Faces cut but not yet described: the image, its clipped box and what was found.
    let mut pending: Vec<(PathBuf, FaceBox, Option<Capture>)> =
        Vec::with_capacity(MAX_FACES_PER_PASS);
    let mut batch = FaceBatch::with_capacity(MAX_FACES_PER_PASS.min(images.len()));
    let mut described = 0;
    let mut flush = |batch: &mut FaceBatch,
                     pending: &mut Vec<(PathBuf, FaceBox, Option<Capture>)>|
     -> Result<(), EmbedError> {
        if batch.is_empty() {
            return Ok(());
        }
        let descriptors = network.describe(batch)?;
        for ((image, face_box, capture), descriptor) in pending.drain(..).zip(descriptors) {
            emit(Embedding {
                image,
                face_box,
                backend: Backend::of(network),
                descriptor,
                capture,
            })
            .map_err(|source| EmbedError::Write { source })?;
            described += 1;
        }
        batch.clear();
        Ok(())
    };
    for (i, path) in images.iter().enumerate() {
        let region = region_of(i)?;
        let cut = |source| EmbedError::Image {
            path: path.clone(),
            source,
        };
        let image = read_image(path, limits)?;
        let faces: Vec<(FaceBox, Option<Capture>)> = match (region, finding) {
            (FaceRegion::Find, Some(finding)) => {
                let found = finding
                    .finder
                    .find(&image)
                    .map_err(|e| EmbedError::Capture {
                        path: path.clone(),
                        source: Box::new(e),
                    })?;
                if found.is_empty() {
                    no_face(path);
                }
                let count = found.len();
                let mut faces = Vec::with_capacity(count);
                for face in found {
                    let capture =
                        examine_found(&image, face, count, finding.policy).map_err(|e| {
                            EmbedError::Capture {
                                path: path.clone(),
                                source: Box::new(e),
                            }
                        })?;
                    let face_box = capture
                        .face_box
                        .ok_or_else(|| cut(ImageError::Empty))?
                        .clipped(image.width(), image.height())
                        .map_err(cut)?;
                    faces.push((face_box, Some(capture)));
                }
                faces
            }
            _ => vec![(region.face_box(&image).map_err(cut)?, None)],
        };
        for (face_box, capture) in faces {
            batch.push_face(&image, face_box).map_err(cut)?;
            pending.push((path.clone(), face_box, capture));
            if batch.len() == MAX_FACES_PER_PASS {
                flush(&mut batch, &mut pending)?;
            }
        }
    }
    flush(&mut batch, &mut pending)?;
    Ok(described)
}

/// Reads and decodes the image at `path`, refusing a file over the size limit before reading
/// it.
pub fn read_image(path: &Path, limits: &DecodeLimits) -> Result<RgbImage, EmbedError> {
    let limit_bytes = u64::try_from(limits.max_file_bytes).unwrap_or(u64::MAX);
    let bytes = read_bounded(path, limit_bytes.saturating_add(1))?;
    decode_image(&bytes, limits).map_err(|source| EmbedError::Image {
        path: path.to_owned(),
        source,
    })
}

/// Reads at most `limit_bytes` of the file at `path`; a longer file comes back cut, which the
/// callers refuse as too large (the image decoder) or malformed (JSON).
fn read_bounded(path: &Path, limit_bytes: u64) -> Result<Vec<u8>, EmbedError> {
    use std::io::Read;

    let read = |source| EmbedError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut bytes = Vec::new();
    file.take(limit_bytes)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn landmarks_parse_in_every_accepted_form() {
        let pairs: Vec<[f64; 2]> = (0..68).map(|i| [f64::from(i), 2.0]).collect();
        let bare = serde_json::to_string(&pairs).unwrap();
        let object =
            format!(r#"{{"landmarks": {bare}, "landmarks_frame": {{"width": 7, "height": 9}}}}"#);
        let named: Vec<String> = (0..68)
            .map(|i| format!(r#"{{"x": {i}, "y": 2}}"#))
            .collect();
        let named = format!(r#"{{"landmarks": [{}], "extra": true}}"#, named.join(","));

        let from_bare = Landmarks::from_json(bare.as_bytes()).unwrap();
        let from_object = Landmarks::from_json(object.as_bytes()).unwrap();
        let from_named = Landmarks::from_json(named.as_bytes()).unwrap();
        assert_eq!(from_bare.points, from_named.points);
        assert_eq!(from_bare.points, from_object.points);
        assert_eq!(from_bare.frame, None);
        assert_eq!(from_object.frame, Some((7, 9)));
    }

    #[test]
    fn landmark_errors_do_not_echo_values() {
        let err = Landmarks::from_json(br#"[[123.456, "secret"]]"#).unwrap_err();
        assert!(!err.contains("123.456") && !err.contains("secret"), "{err}");
        let debug = format!("{:?}", Landmarks::new(vec![Point { x: 5.5, y: 6.5 }], None));
        assert!(!debug.contains("5.5"), "{debug}");
    }

    #[test]
    fn backends_parse() {
        assert_eq!("cpu".parse::<Backend>().unwrap(), Backend::Cpu);
        assert_eq!("gpu".parse::<Backend>().unwrap(), Backend::Gpu);
        let err = "tpu".parse::<Backend>().unwrap_err();
        assert!(matches!(err, EmbedError::UnknownBackend { .. }));
        assert!(err.to_string().contains("cpu or gpu"), "{err}");
    }

    #[test]
    fn boxes_parse_from_text() {
        let b: FaceBox = "10,-2,30,40".parse().unwrap();
        assert_eq!((b.x, b.y, b.width, b.height), (10, -2, 30, 40));
        for bad in ["1,2,3", "1,2,3,4,5", "a,b,c,d", "1,2,0,4", "1,2,3,-4", ""] {
            assert!(bad.parse::<FaceBox>().is_err(), "{bad}");
        }
    }
}
