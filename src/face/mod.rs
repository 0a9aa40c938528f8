//! Faces: from a photo and a face's landmarks to a 128-value descriptor that two photos of one
//! person share.
//!
//! The network is dlib's ResNet face descriptor as face-api ported it to TF.js
//! (`@vladmandic/face-api@1.7.15`, MIT; the weights are dlib's public-domain model). This
//! module reproduces that reference pipeline to within 1e-4 per descriptor value, the bar
//! MODEL.md sets for the CPU:
//!
//! - [`model`]: the weights. [`model::tfjs`] reads the published TF.js files;
//!   [`model::file`] converts them into gatematch's single HDF5 model file and loads it.
//! - [`preprocess`]: bounded image decoding, the descriptor box from 68 landmarks, crop, pad,
//!   resize and normalisation into a [`FaceBatch`].
//! - [`network`]: the network itself, as a plain [`network::reference`] oracle, as the
//!   batched, multi-threaded [`CpuNetwork`], and as [`GpuNetwork`] in WGSL (within 1e-3 of
//!   the CPU, MODEL.md's bar for the GPU).
//! - [`detect`]: face detection (SSD MobileNet v1) and 68-point landmarks, from a photo to
//!   the landmarks the descriptor box comes from, on the CPU and, with the same
//!   post-processing, on a GPU ([`detect::gpu`]).
//! - [`quality`]: capture-quality measures from the landmarks and the pixels, held against a
//!   policy; [`capture`] puts location and judgement together for one capture.
//! - [`embed`]: the pipeline driven from files, as `gatematch embed` uses it.
//! - [`bench`](mod@bench): throughput of either network (`gatematch bench embed`).
//!
//! Glossary: a *descriptor* is the network's 128-value output for one face; it becomes a
//! template once enrolled. The *distance* of two descriptors is Euclidean; two faces *match*
//! when it is below the *threshold* ([`model::DEFAULT_THRESHOLD`], 0.6).
//!
//! Biometric data (pixels, landmarks, descriptors) never appears in `Debug` output or in the
//! errors of this module.
//!
//! # Limitations
//!
//! - The GPU network has run on lavapipe only (correctness); its speed on a real GPU is
//!   unmeasured (`benches/gpu.sh` prints it). Its convolution tile (128 pixels × 32
//!   channels) is one size for all layers: at batch 1 the deep 4 × 4 layers fill one tile in
//!   eight, and no layer splits its reduction across workgroups.
//! - Detection and landmarks ([`detect`]) run one image per request, on the CPU's blocking
//!   pool or one GPU pass per frame: the GPU path takes several frames per pass
//!   ([`detect::GpuFaceFinder::find_batch`]), but no batcher gathers frames across gates yet.
//!   Its speed on a real GPU is unmeasured.
//! - The cover measures of [`quality`] compare regions with the face's own skin; they have been
//!   measured on synthetic occluders over a handful of real photos only.
//! - EXIF orientation is not applied (nor does the reference); gates send upright images.
//! - Which JPEG decoder is used shifts descriptors by about 1e-3 (decoders differ by a level
//!   or two per pixel); the fixtures pin the image crate's decoder.

#![warn(missing_docs)]

pub mod bench;
pub mod capture;
pub mod detect;
pub mod embed;
pub mod model;
pub mod network;
pub mod preprocess;
pub mod quality;

pub use model::{FaceModel, ModelError};
pub use network::{CpuNetwork, Descriptor, EmbedError, Embedder, GpuNetwork, Network};
pub use preprocess::{FaceBatch, FaceBox, ImageError, Point};
