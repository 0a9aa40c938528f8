//! The descriptor network on a GPU: the same function as [`CpuNetwork`](super::CpuNetwork),
//! in WGSL compute shaders on wgpu, for many faces per dispatch.
//!
//! Why a GPU: the network costs about 0.54 GFLOP a face (271 million multiply-adds, nearly all
//! in its 29 convolutions), and an appliance embeds the faces of every gate. Batched, those
//! convolutions are large matrix products, the work GPUs are built for.
//!
//! How it runs:
//!
//! - At construction the filters are folded with their bias and scale exactly as the CPU path
//!   folds them ([`FoldedConv`], the same code) and uploaded once, with the fc matrix.
//! - Each layer of the network is one dispatch over every face of a pass: a convolution as an
//!   implicit matrix product tiled through workgroup memory, with its bias, shortcut and ReLU
//!   applied before the store (`shaders/face_conv.wgsl`); the max pool; the residual-down
//!   tail (`face_shortcut.wgsl`); the mean and the fc layer (`face_head.wgsl`). The 35
//!   dispatches of a pass go in one submission, with one upload of the crops before it and
//!   one read-back of the descriptors after it.
//! - A pass holds at most [`GpuNetwork::faces_per_pass`] faces (default
//!   [`DEFAULT_FACES_PER_PASS`], lowered to what the device's binding and dispatch limits
//!   allow); larger batches run in several passes, which bounds the activation memory at about
//!   2.3 MB per face of a pass. The activation buffers are kept between calls and only grow.
//! - A lost device, a failed submission, an allocation failure, an unwritten output or a panic
//!   inside wgpu comes back as [`EmbedError::Gpu`], never as a panic: the caller can compute
//!   the batch on the CPU instead. The device context is then poisoned (see
//!   [`GpuContext`]): every later call fails the same way.
//!
//! Fidelity: within 1e-3 per descriptor value of the CPU network (MODEL.md's bar for the GPU);
//! the GPU sums the products in another order, and fuses multiply and add, so the two differ in
//! the last bits of each layer. `tests/face_gpu.rs` checks it on the fixture photos and on
//! random inputs.

use std::num::NonZeroU64;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Mutex, PoisonError};

use super::conv::FoldedConv;
use super::{Descriptor, EmbedError};
use crate::engine::gpu::shaders::{FACE_TILE_CHANNELS, FACE_TILE_PIXELS, Kernel, Pipeline};
use crate::engine::gpu::{GpuContext, GpuError};
use crate::face::model::{ConvSpec, DESCRIPTOR_DIM, FaceModel, conv_specs};
use crate::face::preprocess::FaceBatch;
use crate::face::preprocess::crop::INPUT_LEN;

mod program;

use program::{MAX_PARAMS_BYTES, Op, Slot, program};

/// Faces per pass unless the device's limits ask for fewer: enough work per dispatch to keep
/// a large GPU busy even at the deep 4 × 4 layers (2,048 output pixels × 256 channels), for
/// about 300 MB of buffers.
pub const DEFAULT_FACES_PER_PASS: usize = 128;

/// Pre-fill of the descriptor buffer: a NaN the head never produces from finite inputs.
const SENTINEL: u32 = 0x7FC0_FACE;

/// The descriptor network on a device, ready to run.
pub struct GpuNetwork {
    ctx: GpuContext,
    convs: Vec<DeviceConv>,
    fc: wgpu::Buffer,
    program: Vec<Op>,
    /// Values of the largest activation of one face.
    activation_len: usize,
    faces_per_pass: usize,
    /// The most faces one pass can take on this device.
    max_faces_per_pass: usize,
    buffers: Mutex<Option<Buffers>>,
}

impl std::fmt::Debug for GpuNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuNetwork")
            .field("adapter", &self.ctx.adapter_info().name)
            .field("faces_per_pass", &self.faces_per_pass)
            .finish_non_exhaustive()
    }
}

/// One convolution's folded filters and bias in device memory.
struct DeviceConv {
    spec: ConvSpec,
    filters: wgpu::Buffer,
    bias: wgpu::Buffer,
}

/// The per-pass buffers for up to `capacity` faces, and the bind groups over them.
struct Buffers {
    capacity: usize,
    input: wgpu::Buffer,
    descriptors: wgpu::Buffer,
    readback: wgpu::Buffer,
    /// Every operation's parameters, one aligned block each, rewritten for each pass.
    params: wgpu::Buffer,
    params_stride: u64,
    /// One per operation of the program, in order.
    steps: Vec<(std::sync::Arc<Pipeline>, wgpu::BindGroup)>,
}

impl GpuNetwork {
    /// Folds `model`'s weights and uploads them to the device of `ctx`.
    pub fn new(model: &FaceModel, ctx: GpuContext) -> Result<Self, EmbedError> {
        Self::build(model, ctx).map_err(EmbedError::from)
    }

    /// Opens a device (a software one only when `allow_software`) and builds the network on
    /// it.
    pub fn open(model: &FaceModel, allow_software: bool) -> Result<Self, EmbedError> {
        Self::new(model, GpuContext::new(allow_software)?)
    }

    fn build(model: &FaceModel, ctx: GpuContext) -> Result<Self, GpuError> {
        let storage = wgpu::BufferUsages::STORAGE;
        let mut convs = Vec::new();
        for spec in conv_specs() {
            if !spec.c_out.is_multiple_of(FACE_TILE_CHANNELS as usize) {
                return Err(GpuError::Shader {
                    shader: Kernel::FaceConv.name(),
                    message: format!(
                        "{} has {} output channels, not a multiple of {FACE_TILE_CHANNELS}",
                        spec.prefix, spec.c_out
                    ),
                });
            }
            let folded = FoldedConv::new(model, spec.clone());
            let (filters, bias) = folded.folded();
            let label = &spec.prefix;
            let filters = ctx.buffer_with(label, bytemuck::cast_slice(filters), storage)?;
            let bias = ctx.buffer_with(label, bytemuck::cast_slice(bias), storage)?;
            convs.push(DeviceConv {
                spec,
                filters,
                bias,
            });
        }
        let fc = &model.expect_tensor("fc").data;
        let fc = ctx.buffer_with("face fc", bytemuck::cast_slice(fc), storage)?;
        let program = program(&conv_specs());
        let activation_len = program.iter().map(Op::output_len).max().unwrap_or(1);
        let max_faces_per_pass = max_faces(&ctx, &program, activation_len);
        for kernel in [
            Kernel::FaceConv,
            Kernel::FacePool,
            Kernel::FaceShortcut,
            Kernel::FaceHead,
        ] {
            ctx.pipeline(kernel)?;
        }
        ctx.check()?;
        Ok(Self {
            ctx,
            convs,
            fc,
            program,
            activation_len,
            faces_per_pass: DEFAULT_FACES_PER_PASS.min(max_faces_per_pass),
            max_faces_per_pass,
            buffers: Mutex::new(None),
        })
    }

    /// Sets the most faces of one pass (at least 1, at most what the device allows); larger
    /// batches run in several passes. Tests set it small to cross a pass boundary.
    pub fn with_faces_per_pass(mut self, faces: usize) -> Self {
        self.faces_per_pass = faces.clamp(1, self.max_faces_per_pass);
        *self
            .buffers
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner) = None;
        self
    }

    /// The most faces of one pass.
    pub fn faces_per_pass(&self) -> usize {
        self.faces_per_pass
    }

    /// The device context (adapter name, software or not).
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// Descriptors of every face in `batch`, in order.
    ///
    /// One submission per pass of up to [`Self::faces_per_pass`] faces. Calls from several
    /// threads take turns.
    pub fn describe(&self, batch: &FaceBatch) -> Result<Vec<Descriptor>, EmbedError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut buffers = self.buffers.lock().unwrap_or_else(PoisonError::into_inner);
        // wgpu reports device errors through the context's handlers, but a driver or wgpu bug
        // may still panic; the caller must get an error it can fail over on.
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            self.ctx.check()?;
            let capacity = batch.len().min(self.faces_per_pass);
            if buffers.as_ref().is_none_or(|b| b.capacity < capacity) {
                // Drop the old set first: its memory may be needed for the new one.
                *buffers = None;
                *buffers = Some(self.buffers(capacity)?);
            }
            let buffers = buffers.as_ref().unwrap_or_else(|| unreachable!());
            let mut out = Vec::with_capacity(batch.len());
            for pass in batch.as_slice().chunks(self.faces_per_pass * INPUT_LEN) {
                out.extend(self.pass(buffers, pass)?);
            }
            Ok::<_, GpuError>(out)
        }));
        match outcome {
            Ok(result) => result.map_err(EmbedError::from),
            Err(payload) => {
                *buffers = None;
                Err(EmbedError::from(GpuError::panicked(payload.as_ref())))
            }
        }
    }

    /// Runs one pass of `inputs.len() / INPUT_LEN` faces (at most the buffers' capacity).
    fn pass(&self, buffers: &Buffers, inputs: &[f32]) -> Result<Vec<Descriptor>, GpuError> {
        let faces = inputs.len() / INPUT_LEN;
        let queue = self.ctx.queue();
        queue.write_buffer(&buffers.input, 0, bytemuck::cast_slice(inputs));
        let sentinel = vec![SENTINEL; faces * DESCRIPTOR_DIM];
        queue.write_buffer(&buffers.descriptors, 0, bytemuck::cast_slice(&sentinel));
        let mut params = vec![0u8; (buffers.params_stride as usize) * self.program.len()];
        for (i, op) in self.program.iter().enumerate() {
            let bytes = op.params(&self.convs, faces);
            let at = i * buffers.params_stride as usize;
            params[at..at + bytes.len()].copy_from_slice(&bytes);
        }
        queue.write_buffer(&buffers.params, 0, &params);

        let max_x = self.ctx.limits().max_compute_workgroups_per_dimension;
        let mut encoder = self
            .ctx
            .device()
            .create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            for (op, (pipeline, bind_group)) in self.program.iter().zip(&buffers.steps) {
                let (x, y) = op.workgroups(faces, max_x);
                pass.set_pipeline(&pipeline.pipeline);
                pass.set_bind_group(0, bind_group, &[]);
                pass.dispatch_workgroups(x, y, 1);
            }
        }
        let bytes = (faces * DESCRIPTOR_DIM * 4) as u64;
        encoder.copy_buffer_to_buffer(&buffers.descriptors, 0, &buffers.readback, 0, bytes);
        let mut read = self.ctx.submit_and_read(encoder, &buffers.readback)?;
        read.truncate(bytes as usize);
        let words: Vec<u32> = bytemuck::pod_collect_to_vec(&read);
        if let Some(index) = words.iter().position(|&w| w == SENTINEL) {
            return Err(GpuError::BadOutput {
                kernel: "face_head",
                index,
            });
        }
        Ok(words
            .chunks_exact(DESCRIPTOR_DIM)
            .map(|row| {
                let mut values = [0.0f32; DESCRIPTOR_DIM];
                for (v, &w) in values.iter_mut().zip(row) {
                    *v = f32::from_bits(w);
                }
                Descriptor::new(values)
            })
            .collect())
    }

    /// Allocates the buffers of a pass of `capacity` faces and binds every operation to them.
    fn buffers(&self, capacity: usize) -> Result<Buffers, GpuError> {
        let ctx = &self.ctx;
        let bytes = |values: usize| (capacity * values * 4) as u64;
        let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        let input = ctx.buffer("face input", bytes(INPUT_LEN), storage)?;
        let mut activations = Vec::with_capacity(3);
        for _ in 0..3 {
            let usage = wgpu::BufferUsages::STORAGE;
            activations.push(ctx.buffer("face activations", bytes(self.activation_len), usage)?);
        }
        let descriptor_bytes = bytes(DESCRIPTOR_DIM);
        let descriptors = ctx.buffer(
            "face descriptors",
            descriptor_bytes,
            storage | wgpu::BufferUsages::COPY_SRC,
        )?;
        let readback = ctx.buffer(
            "face readback",
            descriptor_bytes,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        )?;
        let align = u64::from(ctx.limits().min_uniform_buffer_offset_alignment);
        let params_stride = MAX_PARAMS_BYTES.next_multiple_of(align.max(16));
        let params = ctx.buffer(
            "face params",
            params_stride * self.program.len() as u64,
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        )?;

        let slot = |s: Slot| match s {
            Slot::Input => &input,
            Slot::Activation(i) => &activations[i],
            Slot::Descriptors => &descriptors,
        };
        let mut steps = Vec::with_capacity(self.program.len());
        for (i, op) in self.program.iter().enumerate() {
            let pipeline = ctx.pipeline(op.kernel())?;
            let resources: Vec<wgpu::BindingResource> = match *op {
                Op::Conv {
                    conv,
                    input,
                    shortcut,
                    output,
                    ..
                } => {
                    let conv = &self.convs[conv];
                    // Without a shortcut the slot is still bound (to the input, read-only
                    // twice); the kernel does not read it.
                    vec![
                        slot(input).as_entire_binding(),
                        conv.filters.as_entire_binding(),
                        conv.bias.as_entire_binding(),
                        slot(shortcut.unwrap_or(input)).as_entire_binding(),
                        slot(output).as_entire_binding(),
                    ]
                }
                Op::MaxPool { input, output, .. } => vec![
                    slot(input).as_entire_binding(),
                    slot(output).as_entire_binding(),
                ],
                Op::DownShortcut {
                    conv,
                    input,
                    output,
                    ..
                } => vec![
                    slot(conv).as_entire_binding(),
                    slot(input).as_entire_binding(),
                    slot(output).as_entire_binding(),
                ],
                Op::Head { input, .. } => vec![
                    slot(input).as_entire_binding(),
                    self.fc.as_entire_binding(),
                    slot(Slot::Descriptors).as_entire_binding(),
                ],
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
            descriptors,
            readback,
            params,
            params_stride,
            steps,
        })
    }
}

impl From<GpuError> for EmbedError {
    fn from(source: GpuError) -> Self {
        EmbedError::Gpu { source }
    }
}

/// The most faces one pass can take: every buffer within one storage binding, every dispatch
/// within the per-dimension workgroup limit (the grid kernels spread over two dimensions, the
/// convolution's pixel tiles do not).
fn max_faces(ctx: &GpuContext, program: &[Op], activation_len: usize) -> usize {
    let limits = ctx.limits();
    let binding = limits
        .max_storage_buffer_binding_size
        .min(limits.max_buffer_size);
    let largest_bytes = (activation_len.max(INPUT_LEN) * 4) as u64;
    let by_memory = (binding / largest_bytes).max(1) as usize;
    let max_x = limits.max_compute_workgroups_per_dimension as usize;
    let by_dispatch = program
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
