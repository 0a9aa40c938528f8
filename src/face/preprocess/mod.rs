//! From untrusted image bytes to the descriptor network's input, exactly as the reference
//! pipeline prepares it (MODEL.md, "Preprocessing").
//!
//! - [`decode`]: bounded JPEG/PNG decoding into [`RgbImage`]; refuses, never panics.
//! - [`crop`]: the descriptor box from 68 landmarks, the border clip, the centred zero padding
//!   to a square, TF.js's bilinear resize to 150×150 and the mean/255 normalisation, written
//!   straight into a [`FaceBatch`].

pub mod crop;
pub mod decode;

mod error;

pub use crop::{FaceBatch, FaceBox, Point, descriptor_box};
pub use decode::{DecodeLimits, RgbImage, decode_image};
pub use error::ImageError;
