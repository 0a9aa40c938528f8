//! The network as data: the sequence of dispatches of one pass, which buffer each reads and
//! writes, the shapes it works on, and the parameter block and workgroup count each kernel gets
//! for a pass of a given number of faces.
//!
//! Three activation buffers rotate: a residual block reads its input `x`, writes `y`, then
//! `z` from `y` with `x` as the shortcut; a down block writes its tail back into `y`. No
//! dispatch writes a buffer it reads (a unit test checks), which WebGPU forbids within one
//! dispatch anyway.

use bytemuck::{Pod, Zeroable};

use super::DeviceConv;
use crate::engine::gpu::shaders::{
    ConvParams, FACE_TILE_CHANNELS, FACE_TILE_PIXELS, FLAG_RELU, FLAG_SHORTCUT, Kernel,
    WORKGROUP_SIZE,
};
use crate::face::model::{ARCHITECTURE, BlockKind, ConvSpec, HEAD_IN, INPUT_SIZE};

/// Where an operation reads or writes: the crops, one of three activation buffers, or the
/// descriptors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Slot {
    Input,
    Activation(usize),
    Descriptors,
}

/// An `h × w × c` map of one face.
#[derive(Clone, Copy, Debug)]
pub(super) struct Shape {
    pub h: usize,
    pub w: usize,
    pub c: usize,
}

impl Shape {
    fn len(self) -> usize {
        self.h * self.w * self.c
    }
}

/// One dispatch of a pass.
#[derive(Clone, Copy, Debug)]
pub(super) enum Op {
    Conv {
        conv: usize,
        input: Slot,
        shortcut: Option<Slot>,
        output: Slot,
        relu: bool,
        from: Shape,
        to: Shape,
    },
    MaxPool {
        input: Slot,
        output: Slot,
        from: Shape,
        to: Shape,
    },
    DownShortcut {
        conv: Slot,
        input: Slot,
        output: Slot,
        conv_shape: Shape,
        from: Shape,
        to: Shape,
    },
    Head {
        input: Slot,
        from: Shape,
    },
}

/// `PoolParams` of face_pool.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct PoolParams {
    faces: u32,
    in_h: u32,
    in_w: u32,
    channels: u32,
    out_h: u32,
    out_w: u32,
    window: u32,
    stride: u32,
}

/// `ShortcutParams` of face_shortcut.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ShortcutParams {
    faces: u32,
    in_h: u32,
    in_w: u32,
    in_c: u32,
    conv_h: u32,
    conv_w: u32,
    out_h: u32,
    out_w: u32,
    out_c: u32,
    unused: [u32; 3],
}

/// `HeadParams` of face_head.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct HeadParams {
    faces: u32,
    pixels: u32,
    unused: [u32; 2],
}

/// Largest parameter block of any kernel, in bytes.
pub(super) const MAX_PARAMS_BYTES: u64 = 48;

/// The max pool after the stem: 3 × 3, stride 2, VALID.
const POOL_WINDOW: usize = 3;
const POOL_STRIDE: usize = 2;

/// The network as a list of dispatches over three rotating activation buffers, the same
/// sequence as [`CpuNetwork`](super::CpuNetwork)'s forward pass.
pub(super) fn program(specs: &[ConvSpec]) -> Vec<Op> {
    let conv_op = |conv: usize, input, shortcut, output, relu, from: Shape| {
        let spec = &specs[conv];
        let side = |s| spec.output_size(s);
        let to = Shape {
            h: side(from.h),
            w: side(from.w),
            c: spec.c_out,
        };
        let op = Op::Conv {
            conv,
            input,
            shortcut,
            output,
            relu,
            from,
            to,
        };
        (op, to)
    };
    let input_shape = Shape {
        h: INPUT_SIZE,
        w: INPUT_SIZE,
        c: 3,
    };
    let mut ops = Vec::new();
    let (stem, stem_out) = conv_op(0, Slot::Input, None, Slot::Activation(0), true, input_shape);
    ops.push(stem);
    let pooled = Shape {
        h: (stem_out.h - POOL_WINDOW) / POOL_STRIDE + 1,
        w: (stem_out.w - POOL_WINDOW) / POOL_STRIDE + 1,
        c: stem_out.c,
    };
    ops.push(Op::MaxPool {
        input: Slot::Activation(0),
        output: Slot::Activation(1),
        from: stem_out,
        to: pooled,
    });

    let (mut x, mut shape) = (1, pooled);
    for (b, block) in ARCHITECTURE.iter().enumerate() {
        let (y, z) = ((x + 1) % 3, (x + 2) % 3);
        let act = Slot::Activation;
        let (first, second) = (1 + 2 * b, 2 + 2 * b);
        let (conv1, mid) = conv_op(first, act(x), None, act(y), true, shape);
        ops.push(conv1);
        match block.kind {
            BlockKind::Residual => {
                let (conv2, out) = conv_op(second, act(y), Some(act(x)), act(z), true, mid);
                ops.push(conv2);
                (x, shape) = (z, out);
            }
            BlockKind::Down => {
                let (conv2, conv_shape) = conv_op(second, act(y), None, act(z), false, mid);
                ops.push(conv2);
                let to = Shape {
                    h: (shape.h - 2) / 2 + 1,
                    w: (shape.w - 2) / 2 + 1,
                    c: block.c_out,
                };
                ops.push(Op::DownShortcut {
                    conv: act(z),
                    input: act(x),
                    output: act(y),
                    conv_shape,
                    from: shape,
                    to,
                });
                (x, shape) = (y, to);
            }
        }
    }
    debug_assert_eq!(shape.c, HEAD_IN);
    ops.push(Op::Head {
        input: Slot::Activation(x),
        from: shape,
    });
    ops
}

impl Op {
    pub(super) fn kernel(&self) -> Kernel {
        match self {
            Op::Conv { .. } => Kernel::FaceConv,
            Op::MaxPool { .. } => Kernel::FacePool,
            Op::DownShortcut { .. } => Kernel::FaceShortcut,
            Op::Head { .. } => Kernel::FaceHead,
        }
    }

    /// Values of one face this operation writes into an activation buffer.
    pub(super) fn output_len(&self) -> usize {
        match self {
            Op::Conv { to, .. } | Op::MaxPool { to, .. } | Op::DownShortcut { to, .. } => to.len(),
            Op::Head { .. } => 0,
        }
    }

    pub(super) fn params_len(&self) -> u64 {
        let bytes = match self {
            Op::Conv { .. } => size_of::<ConvParams>(),
            Op::MaxPool { .. } => size_of::<PoolParams>(),
            Op::DownShortcut { .. } => size_of::<ShortcutParams>(),
            Op::Head { .. } => size_of::<HeadParams>(),
        };
        bytes as u64
    }

    /// The kernel's parameter block for a pass of `faces`.
    pub(super) fn params(&self, convs: &[DeviceConv], faces: usize) -> Vec<u8> {
        let n = faces as u32;
        let u = |v: usize| v as u32;
        match *self {
            Op::Conv {
                conv,
                shortcut,
                relu,
                from,
                to,
                ..
            } => {
                let spec = &convs[conv].spec;
                let flags = if relu { FLAG_RELU } else { 0 }
                    | if shortcut.is_some() { FLAG_SHORTCUT } else { 0 };
                let params = ConvParams {
                    faces: n,
                    in_h: u(from.h),
                    in_w: u(from.w),
                    in_c: u(from.c),
                    out_h: u(to.h),
                    out_w: u(to.w),
                    out_c: u(to.c),
                    kernel: u(spec.kernel),
                    stride: u(spec.stride),
                    pad: u(spec.pad_before()),
                    flags,
                    unused: 0,
                };
                bytemuck::bytes_of(&params).to_vec()
            }
            Op::MaxPool { from, to, .. } => bytemuck::bytes_of(&PoolParams {
                faces: n,
                in_h: u(from.h),
                in_w: u(from.w),
                channels: u(from.c),
                out_h: u(to.h),
                out_w: u(to.w),
                window: u(POOL_WINDOW),
                stride: u(POOL_STRIDE),
            })
            .to_vec(),
            Op::DownShortcut {
                conv_shape,
                from,
                to,
                ..
            } => bytemuck::bytes_of(&ShortcutParams {
                faces: n,
                in_h: u(from.h),
                in_w: u(from.w),
                in_c: u(from.c),
                conv_h: u(conv_shape.h),
                conv_w: u(conv_shape.w),
                out_h: u(to.h),
                out_w: u(to.w),
                out_c: u(to.c),
                unused: [0; 3],
            })
            .to_vec(),
            Op::Head { from, .. } => bytemuck::bytes_of(&HeadParams {
                faces: n,
                pixels: u(from.h * from.w),
                unused: [0; 2],
            })
            .to_vec(),
        }
    }

    /// The dispatch for a pass of `faces`.
    pub(super) fn workgroups(&self, faces: usize, max_x: u32) -> (u32, u32) {
        let per_thread_vec4 = |shape: Shape| faces * shape.h * shape.w * shape.c / 4;
        match *self {
            Op::Conv { to, .. } => {
                let pixels = faces * to.h * to.w;
                let x = pixels.div_ceil(FACE_TILE_PIXELS as usize);
                (x as u32, (to.c / FACE_TILE_CHANNELS as usize) as u32)
            }
            Op::MaxPool { to, .. } | Op::DownShortcut { to, .. } => {
                grid(per_thread_vec4(to).div_ceil(WORKGROUP_SIZE as usize), max_x)
            }
            Op::Head { .. } => grid(faces, max_x),
        }
    }
}

/// `groups` workgroups as a 2-D grid within the per-dimension limit; the kernels number them
/// `y * x_count + x` and skip those past the end.
fn grid(groups: usize, max_x: u32) -> (u32, u32) {
    let max_x = max_x.max(1) as usize;
    if groups <= max_x {
        return (groups as u32, 1);
    }
    (max_x as u32, groups.div_ceil(max_x) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::face::model::conv_specs;

    #[test]
    fn grids_stay_within_the_dimension_limit() {
        assert_eq!(grid(10, 65_535), (10, 1));
        assert_eq!(grid(70_000, 65_535), (65_535, 2));
        let (x, y) = grid(1_000_003, 1_000);
        assert!(x as usize * y as usize >= 1_000_003 && x <= 1_000);
    }

    #[test]
    fn the_program_is_the_network_and_never_writes_what_it_reads() {
        let ops = program(&conv_specs());
        let convs = ops
            .iter()
            .filter(|op| matches!(op, Op::Conv { .. }))
            .count();
        assert_eq!((ops.len(), convs), (35, 29));
        let Some(Op::Head { input, from }) = ops.last() else {
            panic!("the program ends with the head");
        };
        assert_eq!((from.h, from.w, from.c), (2, 2, HEAD_IN));
        assert_eq!(ops.iter().map(Op::output_len).max(), Some(72 * 72 * 32));

        // Each operation reads the previous one's output, and writes none of its inputs.
        let mut last = Slot::Input;
        for op in &ops[..ops.len() - 1] {
            let (reads, output) = match *op {
                Op::Conv {
                    input,
                    shortcut,
                    output,
                    ..
                } => (vec![Some(input), shortcut], output),
                Op::MaxPool { input, output, .. } => (vec![Some(input)], output),
                Op::DownShortcut {
                    conv,
                    input,
                    output,
                    ..
                } => (vec![Some(conv), Some(input)], output),
                Op::Head { .. } => unreachable!(),
            };
            assert!(reads.contains(&Some(last)), "{op:?} does not read {last:?}");
            assert!(
                !reads.contains(&Some(output)),
                "{op:?} writes what it reads"
            );
            last = output;
        }
        assert_eq!(*input, last);
    }
}
