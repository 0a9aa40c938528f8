//! The face commands through the real binary: `model import` and `model check`, `embed` from
//! landmarks, boxes and whole crops against the reference, the refusals, `bench embed`'s line
//! format, and both on the GPU backend when an adapter opens.

mod face_support;

use std::path::Path;
use std::process::{Command, Output};

use face_support::{fixture, fixture_dir, models_dir, temp_dir};
use serde::Deserialize;

/// MODEL.md's bar for the CPU.
const TOLERANCE: f32 = 1e-4;

fn gatematch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gatematch"))
        .args(args)
        .output()
        .expect("gatematch runs")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "gatematch failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("UTF-8 output")
}

fn refused(output: &Output) -> String {
    assert!(!output.status.success(), "gatematch should have refused");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Imports the model through the CLI into `dir` and returns the file's path as text.
fn import(dir: &Path) -> String {
    let out = dir.join("face.h5").display().to_string();
    let models = models_dir().display().to_string();
    let text = stdout(&gatematch(&[
        "model", "import", "--models", &models, "--out", &out,
    ]));
    assert!(text.contains("5614592 descriptor parameters"), "{text}");
    assert!(text.contains("face detector"), "{text}");
    out
}

#[derive(Deserialize)]
struct Line {
    image: String,
    #[serde(rename = "box")]
    face_box: BoxLine,
    backend: String,
    descriptor: Vec<f32>,
}

#[derive(Deserialize, Debug, PartialEq)]
struct BoxLine {
    x: i64,
    y: i64,
    width: i64,
    height: i64,
}

fn lines(text: &str) -> Vec<Line> {
    text.lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

fn image_paths() -> Vec<String> {
    let dir = fixture_dir();
    let images = fixture().images.iter();
    images
        .map(|i| dir.join(&i.image).display().to_string())
        .collect()
}

/// Checks each line against the fixture's face of the same image: box and descriptor.
fn assert_matches_reference(lines: &[Line]) {
    assert_eq!(lines.len(), fixture().images.len());
    for (line, image) in lines.iter().zip(&fixture().images) {
        assert!(line.image.ends_with(&image.image), "{}", line.image);
        assert_eq!(line.backend, "cpu");
        let face = &image.faces[0];
        let b = &face.face_box;
        let expected = BoxLine {
            x: b.x,
            y: b.y,
            width: b.width,
            height: b.height,
        };
        assert_eq!(line.face_box, expected, "{}", image.image);
        assert_eq!(line.descriptor.len(), 128);
        for (ours, theirs) in line.descriptor.iter().zip(&face.descriptor) {
            let diff = (ours - theirs).abs();
            assert!(diff <= TOLERANCE, "{}: differs by {diff:e}", image.image);
        }
    }
}

#[test]
fn model_import_then_check() {
    let dir = temp_dir();
    let model = import(dir.path());
    let text = stdout(&gatematch(&["model", "check", &model]));
    assert!(
        text.contains("euclidean distance") && text.contains("weights sha256"),
        "{text}"
    );
}

#[test]
fn embed_from_landmarks_and_from_boxes_matches_the_reference() {
    let dir = temp_dir();
    let model = import(dir.path());
    let images = image_paths();

    // One landmarks file per image: the fixture's face objects, which carry the landmark
    // frame the reference clamps the box by.
    let mut args = vec!["embed", "--model", &model, "--threads", "2"];
    let landmark_files: Vec<String> = fixture()
        .images
        .iter()
        .enumerate()
        .map(|(i, image)| {
            let face = &image.faces[0];
            let json = serde_json::json!({
                "landmarks": face.landmarks,
                "landmarks_frame": {
                    "width": face.landmarks_frame.width,
                    "height": face.landmarks_frame.height,
                },
            });
            let path = dir.path().join(format!("landmarks-{i}.json"));
            std::fs::write(&path, json.to_string()).unwrap();
            path.display().to_string()
        })
        .collect();
    for file in &landmark_files {
        args.extend(["--landmarks", file.as_str()]);
    }
    args.extend(images.iter().map(String::as_str));
    assert_matches_reference(&lines(&stdout(&gatematch(&args))));

    // The same boxes given directly.
    let mut args = vec!["embed", "--model", &model, "--threads", "1"];
    let boxes: Vec<String> = fixture()
        .images
        .iter()
        .map(|i| {
            let b = &i.faces[0].face_box;
            format!("{},{},{},{}", b.x, b.y, b.width, b.height)
        })
        .collect();
    for b in &boxes {
        args.extend(["--box", b.as_str()]);
    }
    args.extend(images.iter().map(String::as_str));
    assert_matches_reference(&lines(&stdout(&gatematch(&args))));
}

#[test]
fn embed_without_a_region_finds_each_face_and_reports_its_landmarks_and_quality() {
    let dir = temp_dir();
    let model = import(dir.path());
    let mut args = vec!["embed", "--model", &model];
    let images = image_paths();
    args.extend(images.iter().map(String::as_str));
    let grey = fixture_dir().join("grey.png").display().to_string();
    args.push(&grey);
    let output = gatematch(&args);
    let text = stdout(&output);
    // The reference's faces, found by the appliance's own detector: same boxes, same
    // descriptors; the faceless image is named on stderr and prints no line.
    assert_matches_reference(&lines(&text));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("grey.png: no face found"), "{stderr}");
    for line in text.lines() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(value["landmarks"].as_array().unwrap().len(), 68);
        assert_eq!(value["detection"]["faces_in_image"], 1);
        let quality = &value["quality"];
        assert_eq!(quality["checks"].as_array().unwrap().len(), 10);
        assert!(
            quality["issues"].as_array().unwrap().is_empty(),
            "{quality}"
        );
    }
}

#[test]
fn bench_detect_prints_one_line_with_the_faces_found() {
    let dir = temp_dir();
    let model = import(dir.path());
    let image = image_paths().remove(0);
    let text = stdout(&gatematch(&[
        "bench",
        "detect",
        "--model",
        &model,
        "--image",
        &image,
        "--seconds",
        "0.2",
        "--runs",
        "1",
        "--threads",
        "1",
    ]));
    let line = text.trim();
    assert!(
        line.starts_with("detect backend=cpu threads=1 image=626x1200 faces=1 ms_per_frame="),
        "{line}"
    );
}

#[test]
fn bench_detect_on_the_gpu_backend_finds_the_same_face() {
    let dir = temp_dir();
    let model = import(dir.path());
    let image = image_paths().remove(0);
    let args = [
        "bench",
        "detect",
        "--backend",
        "gpu",
        "--model",
        &model,
        "--image",
        &image,
        "--seconds",
        "0.1",
        "--runs",
        "1",
        "--threads",
        "1",
    ];
    let Some(output) = gatematch_on_gpu(&args) else {
        return;
    };
    let text = stdout(&output);
    let line = text.trim();
    assert!(
        line.starts_with("detect backend=gpu threads=1 image=626x1200 faces=1 ms_per_frame="),
        "{line}"
    );
}

#[test]
fn embed_whole_describes_the_whole_image() {
    let dir = temp_dir();
    let model = import(dir.path());
    let png = dir.path().join("crop.png");
    let crop = image::RgbImage::from_fn(150, 150, |x, y| image::Rgb([x as u8, y as u8, 90]));
    crop.save(&png).unwrap();
    let png = png.display().to_string();
    let found = lines(&stdout(&gatematch(&[
        "embed", "--model", &model, "--whole", &png,
    ])));
    assert_eq!(found.len(), 1);
    let expected = BoxLine {
        x: 0,
        y: 0,
        width: 150,
        height: 150,
    };
    assert_eq!(found[0].face_box, expected);
    assert!(found[0].descriptor.iter().all(|v| v.is_finite()));
}

#[test]
fn embed_refusals_name_the_cause() {
    let dir = temp_dir();
    let image = image_paths().remove(0);

    let message = refused(&gatematch(&["embed", "--backend", "tpu", &image]));
    assert!(message.contains("use cpu or gpu"), "{message}");

    let absent = dir.path().join("absent.h5").display().to_string();
    let message = refused(&gatematch(&["embed", "--model", &absent, &image]));
    assert!(
        message.contains("absent.h5") && message.contains("fetch-model.sh"),
        "{message}"
    );

    let model = import(dir.path());
    let cut = dir.path().join("cut.jpg");
    let bytes = std::fs::read(&image).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let cut = cut.display().to_string();
    let message = refused(&gatematch(&["embed", "--model", &model, &cut]));
    assert!(
        message.contains("cut.jpg") && message.contains("truncated"),
        "{message}"
    );

    let message = refused(&gatematch(&[
        "embed", "--model", &model, "--box", "1,2,3", &image,
    ]));
    assert!(message.contains("X,Y,W,H"), "{message}");

    let landmarks = dir.path().join("five.json");
    std::fs::write(&landmarks, "[[1,2],[3,4],[5,6],[7,8],[9,10]]").unwrap();
    let landmarks = landmarks.display().to_string();
    let message = refused(&gatematch(&[
        "embed",
        "--model",
        &model,
        "--landmarks",
        &landmarks,
        &image,
    ]));
    assert!(message.contains("5 points, expected 68"), "{message}");
    assert!(!message.contains("[1,2]"), "{message}");

    let message = refused(&gatematch(&[
        "embed", "--model", &model, "--box", "0,0,9,9", "--box", "0,0,9,9", &image, &image, &image,
    ]));
    assert!(message.contains("2 face regions for 3 images"), "{message}");
}

#[test]
fn bench_embed_prints_one_line_per_batch() {
    let dir = temp_dir();
    let model = import(dir.path());
    let text = stdout(&gatematch(&[
        "bench",
        "embed",
        "--backend",
        "cpu",
        "--batch",
        "1,2",
        "--seconds",
        "0.4",
        "--runs",
        "2",
        "--threads",
        "1",
        "--model",
        &model,
    ]));
    let found: Vec<&str> = text.lines().collect();
    assert_eq!(found.len(), 2, "{text}");
    for (line, batch) in found.iter().zip([1, 2]) {
        let prefix = format!("embed backend=cpu batch={batch} threads=1 faces_per_s=");
        assert!(line.starts_with(&prefix), "{line}");
        let rate: f64 = line[prefix.len()..]
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(rate > 0.0, "{line}");
    }

    let message = refused(&gatematch(&[
        "bench",
        "embed",
        "--backend",
        "tpu",
        "--model",
        &model,
    ]));
    assert!(message.contains("use cpu or gpu"), "{message}");
}

/// `gatematch` run with a private runtime directory for Mesa; `None` when it failed for want
/// of an adapter and none is required (GATEMATCH_REQUIRE_GPU=1 makes that a failure).
fn gatematch_on_gpu(args: &[&str]) -> Option<Output> {
    let runtime = temp_dir();
    let output = Command::new(env!("CARGO_BIN_EXE_gatematch"))
        .args(args)
        .env("XDG_RUNTIME_DIR", runtime.path())
        .output()
        .expect("gatematch runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() && stderr.contains("no usable GPU adapter") {
        let required = std::env::var("GATEMATCH_REQUIRE_GPU").is_ok_and(|v| v == "1");
        assert!(!required, "GATEMATCH_REQUIRE_GPU=1 but: {stderr}");
        eprintln!("skipping GPU case: {stderr}");
        return None;
    }
    Some(output)
}

#[test]
fn embed_and_bench_on_the_gpu_backend() {
    let dir = temp_dir();
    let model = import(dir.path());
    let image = image_paths().remove(0);
    let landmarks = dir.path().join("face.json");
    let face = &fixture().images[0].faces[0];
    let json = serde_json::json!({ "landmarks": face.landmarks });
    std::fs::write(&landmarks, json.to_string()).unwrap();
    let landmarks = landmarks.display().to_string();
    let args = [
        "embed",
        "--model",
        &model,
        "--landmarks",
        &landmarks,
        &image,
    ];

    let Some(gpu) = gatematch_on_gpu(&[&args[..], &["--backend", "gpu"]].concat()) else {
        return;
    };
    let cpu = lines(&stdout(&gatematch(&args)));
    let gpu = lines(&stdout(&gpu));
    assert_eq!((gpu.len(), gpu[0].backend.as_str()), (1, "gpu"));
    assert_eq!(gpu[0].face_box, cpu[0].face_box);
    for (g, c) in gpu[0].descriptor.iter().zip(&cpu[0].descriptor) {
        assert!(
            (g - c).abs() <= 1e-3,
            "GPU differs from CPU by {:e}",
            (g - c).abs()
        );
    }

    let bench = [
        "bench",
        "embed",
        "--backend",
        "gpu",
        "--batch",
        "1",
        "--seconds",
        "0.1",
    ];
    let more = ["--runs", "1", "--model", &model];
    let output = gatematch_on_gpu(&[&bench[..], &more].concat()).expect("adapter opened above");
    let text = stdout(&output);
    let prefix = "embed backend=gpu batch=1 faces_per_s=";
    assert!(
        text.starts_with(prefix) && text.lines().count() == 1,
        "{text}"
    );
}
