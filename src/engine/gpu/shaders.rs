//! WGSL sources, how they are put together, and the explicit layouts that mirror them.
//!
//! The kernels live in `shaders/*.wgsl` at the root of the repository. Sizes they share with
//! the host (workgroup size, list and pool lengths, the empty-slot marker) are not written in
//! any WGSL file: [`Kernel::source`] prepends a generated block of `const` declarations built
//! from the Rust constants below, so each value has exactly one definition.
//! `tests/gpu_shaders.rs` parses every composed source with naga and checks each entry point's
//! workgroup size against [`WORKGROUP_SIZE`] and each binding against [`Kernel::bindings`],
//! and the header table of each file against the same.

use std::borrow::Cow;

use super::StorageFormat;
use super::error::GpuError;

/// Threads per workgroup of every kernel, and rows per tile of the gallery layout.
///
/// 256 keeps a full workgroup resident on every desktop and datacenter GPU and makes a tile
/// of 128-dim f32 rows 128 KiB, a unit of coalesced streaming.
pub const WORKGROUP_SIZE: u32 = 256;

/// Candidates a workgroup keeps (the largest `kc`, see [`super::MAX_K`]).
pub const LIST_LEN: u32 = 128;

/// Entries of workgroup memory per selection: the list plus room for one round of offers
/// from every thread, rounded up to a power of two for the bitonic sort.
pub const POOL_LEN: u32 = (LIST_LEN + WORKGROUP_SIZE).next_power_of_two();

/// Slot value meaning "no candidate".
pub const NONE_SLOT: u32 = u32::MAX;

// The pending buffer must take one offer per thread without overflowing (select.wgsl).
const _: () = assert!(POOL_LEN >= LIST_LEN + WORKGROUP_SIZE);

/// Output pixels per workgroup tile of the face convolution (`face_conv.wgsl`).
///
/// With [`FACE_TILE_CHANNELS`] it makes a 128 × 32 tile: 4 × 4 outputs per thread, so each
/// value read from workgroup memory feeds four multiply-adds, and 32 channels divide every
/// layer's width (32 to 256) with no idle lanes.
pub const FACE_TILE_PIXELS: u32 = 128;

/// Output channels per workgroup tile of the face convolution; every layer's `c_out` is a
/// multiple of it.
pub const FACE_TILE_CHANNELS: u32 = 32;

/// Depth of the reduction staged in workgroup memory per step of the face convolution:
/// 10.5 KiB of tiles, inside the 16 KiB WebGPU guarantees.
pub const FACE_TILE_DEPTH: u32 = 16;

// Each thread owns 4 pixels × 4 channels of the tile, and the staging loops divide evenly.
const _: () = assert!(FACE_TILE_PIXELS * FACE_TILE_CHANNELS == 16 * WORKGROUP_SIZE);
const _: () = assert!(WORKGROUP_SIZE.is_multiple_of(FACE_TILE_DEPTH));
const _: () = assert!((FACE_TILE_PIXELS * FACE_TILE_DEPTH).is_multiple_of(WORKGROUP_SIZE));
const _: () = assert!((FACE_TILE_CHANNELS * FACE_TILE_DEPTH).is_multiple_of(WORKGROUP_SIZE));

/// The text of `shaders/<name>.wgsl`, compiled into the binary.
macro_rules! wgsl {
    ($name:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/shaders/",
            $name,
            ".wgsl"
        ))
    };
}

const SELECT: &str = wgsl!("select");
const SCAN: &str = wgsl!("scan");
const SCAN_F32: &str = wgsl!("scan_f32");
const SCAN_F16: &str = wgsl!("scan_f16");
const SCAN_INT8: &str = wgsl!("scan_int8");
const MERGE: &str = wgsl!("merge");
const PAIR: &str = wgsl!("pair");
const FACE_CONV: &str = wgsl!("face_conv");
const FACE_POOL: &str = wgsl!("face_pool");
const FACE_SHORTCUT: &str = wgsl!("face_shortcut");
const FACE_HEAD: &str = wgsl!("face_head");
const FACE_DEPTHWISE: &str = wgsl!("face_depthwise");
const LANDMARK_HEAD: &str = wgsl!("landmark_head");

/// Three read-only inputs, one output and the parameters: `face_depthwise.wgsl` (input,
/// filters, bias) and `landmark_head.wgsl` (input, fc, bias).
const THREE_INPUT_BINDINGS: &[Access] = &[
    Access::StorageRead,
    Access::StorageRead,
    Access::StorageRead,
    Access::StorageReadWrite,
    Access::Uniform,
];

/// `ConvParams` of `face_conv.wgsl`, shared by every network that runs a convolution through
/// it.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct ConvParams {
    pub faces: u32,
    pub in_h: u32,
    pub in_w: u32,
    pub in_c: u32,
    pub out_h: u32,
    pub out_w: u32,
    pub out_c: u32,
    pub kernel: u32,
    pub stride: u32,
    pub pad: u32,
    pub flags: u32,
    pub unused: u32,
}

/// `flags` bit of `face_conv.wgsl` and `face_depthwise.wgsl`: ReLU after the bias.
pub(crate) const FLAG_RELU: u32 = 1;
/// `flags` bit of `face_conv.wgsl`: add the shortcut binding before the activation.
pub(crate) const FLAG_SHORTCUT: u32 = 2;
/// `flags` bit of `face_conv.wgsl` and `face_depthwise.wgsl`: ReLU6 after the bias.
pub(crate) const FLAG_RELU6: u32 = 4;
/// `flags` bit of `face_depthwise.wgsl`: ReLU of each input value as it is read.
pub(crate) const FLAG_RELU_INPUT: u32 = 8;

/// How a binding slot is accessed; the Rust twin of a row in a shader's header table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `var<storage, read>`.
    StorageRead,
    /// `var<storage, read_write>`.
    StorageReadWrite,
    /// `var<uniform>`.
    Uniform,
}

const SCAN_BINDINGS: &[Access] = &[
    Access::StorageRead,
    Access::StorageRead,
    Access::StorageRead,
    Access::StorageRead,
    Access::StorageReadWrite,
    Access::Uniform,
];
const MERGE_BINDINGS: &[Access] = &[
    Access::StorageRead,
    Access::StorageReadWrite,
    Access::Uniform,
];
const PAIR_BINDINGS: &[Access] = &[
    Access::StorageRead,
    Access::StorageRead,
    Access::StorageReadWrite,
    Access::Uniform,
];
const FACE_CONV_BINDINGS: &[Access] = &[
    Access::StorageRead,
    Access::StorageRead,
    Access::StorageRead,
    Access::StorageRead,
    Access::StorageReadWrite,
    Access::Uniform,
];
const FACE_POOL_BINDINGS: &[Access] = &[
    Access::StorageRead,
    Access::StorageReadWrite,
    Access::Uniform,
];

/// One compute kernel: a composed WGSL module with one entry point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// 1:N scan over an f32 chunk.
    ScanF32,
    /// 1:N scan over an f16 chunk.
    ScanF16,
    /// 1:N scan over an int8 chunk.
    ScanInt8,
    /// Merge of per-stripe candidates into one list per probe.
    Merge,
    /// 1:1 scores in f32.
    Pair,
    /// A face-network convolution with its epilogue (`face_conv.wgsl`).
    FaceConv,
    /// The face network's max pool (`face_pool.wgsl`).
    FacePool,
    /// The tail of a residual-down block (`face_shortcut.wgsl`).
    FaceShortcut,
    /// The face network's mean and fully connected layer (`face_head.wgsl`).
    FaceHead,
    /// A 3×3 depthwise convolution of the detector or the landmark network
    /// (`face_depthwise.wgsl`).
    FaceDepthwise,
    /// The landmark network's average pool and fully connected layer (`landmark_head.wgsl`).
    LandmarkHead,
}

impl Kernel {
    /// Every kernel, for tests that walk them all.
    pub const ALL: [Kernel; 11] = [
        Kernel::ScanF32,
        Kernel::ScanF16,
        Kernel::ScanInt8,
        Kernel::Merge,
        Kernel::Pair,
        Kernel::FaceConv,
        Kernel::FacePool,
        Kernel::FaceShortcut,
        Kernel::FaceHead,
        Kernel::FaceDepthwise,
        Kernel::LandmarkHead,
    ];

    /// The scan kernel for a storage format.
    pub fn scan(format: StorageFormat) -> Kernel {
        match format {
            StorageFormat::F32 => Kernel::ScanF32,
            StorageFormat::F16 => Kernel::ScanF16,
            StorageFormat::Int8 => Kernel::ScanInt8,
        }
    }

    /// Label used in errors and debuggers.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::ScanF32 => "scan_f32",
            Kernel::ScanF16 => "scan_f16",
            Kernel::ScanInt8 => "scan_int8",
            Kernel::Merge => "merge",
            Kernel::Pair => "pair",
            Kernel::FaceConv => "face_conv",
            Kernel::FacePool => "face_pool",
            Kernel::FaceShortcut => "face_shortcut",
            Kernel::FaceHead => "face_head",
            Kernel::FaceDepthwise => "face_depthwise",
            Kernel::LandmarkHead => "landmark_head",
        }
    }

    /// Name of the kernel's entry point in its WGSL.
    pub fn entry_point(self) -> &'static str {
        match self {
            Kernel::ScanF32 | Kernel::ScanF16 | Kernel::ScanInt8 => "scan",
            Kernel::Merge => "merge",
            Kernel::Pair => "pair",
            Kernel::FaceConv => "conv",
            Kernel::FacePool => "max_pool",
            Kernel::FaceShortcut => "down_shortcut",
            Kernel::FaceHead => "head",
            Kernel::FaceDepthwise => "depthwise",
            Kernel::LandmarkHead => "landmark_head",
        }
    }

    /// Access of binding slots 0, 1, ... of group 0, in slot order.
    pub fn bindings(self) -> &'static [Access] {
        match self {
            Kernel::ScanF32 | Kernel::ScanF16 | Kernel::ScanInt8 => SCAN_BINDINGS,
            Kernel::Merge => MERGE_BINDINGS,
            Kernel::Pair | Kernel::FaceShortcut | Kernel::FaceHead => PAIR_BINDINGS,
            Kernel::FaceConv => FACE_CONV_BINDINGS,
            Kernel::FacePool => FACE_POOL_BINDINGS,
            Kernel::FaceDepthwise | Kernel::LandmarkHead => THREE_INPUT_BINDINGS,
        }
    }

    /// Whether the kernel belongs to the face network (and gets its constants).
    pub fn is_face(self) -> bool {
        matches!(
            self,
            Kernel::FaceConv
                | Kernel::FacePool
                | Kernel::FaceShortcut
                | Kernel::FaceHead
                | Kernel::FaceDepthwise
                | Kernel::LandmarkHead
        )
    }

    /// The complete WGSL module: enable directives, the generated constants, then the files.
    pub fn source(self) -> String {
        let (enables, parts): (&str, &[&str]) = match self {
            Kernel::ScanF32 => ("", &[SELECT, SCAN, SCAN_F32]),
            Kernel::ScanF16 => ("enable f16;\n", &[SELECT, SCAN, SCAN_F16]),
            Kernel::ScanInt8 => ("", &[SELECT, SCAN, SCAN_INT8]),
            Kernel::Merge => ("", &[SELECT, MERGE]),
            Kernel::Pair => ("", &[PAIR]),
            Kernel::FaceConv => ("", &[FACE_CONV]),
            Kernel::FacePool => ("", &[FACE_POOL]),
            Kernel::FaceShortcut => ("", &[FACE_SHORTCUT]),
            Kernel::FaceHead => ("", &[FACE_HEAD]),
            Kernel::FaceDepthwise => ("", &[FACE_DEPTHWISE]),
            Kernel::LandmarkHead => ("", &[LANDMARK_HEAD]),
        };
        let mut source = String::from(enables);
        source.push_str(&prelude());
        if self.is_face() {
            source.push_str(&face_prelude());
        }
        for part in parts {
            source.push_str(part);
            source.push('\n');
        }
        source
    }
}

/// The generated constants every module starts with.
fn prelude() -> String {
    format!(
        "// Generated from the constants in src/engine/gpu/shaders.rs.\n\
         const WG_SIZE: u32 = {WORKGROUP_SIZE}u;\n\
         const LIST_LEN: u32 = {LIST_LEN}u;\n\
         const POOL_LEN: u32 = {POOL_LEN}u;\n\
         const NONE_SLOT: u32 = {NONE_SLOT}u;\n"
    )
}

/// The constants the face kernels add to [`prelude`].
fn face_prelude() -> String {
    use crate::face::model::{DESCRIPTOR_DIM, HEAD_IN};
    format!(
        "const FACE_TILE_PIXELS: u32 = {FACE_TILE_PIXELS}u;\n\
         const FACE_TILE_CHANNELS: u32 = {FACE_TILE_CHANNELS}u;\n\
         const FACE_TILE_DEPTH: u32 = {FACE_TILE_DEPTH}u;\n\
         const FACE_HEAD_IN: u32 = {HEAD_IN}u;\n\
         const FACE_DESCRIPTOR_DIM: u32 = {DESCRIPTOR_DIM}u;\n"
    )
}

/// A built kernel: its explicit bind group layout and its pipeline.
#[derive(Debug)]
pub(crate) struct Pipeline {
    pub(crate) layout: wgpu::BindGroupLayout,
    pub(crate) pipeline: wgpu::ComputePipeline,
}

impl Pipeline {
    /// A bind group for one dispatch of this kernel: `resources` in binding order, then the
    /// `len` bytes of parameters at `offset` in `params` as the last binding (the layout every
    /// face kernel shares; `None`: to the buffer's end).
    pub(crate) fn bind_with_params<'a>(
        &self,
        device: &wgpu::Device,
        label: &str,
        mut resources: Vec<wgpu::BindingResource<'a>>,
        params: &'a wgpu::Buffer,
        offset: u64,
        len: Option<std::num::NonZeroU64>,
    ) -> wgpu::BindGroup {
        resources.push(wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: params,
            offset,
            size: len,
        }));
        let entries: Vec<wgpu::BindGroupEntry> = resources
            .into_iter()
            .enumerate()
            .map(|(binding, resource)| wgpu::BindGroupEntry {
                binding: binding as u32,
                resource,
            })
            .collect();
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout: &self.layout,
            entries: &entries,
        })
    }
}

/// Builds `kernel` on `device`, catching compile and validation errors instead of letting
/// wgpu's default handler panic.
pub(crate) fn build(device: &wgpu::Device, kernel: Kernel) -> Result<Pipeline, GpuError> {
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let entries: Vec<wgpu::BindGroupLayoutEntry> = kernel
        .bindings()
        .iter()
        .enumerate()
        .map(|(slot, access)| layout_entry(slot as u32, *access))
        .collect();
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(kernel.name()),
        entries: &entries,
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(kernel.name()),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(kernel.name()),
        source: wgpu::ShaderSource::Wgsl(Cow::Owned(kernel.source())),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(kernel.name()),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some(kernel.entry_point()),
        compilation_options: wgpu::PipelineCompilationOptions::default(),
        cache: None,
    });
    if let Some(error) = pollster::block_on(scope.pop()) {
        return Err(GpuError::Shader {
            shader: kernel.name(),
            message: error.to_string(),
        });
    }
    Ok(Pipeline { layout, pipeline })
}

fn layout_entry(binding: u32, access: Access) -> wgpu::BindGroupLayoutEntry {
    let ty = match access {
        Access::StorageRead => wgpu::BufferBindingType::Storage { read_only: true },
        Access::StorageReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
        Access::Uniform => wgpu::BufferBindingType::Uniform,
    };
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty,
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}
