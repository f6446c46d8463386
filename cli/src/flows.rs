//! `veil flow train`: trains the flows of flow rotation — one per class (the paper's supervised
//! setting) and one class-agnostic — with a checkpoint after every epoch, so that an interrupted
//! run resumes with `--resume` where it stopped.
//!
//! Output folder layout:
//! - `flows.json`: the Glow configuration, preprocessing, class names, and per flow its held-out
//!   bits/dim and the Gaussianity probe;
//! - `flow-agnostic.bpk`, `flow-class-<k>.bpk`: finished flows (burnpack);
//! - `checkpoints/<name>.bpk`, `.optim.bpk`, `.json`: the last epoch of an unfinished flow.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::Device;
use serde_json::json;
use veil::burn;
use veil::crypto::haar::{HaarRotation, RotationDerivation};
use veil::crypto::keys::{MasterKey, Scheme};
use veil::data::ImageDataset;
use veil::flow::gaussianity::probe;
use veil::flow::glow::{Glow, GlowConfig, Preprocess};
use veil::flow::train::{
    FlowCheckpoint, FlowTrainOptions, evaluate_bits_per_dim, train_flow_resumable,
};
use veil::nn::train::Control;
use veil::schemes::flow_rotation::{EncryptionSettings, FlowEncryptor};

use crate::datasets::{DataSource, SourceDefaults, Split, load_sized};
use crate::experiments::bar;

/// Options of `veil flow train`.
#[derive(clap::Args, Debug)]
pub struct FlowTrainArgs {
    /// `digits`, `synthetic` (Veil's synthetic shapes at --size/--channels), or a dataset path
    /// (see `veil data-info`).
    #[arg(long, default_value = "digits")]
    data: DataSource,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Continue an interrupted run in `--out` from its checkpoints.
    #[arg(long)]
    resume: bool,
    /// Epochs per flow.
    #[arg(long, default_value_t = 40)]
    epochs: usize,
    /// Glow levels.
    #[arg(long, default_value_t = 2)]
    levels: usize,
    /// Flow steps per level.
    #[arg(long, default_value_t = 4)]
    steps: usize,
    /// Hidden channels of the coupling networks.
    #[arg(long, default_value_t = 48)]
    hidden: usize,
    /// Side length of image folders and of the synthetic set (32 when absent); given with
    /// `--data digits`, the 8×8 digits are resampled to it.
    #[arg(long)]
    size: Option<usize>,
    /// Channels, 1 or 3, of image folders and of the synthetic set (3 when absent); given with
    /// `--data digits`, the digits are converted to it.
    #[arg(long)]
    channels: Option<usize>,
    /// MNIST folders: which IDX pairs to read (all joins `train` and `t10k`).
    #[arg(long, value_enum, default_value = "all")]
    split: Split,
    /// Train only the class-agnostic flow.
    #[arg(long)]
    agnostic_only: bool,
    /// Seed of the split and the initialisation.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Latent temperature τ of encryption with these flows, in (0, 1]: 1 is the paper's
    /// Algorithm 1; `veil experiment flow` measures lower ones (0.5 met its bits/dim goal on the
    /// digits). Written into flows.json; the pages and the CLI follow it.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Cover classes: decode class c's rotated latent with class π(c)'s flow (π a secret
    /// derangement from the key), so ciphertexts look like another class and a model trained on
    /// them mislabels original images. Needs per-class flows.
    #[arg(long)]
    cover_classes: bool,
    /// Fine-tune each class's flow from the class-agnostic flow at half the learning rate,
    /// instead of training it on its class alone as the paper does. The flows fit far better
    /// (28×28 digits: held-out 2.3-2.5 bits/dim against 3.4-3.8) and their ciphertexts come within
    /// 10 % of the originals' bits/dim, but the ciphertexts then look like genuine images of
    /// their cover class: the cover-class attack recovers π for 6-7 of 10 classes, and the small
    /// CNN's integrity falls from 0.95 to 0.78 (docs/RESULTS.md). Off by default for that reason.
    #[arg(long)]
    fine_tune_class_flows: bool,
}

fn load_data(args: &FlowTrainArgs) -> Result<(ImageDataset, usize)> {
    let loaded = load_sized(
        &args.data,
        args.split,
        args.size,
        args.channels,
        SourceDefaults {
            size: 32,
            channels: 3,
            classes: 10,
            per_class: 300,
            seed: args.seed,
        },
    )?;
    Ok((loaded.data, loaded.bins))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    veil_server::fsutil::write_atomic(path, bytes)
        .with_context(|| format!("writing {}", path.display()))
}

pub fn train(args: FlowTrainArgs) -> Result<()> {
    let started = Instant::now();
    let encryption = EncryptionSettings {
        temperature: args.temperature,
        cover_classes: args.cover_classes,
        rotation: RotationDerivation::CURRENT,
    };
    encryption.validate().map_err(anyhow::Error::msg)?;
    if args.cover_classes && args.agnostic_only {
        bail!("--cover-classes needs per-class flows: drop --agnostic-only");
    }
    let (data, levels) = load_data(&args)?;
    let (train, test) = data.split(0.2, args.seed);
    let pre = Preprocess {
        bins: levels,
        alpha: 0.05,
    };
    let config = GlowConfig::for_shape(data.shape)
        .with_levels(args.levels)
        .with_steps(args.steps)
        .with_hidden(args.hidden)
        .with_seed(args.seed);
    config.validate().map_err(anyhow::Error::msg)?;
    let options = FlowTrainOptions {
        epochs: args.epochs,
        batch_size: 32,
        learning_rate: 1e-3,
        warmup_steps: 50,
        max_grad_norm: 50.0,
        seed: args.seed,
    };
    let checkpoints = args.out.join("checkpoints");
    std::fs::create_dir_all(&checkpoints)
        .with_context(|| format!("creating {}", checkpoints.display()))?;
    let manifest_path = args.out.join("flows.json");
    if manifest_path.exists() && !args.resume {
        bail!(
            "{} already holds trained flows: pass --resume to continue, or choose another --out",
            args.out.display()
        );
    }
    eprintln!(
        "training flows on {}: {} training and {} held-out images of {}, Glow {}×{} with {} hidden channels, {} epochs",
        args.data,
        train.len(),
        test.len(),
        data.shape,
        args.levels,
        args.steps,
        args.hidden,
        args.epochs
    );
    let mut jobs: Vec<(String, ImageDataset, ImageDataset)> =
        vec![("agnostic".into(), train.clone(), test.clone())];
    if !args.agnostic_only {
        for c in 0..data.num_classes() as u32 {
            let pick = |d: &ImageDataset| d.subset(&d.class_indices(c));
            jobs.push((format!("class-{c}"), pick(&train), pick(&test)));
        }
    }
    // Through its own text, so that τ reads as written (0.8, not f32's 0.800000011920929).
    let encryption_json: serde_json::Value =
        serde_json::from_str(&serde_json::to_string(&encryption)?)?;
    let mut flows = Vec::new();
    let mut rotation: Option<HaarRotation> = None;
    let mut agnostic: Option<Glow> = None;
    for (name, train_part, test_part) in jobs {
        if train_part.is_empty() {
            continue;
        }
        let final_path = args.out.join(format!("flow-{name}.bpk"));
        // With --fine-tune-class-flows, class flows start from the class-agnostic one (trained
        // first).
        let init = agnostic.as_ref().filter(|_| args.fine_tune_class_flows);
        let glow = if final_path.exists() {
            eprintln!("flow {name}: already trained, skipping");
            config.load(&std::fs::read(&final_path)?, &Device::flex())?
        } else {
            let options = crate::experiments::flow::class_flow_options(options, init.is_some());
            train_one(
                &config,
                pre,
                options,
                &train_part,
                &checkpoints,
                &name,
                init,
            )?
        };
        if agnostic.is_none() {
            agnostic = Some(glow.clone());
        }
        write_atomic(&final_path, &glow.to_bytes()?)?;
        let _ = std::fs::remove_file(checkpoints.join(format!("{name}.bpk")));
        let _ = std::fs::remove_file(checkpoints.join(format!("{name}.optim.bpk")));
        let _ = std::fs::remove_file(checkpoints.join(format!("{name}.json")));
        let eval = Device::flex();
        eval.seed(args.seed);
        let bpd = evaluate_bits_per_dim(&glow, &test_part, pre, &eval);
        let latents = crate::experiments::flow::latents(&glow, &test_part, pre);
        let report = probe(&latents.0, latents.1, 128, args.seed);
        eprintln!("flow {name}: held-out {bpd:.3} bits/dim. {report}");
        let rotation = rotation.get_or_insert_with(|| {
            // One throwaway rotation for every flow of the family, drawn as the family's keys
            // will be.
            let mut kb = [0u8; 32];
            kb[..8].copy_from_slice(&args.seed.to_le_bytes());
            let key = MasterKey::from_bytes(kb).class_subkey(Scheme::FlowRotation, 0);
            HaarRotation::from_subkey(&key, data.shape.len(), encryption.rotation)
        });
        let encryptable = encryptable_fraction(&glow, pre, encryption, &test_part, rotation, &name);
        flows.push(json!({
            "name": name, "file": format!("flow-{name}.bpk"), "held_out_bits_per_dim": bpd,
            "gaussianity": report, "held_out_encryptable": encryptable,
        }));
        let manifest = json!({
            "glow": config, "preprocess": pre, "classes": data.class_names, "data": args.data.to_string(),
            "seed": args.seed, "epochs": args.epochs, "flows": flows, "encryption": encryption_json,
            "class_flows": if args.fine_tune_class_flows { "fine_tuned_from_agnostic" } else { "fresh" },
        });
        write_atomic(
            &manifest_path,
            (serde_json::to_string_pretty(&manifest)? + "\n").as_bytes(),
        )?;
    }
    eprintln!(
        "done in {:.0} s; flows in {}",
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}

/// The share of `held_out` that `glow` encrypts and decrypts back exactly under `rotation` (a
/// throwaway key's, seeded; not an owner's) at the family's temperature. Images that do not
/// round-trip are named on the terminal; `flow train` goes on.
fn encryptable_fraction(
    glow: &Glow,
    pre: Preprocess,
    settings: EncryptionSettings,
    held_out: &ImageDataset,
    rotation: &HaarRotation,
    name: &str,
) -> Option<f64> {
    if held_out.is_empty() {
        return None;
    }
    let device = Device::flex();
    let enc = FlowEncryptor::with_rotation(glow.clone(), pre, rotation, &device)
        .with_temperature(settings.temperature);
    let out = crate::experiments::flow::encrypt_all(held_out, |_| enc.clone(), Some(0));
    let fraction = out.kept.len() as f64 / out.of() as f64;
    match out.failures.first() {
        None => eprintln!(
            "flow {name}: all {} held-out images encrypt and decrypt back",
            out.of()
        ),
        Some((i, why)) => eprintln!(
            "flow {name}: {} of {} held-out images encrypt and decrypt back ({:.1} %); {} do not, the first held-out image {i}: {why}",
            out.kept.len(),
            out.of(),
            100.0 * fraction,
            out.failures.len()
        ),
    }
    Some(fraction)
}

fn train_one(
    config: &GlowConfig,
    pre: Preprocess,
    options: FlowTrainOptions,
    data: &ImageDataset,
    checkpoints: &Path,
    name: &str,
    init: Option<&Glow>,
) -> Result<Glow> {
    let device = Device::flex().autodiff();
    let weights = checkpoints.join(format!("{name}.bpk"));
    let optim = checkpoints.join(format!("{name}.optim.bpk"));
    let state = checkpoints.join(format!("{name}.json"));
    let resume: Option<(Glow, FlowCheckpoint)> =
        if weights.exists() && optim.exists() && state.exists() {
            let meta: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&state)?)
                    .with_context(|| format!("reading {}", state.display()))?;
            let checkpoint = FlowCheckpoint {
                epoch: meta["epoch"].as_u64().unwrap_or(0) as usize,
                global_step: meta["global_step"].as_u64().unwrap_or(0) as usize,
                bits_per_dim: meta["bits_per_dim"].as_f64().unwrap_or(f64::NAN) as f32,
                optimizer: std::fs::read(&optim)?,
            };
            let glow = config
                .load(&std::fs::read(&weights)?, &device)
                .with_context(|| format!("loading the checkpoint {}", weights.display()))?;
            eprintln!("flow {name}: resuming after epoch {}", checkpoint.epoch);
            Some((glow, checkpoint))
        } else {
            None
        };
    let (glow, checkpoint) = match resume {
        Some((g, c)) => (g, Some(c)),
        None => {
            device.seed(options.seed);
            let glow = match init {
                Some(from) => config.load(&from.to_bytes()?, &device)?,
                None => {
                    let n = data.len().min(256);
                    let (x, _) = pre.to_logit(data.images_tensor(0..n, &device), true);
                    config.init(&device).data_init(x)
                }
            };
            (glow, None)
        }
    };
    let steps_per_epoch = data.len().div_ceil(options.batch_size);
    let done = checkpoint.as_ref().map_or(0, |c| c.epoch);
    let pb = bar(
        (options.epochs.saturating_sub(done) * steps_per_epoch) as u64,
        &format!("flow {name}"),
    )
    .per_epoch(steps_per_epoch as u64, done as u64);
    let mut save_error = None;
    let glow = train_flow_resumable(
        glow,
        data,
        pre,
        options,
        &device,
        checkpoint.as_ref(),
        |r| {
            pb.inc(1);
            pb.set_message(format!("{:.3} bits/dim", r.bits_per_dim));
            Control::Continue
        },
        |c, g| {
            let saved = g.to_bytes().map_err(anyhow::Error::from).and_then(|bytes| {
                write_atomic(&weights, &bytes)?;
                write_atomic(&optim, &c.optimizer)?;
                let meta = json!({ "epoch": c.epoch, "global_step": c.global_step, "bits_per_dim": c.bits_per_dim });
                write_atomic(&state, meta.to_string().as_bytes())
            });
            match saved {
                Ok(()) => Control::Continue,
                Err(e) => {
                    save_error = Some(e);
                    Control::Stop
                }
            }
        },
    )
    .with_context(|| format!("training flow {name}"))?;
    pb.finish();
    if let Some(e) = save_error {
        return Err(e.context(format!("saving the checkpoint of flow {name}")));
    }
    Ok(glow.valid())
}
