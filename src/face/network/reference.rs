//! The network exactly as MODEL.md states it, written for reading rather than speed: each
//! convolution is a direct loop nest, followed by the separate bias add, scale step and ReLU.
//! It is the oracle the fast path is tested against; use [`super::CpuNetwork`] to serve.

use crate::face::model::{
    ARCHITECTURE, BlockKind, ConvSpec, DESCRIPTOR_DIM, FaceModel, INPUT_SIZE,
};
use crate::face::preprocess::FaceBatch;

use super::Descriptor;
use super::tensor::FeatureMap;

/// Descriptors of every face in `batch`, one at a time, by the plain algorithm.
pub fn describe(model: &FaceModel, batch: &FaceBatch) -> Vec<Descriptor> {
    let input = FeatureMap {
        n: batch.len(),
        h: INPUT_SIZE,
        w: INPUT_SIZE,
        c: 3,
        data: batch.as_slice().to_vec(),
    };

    let stem = crate::face::model::conv_specs().remove(0);
    let mut x = conv_layer(model, &stem, &input, true);
    x = x.max_pool(3, 2);
    for block in &ARCHITECTURE {
        let [conv1, conv2] = block.convs();
        let y = conv_layer(model, &conv1, &x, true);
        let y = conv_layer(model, &conv2, &y, false);
        x = match block.kind {
            BlockKind::Residual => add_relu(&y, &x),
            BlockKind::Down => y.add_pooled_shortcut_relu(&x),
        };
    }

    let pooled = x.spatial_mean();
    let fc = model.expect_tensor("fc");
    pooled
        .chunks_exact(x.c)
        .map(|features| {
            let mut out = [0.0f32; DESCRIPTOR_DIM];
            for (i, &f) in features.iter().enumerate() {
                let row = &fc.data[i * DESCRIPTOR_DIM..(i + 1) * DESCRIPTOR_DIM];
                for (o, &w) in out.iter_mut().zip(row) {
                    *o += f * w;
                }
            }
            Descriptor::new(out)
        })
        .collect()
}

/// `conv → + bias → × scale/weights + scale/biases → ReLU?`, one step at a time.
fn conv_layer(model: &FaceModel, spec: &ConvSpec, x: &FeatureMap, relu: bool) -> FeatureMap {
    let param = |suffix: &str| {
        &model
            .expect_tensor(&format!("{}/{suffix}", spec.prefix))
            .data
    };
    let (filters, bias) = (param("conv/filters"), param("conv/bias"));
    let (scale, shift) = (param("scale/weights"), param("scale/biases"));

    let mut y = conv2d(x, filters, spec);
    for out in y.data.chunks_exact_mut(spec.c_out) {
        for (ch, v) in out.iter_mut().enumerate() {
            *v += bias[ch];
            *v = *v * scale[ch] + shift[ch];
            if relu {
                *v = v.max(0.0);
            }
        }
    }
    y
}

/// Direct convolution; filters `[k, k, c_in, c_out]`, zero padding per `spec`.
fn conv2d(x: &FeatureMap, filters: &[f32], spec: &ConvSpec) -> FeatureMap {
    let (k, s, pad) = (spec.kernel, spec.stride, spec.pad_before());
    let (ho, wo) = (spec.output_size(x.h), spec.output_size(x.w));
    let mut y = FeatureMap::zeros(x.n, ho, wo, spec.c_out);
    for b in 0..x.n {
        for oy in 0..ho {
            for ox in 0..wo {
                let o = y.index(b, oy, ox);
                let out = &mut y.data[o..o + spec.c_out];
                for ky in 0..k {
                    let Some(iy) = (oy * s + ky).checked_sub(pad).filter(|&iy| iy < x.h) else {
                        continue;
                    };
                    for kx in 0..k {
                        let Some(ix) = (ox * s + kx).checked_sub(pad).filter(|&ix| ix < x.w) else {
                            continue;
                        };
                        let i = x.index(b, iy, ix);
                        for ci in 0..spec.c_in {
                            let v = x.data[i + ci];
                            let w = ((ky * k + kx) * spec.c_in + ci) * spec.c_out;
                            for (acc, &f) in out.iter_mut().zip(&filters[w..w + spec.c_out]) {
                                *acc += v * f;
                            }
                        }
                    }
                }
            }
        }
    }
    y
}

fn add_relu(y: &FeatureMap, shortcut: &FeatureMap) -> FeatureMap {
    let mut out = y.clone();
    for (v, &s) in out.data.iter_mut().zip(&shortcut.data) {
        *v = (*v + s).max(0.0);
    }
    out
}
