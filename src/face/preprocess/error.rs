//! Errors of decoding a face image and cutting the network's input from it.

/// Why an image or a face in it was refused.
///
/// Messages carry sizes and limits only, never pixel data or coordinates of a face: they may
/// reach logs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The encoded image is larger than the limit.
    #[error("image of {bytes} bytes exceeds the limit of {limit_bytes} bytes")]
    FileTooLarge {
        /// Size of the encoded image.
        bytes: usize,
        /// Largest size accepted.
        limit_bytes: usize,
    },
    /// The image's dimensions exceed the limits.
    #[error("image of {width}x{height} pixels exceeds the limit of {limit_pixels} pixels")]
    TooManyPixels {
        /// Width declared by the file.
        width: u32,
        /// Height declared by the file.
        height: u32,
        /// Largest pixel count accepted.
        limit_pixels: u64,
    },
    /// The image has no pixels.
    #[error("image has zero width or height")]
    Empty,
    /// The bytes are not a JPEG, PNG or JPEG 2000 image, or a JPEG 2000 image of a colour
    /// space other than grey or RGB.
    #[error("unsupported image format (JPEG, PNG and JPEG 2000 in grey or RGB are accepted)")]
    UnsupportedFormat,
    /// The file is truncated or malformed.
    #[error("image cannot be decoded: {reason}")]
    Malformed {
        /// The decoder's description.
        reason: String,
    },
    /// The image data stops before the end-of-image marker (a cut-off upload). The JPEG
    /// decoder would fill the missing part with grey and succeed.
    #[error("image is truncated: no end-of-image marker after the image data")]
    Truncated,
    /// The landmarks are not 68 finite points of plausible size.
    #[error("invalid landmarks: {reason}")]
    InvalidLandmarks {
        /// What is wrong with them.
        reason: String,
    },
    /// A face box given as text is not of the form `X,Y,W,H`.
    #[error("invalid face box: {reason}")]
    InvalidBox {
        /// What is wrong with it.
        reason: String,
    },
    /// The face box has no overlap with the image, or no area.
    #[error("face box has no pixels inside the {image_width}x{image_height} image")]
    EmptyFaceBox {
        /// Image width.
        image_width: u32,
        /// Image height.
        image_height: u32,
    },
}
