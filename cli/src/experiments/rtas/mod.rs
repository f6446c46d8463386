//! `veil experiment rtas`: RTAS and RTAS-fast ("Private Machine Learning by Random
//! Transformations", §5) on any data source: logistic regression ("is it a 0") and the paper's
//! CNN, trained and evaluated through the protocol and in the clear from the same initial
//! weights; time and bytes per batch and per link; and what the helper learns
//! ([`veil::attacks::rtas_helper`]).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use veil::attacks::black_box::agreement;
use veil::attacks::leakage::metrics::psnr;
use veil::attacks::rtas_helper::{LinearMap, argmax, histogram, knn_average, l1, quantiles};
use veil::crypto::keys::MasterKey;
use veil::data::ImageDataset;
use veil::schemes::rtas::run::{Progress as RunProgress, truth};
use veil::schemes::rtas::{
    FixedPoint, HelperView, Mode, NetworkSpec, Plain, RunConfig, Simulation, Sizes, run_holder,
    simulate,
};

use super::write_outputs;
use crate::datasets::{CommonArgs, SourceDefaults};
use crate::progress::Progress;

mod results;
pub use results::*;

/// Options of `veil experiment rtas`.
#[derive(clap::Args, Debug)]
pub struct RtasArgs {
    /// Data, output, size and seed (an MNIST IDX folder in particular; image folders and the
    /// synthetic set default to 1×28×28).
    #[command(flatten)]
    pub common: CommonArgs,
    /// Epochs of the CNN (default 15; 3 with --quick).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Epochs of the logistic regression (default 3; 1 with --quick).
    #[arg(long)]
    pub logistic_epochs: Option<usize>,
    /// Training images at most (default 6000; 600 with --quick).
    #[arg(long)]
    pub train: Option<usize>,
    /// Test images at most (default 2000; 300 with --quick).
    #[arg(long)]
    pub test: Option<usize>,
    /// Fractional bits of the fixed-point encoding.
    #[arg(long, default_value_t = 16)]
    pub frac_bits: u32,
}

/// How long a party waits for a frame before it gives up on its peer.
const TIMEOUT: Duration = Duration::from_secs(120);

struct Views {
    /// Layer 0's view of each test image, in the view pass.
    per_image: Vec<Vec<f64>>,
    /// Index of the helper call of the view pass's first image, and calls per image.
    first_call: usize,
    calls_per_image: usize,
}

impl Views {
    fn new(config: &RunConfig, sizes: Sizes) -> Self {
        let calls = match config.mode {
            Mode::Rtas => config.spec.layers.len(),
            Mode::RtasFast => 1,
        };
        let batches = config.epochs * sizes.train.div_ceil(config.batch_size)
            + sizes.test.div_ceil(config.inference_batch);
        Self {
            per_image: vec![],
            first_call: batches * calls,
            calls_per_image: calls,
        }
    }

    fn record(&mut self, v: HelperView<'_>) {
        if v.call >= self.first_call
            && (v.call - self.first_call).is_multiple_of(self.calls_per_image)
        {
            self.per_image.push(v.values.to_vec());
        }
    }
}

fn chance(labels: &[u32]) -> f64 {
    let k = labels.iter().max().map_or(1, |&m| m as usize + 1);
    let h = histogram(labels, k);
    h.into_iter().fold(0.0, f64::max)
}

/// Whether `accuracy` is within three binomial standard deviations of always answering the
/// commonest class (whose share is `chance`): "is it a 0" is 90 % by answering "no".
fn at_chance(accuracy: f64, chance: f64, n: usize) -> bool {
    accuracy < chance + 3.0 * (chance * (1.0 - chance) / n.max(1) as f64).sqrt()
}

/// The median of `v` (0 when empty).
pub(crate) fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

fn figures(
    sim: &Simulation,
    config: &RunConfig,
    sizes: Sizes,
    truth: &[u32],
    reference: f64,
) -> ProtocolFigures {
    let p0 = [
        Default::default(),
        sim.p0.traffic_after_training,
        sim.p0.traffic_after_inference,
    ];
    let p1 = [
        Default::default(),
        sim.p1.traffic_after_training,
        sim.p1.traffic_after_inference,
    ];
    let links = links(&p0, &p1);
    let train_bytes: u64 = links.iter().map(|l| l.train_bytes).sum();
    let inference_bytes: u64 = links.iter().map(|l| l.inference_bytes).sum();
    let train_batches = sim.p0.train_batch_seconds.len().max(1);
    let infer_batches = sim.p0.inference_batch_seconds.len().max(1);
    // Full batches only: the last one of an epoch may be smaller.
    let full = sizes.train / config.batch_size;
    let per_epoch = sizes.train.div_ceil(config.batch_size);
    let full_times: Vec<f64> = sim
        .p0
        .train_batch_seconds
        .iter()
        .enumerate()
        .filter(|(i, _)| i % per_epoch < full)
        .map(|(_, &t)| t)
        .collect();
    let first_inference = sim
        .p0
        .inference_batch_seconds
        .first()
        .copied()
        .unwrap_or(0.0);
    let inference_batch = config.inference_batch.min(sizes.test);
    let accuracy = agreement(&sim.p0.predictions, truth);
    ProtocolFigures {
        accuracy,
        gap_points: 100.0 * (accuracy - reference),
        train_batch: config.batch_size,
        train_seconds_per_batch: median(&full_times),
        train_mb_per_batch: train_bytes as f64 / train_batches as f64 / 1e6,
        inference_batch,
        inference_seconds_per_batch: first_inference,
        inference_mb_per_batch: inference_bytes as f64 / infer_batches as f64 / 1e6,
        inference_kb_per_image: inference_bytes as f64 / sizes.test.max(1) as f64 / 1e3,
        inference_images_per_second: inference_batch as f64 / first_inference.max(1e-9),
        links,
        triples: sim.p0.stats.triples,
        helper_calls: sim.p0.stats.helper_calls,
        implausible_values: sim.helper.implausible,
    }
}

/// Moves `bar` with a run's progress (training images, then test images).
pub(crate) fn tracker(bar: &Progress, epochs: usize) -> impl FnMut(RunProgress) + Send + '_ {
    let (mut last, mut per_epoch) = (0usize, 0usize);
    move |p: RunProgress| {
        let now = match p {
            RunProgress::Trained { epoch, done, total } => {
                per_epoch = total;
                epoch * total + done
            }
            RunProgress::Inferred { done, .. } => epochs * per_epoch + done,
        };
        bar.inc(now.saturating_sub(last) as u64);
        last = now;
    }
}

/// Runs `config` through the protocol with a progress bar, keeping the helper's views of the
/// view pass when `views` is given.
fn through_protocol(
    config: &RunConfig,
    train: &ImageDataset,
    test: &ImageDataset,
    key: &MasterKey,
    label: &str,
    views: Option<&mut Views>,
) -> Result<Simulation> {
    let bar =
        Progress::new((config.epochs * train.len() + test.len()) as u64, label).unit("images");
    let mut progress = tracker(&bar, config.epochs);
    let mut record;
    let observer: Option<&mut (dyn FnMut(HelperView<'_>) + Send)> = match views {
        Some(v) => {
            record = move |view: HelperView<'_>| v.record(view);
            Some(&mut record)
        }
        None => None,
    };
    let sim = simulate(config, train, test, key, TIMEOUT, observer, &mut progress)
        .with_context(|| format!("{label} through the protocol"))?;
    bar.finish();
    Ok(sim)
}

fn pixels(data: &ImageDataset, i: usize) -> Vec<f64> {
    data.image(i).iter().map(|&p| p as f64).collect()
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x.clamp(0.0, 1.0) as f32).collect()
}

/// The helper-view attacks on the CNN's views of the test set.
fn attack_helper(
    test: &ImageDataset,
    rtas: &Views,
    fast: &Views,
    q: usize,
) -> Result<HelperAttacks> {
    let n = test
        .len()
        .min(rtas.per_image.len())
        .min(fast.per_image.len());
    if n < 20 {
        bail!("the helper-view attacks need at least 20 test images, not {n}");
    }
    let k = test.num_classes();
    let half = n / 2;
    let known: Vec<usize> = (0..half).collect();
    let attacked: Vec<usize> = (half..n).collect();
    let one_hot = |i: usize| -> Vec<f64> {
        let mut v = vec![0.0; k];
        v[test.labels[i] as usize] = 1.0;
        v
    };
    let targets: Vec<Vec<f64>> = known.iter().map(|&i| one_hot(i)).collect();
    let known_labels: Vec<u32> = known.iter().map(|&i| test.labels[i]).collect();
    let class_accuracy = |features: &dyn Fn(usize) -> Vec<f64>| -> f64 {
        let kf: Vec<Vec<f64>> = known.iter().map(|&i| features(i)).collect();
        let qf: Vec<Vec<f64>> = attacked.iter().map(|&i| features(i)).collect();
        let predicted = knn_average(&kf, &targets, &qf, 5);
        attacked
            .iter()
            .zip(&predicted)
            .filter(|(i, p)| argmax(p) == test.labels[**i] as usize)
            .count() as f64
            / attacked.len() as f64
    };
    let sorted = |i: usize| quantiles(&rtas.per_image[i], q);
    let rtas_class_accuracy = class_accuracy(&sorted);
    let fast_class_accuracy = class_accuracy(&|i| fast.per_image[i].clone());

    // Batches of 8: the helper's vector is the union of the 8 images' vectors, permuted.
    let batch = 8;
    let union = |ids: &[usize]| -> Vec<f64> {
        let all: Vec<f64> = ids
            .iter()
            .flat_map(|&i| rtas.per_image[i].iter().copied())
            .collect();
        quantiles(&all, q)
    };
    let hist =
        |ids: &[usize]| histogram(&ids.iter().map(|&i| test.labels[i]).collect::<Vec<_>>(), k);
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let known_batches: Vec<Vec<usize>> = (0..2000)
        .map(|_| {
            let mut pool = known.clone();
            pool.shuffle(&mut rng);
            pool.truncate(batch);
            pool
        })
        .collect();
    let attacked_batches: Vec<&[usize]> = attacked.chunks_exact(batch).collect();
    let predicted = knn_average(
        &known_batches.iter().map(|b| union(b)).collect::<Vec<_>>(),
        &known_batches.iter().map(|b| hist(b)).collect::<Vec<_>>(),
        &attacked_batches
            .iter()
            .map(|b| union(b))
            .collect::<Vec<_>>(),
        10,
    );
    let prior = histogram(&known_labels, k);
    let mean_l1 = |f: &dyn Fn(usize) -> f64| -> f64 {
        (0..attacked_batches.len()).map(f).sum::<f64>() / attacked_batches.len().max(1) as f64
    };
    let rtas_histogram_l1 = mean_l1(&|b| l1(&predicted[b], &hist(attacked_batches[b])));
    let histogram_prior_l1 = mean_l1(&|b| l1(&prior, &hist(attacked_batches[b])));

    // Reconstruction: the nearest known image by sorted view, against the mean image.
    let d = test.shape.len();
    let mut mean_image = vec![0.0f64; d];
    for &i in &known {
        for (m, p) in mean_image.iter_mut().zip(test.image(i)) {
            *m += *p as f64 / known.len() as f64;
        }
    }
    let nearest = knn_average(
        &known.iter().map(|&i| sorted(i)).collect::<Vec<_>>(),
        &known.iter().map(|&i| pixels(test, i)).collect::<Vec<_>>(),
        &attacked.iter().map(|&i| sorted(i)).collect::<Vec<_>>(),
        1,
    );
    let mean_over = |f: &dyn Fn(usize, usize) -> f64| -> f64 {
        attacked
            .iter()
            .enumerate()
            .map(|(j, &i)| f(j, i))
            .sum::<f64>()
            / attacked.len() as f64
    };
    let rtas_nearest_psnr = mean_over(&|j, i| psnr(&to_f32(&nearest[j]), test.image(i)));
    let mean_image_psnr = mean_over(&|_, i| psnr(&to_f32(&mean_image), test.image(i)));

    // RTAS-fast: fit the first layer from known (image, output) pairs, invert the others.
    let invert = |pairs: usize| -> Result<Vec<f64>> {
        let ids = &known[..pairs.min(known.len())];
        let map = LinearMap::fit(
            &ids.iter().map(|&i| pixels(test, i)).collect::<Vec<_>>(),
            &ids.iter()
                .map(|&i| fast.per_image[i].clone())
                .collect::<Vec<_>>(),
        )
        .context("fitting RTAS-fast's first layer")?;
        attacked
            .iter()
            .map(|&i| {
                let x = map
                    .invert(&fast.per_image[i])
                    .context("inverting an output")?;
                Ok(psnr(&to_f32(&x), test.image(i)))
            })
            .collect()
    };
    // Every known pair: least squares needs d + 1 in general position, and more steady it.
    let pairs = known.len();
    let full = invert(pairs)?;
    let quarter = invert(pairs / 4)?;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let n_values = rtas.per_image.first().map_or(0, Vec::len);
    Ok(HelperAttacks {
        known_views: known.len(),
        attacked_views: attacked.len(),
        quantiles: q,
        claimed_log10_factorial: (1..=n_values).map(|i| (i as f64).log10()).sum(),
        values_per_image: n_values,
        chance: chance(&known_labels),
        rtas_class_accuracy,
        rtas_histogram_l1,
        histogram_prior_l1,
        rtas_nearest_psnr,
        mean_image_psnr,
        fast_class_accuracy,
        fast_known_pairs: pairs,
        fast_inversion_psnr: mean(&full),
        fast_exact_share: full.iter().filter(|&&p| p > 40.0).count() as f64 / full.len() as f64,
        fast_inversion_psnr_quarter: mean(&quarter),
    })
}

pub fn run(args: RtasArgs) -> Result<()> {
    let started = Instant::now();
    let quick = args.common.quick;
    let epochs = args.epochs.unwrap_or(if quick { 3 } else { 15 });
    let logistic_epochs = args.logistic_epochs.unwrap_or(if quick { 1 } else { 3 });
    let train_cap = args.train.unwrap_or(if quick { 600 } else { 6000 });
    let test_cap = args.test.unwrap_or(if quick { 300 } else { 2000 });
    if epochs == 0 || logistic_epochs == 0 || train_cap == 0 || test_cap < 20 {
        bail!(
            "--epochs and --logistic-epochs must be at least 1, --train at least 1 and --test at least 20"
        );
    }
    if !(4..=24).contains(&args.frac_bits) {
        bail!("--frac-bits must be in 4..=24 (products carry twice as many in 64 bits)");
    }
    let loaded = args.common.load(SourceDefaults {
        size: 28,
        channels: 1,
        classes: 10,
        per_class: (train_cap + test_cap).div_ceil(10),
        seed: args.common.seed,
    })?;
    let data = loaded.data;
    let (train, test) = data.split(0.25, args.common.seed);
    let train = train.subset(&(0..train.len().min(train_cap)).collect::<Vec<_>>());
    let test = test.subset(&(0..test.len().min(test_cap)).collect::<Vec<_>>());
    if train.is_empty() || test.len() < 20 {
        bail!(
            "{} holds too few images for RTAS: {} to train on, {} to test",
            args.common.data,
            train.len(),
            test.len()
        );
    }
    std::fs::create_dir_all(&args.common.out)
        .with_context(|| format!("creating {}", args.common.out.display()))?;
    let key = MasterKey::from_bytes({
        let mut k = [0u8; 32];
        k[..8].copy_from_slice(&args.common.seed.to_le_bytes());
        k[8] = 0x20;
        k
    });
    let sizes = Sizes {
        train: train.len(),
        test: test.len(),
    };
    let fixed_point = FixedPoint {
        frac_bits: args.frac_bits,
    };
    let mut models = Vec::new();
    let mut cnn_views = None;
    for (model, spec, lr, epochs) in [
        (
            "logistic",
            NetworkSpec::logistic(data.shape),
            logistic_lr(data.shape.len()),
            logistic_epochs,
        ),
        (
            "cnn",
            NetworkSpec::paper_cnn(data.shape, data.num_classes()),
            1.0,
            epochs,
        ),
    ] {
        spec.geometry()?;
        let is_cnn = model == "cnn";
        let config = RunConfig {
            spec: spec.clone(),
            fixed_point,
            lr,
            epochs,
            batch_size: 32,
            inference_batch: 8192,
            init_seed: args.common.seed,
            order_seed: args.common.seed ^ 0x5eed,
            positive: 0,
            mode: Mode::Rtas,
            view_batch: is_cnn.then_some(1),
        };
        let truth = truth(&config, &test.labels);
        let bar = Progress::new(
            (epochs * train.len() + test.len()) as u64,
            &format!("{model}: plaintext"),
        )
        .unit("images");
        let plain = run_holder(
            &mut Plain,
            &RunConfig {
                view_batch: None,
                ..config.clone()
            },
            Some((&train, &test)),
            sizes,
            &mut tracker(&bar, epochs),
        )?;
        bar.finish();
        let reference = agreement(&plain.predictions, &truth);
        let mut rtas_views = Views::new(&config, sizes);
        let rtas = through_protocol(
            &config,
            &train,
            &test,
            &key,
            &format!("{model}: RTAS"),
            is_cnn.then_some(&mut rtas_views),
        )?;
        let fast_config = RunConfig {
            mode: Mode::RtasFast,
            ..config.clone()
        };
        let mut fast_views = Views::new(&fast_config, sizes);
        let fast = through_protocol(
            &fast_config,
            &train,
            &test,
            &key,
            &format!("{model}: RTAS-fast"),
            is_cnn.then_some(&mut fast_views),
        )?;
        let architecture = describe(&spec);
        models.push(ModelResults {
            model: model.into(),
            architecture,
            epochs,
            learning_rate: lr,
            chance: chance(&truth),
            plaintext_accuracy: reference,
            baseline_failed: at_chance(reference, chance(&truth), test.len()),
            rtas: figures(&rtas, &config, sizes, &truth, reference),
            rtas_fast: figures(&fast, &fast_config, sizes, &truth, reference),
        });
        if is_cnn {
            cnn_views = Some((rtas_views, fast_views));
        }
    }
    let (rtas_views, fast_views) = cnn_views.context("the CNN ran")?;
    let helper = attack_helper(&test, &rtas_views, &fast_views, 64)?;
    let results = RtasResults {
        command: command_line(&args),
        data: args.common.data.to_string(),
        shape: data.shape.to_string(),
        train_images: train.len(),
        test_images: test.len(),
        fixed_point_bits: args.frac_bits,
        quick,
        models,
        helper,
        paper: PaperFigures::TABLES,
        seconds: started.elapsed().as_secs_f64(),
    };
    write_outputs(&args.common.out, &results, report(&results), started)
}

/// The logistic regression's learning rate: 1 on the 64 pixels of the digits, scaled by 64/d
/// for d pixels (a linear model's stable step shrinks with ‖x‖², which grows with d; 0.5 on 784
/// pixels saturated the sigmoid and answered "not a 0" to every image; 0.5 on the digits trained
/// slowly).
pub fn logistic_lr(pixels: usize) -> f64 {
    (64.0 / pixels.max(1) as f64).min(1.0)
}

fn describe(spec: &NetworkSpec) -> String {
    use veil::schemes::rtas::LayerKind;
    spec.layers
        .iter()
        .map(|l| match l.kind {
            LayerKind::Dense => format!("dense {} {:?}", l.outputs, l.activation),
            LayerKind::Conv { kernel, stride } => {
                format!(
                    "conv {kernel}×{kernel}/{stride} ×{} {:?}",
                    l.outputs, l.activation
                )
            }
        })
        .collect::<Vec<_>>()
        .join(" → ")
}

fn command_line(args: &RtasArgs) -> String {
    let mut line = args.common.command_line("rtas");
    for (flag, v) in [
        ("--epochs", args.epochs),
        ("--logistic-epochs", args.logistic_epochs),
        ("--train", args.train),
        ("--test", args.test),
    ] {
        if let Some(v) = v {
            line += &format!(" {flag} {v}");
        }
    }
    if args.frac_bits != 16 {
        line += &format!(" --frac-bits {}", args.frac_bits);
    }
    line
}
