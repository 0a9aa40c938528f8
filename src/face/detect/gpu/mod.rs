//! The face detector and the landmark network on a GPU: the same functions as [`Detector`]
//! and [`LandmarkNet`], their forward passes in WGSL compute shaders on wgpu, for several
//! frames per detector pass and several faces per landmark pass.
//!
//! Why a GPU: the detector costs about 3.1 billion multiply-adds a frame at 512 × 512, more
//! than ten faces' worth of the descriptor network, and the appliance finds the face of
//! every gate's frame. Batched, its 1×1 convolutions are large matrix products.
//!
//! How it runs:
//!
//! - The networks are built on the CPU first ([`Detector::with_options`],
//!   [`LandmarkNet::new`]): the tensors are checked and the batch norms folded by the CPU
//!   path's own code, and those folded layers are what is uploaded, once.
//! - Each layer is one dispatch over every item of a pass ([`program`]); a pass is one
//!   submission with one upload of the inputs and one read-back of the outputs.
//! - Only the forward passes run on the GPU. The input tensors (resize, normalisation) and the
//!   post-processing (box decoding, non-max suppression, landmarks back to image pixels) are
//!   the CPU path's code, so the backends differ only in the networks' raw outputs.
//! - The detector's six box predictors are each one convolution on the GPU: the encoding and
//!   class filters side by side, zero-padded to a multiple of 32 output channels (the
//!   convolution kernel's tile width); the host reads the real channels back out.
//! - A lost device, a failed submission, an allocation failure, an unwritten output or a panic
//!   inside wgpu comes back as [`DetectError::Gpu`], never as a panic, so the caller can find
//!   the faces on the CPU instead ([`crate::face::capture::FailoverFinder`]).
//!
//! Fidelity: the GPU sums products in another order and fuses multiply and add, so its raw
//! outputs differ from the CPU's in the last bits of each layer; `tests/face_detect_gpu.rs`
//! states and checks the bounds on the fixture photos and on seeded random inputs.
//!
//! # Limitations
//!
//! - The landmark network's dense-block sums are added left to right on the GPU (each
//!   pointwise convolution adds the running sum as its shortcut), right to left on the CPU (as
//!   the reference nests its adds): the two round differently in the last bit.
//! - Frames from different gates are batched only when a caller hands several to
//!   [`GpuFaceFinder::find_batch`]; the appliance still finds faces one request at a time.

use std::collections::HashMap;

use super::landmarks::{EntryLayers, FaceCrops};
use super::layers::Conv;
use super::spec::{ANCHOR_COUNT, BOX_PREDICTORS};
use super::ssd::{DETECTOR_INPUT_LEN, SsdOutputs, detector_input};
use super::{
    DETECTOR_INPUT_SIZE, DetectError, Detection, DetectionWeights, Detector, DetectorOptions,
    FaceLandmarks, FoundFace, LANDMARK_INPUT_SIZE, LANDMARK_OUTPUTS, LandmarkNet, found_faces,
};
use crate::engine::gpu::shaders::{
    FACE_TILE_CHANNELS, FLAG_RELU, FLAG_RELU_INPUT, FLAG_RELU6, FLAG_SHORTCUT,
};
use crate::engine::gpu::{GpuContext, GpuError};
use crate::face::model::Tensor;
use crate::face::preprocess::RgbImage;

mod program;

use program::{DeviceProgram, ProgramBuilder, Shape, Slot};

/// Frames per detector pass unless the device's limits ask for fewer: about 36 MB of
/// activations a frame, so 8 frames hold about 300 MB, as the descriptor network's passes do.
pub const DEFAULT_FRAMES_PER_PASS: usize = 8;

/// Faces per landmark pass unless the device's limits ask for fewer (about 2 MB a face).
pub const DEFAULT_LANDMARK_FACES_PER_PASS: usize = 64;

impl From<GpuError> for DetectError {
    fn from(source: GpuError) -> Self {
        DetectError::Gpu { source }
    }
}

/// The SSD MobileNet v1 detector with its forward pass on a device.
pub struct GpuDetector {
    /// The CPU detector the weights were folded by; it checks frames and decodes outputs.
    cpu: Detector,
    program: DeviceProgram,
}

impl std::fmt::Debug for GpuDetector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuDetector")
            .field("adapter", &self.program.context().adapter_info().name)
            .field("frames_per_pass", &self.program.items_per_pass())
            .finish_non_exhaustive()
    }
}

/// The channels of box predictor `i` on the GPU: its encodings, then its classes, then zeros
/// up to the convolution tile's width.
fn predictor_channels(anchors: usize) -> usize {
    (anchors * 7).next_multiple_of(FACE_TILE_CHANNELS as usize)
}

impl GpuDetector {
    /// Builds the detector from `ssd_mobilenetv1_model`'s tensors (checked and folded as
    /// [`Detector::with_options`] does) and uploads it to the device of `ctx`.
    pub fn new(
        tensors: &HashMap<String, Tensor>,
        options: DetectorOptions,
        ctx: GpuContext,
    ) -> Result<Self, DetectError> {
        Self::from_cpu(Detector::with_options(tensors, options)?, ctx)
    }

    /// Uploads the folded layers of `cpu` to the device of `ctx`.
    pub fn from_cpu(cpu: Detector, ctx: GpuContext) -> Result<Self, DetectError> {
        let program = detector_program(&cpu, ctx)?;
        Ok(Self { cpu, program })
    }

    /// Sets the most frames of one pass (at least 1, at most what the device allows); larger
    /// batches run in several passes. Tests set it small to cross a pass boundary.
    pub fn with_frames_per_pass(mut self, frames: usize) -> Self {
        self.program.set_items_per_pass(frames);
        self
    }

    /// The most frames of one pass.
    pub fn frames_per_pass(&self) -> usize {
        self.program.items_per_pass()
    }

    /// The options in force.
    pub fn options(&self) -> &DetectorOptions {
        self.cpu.options()
    }

    /// The device context (adapter name, software or not).
    pub fn context(&self) -> &GpuContext {
        self.program.context()
    }

    /// The network's raw outputs for every frame of `inputs` (frames of
    /// [`DETECTOR_INPUT_LEN`] values, as [`detector_input`] makes them), as
    /// [`Detector::forward`] computes them on the CPU.
    pub fn forward(&self, inputs: &[f32]) -> Result<Vec<SsdOutputs>, DetectError> {
        let frames = inputs.len() / DETECTOR_INPUT_LEN;
        let outputs = self.program.run(inputs)?;
        let mut all = SsdOutputs::for_frames(frames);
        for (values, &(_, anchors)) in outputs.iter().zip(&BOX_PREDICTORS) {
            let width = predictor_channels(anchors);
            let per_frame = values.len() / frames.max(1);
            for (out, frame) in all.iter_mut().zip(values.chunks_exact(per_frame.max(1))) {
                for cell in frame.chunks_exact(width) {
                    let (encodings, classes) = cell.split_at(anchors * 4);
                    for (encoding, class) in encodings.chunks_exact(4).zip(classes.chunks(3)) {
                        out.push(encoding, class);
                    }
                }
            }
        }
        if let Some(index) = all.iter().position(|o| o.scores.len() != ANCHOR_COUNT) {
            return Err(DetectError::Gpu {
                source: GpuError::BadOutput {
                    kernel: "face detector",
                    index,
                },
            });
        }
        Ok(all)
    }

    /// The faces in `image`, as [`Detector::detect`] finds them.
    pub fn detect(&self, image: &RgbImage) -> Result<Vec<Detection>, DetectError> {
        let mut all = self.detect_batch(&[image])?;
        all.pop()
            .unwrap_or_else(|| unreachable!("one result per image"))
    }

    /// The faces in each of `images`, the frames run through the network together. The outer
    /// error is the device's ([`DetectError::Gpu`]); an image the detector refuses (too large,
    /// too elongated) gets its own error and the others are still detected.
    pub fn detect_batch(
        &self,
        images: &[&RgbImage],
    ) -> Result<Vec<Result<Vec<Detection>, DetectError>>, DetectError> {
        let frames: Vec<_> = images.iter().map(|image| self.cpu.frame(image)).collect();
        let accepted: Vec<&RgbImage> = images
            .iter()
            .zip(&frames)
            .filter(|(_, frame)| frame.is_ok())
            .map(|(image, _)| *image)
            .collect();
        let mut inputs = Vec::with_capacity(accepted.len() * DETECTOR_INPUT_LEN);
        for image in &accepted {
            inputs.extend(detector_input(image));
        }
        let mut outputs = self.forward(&inputs)?.into_iter();
        Ok(frames
            .into_iter()
            .map(|frame| {
                let frame = frame?;
                let outputs = outputs
                    .next()
                    .unwrap_or_else(|| unreachable!("one output per accepted frame"));
                Ok(self.cpu.detections(&frame, &outputs))
            })
            .collect())
    }
}

/// The detector as dispatches: MobileNetV1 and the extra layers through two activation
/// buffers, each box predictor run as soon as its source map is made, into an output buffer
/// of its own.
fn detector_program(cpu: &Detector, ctx: GpuContext) -> Result<DeviceProgram, GpuError> {
    let side = DETECTOR_INPUT_SIZE;
    let input = Shape {
        h: side,
        w: side,
        c: 3,
    };
    let mut b = ProgramBuilder::new(ctx, "face detector", input);
    let (stem, pairs, extra) = cpu.layers();
    let mut predictors = cpu.predictor_convs().zip(BOX_PREDICTORS).enumerate();
    let mut predict = |b: &mut ProgramBuilder, source: Slot, shape: Shape| {
        let Some((i, ((encodings, classes), (c_in, anchors)))) = predictors.next() else {
            unreachable!("six predictors for six sources")
        };
        let width = predictor_channels(anchors);
        let (weights, bias) = side_by_side(encodings, classes, c_in, width);
        let slots = (source, None, Slot::Output(i));
        b.conv_raw((1, 1, width), (&weights, &bias), slots, shape, 0)
            .map(drop)
    };

    let (x, y) = (Slot::Activation(0), Slot::Activation(1));
    let mut shape = b.conv(stem, (Slot::Input, None, x), input, FLAG_RELU6)?;
    for (i, (depthwise, pointwise)) in pairs.iter().enumerate() {
        let mid = b.depthwise(depthwise, (x, y), shape, FLAG_RELU6)?;
        shape = b.conv(pointwise, (y, None, x), mid, FLAG_RELU6)?;
        if i + 1 == 11 {
            predict(&mut b, x, shape)?;
        }
    }
    predict(&mut b, x, shape)?;
    let (mut from, mut to) = (x, y);
    for (i, conv) in extra.iter().enumerate() {
        shape = b.conv(conv, (from, None, to), shape, FLAG_RELU6)?;
        (from, to) = (to, from);
        if i % 2 == 1 {
            predict(&mut b, from, shape)?;
        }
    }
    b.build(DEFAULT_FRAMES_PER_PASS)
}

/// One 1×1 convolution computing both heads of a box predictor: filters `[c_in, width]` with
/// the encoding filters' columns first, the class filters' next, zeros after; the bias alike.
fn side_by_side(
    encodings: &Conv,
    classes: &Conv,
    c_in: usize,
    width: usize,
) -> (Vec<f32>, Vec<f32>) {
    let (ce, cc) = (encodings.c_out(), classes.c_out());
    let mut weights = vec![0.0f32; c_in * width];
    for (r, row) in weights.chunks_exact_mut(width).enumerate() {
        row[..ce].copy_from_slice(&encodings.weights()[r * ce..(r + 1) * ce]);
        row[ce..ce + cc].copy_from_slice(&classes.weights()[r * cc..(r + 1) * cc]);
    }
    let mut bias = vec![0.0f32; width];
    bias[..ce].copy_from_slice(encodings.bias());
    bias[ce..ce + cc].copy_from_slice(classes.bias());
    (weights, bias)
}

/// The 68-point landmark network with its forward pass on a device.
pub struct GpuLandmarkNet {
    program: DeviceProgram,
}

impl std::fmt::Debug for GpuLandmarkNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuLandmarkNet")
            .field("adapter", &self.program.context().adapter_info().name)
            .field("faces_per_pass", &self.program.items_per_pass())
            .finish_non_exhaustive()
    }
}

impl GpuLandmarkNet {
    /// Builds the network from `face_landmark_68_model`'s tensors (checked as
    /// [`LandmarkNet::new`] does) and uploads it to the device of `ctx`.
    pub fn new(tensors: &HashMap<String, Tensor>, ctx: GpuContext) -> Result<Self, DetectError> {
        Self::from_cpu(&LandmarkNet::new(tensors)?, ctx)
    }

    /// Uploads the layers of `cpu` to the device of `ctx`.
    pub fn from_cpu(cpu: &LandmarkNet, ctx: GpuContext) -> Result<Self, DetectError> {
        Ok(Self {
            program: landmark_program(cpu, ctx)?,
        })
    }

    /// Sets the most faces of one pass (at least 1, at most what the device allows).
    pub fn with_faces_per_pass(mut self, faces: usize) -> Self {
        self.program.set_items_per_pass(faces);
        self
    }

    /// The most faces of one pass.
    pub fn faces_per_pass(&self) -> usize {
        self.program.items_per_pass()
    }

    /// The network's raw outputs for every face of `inputs`, as [`LandmarkNet::forward`]
    /// computes them on the CPU: [`LANDMARK_OUTPUTS`] values a face.
    pub fn forward(&self, inputs: &[f32]) -> Result<Vec<f32>, DetectError> {
        let mut outputs = self.program.run(inputs)?;
        Ok(outputs.pop().unwrap_or_default())
    }

    /// The landmarks of every detection in `image`, as [`LandmarkNet::landmarks_batch`] finds
    /// them.
    pub fn landmarks_batch(
        &self,
        image: &RgbImage,
        detections: &[Detection],
    ) -> Result<Vec<Result<FaceLandmarks, DetectError>>, DetectError> {
        let crops = FaceCrops::new(image, detections);
        let mut inputs = Vec::new();
        crops.inputs_into(image, &mut inputs);
        Ok(crops.landmarks(&self.forward(&inputs)?))
    }
}

/// The landmark network as dispatches. Per dense block: the entry convolution into buffer 0
/// (ReLU'd: every later sum starts from it), then each separable convolution's depthwise part
/// into buffer 1 from the ReLU of the running sum, and its pointwise part adding the running
/// sum as its shortcut into buffers 2, 3, 4 in turn; the last is ReLU'd, the block's output.
fn landmark_program(cpu: &LandmarkNet, ctx: GpuContext) -> Result<DeviceProgram, GpuError> {
    let side = LANDMARK_INPUT_SIZE;
    let mut shape = Shape {
        h: side,
        w: side,
        c: 3,
    };
    let mut b = ProgramBuilder::new(ctx, "landmark network", shape);
    let (entry_out, mid) = (Slot::Activation(0), Slot::Activation(1));
    let sums = [2, 3, 4].map(Slot::Activation);
    let mut x = Slot::Input;
    for (entry, convs) in cpu.gpu_blocks() {
        shape = match entry {
            EntryLayers::Full(conv) => b.conv(conv, (x, None, entry_out), shape, FLAG_RELU)?,
            EntryLayers::Separable(depthwise, pointwise) => {
                let m = b.depthwise(depthwise, (x, mid), shape, 0)?;
                b.conv(pointwise, (mid, None, entry_out), m, FLAG_RELU)?
            }
        };
        let mut sum = entry_out;
        for (j, (depthwise, pointwise)) in convs.iter().enumerate() {
            // The entry's output is ReLU'd already; later sums are kept as they are (the next
            // sum adds to them) and ReLU'd as the depthwise reads them.
            let relu_input = if j == 0 { 0 } else { FLAG_RELU_INPUT };
            let m = b.depthwise(depthwise, (sum, mid), shape, relu_input)?;
            let last = j + 1 == convs.len();
            let flags = FLAG_SHORTCUT | if last { FLAG_RELU } else { 0 };
            shape = b.conv(pointwise, (mid, Some(sum), sums[j]), m, flags)?;
            sum = sums[j];
        }
        x = sum;
    }
    b.head(cpu.fc(), (x, Slot::Output(0)), shape)?;
    debug_assert_eq!(cpu.fc().1.len(), LANDMARK_OUTPUTS);
    b.build(DEFAULT_LANDMARK_FACES_PER_PASS)
}

/// Detection then landmarks, both on a device, for one frame or several at once.
#[derive(Debug)]
pub struct GpuFaceFinder {
    detector: GpuDetector,
    landmark_net: GpuLandmarkNet,
}

impl GpuFaceFinder {
    /// Both networks from checked weights, the detector with `options`, on the device of
    /// `ctx`.
    pub fn new(
        weights: &DetectionWeights,
        options: DetectorOptions,
        ctx: GpuContext,
    ) -> Result<Self, DetectError> {
        Ok(Self {
            detector: GpuDetector::new(&weights.detector, options, ctx.clone())?,
            landmark_net: GpuLandmarkNet::new(&weights.landmarks, ctx)?,
        })
    }

    /// Opens a device (a software one only when `allow_software`) and builds both networks on
    /// it with the default detector options.
    pub fn open(weights: &DetectionWeights, allow_software: bool) -> Result<Self, DetectError> {
        let ctx = GpuContext::new(allow_software)?;
        Self::new(weights, DetectorOptions::default(), ctx)
    }

    /// The detector.
    pub fn detector(&self) -> &GpuDetector {
        &self.detector
    }

    /// The landmark network.
    pub fn landmark_net(&self) -> &GpuLandmarkNet {
        &self.landmark_net
    }

    /// The device context (adapter name, software or not).
    pub fn context(&self) -> &GpuContext {
        self.detector.context()
    }

    /// Every face in `image` with its landmarks, as [`super::FaceFinder::find`] finds them.
    pub fn find(&self, image: &RgbImage) -> Result<Vec<FoundFace>, DetectError> {
        let mut all = self.find_batch(&[image])?;
        all.pop()
            .unwrap_or_else(|| unreachable!("one result per image"))
    }

    /// The faces of each of `images`: one detector pass over all the frames, then one
    /// landmark pass over all their faces. The outer error is the device's; an image the
    /// detector refuses gets its own error.
    pub fn find_batch(
        &self,
        images: &[&RgbImage],
    ) -> Result<Vec<Result<Vec<FoundFace>, DetectError>>, DetectError> {
        let detected = self.detector.detect_batch(images)?;
        let crops: Vec<Option<FaceCrops>> = images
            .iter()
            .zip(&detected)
            .map(|(image, found)| found.as_ref().ok().map(|d| FaceCrops::new(image, d)))
            .collect();
        let mut inputs = Vec::new();
        for (image, crops) in images.iter().zip(&crops) {
            if let Some(crops) = crops {
                crops.inputs_into(image, &mut inputs);
            }
        }
        let outputs = self.landmark_net.forward(&inputs)?;
        let mut outputs = outputs.as_slice();
        Ok(detected
            .into_iter()
            .zip(crops)
            .map(|(detections, crops)| {
                let detections = detections?;
                let crops = crops.unwrap_or_else(|| unreachable!("crops of every detection"));
                let (mine, rest) =
                    outputs.split_at((crops.len() * LANDMARK_OUTPUTS).min(outputs.len()));
                outputs = rest;
                Ok(found_faces(detections, crops.landmarks(mine)))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predictor_widths_hold_both_heads_in_whole_tiles() {
        assert_eq!(predictor_channels(3), 32);
        assert_eq!(predictor_channels(6), 64);
    }
}
