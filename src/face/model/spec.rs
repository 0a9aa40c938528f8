//! The layer table of the descriptor network (MODEL.md), as data: block names, kinds and channel
//! counts, from which tensor names, shapes and convolution parameters are derived.

/// How a convolution treats the border.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// No padding: `ceil((in - k + 1) / stride)` outputs.
    Valid,
    /// TF "SAME" for the odd kernels and stride 1 used here: `k / 2` zeros on each side.
    Same,
}

/// One convolution with its bias and folded batch-norm ("scale") step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvSpec {
    /// Tensor name prefix, e.g. `conv64_down/conv1`.
    pub prefix: String,
    /// Kernel side (square kernels only).
    pub kernel: usize,
    /// Stride in both directions.
    pub stride: usize,
    /// Border handling.
    pub padding: Padding,
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
}

impl ConvSpec {
    /// Output side for an input side of `size`.
    pub fn output_size(&self, size: usize) -> usize {
        match self.padding {
            Padding::Same => size.div_ceil(self.stride),
            Padding::Valid => (size + 1).saturating_sub(self.kernel).div_ceil(self.stride),
        }
    }

    /// Zeros added before the first row and column.
    pub fn pad_before(&self) -> usize {
        match self.padding {
            Padding::Same => self.kernel / 2,
            Padding::Valid => 0,
        }
    }
}

/// The two kinds of residual block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    /// Two 3×3 SAME convolutions and an identity shortcut.
    Residual,
    /// A 3×3 stride-2 VALID convolution, a 3×3 SAME one, and a 2×2 average-pool shortcut.
    Down,
}

/// One residual block of the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    /// Tensor name prefix, e.g. `conv64_down`.
    pub name: &'static str,
    /// Residual or down-sampling.
    pub kind: BlockKind,
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
}

impl Block {
    /// The block's two convolutions.
    pub fn convs(&self) -> [ConvSpec; 2] {
        let (stride, padding) = match self.kind {
            BlockKind::Residual => (1, Padding::Same),
            BlockKind::Down => (2, Padding::Valid),
        };
        [
            ConvSpec {
                prefix: format!("{}/conv1", self.name),
                kernel: 3,
                stride,
                padding,
                c_in: self.c_in,
                c_out: self.c_out,
            },
            ConvSpec {
                prefix: format!("{}/conv2", self.name),
                kernel: 3,
                stride: 1,
                padding: Padding::Same,
                c_in: self.c_out,
                c_out: self.c_out,
            },
        ]
    }
}

const fn residual(name: &'static str, channels: usize) -> Block {
    Block {
        name,
        kind: BlockKind::Residual,
        c_in: channels,
        c_out: channels,
    }
}

const fn down(name: &'static str, c_in: usize, c_out: usize) -> Block {
    Block {
        name,
        kind: BlockKind::Down,
        c_in,
        c_out,
    }
}

/// The residual blocks between the stem (conv32_down + max pool) and the head (mean + fc).
pub const ARCHITECTURE: [Block; 14] = [
    residual("conv32_1", 32),
    residual("conv32_2", 32),
    residual("conv32_3", 32),
    down("conv64_down", 32, 64),
    residual("conv64_1", 64),
    residual("conv64_2", 64),
    residual("conv64_3", 64),
    down("conv128_down", 64, 128),
    residual("conv128_1", 128),
    residual("conv128_2", 128),
    down("conv256_down", 128, 256),
    residual("conv256_1", 256),
    residual("conv256_2", 256),
    down("conv256_down_out", 256, 256),
];

/// The stem convolution: 7×7, stride 2, VALID, 3→32.
pub fn stem_spec() -> ConvSpec {
    ConvSpec {
        prefix: "conv32_down".to_owned(),
        kernel: 7,
        stride: 2,
        padding: Padding::Valid,
        c_in: 3,
        c_out: 32,
    }
}

/// Every convolution in execution order (29).
pub fn conv_specs() -> Vec<ConvSpec> {
    let mut specs = vec![stem_spec()];
    specs.extend(ARCHITECTURE.iter().flat_map(Block::convs));
    specs
}

/// Side of the final feature map (2) and its channels (256), before the mean.
pub const HEAD_IN: usize = 256;

/// Every tensor name with its shape, in the order of the published manifest.
pub fn tensor_specs() -> Vec<(String, Vec<usize>)> {
    let mut specs = Vec::with_capacity(117);
    for conv in conv_specs() {
        let ConvSpec {
            prefix,
            kernel,
            c_in,
            c_out,
            ..
        } = conv;
        specs.push((
            format!("{prefix}/conv/filters"),
            vec![kernel, kernel, c_in, c_out],
        ));
        specs.push((format!("{prefix}/conv/bias"), vec![c_out]));
        specs.push((format!("{prefix}/scale/weights"), vec![c_out]));
        specs.push((format!("{prefix}/scale/biases"), vec![c_out]));
    }
    specs.push(("fc".to_owned(), vec![HEAD_IN, super::DESCRIPTOR_DIM]));
    specs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_and_conv_counts_match_model_md() {
        let params: usize = tensor_specs()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(params, 5_614_592);
        assert_eq!(conv_specs().len(), 29);
        assert_eq!(tensor_specs().len(), 117);
    }

    #[test]
    fn output_sizes_follow_tf_rules() {
        let stem = stem_spec();
        assert_eq!(stem.output_size(150), 72);
        let down = ARCHITECTURE[3].convs();
        assert_eq!(down[0].output_size(35), 17);
        assert_eq!(down[0].output_size(8), 3);
        assert_eq!(down[0].output_size(4), 1);
        assert_eq!(down[1].output_size(3), 3);
    }
}
