//! [`GpuEngine`]: the GPU as a [`Backend`], with the CPU engine behind it for failover.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use super::context::GpuContext;
use super::error::GpuError;
use super::gallery::{GpuGallery, dimension_supported};
use super::{MAX_K, StorageFormat};
use crate::engine::cpu::CpuEngine;
use crate::engine::{Backend, Candidate, EngineError};
use crate::gallery::{Shard, ShardId};
use crate::metrics;

/// Shard copies kept on the device at most; the least recently used goes first. An appliance
/// serves a handful of models; the bound only matters to tests and benches that make many
/// galleries against one engine.
const MAX_RESIDENT_SHARDS: usize = 16;

/// How to open a [`GpuEngine`].
#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// Scan format on the device. f16 falls back to f32, with a warning, on an adapter
    /// without SHADER_F16.
    pub format: StorageFormat,
    /// Accept a software adapter such as lavapipe (tests, CI, `backend = "gpu"`).
    pub allow_software: bool,
    /// Rows per GPU buffer; `None` for the most that fit one storage binding. Tests set it
    /// small to make a gallery span several buffers.
    pub chunk_rows: Option<usize>,
    /// Threads of the CPU engine that takes over on failure (0: one per core).
    pub cpu_threads: usize,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            format: StorageFormat::F32,
            allow_software: false,
            chunk_rows: None,
            cpu_threads: 0,
        }
    }
}

/// The shard copies on the device.
#[derive(Default)]
struct Resident {
    galleries: HashMap<ShardId, (GpuGallery, u64)>,
    clock: u64,
}

impl Resident {
    /// The copy of `shard`, made or brought up to date.
    fn synced(
        &mut self,
        ctx: &GpuContext,
        shard: &Shard,
        format: StorageFormat,
        chunk_rows: Option<usize>,
    ) -> Result<&GpuGallery, GpuError> {
        self.clock += 1;
        let id = shard.id();
        if !self.galleries.contains_key(&id) && self.galleries.len() >= MAX_RESIDENT_SHARDS {
            let oldest = self.galleries.iter().min_by_key(|(_, (_, used))| *used);
            if let Some(old) = oldest.map(|(old, _)| *old) {
                self.galleries.remove(&old);
            }
        }
        let (gallery, used) = match self.galleries.entry(id) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                entry.insert((GpuGallery::new(ctx, shard, format, chunk_rows)?, 0))
            }
        };
        *used = self.clock;
        let before = gallery.device_bytes();
        gallery.sync(shard)?;
        if gallery.device_bytes() != before {
            let total = self.galleries.values().map(|(g, _)| g.device_bytes()).sum();
            metrics::gpu_gallery_bytes(total);
        }
        Ok(&self.galleries[&id].0)
    }
}

/// The GPU backend. Scores on the device while it works, and on its own CPU engine from the
/// first device failure on (see the [module docs](super)).
pub struct GpuEngine {
    ctx: GpuContext,
    format: StorageFormat,
    chunk_rows: Option<usize>,
    resident: Mutex<Resident>,
    failed: AtomicBool,
    cpu: CpuEngine,
}

impl GpuEngine {
    /// Opens the adapter `options` allow and builds an engine on it.
    pub fn new(options: &GpuOptions) -> Result<GpuEngine, GpuError> {
        let ctx = GpuContext::new(options.allow_software)?;
        Ok(GpuEngine::on(ctx, options))
    }

    /// An engine on an open context (tests share one per process).
    pub fn on(ctx: GpuContext, options: &GpuOptions) -> GpuEngine {
        let mut format = options.format;
        if format == StorageFormat::F16 && !ctx.supports_f16() {
            tracing::warn!(
                adapter = %ctx.adapter_info().name,
                "the adapter does not offer SHADER_F16; the GPU gallery is stored as f32"
            );
            format = StorageFormat::F32;
        }
        GpuEngine {
            ctx,
            format,
            chunk_rows: options.chunk_rows,
            resident: Mutex::new(Resident::default()),
            failed: AtomicBool::new(false),
            cpu: CpuEngine::new(options.cpu_threads),
        }
    }

    /// The adapter's name, as the driver gives it.
    pub fn adapter_name(&self) -> &str {
        &self.ctx.adapter_info().name
    }

    /// The device context.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// The scan format in use (f32 when f16 was asked for but not offered).
    pub fn format(&self) -> StorageFormat {
        self.format
    }

    /// Whether the engine has moved to the CPU for good.
    pub fn has_failed_over(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Destroys the device, as a lost GPU would; for failover tests and drills. The call in
    /// flight, if any, and every later one are answered by the CPU engine.
    pub fn destroy_device(&self) {
        self.ctx.destroy_device();
    }

    /// Runs `work` on the device copy of `shard`; `None` when the CPU must answer instead.
    fn on_gpu<T>(
        &self,
        shard: &Shard,
        work: impl FnOnce(&GpuGallery) -> Result<T, GpuError>,
    ) -> Option<T> {
        if self.has_failed_over() || !dimension_supported(shard.dimension()) {
            return None;
        }
        let mut resident = self.resident.lock().unwrap_or_else(PoisonError::into_inner);
        // wgpu reports device errors through our handlers, but a driver or wgpu bug may still
        // panic; that must end in failover, not in a dead batcher thread.
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            let gallery = resident.synced(&self.ctx, shard, self.format, self.chunk_rows)?;
            work(gallery)
        }));
        let error = match outcome {
            Ok(Ok(value)) => return Some(value),
            Ok(Err(error)) => error,
            Err(payload) => GpuError::panicked(payload.as_ref()),
        };
        if error.is_device_failure() {
            resident.galleries.clear();
            metrics::gpu_gallery_bytes(0);
            self.fail_over(&error);
        } else {
            tracing::debug!(%error, "input the GPU path does not take; scored on the CPU");
        }
        None
    }

    /// Moves to the CPU for good; logs and counts only the first time.
    fn fail_over(&self, error: &GpuError) {
        if self.failed.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::error!(
            adapter = %self.adapter_name(),
            %error,
            "GPU failed; this batch and all later ones are scored on the CPU"
        );
        metrics::backend_failover("gpu", "cpu", self.adapter_name());
    }
}

impl Backend for GpuEngine {
    fn name(&self) -> &'static str {
        if self.has_failed_over() { "cpu" } else { "gpu" }
    }

    fn identify(
        &self,
        shard: &Shard,
        probes: &[f32],
        k: usize,
    ) -> Result<Vec<Vec<Candidate>>, EngineError> {
        let found = match k {
            0..=MAX_K => self.on_gpu(shard, |g| g.identify(shard, probes, k)),
            _ => None,
        };
        match found {
            Some(found) => Ok(found),
            None => self.cpu.identify(shard, probes, k),
        }
    }

    fn verify(
        &self,
        shard: &Shard,
        probes: &[f32],
        slots: &[Vec<u32>],
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let slot_count = shard.slot_count();
        if let Some(&slot) = slots.iter().flatten().find(|&&s| s as usize >= slot_count) {
            return Err(EngineError::SlotOutOfRange {
                slot,
                slots: slot_count,
            });
        }
        match self.on_gpu(shard, |g| g.verify(shard, probes, slots)) {
            Some(scores) => Ok(scores),
            None => self.cpu.verify(shard, probes, slots),
        }
    }
}
