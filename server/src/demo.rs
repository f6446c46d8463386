//! `veil train-demo`: trains the demo CNN on the embedded UCI digits.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::Device;
use indicatif::{ProgressBar, ProgressStyle};
use veil::burn;
use veil::data::digits;
use veil::model::{ModelCard, SmallCnnConfig};
use veil::train::{Control, TrainOptions, accuracy, predict_logits, train_classifier};

/// Options of `veil train-demo`.
#[derive(clap::Args)]
pub struct TrainDemoArgs {
    /// Where to write `digits-cnn.bpk` and `digits-cnn.json`.
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
    /// Refuse to write the model if its test accuracy is below this.
    #[arg(long, default_value_t = 0.95)]
    min_accuracy: f32,
}

fn default_out() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/models")
}

/// The split every host uses for the demo: 20 % test, seed 7.
pub const SPLIT: (f64, u64) = (0.2, 7);
const REFERENCE_IMAGES: usize = 16;

pub fn train_demo(args: TrainDemoArgs) -> Result<()> {
    let data = digits();
    let (train, test) = data.split(SPLIT.0, SPLIT.1);
    eprintln!(
        "UCI digits: {} training and {} test images of {}",
        train.len(),
        test.len(),
        data.shape
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
    eprintln!(
        "trained in {:.1} s; test accuracy {:.2} %",
        started.elapsed().as_secs_f64(),
        100.0 * test_accuracy
    );
    if test_accuracy < args.min_accuracy {
        bail!(
            "test accuracy {test_accuracy:.4} is below --min-accuracy {}; not writing the model",
            args.min_accuracy
        );
    }
    let reference_indices: Vec<usize> = (0..REFERENCE_IMAGES.min(test.len())).collect();
    let reference = test.subset(&reference_indices);
    let reference_logits = predict_logits(&model, &reference, &eval_device);
    let card = ModelCard {
        name: "digits-cnn".into(),
        config,
        classes: data.class_names.clone(),
        dataset: "uci-digits".into(),
        split: SPLIT,
        train: options,
        test_accuracy,
        reference_indices,
        reference_logits,
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let weights = model.to_bytes()?;
    let weights_path = args.out.join("digits-cnn.bpk");
    let card_path = args.out.join("digits-cnn.json");
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
