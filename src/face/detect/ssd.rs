//! The SSD MobileNet v1 face detector (`ssd_mobilenetv1_model`), the reference pipeline's
//! default, computed as `SsdMobilenetv1.locateFaces` computes it.
//!
//! 1. The image, padded with zeros after (right or bottom) to a square, bilinear-resized to
//!    512 × 512, scaled to -1..1 (`x / 127.5 - 1`).
//! 2. MobileNetV1: a 3×3 stride-2 convolution, then 13 pairs of a 3×3 depthwise convolution
//!    (batch norm, eps 0.001, folded in at load) and a 1×1 convolution, each followed by
//!    ReLU6.
//! 3. Eight extra feature layers, and six box predictors on feature maps of 32², 16², 8², 4²,
//!    2² and 1² cells: 5,118 anchors, each with a box encoding and a face score.
//! 4. Boxes decoded against the anchors, sigmoid scores, non-max suppression ([`super::boxes`]).
//! 5. Boxes clipped to the unit square, scaled from the padded square back to the image.

use std::collections::HashMap;

use crate::face::model::Tensor;
use crate::face::preprocess::RgbImage;

use super::boxes::{UnitBox, decode_box, non_max_suppression, sigmoid};
use super::input::PaddedSquare;
use super::layers::{Activation, Activations, Conv, Depthwise};
use super::spec::{
    ANCHOR_COUNT, BOX_PREDICTORS, MOBILENET_PAIRS, PREDICTION_CONVS, detector_tensor_specs,
    take_checked,
};
use super::{DetectError, Detection};

/// Side of the detector's square input, in pixels.
pub const DETECTOR_INPUT_SIZE: usize = 512;
/// The batch norms' epsilon, as the reference passes it (0.001 rounded to f32).
const BATCH_NORM_EPSILON: f64 = 0.0010000000474974513;
/// Overlap above which the weaker of two boxes is suppressed (the reference's fixed value).
const IOU_THRESHOLD: f64 = 0.5;

/// What the detector reports, and how large an image it accepts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DetectorOptions {
    /// Smallest score reported, exclusive, in (0, 1). Default 0.5, the reference's.
    pub min_confidence: f64,
    /// Most faces reported per image. Default 100, the reference's.
    pub max_results: usize,
    /// Largest width × height accepted. Default 40,000,000, as the image decoder's.
    pub max_image_pixels: u64,
}

impl Default for DetectorOptions {
    fn default() -> Self {
        Self {
            min_confidence: 0.5,
            max_results: 100,
            max_image_pixels: 40_000_000,
        }
    }
}

/// One box predictor: a 1×1 convolution for the box encodings and one for the class scores.
#[derive(Debug)]
struct BoxPredictor {
    encodings: Conv,
    classes: Conv,
}

/// The SSD MobileNet v1 face detector with folded weights, ready to run on the CPU in the
/// current rayon pool.
#[derive(Debug)]
pub struct Detector {
    stem: Conv,
    pairs: Vec<(Depthwise, Conv)>,
    extra: Vec<Conv>,
    predictors: Vec<BoxPredictor>,
    anchors: Vec<UnitBox>,
    options: DetectorOptions,
}

impl Detector {
    /// Builds the detector from `ssd_mobilenetv1_model`'s tensors (as
    /// [`crate::face::model::tfjs::read_tensors`] or the model file give them), checking every
    /// name and shape; tensors the network does not use are ignored.
    pub fn new(tensors: &HashMap<String, Tensor>) -> Result<Self, DetectError> {
        Self::with_options(tensors, DetectorOptions::default())
    }

    /// As [`Detector::new`], with `options`.
    pub fn with_options(
        tensors: &HashMap<String, Tensor>,
        options: DetectorOptions,
    ) -> Result<Self, DetectError> {
        if !(options.min_confidence > 0.0 && options.min_confidence < 1.0) {
            return Err(DetectError::InvalidOption {
                name: "min_confidence",
                reason: format!("{} is not in (0, 1)", options.min_confidence),
            });
        }
        let t = take_checked(&detector_tensor_specs(), tensors)?;
        let data = |name: String| -> Vec<f32> {
            // Invariant: take_checked admitted exactly the spec'd names, and only those are
            // asked for here.
            t.get(&name)
                .map(|tensor| tensor.data.clone())
                .unwrap_or_else(|| unreachable!("checked tensor {name} missing"))
        };
        let pointwise = |prefix: &str, k, stride, c_in, c_out| {
            let weights = data(format!("{prefix}/weights"));
            let bias = data(format!("{prefix}/convolution_bn_offset"));
            Conv::new(k, stride, c_in, c_out, weights, bias)
        };

        let stem = pointwise("MobilenetV1/Conv2d_0_pointwise", 3, 2, 3, 32);
        let pairs = MOBILENET_PAIRS
            .iter()
            .enumerate()
            .map(|(i, &(c_in, c_out, stride))| {
                let dw = format!("MobilenetV1/Conv2d_{}_depthwise", i + 1);
                let depthwise = fold_batch_norm(
                    stride,
                    c_in,
                    data(format!("{dw}/depthwise_weights")),
                    [
                        data(format!("{dw}/BatchNorm/gamma")),
                        data(format!("{dw}/BatchNorm/beta")),
                        data(format!("{dw}/BatchNorm/moving_mean")),
                        data(format!("{dw}/BatchNorm/moving_variance")),
                    ],
                );
                let pw = format!("MobilenetV1/Conv2d_{}_pointwise", i + 1);
                (depthwise, pointwise(&pw, 1, 1, c_in, c_out))
            })
            .collect();
        let extra = PREDICTION_CONVS
            .iter()
            .enumerate()
            .map(|(i, &(k, c_in, c_out, stride))| {
                pointwise(
                    &format!("Prediction/Conv2d_{i}_pointwise"),
                    k,
                    stride,
                    c_in,
                    c_out,
                )
            })
            .collect();
        let predictors = BOX_PREDICTORS
            .iter()
            .enumerate()
            .map(|(i, &(c_in, anchors))| {
                let head = |name: &str, per_anchor: usize| {
                    let prefix = format!("Prediction/BoxPredictor_{i}/{name}");
                    let weights = data(format!("{prefix}/weights"));
                    let bias = data(format!("{prefix}/biases"));
                    Conv::new(1, 1, c_in, anchors * per_anchor, weights, bias)
                };
                BoxPredictor {
                    encodings: head("BoxEncodingPredictor", 4),
                    classes: head("ClassPredictor", 3),
                }
            })
            .collect();
        let anchors = data("Output/extra_dim".into())
            .chunks_exact(4)
            .map(|a| [a[0], a[1], a[2], a[3]])
            .collect();
        Ok(Self {
            stem,
            pairs,
            extra,
            predictors,
            anchors,
            options,
        })
    }

    /// The options in force.
    pub fn options(&self) -> &DetectorOptions {
        &self.options
    }

    /// The faces in `image`, strongest first (the reference's order), boxes in image pixels.
    pub fn detect(&self, image: &RgbImage) -> Result<Vec<Detection>, DetectError> {
        let frame = self.frame(image)?;
        let outputs = self
            .forward(&detector_input(image))
            .pop()
            .unwrap_or_else(|| unreachable!("one output per input frame"));
        Ok(self.detections(&frame, &outputs))
    }

    /// Checks that `image` is one the detector takes and notes where it lies in the padded
    /// square. Every backend calls this before its forward pass.
    pub(crate) fn frame(&self, image: &RgbImage) -> Result<Frame, DetectError> {
        let (width, height) = (image.width(), image.height());
        let pixels = u64::from(width) * u64::from(height);
        if pixels > self.options.max_image_pixels {
            return Err(DetectError::ImageTooLarge {
                width,
                height,
                limit_pixels: self.options.max_image_pixels,
            });
        }
        // computeReshapedDimensions: the image's size inside the padded square, rounded.
        let size = DETECTOR_INPUT_SIZE as f64;
        let scale = size / f64::from(width.max(height));
        let reshaped_width = (f64::from(width) * scale + 0.5).floor();
        let reshaped_height = (f64::from(height) * scale + 0.5).floor();
        if reshaped_width < 1.0 || reshaped_height < 1.0 {
            return Err(DetectError::ImageShape { width, height });
        }
        Ok(Frame {
            width,
            height,
            reshaped: (reshaped_width, reshaped_height),
        })
    }

    /// The network's raw outputs for every frame of `inputs`: frames of
    /// [`DETECTOR_INPUT_SIZE`]² × 3 normalised values back to back, as [`detector_input`]
    /// makes them. All frames go through each layer together.
    pub fn forward(&self, inputs: &[f32]) -> Vec<SsdOutputs> {
        let side = DETECTOR_INPUT_SIZE;
        let n = inputs.len() / DETECTOR_INPUT_LEN;
        if n == 0 {
            return Vec::new();
        }
        let input = Activations {
            n,
            h: side,
            w: side,
            c: 3,
            data: inputs[..n * DETECTOR_INPUT_LEN].to_vec(),
        };

        let mut x = self.stem.forward(&input, Activation::Relu6);
        let mut conv11 = None;
        for (i, (depthwise, pointwise)) in self.pairs.iter().enumerate() {
            x = depthwise.forward(&x, Activation::Relu6);
            x = pointwise.forward(&x, Activation::Relu6);
            if i + 1 == 11 {
                conv11 = Some(x.clone());
            }
        }
        let conv11 = conv11.unwrap_or_else(|| unreachable!("MobileNetV1 has 13 pairs"));
        let mut extra = Vec::with_capacity(self.extra.len());
        let mut y = x.clone();
        for conv in &self.extra {
            y = conv.forward(&y, Activation::Relu6);
            extra.push(y.clone());
        }
        // The predictors' inputs: conv 11, the last pair, and every second extra layer.
        let sources = [&conv11, &x, &extra[1], &extra[3], &extra[5], &extra[7]];

        let mut outputs = SsdOutputs::for_frames(n);
        for (predictor, source) in self.predictors.iter().zip(sources) {
            let encodings = predictor.encodings.forward(source, Activation::Identity);
            let classes = predictor.classes.forward(source, Activation::Identity);
            let per_frame = (encodings.data.len() / n, classes.data.len() / n);
            for (b, out) in outputs.iter_mut().enumerate() {
                let encodings = &encodings.data[b * per_frame.0..(b + 1) * per_frame.0];
                let classes = &classes.data[b * per_frame.1..(b + 1) * per_frame.1];
                // Per cell, per anchor: 4 encoding values and 3 class values; anchors follow
                // cells in row-major order.
                for (encoding, class) in encodings.chunks_exact(4).zip(classes.chunks_exact(3)) {
                    out.push(encoding, class);
                }
            }
        }
        debug_assert!(outputs.iter().all(|o| o.scores.len() == ANCHOR_COUNT));
        outputs
    }

    /// The box predictors' two 1×1 convolutions each, (encodings, classes), in order, for the
    /// GPU to upload.
    pub(crate) fn predictor_convs(&self) -> impl Iterator<Item = (&Conv, &Conv)> {
        self.predictors.iter().map(|p| (&p.encodings, &p.classes))
    }

    /// The stem, the 13 (depthwise, pointwise) pairs and the 8 extra layers, for the GPU to
    /// upload.
    pub(crate) fn layers(&self) -> (&Conv, &[(Depthwise, Conv)], &[Conv]) {
        (&self.stem, &self.pairs, &self.extra)
    }

    /// The faces of `frame` from the network's `outputs` for it: boxes decoded against the
    /// anchors, non-max suppression, boxes scaled back to image pixels. Shared by every
    /// backend: only the forward pass differs between them.
    pub(crate) fn detections(&self, frame: &Frame, outputs: &SsdOutputs) -> Vec<Detection> {
        let boxes: Vec<UnitBox> = outputs
            .box_encodings
            .iter()
            .zip(&self.anchors)
            .map(|(&encoding, &anchor)| decode_box(anchor, encoding))
            .collect();
        let scores = &outputs.scores;
        let kept = non_max_suppression(
            &boxes,
            scores,
            self.options.max_results,
            IOU_THRESHOLD,
            self.options.min_confidence,
        );
        let size = DETECTOR_INPUT_SIZE as f64;
        let (reshaped_width, reshaped_height) = frame.reshaped;
        let (pad_x, pad_y) = (size / reshaped_width, size / reshaped_height);
        let (w, h) = (f64::from(frame.width), f64::from(frame.height));
        kept.into_iter()
            .filter_map(|i| {
                let [y0, x0, y1, x1] = boxes[i].map(f64::from);
                let (top, bottom) = (y0.max(0.0) * pad_y, y1.min(1.0) * pad_y);
                let (left, right) = (x0.max(0.0) * pad_x, x1.min(1.0) * pad_x);
                let detection = Detection {
                    x: left * w,
                    y: top * h,
                    width: (right - left) * w,
                    height: (bottom - top) * h,
                    score: scores[i],
                };
                // The reference throws on a box of negative size (one lying wholly outside the
                // unit square); such a box is dropped here instead.
                let finite = [detection.x, detection.y, detection.width, detection.height]
                    .iter()
                    .all(|v| v.is_finite());
                (finite && detection.width >= 0.0 && detection.height >= 0.0).then_some(detection)
            })
            .collect()
    }
}

/// Values of one frame of the detector's input: [`DETECTOR_INPUT_SIZE`]² × 3.
pub const DETECTOR_INPUT_LEN: usize = DETECTOR_INPUT_SIZE * DETECTOR_INPUT_SIZE * 3;

/// The detector's input for `image`: padded with zeros after to a square, bilinear-resized to
/// [`DETECTOR_INPUT_SIZE`]², scaled to -1..1; NHWC, [`DETECTOR_INPUT_LEN`] values.
pub fn detector_input(image: &RgbImage) -> Vec<f32> {
    let mut values = Vec::with_capacity(DETECTOR_INPUT_LEN);
    PaddedSquare::whole(image).resize_into(DETECTOR_INPUT_SIZE, &mut values);
    // tf.sub(tf.div(x, 127.5), 1): two f32 operations.
    for v in &mut values {
        *v = *v / 127.5 - 1.0;
    }
    values
}

/// An image the detector accepted: its size, and the size it has inside the padded square.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Frame {
    width: u32,
    height: u32,
    reshaped: (f64, f64),
}

/// The detector network's raw outputs for one frame, before decoding and non-max suppression:
/// for each of the [`ANCHOR_COUNT`] anchors (cells in row-major order, the anchors of a cell
/// together, the six feature maps in turn), its box encoding and its face score.
///
/// `Debug` shows the counts only: the encodings locate faces.
#[derive(Clone, PartialEq)]
pub struct SsdOutputs {
    /// `[ty, tx, th, tw]` of each anchor: centre offsets and log sizes relative to it.
    pub box_encodings: Vec<[f32; 4]>,
    /// The sigmoid of each anchor's face logit.
    pub scores: Vec<f32>,
}

impl std::fmt::Debug for SsdOutputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SsdOutputs({} anchors, redacted)", self.scores.len())
    }
}

impl SsdOutputs {
    fn with_capacity() -> Self {
        Self {
            box_encodings: Vec::with_capacity(ANCHOR_COUNT),
            scores: Vec::with_capacity(ANCHOR_COUNT),
        }
    }

    /// Appends one anchor from its 4 encoding values and its 3 class logits (background,
    /// face, and one the reference ignores).
    pub(crate) fn push(&mut self, encoding: &[f32], class: &[f32]) {
        self.box_encodings
            .push([encoding[0], encoding[1], encoding[2], encoding[3]]);
        self.scores.push(sigmoid(class[1]));
    }

    /// Outputs of the anchors of `frames` frames, each with room for every anchor.
    pub(crate) fn for_frames(frames: usize) -> Vec<Self> {
        (0..frames).map(|_| Self::with_capacity()).collect()
    }
}

/// Folds `(conv - mean) * gamma / sqrt(variance + eps) + beta` into the depthwise filters
/// and a bias, in f64 then rounded once.
fn fold_batch_norm(
    stride: usize,
    c: usize,
    filters: Vec<f32>,
    [gamma, beta, mean, variance]: [Vec<f32>; 4],
) -> Depthwise {
    let factor: Vec<f64> = gamma
        .iter()
        .zip(&variance)
        .map(|(&g, &v)| f64::from(g) / (f64::from(v) + BATCH_NORM_EPSILON).sqrt())
        .collect();
    let weights = filters
        .chunks_exact(c)
        .flat_map(|tap| {
            tap.iter()
                .zip(&factor)
                .map(|(&w, f)| (f64::from(w) * f) as f32)
        })
        .collect();
    let bias = beta
        .iter()
        .zip(&mean)
        .zip(&factor)
        .map(|((&b, &m), f)| (f64::from(b) - f64::from(m) * f) as f32)
        .collect();
    Depthwise::new(stride, c, weights, bias)
}
