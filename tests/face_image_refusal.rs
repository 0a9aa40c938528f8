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

fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(face_support::fixture_dir().join(name)).unwrap()
}

#[test]
fn jpeg2000_codestream_and_container_decode_exactly() {
    let limits = DecodeLimits::default();
    // A bare grey codestream, lossless: the same pixels as its PNG twin, replicated to RGB.
    let from_j2k = decode_image(&fixture_bytes("grey.j2k"), &limits).unwrap();
    let from_png = decode_image(&fixture_bytes("grey.png"), &limits).unwrap();
    assert_eq!((from_j2k.width(), from_j2k.height()), (37, 23));
    assert_eq!(from_j2k.as_bytes(), from_png.as_bytes());
    assert!(
        from_j2k
            .as_bytes()
            .chunks(3)
            .any(|p| p[0] != from_j2k.as_bytes()[0]),
        "the pattern is not flat"
    );

    // A JP2 file, lossless RGB: the reference's face box of obama2.jpg, pixel for pixel.
    let crop = decode_image(&fixture_bytes("obama2_crop.jp2"), &limits).unwrap();
    let photo = decode_image(&jpeg(), &limits).unwrap();
    let (x0, y0, side) = (121usize, 270usize, 363usize);
    assert_eq!((crop.width(), crop.height()), (side as u32, side as u32));
    let row_bytes = photo.width() as usize * 3;
    for y in 0..side {
        let from_photo = &photo.as_bytes()[(y0 + y) * row_bytes + x0 * 3..][..side * 3];
        let from_jp2 = &crop.as_bytes()[y * side * 3..][..side * 3];
        assert_eq!(from_photo, from_jp2, "row {y}");
    }
}

#[test]
fn damaged_or_oversized_jpeg2000_is_refused() {
    let limits = DecodeLimits::default();
    let chip = fixture_bytes("obama2_chip.jp2");
    assert!(decode_image(&chip, &limits).is_ok());
    // Cut anywhere past the signature, the file is refused or decodes to the full size, never
    // a panic.
    for cut in [12, 40, 100, 400, chip.len() / 2, chip.len() - 10] {
        match decode_image(&chip[..cut], &limits) {
            Ok(rgb) => assert_eq!((rgb.width(), rgb.height()), (390, 500), "cut at {cut}"),
            Err(e) => assert!(
                matches!(
                    e,
                    ImageError::Malformed { .. } | ImageError::UnsupportedFormat
                ),
                "cut at {cut}: {e}"
            ),
        }
    }
    // The signature followed by noise.
    let mut noise = chip[..12].to_vec();
    let mut x = 0x2545_f491_u32;
    noise.extend((0..4096).map(|_| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x as u8
    }));
    assert!(decode_image(&noise, &limits).is_err());
    // The pixel limit is checked from the header, before any pixel is decoded.
    let small = DecodeLimits {
        max_pixels: 390 * 500 - 1,
        ..limits
    };
    assert!(matches!(
        decode_image(&chip, &small),
        Err(ImageError::TooManyPixels {
            width: 390,
            height: 500,
            ..
        })
    ));
}
