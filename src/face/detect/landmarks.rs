//! The 68-point landmark network (`face_landmark_68_model`, face-api's FaceLandmark68Net),
//! computed as `DetectAllFaceLandmarksTask` computes it for each detection; and its tiny
//! sibling (`face_landmark_68_tiny_model`, FaceLandmark68TinyNet: three dense blocks of three
//! convolutions, 128 features), for comparison.
//!
//! 1. The crop: the detection box, clipped at the image's borders and floored
//!    (`extractFaceTensors`, `Box.clipAtImageBorders`), padded with zeros to a centred square,
//!    bilinear-resized to 112 × 112, normalised as `(p - mean) / 255`.
//! 2. Four dense blocks (`denseBlock4`): a stride-2 convolution (a full 3×3 in the first,
//!    depthwise-separable in the others) and three depthwise-separable convolutions, each
//!    fed the ReLU of the sum of the block's earlier outputs; 112 → 56 → 28 → 14 → 7.
//! 3. A 7×7 average pool and a fully connected layer: 136 values, (x, y) of 68 points relative
//!    to the padded square.
//! 4. Back to image pixels (`FaceLandmark68NetBase.postProcess`, `FaceLandmarks.shiftBy`): the
//!    padding removed, scaled by the crop's size, shifted by the detection box's corner.

use std::collections::HashMap;

use rayon::prelude::*;

use crate::face::model::Tensor;
use crate::face::preprocess::crop::LANDMARK_COUNT;
use crate::face::preprocess::{FaceBox, ImageError, Point, RgbImage, descriptor_box};

use super::input::{PaddedSquare, Padding};
use super::layers::{Activation, Activations, Conv, Depthwise};
use super::spec::{
    DENSE_BLOCKS, LANDMARK_OUTPUTS, TINY_DENSE_BLOCKS, landmark_tensor_specs, take_checked,
    tiny_landmark_tensor_specs,
};
use super::{DetectError, Detection};

/// Side of the landmark network's square input, in pixels.
pub const LANDMARK_INPUT_SIZE: usize = 112;
/// Mean RGB subtracted before dividing by 255 (the same as the descriptor network's).
const MEAN_RGB: [f32; 3] = [122.782, 117.001, 104.298];
/// Faces run through the network together at most; more are cut into passes of this size,
/// which bounds the activation memory (about 1.6 MB per face at the widest layer).
pub const MAX_FACES_PER_PASS: usize = 16;

/// The 68 landmarks of one face, in image pixels, and the crop they were found in.
///
/// `Debug` shows neither: landmarks are biometric data.
#[derive(Clone, PartialEq)]
pub struct FaceLandmarks {
    points: Vec<Point>,
    crop: FaceBox,
}

impl std::fmt::Debug for FaceLandmarks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FaceLandmarks({} points, redacted)", self.points.len())
    }
}

impl FaceLandmarks {
    /// Landmarks found elsewhere: `points` in image pixels, found in the image region `crop`.
    pub fn new(points: Vec<Point>, crop: FaceBox) -> Self {
        Self { points, crop }
    }

    /// The 68 points in image pixels, in the iBUG 300-W order (jaw 0–16, brows 17–26, nose
    /// 27–35, eyes 36–47, mouth 48–67).
    pub fn points(&self) -> &[Point] {
        &self.points
    }

    /// The region of the image the network saw (the clipped, floored detection box).
    pub fn crop(&self) -> FaceBox {
        self.crop
    }

    /// The descriptor network's box from these landmarks, exactly as the reference derives it
    /// (its frame is the landmark crop, see [`descriptor_box`]); not yet clipped to the image.
    pub fn descriptor_box(&self) -> Result<FaceBox, ImageError> {
        // The crop is inside the image, so its sides fit in u32.
        let (w, h) = (self.crop.width as u32, self.crop.height as u32);
        descriptor_box(&self.points, w, h)
    }
}

/// A depthwise-separable convolution: 3×3 depthwise without bias, then 1×1 with bias.
#[derive(Debug)]
struct Separable {
    depthwise: Depthwise,
    pointwise: Conv,
}

impl Separable {
    fn forward(&self, x: &Activations) -> Activations {
        let y = self.depthwise.forward(x, Activation::Identity);
        self.pointwise.forward(&y, Activation::Identity)
    }
}

/// The first convolution of a dense block.
#[derive(Debug)]
enum Entry {
    Full(Conv),
    Separable(Separable),
}

#[derive(Debug)]
struct DenseBlock {
    entry: Entry,
    /// Three (`denseBlock4`) or two (`denseBlock3`).
    convs: Vec<Separable>,
}

impl DenseBlock {
    /// `denseBlock4` / `denseBlock3`: each convolution takes the ReLU of the sum of the
    /// block's outputs so far, summed right to left as the reference nests its `add`s (they
    /// round in f32).
    fn forward(&self, x: &Activations) -> Activations {
        let mut first = match &self.entry {
            Entry::Full(conv) => conv.forward(x, Activation::Identity),
            Entry::Separable(conv) => conv.forward(x),
        };
        first.relu_in_place();
        let mut outputs = vec![first];
        for conv in &self.convs {
            let input = if outputs.len() == 1 {
                outputs[0].clone()
            } else {
                relu_of_sum(&outputs)
            };
            outputs.push(conv.forward(&input));
        }
        relu_of_sum(&outputs)
    }
}

/// `relu(o[0] + (o[1] + (... + o[n-1])))`.
fn relu_of_sum(outputs: &[Activations]) -> Activations {
    let (last, rest) = outputs
        .split_last()
        .unwrap_or_else(|| unreachable!("one output at least"));
    let mut sum = rest.iter().rev().fold(last.clone(), |acc, o| o.add(&acc));
    sum.relu_in_place();
    sum
}

/// One face's crop: where it lies in the image and the detection corner its points shift by.
#[derive(Clone, Copy)]
struct Crop {
    x: usize,
    y: usize,
    width: usize,
    height: usize,
    shift: Point,
}

/// The 68-point landmark network, ready to run on the CPU in the current rayon pool.
#[derive(Debug)]
pub struct LandmarkNet {
    blocks: Vec<DenseBlock>,
    /// `[features, 136]` row-major (256 features, 128 in the tiny network).
    fc: Vec<f32>,
    fc_bias: Vec<f32>,
}

impl LandmarkNet {
    /// Builds the network from `face_landmark_68_model`'s tensors, checking every name and
    /// shape.
    pub fn new(tensors: &HashMap<String, Tensor>) -> Result<Self, DetectError> {
        let t = take_checked(&landmark_tensor_specs(), tensors)?;
        Ok(Self::build(&t, &DENSE_BLOCKS, 3))
    }

    /// Builds the tiny network from `face_landmark_68_tiny_model`'s tensors, checking every
    /// name and shape.
    pub fn new_tiny(tensors: &HashMap<String, Tensor>) -> Result<Self, DetectError> {
        let t = take_checked(&tiny_landmark_tensor_specs(), tensors)?;
        Ok(Self::build(&t, &TINY_DENSE_BLOCKS, 2))
    }

    /// The network of `blocks`, each of an entry convolution and `convs` separable ones, from
    /// checked tensors.
    fn build(t: &HashMap<String, Tensor>, blocks: &[(usize, usize)], convs: usize) -> Self {
        let data = |name: String| -> Vec<f32> {
            // Invariant: take_checked admitted exactly the spec'd names.
            t.get(&name)
                .map(|tensor| tensor.data.clone())
                .unwrap_or_else(|| unreachable!("checked tensor {name} missing"))
        };
        let separable = |prefix: String, c_in: usize, c_out: usize, stride: usize| Separable {
            depthwise: Depthwise::new(
                stride,
                c_in,
                data(format!("{prefix}/depthwise_filter")),
                vec![0.0; c_in],
            ),
            pointwise: Conv::new(
                1,
                1,
                c_in,
                c_out,
                data(format!("{prefix}/pointwise_filter")),
                data(format!("{prefix}/bias")),
            ),
        };
        let blocks = blocks
            .iter()
            .enumerate()
            .map(|(i, &(c_in, c_out))| {
                let entry = if i == 0 {
                    let weights = data(format!("dense{i}/conv0/filters"));
                    let bias = data(format!("dense{i}/conv0/bias"));
                    Entry::Full(Conv::new(3, 2, c_in, c_out, weights, bias))
                } else {
                    Entry::Separable(separable(format!("dense{i}/conv0"), c_in, c_out, 2))
                };
                let convs = (1..=convs)
                    .map(|j| separable(format!("dense{i}/conv{j}"), c_out, c_out, 1))
                    .collect();
                DenseBlock { entry, convs }
            })
            .collect();
        Self {
            blocks,
            fc: data("fc/weights".into()),
            fc_bias: data("fc/bias".into()),
        }
    }

    /// The 68 landmarks of the face `detection` found in `image`.
    pub fn landmarks(
        &self,
        image: &RgbImage,
        detection: &Detection,
    ) -> Result<FaceLandmarks, DetectError> {
        let mut all = self.landmarks_batch(image, std::slice::from_ref(detection))?;
        all.pop()
            .unwrap_or_else(|| unreachable!("one result per detection"))
    }

    /// The landmarks of every detection in `image`, in order, the crops run through the
    /// network together. A detection whose box has no pixel inside the image gets
    /// [`DetectError::EmptyFaceCrop`] (the reference drops it).
    pub fn landmarks_batch(
        &self,
        image: &RgbImage,
        detections: &[Detection],
    ) -> Result<Vec<Result<FaceLandmarks, DetectError>>, DetectError> {
        let crops = FaceCrops::new(image, detections);
        let mut inputs = Vec::new();
        crops.inputs_into(image, &mut inputs);
        let mut outputs = Vec::with_capacity(crops.len() * LANDMARK_OUTPUTS);
        for pass in inputs.chunks(MAX_FACES_PER_PASS * LANDMARK_INPUT_LEN) {
            outputs.extend(self.forward(pass));
        }
        Ok(crops.landmarks(&outputs))
    }

    /// The network's raw outputs for every face of `inputs` (faces of
    /// [`LANDMARK_INPUT_LEN`] normalised values back to back), run through each layer
    /// together: [`LANDMARK_OUTPUTS`] values a face, (x, y) of the 68 points relative to the
    /// padded square crop.
    pub fn forward(&self, inputs: &[f32]) -> Vec<f32> {
        let side = LANDMARK_INPUT_SIZE;
        let n = inputs.len() / LANDMARK_INPUT_LEN;
        if n == 0 {
            return Vec::new();
        }
        let mut x = Activations {
            n,
            h: side,
            w: side,
            c: 3,
            data: inputs[..n * LANDMARK_INPUT_LEN].to_vec(),
        };
        for block in &self.blocks {
            x = block.forward(&x);
        }
        let features = average_pool(&x);
        features
            .chunks_exact(x.c)
            .flat_map(|f| self.fully_connected(f))
            .collect()
    }

    /// The dense blocks as the GPU uploads them: per block, the entry convolution (a full one,
    /// or a depthwise-separable pair) and the separable convolutions after it.
    pub(crate) fn gpu_blocks(&self) -> Vec<(EntryLayers<'_>, Vec<(&Depthwise, &Conv)>)> {
        self.blocks
            .iter()
            .map(|block| {
                let entry = match &block.entry {
                    Entry::Full(conv) => EntryLayers::Full(conv),
                    Entry::Separable(s) => EntryLayers::Separable(&s.depthwise, &s.pointwise),
                };
                let convs = block
                    .convs
                    .iter()
                    .map(|s| (&s.depthwise, &s.pointwise))
                    .collect();
                (entry, convs)
            })
            .collect()
    }

    /// The fully connected layer: `[features, 136]` row-major, and its bias.
    pub(crate) fn fc(&self) -> (&[f32], &[f32]) {
        (&self.fc, &self.fc_bias)
    }

    /// `features · fc + bias`.
    fn fully_connected(&self, features: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0f32; LANDMARK_OUTPUTS];
        for (i, &f) in features.iter().enumerate() {
            let row = &self.fc[i * LANDMARK_OUTPUTS..(i + 1) * LANDMARK_OUTPUTS];
            for (o, &w) in out.iter_mut().zip(row) {
                *o += f * w;
            }
        }
        for (o, b) in out.iter_mut().zip(&self.fc_bias) {
            *o += b;
        }
        out
    }
}

/// The entry convolution of a dense block, borrowed for the GPU's upload.
pub(crate) enum EntryLayers<'a> {
    /// A full 3×3 stride-2 convolution (the first block).
    Full(&'a Conv),
    /// A stride-2 depthwise convolution and a 1×1 one (the others).
    Separable(&'a Depthwise, &'a Conv),
}

/// The landmark network's inputs for the detections of `image` that have a crop (a pixel
/// inside the image), back to back, as [`LandmarkNet::landmarks_batch`] builds them: for
/// [`LandmarkNet::forward`] and the GPU's.
pub fn landmark_inputs(image: &RgbImage, detections: &[Detection]) -> Vec<f32> {
    let mut inputs = Vec::new();
    FaceCrops::new(image, detections).inputs_into(image, &mut inputs);
    inputs
}

/// Values of one face of the landmark network's input: [`LANDMARK_INPUT_SIZE`]² × 3.
pub const LANDMARK_INPUT_LEN: usize = LANDMARK_INPUT_SIZE * LANDMARK_INPUT_SIZE * 3;

/// The crops of one image's detections, as the landmark network takes them, and the way back
/// from its outputs to landmarks in image pixels. Shared by every backend: only the forward
/// pass differs between them.
pub(crate) struct FaceCrops {
    /// One per detection; `None` where the box has no pixel inside the image.
    crops: Vec<Option<Crop>>,
    image_size: (u32, u32),
}

impl FaceCrops {
    /// The crops of `detections` in `image`.
    pub fn new(image: &RgbImage, detections: &[Detection]) -> Self {
        Self {
            crops: detections.iter().map(|d| crop_of(image, d)).collect(),
            image_size: (image.width(), image.height()),
        }
    }

    /// Crops that go through the network (those with pixels inside the image).
    pub fn len(&self) -> usize {
        self.crops.iter().flatten().count()
    }

    /// Appends the network's input for each crop of [`Self::len`] to `dst`, in order.
    pub fn inputs_into(&self, image: &RgbImage, dst: &mut Vec<f32>) {
        let side = LANDMARK_INPUT_SIZE;
        let valid: Vec<Crop> = self.crops.iter().flatten().copied().collect();
        let at = dst.len();
        dst.resize(at + valid.len() * LANDMARK_INPUT_LEN, 0.0);
        dst[at..]
            .par_chunks_mut(LANDMARK_INPUT_LEN)
            .zip(&valid)
            .for_each(|(dst, crop)| {
                let region = (crop.x, crop.y, crop.width, crop.height);
                let mut resized = Vec::with_capacity(LANDMARK_INPUT_LEN);
                PaddedSquare::new(image, region, Padding::Centred).resize_into(side, &mut resized);
                // normalize(x, mean).div(255): two f32 operations.
                for (d, (v, c)) in dst.iter_mut().zip(resized.iter().zip((0..3).cycle())) {
                    *d = (v - MEAN_RGB[c]) / 255.0;
                }
            });
    }

    /// The landmarks of every detection from `outputs`, the network's outputs for the crops of
    /// [`Self::len`] in order; [`DetectError::EmptyFaceCrop`] for a detection without a crop
    /// (or, defensively, without an output).
    pub fn landmarks(&self, outputs: &[f32]) -> Vec<Result<FaceLandmarks, DetectError>> {
        let mut outputs = outputs.chunks_exact(LANDMARK_OUTPUTS);
        let (image_width, image_height) = self.image_size;
        let empty = || DetectError::EmptyFaceCrop {
            image_width,
            image_height,
        };
        self.crops
            .iter()
            .map(|crop| match crop {
                Some(crop) => outputs
                    .next()
                    .map(|output| to_image(*crop, output))
                    .ok_or_else(empty),
                None => Err(empty()),
            })
            .collect()
    }
}

/// The whole-map average (the 7×7, or in the tiny network 14×14, VALID pool of a map of
/// that side): `n` vectors of `c`.
fn average_pool(x: &Activations) -> Vec<f32> {
    let cells = x.h * x.w;
    let mut out = vec![0.0f32; x.n * x.c];
    for (b, dst) in out.chunks_exact_mut(x.c).enumerate() {
        for cell in x.data[b * cells * x.c..(b + 1) * cells * x.c].chunks_exact(x.c) {
            for (d, v) in dst.iter_mut().zip(cell) {
                *d += v;
            }
        }
        for d in dst.iter_mut() {
            *d /= cells as f32;
        }
    }
    out
}

/// The crop of `detection` as `extractFaceTensors` cuts it, or `None` when empty.
fn crop_of(image: &RgbImage, detection: &Detection) -> Option<Crop> {
    let (w, h) = (f64::from(image.width()), f64::from(image.height()));
    // FaceDetection.forSize: the box goes to relative coordinates and back, as JS numbers.
    let rel = |v: f64, side: f64| v * (1.0 / side) * side;
    let (x, y) = (rel(detection.x, w), rel(detection.y, h));
    let (right, bottom) = (x + rel(detection.width, w), y + rel(detection.height, h));
    // Box.clipAtImageBorders: clip, then floor each of x, y, width and height.
    let (cx, cy) = (x.max(0.0), y.max(0.0));
    let width = (right - cx).min(w - cx).floor();
    let height = (bottom - cy).min(h - cy).floor();
    let (cx, cy) = (cx.floor(), cy.floor());
    let usable = [cx, cy, width, height].iter().all(|v| v.is_finite());
    if !usable || width <= 0.0 || height <= 0.0 || cx >= w || cy >= h {
        return None;
    }
    // Bounded by the image's sides just above, so the conversions are exact.
    Some(Crop {
        x: cx as usize,
        y: cy as usize,
        width: width as usize,
        height: height as usize,
        shift: Point {
            x: detection.x,
            y: detection.y,
        },
    })
}

/// `postProcess` and the two `FaceLandmarks` constructions, with their roundings: the network
/// output to relative crop coordinates in f32, then to image pixels in f64.
fn to_image(crop: Crop, output: &[f32]) -> FaceLandmarks {
    let side = LANDMARK_INPUT_SIZE as f64;
    let (cw, ch) = (crop.width as f64, crop.height as f64);
    let scale = side / cw.max(ch);
    let (sw, sh) = (cw * scale, ch * scale);
    let pad_x = if sw < sh { (sw - sh).abs() / 2.0 } else { 0.0 };
    let pad_y = if sh < sw { (sw - sh).abs() / 2.0 } else { 0.0 };
    // The reference fills f32 tensors with these and computes (out * 112 - pad) / size in f32.
    let (pad_x, pad_y, sw, sh) = (pad_x as f32, pad_y as f32, sw as f32, sh as f32);
    let points = output
        .chunks_exact(2)
        .take(LANDMARK_COUNT)
        .map(|xy| {
            let rx = f64::from((xy[0] * side as f32 - pad_x) / sw);
            let ry = f64::from((xy[1] * side as f32 - pad_y) / sh);
            // new FaceLandmarks68(rel, crop) then shiftBy(detection corner): the positions go
            // through relative coordinates once more.
            let (px, py) = (rx * cw, ry * ch);
            Point {
                x: px / cw * cw + crop.shift.x,
                y: py / ch * ch + crop.shift.y,
            }
        })
        .collect();
    FaceLandmarks {
        points,
        crop: FaceBox {
            x: crop.x as i64,
            y: crop.y as i64,
            width: crop.width as i64,
            height: crop.height as i64,
        },
    }
}
