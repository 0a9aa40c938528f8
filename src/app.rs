//! The commands of the `gatematch` binary, as library functions: `main.rs` only parses the
//! command line and calls these.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::{BackendChoice, Config, ConfigError, FaceConfig, SYNTHETIC_MODEL};
use crate::engine::Backend;
use crate::engine::cpu::CpuEngine;
use crate::engine::gpu::{GpuEngine, GpuError, GpuOptions};
use crate::face::capture::{CaptureError, FailoverFinder, FindFaces, PooledFinder};
use crate::face::detect::{FaceFinder, GpuFaceFinder};
use crate::face::network::FailoverEmbedder;
use crate::face::{CpuNetwork, EmbedError, Embedder, GpuNetwork, ModelError};
use crate::flows::{Appliance, ApplianceError, FaceNetworks};
use crate::gallery::snapshot::{self, Snapshot, SnapshotError};
use crate::gate::photos::PhotoError;
use crate::gate::simulate::{self, Mix, Report, Simulation};
use crate::gate::travellers::Population;
use crate::gate::{GateClient, GateError};
use crate::pki::{self, PkiError};
use crate::proto;
use crate::registry::{self, Origin, RegistryError};
use crate::server::{self, ServerError};

/// What can fail in a command.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The configuration is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The appliance could not start.
    #[error(transparent)]
    Appliance(#[from] ApplianceError),
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The endpoint could not start.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// A snapshot could not be read or written.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// Certificates could not be made or read.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// A simulated gate failed.
    #[error(transparent)]
    Gate(#[from] GateError),
    /// The demo's face photos could not be sent.
    #[error(transparent)]
    Photos(#[from] PhotoError),
    /// `backend = "gpu"` was asked for and no GPU could be opened.
    #[error(transparent)]
    Gpu(#[from] GpuError),
    /// The face model file named in the configuration is missing or damaged.
    #[error("face model: {0}")]
    Model(#[from] ModelError),
    /// The face network could not be set up.
    #[error("face network: {0}")]
    Embed(#[from] EmbedError),
    /// The face detector could not be set up.
    #[error("face detector: {0}")]
    Capture(#[from] CaptureError),
    /// The metrics exporter could not start.
    #[error("metrics exporter: {0}")]
    Metrics(#[from] metrics_exporter_prometheus::BuildError),
    /// A snapshot's model does not fit what was asked.
    #[error("{0}")]
    Mismatch(String),
    /// A file or folder could not be used.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The backend the configuration asks for (see [`BackendChoice`]), logged at info and
/// exported as `gatematch_backend_info`.
pub fn backend(config: &Config) -> Result<Arc<dyn Backend>, CommandError> {
    let choice = config.engine.backend;
    if choice == BackendChoice::Cpu {
        return Ok(cpu_backend(config, "configured"));
    }
    let options = GpuOptions {
        format: config.engine.gpu_format,
        allow_software: choice == BackendChoice::Gpu,
        chunk_rows: None,
        cpu_threads: config.engine.threads,
    };
    match GpuEngine::new(&options) {
        Ok(engine) => {
            let info = engine.context().adapter_info();
            tracing::info!(
                backend = "gpu",
                adapter = %info.name,
                device_type = ?info.device_type,
                driver = ?info.backend,
                format = %engine.format(),
                "engine backend chosen"
            );
            crate::metrics::backend("gpu", &info.name);
            Ok(Arc::new(engine))
        }
        Err(e) if choice == BackendChoice::Auto => Ok(cpu_backend(config, &e.to_string())),
        Err(e) => Err(CommandError::Gpu(e)),
    }
}

fn cpu_backend(config: &Config, why: &str) -> Arc<dyn Backend> {
    let engine = CpuEngine::new(config.engine.threads);
    tracing::info!(
        backend = "cpu",
        threads = engine.threads(),
        why,
        "engine backend chosen"
    );
    crate::metrics::backend("cpu", crate::metrics::NO_ADAPTER);
    Arc::new(engine)
}

/// The descriptor network for face images when the configuration has a `[face]` section:
/// the model file loaded and checked (a missing or damaged file stops the start with the
/// fix in the message), on the backend `face.backend` asks for. A GPU network has the CPU
/// network behind it: if the device fails, that batch and every later one run on the CPU.
pub fn face_networks(config: &Config) -> Result<Option<FaceNetworks>, CommandError> {
    let Some(face) = &config.face else {
        return Ok(None);
    };
    let model = crate::face::model::file::load_model(&face.model)?;
    let threads = crate::face::embed::resolve_threads(face.threads);
    let cpu = CpuNetwork::new(&model, threads)?;
    let chosen = |backend: &str, why: &str| {
        tracing::info!(
            backend,
            threads,
            model = %face.model.display(),
            model_id = %face.model_id,
            why,
            "face network loaded"
        );
    };
    // As for scoring: `auto` takes a hardware GPU only, `gpu` any adapter and nothing else.
    let gpu = match face.backend {
        BackendChoice::Cpu => None,
        choice => Some(GpuNetwork::open(&model, choice == BackendChoice::Gpu)),
    };
    let embedder: Arc<dyn Embedder> = match gpu {
        None => {
            chosen("cpu", "configured");
            Arc::new(cpu)
        }
        Some(Ok(gpu)) => {
            let adapter = gpu.context().adapter_info().name.clone();
            chosen("gpu", &adapter);
            Arc::new(FailoverEmbedder::new(Box::new(gpu), cpu))
        }
        Some(Err(e)) if face.backend == BackendChoice::Auto => {
            chosen("cpu", &e.to_string());
            Arc::new(cpu)
        }
        Some(Err(e)) => return Err(CommandError::Embed(e)),
    };
    let finder = face_finder(&face.model, threads, face.backend)?;
    Ok(Some(FaceNetworks { embedder, finder }))
}

/// The face detector and landmark network from the model file, on the backend `backend` asks
/// for (as the descriptor network's, `face.backend`): on the CPU on `threads` threads of their
/// own, or on a GPU with that CPU finder behind it for failover. `None` for a model file made
/// without them (gates must then send landmarks or a crop).
fn face_finder(
    model: &std::path::Path,
    threads: usize,
    backend: BackendChoice,
) -> Result<Option<Arc<dyn FindFaces>>, CommandError> {
    let Some(weights) = crate::face::detect::load_detection(model)? else {
        tracing::warn!(
            model = %model.display(),
            "the face model file has no detector: gates must send landmarks or a ready crop"
        );
        return Ok(None);
    };
    let finder = FaceFinder::new(&weights).map_err(CaptureError::from)?;
    let cpu = PooledFinder::new(finder, threads)?;
    let loaded = |backend: &str, why: &str| {
        tracing::info!(
            detector = "ssd_mobilenetv1",
            landmarks = "face_landmark_68",
            backend,
            threads,
            why,
            "face detector loaded"
        );
    };
    // As for the descriptor network: `auto` takes a hardware GPU only, `gpu` any adapter.
    let gpu = match backend {
        BackendChoice::Cpu => None,
        choice => Some(GpuFaceFinder::open(&weights, choice == BackendChoice::Gpu)),
    };
    match gpu {
        None => {
            loaded("cpu", "configured");
            Ok(Some(Arc::new(cpu)))
        }
        Some(Ok(gpu)) => {
            let adapter = gpu.context().adapter_info().name.clone();
            loaded("gpu", &adapter);
            Ok(Some(Arc::new(FailoverFinder::new(
                Box::new(gpu),
                Box::new(cpu),
            ))))
        }
        Some(Err(e)) if backend == BackendChoice::Auto => {
            loaded("cpu", &e.to_string());
            Ok(Some(Arc::new(cpu)))
        }
        Some(Err(e)) => Err(CommandError::Capture(CaptureError::Detection(e))),
    }
}

/// An appliance running inside this process (the demo and the tests use it).
pub struct RunningAppliance {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The service behind the endpoint.
    pub appliance: Arc<Appliance>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl RunningAppliance {
    /// Stops accepting, closes every connection and waits for the endpoint to go idle.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.task.await;
    }
}

/// Opens the registry, loads the gallery and starts serving gates in a background task.
pub fn start(config: &Config) -> Result<RunningAppliance, CommandError> {
    let appliance = Arc::new(Appliance::open(
        config,
        backend(config)?,
        face_networks(config)?,
    )?);
    let endpoint = server::bind(&config.server)?;
    let addr = endpoint.local_addr().map_err(|source| CommandError::Io {
        path: PathBuf::from("udp socket"),
        source,
    })?;
    let (stop, stopped) = oneshot::channel::<()>();
    let server_config = config.server.clone();
    let serving = Arc::clone(&appliance);
    let task = tokio::spawn(async move {
        server::serve(endpoint, &server_config, serving, async {
            let _ = stopped.await;
        })
        .await;
    });
    Ok(RunningAppliance {
        addr,
        appliance,
        stop: Some(stop),
        task,
    })
}

/// `gatematch serve`: runs until SIGINT or SIGTERM.
pub async fn serve(config: Config) -> Result<(), CommandError> {
    let _metrics = crate::metrics::install(config.metrics.listener())?;
    if let Some(addr) = config.metrics.listener() {
        tracing::info!(%addr, "metrics at http://{addr}/metrics");
    }
    let running = start(&config)?;
    tracing::info!(
        addr = %running.addr,
        registry = %config.registry.path.display(),
        "appliance started"
    );
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.stop().await;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(term) => { term.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

/// `gatematch gallery export`: writes one model's templates from the registry to HDF5.
pub fn export(registry_path: &Path, model_id: &str, out: &Path) -> Result<usize, CommandError> {
    let connection = registry::connect(registry_path)?;
    let mut snap = Snapshot {
        model_id: model_id.to_owned(),
        dimension: 0,
        templates: Vec::new(),
        person_ids: Vec::new(),
    };
    let mut mismatch = None;
    registry::for_each_template(&connection, Some(model_id), |t| {
        if snap.person_ids.is_empty() {
            snap.dimension = t.values.len();
        }
        if t.values.len() != snap.dimension {
            mismatch = Some(t.values.len());
            return;
        }
        snap.templates.extend_from_slice(&t.values);
        snap.person_ids.push(t.person_id);
    })?;
    if let Some(len) = mismatch {
        return Err(CommandError::Mismatch(format!(
            "model {model_id:?} has templates of {len} and {} values",
            snap.dimension
        )));
    }
    snapshot::write(out, &snap)?;
    Ok(snap.len())
}

/// `gatematch gallery import`: adds a snapshot's templates to the registry, offline.
pub fn import(registry_path: &Path, file: &Path) -> Result<usize, CommandError> {
    let snap = snapshot::read(file)?;
    let origin = Origin {
        gate_id: "gallery-import".into(),
        site: file.display().to_string(),
    };
    let rows = snap
        .person_ids
        .iter()
        .zip(snap.templates.chunks_exact(snap.dimension.max(1)))
        .map(|(id, values)| (id.as_str(), values));
    Ok(registry::import(
        registry_path,
        &snap.model_id,
        proto::Modality::Face as i32,
        rows,
        &origin,
    )?)
}

/// `gatematch gallery synth`: a snapshot of synthetic travellers `0..persons`, the same ones
/// `gatematch gate --enrolled` expects.
pub fn synth(
    out: &Path,
    persons: u64,
    dimension: usize,
    seed: u64,
    model_id: &str,
) -> Result<(), CommandError> {
    let population = Population { seed, dimension };
    let mut snap = Snapshot {
        model_id: model_id.to_owned(),
        dimension,
        templates: Vec::with_capacity(persons as usize * dimension),
        person_ids: Vec::with_capacity(persons as usize),
    };
    for i in 0..persons {
        snap.templates.extend_from_slice(&population.template(i));
        snap.person_ids.push(population.person_id(i));
    }
    Ok(snapshot::write(out, &snap)?)
}

/// What `gatematch demo` does.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Folder for the PKI, the registry and the config (a fresh temporary one if absent).
    pub dir: Option<PathBuf>,
    /// Simulated gates.
    pub gates: usize,
    /// Travellers to enrol before the mixed traffic.
    pub travellers: u64,
    /// Offered requests per second.
    pub rate_per_s: f64,
    /// Seconds of mixed traffic.
    pub seconds: f64,
    /// Metrics listener.
    pub metrics: Option<SocketAddr>,
    /// The face model file and the folder of demo photos, for the face phase.
    pub faces: Option<(PathBuf, PathBuf)>,
}

/// `gatematch demo`: an appliance on an embedded default registry, simulated gates that enrol
/// travellers and then verify and identify them; returns both phases' reports.
pub async fn demo(options: DemoOptions) -> Result<(Report, Report), CommandError> {
    let scratch;
    let dir = match &options.dir {
        Some(dir) => dir.clone(),
        None => {
            scratch = tempdir()?;
            scratch.clone()
        }
    };
    let certs = dir.join("certs");
    pki::write_development_pki(&certs, options.gates, "demo-airport", &[])?;
    let registry_path = dir.join("gatematch.db");
    let mut config = Config::development(
        &certs,
        &registry_path,
        SocketAddr::from(([127, 0, 0, 1], 0)),
    );
    if let Some(addr) = options.metrics {
        config.metrics = crate::config::MetricsConfig {
            enabled: true,
            listen: addr,
        };
    }
    if let Some((model, _)) = &options.faces {
        config.face = Some(FaceConfig::with_model(model));
    }
    let metrics = crate::metrics::install(config.metrics.listener())?;
    let running = start(&config)?;
    println!(
        "appliance listening on {} (QUIC, mutual TLS); registry {}",
        running.addr,
        registry_path.display()
    );
    if let Some(addr) = options.metrics {
        println!("metrics: http://{addr}/metrics");
    }
    let population = Population {
        seed: 2026,
        dimension: 128,
    };
    let base = Simulation {
        server: running.addr,
        server_name: "localhost".into(),
        certs: certs.clone(),
        gates: options.gates,
        rate_per_s: options.rate_per_s,
        duration: Duration::from_secs_f64(options.travellers as f64 / options.rate_per_s),
        mix: Mix {
            enrol: 1,
            verify: 0,
            identify: 0,
        },
        population,
        enrolled: 0,
        first_new: 0,
        impostor_share: 0.1,
        identify_k: 5,
        deadline_ms: 2_000,
        model_id: SYNTHETIC_MODEL.into(),
        seed: 1,
        progress: true,
    };
    println!(
        "\nphase 1: {} gates enrol about {} travellers",
        options.gates, options.travellers
    );
    let enrolment = simulate::run(base.clone()).await?;
    println!("{enrolment}");
    let enrolled = running
        .appliance
        .gallery()
        .read()
        .map(|g| g.person_count())
        .unwrap_or(0) as u64;
    let traffic = Simulation {
        duration: Duration::from_secs_f64(options.seconds),
        mix: Mix {
            enrol: 1,
            verify: 8,
            identify: 2,
        },
        enrolled,
        first_new: enrolled + 1_000_000,
        seed: 2,
        ..base
    };
    println!(
        "phase 2: verify (10% impostors), identify and more enrolments against {enrolled} persons"
    );
    let mixed = simulate::run(traffic).await?;
    println!("{mixed}");
    if let Some((model, photos)) = &options.faces {
        // Whole frames when the model file has the detector; the recorded landmarks with each
        // photo when it has not.
        let landmarks = crate::face::detect::load_detection(model)?.is_none();
        println!(
            "phase 3: a gate sends face photos {}; the appliance {}runs them through the face \
             network ({})",
            if landmarks {
                "with their landmarks"
            } else {
                "as the camera took them"
            },
            if landmarks {
                ""
            } else {
                "finds and judges each face, then "
            },
            model.display()
        );
        let stem = certs.join("gates").join(pki::gate_name(1));
        let gate = GateClient::connect(
            running.addr,
            "localhost",
            &certs.join("ca.pem"),
            &stem.with_extension("pem"),
            &stem.with_extension("key"),
        )
        .await?;
        crate::gate::photos::run(&gate, photos, landmarks).await?;
        gate.close().await;
        println!();
    }
    println!("from the appliance's own metrics (gatematch_requests_total):");
    for line in metrics.render().lines() {
        if line.starts_with(crate::metrics::REQUESTS) {
            println!("  {line}");
        }
    }
    running.stop().await;
    if options.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok((enrolment, mixed))
}

fn tempdir() -> Result<PathBuf, CommandError> {
    let dir = std::env::temp_dir().join(format!("gatematch-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|source| CommandError::Io {
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}
