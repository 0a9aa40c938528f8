//! Untrusted image bytes: oversized, malformed, truncated or hostile inputs are refused with a
//! typed error and never panic.

mod face_support;

use gatematch::face::preprocess::{DecodeLimits, ImageError, decode_image};

fn jpeg() -> Vec<u8> {
    std::fs::read(face_support::fixture_dir().join("obama2.jpg")).unwrap()
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 7]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn valid_png_and_jpeg_decode() {
    let limits = DecodeLimits::default();
    let rgb = decode_image(&png(5, 3), &limits).unwrap();
    assert_eq!((rgb.width(), rgb.height()), (5, 3));
    assert_eq!(&rgb.as_bytes()[..3], &[0, 0, 7]);
    assert!(decode_image(&jpeg(), &limits).is_ok());
}

#[test]
fn non_images_are_unsupported() {
    let limits = DecodeLimits::default();
    for bytes in [
        &b""[..],
        b"hello world",
        b"GIF89a\x01\x00\x01\x00",
        &[0xff; 64],
    ] {
        assert!(matches!(
            decode_image(bytes, &limits),
            Err(ImageError::UnsupportedFormat)
        ));
    }
}

#[test]
fn oversized_files_are_refused_before_decoding() {
    let limits = DecodeLimits {
        max_file_bytes: 1000,
        ..DecodeLimits::default()
    };
    let err = decode_image(&jpeg(), &limits).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::FileTooLarge {
                limit_bytes: 1000,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn too_many_pixels_are_refused() {
    let limits = DecodeLimits {
        max_pixels: 100_000,
        ..DecodeLimits::default()
    };
    let err = decode_image(&jpeg(), &limits).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::TooManyPixels {
                width: 626,
                height: 1200,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn decompression_bomb_header_is_refused_without_allocating() {
    // A valid PNG whose header claims 60000 x 60000 pixels (10.8 GB as RGB).
    let mut bytes = png(4, 4);
    bytes[16..20].copy_from_slice(&60_000u32.to_be_bytes());
    bytes[20..24].copy_from_slice(&60_000u32.to_be_bytes());
    let crc = crc32(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    let err = decode_image(&bytes, &DecodeLimits::default()).unwrap_err();
    assert!(
        matches!(err, ImageError::TooManyPixels { width: 60_000, .. }),
        "{err}"
    );
}

#[test]
fn truncated_png_is_malformed() {
    let bytes = png(64, 64);
    for cut in [8, 30, bytes.len() / 2, bytes.len() - 13] {
        let err = decode_image(&bytes[..cut], &DecodeLimits::default()).unwrap_err();
        assert!(
            matches!(err, ImageError::Malformed { .. }),
            "cut at {cut}: {err}"
        );
    }
}

#[test]
fn truncated_jpeg_is_refused() {
    let bytes = jpeg();
    for cut in [
        4,
        200,
        bytes.len() / 3,
        bytes.len() / 2,
        bytes.len() - 100,
        bytes.len() - 1,
    ] {
        let result = decode_image(&bytes[..cut], &DecodeLimits::default());
        let refused = matches!(
            result,
            Err(ImageError::Truncated | ImageError::Malformed { .. })
        );
        assert!(refused, "cut at {cut}: {result:?}");
    }
}

#[test]
fn corrupted_bytes_never_panic() {
    let original = jpeg();
    let mut state = 0x1234_5678u32;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    let limits = DecodeLimits::default();
    for _ in 0..60 {
        let mut bytes = original.clone();
        for _ in 0..8 {
            let at = next() as usize % bytes.len();
            bytes[at] = next() as u8;
        }
        let cut = bytes.len() - next() as usize % 1000;
        // Either outcome is acceptable; a panic fails the test.
        let _ = decode_image(&bytes[..cut], &limits);
    }
}
