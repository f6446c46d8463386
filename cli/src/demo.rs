//! `veil train-demo`: trains the built-in models — the demo CNN on the embedded UCI digits
//! (`digits-cnn`, also the browser's model), and OWSD's cloud with more labels than the owner's
//! (`digits-shapes-cnn`: the digits and 32 synthetic shapes, 42 classes).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::Device;
use indicatif::{ProgressBar, ProgressStyle};
use veil::burn;
use veil::data::{DIGITS_LEVELS, digits};
use veil::nn::model::{HandwritingScore, ModelCard, SmallCnnConfig};
use veil::nn::train::{Control, TrainOptions, accuracy, predict_logits, train_classifier};
use veil_server::embedded::{CLOUD, CLOUD_DATASET, DEMO, cloud_data};

/// Options of `veil train-demo`.
#[derive(clap::Args)]
pub struct TrainDemoArgs {
    /// Which built-in model: `digits-cnn` (the demo classifier) or `digits-shapes-cnn` (OWSD's
    /// cloud with more labels: the digits and 32 synthetic 8×8 shapes).
    #[arg(long, default_value = DEMO, value_parser = [DEMO, CLOUD])]
    model: String,
    /// Where to write `<model>.bpk` and `<model>.json`.
    #[arg(long, default_value_os_t = default_out())]
    out: PathBuf,
    /// Training epochs.
    #[arg(long, default_value_t = 30)]
    epochs: usize,
    /// Batch size.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// Seed of the weight initialisation and of the shuffles.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Warped copies of each training image added to the training set (handwriting jitter:
    /// slant, shear, stretch, shift), so the model reads more ways of writing than the UCI
    /// writers' own; `digits-cnn` only. 0 trains on the digits alone.
    #[arg(long, default_value_t = 3)]
    augment: usize,
    /// Refuse to write the model if its test accuracy on the digits is below this.
    #[arg(long, default_value_t = 0.95)]
    min_accuracy: f32,
}

fn default_out() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/models")
}

/// The split every host uses for the demo: 20 % test, seed 7.
pub use veil::nn::model::demo::SPLIT;
const REFERENCE_IMAGES: usize = 16;
pub fn train_demo(args: TrainDemoArgs) -> Result<()> {
    let cloud = args.model == CLOUD;
    let data = if cloud { cloud_data()? } else { digits() };
    let (train, test) = data.split(SPLIT.0, SPLIT.1);
    let augment = if cloud { 0 } else { args.augment };
    let train = if augment > 0 {
        veil::data::augment::handwriting_jitter(&train, augment, DIGITS_LEVELS, args.seed)
    } else {
        train
    };
    eprintln!(
        "{}: {} training and {} test images of {} in {} classes",
        if cloud { CLOUD_DATASET } else { "UCI digits" },
        train.len(),
        test.len(),
        data.shape,
        data.num_classes()
    );
    let device = Device::flex().autodiff();
    device.seed(args.seed);
    let config = SmallCnnConfig::for_shape(data.shape, data.num_classes());
    let model = config.init(&device);
    let options = TrainOptions {
        epochs: args.epochs,
        batch_size: args.batch_size,
        learning_rate: args.lr,
        seed: args.seed,
    };
    let steps = options.epochs * train.len().div_ceil(options.batch_size);
    let bar = ProgressBar::new(steps as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} steps  {msg}  [{elapsed} < {eta}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let model = train_classifier(model, &train, options, &device, |r| {
        bar.inc(1);
        bar.set_message(format!(
            "epoch {}/{}  loss {:.4}  acc {:.3}",
            r.epoch, options.epochs, r.loss, r.accuracy
        ));
        Control::Continue
    })?;
    bar.finish();
    let eval_device = Device::flex();
    let model = model.valid().to_device(&eval_device);
    let test_accuracy = accuracy(&model, &test, &eval_device);
    // The digits among the test images: what the gate (and an OWSD owner with digits) cares about.
    let digit_idx: Vec<usize> = (0..test.len()).filter(|&i| test.labels[i] < 10).collect();
    let digits_accuracy = accuracy(&model, &test.subset(&digit_idx), &eval_device);
    eprintln!(
        "trained in {:.1} s; test accuracy {:.2} % ({} images), on the digits {:.2} % ({})",
        started.elapsed().as_secs_f64(),
        100.0 * test_accuracy,
        test.len(),
        100.0 * digits_accuracy,
        digit_idx.len()
    );
    if digits_accuracy < args.min_accuracy {
        bail!(
            "test accuracy on the digits {digits_accuracy:.4} is below --min-accuracy {}; not writing the model",
            args.min_accuracy
        );
    }
    let handwriting = (!cloud).then(|| HandwritingScore::measure(&model, &eval_device));
    if let Some(h) = &handwriting {
        eprintln!(
            "scripted handwriting ({} per class): {:.1} % read through the UCI normalisation, {:.1} % through a plain area average; per class {:?}",
            h.per_class,
            100.0 * h.accuracy,
            100.0 * h.area_averaged_accuracy,
            h.per_class_accuracy
        );
    }
    let reference_indices: Vec<usize> = (0..REFERENCE_IMAGES.min(test.len())).collect();
    let reference = test.subset(&reference_indices);
    let reference_logits = predict_logits(&model, &reference, &eval_device);
    let card = ModelCard {
        name: args.model.clone(),
        config,
        classes: data.class_names.clone(),
        dataset: if cloud { CLOUD_DATASET } else { "uci-digits" }.into(),
        split: SPLIT,
        train: options,
        test_accuracy,
        augment,
        handwriting,
        reference_indices,
        reference_logits,
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let weights = model.to_bytes()?;
    let weights_path = args.out.join(format!("{}.bpk", args.model));
    let card_path = args.out.join(format!("{}.json", args.model));
    std::fs::write(&weights_path, &weights)
        .with_context(|| format!("writing {}", weights_path.display()))?;
    std::fs::write(&card_path, serde_json::to_string_pretty(&card)? + "\n")
        .with_context(|| format!("writing {}", card_path.display()))?;
    eprintln!(
        "wrote {} ({} bytes) and {}",
        weights_path.display(),
        weights.len(),
        card_path.display()
    );
    Ok(())
}
