//! A network as a list of dispatches on a device, for the detector and the landmark network
//! alike: the layers' folded weights uploaded once, which buffer each dispatch reads and
//! writes, and the passes that run a batch through them.
//!
//! [`ProgramBuilder`] takes the CPU path's own layers ([`Conv`], [`Depthwise`]), so the GPU
//! runs exactly the weights the CPU folded. Each layer is one dispatch over every item (frame
//! or face) of a pass: full and 1×1 convolutions through `face_conv.wgsl` (the descriptor
//! network's implicit matrix product, with its ReLU6 flag), 3×3 depthwise convolutions through
//! `face_depthwise.wgsl`, the landmark head through `landmark_head.wgsl`. All dispatches of a
//! pass go in one submission, with one upload of the inputs before it and one read-back of
//! the outputs after it.

use std::num::NonZeroU64;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex, PoisonError};

use bytemuck::{Pod, Zeroable};

use crate::engine::gpu::shaders::{
    ConvParams, FACE_TILE_CHANNELS, FACE_TILE_PIXELS, Kernel, Pipeline, WORKGROUP_SIZE,
};
use crate::engine::gpu::{GpuContext, GpuError};
use crate::face::detect::layers::{Conv, Depthwise, same_padding};

/// Pre-fill of the output buffers: a NaN the kernels never produce from finite inputs, so an
/// output left unwritten shows.
const SENTINEL: u32 = 0x7FC0_DE7E;

/// Largest parameter block of any kernel, in bytes.
const MAX_PARAMS_BYTES: u64 = 48;

/// Where a dispatch reads or writes: the pass's inputs, an activation buffer, or an output
/// buffer that is read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Slot {
    Input,
    Activation(usize),
    Output(usize),
}

/// An `h × w × c` map of one item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Shape {
    pub h: usize,
    pub w: usize,
    pub c: usize,
}

impl Shape {
    pub fn len(self) -> usize {
        self.h * self.w * self.c
    }
}

/// One dispatch; `layer` indexes the uploaded weights.
#[derive(Clone, Copy, Debug)]
pub(super) enum Op {
    Conv {
        layer: usize,
        input: Slot,
        shortcut: Option<Slot>,
        output: Slot,
        from: Shape,
        to: Shape,
        kernel: usize,
        stride: usize,
        pad: usize,
        flags: u32,
    },
    Depthwise {
        layer: usize,
        input: Slot,
        output: Slot,
        from: Shape,
        to: Shape,
        stride: usize,
        pad: usize,
        flags: u32,
    },
    Head {
        layer: usize,
        input: Slot,
        output: Slot,
        from: Shape,
        outputs: usize,
    },
}

/// `DepthwiseParams` of face_depthwise.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct DepthwiseParams {
    images: u32,
    in_h: u32,
    in_w: u32,
    channels: u32,
    out_h: u32,
    out_w: u32,
    stride: u32,
    pad: u32,
    flags: u32,
    unused: [u32; 3],
}

/// `LandmarkHeadParams` of landmark_head.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct HeadParams {
    faces: u32,
    pixels: u32,
    features: u32,
    outputs: u32,
}

impl Op {
    fn kernel(&self) -> Kernel {
        match self {
            Op::Conv { .. } => Kernel::FaceConv,
            Op::Depthwise { .. } => Kernel::FaceDepthwise,
            Op::Head { .. } => Kernel::LandmarkHead,
        }
    }

    /// The slots read and the slot written.
    fn reads_writes(&self) -> (Vec<Slot>, Slot) {
        match *self {
            Op::Conv {
                input,
                shortcut,
                output,
                ..
            } => (std::iter::once(input).chain(shortcut).collect(), output),
            Op::Depthwise { input, output, .. } | Op::Head { input, output, .. } => {
                (vec![input], output)
            }
        }
    }

    /// Values of one item this dispatch writes.
    fn output_len(&self) -> usize {
        match *self {
            Op::Conv { to, .. } | Op::Depthwise { to, .. } => to.len(),
            Op::Head { outputs, .. } => outputs,
        }
    }

    fn params(&self, items: usize) -> Vec<u8> {
        let (n, u) = (items as u32, |v: usize| v as u32);
        match *self {
            Op::Conv {
                from,
                to,
                kernel,
                stride,
                pad,
                flags,
                ..
            } => bytemuck::bytes_of(&ConvParams {
                faces: n,
                in_h: u(from.h),
                in_w: u(from.w),
                in_c: u(from.c),
                out_h: u(to.h),
                out_w: u(to.w),
                out_c: u(to.c),
                kernel: u(kernel),
                stride: u(stride),
                pad: u(pad),
                flags,
                unused: 0,
            })
            .to_vec(),
            Op::Depthwise {
                from,
                to,
                stride,
                pad,
                flags,
                ..
            } => bytemuck::bytes_of(&DepthwiseParams {
                images: n,
                in_h: u(from.h),
                in_w: u(from.w),
                channels: u(from.c),
                out_h: u(to.h),
                out_w: u(to.w),
                stride: u(stride),
                pad: u(pad),
                flags,
                unused: [0; 3],
            })
            .to_vec(),
            Op::Head { from, outputs, .. } => bytemuck::bytes_of(&HeadParams {
                faces: n,
                pixels: u(from.h * from.w),
                features: u(from.c),
                outputs: u(outputs),
            })
            .to_vec(),
        }
    }

    fn params_len(&self) -> u64 {
        let bytes = match self {
            Op::Conv { .. } => size_of::<ConvParams>(),
            Op::Depthwise { .. } => size_of::<DepthwiseParams>(),
            Op::Head { .. } => size_of::<HeadParams>(),
        };
        bytes as u64
    }

    /// The dispatch for a pass of `items`.
    fn workgroups(&self, items: usize, max_x: u32) -> (u32, u32) {
        match *self {
            Op::Conv { to, .. } => {
                let pixels = items * to.h * to.w;
                let x = pixels.div_ceil(FACE_TILE_PIXELS as usize);
                (x as u32, (to.c / FACE_TILE_CHANNELS as usize) as u32)
            }
            Op::Depthwise { to, .. } => {
                let threads = items * to.h * to.w * to.c / 4;
                grid(threads.div_ceil(WORKGROUP_SIZE as usize), max_x)
            }
            Op::Head { .. } => grid(items, max_x),
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

/// One layer's weights and bias in device memory.
struct DeviceLayer {
    weights: wgpu::Buffer,
    bias: wgpu::Buffer,
}

/// Builds a [`DeviceProgram`]: uploads each layer as it is added and records its dispatch.
pub(super) struct ProgramBuilder {
    ctx: GpuContext,
    label: &'static str,
    input: Shape,
    layers: Vec<DeviceLayer>,
    ops: Vec<Op>,
}

impl ProgramBuilder {
    /// A program named `label` (for errors and debuggers) over items of shape `input`.
    pub fn new(ctx: GpuContext, label: &'static str, input: Shape) -> Self {
        Self {
            ctx,
            label,
            input,
            layers: Vec::new(),
            ops: Vec::new(),
        }
    }

    fn upload(&mut self, weights: &[f32], bias: &[f32]) -> Result<usize, GpuError> {
        let storage = wgpu::BufferUsages::STORAGE;
        let weights = self
            .ctx
            .buffer_with(self.label, bytemuck::cast_slice(weights), storage)?;
        let bias = self
            .ctx
            .buffer_with(self.label, bytemuck::cast_slice(bias), storage)?;
        self.layers.push(DeviceLayer { weights, bias });
        Ok(self.layers.len() - 1)
    }

    /// A refusal of a layer the kernels do not take (a bug in the program, not the input).
    fn unsupported(&self, kernel: Kernel, message: String) -> GpuError {
        GpuError::Shader {
            shader: kernel.name(),
            message: format!("{}: {message}", self.label),
        }
    }

    /// SAME padding of a square map: the output side and the zeros before.
    fn same(
        &self,
        kernel: Kernel,
        from: Shape,
        k: usize,
        s: usize,
    ) -> Result<(usize, usize), GpuError> {
        if from.h != from.w {
            let message = format!("{}x{} map is not square", from.h, from.w);
            return Err(self.unsupported(kernel, message));
        }
        Ok(same_padding(from.h, k, s))
    }

    /// `conv` on `input` (of shape `from`), with `shortcut` added before the activation
    /// `flags`, into `output`; returns the output's shape.
    pub fn conv(
        &mut self,
        conv: &Conv,
        (input, shortcut, output): (Slot, Option<Slot>, Slot),
        from: Shape,
        flags: u32,
    ) -> Result<Shape, GpuError> {
        let (k, s) = (conv.kernel(), conv.stride());
        self.conv_raw(
            (k, s, conv.c_out()),
            (conv.weights(), conv.bias()),
            (input, shortcut, output),
            from,
            flags,
        )
    }

    /// A convolution of side `k`, stride `s` and `c_out` channels from its filters
    /// (`[k, k, from.c, c_out]`) and bias.
    pub fn conv_raw(
        &mut self,
        (k, s, c_out): (usize, usize, usize),
        (weights, bias): (&[f32], &[f32]),
        (input, shortcut, output): (Slot, Option<Slot>, Slot),
        from: Shape,
        flags: u32,
    ) -> Result<Shape, GpuError> {
        if !c_out.is_multiple_of(FACE_TILE_CHANNELS as usize) {
            let message =
                format!("{c_out} output channels, not a multiple of {FACE_TILE_CHANNELS}");
            return Err(self.unsupported(Kernel::FaceConv, message));
        }
        debug_assert_eq!(weights.len(), k * k * from.c * c_out);
        let (side, pad) = self.same(Kernel::FaceConv, from, k, s)?;
        let layer = self.upload(weights, bias)?;
        let to = Shape {
            h: side,
            w: side,
            c: c_out,
        };
        self.ops.push(Op::Conv {
            layer,
            input,
            shortcut,
            output,
            from,
            to,
            kernel: k,
            stride: s,
            pad,
            flags,
        });
        Ok(to)
    }

    /// `depthwise` on `input` (of shape `from`) into `output`, with `flags`; returns the
    /// output's shape.
    pub fn depthwise(
        &mut self,
        depthwise: &Depthwise,
        (input, output): (Slot, Slot),
        from: Shape,
        flags: u32,
    ) -> Result<Shape, GpuError> {
        if !from.c.is_multiple_of(4) || from.c != depthwise.channels() {
            let message = format!("{} channels, not a multiple of 4", from.c);
            return Err(self.unsupported(Kernel::FaceDepthwise, message));
        }
        let stride = depthwise.stride();
        let (side, pad) = self.same(Kernel::FaceDepthwise, from, 3, stride)?;
        let layer = self.upload(depthwise.weights(), depthwise.bias())?;
        let to = Shape {
            h: side,
            w: side,
            c: from.c,
        };
        self.ops.push(Op::Depthwise {
            layer,
            input,
            output,
            from,
            to,
            stride,
            pad,
            flags,
        });
        Ok(to)
    }

    /// The landmark head on `input` (of shape `from`): the mean over the map, then `fc`
    /// (`[from.c, bias.len()]`) and `bias`, into `output`.
    pub fn head(
        &mut self,
        (fc, bias): (&[f32], &[f32]),
        (input, output): (Slot, Slot),
        from: Shape,
    ) -> Result<(), GpuError> {
        if from.c > WORKGROUP_SIZE as usize {
            let message = format!("{} features, more than {WORKGROUP_SIZE}", from.c);
            return Err(self.unsupported(Kernel::LandmarkHead, message));
        }
        let layer = self.upload(fc, bias)?;
        self.ops.push(Op::Head {
            layer,
            input,
            output,
            from,
            outputs: bias.len(),
        });
        Ok(())
    }

    /// The program, passes of at most `default_items` items (fewer where the device's limits
    /// ask for it).
    pub fn build(self, default_items: usize) -> Result<DeviceProgram, GpuError> {
        let slot_lens = |pick: fn(Slot) -> Option<usize>| {
            let mut lens = Vec::new();
            for op in &self.ops {
                let (_, output) = op.reads_writes();
                if let Some(i) = pick(output) {
                    lens.resize(lens.len().max(i + 1), 0);
                    lens[i] = lens[i].max(op.output_len());
                }
            }
            lens
        };
        let activation_lens = slot_lens(|s| match s {
            Slot::Activation(i) => Some(i),
            _ => None,
        });
        let output_lens = slot_lens(|s| match s {
            Slot::Output(i) => Some(i),
            _ => None,
        });
        // WebGPU forbids a dispatch to bind one buffer for reading and writing; a program
        // that did would fail validation on the first pass, so refuse it here, by name.
        for op in &self.ops {
            let (reads, output) = op.reads_writes();
            if reads.contains(&output) || output == Slot::Input {
                let message = format!("a dispatch writes the {output:?} it reads");
                return Err(self.unsupported(op.kernel(), message));
            }
        }
        for kernel in [
            Kernel::FaceConv,
            Kernel::FaceDepthwise,
            Kernel::LandmarkHead,
        ] {
            if self.ops.iter().any(|op| op.kernel() == kernel) {
                self.ctx.pipeline(kernel)?;
            }
        }
        self.ctx.check()?;
        let mut program = DeviceProgram {
            ctx: self.ctx,
            label: self.label,
            input_len: self.input.len(),
            layers: self.layers,
            ops: self.ops,
            activation_lens,
            output_lens,
            items_per_pass: 1,
            max_items_per_pass: 1,
            buffers: Mutex::new(None),
        };
        program.max_items_per_pass = program.max_items();
        program.items_per_pass = default_items.clamp(1, program.max_items_per_pass);
        Ok(program)
    }
}

/// A network on a device, ready to run batches.
pub(super) struct DeviceProgram {
    ctx: GpuContext,
    label: &'static str,
    /// Values of one item's input.
    input_len: usize,
    layers: Vec<DeviceLayer>,
    ops: Vec<Op>,
    /// Values of one item in each activation buffer.
    activation_lens: Vec<usize>,
    /// Values of one item in each output buffer.
    output_lens: Vec<usize>,
    items_per_pass: usize,
    max_items_per_pass: usize,
    buffers: Mutex<Option<Buffers>>,
}

/// The per-pass buffers for up to `capacity` items, and the bind groups over them.
struct Buffers {
    capacity: usize,
    input: wgpu::Buffer,
    outputs: Vec<wgpu::Buffer>,
    readback: wgpu::Buffer,
    params: wgpu::Buffer,
    params_stride: u64,
    /// One per operation, in order.
    steps: Vec<(Arc<Pipeline>, wgpu::BindGroup)>,
}

impl DeviceProgram {
    /// The device context.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// The most items of one pass.
    pub fn items_per_pass(&self) -> usize {
        self.items_per_pass
    }

    /// Sets the most items of one pass (at least 1, at most what the device allows).
    pub fn set_items_per_pass(&mut self, items: usize) {
        self.items_per_pass = items.clamp(1, self.max_items_per_pass);
        *self
            .buffers
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Runs every item of `inputs` (items of the program's input length back to back) and
    /// returns each output buffer's values for all items, in item order.
    ///
    /// One submission per pass of up to [`Self::items_per_pass`] items. Calls from several
    /// threads take turns. A panic inside wgpu comes back as [`GpuError::Panicked`].
    pub fn run(&self, inputs: &[f32]) -> Result<Vec<Vec<f32>>, GpuError> {
        let items = inputs.len() / self.input_len;
        if items == 0 {
            return Ok(vec![Vec::new(); self.output_lens.len()]);
        }
        let mut buffers = self.buffers.lock().unwrap_or_else(PoisonError::into_inner);
        // wgpu reports device errors through the context's handlers, but a driver or wgpu bug
        // may still panic; the caller must get an error it can fail over on.
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            self.ctx.check()?;
            let capacity = items.min(self.items_per_pass);
            if buffers.as_ref().is_none_or(|b| b.capacity < capacity) {
                // Drop the old set first: its memory may be needed for the new one.
                *buffers = None;
                *buffers = Some(self.buffers(capacity)?);
            }
            let buffers = buffers.as_ref().unwrap_or_else(|| unreachable!());
            let mut out: Vec<Vec<f32>> = self
                .output_lens
                .iter()
                .map(|len| Vec::with_capacity(items * len))
                .collect();
            let pass_len = self.items_per_pass * self.input_len;
            for pass in inputs[..items * self.input_len].chunks(pass_len) {
                for (all, part) in out.iter_mut().zip(self.pass(buffers, pass)?) {
                    all.extend(part);
                }
            }
            Ok::<_, GpuError>(out)
        }));
        match outcome {
            Ok(result) => result,
            Err(payload) => {
                *buffers = None;
                Err(GpuError::panicked(payload.as_ref()))
            }
        }
    }

    /// Runs one pass of `inputs.len() / input_len` items (at most the buffers' capacity).
    fn pass(&self, buffers: &Buffers, inputs: &[f32]) -> Result<Vec<Vec<f32>>, GpuError> {
        let items = inputs.len() / self.input_len;
        let queue = self.ctx.queue();
        queue.write_buffer(&buffers.input, 0, bytemuck::cast_slice(inputs));
        for (buffer, len) in buffers.outputs.iter().zip(&self.output_lens) {
            let sentinel = vec![SENTINEL; items * len];
            queue.write_buffer(buffer, 0, bytemuck::cast_slice(&sentinel));
        }
        let stride = buffers.params_stride as usize;
        let mut params = vec![0u8; stride * self.ops.len()];
        for (i, op) in self.ops.iter().enumerate() {
            let bytes = op.params(items);
            params[i * stride..i * stride + bytes.len()].copy_from_slice(&bytes);
        }
        queue.write_buffer(&buffers.params, 0, &params);

        let max_x = self.ctx.limits().max_compute_workgroups_per_dimension;
        let mut encoder = self
            .ctx
            .device()
            .create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            for (op, (pipeline, bind_group)) in self.ops.iter().zip(&buffers.steps) {
                let (x, y) = op.workgroups(items, max_x);
                pass.set_pipeline(&pipeline.pipeline);
                pass.set_bind_group(0, bind_group, &[]);
                pass.dispatch_workgroups(x, y, 1);
            }
        }
        let mut offset = 0u64;
        for (buffer, len) in buffers.outputs.iter().zip(&self.output_lens) {
            let bytes = (items * len * 4) as u64;
            encoder.copy_buffer_to_buffer(buffer, 0, &buffers.readback, offset, bytes);
            offset += bytes;
        }
        let read = self.ctx.submit_and_read(encoder, &buffers.readback)?;
        let words: Vec<u32> = bytemuck::pod_collect_to_vec(&read[..offset as usize]);
        if let Some(index) = words.iter().position(|&w| w == SENTINEL) {
            return Err(GpuError::BadOutput {
                kernel: self.label,
                index,
            });
        }
        let mut values = words.into_iter().map(f32::from_bits);
        Ok(self
            .output_lens
            .iter()
            .map(|len| values.by_ref().take(items * len).collect())
            .collect())
    }

    /// Allocates the buffers of a pass of `capacity` items and binds every operation to them.
    fn buffers(&self, capacity: usize) -> Result<Buffers, GpuError> {
        let ctx = &self.ctx;
        let bytes = |values: usize| ((capacity * values).max(1) * 4) as u64;
        let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        let input = ctx.buffer(self.label, bytes(self.input_len), storage)?;
        let mut activations = Vec::with_capacity(self.activation_lens.len());
        for &len in &self.activation_lens {
            activations.push(ctx.buffer(self.label, bytes(len), wgpu::BufferUsages::STORAGE)?);
        }
        let mut outputs = Vec::with_capacity(self.output_lens.len());
        for &len in &self.output_lens {
            let usage = storage | wgpu::BufferUsages::COPY_SRC;
            outputs.push(ctx.buffer(self.label, bytes(len), usage)?);
        }
        let readback = ctx.buffer(
            self.label,
            bytes(self.output_lens.iter().sum()),
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        )?;
        let align = u64::from(ctx.limits().min_uniform_buffer_offset_alignment);
        let params_stride = MAX_PARAMS_BYTES.next_multiple_of(align.max(16));
        let params = ctx.buffer(
            self.label,
            params_stride * self.ops.len() as u64,
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        )?;

        let slot = |s: Slot| match s {
            Slot::Input => &input,
            Slot::Activation(i) => &activations[i],
            Slot::Output(i) => &outputs[i],
        };
        let mut steps = Vec::with_capacity(self.ops.len());
        for (i, op) in self.ops.iter().enumerate() {
            let pipeline = ctx.pipeline(op.kernel())?;
            let resources: Vec<wgpu::BindingResource> = match *op {
                Op::Conv {
                    layer,
                    input,
                    shortcut,
                    output,
                    ..
                } => {
                    let layer = &self.layers[layer];
                    // Without a shortcut the slot is still bound (to the input, read-only
                    // twice); the kernel does not read it.
                    vec![
                        slot(input).as_entire_binding(),
                        layer.weights.as_entire_binding(),
                        layer.bias.as_entire_binding(),
                        slot(shortcut.unwrap_or(input)).as_entire_binding(),
                        slot(output).as_entire_binding(),
                    ]
                }
                Op::Depthwise {
                    layer,
                    input,
                    output,
                    ..
                }
                | Op::Head {
                    layer,
                    input,
                    output,
                    ..
                } => {
                    let layer = &self.layers[layer];
                    vec![
                        slot(input).as_entire_binding(),
                        layer.weights.as_entire_binding(),
                        layer.bias.as_entire_binding(),
                        slot(output).as_entire_binding(),
                    ]
                }
            };
            let bind_group = pipeline.bind_with_params(
                ctx.device(),
                op.kernel().name(),
                resources,
                &params,
                i as u64 * params_stride,
                NonZeroU64::new(op.params_len()),
            );
            steps.push((pipeline, bind_group));
        }
        ctx.check()?;
        Ok(Buffers {
            capacity,
            input,
            outputs,
            readback,
            params,
            params_stride,
            steps,
        })
    }

    /// The most items one pass can take: every buffer within one storage binding, every
    /// convolution's pixel tiles within the per-dimension workgroup limit (the other kernels
    /// spread over two dimensions).
    fn max_items(&self) -> usize {
        let limits = self.ctx.limits();
        let binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let largest = self
            .activation_lens
            .iter()
            .chain(&self.output_lens)
            .copied()
            .chain([self.input_len])
            .max()
            .unwrap_or(1);
        let by_memory = (binding / (largest as u64 * 4)).max(1) as usize;
        let max_x = limits.max_compute_workgroups_per_dimension as usize;
        let by_dispatch = self
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::Conv { to, .. } => Some(max_x * FACE_TILE_PIXELS as usize / (to.h * to.w)),
                _ => None,
            })
            .min()
            .unwrap_or(usize::MAX)
            .max(1);
        by_memory.min(by_dispatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_stay_within_the_dimension_limit() {
        assert_eq!(grid(10, 65_535), (10, 1));
        assert_eq!(grid(70_000, 65_535), (65_535, 2));
    }
}
