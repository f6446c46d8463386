//! `veil`: the data owner's command-line tool (experiments, flow training, the factory client)
//! and `veil serve`, which runs the untrusted factory from the `veil-server` library.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use veil_cli::{datasets, demo, experiments, factory, flows, rtas, security};

#[derive(Parser)]
#[command(
    name = "veil",
    version,
    about = "Veil: privacy-preserving ML on images. Companion server and tools."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the pages, the wasm client and the API (the default command).
    Serve(ServeArgs),
    /// Train the demo CNN on the embedded digits and write its weights and model card.
    TrainDemo(demo::TrainDemoArgs),
    /// Read a dataset from disk and describe it (checks that Veil can load it).
    DataInfo(DataInfoArgs),
    /// Write the synthetic class-conditional image set as an image folder (one sub-folder per
    /// class, PNG files), for scale tests.
    DataSynth(DataSynthArgs),
    /// Write docs/SECURITY.md, one card per scheme, from the experiments' results files.
    SecurityCards(security::SecurityArgs),
    /// Reproduce a paper's experiments (report.md, results.json, figures).
    #[command(subcommand)]
    Experiment(Experiment),
    /// Flow rotation's flows.
    #[command(subcommand)]
    Flow(FlowCommand),
    /// Talk to a running factory over HTTP: upload, train, status, list, cancel, classify,
    /// download.
    Factory(factory::FactoryArgs),
    /// Run one RTAS party (p0, p1, dealer or helper) over TCP, on this host or another.
    Party(rtas::PartyArgs),
    /// RTAS's parties on this machine.
    #[command(subcommand)]
    Rtas(RtasCommand),
}

#[derive(Subcommand)]
enum RtasCommand {
    /// Start all four parties as processes on loopback, train and classify, and print the
    /// bytes each one sent.
    Demo(rtas::DemoArgs),
}

#[derive(Subcommand)]
enum FlowCommand {
    /// Train one flow per class and a class-agnostic one, with per-epoch checkpoints.
    Train(flows::FlowTrainArgs),
}

#[derive(Subcommand)]
enum Experiment {
    /// Flow rotation (Wu, Du, Yuan): Tables 1-2, Figure 3, and the Gaussianity probe.
    Flow(experiments::flow::FlowArgs),
    /// Gradient leakage (DLG, iDLG, Inverting Gradients) against plain and flow-encrypted
    /// training: leaked-image PSNR and classifiers trained on leaked images.
    Leakage(experiments::leakage::LeakageArgs),
    /// One-way scrambling by deconvolution (Savransky, Mateless, Katz): IIN vs cloud, fewer
    /// labels, labelled images per class, the cloud's view, and the autoencoder attack.
    Owsd(experiments::owsd::OwsdArgs),
    /// Adversarial data encryption (Hu et al.): Tables 1, 3, 5, 7 and 8, a factory that fights
    /// back (adversarial training, pre-processing), and ε against PSNR.
    Adversarial(experiments::adversarial::AdversarialArgs),
    /// Known-plaintext key recovery against flow rotation: how many (image, ciphertext) pairs
    /// of a class give its rotation back (orthogonal Procrustes), for Algorithm 1 and Veil's
    /// settings.
    KnownPlaintext(experiments::flow_attacks::known_plaintext::KnownPlaintextArgs),
    /// Ciphertext-only key recovery against flow rotation (Theorem 1 made concrete): moment
    /// matching of the data's and the ciphertexts' latents, against the flows' Gaussianity.
    CiphertextOnly(experiments::flow_attacks::ciphertext_only::CiphertextOnlyArgs),
    /// The survey's black-box attacks (membership inference, model extraction) against a model
    /// trained on plaintext and one trained on flow-rotation ciphertexts.
    BlackBox(experiments::black_box::BlackBoxArgs),
    /// RTAS (random transformations + arithmetic sharing): logistic regression and the paper's
    /// CNN trained and evaluated through the protocol and in the clear, time and bytes per
    /// batch and link, and what the helper learns.
    Rtas(experiments::rtas::RtasArgs),
}

#[derive(clap::Args)]
struct DataSynthArgs {
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Classes (2 to 32).
    #[arg(long, default_value_t = 10)]
    classes: usize,
    /// Images per class.
    #[arg(long, default_value_t = 100)]
    per_class: usize,
    /// Side length.
    #[arg(long, default_value_t = 32)]
    size: usize,
    /// Channels (1 or 3).
    #[arg(long, default_value_t = 3)]
    channels: usize,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(clap::Args)]
struct DataInfoArgs {
    /// A digits .csv(.gz) file, or a folder: MNIST IDX files, CIFAR-10 batches, or one
    /// sub-folder of PNG/JPEG images per class.
    path: PathBuf,
    /// The format (detected from the path by default).
    #[arg(long, value_enum, default_value = "auto")]
    format: datasets::Format,
    /// Image folders: channels (1 or 3) to convert to.
    #[arg(long, default_value_t = 3)]
    channels: usize,
    /// Image folders: side length to resize to.
    #[arg(long, default_value_t = 32)]
    size: usize,
    /// MNIST folders: which IDX pairs to read (all joins `train` and `t10k`).
    #[arg(long, value_enum, default_value = "all")]
    split: datasets::Split,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "VEIL_BIND", default_value = "127.0.0.1:8080")]
    bind: Option<SocketAddr>,
    /// Folder of the pages (with the built wasm package in `pkg/`).
    #[arg(long, env = "VEIL_WWW")]
    www: Option<PathBuf>,
    /// The factory's data directory (database, datasets, models, checkpoints); default
    /// `~/.local/share/veil` on Linux.
    #[arg(long, env = "VEIL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Training jobs run at once.
    #[arg(long, env = "VEIL_JOBS", default_value_t = 1)]
    jobs: usize,
    /// Largest dataset upload, in MiB.
    #[arg(long, env = "VEIL_MAX_UPLOAD_MIB", default_value_t = 512)]
    max_upload_mib: u64,
    /// Serve a family of flows trained by `veil flow train --out DIR` to the pages, as
    /// `NAME=DIR` (repeatable; the digits flows are always served as `digits`).
    #[arg(long = "flows", value_name = "NAME=DIR")]
    flows: Vec<String>,
    /// MiB of datasets and models each owner may keep [default: 2048].
    #[arg(long, env = "VEIL_QUOTA_STORED_MIB")]
    quota_stored_mib: Option<u64>,
    /// Datasets each owner may keep [default: 50].
    #[arg(long, env = "VEIL_QUOTA_DATASETS")]
    quota_datasets: Option<usize>,
    /// Jobs each owner may have queued or running [default: 2].
    #[arg(long, env = "VEIL_QUOTA_JOBS")]
    quota_jobs: Option<usize>,
    /// Images each owner may have classified a minute [default: 6000].
    #[arg(long, env = "VEIL_QUOTA_CLASSIFY_PER_MINUTE")]
    quota_classify_per_minute: Option<u32>,
    /// Leakage attacks and RTAS lab runs each owner may start a minute [default: 10].
    #[arg(long, env = "VEIL_QUOTA_ATTACKS_PER_MINUTE")]
    quota_attacks_per_minute: Option<u32>,
}

impl ServeArgs {
    /// The quotas given, the defaults for the rest.
    fn quotas(&self) -> veil_server::factory::quotas::Quotas {
        let d = veil_server::factory::quotas::Quotas::default();
        veil_server::factory::quotas::Quotas {
            stored_bytes: self.quota_stored_mib.map_or(d.stored_bytes, |m| m << 20),
            datasets: self.quota_datasets.unwrap_or(d.datasets),
            active_jobs: self.quota_jobs.unwrap_or(d.active_jobs),
            classifications_per_minute: self
                .quota_classify_per_minute
                .unwrap_or(d.classifications_per_minute),
            attacks_per_minute: self
                .quota_attacks_per_minute
                .unwrap_or(d.attacks_per_minute),
        }
    }
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,tower_http=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // No command is `veil serve` with its defaults and environment (not `ServeArgs::default()`,
    // whose zeros are not the defaults).
    let command = match cli.command {
        Some(c) => c,
        None => Cli::parse_from(["veil", "serve"])
            .command
            .context("clap parses `veil serve`")?,
    };
    match command {
        Command::Serve(args) => serve(args),
        Command::TrainDemo(args) => demo::train_demo(args),
        Command::Experiment(Experiment::Flow(args)) => experiments::flow::run(args),
        Command::Experiment(Experiment::Leakage(args)) => experiments::leakage::run(args),
        Command::Experiment(Experiment::Owsd(args)) => experiments::owsd::run(args),
        Command::Experiment(Experiment::Adversarial(args)) => experiments::adversarial::run(args),
        Command::Experiment(Experiment::KnownPlaintext(args)) => {
            experiments::flow_attacks::known_plaintext::run(args)
        }
        Command::Experiment(Experiment::BlackBox(args)) => experiments::black_box::run(args),
        Command::Experiment(Experiment::Rtas(args)) => experiments::rtas::run(args),
        Command::Experiment(Experiment::CiphertextOnly(args)) => {
            experiments::flow_attacks::ciphertext_only::run(args)
        }
        Command::Flow(FlowCommand::Train(args)) => flows::train(args),
        Command::Factory(args) => factory::run(args),
        Command::Party(args) => rtas::run_party(args),
        Command::Rtas(RtasCommand::Demo(args)) => rtas::run_demo(args),
        Command::DataSynth(args) => {
            let data = veil::data::synthetic(veil::data::SyntheticConfig {
                classes: args.classes,
                per_class: args.per_class,
                shape: veil::data::ImageShape::new(args.channels, args.size, args.size),
                noise: 0.05,
                seed: args.seed,
            })?;
            datasets::write_image_folder(&data, &args.out)?;
            eprintln!(
                "wrote {} images in {} classes to {}",
                data.len(),
                data.num_classes(),
                args.out.display()
            );
            Ok(())
        }
        Command::SecurityCards(args) => security::run(args),
        Command::DataInfo(args) => {
            let shape = veil::data::ImageShape::new(args.channels, args.size, args.size);
            let data = datasets::load_split(&args.path, args.format, shape, args.split)?;
            print!("{}", datasets::summary(&data));
            Ok(())
        }
    }
}

fn serve(args: ServeArgs) -> Result<()> {
    let quotas = args.quotas();
    let bind = args
        .bind
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
    let www = args.www.unwrap_or_else(veil_server::default_www_dir);
    if !www.join("pkg").join("veil_client.js").exists() {
        tracing::warn!(
            "{} has no built wasm client (pkg/veil_client.js): run `cargo xtask serve`, which builds it",
            www.display()
        );
    }
    let data_dir = args
        .data_dir
        .unwrap_or_else(veil_server::factory::default_data_dir);
    let mut config = veil_server::factory::FactoryConfig::new(&data_dir);
    config.concurrency = args.jobs.max(1);
    config.max_upload_bytes = args.max_upload_mib.max(1) << 20;
    config.quotas = quotas;
    // The operator's token comes from the environment only (a flag would show in `ps`).
    if let Ok(token) = std::env::var("VEIL_OPERATOR_TOKEN")
        && !token.is_empty()
    {
        anyhow::ensure!(
            token.len() >= 32,
            "VEIL_OPERATOR_TOKEN must have at least 32 characters (e.g. `openssl rand -hex 32`)"
        );
        config.operator_token_sha256 = Some(veil_server::factory::owners::token_hash(&token));
        tracing::info!("an operator token is set: it sees and may delete every owner's objects");
    }
    let factory = veil_server::factory::Factory::start(config).with_context(|| {
        format!(
            "opening the factory's data directory {}",
            data_dir.display()
        )
    })?;
    tracing::info!("factory data in {}", data_dir.display());
    let mut families = veil_server::flowsets::FlowFamilies::embedded()?;
    for spec in &args.flows {
        let (name, dir) = spec
            .split_once('=')
            .with_context(|| format!("--flows takes NAME=DIR, not {spec:?}"))?;
        families.insert(veil_server::flowsets::FlowFamily::from_dir(
            name,
            std::path::Path::new(dir),
        )?);
        tracing::info!("serving the flows in {dir} as family {name}");
    }
    let families = std::sync::Arc::new(families);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let served = runtime.block_on({
        let factory = factory.clone();
        async move {
            let listener = tokio::net::TcpListener::bind(bind)
                .await
                .with_context(|| format!("cannot listen on {bind}"))?;
            let addr = listener.local_addr()?;
            tracing::info!("Veil is serving {} at http://{addr}/", www.display());
            // Tests and scripts read this line to learn the port when binding to port 0.
            println!("listening on http://{addr}/");
            let mut state = veil_server::AppState::with_defaults(www, factory.clone())?;
            state.flows = families;
            let stopping = state.clone();
            let app = veil_server::app(state);
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    shutdown_signal().await;
                    stopping.begin_shutdown();
                })
                .await
                .context("server error")
        }
    });
    // Running jobs checkpoint at their current step and resume at the next start.
    tracing::info!("stopping the training workers (running jobs checkpoint)");
    factory.shutdown();
    served
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
