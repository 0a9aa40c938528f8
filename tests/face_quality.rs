//! Capture quality on real photos: clean captures pass, and the same photos with synthetic
//! occluders (a mask, a brim, dark glasses; seeded, varied in size, colour and texture) are
//! refused for the right reason. The rates printed here are the ones quoted in the notes; the
//! assertions keep them from getting worse.

mod face_support;

use gatematch::face::preprocess::{DecodeLimits, Point, RgbImage, decode_image};
use gatematch::face::quality::occluder::{self, Occluder};
use gatematch::face::quality::{CaptureIssue, QualityPolicy, measure};
use rand::SeedableRng;

/// Real faces with their reference landmarks.
fn faces() -> Vec<(String, RgbImage, Vec<Point>)> {
    face_support::fixture()
        .images
        .iter()
        .map(|image| {
            let bytes = std::fs::read(face_support::fixture_dir().join(&image.image)).unwrap();
            let rgb = decode_image(&bytes, &DecodeLimits::default()).unwrap();
            (image.image.clone(), rgb, image.faces[0].points())
        })
        .collect()
}

fn issue_of(occluder: Occluder) -> CaptureIssue {
    match occluder {
        Occluder::Mask => CaptureIssue::LowerFaceCovered,
        Occluder::Brim => CaptureIssue::ForeheadCovered,
        Occluder::DarkGlasses => CaptureIssue::EyesCovered,
    }
}

fn dump(name: &str, image: &RgbImage) {
    if let Some(dir) = std::env::var_os("GATEMATCH_QUALITY_DUMP") {
        let buffer =
            image::RgbImage::from_raw(image.width(), image.height(), image.as_bytes().to_vec())
                .unwrap();
        buffer
            .save(std::path::Path::new(&dir).join(format!("{name}.png")))
            .unwrap();
    }
}

#[test]
fn occluded_captures_are_caught_and_clean_ones_pass() {
    let policy = QualityPolicy::default();
    let faces = faces();
    let mut clean_refused = 0;
    for (name, image, points) in &faces {
        let m = measure(image, points).unwrap();
        let issues = policy.issues(&m);
        eprintln!(
            "{name}: ied {:.0} yaw {:.1} pitch {:.1} roll {:.1} sharp {:.3} bright {:.0} contrast {:.0} \
             open {:.2} eyes {:.2} lower {:.2} forehead {:.2} -> {issues:?}",
            m.inter_eye_px,
            m.yaw_deg,
            m.pitch_deg,
            m.roll_deg,
            m.sharpness,
            m.brightness,
            m.contrast,
            m.eye_openness,
            m.eyes_covered,
            m.lower_face_covered,
            m.forehead_covered
        );
        clean_refused += usize::from(!issues.is_empty());
    }
    const PER_FACE: u64 = 20;
    for occluder in Occluder::ALL {
        let (mut caught, mut total, mut values) = (0, 0, Vec::new());
        for (name, image, points) in &faces {
            for seed in 0..PER_FACE {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                let covered = occluder::draw(image, points, occluder, &mut rng).unwrap();
                if seed < 2 {
                    dump(&format!("{name}-{occluder:?}-{seed}"), &covered);
                }
                let m = measure(&covered, points).unwrap();
                let issues = policy.issues(&m);
                values.push(match occluder {
                    Occluder::Mask => m.lower_face_covered,
                    Occluder::Brim => m.forehead_covered,
                    Occluder::DarkGlasses => m.eyes_covered,
                });
                caught += usize::from(issues.contains(&issue_of(occluder)));
                total += 1;
            }
        }
        values.sort_by(f64::total_cmp);
        eprintln!(
            "{occluder:?}: caught {caught}/{total}; measure min {:.2} median {:.2}",
            values[0],
            values[values.len() / 2]
        );
        // The rates measured when the thresholds were set (54, 54 and 54 of 60), less a
        // small margin so that a change to the generator's colours does not flip the test.
        let least = match occluder {
            Occluder::Mask => 50,
            Occluder::Brim => 48,
            Occluder::DarkGlasses => 50,
        };
        assert!(
            caught >= least,
            "{occluder:?}: only {caught} of {total} caught (at least {least} were)"
        );
    }
    eprintln!("clean refused {clean_refused}/{}", faces.len());
    assert_eq!(clean_refused, 0, "a clean capture was refused");
}

/// The detector and landmark network, as the appliance runs them.
fn finder() -> &'static gatematch::face::detect::FaceFinder {
    use std::sync::OnceLock;
    static FINDER: OnceLock<gatematch::face::detect::FaceFinder> = OnceLock::new();
    FINDER.get_or_init(|| {
        let weights =
            gatematch::face::detect::store::read_tfjs_detection(&face_support::models_dir())
                .expect("detection weights");
        gatematch::face::detect::FaceFinder::new(&weights).expect("networks build")
    })
}

/// `image` cut to the box around `d` grown by its own size on each side: one traveller in
/// front of the camera, as a gate sees them.
fn cut_out(image: &RgbImage, d: &gatematch::face::detect::Detection) -> RgbImage {
    let (w, h) = (image.width() as f64, image.height() as f64);
    let x0 = (d.x - d.width).clamp(0.0, w) as u32;
    let y0 = (d.y - d.height).clamp(0.0, h) as u32;
    let x1 = (d.x + 2.0 * d.width).clamp(0.0, w) as u32;
    let y1 = (d.y + 2.0 * d.height).clamp(0.0, h) as u32;
    let (cw, ch) = (x1 - x0, y1 - y0);
    let row = image.width() as usize * 3;
    let mut pixels = Vec::with_capacity(cw as usize * ch as usize * 3);
    for y in y0..y1 {
        let start = y as usize * row + x0 as usize * 3;
        pixels.extend_from_slice(&image.as_bytes()[start..start + cw as usize * 3]);
    }
    RgbImage::from_raw(cw, ch, pixels).expect("inside the image")
}

/// What the appliance makes of `image`: the issues of its largest face, or `NoFace`.
fn judged(image: &RgbImage, policy: &QualityPolicy) -> (Vec<CaptureIssue>, Option<Vec<Point>>) {
    let mut faces = finder().find(image).expect("detector runs");
    if faces.is_empty() {
        return (vec![CaptureIssue::NoFace], None);
    }
    faces.sort_by(|a, b| {
        let area = |f: &gatematch::face::detect::FoundFace| f.detection.width * f.detection.height;
        area(b).total_cmp(&area(a))
    });
    let count = faces.len();
    let capture =
        gatematch::face::capture::examine_found(image, faces.swap_remove(0), count, policy)
            .expect("examined");
    (capture.issues.clone(), capture.landmarks.clone())
}

/// The whole path on real photos, the detector included: every face of the fixture photos and
/// of the package's six group photos (25 faces, none covered), cut out one per traveller; then
/// the same cut-outs with occluders drawn over the landmarks found on them, detected and
/// measured again. Counts cover false alarms on the clean faces separately from the pose,
/// which the group photos' tilted heads fail honestly.
#[test]
fn through_the_detector_occluded_faces_are_refused_and_clean_ones_rarely() {
    let policy = QualityPolicy::default();
    let mut photos: Vec<RgbImage> = face_support::fixture()
        .images
        .iter()
        .map(|image| {
            let bytes = std::fs::read(face_support::fixture_dir().join(&image.image)).unwrap();
            decode_image(&bytes, &DecodeLimits::default()).unwrap()
        })
        .collect();
    for i in 1..=6 {
        let path = face_support::models_dir().join(format!("demo/sample{i}.jpg"));
        let bytes =
            std::fs::read(&path).expect("demo photos: scripts/fetch-model.sh installs them");
        photos.push(decode_image(&bytes, &DecodeLimits::default()).unwrap());
    }
    let cutouts: Vec<RgbImage> = photos
        .iter()
        .flat_map(|photo| {
            let faces = finder().find(photo).unwrap();
            faces
                .iter()
                .map(|f| cut_out(photo, &f.detection))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(cutouts.len() >= 25, "{} faces found", cutouts.len());

    let covers = [
        CaptureIssue::EyesCovered,
        CaptureIssue::LowerFaceCovered,
        CaptureIssue::ForeheadCovered,
    ];
    let (mut refused, mut cover_false_alarms, mut pose) = (0, 0, 0);
    let mut clean = Vec::new();
    for cutout in &cutouts {
        let (issues, landmarks) = judged(cutout, &policy);
        refused += usize::from(!issues.is_empty());
        cover_false_alarms += usize::from(issues.iter().any(|i| covers.contains(i)));
        pose += usize::from(issues.contains(&CaptureIssue::HeadPose));
        clean.push((cutout, landmarks.expect("each cut-out holds its face")));
    }
    eprintln!(
        "clean faces: {} refused of {} ({pose} for head pose, {cover_false_alarms} for a cover)",
        refused,
        cutouts.len()
    );

    const SEEDS: u64 = 2;
    for occluder in Occluder::ALL {
        let (mut right, mut other, mut missed, mut lost) = (0, 0, 0, 0);
        for (cutout, landmarks) in &clean {
            for seed in 0..SEEDS {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(100 + seed);
                let covered = occluder::draw(cutout, landmarks, occluder, &mut rng).unwrap();
                let (issues, _) = judged(&covered, &policy);
                if issues.contains(&issue_of(occluder)) {
                    right += 1;
                } else if issues == [CaptureIssue::NoFace] {
                    lost += 1;
                } else if issues.is_empty() {
                    missed += 1;
                } else {
                    other += 1;
                }
            }
        }
        let total = clean.len() as u64 * SEEDS;
        eprintln!(
            "{occluder:?}: {right}/{total} refused for it, {other} for another reason, {lost} \
             with no face found, {missed} passed"
        );
        // Bounds at the rates measured when this test was written, less a margin (see the
        // closing notes for the figures): a passed occluded capture is the failure that
        // matters at a gate.
        // Measured: 1, 2 and 2 of 50 passed.
        let most_missed = match occluder {
            Occluder::Mask => 3,
            Occluder::Brim => 6,
            Occluder::DarkGlasses => 5,
        };
        assert!(
            missed <= most_missed,
            "{occluder:?}: {missed} of {total} occluded captures passed (at most {most_missed})"
        );
    }
    // Measured: 7 of 25 (lipstick, face paint and colour casts in party photos read as covers;
    // see the README's Limitations). The bound stops it from getting worse, not more.
    assert!(
        cover_false_alarms <= 8,
        "{cover_false_alarms} clean faces refused for a cover"
    );
}
