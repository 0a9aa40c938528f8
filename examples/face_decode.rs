//! `face_decode IMAGE > IMAGE.ppm`: decodes a JPEG or PNG exactly as gatematch does and writes
//! it to stdout as a binary PPM (P6).
//!
//! The reference fixture script (`scripts/reference/make_fixtures.mjs`) feeds these pixels to
//! face-api, so that the reference and gatematch compute from identical pixels: two JPEG
//! decoders differ by a level or two on many pixels, which moves descriptors by about 1e-3,
//! ten times the fidelity tolerance. Build it with
//! `cargo build --release --example face_decode`.

use std::io::Write;
use std::process::ExitCode;

use gatematch::face::preprocess::DecodeLimits;

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: face_decode IMAGE > IMAGE.ppm");
        return ExitCode::from(2);
    };
    let limits = DecodeLimits::default();
    let result = gatematch::face::embed::read_image(path.as_ref(), &limits)
        .map_err(|e| e.to_string())
        .and_then(|rgb| {
            let mut out = std::io::stdout().lock();
            write!(out, "P6\n{} {}\n255\n", rgb.width(), rgb.height())
                .and_then(|()| out.write_all(rgb.as_bytes()))
                .and_then(|()| out.flush())
                .map_err(|e| e.to_string())
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("face_decode: {e}");
            ExitCode::FAILURE
        }
    }
}
