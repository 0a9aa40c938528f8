//! Face images through the whole appliance: gates send photos (JPEG, JPEG 2000, with landmarks
//! or as a ready crop) over QUIC; the appliance computes the descriptors with the real network,
//! enrols them durably as templates of the face model, and decides as the reference does.

mod common;
mod face_support;

use common::{Site, refusal, request, verify_result};
use gatematch::config::{BackendChoice, FACE_MODEL_ID, FaceConfig};
use gatematch::gallery::snapshot;
use gatematch::proto::{self, Reason, request::Operation, response::Result as Answer};
use serde::Deserialize;

/// The same-person threshold of the face model.
const THRESHOLD: f32 = 0.6;

fn image(name: &str) -> Vec<u8> {
    std::fs::read(face_support::fixture_dir().join(name)).expect("fixture image")
}

/// The reference's face `index` of the fixture: the photo with its landmarks and their frame.
fn landmarked(index: usize) -> proto::FaceImage {
    landmarked_in(
        index,
        image(&face_support::fixture().images[index].image),
        (0.0, 0.0),
    )
}

/// Face `index`'s landmarks moved into a cut-out of its photo that starts at `origin`. The
/// reference's landmark frame only holds in the whole photo (it limits the box by the frame's
/// size plus the box's position), so a cut-out is sent without it.
fn landmarked_in(index: usize, bytes: Vec<u8>, origin: (f64, f64)) -> proto::FaceImage {
    let face = &face_support::fixture().images[index].faces[0];
    let whole = origin == (0.0, 0.0);
    proto::FaceImage {
        image: bytes,
        landmarks: face
            .landmarks
            .iter()
            .flat_map(|&[x, y]| [x - origin.0, y - origin.1])
            .collect(),
        ready_crop: false,
        landmarks_frame_width: if whole { face.landmarks_frame.width } else { 0 },
        landmarks_frame_height: if whole {
            face.landmarks_frame.height
        } else {
            0
        },
    }
}

fn reference_descriptor(index: usize) -> &'static [f32] {
    &face_support::fixture().images[index].faces[0].descriptor
}

fn distance(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f32>()
        .sqrt()
}

fn enrol_faces(person: &str, faces: Vec<proto::FaceImage>) -> proto::Request {
    request(Operation::Enrol(proto::EnrolRequest {
        person_id: person.into(),
        faces,
        ..Default::default()
    }))
}

fn verify_face(person: &str, face: proto::FaceImage) -> proto::Request {
    request(Operation::Verify(proto::VerifyRequest {
        person_id: person.into(),
        face: Some(face),
        ..Default::default()
    }))
}

fn identify_face(face: proto::FaceImage, k: u32) -> proto::Request {
    request(Operation::Identify(proto::IdentifyRequest {
        face: Some(face),
        k,
        ..Default::default()
    }))
}

#[derive(Deserialize)]
struct Jpeg2000Fixture {
    chip_origin: [f64; 2],
}

/// Indices of the fixture's photos.
const OBAMA: usize = 0;
const OBAMA_PARTIAL: usize = 1;
const BIDEN: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn face_photos_enrol_verify_and_identify_as_the_reference_decides() {
    assert_eq!(face_support::fixture().images[OBAMA].image, "obama2.jpg");
    assert_eq!(
        face_support::fixture().images[OBAMA_PARTIAL].image,
        "obama_partial_face.jpg"
    );
    assert_eq!(face_support::fixture().images[BIDEN].image, "biden.jpg");
    let models = face_support::temp_dir();
    let site = Site::new(1);
    let config = cpu_face_config(&site, &face_support::model_file(models.path()));
    let running = site.start(&config);
    let gate = site.gate(1, running.addr).await;

    // Enrol two people from their photos: the appliance says under which model.
    for (person, index) in [("obama", OBAMA), ("biden", BIDEN)] {
        let response = gate
            .call(&enrol_faces(person, vec![landmarked(index)]))
            .await
            .unwrap();
        match response.result {
            Some(Answer::Enrol(e)) => {
                assert!(e.created);
                assert_eq!(e.templates, 1);
                assert_eq!(e.face_model_id, FACE_MODEL_ID);
            }
            other => panic!("enrol of {person}: {other:?} ({})", response.detail),
        }
    }

    // Verify with another photo of each claim: the score is the reference's distance and the
    // decision the reference's at 0.6.
    for (claim, enrolled) in [("obama", OBAMA), ("biden", BIDEN)] {
        let response = gate
            .call(&verify_face(claim, landmarked(OBAMA_PARTIAL)))
            .await
            .unwrap();
        let v = verify_result(response);
        let reference = distance(
            reference_descriptor(OBAMA_PARTIAL),
            reference_descriptor(enrolled),
        );
        assert!(
            (v.score - reference).abs() < 1e-3,
            "claim {claim}: score {} against the reference's {reference}",
            v.score
        );
        let decision = if reference < THRESHOLD {
            proto::Decision::Match
        } else {
            proto::Decision::NoMatch
        };
        assert_eq!(v.decision(), decision, "claim {claim}");
        assert_eq!(v.measure(), proto::Measure::Euclidean);
        assert_eq!(v.threshold, THRESHOLD);
        assert_eq!(v.model_id, FACE_MODEL_ID);
    }

    // A chip photo: JPEG 2000, lossy at 20 KB, cut around the face. Identify finds the person.
    let jp2: Jpeg2000Fixture = serde_json::from_slice(&image("jpeg2000.json")).unwrap();
    let chip = landmarked_in(
        OBAMA,
        image("obama2_chip.jp2"),
        (jp2.chip_origin[0], jp2.chip_origin[1]),
    );
    let response = gate.call(&identify_face(chip, 2)).await.unwrap();
    let found = match response.result {
        Some(Answer::Identify(i)) => i,
        other => panic!("identify: {other:?} ({})", response.detail),
    };
    let names: Vec<&str> = found
        .candidates
        .iter()
        .map(|c| c.person_id.as_str())
        .collect();
    assert_eq!(names, ["obama", "biden"]);
    assert!(
        found.candidates[0].score < 0.2,
        "{}",
        found.candidates[0].score
    );
    assert!(found.candidates[1].score > THRESHOLD);
    assert_eq!(found.model_id, FACE_MODEL_ID);

    // A ready crop, lossless JPEG 2000 of the very pixels enrolled: distance zero.
    let crop = proto::FaceImage {
        image: image("obama2_crop.jp2"),
        ready_crop: true,
        ..Default::default()
    };
    let v = verify_result(gate.call(&verify_face("obama", crop)).await.unwrap());
    assert!(v.score < 1e-5, "{}", v.score);
    assert_eq!(v.decision(), proto::Decision::Match);

    // Bad captures are refused with a reason, and nothing is enrolled.
    let mut cut = landmarked(OBAMA);
    cut.image.truncate(cut.image.len() / 2);
    let mut few = landmarked(OBAMA);
    few.landmarks.truncate(10);
    let mut outside = landmarked(OBAMA);
    outside.landmarks.iter_mut().for_each(|v| *v += 5_000.0);
    outside.landmarks_frame_width = 0;
    outside.landmarks_frame_height = 0;
    let mut neither = landmarked(OBAMA);
    neither.landmarks.clear();
    let noise = proto::FaceImage {
        image: b"GIF89a not a photo".to_vec(),
        ready_crop: true,
        ..Default::default()
    };
    for (face, reason) in [
        (cut, Reason::BadImage),
        (noise, Reason::BadImage),
        (few, Reason::BadFaceRegion),
        (outside, Reason::BadFaceRegion),
        (neither, Reason::BadFaceRegion),
    ] {
        let response = gate.call(&enrol_faces("nobody", vec![face])).await.unwrap();
        assert_eq!(refusal(&response), reason, "{}", response.detail);
    }
    let both = request(Operation::Verify(proto::VerifyRequest {
        person_id: "obama".into(),
        probe: Some(common::template(vec![0.0; 128])),
        face: Some(landmarked(OBAMA)),
    }));
    assert_eq!(refusal(&gate.call(&both).await.unwrap()), Reason::Malformed);
    let nobody = verify_face("nobody", landmarked(OBAMA));
    assert_eq!(
        refusal(&gate.call(&nobody).await.unwrap()),
        Reason::UnknownPerson
    );

    let status = match gate
        .call(&request(Operation::Status(proto::StatusRequest {})))
        .await
        .unwrap()
        .result
    {
        Some(Answer::Status(s)) => s,
        other => panic!("status: {other:?}"),
    };
    assert_eq!(status.persons, 2, "no refused capture was enrolled");
    assert_eq!(status.face_model_id, FACE_MODEL_ID);
    assert_eq!(status.face_backend, "cpu");
    gate.close().await;
    running.stop().await;

    // The registry holds the descriptors under the face model: the reference's values.
    let out = site.dir.path().join("faces.h5");
    let exported = gatematch::app::export(&site.registry(), FACE_MODEL_ID, &out).unwrap();
    assert_eq!(exported, 2);
    let snap = snapshot::read(&out).unwrap();
    assert_eq!(
        (snap.model_id.as_str(), snap.dimension),
        (FACE_MODEL_ID, 128)
    );
    let obama = snap.person_ids.iter().position(|p| p == "obama").unwrap();
    let stored = &snap.templates[obama * 128..][..128];
    let worst = stored
        .iter()
        .zip(reference_descriptor(OBAMA))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst < 1e-4,
        "stored descriptor off the reference by {worst}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn face_images_are_refused_without_a_face_model() {
    let site = Site::new(1);
    let mut config = site.config();
    config.engine.backend = BackendChoice::Cpu;
    let running = site.start(&config);
    let gate = site.gate(1, running.addr).await;
    let response = gate
        .call(&enrol_faces("obama", vec![landmarked(OBAMA)]))
        .await
        .unwrap();
    assert_eq!(refusal(&response), Reason::WrongModel);
    assert!(
        response.detail.contains("no face model"),
        "{}",
        response.detail
    );
    gate.close().await;
    running.stop().await;
}

#[tokio::test]
async fn a_missing_or_damaged_model_file_stops_the_start_naming_the_file_and_the_fix() {
    let site = Site::new(1);
    let mut config = site.config();
    config.engine.backend = BackendChoice::Cpu;
    let missing = site.dir.path().join("no-such-face.h5");
    config.face = Some(FaceConfig::with_model(&missing));
    let message = match gatematch::app::start(&config) {
        Ok(_) => panic!("started without its model file"),
        Err(e) => e.to_string(),
    };
    assert!(message.contains("no-such-face.h5"), "{message}");
    assert!(message.contains("model import"), "{message}");

    let damaged = site.dir.path().join("damaged.h5");
    std::fs::write(&damaged, b"\x89HDF\r\n\x1a\n and then nothing").unwrap();
    config.face = Some(FaceConfig::with_model(&damaged));
    let message = match gatematch::app::start(&config) {
        Ok(_) => panic!("started on a damaged model file"),
        Err(e) => e.to_string(),
    };
    assert!(message.contains("damaged.h5"), "{message}");
}

/// The site's appliance config with the face model at `model`, everything on the CPU's two
/// threads.
fn cpu_face_config(site: &Site, model: &std::path::Path) -> gatematch::config::Config {
    let mut config = site.config();
    config.engine.backend = BackendChoice::Cpu;
    let mut face = FaceConfig::with_model(model);
    face.backend = BackendChoice::Cpu;
    face.threads = 2;
    config.face = Some(face);
    config
}

/// `face` with its photo replaced by the same photo with `occluder` drawn over the face.
fn occluded(
    index: usize,
    occluder: gatematch::face::quality::occluder::Occluder,
) -> proto::FaceImage {
    use gatematch::face::preprocess::{DecodeLimits, decode_image};
    use rand::SeedableRng;
    let mut face = landmarked(index);
    let rgb = decode_image(&face.image, &DecodeLimits::default()).unwrap();
    let points = face_support::fixture().images[index].faces[0].points();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let covered =
        gatematch::face::quality::occluder::draw(&rgb, &points, occluder, &mut rng).unwrap();
    let buffer = image::RgbImage::from_raw(
        covered.width(),
        covered.height(),
        covered.as_bytes().to_vec(),
    )
    .unwrap();
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
        .encode_image(&buffer)
        .unwrap();
    face.image = jpeg;
    face
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_covered_face_is_refused_with_what_to_fix_and_a_clean_one_carries_its_measures() {
    use gatematch::face::quality::occluder::Occluder;
    let models = face_support::temp_dir();
    let site = Site::new(1);
    let config = cpu_face_config(&site, &face_support::model_file(models.path()));
    let running = site.start(&config);
    let gate = site.gate(1, running.addr).await;

    // A clean capture is enrolled, and the answer says what was measured: every check passed.
    let response = gate
        .call(&enrol_faces("obama", vec![landmarked(OBAMA)]))
        .await
        .unwrap();
    assert_eq!(
        response.outcome(),
        proto::Outcome::Ok,
        "{}",
        response.detail
    );
    let [capture] = &response.captures[..] else {
        panic!("one capture per face: {:?}", response.captures.len());
    };
    assert_eq!(capture.checks.len(), 10);
    assert!(capture.checks.iter().all(|c| c.passed) && capture.issues.is_empty());
    assert_eq!(capture.faces_found, 0, "the gate gave the landmarks");

    // A mask, a brim, dark glasses: refused, with the issue to fix, and nothing enrolled.
    for (occluder, issue) in [
        (Occluder::Mask, proto::CaptureIssue::LowerFaceCovered),
        (Occluder::Brim, proto::CaptureIssue::ForeheadCovered),
        (Occluder::DarkGlasses, proto::CaptureIssue::EyesCovered),
    ] {
        let probe = verify_face("obama", occluded(OBAMA, occluder));
        let response = gate.call(&probe).await.unwrap();
        assert_eq!(refusal(&response), Reason::PoorCapture, "{occluder:?}");
        let issues: Vec<_> = response.captures[0].issues().collect();
        assert!(issues.contains(&issue), "{occluder:?}: {issues:?}");
        let enrol = enrol_faces("masked", vec![landmarked(BIDEN), occluded(OBAMA, occluder)]);
        let response = gate.call(&enrol).await.unwrap();
        assert_eq!(refusal(&response), Reason::PoorCapture);
        assert_eq!(response.captures.len(), 2, "both faces were examined");
        assert!(response.captures[0].issues.is_empty());
        assert!(!response.captures[1].issues.is_empty());
    }
    let nobody = verify_face("masked", landmarked(BIDEN));
    assert_eq!(
        refusal(&gate.call(&nobody).await.unwrap()),
        Reason::UnknownPerson,
        "a refused capture enrols nothing, not even the good face beside it"
    );
    gate.close().await;
    running.stop().await;
}

/// A camera frame as it is: no landmarks, no crop.
fn frame(bytes: Vec<u8>) -> proto::FaceImage {
    proto::FaceImage {
        image: bytes,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_frames_are_found_by_the_appliance_and_judged() {
    let models = face_support::temp_dir();
    let site = Site::new(1);
    let config = cpu_face_config(
        &site,
        &face_support::model_file_with_detection(models.path()),
    );
    let running = site.start(&config);
    let gate = site.gate(1, running.addr).await;

    // The photo as the camera took it: the appliance finds the face, and the descriptor is the
    // reference pipeline's (detector, landmarks and descriptor all from face-api).
    let response = gate
        .call(&enrol_faces("obama", vec![frame(image("obama2.jpg"))]))
        .await
        .unwrap();
    assert_eq!(
        response.outcome(),
        proto::Outcome::Ok,
        "{}",
        response.detail
    );
    let capture = &response.captures[0];
    assert_eq!(capture.faces_found, 1);
    assert!(capture.detection.is_some() && capture.detection_score > 0.9);
    assert!(capture.issues.is_empty() && capture.checks.len() == 10);
    let v = verify_result(
        gate.call(&verify_face("obama", landmarked(OBAMA)))
            .await
            .unwrap(),
    );
    assert!(
        v.score < 1e-4,
        "found and given landmarks agree: {}",
        v.score
    );

    // Another photo of the same person matches the enrolled frame, and Biden's does not.
    let v = verify_result(
        gate.call(&verify_face(
            "obama",
            frame(image("obama_partial_face.jpg")),
        ))
        .await
        .unwrap(),
    );
    assert_eq!(v.decision(), proto::Decision::Match, "{}", v.score);
    let v = verify_result(
        gate.call(&verify_face("obama", frame(image("biden.jpg"))))
            .await
            .unwrap(),
    );
    assert_eq!(v.decision(), proto::Decision::NoMatch, "{}", v.score);

    // No face, several faces: refused with what to fix.
    let grey = gate
        .call(&enrol_faces("nobody", vec![frame(image("grey.png"))]))
        .await
        .unwrap();
    assert_eq!(refusal(&grey), Reason::PoorCapture);
    assert_eq!(
        grey.captures[0].issues().collect::<Vec<_>>(),
        [proto::CaptureIssue::NoFace]
    );
    let group = std::fs::read(face_support::models_dir().join("demo/sample1.jpg")).unwrap();
    let several = gate
        .call(&verify_face("obama", frame(group)))
        .await
        .unwrap();
    assert_eq!(refusal(&several), Reason::PoorCapture);
    assert_eq!(several.captures[0].faces_found, 3);
    assert_eq!(
        several.captures[0].issues().collect::<Vec<_>>(),
        [proto::CaptureIssue::SeveralFaces]
    );
    gate.close().await;
    running.stop().await;
}
