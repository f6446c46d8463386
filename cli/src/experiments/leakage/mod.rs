//! `veil experiment leakage`: gradient leakage against plain and flow-encrypted training, the
//! flow-rotation paper's Tables 3-4 in kind ("Secure Data Sharing With Flow Model", §5.3, §6.3).
//!
//! Every image of a training subset is leaked from its single-image gradient (iDLG with
//! retries), three times: the client trains on the plaintext, on its per-class flow-rotation
//! ciphertext (route a), or on its class-agnostic ciphertext (route b). A classifier is trained
//! on each set of leaked images (with the leaked labels) and tested on original and encrypted
//! test images. A method comparison (DLG, iDLG, Inverting Gradients, and the analytic attack on a
//! fully connected first layer) runs on the first images of the plain case.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use burn::module::Module;
use burn::tensor::Device;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use veil::attacks::leakage::metrics::{psnr, ssim};
use veil::attacks::leakage::{
    AttackConfig, AttackedArch, AttackedNet, AttackedNetConfig, Method, analytic_first_layer,
    attack_with_restarts, victim_gradient,
};
use veil::burn;
use veil::crypto::keys::MasterKey;
use veil::data::ImageDataset;
use veil::nn::model::SmallCnnConfig;
use veil::nn::train::{Control, TrainOptions, accuracy, train_classifier};
use veil::schemes::flow_rotation::FlowSet;

use super::bar;
use crate::datasets::{CommonArgs, SourceDefaults};

mod results;
pub use results::*;

/// Options of `veil experiment leakage`.
#[derive(clap::Args, Debug)]
pub struct LeakageArgs {
    /// Data, output and seed. The digits are encrypted with the shipped digits flows; any other
    /// source needs `--flows` (image folders and the synthetic set default to 1×16×16).
    #[command(flatten)]
    common: CommonArgs,
    /// The flows that encrypt the training images of a data source other than the digits: a
    /// folder written by `veil flow train --data <the same source> --out DIR`.
    #[arg(long, value_name = "DIR")]
    flows: Option<PathBuf>,
    /// Training images leaked in each case.
    #[arg(long, default_value_t = 200)]
    images: usize,
    /// Iterations of each attack (retries double them).
    #[arg(long, default_value_t = 300)]
    iterations: usize,
    /// Retries of an attack that has not converged.
    #[arg(long, default_value_t = 2)]
    restarts: usize,
    /// Images in the method comparison.
    #[arg(long, default_value_t = 30)]
    compare: usize,
    /// Attacked network: `lenet` (DLG's, sigmoid, no strides) or `mlp`.
    #[arg(long, default_value = "lenet")]
    arch: String,
}

/// Leak figures for one case.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseSummary {
    pub images: usize,
    pub mean_psnr_vs_input: f64,
    pub median_psnr_vs_input: f64,
    pub mean_psnr_vs_plaintext: f64,
    /// The training inputs' own PSNR against the plaintexts (100 for plain training).
    pub mean_input_psnr_vs_plaintext: f64,
    pub mean_ssim_vs_input: f64,
    pub mean_ssim_vs_plaintext: f64,
    pub label_accuracy: f64,
    /// Share of images leaked at PSNR ≥ 25 dB against the training input.
    pub share_recovered_25db: f64,
    pub converged: f64,
    pub mean_attempts: f64,
}

struct Leaked {
    images: Vec<f32>,
    labels: Vec<u32>,
    summary: CaseSummary,
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.iter().sum::<f64>() / v.len() as f64
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Per-class (route a) or class-agnostic (route b) ciphertexts, clamped to [0, 1]: what an
/// encrypting client trains on.
fn encrypt(
    data: &ImageDataset,
    flows: &FlowSet,
    key: &MasterKey,
    agnostic: bool,
) -> Result<ImageDataset> {
    let device = Device::flex();
    let mut out = if agnostic {
        let enc = flows
            .agnostic_encryptor(key, &device)
            .context("the flows have no class-agnostic flow")?;
        super::flow::encrypt_all(data, |_| enc.clone(), Some(0))
            .require_all("the attacked set (class-agnostic flow)")?
    } else {
        super::flow::encrypt_all(
            data,
            |c| flows.class_encryptor(key, c as usize, &device),
            None,
        )
        .require_all("the attacked set (per-class flows)")?
    };
    out.images.iter_mut().for_each(|p| *p = p.clamp(0.0, 1.0));
    Ok(out)
}

/// Leaks every image of `inputs` (what the client trained on) from its gradient, on two threads.
fn leak_all(
    net: &AttackedNet,
    inputs: &ImageDataset,
    plaintexts: &ImageDataset,
    config: AttackConfig,
    restarts: usize,
    label: &str,
) -> Result<Leaked> {
    let n = inputs.len();
    let dim = inputs.shape.len();
    let pb = bar(n as u64, label);
    let next = AtomicUsize::new(0);
    let results: Vec<Result<Vec<(usize, veil::attacks::leakage::Reconstruction)>>> =
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(
                        || -> Result<Vec<(usize, veil::attacks::leakage::Reconstruction)>> {
                            let device = Device::flex().autodiff();
                            let net = net.to_device(&device);
                            let mut out = Vec::new();
                            loop {
                                let i = next.fetch_add(1, Ordering::SeqCst);
                                if i >= n {
                                    return Ok(out);
                                }
                                let g = victim_gradient(
                                    &net,
                                    inputs.image(i),
                                    inputs.labels[i] as usize,
                                    &device,
                                );
                                let mut c = config;
                                c.seed = config.seed.wrapping_add(i as u64 * 1000);
                                let rec = attack_with_restarts(&net, &g, c, restarts, &device)
                                    .with_context(|| format!("attacking image {i}"))?;
                                pb.inc(1);
                                out.push((i, rec));
                            }
                        },
                    )
                })
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("an attack thread panicked")))
                })
                .collect()
        });
    pb.finish();
    let mut recs: Vec<Option<veil::attacks::leakage::Reconstruction>> = vec![None; n];
    for r in results {
        for (i, rec) in r? {
            recs[i] = Some(rec);
        }
    }
    let mut images = vec![0.0f32; n * dim];
    let mut labels = vec![0u32; n];
    let (mut p_in, mut p_plain, mut p_input_plain, mut s_in, mut s_plain) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut correct, mut converged, mut attempts) = (0usize, 0usize, 0usize);
    for (i, rec) in recs.into_iter().enumerate() {
        let rec = rec.context("an image was not attacked")?;
        images[i * dim..(i + 1) * dim].copy_from_slice(&rec.image);
        labels[i] = rec.label as u32;
        correct += usize::from(rec.label as u32 == inputs.labels[i]);
        converged += usize::from(rec.converged());
        attempts += rec.attempts;
        p_in.push(psnr(&rec.image, inputs.image(i)));
        p_plain.push(psnr(&rec.image, plaintexts.image(i)));
        p_input_plain.push(psnr(inputs.image(i), plaintexts.image(i)));
        s_in.push(ssim(&rec.image, inputs.image(i), inputs.shape));
        s_plain.push(ssim(&rec.image, plaintexts.image(i), inputs.shape));
    }
    let summary = CaseSummary {
        images: n,
        mean_psnr_vs_input: mean(&p_in),
        median_psnr_vs_input: median(&p_in),
        mean_psnr_vs_plaintext: mean(&p_plain),
        mean_input_psnr_vs_plaintext: mean(&p_input_plain),
        mean_ssim_vs_input: mean(&s_in),
        mean_ssim_vs_plaintext: mean(&s_plain),
        label_accuracy: correct as f64 / n as f64,
        share_recovered_25db: p_in.iter().filter(|&&p| p >= 25.0).count() as f64 / n as f64,
        converged: converged as f64 / n as f64,
        mean_attempts: attempts as f64 / n as f64,
    };
    Ok(Leaked {
        images,
        labels,
        summary,
    })
}

fn train_and_test(
    train: &ImageDataset,
    tests: &[&ImageDataset],
    options: TrainOptions,
    label: &str,
) -> Result<Vec<f32>> {
    let device = Device::flex().autodiff();
    device.seed(options.seed);
    let model = SmallCnnConfig::for_shape(train.shape, train.num_classes()).init(&device);
    let steps = options.epochs * train.len().div_ceil(options.batch_size);
    let pb = bar(steps as u64, label);
    let model = train_classifier(model, train, options, &device, |_| {
        pb.inc(1);
        Control::Continue
    })?
    .valid();
    pb.finish();
    let cpu = Device::flex();
    Ok(tests.iter().map(|t| accuracy(&model, t, &cpu)).collect())
}

pub fn run(args: LeakageArgs) -> Result<()> {
    let started = Instant::now();
    let (data, flows, flows_name) = load_data_and_flows(&args)?;
    let arch = AttackedArch::from_name(&args.arch)
        .with_context(|| format!("unknown network {:?}: lenet or mlp", args.arch))?;
    let (images, iterations, compare) = if args.common.quick {
        (
            args.images.min(20),
            args.iterations.min(150),
            args.compare.min(5),
        )
    } else {
        (args.images, args.iterations, args.compare)
    };
    std::fs::create_dir_all(&args.common.out)
        .with_context(|| format!("creating {}", args.common.out.display()))?;
    // The shipped digits flows were trained on the training part of the digits' split with
    // seed 7; flows from `veil flow train` on the split with their own seed (default 7 too).
    let (train, test) = data.split(0.2, 7);
    let step = (train.len() / images.max(1)).max(1);
    let picked: Vec<usize> = (0..train.len()).step_by(step).take(images).collect();
    let subset = train.subset(&picked);
    let mut kb = [0u8; 32];
    kb[..8].copy_from_slice(&args.common.seed.to_le_bytes());
    kb[8] = 0x1e;
    let key = MasterKey::from_bytes(kb);
    eprintln!(
        "gradient leakage on {}: {} training images leaked per case, {} ({} parameters), iDLG {} iterations with up to {} retries",
        args.common.data,
        subset.len(),
        arch.name(),
        AttackedNetConfig::new(arch, data.shape, 10, args.common.seed).num_params(),
        iterations,
        args.restarts
    );
    let t = Instant::now();
    let enc_a = encrypt(&subset, &flows, &key, false)?;
    let enc_b = encrypt(&subset, &flows, &key, true)?;
    let test_a = encrypt(&test, &flows, &key, false)?;
    let test_b = encrypt(&test, &flows, &key, true)?;
    let encrypt_s = t.elapsed().as_secs_f64();

    let device = Device::flex().autodiff();
    let net = AttackedNetConfig::new(arch, data.shape, data.num_classes(), args.common.seed)
        .init(&device);
    let mut config = AttackConfig::new(Method::Idlg);
    config.iterations = iterations;
    config.seed = args.common.seed;
    let t = Instant::now();
    let plain = leak_all(&net, &subset, &subset, config, args.restarts, "leak: plain")?;
    let per_class = leak_all(
        &net,
        &enc_a,
        &subset,
        config,
        args.restarts,
        "leak: encrypted (a)",
    )?;
    let agnostic = leak_all(
        &net,
        &enc_b,
        &subset,
        config,
        args.restarts,
        "leak: encrypted (b)",
    )?;
    let leak_s = t.elapsed().as_secs_f64();

    // Method comparison on the first images of the plain case: one run each, no retries.
    let t = Instant::now();
    let head = subset.subset(&(0..compare.min(subset.len())).collect::<Vec<_>>());
    let mut methods = BTreeMap::new();
    for method in Method::ALL {
        let mut c = AttackConfig::new(method);
        c.iterations = iterations;
        c.seed = args.common.seed;
        let r = leak_all(
            &net,
            &head,
            &head,
            c,
            0,
            &format!("compare: {}", method.name()),
        )?;
        methods.insert(method.name().to_owned(), r.summary);
    }
    let mlp = AttackedNetConfig::new(
        AttackedArch::MLP,
        data.shape,
        data.num_classes(),
        args.common.seed,
    )
    .init(&device);
    let (mut analytic_psnr, mut analytic_labels) = (Vec::new(), 0usize);
    for i in 0..subset.len() {
        let g = victim_gradient(&mlp, subset.image(i), subset.labels[i] as usize, &device);
        let x = analytic_first_layer(&mlp, &g).context("the MLP starts with a linear layer")?;
        analytic_psnr.push(psnr(&x, subset.image(i)));
        analytic_labels +=
            usize::from(veil::attacks::leakage::infer_label(&mlp, &g) as u32 == subset.labels[i]);
    }
    let compare_s = t.elapsed().as_secs_f64();

    // Tables 3-4 in kind: classifiers trained on leaked images.
    let t = Instant::now();
    // At least 40 epochs and about 600 steps: the sets are small (a few hundred images).
    let steps_per_epoch = subset.len().div_ceil(32);
    let options = TrainOptions {
        epochs: 40.max(600usize.div_ceil(steps_per_epoch)),
        batch_size: 32,
        learning_rate: 2e-3,
        seed: args.common.seed,
    };
    let as_dataset = |l: &Leaked| ImageDataset {
        images: l.images.clone(),
        labels: l.labels.clone(),
        ..subset.clone()
    };
    let tests = [&test, &test_a, &test_b];
    let mut table = BTreeMap::new();
    for (key_name, train_set, label) in [
        ("true_plaintext", subset.clone(), "train: true plaintexts"),
        ("leaked_plain", as_dataset(&plain), "train: leaked (plain)"),
        (
            "true_ciphertext_a",
            enc_a.clone(),
            "train: true ciphertexts (a)",
        ),
        (
            "leaked_encrypted_a",
            as_dataset(&per_class),
            "train: leaked (a)",
        ),
        (
            "true_ciphertext_b",
            enc_b.clone(),
            "train: true ciphertexts (b)",
        ),
        (
            "leaked_encrypted_b",
            as_dataset(&agnostic),
            "train: leaked (b)",
        ),
    ] {
        let acc = train_and_test(&train_set, &tests, options, label)?;
        table.insert(
            key_name.to_owned(),
            TestAccuracies {
                test_original: f64::from(acc[0]),
                test_encrypted_a: f64::from(acc[1]),
                test_encrypted_b: f64::from(acc[2]),
            },
        );
    }
    let classify_s = t.elapsed().as_secs_f64();

    // Figure: plaintexts, leaked from plain, ciphertexts (a), leaked from (a), ciphertexts (b), leaked from (b).
    let picks: Vec<usize> = (0..10)
        .filter_map(|c| (0..subset.len()).find(|&i| subset.labels[i] == c))
        .collect();
    super::image_grid(
        &args.common.out.join("figure.png"),
        &[
            &subset,
            &as_dataset(&plain),
            &enc_a,
            &as_dataset(&per_class),
            &enc_b,
            &as_dataset(&agnostic),
        ],
        &picks,
    )?;

    let results = LeakageResults {
        setup: LeakageSetup {
            data: args.common.data.to_string(),
            images: subset.len(),
            test_images: test.len(),
            arch,
            attacked_params: net.config().num_params(),
            method: "idlg".into(),
            iterations,
            restarts: args.restarts,
            learning_rate: config.learning_rate,
            seed: args.common.seed,
            quick: args.common.quick,
            flows: flows_name,
            key_fingerprint: key.fingerprint().to_string(),
            classifier: "small-cnn".into(),
            classifier_epochs: options.epochs,
        },
        leak: LeakCases {
            plain: plain.summary,
            encrypted_a: per_class.summary,
            encrypted_b: agnostic.summary,
        },
        methods,
        analytic_mlp: AnalyticSummary {
            images: subset.len(),
            mean_psnr: mean(&analytic_psnr),
            min_psnr: analytic_psnr.iter().copied().fold(f64::INFINITY, f64::min),
            label_accuracy: analytic_labels as f64 / subset.len() as f64,
        },
        classifiers: table,
        timing_s: LeakageTiming {
            encrypt: encrypt_s,
            leak: leak_s,
            compare: compare_s,
            classifiers: classify_s,
            total: started.elapsed().as_secs_f64(),
            idlg_images_per_s: (3 * subset.len()) as f64 / leak_s,
        },
    };
    super::write_outputs(&args.common.out, &results, report(&results, &args), started)
}

/// The data and the flows that encrypt it (see [`super::data_and_flows`]).
fn load_data_and_flows(args: &LeakageArgs) -> Result<(ImageDataset, FlowSet, String)> {
    let loaded = args.common.load(SourceDefaults {
        size: 16,
        channels: 1,
        classes: 10,
        per_class: 100,
        seed: args.common.seed,
    })?;
    super::data_and_flows(&args.common.data, loaded.data, args.flows.as_deref())
}
