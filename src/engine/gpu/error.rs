//! The one error type of the GPU backend.
//!
//! Every failure, from "no adapter" to "device lost in the middle of a batch", comes back as a
//! [`GpuError`], so that [`super::GpuEngine`] can answer from the CPU instead of panicking.

use super::StorageFormat;

/// What went wrong on the GPU path.
///
/// [`GpuError::is_device_failure`] separates the errors after which the device is unusable
/// (the engine fails over to the CPU for good) from inputs the GPU path does not take (the
/// engine scores that one call on the CPU; the device is fine).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GpuError {
    /// No usable adapter: none at all, or only a software one that was not allowed. Run on
    /// the CPU engine, or ask for `backend = "gpu"` to accept a software adapter.
    #[error("no usable GPU adapter: {reason}")]
    NoAdapter {
        /// Why no adapter was accepted.
        reason: String,
    },
    /// The adapter refused to create a device.
    #[error("failed to create a device on {adapter}: {message}")]
    RequestDevice {
        /// Adapter name.
        adapter: String,
        /// The driver's message.
        message: String,
    },
    /// The device was lost (destroyed, driver reset, GPU fallen off the bus). Every later
    /// call on this context fails the same way.
    #[error("GPU device lost: {reason}")]
    DeviceLost {
        /// The reason the driver gave.
        reason: String,
    },
    /// A GPU operation failed after submission (validation, internal driver error, failed
    /// buffer map). Treated as a device failure.
    #[error("GPU submission failed: {message}")]
    Submission {
        /// The wgpu error text.
        message: String,
    },
    /// A buffer of `bytes` could not be allocated.
    #[error("GPU out of memory allocating {bytes} bytes")]
    OutOfMemory {
        /// Requested size.
        bytes: u64,
    },
    /// A shader failed to compile or a pipeline failed to build: a bug, or a driver that
    /// cannot run this WGSL.
    #[error("shader {shader} failed to build: {message}")]
    Shader {
        /// Kernel name.
        shader: &'static str,
        /// The compiler's message.
        message: String,
    },
    /// The adapter does not offer what the storage format needs (f16 needs SHADER_F16).
    #[error("storage format {format} is not supported by this adapter")]
    UnsupportedFormat {
        /// The refused format.
        format: StorageFormat,
    },
    /// The GPU path takes dimensions that are a non-zero multiple of 4, at most `max`.
    #[error("unsupported dimension {dim}: must be a non-zero multiple of 4 and at most {max}")]
    UnsupportedDim {
        /// Requested dimension.
        dim: usize,
        /// Largest dimension accepted.
        max: usize,
    },
    /// A probe block or slot list had the wrong length.
    #[error("input length {len} does not fit dimension or count {expected}")]
    BadLength {
        /// Length received.
        len: usize,
        /// The dimension (probes) or the probe count (slot lists).
        expected: usize,
    },
    /// A probe value was NaN or infinite.
    #[error("probe {row} holds a value that is not finite")]
    BadValue {
        /// Probe index within the batch.
        row: usize,
    },
    /// `k` above the largest top-k the kernels keep.
    #[error("k = {k} exceeds the maximum {max}")]
    KTooLarge {
        /// Requested k.
        k: usize,
        /// Largest k accepted.
        max: usize,
    },
    /// A slot beyond the shard's slots.
    #[error("slot {slot} is out of range ({slots} slots)")]
    SlotOutOfRange {
        /// Requested slot.
        slot: u32,
        /// Slots in the shard.
        slots: usize,
    },
    /// A chunk size that cannot be bound as one storage buffer on this device.
    #[error("chunk of {bytes} bytes exceeds the storage binding limit of {limit} bytes")]
    ChunkTooLarge {
        /// Bytes one chunk would take.
        bytes: u64,
        /// The device's max_storage_buffer_binding_size (or max_buffer_size).
        limit: u64,
    },
    /// The kernel left an output entry unwritten (the sentinel survived) or returned a slot
    /// that is not live: a kernel bug. The batch is not trusted; the engine fails over.
    #[error("kernel {kernel} produced an invalid output at index {index}")]
    BadOutput {
        /// Kernel name.
        kernel: &'static str,
        /// Output index.
        index: usize,
    },
    /// wgpu or the driver panicked inside a call; the device state is unknown.
    #[error("GPU call panicked: {message}")]
    Panicked {
        /// The panic payload, when it was text.
        message: String,
    },
}

impl GpuError {
    /// [`GpuError::Panicked`] from a caught panic's payload, with its text when it has one.
    pub(crate) fn panicked(payload: &(dyn std::any::Any + Send)) -> Self {
        let message = if let Some(text) = payload.downcast_ref::<&str>() {
            (*text).to_owned()
        } else if let Some(text) = payload.downcast_ref::<String>() {
            text.clone()
        } else {
            "a panic without a message".to_owned()
        };
        GpuError::Panicked { message }
    }

    /// True when the device can no longer be trusted and the engine must fail over.
    pub fn is_device_failure(&self) -> bool {
        matches!(
            self,
            GpuError::DeviceLost { .. }
                | GpuError::Submission { .. }
                | GpuError::OutOfMemory { .. }
                | GpuError::BadOutput { .. }
                | GpuError::Panicked { .. }
                | GpuError::Shader { .. }
        )
    }
}
