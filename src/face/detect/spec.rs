//! The tensor tables of the detector and the landmark network: every tensor the code reads,
//! with its shape, derived from the layer tables below. Loading checks weights against them,
//! so a wrong or damaged file fails at load and never mid-inference.

use std::collections::HashMap;

use crate::face::model::{ModelError, Tensor};

/// MobileNetV1's depthwise-separable pairs after `Conv2d_0`: (input channels, output
/// channels, depthwise stride), for `Conv2d_1` to `Conv2d_13`.
pub(crate) const MOBILENET_PAIRS: [(usize, usize, usize); 13] = [
    (32, 64, 1),
    (64, 128, 2),
    (128, 128, 1),
    (128, 256, 2),
    (256, 256, 1),
    (256, 512, 2),
    (512, 512, 1),
    (512, 512, 1),
    (512, 512, 1),
    (512, 512, 1),
    (512, 512, 1),
    (512, 1024, 2),
    (1024, 1024, 1),
];

/// The SSD's extra feature layers `Prediction/Conv2d_0` to `_7`: (kernel, input channels,
/// output channels, stride).
pub(crate) const PREDICTION_CONVS: [(usize, usize, usize, usize); 8] = [
    (1, 1024, 256, 1),
    (3, 256, 512, 2),
    (1, 512, 128, 1),
    (3, 128, 256, 2),
    (1, 256, 128, 1),
    (3, 128, 256, 2),
    (1, 256, 64, 1),
    (3, 64, 128, 2),
];

/// The six box predictors: (input channels, anchors per cell).
pub(crate) const BOX_PREDICTORS: [(usize, usize); 6] =
    [(512, 3), (1024, 6), (512, 6), (256, 6), (256, 6), (128, 6)];

/// Anchors over all six feature maps (32², 16², 8², 4², 2², 1² cells).
pub(crate) const ANCHOR_COUNT: usize = 5118;

/// The landmark network's four dense blocks: (input channels, output channels).
pub(crate) const DENSE_BLOCKS: [(usize, usize); 4] = [(3, 32), (32, 64), (64, 128), (128, 256)];

/// The tiny landmark network's three dense blocks: (input channels, output channels).
pub(crate) const TINY_DENSE_BLOCKS: [(usize, usize); 3] = [(3, 32), (32, 64), (64, 128)];

/// The landmark network's output: 68 (x, y) pairs.
pub const LANDMARK_OUTPUTS: usize = 136;

/// Every tensor of `ssd_mobilenetv1_model` that the detector uses, with its shape.
pub fn detector_tensor_specs() -> Vec<(String, Vec<usize>)> {
    let mut specs = Vec::new();
    let pointwise = |specs: &mut Vec<_>, prefix: String, k: usize, c_in, c_out| {
        specs.push((format!("{prefix}/weights"), vec![k, k, c_in, c_out]));
        specs.push((format!("{prefix}/convolution_bn_offset"), vec![c_out]));
    };
    pointwise(
        &mut specs,
        "MobilenetV1/Conv2d_0_pointwise".into(),
        3,
        3,
        32,
    );
    for (i, &(c_in, c_out, _)) in MOBILENET_PAIRS.iter().enumerate() {
        let depthwise = format!("MobilenetV1/Conv2d_{}_depthwise", i + 1);
        specs.push((
            format!("{depthwise}/depthwise_weights"),
            vec![3, 3, c_in, 1],
        ));
        for part in ["gamma", "beta", "moving_mean", "moving_variance"] {
            specs.push((format!("{depthwise}/BatchNorm/{part}"), vec![c_in]));
        }
        let prefix = format!("MobilenetV1/Conv2d_{}_pointwise", i + 1);
        pointwise(&mut specs, prefix, 1, c_in, c_out);
    }
    for (i, &(k, c_in, c_out, _)) in PREDICTION_CONVS.iter().enumerate() {
        pointwise(
            &mut specs,
            format!("Prediction/Conv2d_{i}_pointwise"),
            k,
            c_in,
            c_out,
        );
    }
    for (i, &(c_in, anchors)) in BOX_PREDICTORS.iter().enumerate() {
        for (head, per_anchor) in [("BoxEncodingPredictor", 4), ("ClassPredictor", 3)] {
            let prefix = format!("Prediction/BoxPredictor_{i}/{head}");
            specs.push((
                format!("{prefix}/weights"),
                vec![1, 1, c_in, anchors * per_anchor],
            ));
            specs.push((format!("{prefix}/biases"), vec![anchors * per_anchor]));
        }
    }
    specs.push(("Output/extra_dim".into(), vec![1, ANCHOR_COUNT, 4]));
    specs
}

/// Every tensor of `face_landmark_68_model`, with its shape.
pub fn landmark_tensor_specs() -> Vec<(String, Vec<usize>)> {
    dense_net_specs(&DENSE_BLOCKS, 4)
}

/// Every tensor of `face_landmark_68_tiny_model`, with its shape.
pub fn tiny_landmark_tensor_specs() -> Vec<(String, Vec<usize>)> {
    dense_net_specs(&TINY_DENSE_BLOCKS, 3)
}

/// Dense blocks of `convs` convolutions each (the first a full 3×3 in the first block), then
/// the fully connected layer.
fn dense_net_specs(blocks: &[(usize, usize)], convs: usize) -> Vec<(String, Vec<usize>)> {
    let mut specs = Vec::new();
    for (i, &(c_in, c_out)) in blocks.iter().enumerate() {
        for conv in 0..convs {
            let prefix = format!("dense{i}/conv{conv}");
            let c = if conv == 0 { c_in } else { c_out };
            if i == 0 && conv == 0 {
                specs.push((format!("{prefix}/filters"), vec![3, 3, c, c_out]));
            } else {
                specs.push((format!("{prefix}/depthwise_filter"), vec![3, 3, c, 1]));
                specs.push((format!("{prefix}/pointwise_filter"), vec![1, 1, c, c_out]));
            }
            specs.push((format!("{prefix}/bias"), vec![c_out]));
        }
    }
    let features = blocks.last().map_or(0, |&(_, c)| c);
    specs.push(("fc/weights".into(), vec![features, LANDMARK_OUTPUTS]));
    specs.push(("fc/bias".into(), vec![LANDMARK_OUTPUTS]));
    specs
}

/// Takes from `tensors` exactly the tensors of `specs`, checking shapes and finiteness. Other
/// tensors (the SSD manifest's unused graph constants) are left behind.
pub(crate) fn take_checked(
    specs: &[(String, Vec<usize>)],
    tensors: &HashMap<String, Tensor>,
) -> Result<HashMap<String, Tensor>, ModelError> {
    let mut checked = HashMap::with_capacity(specs.len());
    for (name, shape) in specs {
        let tensor = tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor { name: name.clone() })?;
        if &tensor.shape != shape || tensor.data.len() != shape.iter().product::<usize>() {
            return Err(ModelError::ShapeMismatch {
                name: name.clone(),
                expected: shape.clone(),
                actual: tensor.shape.clone(),
            });
        }
        if let Some(index) = tensor.data.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::NonFinite {
                name: name.clone(),
                index,
            });
        }
        checked.insert(name.clone(), tensor.clone());
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchor_count_matches_the_feature_maps() {
        let cells = [32 * 32, 16 * 16, 8 * 8, 4 * 4, 2 * 2, 1];
        let anchors: usize = cells
            .iter()
            .zip(BOX_PREDICTORS)
            .map(|(c, (_, a))| c * a)
            .sum();
        assert_eq!(anchors, ANCHOR_COUNT);
    }

    #[test]
    fn tensor_counts() {
        // 151 in the manifest, less 17 graph constants (slice bounds, axes) the code never reads.
        assert_eq!(detector_tensor_specs().len(), 134);
        assert_eq!(landmark_tensor_specs().len(), 49);
        assert_eq!(tiny_landmark_tensor_specs().len(), 28);
    }
}
