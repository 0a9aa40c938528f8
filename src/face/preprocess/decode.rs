//! Bounded decoding of JPEG, PNG and JPEG 2000 into 8-bit RGB.
//!
//! Size is checked three times: the encoded length before anything is parsed, the declared
//! dimensions from the header before pixels are allocated, and (JPEG and PNG) the decoder's
//! own allocation limit while decoding. EXIF orientation is not applied (nor does the reference
//! pipeline).
//!
//! JPEG 2000 is what most passport and resident-card chips hold in DG2; both the JP2 container
//! and a bare codestream are accepted. The decoder is hayro-jpeg2000, pure Rust with unsafe code
//! forbidden: the bytes come from a gate and, before that, from a chip nobody here issued.

use std::fmt;
use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};

use image::{ImageFormat, ImageReader, Limits};

use super::ImageError;

/// Limits on what [`decode_image`] accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest encoded image in bytes. Default 16 MiB.
    pub max_file_bytes: usize,
    /// Largest width × height. Default 40,000,000 (a 40-megapixel photo).
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_file_bytes: 16 << 20,
            max_pixels: 40_000_000,
        }
    }
}

/// An 8-bit RGB image, rows top to bottom, pixels left to right, channels R, G, B.
///
/// `Debug` shows only the dimensions: pixels of a face are biometric data and must not reach
/// logs.
#[derive(Clone, PartialEq, Eq)]
pub struct RgbImage {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
}

impl RgbImage {
    /// Wraps `pixels` (`width * height * 3` bytes); `None` when the length does not match or a
    /// side is zero.
    pub fn from_raw(width: u32, height: u32, pixels: Vec<u8>) -> Option<Self> {
        let expected = (width as usize)
            .checked_mul(height as usize)?
            .checked_mul(3)?;
        (width > 0 && height > 0 && pixels.len() == expected).then_some(Self {
            width,
            height,
            pixels,
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The RGB bytes, row-major.
    pub fn as_bytes(&self) -> &[u8] {
        &self.pixels
    }

    /// The three channel values of the pixel at column `x`, row `y` (both in range).
    #[inline]
    pub(crate) fn pixel(&self, x: usize, y: usize) -> &[u8] {
        let at = (y * self.width as usize + x) * 3;
        &self.pixels[at..at + 3]
    }
}

impl fmt::Debug for RgbImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RgbImage({}x{})", self.width, self.height)
    }
}

/// Decodes a JPEG, PNG or JPEG 2000 image into RGB within `limits`. Alpha is dropped, grey is
/// replicated, samples of more than 8 bits are scaled to 8.
pub fn decode_image(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, ImageError> {
    if bytes.len() > limits.max_file_bytes {
        return Err(ImageError::FileTooLarge {
            bytes: bytes.len(),
            limit_bytes: limits.max_file_bytes,
        });
    }
    if is_jpeg2000(bytes) {
        return decode_jpeg2000(bytes, limits);
    }
    let format = image::guess_format(bytes).map_err(|_| ImageError::UnsupportedFormat)?;
    if !matches!(format, ImageFormat::Jpeg | ImageFormat::Png) {
        return Err(ImageError::UnsupportedFormat);
    }
    let malformed = |e: image::ImageError| ImageError::Malformed {
        reason: e.to_string(),
    };
    if format == ImageFormat::Jpeg && !jpeg_has_end_marker(bytes) {
        return Err(ImageError::Truncated);
    }

    let (width, height) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(malformed)?;
    if width == 0 || height == 0 {
        return Err(ImageError::Empty);
    }
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(ImageError::TooManyPixels {
            width,
            height,
            limit_pixels: limits.max_pixels,
        });
    }

    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut decoder_limits = Limits::default();
    decoder_limits.max_image_width = Some(width);
    decoder_limits.max_image_height = Some(height);
    // The decoded image at 16 bits and 4 channels, plus slack for the decoder's own buffers.
    decoder_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8).saturating_add(64 << 20));
    reader.limits(decoder_limits);
    // The image crate's decoders are meant not to panic on bad input, but this is the gate's
    // untrusted input: a decoder bug must refuse the image, not take the process down.
    let decoded = catch_unwind(AssertUnwindSafe(|| reader.decode()))
        .map_err(|_| ImageError::Malformed {
            reason: "decoder failed internally".to_owned(),
        })?
        .map_err(malformed)?;
    if (decoded.width(), decoded.height()) != (width, height) {
        return Err(ImageError::Malformed {
            reason: "dimensions changed while decoding".to_owned(),
        });
    }
    let rgb = decoded.into_rgb8();
    RgbImage::from_raw(width, height, rgb.into_raw()).ok_or(ImageError::Empty)
}

/// The JP2 container's signature box, and the start of a bare codestream (SOC then SIZ).
const JP2_SIGNATURE: &[u8] = b"\x00\x00\x00\x0cjP  \r\n\x87\n";
const J2K_CODESTREAM: &[u8] = b"\xff\x4f\xff\x51";

fn is_jpeg2000(bytes: &[u8]) -> bool {
    bytes.starts_with(JP2_SIGNATURE) || bytes.starts_with(J2K_CODESTREAM)
}

fn decode_jpeg2000(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, ImageError> {
    use hayro_jpeg2000::{ColorSpace, DecodeSettings, DecoderContext, Image};

    let malformed = |e: hayro_jpeg2000::DecodeError| ImageError::Malformed {
        reason: format!("JPEG 2000: {e}"),
    };
    // Parsing reads the headers only; the pixels are decoded below, after the size check.
    let image = Image::new(bytes, &DecodeSettings::default()).map_err(malformed)?;
    let (width, height) = (image.width(), image.height());
    if width == 0 || height == 0 {
        return Err(ImageError::Empty);
    }
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(ImageError::TooManyPixels {
            width,
            height,
            limit_pixels: limits.max_pixels,
        });
    }
    let colour_channels = match image.color_space() {
        ColorSpace::Gray => 1,
        ColorSpace::RGB => 3,
        // An embedded ICC profile of three channels is an RGB space; its small colour shifts
        // are not applied (nor would a browser-free reference apply them).
        ColorSpace::Icc {
            num_channels: 3, ..
        } => 3,
        ColorSpace::Icc {
            num_channels: 1, ..
        } => 1,
        _ => return Err(ImageError::UnsupportedFormat),
    };
    let channels = colour_channels + usize::from(image.has_alpha());
    let mut context = DecoderContext::default();
    // The decoder forbids unsafe code but may still panic on a bug; a gate's bytes must not
    // take the process down.
    let interleaved = catch_unwind(AssertUnwindSafe(|| {
        image.decode(&mut context).map(|decoded| decoded.data_u8())
    }))
    .map_err(|_| ImageError::Malformed {
        reason: "JPEG 2000 decoder failed internally".to_owned(),
    })?
    .map_err(malformed)?;
    let pixels = width as usize * height as usize;
    if interleaved.len() != pixels * channels {
        return Err(ImageError::Malformed {
            reason: format!(
                "JPEG 2000 decoded to {} samples, not {width}x{height}x{channels}",
                interleaved.len()
            ),
        });
    }
    let rgb = if colour_channels == 3 && channels == 3 {
        interleaved
    } else {
        let mut rgb = Vec::with_capacity(pixels * 3);
        for pixel in interleaved.chunks_exact(channels) {
            match colour_channels {
                1 => rgb.extend_from_slice(&[pixel[0]; 3]),
                _ => rgb.extend_from_slice(&pixel[..3]),
            }
        }
        rgb
    };
    RgbImage::from_raw(width, height, rgb).ok_or(ImageError::Empty)
}

/// Whether `first`, `second` start a marker that ends entropy-coded data: `FF` followed by
/// anything but a stuffed zero or a restart marker.
fn is_marker(first: u8, second: u8) -> bool {
    first == 0xff && !matches!(second, 0x00 | 0xd0..=0xd7)
}

/// Walks the JPEG marker structure from SOI and reports whether an EOI marker follows the image
/// data. Segments with a length (APPn, DQT, SOF, SOS headers, ...) are skipped whole, so the EOI
/// of an embedded EXIF thumbnail does not count; entropy-coded data is scanned for the next
/// marker, skipping stuffed `FF 00` bytes and restart markers.
fn jpeg_has_end_marker(bytes: &[u8]) -> bool {
    const SOI: u8 = 0xd8;
    const EOI: u8 = 0xd9;
    const SOS: u8 = 0xda;
    if bytes.len() < 4 || bytes[0] != 0xff || bytes[1] != SOI {
        return false;
    }
    let mut at = 2;
    while at + 1 < bytes.len() {
        if bytes[at] != 0xff {
            return false;
        }
        let marker = bytes[at + 1];
        match marker {
            EOI => return true,
            0xff => at += 1,               // fill byte before a marker
            0x01 | 0xd0..=0xd7 => at += 2, // stand-alone markers
            _ => {
                let Some(len) = bytes.get(at + 2..at + 4) else {
                    return false;
                };
                at += 2 + usize::from(u16::from_be_bytes([len[0], len[1]]));
                if marker == SOS {
                    // Entropy-coded data runs to the next marker that is not a stuffed zero or
                    // a restart marker.
                    while at + 1 < bytes.len() && !is_marker(bytes[at], bytes[at + 1]) {
                        at += 1;
                    }
                }
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::jpeg_has_end_marker;

    #[test]
    fn end_marker_is_found_only_after_the_scan() {
        // SOI, APP0 holding a fake EOI, SOS with header length 2, data with stuffing and RST0,
        // then EOI.
        let complete = [
            0xff, 0xd8, 0xff, 0xe0, 0x00, 0x04, 0xff, 0xd9, 0xff, 0xda, 0x00, 0x02, 0x12, 0xff,
            0x00, 0x34, 0xff, 0xd0, 0x56, 0xff, 0xd9,
        ];
        assert!(jpeg_has_end_marker(&complete));
        for cut in 0..complete.len() - 1 {
            assert!(!jpeg_has_end_marker(&complete[..cut]), "cut at {cut}");
        }
    }
}
