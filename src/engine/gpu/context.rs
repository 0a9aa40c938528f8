//! The headless device: adapter choice, loss tracking, and the kernel cache.
//!
//! A [`GpuContext`] is cheap to clone (it is one `Arc`) and is shared by every gallery copy on
//! the device. wgpu reports asynchronous failures through callbacks;
//! the context records them so that the next call returns a [`GpuError`] instead of wgpu's
//! default behaviour, which is to panic.

use std::collections::HashMap;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use super::error::GpuError;
use super::shaders::{self, Kernel, Pipeline};

/// How often a read-back whose work is done looks again for its map callback.
const MAP_POLL_INTERVAL: Duration = Duration::from_millis(2);

/// How long a read-back whose work is done waits for its map callback before the device is
/// declared failed.
const MAP_CALLBACK_TIMEOUT: Duration = Duration::from_secs(10);

/// A device and queue on one adapter, with no surface.
#[derive(Clone, Debug)]
pub struct GpuContext {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    device: wgpu::Device,
    queue: wgpu::Queue,
    adapter_info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    /// Set by the device-lost callback; once set, every call fails with `DeviceLost`.
    lost: Arc<Mutex<Option<String>>>,
    /// The first uncaptured error since it was last taken.
    uncaptured: Arc<Mutex<Option<String>>>,
    /// Pipelines are built once per context: the first build of a kernel costs up to a
    /// second on a software driver.
    pipelines: Mutex<HashMap<Kernel, Arc<Pipeline>>>,
}

impl GpuContext {
    /// Opens the highest-performance adapter, headless.
    ///
    /// With `allow_software` false, a CPU adapter (lavapipe, WARP, SwiftShader) is refused
    /// with [`GpuError::NoAdapter`]: on a production appliance the CPU engine beats a
    /// software rasteriser. `backend = "gpu"`, the bench and the tests pass true. The device
    /// gets the adapter's full limits
    /// (the defaults cap storage bindings at 128 MiB and buffers at 256 MiB) and SHADER_F16
    /// when offered. `WGPU_BACKEND` and the other wgpu environment variables are honoured.
    pub fn new(allow_software: bool) -> Result<Self, GpuError> {
        let options = wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            force_fallback_adapter: false,
            compatible_surface: None,
            apply_limit_buckets: false,
        };
        let request = |backend| pollster::block_on(instance(backend).request_adapter(&options));
        let adapter = match request(Fallback::Primary) {
            Ok(adapter) => Ok(adapter),
            Err(_) if std::env::var_os("WGPU_BACKEND").is_none() => request(Fallback::Gl),
            Err(e) => Err(e),
        }
        .map_err(|e| GpuError::NoAdapter {
            reason: e.to_string(),
        })?;
        let adapter_info = adapter.get_info();
        if adapter_info.device_type == wgpu::DeviceType::Cpu && !allow_software {
            let reason = format!("only the software adapter {} was found", adapter_info.name);
            return Err(GpuError::NoAdapter { reason });
        }

        let required_features = adapter.features() & wgpu::Features::SHADER_F16;
        let descriptor = wgpu::DeviceDescriptor {
            label: Some("gatematch"),
            required_features,
            required_limits: adapter.limits(),
            ..Default::default()
        };
        let (device, queue) =
            pollster::block_on(adapter.request_device(&descriptor)).map_err(|e| {
                GpuError::RequestDevice {
                    adapter: adapter_info.name.clone(),
                    message: e.to_string(),
                }
            })?;

        let lost = Arc::new(Mutex::new(None));
        let lost_writer = Arc::clone(&lost);
        device.set_device_lost_callback(move |reason, message| {
            let text = match message.is_empty() {
                true => format!("{reason:?}"),
                false => format!("{reason:?}: {message}"),
            };
            *lost_writer.lock().unwrap_or_else(PoisonError::into_inner) = Some(text);
        });
        let uncaptured = Arc::new(Mutex::new(None));
        let uncaptured_writer = Arc::clone(&uncaptured);
        device.on_uncaptured_error(Arc::new(move |error: wgpu::Error| {
            let mut slot = uncaptured_writer
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // Keep the first: later errors are usually consequences of it.
            slot.get_or_insert_with(|| describe(&error));
        }));

        let limits = device.limits();
        let inner = Inner {
            device,
            queue,
            adapter_info,
            limits,
            lost,
            uncaptured,
            pipelines: Mutex::new(HashMap::new()),
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The device, for callers that build their own work on it.
    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }

    /// The queue of [`Self::device`].
    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }

    /// Adapter name, backend and device type (`Cpu` for lavapipe), for logs and metrics.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.inner.adapter_info
    }

    /// Whether the adapter is a software rasteriser (lavapipe, WARP, SwiftShader).
    pub fn is_software(&self) -> bool {
        self.inner.adapter_info.device_type == wgpu::DeviceType::Cpu
    }

    /// The limits the device was created with (the adapter's own).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.inner.limits
    }

    /// Whether f16 storage ([`super::StorageFormat::F16`]) is available.
    pub fn supports_f16(&self) -> bool {
        self.inner
            .device
            .features()
            .contains(wgpu::Features::SHADER_F16)
    }

    /// Destroys the device, as a lost GPU would. For failover tests: every later call on
    /// this context returns [`GpuError::DeviceLost`].
    pub fn destroy_device(&self) {
        self.inner.device.destroy();
    }

    /// Fails if the device was lost or an uncaptured error was recorded.
    ///
    /// Both are sticky: wgpu does not always call the lost callback on `destroy` (lavapipe
    /// reports only validation errors afterwards), and after any failed submission the
    /// contents of the gallery buffers are unknown, so the context is poisoned for good and
    /// the engine must fail over and rebuild.
    pub(crate) fn check(&self) -> Result<(), GpuError> {
        // A non-blocking poll runs wgpu's maintenance, which is where a destroyed device's
        // lost callback fires; without it a write after `destroy` would look successful.
        let polled = self.inner.device.poll(wgpu::PollType::Poll);
        if let Some(reason) = self
            .inner
            .lost
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            return Err(GpuError::DeviceLost { reason });
        }
        let taken = self
            .inner
            .uncaptured
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match taken {
            Some(message) => Err(GpuError::Submission { message }),
            None => polled.map(drop).map_err(|e| GpuError::Submission {
                message: e.to_string(),
            }),
        }
    }

    /// Records `error` so every later call fails too (see [`Self::check`]).
    fn poison(&self, error: GpuError) -> GpuError {
        if let GpuError::Submission { message } = &error {
            let mut slot = self
                .inner
                .uncaptured
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            slot.get_or_insert_with(|| message.clone());
        }
        error
    }

    /// The built pipeline of `kernel`, building it on first use.
    pub(crate) fn pipeline(&self, kernel: Kernel) -> Result<Arc<Pipeline>, GpuError> {
        let mut cache = self
            .inner
            .pipelines
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(pipeline) = cache.get(&kernel) {
            return Ok(Arc::clone(pipeline));
        }
        let pipeline = Arc::new(shaders::build(&self.inner.device, kernel)?);
        cache.insert(kernel, Arc::clone(&pipeline));
        Ok(pipeline)
    }

    /// Creates a buffer, turning allocation failure into [`GpuError::OutOfMemory`].
    pub(crate) fn buffer(
        &self,
        label: &str,
        bytes: u64,
        usage: wgpu::BufferUsages,
    ) -> Result<wgpu::Buffer, GpuError> {
        let device = &self.inner.device;
        let scope = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage,
            mapped_at_creation: false,
        });
        if pollster::block_on(scope.pop()).is_some() {
            return Err(GpuError::OutOfMemory { bytes });
        }
        self.check()?;
        Ok(buffer)
    }

    /// A buffer holding `data`, for inputs and uniforms.
    pub(crate) fn buffer_with(
        &self,
        label: &str,
        data: &[u8],
        usage: wgpu::BufferUsages,
    ) -> Result<wgpu::Buffer, GpuError> {
        // Zero-size bindings are invalid; a 4-byte buffer stands in for empty input.
        let bytes = (data.len() as u64).max(4).next_multiple_of(4);
        let buffer = self.buffer(label, bytes, usage | wgpu::BufferUsages::COPY_DST)?;
        if !data.is_empty() {
            self.inner.queue.write_buffer(&buffer, 0, data);
        }
        Ok(buffer)
    }

    /// Submits `encoder` without waiting for it (gallery growth copies); a failure shows at
    /// the next [`Self::check`], and the queue runs it before any later submission.
    pub(crate) fn submit(&self, encoder: wgpu::CommandEncoder) -> Result<(), GpuError> {
        self.check()?;
        self.inner.queue.submit([encoder.finish()]);
        Ok(())
    }

    /// Submits `encoder`, waits for it, and returns the bytes of `readback` (a MAP_READ
    /// buffer the commands copied into).
    pub(crate) fn submit_and_read(
        &self,
        encoder: wgpu::CommandEncoder,
        readback: &wgpu::Buffer,
    ) -> Result<Vec<u8>, GpuError> {
        self.submit_and_read_inner(encoder, readback)
            .map_err(|e| self.poison(e))
    }

    fn submit_and_read_inner(
        &self,
        encoder: wgpu::CommandEncoder,
        readback: &wgpu::Buffer,
    ) -> Result<Vec<u8>, GpuError> {
        self.check()?;
        self.inner.queue.submit([encoder.finish()]);
        let (sender, receiver) = std::sync::mpsc::channel();
        readback.map_async(wgpu::MapMode::Read, .., move |result| {
            // The receiver outlives the poll below; a failed send only means we gave up.
            let _ = sender.send(result);
        });
        let polled = self.inner.device.poll(wgpu::PollType::wait_indefinitely());
        self.check()?;
        polled.map_err(|e| GpuError::Submission {
            message: e.to_string(),
        })?;
        // The work is done, but the map callback runs in whichever thread polls the device:
        // when engines share a context, another thread's poll may be running ours right now.
        let waited = Instant::now();
        let mapped = loop {
            match receiver.recv_timeout(MAP_POLL_INTERVAL) {
                Ok(mapped) => break mapped,
                Err(RecvTimeoutError::Timeout) if waited.elapsed() < MAP_CALLBACK_TIMEOUT => {
                    self.check()?;
                }
                Err(_) => {
                    let message = "buffer map did not complete".to_owned();
                    return Err(GpuError::Submission { message });
                }
            }
        };
        mapped.map_err(|e| GpuError::Submission {
            message: e.to_string(),
        })?;
        let bytes = readback
            .get_mapped_range(..)
            .map_err(|e| GpuError::Submission {
                message: e.to_string(),
            })?
            .to_vec();
        readback.unmap();
        Ok(bytes)
    }
}

/// The process's wgpu instance for `backend` (Vulkan, or GL as the fallback), made on first
/// use and never dropped.
///
/// Dropping an instance unloads the Vulkan drivers (`dlclose`), which runs their destructors;
/// when that happens on the batcher's thread while the process exits, Mesa's destructors race
/// the exit handlers and crash. One instance for the process life avoids that, and spares each
/// engine the driver loading. `WGPU_BACKEND`, when set, overrides the backend (read once).
///
/// Vulkan and GL are not enumerated together: probing GL makes an EGL context current on the
/// calling thread, and doing that while another thread works on a GL adapter panicked inside
/// wgpu-hal (seen under parallel tests on lavapipe). GL is tried only when Vulkan offers nothing.
fn instance(backend: Fallback) -> &'static wgpu::Instance {
    static VULKAN: OnceLock<wgpu::Instance> = OnceLock::new();
    static GL: OnceLock<wgpu::Instance> = OnceLock::new();
    let (cell, backends) = match backend {
        Fallback::Primary => (&VULKAN, wgpu::Backends::VULKAN),
        Fallback::Gl => (&GL, wgpu::Backends::GL),
    };
    cell.get_or_init(|| {
        let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle();
        descriptor.backends = backends;
        wgpu::Instance::new(descriptor.with_env())
    })
}

/// Which instance [`instance`] returns.
#[derive(Clone, Copy)]
enum Fallback {
    /// Vulkan, or what `WGPU_BACKEND` names.
    Primary,
    /// GL, for machines without a Vulkan driver.
    Gl,
}

/// The useful text of a wgpu error (its `Display` is only the category).
fn describe(error: &wgpu::Error) -> String {
    match error {
        wgpu::Error::OutOfMemory { .. } => "out of memory".to_owned(),
        wgpu::Error::Validation { description, .. } => format!("validation: {description}"),
        wgpu::Error::Internal { description, .. } => format!("internal: {description}"),
    }
}
