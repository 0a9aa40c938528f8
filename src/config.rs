//! The appliance's configuration: one TOML file, every field with its unit and default.
//!
//! Relative paths in the file are read relative to the file's own folder, so a config and its
//! certificates can move together. `deploy/gatematch.toml` is the documented example.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::engine::Measure;
use crate::engine::batcher::BatchConfig;
use crate::engine::gpu::StorageFormat;
use crate::face::preprocess::DecodeLimits;
use crate::face::quality::QualityPolicy;
use crate::gallery::ModelSpec;

/// What can be wrong with a configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        source: Box<toml::de::Error>,
    },
    /// A value is out of its range.
    #[error("config: {field} {problem}")]
    Invalid {
        /// The field, dotted.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
}

/// The whole configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The QUIC endpoint.
    pub server: ServerConfig,
    /// The durable store.
    #[serde(default)]
    pub registry: RegistryConfig,
    /// The Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Compute and batching.
    #[serde(default)]
    pub engine: EngineConfig,
    /// The models served; at least one.
    #[serde(default = "default_models")]
    pub models: Vec<ModelConfig>,
    /// Face images from gates; without this section gates must send templates.
    #[serde(default)]
    pub face: Option<FaceConfig>,
}

/// Face images from gates: the descriptor network that turns them into templates, where it
/// runs, how its work is batched and how large an image may be.
///
/// The descriptors are enrolled, and compared, as templates of the model `model_id`: a gallery
/// shard of 128 values compared by Euclidean distance. Gates may also send such descriptors
/// as templates themselves.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaceConfig {
    /// The model file made by `gatematch model import`. Required.
    pub model: PathBuf,
    /// The model id the descriptors are enrolled under. Default `face-api-1.7.15`.
    #[serde(default = "default_face_model_id")]
    pub model_id: String,
    /// Same person when the Euclidean distance of two descriptors is below this. Default 0.6,
    /// the model's customary threshold.
    #[serde(default = "default_face_threshold")]
    pub threshold: f32,
    /// Where the networks run: `auto`, `gpu` or `cpu`, as for `engine.backend`. The descriptor
    /// network and, when the model file has them, the face detector and the landmark network;
    /// on a GPU each has the CPU behind it if the device fails. Default `auto`.
    #[serde(default)]
    pub backend: BackendChoice,
    /// CPU threads for the network; 0 means one per core. Default 0.
    #[serde(default)]
    pub threads: usize,
    /// Most faces in one pass through the network. Default 16.
    #[serde(default = "default_face_max_batch")]
    pub max_batch: usize,
    /// Longest the oldest face waits for its batch to fill, in microseconds. Default 2000.
    #[serde(default = "default_face_max_wait_us")]
    pub max_wait_us: u64,
    /// Faces queued at most (about 270 KB each) before the answer is busy. Default 256.
    #[serde(default = "default_face_queue_capacity")]
    pub queue_capacity: usize,
    /// Largest encoded image accepted, in bytes. `server.max_message_bytes` bounds it too.
    /// Default 1 MiB.
    #[serde(default = "default_max_image_bytes")]
    pub max_image_bytes: usize,
    /// Largest width × height accepted. Default 16,000,000.
    #[serde(default = "default_max_image_pixels")]
    pub max_image_pixels: u64,
    /// The capture-quality checks every face with landmarks is held to (`[face.quality]`);
    /// see [`QualityPolicy`] for each threshold's default.
    #[serde(default)]
    pub quality: QualityPolicy,
}

impl FaceConfig {
    /// A face section with every default, for the model file at `model`.
    pub fn with_model(model: &Path) -> FaceConfig {
        FaceConfig {
            model: model.to_owned(),
            model_id: default_face_model_id(),
            threshold: default_face_threshold(),
            backend: BackendChoice::Auto,
            threads: 0,
            max_batch: default_face_max_batch(),
            max_wait_us: default_face_max_wait_us(),
            queue_capacity: default_face_queue_capacity(),
            max_image_bytes: default_max_image_bytes(),
            max_image_pixels: default_max_image_pixels(),
            quality: QualityPolicy::default(),
        }
    }

    /// The embed lane's batching.
    pub fn batch(&self) -> BatchConfig {
        BatchConfig {
            max_batch: self.max_batch,
            max_wait: Duration::from_micros(self.max_wait_us),
            queue_capacity: self.queue_capacity,
        }
    }

    /// The limits images are decoded within.
    pub fn decode_limits(&self) -> DecodeLimits {
        DecodeLimits {
            max_file_bytes: self.max_image_bytes,
            max_pixels: self.max_image_pixels,
        }
    }
}

/// The QUIC endpoint.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// UDP address to listen on. Default `127.0.0.1:4433`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The server's certificate chain, PEM.
    pub certificate: PathBuf,
    /// The server's private key, PEM.
    pub private_key: PathBuf,
    /// The CA that issues gate certificates, PEM; peers without a certificate from it are
    /// refused in the handshake.
    pub gate_ca: PathBuf,
    /// Largest request accepted, in bytes. Default 1 MiB.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// How long a gate may take to send a whole request once it opened the stream, in
    /// milliseconds. Default 5000.
    #[serde(default = "default_read_timeout_ms")]
    pub read_timeout_ms: u64,
    /// A connection with no traffic for this long is closed, in milliseconds. Gates keep
    /// theirs alive. Default 30000.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Requests one gate may have open at once. Default 256.
    #[serde(default = "default_max_streams_per_gate")]
    pub max_streams_per_gate: u32,
    /// The deadline of a request that names none, in milliseconds. Default 1000.
    #[serde(default = "default_deadline_ms")]
    pub default_deadline_ms: u32,
    /// The longest deadline a request may name, in milliseconds. Default 30000.
    #[serde(default = "default_max_deadline_ms")]
    pub max_deadline_ms: u32,
}

/// The durable store.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// The SQLite file. Default `gatematch.db`.
    #[serde(default = "default_registry_path")]
    pub path: PathBuf,
}

/// The Prometheus endpoint.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Whether to serve `/metrics` at all. Default true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// TCP address of the `/metrics` listener. Default `127.0.0.1:9464`.
    #[serde(default = "default_metrics_listen")]
    pub listen: SocketAddr,
}

impl MetricsConfig {
    /// The listener address, when enabled.
    pub fn listener(&self) -> Option<SocketAddr> {
        self.enabled.then_some(self.listen)
    }
}

/// Which compute backend scores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum BackendChoice {
    /// A hardware GPU when there is one, the CPU otherwise. A software adapter such as
    /// lavapipe is never taken: it is slower than the CPU engine.
    #[default]
    Auto,
    /// A GPU, software adapters included; the appliance refuses to start without one.
    Gpu,
    /// The CPU engine.
    Cpu,
}

/// Compute and batching.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// `auto`, `gpu` or `cpu` (see [`BackendChoice`]). Default `auto`.
    #[serde(default)]
    pub backend: BackendChoice,
    /// How the GPU stores the gallery for its scan: `f32` (4 bytes per value), `f16` (2; needs
    /// an adapter with SHADER_F16, else f32 with a warning) or `int8` (1, plus a scale per
    /// template). Scores are re-computed from f32 whichever is chosen. Default `f32`.
    #[serde(default)]
    pub gpu_format: StorageFormat,
    /// CPU threads for scoring (and for the CPU engine behind a GPU); 0 means one per core.
    /// Default 0.
    #[serde(default)]
    pub threads: usize,
    /// Most probes in one batch. Default 64.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Longest the oldest request waits for a batch to fill, in microseconds. Default 1000.
    #[serde(default = "default_max_wait_us")]
    pub max_wait_us: u64,
    /// Requests queued at most before the answer is busy. Default 4096.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// Largest k an identify request may ask for. Default 100.
    #[serde(default = "default_max_k")]
    pub max_k: u32,
    /// Most templates in one enrol request. Default 16.
    #[serde(default = "default_max_templates_per_enrol")]
    pub max_templates_per_enrol: usize,
}

/// One model served.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The id gates use.
    pub id: String,
    /// Values per template.
    pub dimension: usize,
    /// `cosine` or `euclidean`.
    pub measure: Measure,
    /// Decision threshold in the measure's unit.
    pub threshold: f32,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 4433))
}
fn default_max_message_bytes() -> usize {
    1 << 20
}
fn default_read_timeout_ms() -> u64 {
    5_000
}
fn default_idle_timeout_ms() -> u64 {
    30_000
}
fn default_max_streams_per_gate() -> u32 {
    256
}
fn default_deadline_ms() -> u32 {
    1_000
}
fn default_max_deadline_ms() -> u32 {
    30_000
}
fn default_registry_path() -> PathBuf {
    PathBuf::from("gatematch.db")
}
fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}
fn default_true() -> bool {
    true
}
fn default_max_batch() -> usize {
    64
}
fn default_max_wait_us() -> u64 {
    1_000
}
fn default_queue_capacity() -> usize {
    4_096
}
fn default_max_k() -> u32 {
    100
}
fn default_max_templates_per_enrol() -> usize {
    16
}

/// The model id face descriptors are enrolled under unless the configuration names another.
pub const FACE_MODEL_ID: &str = "face-api-1.7.15";

fn default_face_model_id() -> String {
    FACE_MODEL_ID.into()
}
fn default_face_threshold() -> f32 {
    crate::face::model::DEFAULT_THRESHOLD
}
fn default_face_max_batch() -> usize {
    16
}
fn default_face_max_wait_us() -> u64 {
    2_000
}
fn default_face_queue_capacity() -> usize {
    256
}
fn default_max_image_bytes() -> usize {
    1 << 20
}
fn default_max_image_pixels() -> u64 {
    16_000_000
}

/// The model the simulated gates use: random unit vectors compared by cosine similarity.
pub const SYNTHETIC_MODEL: &str = "synthetic-128";

fn default_models() -> Vec<ModelConfig> {
    vec![ModelConfig {
        id: SYNTHETIC_MODEL.into(),
        dimension: 128,
        measure: Measure::Cosine,
        threshold: 0.5,
    }]
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            path: default_registry_path(),
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: default_metrics_listen(),
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            backend: BackendChoice::Auto,
            gpu_format: StorageFormat::F32,
            threads: 0,
            max_batch: default_max_batch(),
            max_wait_us: default_max_wait_us(),
            queue_capacity: default_queue_capacity(),
            max_k: default_max_k(),
            max_templates_per_enrol: default_max_templates_per_enrol(),
        }
    }
}

impl Config {
    /// Reads and checks `path`, resolving relative paths against its folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(e),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut config.server.certificate,
            &mut config.server.private_key,
            &mut config.server.gate_ca,
            &mut config.registry.path,
        ]
        .into_iter()
        .chain(config.face.as_mut().map(|f| &mut f.model))
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// A configuration for a development PKI made by `gatematch certs --out certs_dir`.
    pub fn development(certs_dir: &Path, registry: &Path, listen: SocketAddr) -> Config {
        Config {
            server: ServerConfig {
                listen,
                certificate: certs_dir.join("server.pem"),
                private_key: certs_dir.join("server.key"),
                gate_ca: certs_dir.join("ca.pem"),
                max_message_bytes: default_max_message_bytes(),
                read_timeout_ms: default_read_timeout_ms(),
                idle_timeout_ms: default_idle_timeout_ms(),
                max_streams_per_gate: default_max_streams_per_gate(),
                default_deadline_ms: default_deadline_ms(),
                max_deadline_ms: default_max_deadline_ms(),
            },
            registry: RegistryConfig {
                path: registry.to_owned(),
            },
            metrics: MetricsConfig {
                enabled: false,
                listen: default_metrics_listen(),
            },
            engine: EngineConfig::default(),
            models: default_models(),
            face: None,
        }
    }

    /// Checks the ranges the parser cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, problem: &str| ConfigError::Invalid {
            field,
            problem: problem.into(),
        };
        if self.models.is_empty() {
            return Err(invalid("models", "must name at least one model"));
        }
        for (i, m) in self.models.iter().enumerate() {
            if m.dimension == 0 || m.dimension > 4096 {
                return Err(invalid("models.dimension", "must be between 1 and 4096"));
            }
            if !m.threshold.is_finite() {
                return Err(invalid("models.threshold", "must be a finite number"));
            }
            if self.models[..i].iter().any(|other| other.id == m.id) {
                return Err(invalid("models.id", &format!("{:?} is listed twice", m.id)));
            }
        }
        if self.engine.max_batch == 0 {
            return Err(invalid("engine.max_batch", "must be at least 1"));
        }
        if self.engine.queue_capacity == 0 {
            return Err(invalid("engine.queue_capacity", "must be at least 1"));
        }
        if self.server.max_message_bytes < 64 {
            return Err(invalid("server.max_message_bytes", "must be at least 64"));
        }
        if let Some(face) = &self.face {
            if self.models.iter().any(|m| m.id == face.model_id) {
                return Err(invalid(
                    "face.model_id",
                    &format!(
                        "{:?} is also listed under [[models]]; the face section defines it",
                        face.model_id
                    ),
                ));
            }
            if !(face.threshold.is_finite() && face.threshold > 0.0) {
                return Err(invalid("face.threshold", "must be a positive number"));
            }
            if face.max_batch == 0 {
                return Err(invalid("face.max_batch", "must be at least 1"));
            }
            if face.queue_capacity == 0 {
                return Err(invalid("face.queue_capacity", "must be at least 1"));
            }
        }
        Ok(())
    }

    /// The models as the gallery wants them, the face model's last.
    pub fn model_specs(&self) -> Vec<ModelSpec> {
        let listed = self.models.iter().map(|m| ModelSpec {
            id: m.id.clone(),
            dimension: m.dimension,
            measure: m.measure,
            threshold: m.threshold,
        });
        let face = self.face.iter().map(|f| ModelSpec {
            id: f.model_id.clone(),
            dimension: crate::face::model::DESCRIPTOR_DIM,
            measure: Measure::Euclidean,
            threshold: f.threshold,
        });
        listed.chain(face).collect()
    }

    /// The batcher's settings.
    pub fn batch(&self) -> BatchConfig {
        BatchConfig {
            max_batch: self.engine.max_batch,
            max_wait: Duration::from_micros(self.engine.max_wait_us),
            queue_capacity: self.engine.queue_capacity,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses_with_its_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/gatematch.toml");
        let config = Config::load(&path).unwrap();
        assert_eq!(config.server.listen, default_listen());
        assert_eq!(config.server.max_message_bytes, default_max_message_bytes());
        assert_eq!(config.engine.max_batch, default_max_batch());
        assert_eq!(config.engine.backend, BackendChoice::Auto);
        assert_eq!(config.engine.gpu_format, StorageFormat::F32);
        assert_eq!(config.metrics.listener(), Some(default_metrics_listen()));
        assert_eq!(config.models.len(), 1);
        let face = config.face.as_ref().expect("the example serves faces");
        assert!(
            face.model.ends_with("models/face.h5")
                && face.model.starts_with(path.parent().unwrap())
        );
        assert_eq!(face.model_id, FACE_MODEL_ID);
        assert_eq!(face.threshold, 0.6);
        assert_eq!(face.max_batch, default_face_max_batch());
        assert_eq!(face.max_image_bytes, default_max_image_bytes());
        // The example writes out every quality threshold at its default.
        assert_eq!(face.quality, QualityPolicy::default());
        let specs = config.model_specs();
        assert_eq!(specs.len(), 2);
        assert_eq!(
            (specs[1].id.as_str(), specs[1].dimension, specs[1].measure),
            (FACE_MODEL_ID, 128, Measure::Euclidean)
        );
        assert!(config.server.certificate.ends_with("certs/server.pem"));
        assert!(
            config.server.certificate.is_absolute()
                || config
                    .server
                    .certificate
                    .starts_with(path.parent().unwrap())
        );
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let base = "[server]\ncertificate = \"a\"\nprivate_key = \"b\"\ngate_ca = \"c\"\n";
        std::fs::write(&path, format!("{base}colour = \"blue\"\n")).unwrap();
        assert!(matches!(
            Config::load(&path),
            Err(ConfigError::Parse { .. })
        ));
        std::fs::write(&path, format!("{base}[engine]\nmax_batch = 0\n")).unwrap();
        assert!(matches!(
            Config::load(&path),
            Err(ConfigError::Invalid {
                field: "engine.max_batch",
                ..
            })
        ));
        std::fs::write(&path, base).unwrap();
        assert_eq!(Config::load(&path).unwrap().models[0].id, SYNTHETIC_MODEL);
        std::fs::write(&path, format!("{base}[engine]\nbackend = \"tpu\"\n")).unwrap();
        assert!(matches!(
            Config::load(&path),
            Err(ConfigError::Parse { .. })
        ));
        let gpu = "[engine]\nbackend = \"gpu\"\ngpu_format = \"int8\"\n";
        std::fs::write(&path, format!("{base}{gpu}")).unwrap();
        let engine = Config::load(&path).unwrap().engine;
        assert_eq!(engine.backend, BackendChoice::Gpu);
        assert_eq!(engine.gpu_format, StorageFormat::Int8);

        // A face section must name its model file, and its model id once.
        std::fs::write(&path, format!("{base}[face]\nthreads = 2\n")).unwrap();
        assert!(matches!(
            Config::load(&path),
            Err(ConfigError::Parse { .. })
        ));
        let twice = "[face]\nmodel = \"f.h5\"\nmodel_id = \"synthetic-128\"\n";
        std::fs::write(&path, format!("{base}{twice}")).unwrap();
        assert!(matches!(
            Config::load(&path),
            Err(ConfigError::Invalid {
                field: "face.model_id",
                ..
            })
        ));
        std::fs::write(
            &path,
            format!("{base}[face]\nmodel = \"f.h5\"\nthreshold = -1\n"),
        )
        .unwrap();
        assert!(matches!(
            Config::load(&path),
            Err(ConfigError::Invalid {
                field: "face.threshold",
                ..
            })
        ));
    }
}
