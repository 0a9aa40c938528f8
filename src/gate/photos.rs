//! The face phase of `gatematch demo`: one gate sends real photos, as an e-gate would, and
//! prints what the appliance answered.
//!
//! The photos are the face fixtures the tests use (`tests/fixtures/face/`): two people, one of
//! them in a second photo and in a JPEG 2000 "chip photo" cut from the first. They go as the
//! camera took them: the appliance finds the face itself. One capture then has a mask drawn
//! over the face (with the landmarks the reference recorded beside the photos,
//! `reference.json`), to show the refusal a gate turns into "take off your mask".

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Deserialize;

use super::{GateClient, GateError};
use crate::proto::{self, request::Operation, response::Result as Answer};

/// Why the face phase could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PhotoError {
    /// A photo or the landmark record could not be read.
    #[error("{path}: {reason}")]
    Fixture {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The appliance could not be reached.
    #[error(transparent)]
    Gate(#[from] GateError),
}

#[derive(Deserialize)]
struct Record {
    images: Vec<RecordImage>,
}

#[derive(Deserialize)]
struct RecordImage {
    image: String,
    faces: Vec<RecordFace>,
}

#[derive(Deserialize)]
struct RecordFace {
    landmarks: Vec<[f64; 2]>,
    landmarks_frame: Frame,
}

#[derive(Deserialize)]
struct Frame {
    width: u32,
    height: u32,
}

#[derive(Deserialize)]
struct ChipRecord {
    chip_origin: [f64; 2],
}

/// The photos of `dir` with their landmarks.
struct Photos {
    dir: PathBuf,
    record: Record,
    chip_origin: [f64; 2],
}

impl Photos {
    fn open(dir: &Path) -> Result<Photos, PhotoError> {
        let read_json = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    serde_json::from_slice::<serde_json::Value>(&bytes).map_err(|e| e.to_string())
                })
                .map_err(|reason| PhotoError::Fixture { path, reason })
        };
        let fixture = |path: &str, e: serde_json::Error| PhotoError::Fixture {
            path: dir.join(path),
            reason: e.to_string(),
        };
        let record = serde_json::from_value(read_json("reference.json")?)
            .map_err(|e| fixture("reference.json", e))?;
        let chip: ChipRecord = serde_json::from_value(read_json("jpeg2000.json")?)
            .map_err(|e| fixture("jpeg2000.json", e))?;
        Ok(Photos {
            dir: dir.to_owned(),
            record,
            chip_origin: chip.chip_origin,
        })
    }

    fn bytes(&self, name: &str) -> Result<Vec<u8>, PhotoError> {
        let path = self.dir.join(name);
        std::fs::read(&path).map_err(|e| PhotoError::Fixture {
            path,
            reason: e.to_string(),
        })
    }

    /// Photo `name` with the landmarks of the face recorded for `landmarks_of`, moved by
    /// `origin` (a cut-out of that photo).
    fn face(
        &self,
        name: &str,
        landmarks_of: &str,
        origin: [f64; 2],
    ) -> Result<proto::FaceImage, PhotoError> {
        let face = self
            .record
            .images
            .iter()
            .find(|i| i.image == landmarks_of)
            .and_then(|i| i.faces.first())
            .ok_or_else(|| PhotoError::Fixture {
                path: self.dir.join("reference.json"),
                reason: format!("no face recorded for {landmarks_of}"),
            })?;
        let whole = origin == [0.0, 0.0];
        Ok(proto::FaceImage {
            image: self.bytes(name)?,
            landmarks: face
                .landmarks
                .iter()
                .flat_map(|&[x, y]| [x - origin[0], y - origin[1]])
                .collect(),
            ready_crop: false,
            // The reference limits the box by the frame the landmarks were found in; that
            // holds in the whole photo only.
            landmarks_frame_width: if whole { face.landmarks_frame.width } else { 0 },
            landmarks_frame_height: if whole {
                face.landmarks_frame.height
            } else {
                0
            },
        })
    }
}

fn request(operation: Operation) -> proto::Request {
    proto::Request {
        request_id: 0,
        deadline_ms: 10_000,
        operation: Some(operation),
    }
}

/// Photo `name` as the camera took it: no landmarks, no crop.
fn frame(photos: &Photos, name: &str) -> Result<proto::FaceImage, PhotoError> {
    Ok(proto::FaceImage {
        image: photos.bytes(name)?,
        ..Default::default()
    })
}

/// `face` (a photo with its landmarks) with a mask drawn over mouth and chin, re-encoded as
/// JPEG and sent as a camera frame.
fn masked(face: proto::FaceImage) -> Result<proto::FaceImage, PhotoError> {
    use rand::SeedableRng;

    use crate::face::preprocess::{DecodeLimits, Point, decode_image};
    use crate::face::quality::occluder::{self, Occluder};

    let broken = |reason: String| PhotoError::Fixture {
        path: PathBuf::from("obama2.jpg"),
        reason,
    };
    let image =
        decode_image(&face.image, &DecodeLimits::default()).map_err(|e| broken(e.to_string()))?;
    let points: Vec<Point> = face
        .landmarks
        .chunks_exact(2)
        .map(|p| Point { x: p[0], y: p[1] })
        .collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let covered = occluder::draw(&image, &points, Occluder::Mask, &mut rng)
        .ok_or_else(|| broken("no face to cover".into()))?;
    let buffer = image::RgbImage::from_raw(
        covered.width(),
        covered.height(),
        covered.as_bytes().to_vec(),
    )
    .ok_or_else(|| broken("covered image has the wrong size".into()))?;
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
        .encode_image(&buffer)
        .map_err(|e| broken(e.to_string()))?;
    Ok(proto::FaceImage {
        image: jpeg,
        ..Default::default()
    })
}

/// What the traveller is told for each issue of a refused capture.
fn advice(response: &proto::Response) -> String {
    let issues: Vec<&str> = response
        .captures
        .iter()
        .flat_map(|c| c.issues())
        .map(|issue| issue.as_str_name())
        .collect();
    if issues.is_empty() {
        String::new()
    } else {
        format!(" [{}]", issues.join(", "))
    }
}

/// What the appliance said, in a line.
fn describe(response: &proto::Response) -> String {
    let measure = |m: i32, threshold: f32| match proto::Measure::try_from(m) {
        Ok(proto::Measure::Euclidean) => format!("Euclidean distance, match below {threshold}"),
        Ok(proto::Measure::Cosine) => format!("cosine, match from {threshold}"),
        _ => "unknown measure".to_owned(),
    };
    match &response.result {
        Some(Answer::Enrol(e)) => format!(
            "enrolled ({} template(s), model {})",
            e.templates, e.face_model_id
        ),
        Some(Answer::Verify(v)) => format!(
            "{} at {:.3} ({})",
            if v.decision() == proto::Decision::Match {
                "MATCH"
            } else {
                "NO MATCH"
            },
            v.score,
            measure(v.measure, v.threshold)
        ),
        Some(Answer::Identify(i)) => {
            let found: Vec<String> = i
                .candidates
                .iter()
                .map(|c| format!("{} at {:.3}", c.person_id, c.score))
                .collect();
            format!("{} ({})", found.join(", "), measure(i.measure, i.threshold))
        }
        _ => format!(
            "refused: {:?}, {}{}",
            response.reason(),
            response.detail,
            advice(response)
        ),
    }
}

/// Enrols two travellers from their photos, verifies a second photo against each claim,
/// identifies a JPEG 2000 chip photo, and has a masked capture refused; prints each answer
/// with its latency. With `landmarks`, the gate sends the recorded landmarks with each photo
/// (for an appliance whose model file has no detector); without, whole frames.
pub async fn run(gate: &GateClient, dir: &Path, landmarks: bool) -> Result<(), PhotoError> {
    let photos = Photos::open(dir)?;
    let none = [0.0, 0.0];
    let photo = |name: &str| {
        if landmarks {
            photos.face(name, name, none)
        } else {
            frame(&photos, name)
        }
    };
    let chip = if landmarks {
        photos.face("obama2_chip.jp2", "obama2.jpg", photos.chip_origin)?
    } else {
        frame(&photos, "obama2_chip.jp2")?
    };
    let steps = [
        (
            "enrol D<<OBAMA from obama2.jpg (JPEG)",
            Operation::Enrol(proto::EnrolRequest {
                person_id: "D<<OBAMA".into(),
                faces: vec![photo("obama2.jpg")?],
                ..Default::default()
            }),
        ),
        (
            "enrol D<<BIDEN from biden.jpg (JPEG)",
            Operation::Enrol(proto::EnrolRequest {
                person_id: "D<<BIDEN".into(),
                faces: vec![photo("biden.jpg")?],
                ..Default::default()
            }),
        ),
        (
            "verify obama_partial_face.jpg claiming D<<OBAMA",
            Operation::Verify(proto::VerifyRequest {
                person_id: "D<<OBAMA".into(),
                face: Some(photo("obama_partial_face.jpg")?),
                ..Default::default()
            }),
        ),
        (
            "verify obama_partial_face.jpg claiming D<<BIDEN",
            Operation::Verify(proto::VerifyRequest {
                person_id: "D<<BIDEN".into(),
                face: Some(photo("obama_partial_face.jpg")?),
                ..Default::default()
            }),
        ),
        (
            "identify obama2_chip.jp2 (JPEG 2000 chip photo, 20 KB)",
            Operation::Identify(proto::IdentifyRequest {
                face: Some(chip),
                k: 2,
                ..Default::default()
            }),
        ),
        (
            "verify obama2.jpg with a mask drawn on, claiming D<<OBAMA",
            Operation::Verify(proto::VerifyRequest {
                person_id: "D<<OBAMA".into(),
                face: Some(masked(photos.face("obama2.jpg", "obama2.jpg", none)?)?),
                ..Default::default()
            }),
        ),
    ];
    for (what, operation) in steps {
        let started = Instant::now();
        let response = gate.call(&request(operation)).await?;
        println!(
            "  {what}: {} [{:.0} ms]",
            describe(&response),
            started.elapsed().as_secs_f64() * 1e3
        );
    }
    Ok(())
}
