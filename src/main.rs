//! The `gatematch` command line: parses arguments and calls the library.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use gatematch::app::{self, DemoOptions};
use gatematch::bench::{self, ScoreBench};
use gatematch::config::{Config, SYNTHETIC_MODEL};
use gatematch::engine::cpu::CpuEngine;
use gatematch::engine::gpu::{GpuEngine, GpuOptions, StorageFormat};
use gatematch::gate::simulate::{self, Mix, Simulation};
use gatematch::gate::travellers::Population;
use gatematch::pki;

#[derive(Parser)]
#[command(
    name = "gatematch",
    version,
    about = "Match server for automated border-control gates"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the appliance.
    Serve {
        /// The TOML configuration (see deploy/gatematch.toml).
        #[arg(long, env = "GATEMATCH_CONFIG")]
        config: PathBuf,
        /// Overrides server.listen.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Overrides registry.path.
        #[arg(long)]
        registry: Option<PathBuf>,
        /// Overrides metrics.listen.
        #[arg(long)]
        metrics: Option<SocketAddr>,
        /// Overrides engine.threads.
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Makes a development PKI: gate CA, server certificate and gate certificates.
    Certs {
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Gate certificates to make.
        #[arg(long, default_value_t = 8)]
        gates: usize,
        /// The site written into the gate certificates.
        #[arg(long, default_value = "dev-site")]
        site: String,
        /// Extra server names (DNS names or IP addresses) beside localhost, 127.0.0.1 and ::1.
        #[arg(long = "name")]
        names: Vec<String>,
    },
    /// Plays gates against a running appliance and reports what happened.
    Gate {
        /// The appliance's address.
        #[arg(long, default_value = "127.0.0.1:4433")]
        server: SocketAddr,
        /// The name the server certificate must carry.
        #[arg(long, default_value = "localhost")]
        server_name: String,
        /// The development PKI folder made by `gatematch certs`.
        #[arg(long)]
        certs: PathBuf,
        /// Simulated gates, each with its own connection and certificate.
        #[arg(long, default_value_t = 4)]
        gates: usize,
        /// Offered requests per second, all gates together.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Seconds to offer load.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Operation weights, enrol:verify:identify.
        #[arg(long, default_value = "1:8:1")]
        mix: Mix,
        /// Travellers 0..N already enrolled (from `gallery synth` and `gallery import`).
        #[arg(long, default_value_t = 0)]
        enrolled: u64,
        /// Seed of the synthetic population (must match `gallery synth --seed`).
        #[arg(long, default_value_t = 2026)]
        population_seed: u64,
        /// Seed of the arrivals and probes.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Template dimension.
        #[arg(long, default_value_t = 128)]
        dim: usize,
        /// The model id the templates claim.
        #[arg(long, default_value = SYNTHETIC_MODEL)]
        model: String,
        /// Candidates per identify.
        #[arg(long, default_value_t = 5)]
        k: u32,
        /// Deadline sent with each request, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        deadline_ms: u32,
        /// Share of verifications made by impostors.
        #[arg(long, default_value_t = 0.1)]
        impostors: f64,
    },
    /// Converts the published face network into gatematch's model file, or checks one.
    Model {
        #[command(subcommand)]
        what: ModelCommand,
    },
    /// Prints the face descriptor of each image, one JSON object per line (`image`, `box`,
    /// `backend`, `descriptor`).
    Embed(EmbedArgs),
    /// Times the engine alone.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// Moves gallery snapshots (HDF5) in and out of the registry.
    Gallery {
        #[command(subcommand)]
        what: GalleryCommand,
    },
    /// Starts an appliance on a fresh embedded registry, runs simulated gates against it and
    /// prints what happened.
    Demo {
        /// Keep the PKI, registry and config in this folder instead of a temporary one.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Simulated gates.
        #[arg(long, default_value_t = 8)]
        gates: usize,
        /// Travellers enrolled in the first phase.
        #[arg(long, default_value_t = 3000)]
        travellers: u64,
        /// Offered requests per second.
        #[arg(long, default_value_t = 600.0)]
        rate: f64,
        /// Seconds of mixed traffic in the second phase.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Metrics listener.
        #[arg(long, default_value = "127.0.0.1:9464")]
        metrics: SocketAddr,
        /// The face model file; with it the appliance serves face images and a third phase
        /// sends the photos of --photos.
        #[arg(long)]
        face_model: Option<PathBuf>,
        /// The demo photos and their landmark record (reference.json, jpeg2000.json).
        #[arg(long, default_value = "tests/fixtures/face")]
        photos: PathBuf,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Face descriptors per second of the face network, on synthetic input.
    Embed(BenchEmbedArgs),
    /// Milliseconds per frame of the face detector and the landmark network, on a real photo.
    Detect {
        /// The frame to find faces in.
        #[arg(long, default_value = "tests/fixtures/face/obama2.jpg")]
        image: PathBuf,
        /// Timed seconds, split into --runs runs; the median run is printed.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Timed runs.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Worker threads (0: one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// The model file made by `gatematch model import`.
        #[arg(long, default_value = "models/face.h5")]
        model: PathBuf,
        /// The backend: cpu, or gpu (the adapter wgpu prefers, a software one included).
        #[arg(long, default_value = "cpu")]
        backend: String,
    },
    /// 1:N scoring of a batch of probes against a random gallery.
    Score {
        /// Gallery templates.
        #[arg(long, default_value_t = 1_000_000)]
        gallery: usize,
        /// Template dimension.
        #[arg(long, default_value_t = 128)]
        dim: usize,
        /// Probes per call; a comma-separated list runs each on the same gallery.
        #[arg(long, default_value = "1", value_delimiter = ',')]
        batch: Vec<usize>,
        /// Candidates per probe.
        #[arg(long, default_value_t = 10)]
        k: usize,
        /// Seconds to keep calling, per line printed.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Worker threads (0: one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// The backend: cpu, or gpu (any adapter, software ones included).
        #[arg(long, default_value = "cpu")]
        backend: String,
        /// The GPU scan format (f32, f16, int8); a comma-separated list runs each.
        #[arg(long, default_value = "f32", value_delimiter = ',')]
        format: Vec<StorageFormat>,
    },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Converts the published TF.js networks (from scripts/fetch-model.sh) into one HDF5 model
    /// file: the descriptor network, the face detector and the 68-point landmark network.
    Import {
        /// The package's model folder, holding each network's manifest and .bin.
        #[arg(long, default_value = "models/face-api-1.7.15")]
        models: PathBuf,
        /// Write the descriptor network alone (gates must then send landmarks or a crop).
        #[arg(long)]
        descriptor_only: bool,
        /// The model file to write (replaced if present).
        #[arg(long, default_value = "models/face.h5")]
        out: PathBuf,
    },
    /// Loads a model file, checks every tensor and the weights digest, prints its metadata.
    Check {
        /// The model file.
        #[arg(default_value = "models/face.h5")]
        file: PathBuf,
    },
}

#[derive(clap::Args)]
struct EmbedArgs {
    /// JPEG, PNG or JPEG 2000 images.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// The face's box X,Y,W,H in image pixels (MODEL.md step 1), clipped at the image's
    /// borders; once for all images or once per image. Without --box, --landmarks or --whole
    /// the detector finds every face and measures its capture quality.
    #[arg(long = "box", value_name = "X,Y,W,H", conflicts_with_all = ["landmarks", "whole"])]
    boxes: Vec<gatematch::face::FaceBox>,
    /// Each image is the face crop already (a ready crop): no detection.
    #[arg(long, conflicts_with = "landmarks")]
    whole: bool,
    /// A JSON file of the face's 68 landmarks in image pixels; once for all images or once per
    /// image.
    #[arg(long, value_name = "FILE.json")]
    landmarks: Vec<PathBuf>,
    /// The model file made by `gatematch model import`.
    #[arg(long, default_value = "models/face.h5")]
    model: PathBuf,
    /// Worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// The backend: cpu, or gpu (the adapter wgpu prefers, a software one included).
    #[arg(long, default_value = "cpu")]
    backend: String,
}

#[derive(clap::Args)]
struct BenchEmbedArgs {
    /// The backend: cpu, or gpu (the adapter wgpu prefers, a software one included).
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Faces per call; a comma-separated list prints one line each.
    #[arg(long, default_value = "1", value_delimiter = ',')]
    batch: Vec<usize>,
    /// Timed seconds per line, split into --runs runs; the median run's rate is printed.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Timed runs per line.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// The model file made by `gatematch model import`.
    #[arg(long, default_value = "models/face.h5")]
    model: PathBuf,
}

#[derive(Subcommand)]
enum GalleryCommand {
    /// Writes one model's templates from the registry to an HDF5 file.
    Export {
        /// The HDF5 file to write.
        file: PathBuf,
        /// The registry database.
        #[arg(long, default_value = "gatematch.db")]
        registry: PathBuf,
        /// The model to export.
        #[arg(long, default_value = SYNTHETIC_MODEL)]
        model: String,
    },
    /// Adds an HDF5 snapshot's templates to the registry (refused while an appliance runs).
    Import {
        /// The HDF5 file to read.
        file: PathBuf,
        /// The registry database.
        #[arg(long, default_value = "gatematch.db")]
        registry: PathBuf,
    },
    /// Writes a snapshot of synthetic travellers 0..N, for capacity tests.
    Synth {
        /// The HDF5 file to write.
        file: PathBuf,
        /// Travellers.
        #[arg(long)]
        persons: u64,
        /// Template dimension.
        #[arg(long, default_value_t = 128)]
        dim: usize,
        /// Population seed (give the same to `gatematch gate --population-seed`).
        #[arg(long, default_value_t = 2026)]
        seed: u64,
        /// The model id to record.
        #[arg(long, default_value = SYNTHETIC_MODEL)]
        model: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The appliance logs its lifecycle at info; the tools that print a report keep quiet
    // unless RUST_LOG asks for more.
    let default_level = if matches!(cli.command, Command::Serve { .. }) {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(cli.command))
}

/// The descriptor network's manifest in the package's model folder.
const DESCRIPTOR_MANIFEST: &str = "face_recognition_model-weights_manifest.json";

/// `gatematch model import` and `gatematch model check`.
fn model_command(what: ModelCommand) -> anyhow::Result<()> {
    use gatematch::face::model::file;

    match what {
        ModelCommand::Import {
            models,
            descriptor_only,
            out,
        } => {
            let model = if descriptor_only {
                file::import_tfjs(&models.join(DESCRIPTOR_MANIFEST), &out)?
            } else {
                gatematch::face::detect::import_tfjs_with_detection(&models, &out)?
            };
            let parameters = model.parameter_count();
            let networks = if descriptor_only {
                "descriptor network"
            } else {
                "descriptor network, face detector, landmark network"
            };
            println!(
                "wrote {} ({networks}; {parameters} descriptor parameters)",
                out.display()
            );
        }
        ModelCommand::Check { file: path } => {
            let model = file::load_model(&path)?;
            let detection = gatematch::face::detect::load_detection(&path)?;
            let info = model.info();
            println!(
                "{}: {}, input {}x{}, output {}, {} distance, threshold {}, weights sha256 {}",
                path.display(),
                info.architecture,
                info.input_size,
                info.input_size,
                info.output_dim,
                info.distance,
                info.default_threshold,
                file::weights_digest(&model)
            );
            println!(
                "{}: face detector and landmark network {}",
                path.display(),
                if detection.is_some() {
                    "present and checked"
                } else {
                    "absent (gates must send landmarks or a ready crop)"
                }
            );
        }
    }
    Ok(())
}

/// `gatematch embed`: one JSON line per image on stdout.
fn embed_command(args: EmbedArgs) -> anyhow::Result<()> {
    use std::io::Write;

    use gatematch::face::embed::{self, Backend, FaceRegion, Landmarks};
    use gatematch::face::preprocess::DecodeLimits;

    let backend = args.backend.parse::<Backend>()?;
    let regions: Vec<FaceRegion> = if args.whole {
        vec![FaceRegion::Whole]
    } else if args.landmarks.is_empty() {
        args.boxes.into_iter().map(FaceRegion::Box).collect()
    } else {
        let read = |path: &PathBuf| Landmarks::read(path).map(FaceRegion::Landmarks);
        args.landmarks.iter().map(read).collect::<Result<_, _>>()?
    };
    let network = embed::open_network(&args.model, backend, args.threads)?;
    // The detector only when it is needed: with a region for every image there is nothing to
    // find.
    let finder = if regions.is_empty() {
        let Some(weights) = gatematch::face::detect::load_detection(&args.model)? else {
            bail!(
                "{} has no face detector: give --box, --landmarks or --whole, or make the file \
                 again with `gatematch model import`",
                args.model.display()
            );
        };
        let finder = gatematch::face::detect::FaceFinder::new(&weights)?;
        Some(gatematch::face::capture::PooledFinder::new(
            finder,
            embed::resolve_threads(args.threads),
        )?)
    } else {
        None
    };
    let policy = gatematch::face::quality::QualityPolicy::default();
    let finding = finder.as_ref().map(|finder| embed::Finding {
        finder,
        policy: &policy,
    });
    let mut out = std::io::stdout().lock();
    let limits = DecodeLimits::default();
    embed::embed_files(
        &network,
        &args.images,
        &regions,
        finding.as_ref(),
        &limits,
        |embedding| writeln!(out, "{}", embedding.to_json_line()),
        |image| eprintln!("{}: no face found", image.display()),
    )?;
    out.flush()?;
    Ok(())
}

/// `gatematch bench detect`: one line.
fn bench_detect(
    image: &Path,
    seconds: f64,
    runs: usize,
    threads: usize,
    model: &Path,
    backend: &str,
) -> anyhow::Result<()> {
    use gatematch::face::{bench, capture, detect, embed, preprocess};

    if runs == 0 || !(seconds.is_finite() && seconds > 0.0) {
        bail!("--runs and --seconds must be positive");
    }
    let Some(weights) = detect::load_detection(model)? else {
        bail!(
            "{} has no face detector; make it with `gatematch model import`",
            model.display()
        );
    };
    let threads = embed::resolve_threads(threads);
    let frame = embed::read_image(image, &preprocess::DecodeLimits::default())?;
    let run_length = Duration::from_secs_f64(seconds / runs as f64);
    let time = match backend.parse::<embed::Backend>()? {
        embed::Backend::Cpu => {
            let finder = capture::PooledFinder::new(detect::FaceFinder::new(&weights)?, threads)?;
            bench::measure_find(&finder, "cpu", threads, &frame, runs, run_length)?
        }
        embed::Backend::Gpu => {
            let finder = detect::GpuFaceFinder::open(&weights, true)?;
            let info = finder.context().adapter_info();
            eprintln!("adapter: {} ({:?})", info.name, info.device_type);
            // The CPU threads only cut and resize the inputs around the GPU's passes.
            bench::measure_find(&finder, "gpu", threads, &frame, runs, run_length)?
        }
        other => bail!("bench detect does not run on {}", other.name()),
    };
    println!("{time}");
    Ok(())
}

/// `gatematch bench embed`: one line per batch size.
fn bench_embed(args: BenchEmbedArgs) -> anyhow::Result<()> {
    use gatematch::face::{bench, embed};

    let backend = args.backend.parse::<embed::Backend>()?;
    let seconds = args.seconds;
    if args.batch.contains(&0) || args.runs == 0 || !(seconds.is_finite() && seconds > 0.0) {
        bail!("--batch, --runs and --seconds must be positive");
    }
    let run_length = Duration::from_secs_f64(seconds / args.runs as f64);
    let network = embed::open_network(&args.model, backend, args.threads)?;
    if let gatematch::face::network::Network::Gpu(gpu) = &network {
        let info = gpu.context().adapter_info();
        eprintln!("adapter: {} ({:?})", info.name, info.device_type);
    }
    for batch in args.batch {
        println!(
            "{}",
            bench::measure(&network, batch, args.runs, run_length)?
        );
    }
    Ok(())
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Model { what } => model_command(what)?,
        Command::Embed(args) => tokio::task::spawn_blocking(move || embed_command(args)).await??,
        Command::Bench {
            what: BenchCommand::Embed(args),
        } => tokio::task::spawn_blocking(move || bench_embed(args)).await??,
        Command::Bench {
            what:
                BenchCommand::Detect {
                    image,
                    seconds,
                    runs,
                    threads,
                    model,
                    backend,
                },
        } => {
            tokio::task::spawn_blocking(move || {
                bench_detect(&image, seconds, runs, threads, &model, &backend)
            })
            .await??
        }
        Command::Serve {
            config,
            listen,
            registry,
            metrics,
            threads,
        } => {
            let mut cfg = Config::load(&config)?;
            if let Some(listen) = listen {
                cfg.server.listen = listen;
            }
            if let Some(registry) = registry {
                cfg.registry.path = registry;
            }
            if let Some(metrics) = metrics {
                cfg.metrics.enabled = true;
                cfg.metrics.listen = metrics;
            }
            if let Some(threads) = threads {
                cfg.engine.threads = threads;
            }
            app::serve(cfg).await.context("serving")?;
        }
        Command::Certs {
            out,
            gates,
            site,
            names,
        } => {
            pki::write_development_pki(&out, gates, &site, &names)
                .with_context(|| format!("making certificates in {}", out.display()))?;
            println!(
                "wrote a development PKI with {gates} gate certificates to {}",
                out.display()
            );
        }
        Command::Gate {
            server,
            server_name,
            certs,
            gates,
            rate,
            duration,
            mix,
            enrolled,
            population_seed,
            seed,
            dim,
            model,
            k,
            deadline_ms,
            impostors,
        } => {
            if !(0.0..=1.0).contains(&impostors) {
                bail!("--impostors is a share between 0 and 1");
            }
            if rate <= 0.0 || duration <= 0.0 || gates == 0 {
                bail!("--rate, --duration and --gates must be positive");
            }
            let sim = Simulation {
                server,
                server_name,
                certs,
                gates,
                rate_per_s: rate,
                duration: Duration::from_secs_f64(duration),
                mix,
                population: Population {
                    seed: population_seed,
                    dimension: dim,
                },
                enrolled,
                first_new: enrolled + seed * 1_000_000_000,
                impostor_share: impostors,
                identify_k: k,
                deadline_ms,
                model_id: model,
                seed,
                progress: true,
            };
            let report = simulate::run(sim)
                .await
                .context("running simulated gates")?;
            println!("{report}");
        }
        Command::Bench {
            what:
                BenchCommand::Score {
                    gallery,
                    dim,
                    batch,
                    k,
                    seconds,
                    threads,
                    backend,
                    format,
                },
        } => {
            if dim == 0 || batch.contains(&0) {
                bail!("--dim and --batch must be positive");
            }
            if !(seconds.is_finite() && seconds >= 0.0) {
                bail!("--seconds must be a number of seconds");
            }
            let gpu = match backend.as_str() {
                "cpu" => false,
                "gpu" => true,
                other => bail!("unknown backend {other:?}; use --backend cpu or --backend gpu"),
            };
            let runs = ScoreRuns {
                gallery,
                dim,
                batches: batch,
                k,
                duration: Duration::from_secs_f64(seconds),
                threads,
                formats: gpu.then_some(format),
            };
            tokio::task::spawn_blocking(move || score_runs(&runs)).await??;
        }
        Command::Gallery { what } => match what {
            GalleryCommand::Export {
                file,
                registry,
                model,
            } => {
                let n = app::export(&registry, &model, &file)?;
                println!(
                    "exported {n} templates of model {model} to {}",
                    file.display()
                );
            }
            GalleryCommand::Import { file, registry } => {
                let n = app::import(&registry, &file)?;
                println!(
                    "imported {n} templates from {} into {}",
                    file.display(),
                    registry.display()
                );
            }
            GalleryCommand::Synth {
                file,
                persons,
                dim,
                seed,
                model,
            } => {
                app::synth(&file, persons, dim, seed, &model)?;
                println!("wrote {persons} synthetic travellers to {}", file.display());
            }
        },
        Command::Demo {
            dir,
            gates,
            travellers,
            rate,
            seconds,
            metrics,
            face_model,
            photos,
        } => {
            if gates == 0 || rate <= 0.0 {
                bail!("--gates and --rate must be positive");
            }
            let options = DemoOptions {
                dir,
                gates,
                travellers,
                rate_per_s: rate,
                seconds,
                metrics: Some(metrics),
                faces: face_model.map(|model| (model, photos)),
            };
            app::demo(options).await.context("running the demo")?;
        }
    }
    Ok(())
}

/// What `gatematch bench score` runs: every batch size, on the CPU or on the GPU in every
/// format, over one random gallery.
struct ScoreRuns {
    gallery: usize,
    dim: usize,
    batches: Vec<usize>,
    k: usize,
    duration: Duration,
    threads: usize,
    /// The GPU formats to run, or `None` for the CPU.
    formats: Option<Vec<StorageFormat>>,
}

/// Builds the gallery once and prints one line per (format, batch).
fn score_runs(runs: &ScoreRuns) -> anyhow::Result<()> {
    let gallery = bench::random_gallery(runs.gallery, runs.dim, 1);
    let bench_for = |batch| ScoreBench {
        gallery: runs.gallery,
        dimension: runs.dim,
        batch,
        k: runs.k,
        duration: runs.duration,
    };
    let Some(formats) = &runs.formats else {
        let engine = CpuEngine::new(runs.threads);
        for &batch in &runs.batches {
            let result =
                bench::score_on(&engine, &gallery, engine.threads(), None, bench_for(batch));
            println!("{result}");
        }
        return Ok(());
    };
    for &format in formats {
        let options = GpuOptions {
            format,
            allow_software: true,
            chunk_rows: None,
            cpu_threads: runs.threads,
        };
        let engine = GpuEngine::new(&options).context("opening the GPU")?;
        let label = Some((engine.adapter_name().to_owned(), engine.format()));
        for &batch in &runs.batches {
            let result = bench::score_on(&engine, &gallery, 1, label.clone(), bench_for(batch));
            println!("{result}");
        }
        if engine.has_failed_over() {
            bail!("the GPU failed during the bench; the lines after the failure are CPU figures");
        }
    }
    Ok(())
}
