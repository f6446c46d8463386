//! `veil experiment flow`: flow rotation ("Secure Data Sharing With Flow Model", Wu, Du, Yuan)
//! reproduced on the given data — Table 1 (train × test on original/encrypted, two classifiers,
//! three test-time routes), Table 2 (bits/dim), Figure 3 (originals above encryptions) — plus the
//! Gaussianity probe.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::module::Module;
use burn::tensor::Device;
use burn::tensor::activation::softmax;
use serde_json::json;
use veil::burn;
use veil::data::{ImageDataset, ImageShape, digits};
use veil::flow_rotation::FlowEncryptor;
use veil::flow_train::{FlowTrainOptions, evaluate_bits_per_dim, flow_latents, train_flow};
use veil::gaussianity::{GaussianityReport, probe};
use veil::glow::{Glow, GlowConfig, Preprocess};
use veil::keys::{MasterKey, Scheme};
use veil::model::{Classifier, SmallCnnConfig};
use veil::resnet::SmallResNetConfig;
use veil::train::{Control, TrainOptions, accuracy, argmax_rows, train_classifier};

use super::{bar, pct};

/// Options of `veil experiment flow`.
#[derive(clap::Args, Debug)]
pub struct FlowArgs {
    /// `digits` (the embedded UCI digits) or a dataset path (see `veil data-info`).
    #[arg(long, default_value = "digits")]
    data: String,
    /// Output folder for report.md, results.json and figure3.png.
    #[arg(long)]
    out: PathBuf,
    /// A small, fast run (fewer images and epochs) to check the pipeline.
    #[arg(long)]
    quick: bool,
    /// Image folders: side length to resize to (a multiple of 4).
    #[arg(long, default_value_t = 32)]
    size: usize,
    /// Image folders: channels (1 or 3).
    #[arg(long, default_value_t = 3)]
    channels: usize,
    /// Seed of the split, the initialisations and the experiment key.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

struct Setup {
    train: ImageDataset,
    test: ImageDataset,
    pre: Preprocess,
    glow: GlowConfig,
    flow_options: FlowTrainOptions,
    clf_options: TrainOptions,
}

fn setup(args: &FlowArgs) -> Result<Setup> {
    let (data, levels) = if args.data == "digits" {
        (digits(), 17)
    } else {
        let shape = ImageShape::new(args.channels, args.size, args.size);
        let format = veil_server::datasets::Format::Auto;
        (
            veil_server::datasets::load(std::path::Path::new(&args.data), format, shape)?,
            256,
        )
    };
    let (mut train, mut test) = data.split(0.2, args.seed);
    if args.quick {
        let every = |d: &ImageDataset, keep: usize| {
            let step = (d.len() / keep).max(1);
            d.subset(&(0..d.len()).step_by(step).collect::<Vec<_>>())
        };
        train = every(&train, 600);
        test = every(&test, 200);
    }
    let hidden = if args.quick { 32 } else { 48 };
    let glow = GlowConfig::for_shape(data.shape)
        .with_levels(2)
        .with_steps(if args.quick { 2 } else { 4 })
        .with_hidden(hidden)
        .with_seed(args.seed);
    glow.validate().map_err(anyhow::Error::msg)?;
    Ok(Setup {
        train,
        test,
        pre: Preprocess {
            levels,
            alpha: 0.05,
        },
        glow,
        flow_options: FlowTrainOptions {
            epochs: if args.quick { 10 } else { 40 },
            batch_size: 32,
            learning_rate: 1e-3,
            warmup_steps: 50,
            max_grad_norm: 50.0,
            seed: args.seed,
        },
        clf_options: TrainOptions {
            epochs: if args.quick { 10 } else { 30 },
            batch_size: 32,
            learning_rate: 2e-3,
            seed: args.seed,
        },
    })
}

fn fit_flow(s: &Setup, data: &ImageDataset, label: &str) -> Result<(Glow, f32)> {
    let device = Device::flex().autodiff();
    device.seed(s.flow_options.seed);
    let init_n = data.len().min(256);
    let (x, _) = s.pre.to_logit(data.images_tensor(0..init_n, &device), true);
    let glow = s.glow.init(&device).data_init(x);
    let steps = s.flow_options.epochs * data.len().div_ceil(s.flow_options.batch_size);
    let pb = bar(steps as u64, label);
    let mut last = f32::NAN;
    let glow = train_flow(glow, data, s.pre, s.flow_options, &device, |r| {
        pb.inc(1);
        last = r.bits_per_dim;
        pb.set_message(format!("{:.3} bits/dim", r.bits_per_dim));
        Control::Continue
    })
    .with_context(|| format!("training {label}"))?;
    pb.finish();
    Ok((glow.valid(), last))
}

pub(crate) fn encrypt_all(
    data: &ImageDataset,
    encryptor_of: impl Fn(u32) -> FlowEncryptor,
    route_label: Option<u32>,
) -> ImageDataset {
    // Encrypt class by class (route a needs each image's class; route b one encryptor).
    let device = Device::flex();
    let n = data.shape.len();
    let mut images = vec![0.0f32; data.images.len()];
    let groups: Vec<u32> = match route_label {
        Some(l) => vec![l],
        None => (0..data.num_classes() as u32).collect(),
    };
    for g in groups {
        let idx: Vec<usize> = (0..data.len())
            .filter(|&i| route_label.is_some() || data.labels[i] == g)
            .collect();
        if idx.is_empty() {
            continue;
        }
        let enc = encryptor_of(g);
        for chunk in idx.chunks(256) {
            let part = data.subset(chunk);
            let c = enc.encrypt(part.images_tensor(0..part.len(), &device));
            let values: Vec<f32> = c.into_data().iter::<f32>().collect();
            for (k, &i) in chunk.iter().enumerate() {
                images[i * n..(i + 1) * n].copy_from_slice(&values[k * n..(k + 1) * n]);
            }
        }
    }
    ImageDataset {
        images,
        ..data.clone()
    }
}

/// Ciphertexts are continuous; Table 2 measures them as images: clamp to [0, 1] and quantise to
/// the data's levels.
fn quantised(data: &ImageDataset, levels: usize) -> ImageDataset {
    let l = (levels - 1) as f32;
    ImageDataset {
        images: data
            .images
            .iter()
            .map(|p| (p.clamp(0.0, 1.0) * l).round() / l)
            .collect(),
        ..data.clone()
    }
}

fn fit_classifier<M: Classifier>(
    model: M,
    s: &Setup,
    data: &ImageDataset,
    label: &str,
) -> Result<M> {
    let device = Device::flex().autodiff();
    let steps = s.clf_options.epochs * data.len().div_ceil(s.clf_options.batch_size);
    let pb = bar(steps as u64, label);
    let model = train_classifier(model, data, s.clf_options, &device, |r| {
        pb.inc(1);
        pb.set_message(format!("loss {:.3} acc {:.3}", r.loss, r.accuracy));
        Control::Continue
    })?;
    pb.finish();
    Ok(model.valid())
}

/// Route (c): encrypt each test image with every class's flow and key; predict the class whose
/// encryption the classifier most believes is of that class.
fn model_routed_accuracy<M: Classifier>(
    model: &M,
    encryptors: &[FlowEncryptor],
    test: &ImageDataset,
) -> f32 {
    let device = Device::flex();
    let k = encryptors.len();
    let mut scores = vec![0.0f32; test.len() * k];
    for (class, enc) in encryptors.iter().enumerate() {
        for start in (0..test.len()).step_by(256) {
            let range = start..(start + 256).min(test.len());
            let c = enc.encrypt_for_routing(test.images_tensor(range.clone(), &device));
            let p = softmax(model.forward(c), 1).narrow(1, class, 1);
            for (i, v) in p.into_data().iter::<f32>().enumerate() {
                scores[(range.start + i) * k + class] = v;
            }
        }
    }
    let predicted = argmax_rows(&scores, k);
    predicted
        .iter()
        .zip(&test.labels)
        .filter(|(p, l)| p == l)
        .count() as f32
        / test.len() as f32
}

/// The flattened latents of `data` (`[n, dims]` row-major) and `dims`, on the CPU.
pub(crate) fn latents(glow: &Glow, data: &ImageDataset, pre: Preprocess) -> (Vec<f32>, usize) {
    let device = Device::flex();
    let mut out = Vec::new();
    let mut dims = 0;
    for start in (0..data.len()).step_by(256) {
        let range = start..(start + 256).min(data.len());
        let flat = flow_latents(glow, data.images_tensor(range, &device), pre);
        dims = flat.dims()[1];
        out.extend(flat.into_data().iter::<f32>());
    }
    (out, dims)
}

pub fn run(args: FlowArgs) -> Result<()> {
    let started = Instant::now();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let s = setup(&args)?;
    let classes = s.train.num_classes();
    eprintln!(
        "flow rotation on {}: {} training and {} test images of {}, {} classes{}",
        args.data,
        s.train.len(),
        s.test.len(),
        s.train.shape,
        classes,
        if args.quick { " (quick run)" } else { "" }
    );
    // The experiment's key: fixed by the seed so the run is reproducible. Not a secret.
    let mut kb = [0u8; 32];
    kb[..8].copy_from_slice(&args.seed.to_le_bytes());
    let key = MasterKey::from_bytes(kb);

    // Flows: one per class (the paper's supervised setting) and one class-agnostic.
    let t = Instant::now();
    let mut class_flows = Vec::with_capacity(classes);
    let mut class_bpd = Vec::with_capacity(classes);
    for c in 0..classes as u32 {
        let idx: Vec<usize> = (0..s.train.len())
            .filter(|&i| s.train.labels[i] == c)
            .collect();
        let (g, bpd) = fit_flow(
            &s,
            &s.train.subset(&idx),
            &format!("flow for class {}", s.train.class_names[c as usize]),
        )?;
        class_flows.push(g);
        class_bpd.push(bpd);
    }
    let (agnostic, _) = fit_flow(&s, &s.train, "class-agnostic flow")?;
    let flow_train_s = t.elapsed().as_secs_f64();

    let device = Device::flex();
    let per_class: Vec<FlowEncryptor> = class_flows
        .iter()
        .enumerate()
        .map(|(c, g)| {
            FlowEncryptor::new(
                g.clone(),
                s.pre,
                &key.class_subkey(Scheme::FlowRotation, c as u32),
                &device,
            )
        })
        .collect();
    let agnostic_enc = FlowEncryptor::new(
        agnostic.clone(),
        s.pre,
        &key.subkey(Scheme::FlowRotation, "agnostic"),
        &device,
    );

    let t = Instant::now();
    let enc_train_a = encrypt_all(&s.train, |c| per_class[c as usize].clone(), None);
    let enc_test_a = encrypt_all(&s.test, |c| per_class[c as usize].clone(), None);
    let enc_train_b = encrypt_all(&s.train, |_| agnostic_enc.clone(), Some(0));
    let enc_test_b = encrypt_all(&s.test, |_| agnostic_enc.clone(), Some(0));
    let encrypt_s = t.elapsed().as_secs_f64();
    let images_encrypted = 2 * (s.train.len() + s.test.len());

    // Table 1, for both classifiers.
    let mut table1 = serde_json::Map::new();
    let t = Instant::now();
    for arch in ["cnn", "resnet"] {
        let row = match arch {
            "cnn" => {
                let make = || {
                    let d = Device::flex().autodiff();
                    d.seed(args.seed);
                    SmallCnnConfig::for_shape(s.train.shape, classes).init(&d)
                };
                table1_row(
                    &s,
                    arch,
                    make,
                    &enc_train_a,
                    &enc_test_a,
                    &enc_train_b,
                    &enc_test_b,
                    &per_class,
                )?
            }
            _ => {
                let make = || {
                    let d = Device::flex().autodiff();
                    d.seed(args.seed);
                    SmallResNetConfig::for_shape(s.train.shape, classes).init(&d)
                };
                table1_row(
                    &s,
                    arch,
                    make,
                    &enc_train_a,
                    &enc_test_a,
                    &enc_train_b,
                    &enc_test_b,
                    &per_class,
                )?
            }
        };
        table1.insert(arch.into(), row);
    }
    let classifiers_s = t.elapsed().as_secs_f64();

    // Table 2: held-out bits/dim (the dequantisation noise of each evaluation seeded alike).
    let t = Instant::now();
    let bpd = |g: &Glow, d: &ImageDataset| {
        device.seed(args.seed);
        evaluate_bits_per_dim(g, d, s.pre, &device)
    };
    let bpd_original = bpd(&agnostic, &s.test);
    let (enc_flow, _) = fit_flow(
        &s,
        &quantised(&enc_train_a, s.pre.levels),
        "flow on encrypted data",
    )?;
    let bpd_encrypted = bpd(&enc_flow, &quantised(&enc_test_a, s.pre.levels));
    let (enc_flow_b, _) = fit_flow(
        &s,
        &quantised(&enc_train_b, s.pre.levels),
        "flow on encrypted data (b)",
    )?;
    let bpd_encrypted_b = bpd(&enc_flow_b, &quantised(&enc_test_b, s.pre.levels));
    let untrained = {
        let (x, _) = s.pre.to_logit(
            s.train.images_tensor(0..s.train.len().min(256), &device),
            true,
        );
        s.glow.init(&device).data_init(x)
    };
    let bpd_untrained = bpd(&untrained, &s.test);
    let table2_s = t.elapsed().as_secs_f64();

    // Gaussianity of the learned latents on held-out data.
    let (z, dims) = latents(&agnostic, &s.test, s.pre);
    let g_agnostic = probe(&z, dims, 128, args.seed);
    let per_class_probe: Vec<GaussianityReport> = (0..classes as u32)
        .filter_map(|c| {
            let idx: Vec<usize> = (0..s.test.len())
                .filter(|&i| s.test.labels[i] == c)
                .collect();
            (idx.len() > 1).then(|| {
                let (z, d) = latents(&class_flows[c as usize], &s.test.subset(&idx), s.pre);
                probe(&z, d, 128, args.seed)
            })
        })
        .collect();
    let mean_sw = per_class_probe
        .iter()
        .map(|r| r.sliced_wasserstein)
        .sum::<f64>()
        / per_class_probe.len().max(1) as f64;
    let mean_floor = per_class_probe
        .iter()
        .map(|r| r.sliced_wasserstein_gaussian_floor)
        .sum::<f64>()
        / per_class_probe.len().max(1) as f64;
    eprintln!("{g_agnostic}");

    // Figure 3: one test image per class; originals, per-class encryptions, agnostic encryptions.
    let picks: Vec<usize> = (0..classes as u32)
        .filter_map(|c| (0..s.test.len()).find(|&i| s.test.labels[i] == c))
        .take(10)
        .collect();
    super::image_grid(
        &args.out.join("figure3.png"),
        &[&s.test, &enc_test_a, &enc_test_b],
        &picks,
    )?;

    let ratio = |arch: &str| {
        table1[arch]["enc_enc_true_class"].as_f64().unwrap_or(0.0)
            / table1[arch]["orig_orig"].as_f64().unwrap_or(1.0)
    };
    let results = json!({
        "experiment": "flow-rotation",
        "command": format!("veil experiment flow --data {} --out {}{}", args.data, args.out.display(), if args.quick { " --quick" } else { "" }),
        "data": args.data,
        "shape": [s.train.shape.channels, s.train.shape.height, s.train.shape.width],
        "classes": classes,
        "train_images": s.train.len(),
        "test_images": s.test.len(),
        "seed": args.seed,
        "quick": args.quick,
        "flow": {
            "levels": s.glow.levels, "steps": s.glow.steps, "hidden": s.glow.hidden,
            "epochs": s.flow_options.epochs, "data_levels": s.pre.levels, "alpha": s.pre.alpha,
            "per_class_train_bits_per_dim": class_bpd,
        },
        "table1": table1,
        "integrity_ratio": { "cnn": ratio("cnn"), "resnet": ratio("resnet") },
        "table2_bits_per_dim": {
            "trained_on_original": bpd_original,
            "trained_on_encrypted": bpd_encrypted,
            "trained_on_encrypted_agnostic": bpd_encrypted_b,
            "untrained": bpd_untrained,
        },
        "gaussianity": {
            "agnostic_flow": g_agnostic,
            "per_class_mean_sliced_w1": mean_sw,
            "per_class_mean_gaussian_floor": mean_floor,
        },
        "timing_s": {
            "flow_training": flow_train_s,
            "encryption": encrypt_s,
            "encryption_images_per_s": images_encrypted as f64 / encrypt_s.max(1e-9),
            "classifiers": classifiers_s,
            "table2": table2_s,
            "total": started.elapsed().as_secs_f64(),
        },
    });
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&results)? + "\n",
    )?;
    std::fs::write(args.out.join("report.md"), report(&results))?;
    eprintln!(
        "wrote {}/report.md, results.json and figure3.png in {:.0} s",
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn table1_row<M: Classifier>(
    s: &Setup,
    arch: &str,
    make: impl Fn() -> M,
    enc_train_a: &ImageDataset,
    enc_test_a: &ImageDataset,
    enc_train_b: &ImageDataset,
    enc_test_b: &ImageDataset,
    per_class: &[FlowEncryptor],
) -> Result<serde_json::Value> {
    let device = Device::flex();
    let on_orig = fit_classifier(make(), s, &s.train, &format!("{arch} on original"))?;
    let on_enc = fit_classifier(
        make(),
        s,
        enc_train_a,
        &format!("{arch} on encrypted (per class)"),
    )?;
    let on_enc_b = fit_classifier(
        make(),
        s,
        enc_train_b,
        &format!("{arch} on encrypted (agnostic)"),
    )?;
    Ok(json!({
        "orig_orig": accuracy(&on_orig, &s.test, &device),
        "orig_enc": accuracy(&on_orig, enc_test_a, &device),
        "enc_orig": accuracy(&on_enc, &s.test, &device),
        "enc_enc_true_class": accuracy(&on_enc, enc_test_a, &device),
        "enc_enc_model_routed": model_routed_accuracy(&on_enc, per_class, &s.test),
        "agnostic_enc_enc": accuracy(&on_enc_b, enc_test_b, &device),
        "agnostic_enc_orig": accuracy(&on_enc_b, &s.test, &device),
    }))
}

fn report(r: &serde_json::Value) -> String {
    let mut s = format!(
        "# Flow rotation on {}\n\nCommand: `{}`\n\n{} training and {} test images of {} (C×H×W), {} classes; Glow with {} levels × {} steps, {} hidden channels, {} epochs; seed {}.\n\n",
        r["data"].as_str().unwrap_or("?"),
        r["command"].as_str().unwrap_or("?"),
        r["train_images"],
        r["test_images"],
        r["shape"]
            .as_array()
            .map(|a| a
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join("×"))
            .unwrap_or_default(),
        r["classes"],
        r["flow"]["levels"],
        r["flow"]["steps"],
        r["flow"]["hidden"],
        r["flow"]["epochs"],
        r["seed"],
    );
    s += "## Table 1: test accuracy\n\nRoutes for encrypting a *test* image: (a) with the flow and key of its true class — the paper's code does this, and it leaks the label an honest user does not have; (b) one class-agnostic flow and key; (c) model-routed: encrypt with every class's flow and key and take the class whose encryption the classifier is most confident about.\n\n";
    s += "| Trained on | Tested on | Small CNN | Small ResNet |\n|---|---|---|---|\n";
    let t = &r["table1"];
    for (train, test, key) in [
        ("original", "original", "orig_orig"),
        ("original", "encrypted (a)", "orig_enc"),
        ("encrypted (per class)", "original", "enc_orig"),
        (
            "encrypted (per class)",
            "encrypted, route (a) true class — leaks the label",
            "enc_enc_true_class",
        ),
        (
            "encrypted (per class)",
            "encrypted, route (c) model-routed",
            "enc_enc_model_routed",
        ),
        (
            "encrypted (agnostic)",
            "encrypted, route (b) agnostic",
            "agnostic_enc_enc",
        ),
        ("encrypted (agnostic)", "original", "agnostic_enc_orig"),
    ] {
        s += &format!(
            "| {train} | {test} | {} | {} |\n",
            pct(&t["cnn"][key]),
            pct(&t["resnet"][key])
        );
    }
    s += &format!(
        "\nIntegrity (encrypted/encrypted over original/original, route a): CNN {:.3}, ResNet {:.3} (the paper's CIFAR-10: 88.5/95.5 = 0.927).\n\n",
        r["integrity_ratio"]["cnn"].as_f64().unwrap_or(0.0),
        r["integrity_ratio"]["resnet"].as_f64().unwrap_or(0.0)
    );
    let b = &r["table2_bits_per_dim"];
    s += &format!(
        "## Table 2: held-out bits/dim\n\n| Glow | bits/dim |\n|---|---|\n| trained on original data | {:.3} |\n| trained on encrypted data (per-class ciphertexts) | {:.3} |\n| trained on encrypted data (class-agnostic ciphertexts) | {:.3} |\n| untrained | {:.3} |\n\n",
        b["trained_on_original"].as_f64().unwrap_or(f64::NAN),
        b["trained_on_encrypted"].as_f64().unwrap_or(f64::NAN),
        b["trained_on_encrypted_agnostic"]
            .as_f64()
            .unwrap_or(f64::NAN),
        b["untrained"].as_f64().unwrap_or(f64::NAN)
    );
    let g = &r["gaussianity"];
    s += &format!(
        "## Gaussianity of the latents (held-out data)\n\nClass-agnostic flow: sliced W1 to N(0, I) {:.4} (a true Gaussian sample of the same size: {:.4}); mean |excess kurtosis| {:.3}. Per-class flows: mean sliced W1 {:.4} (floor {:.4}). The closer to the floor, the less Theorem 1's δ term gives an adversary.\n\n",
        g["agnostic_flow"]["sliced_wasserstein"]
            .as_f64()
            .unwrap_or(f64::NAN),
        g["agnostic_flow"]["sliced_wasserstein_gaussian_floor"]
            .as_f64()
            .unwrap_or(f64::NAN),
        g["agnostic_flow"]["mean_abs_excess_kurtosis"]
            .as_f64()
            .unwrap_or(f64::NAN),
        g["per_class_mean_sliced_w1"].as_f64().unwrap_or(f64::NAN),
        g["per_class_mean_gaussian_floor"]
            .as_f64()
            .unwrap_or(f64::NAN),
    );
    s += "## Figure 3\n\n![originals, per-class encryptions, agnostic encryptions](figure3.png)\n\nTop: test originals; middle: route (a) encryptions; bottom: route (b) encryptions.\n";
    s
}
