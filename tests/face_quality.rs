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
        // The rates measured when the thresholds were set (54, 51 and 54 of 60), less a
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
