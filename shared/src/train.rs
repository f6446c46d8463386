//! Training and evaluating a [`Classifier`] on an [`ImageDataset`], on any burn device.

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;

use crate::data::ImageDataset;
use crate::model::Classifier;

/// Hyper-parameters of [`train_classifier`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainOptions {
    /// Passes over the training set.
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Adam's learning rate.
    pub learning_rate: f64,
    /// Seed of the per-epoch shuffles.
    pub seed: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            epochs: 20,
            batch_size: 64,
            learning_rate: 2e-3,
            seed: 0,
        }
    }
}

/// Progress of a training run, reported after every step.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct StepReport {
    /// 1-based epoch.
    pub epoch: usize,
    /// Steps done in this epoch.
    pub step: usize,
    /// Steps per epoch.
    pub steps_per_epoch: usize,
    /// Mean training loss so far in this epoch.
    pub loss: f32,
    /// Training accuracy so far in this epoch.
    pub accuracy: f32,
}

/// What the caller wants after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Keep training.
    Continue,
    /// Stop now and return the model as it is.
    Stop,
}

/// Why training failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The loss became NaN or infinite (learning rate too high, or bad data).
    #[error(
        "the training loss became {loss} at epoch {epoch}, step {step}; lower the learning rate or check the data for NaN"
    )]
    NonFiniteLoss {
        /// The loss value.
        loss: f32,
        /// Epoch.
        epoch: usize,
        /// Step.
        step: usize,
    },
    /// The dataset and model disagree, or the dataset is empty.
    #[error("{0}")]
    Invalid(String),
}

/// Trains `model` (whose parameters live on an autodiff device) with Adam and cross-entropy.
/// `on_step` sees every step and may stop training early.
pub fn train_classifier<M: Classifier>(
    mut model: M,
    data: &ImageDataset,
    options: TrainOptions,
    device: &Device,
    mut on_step: impl FnMut(&StepReport) -> Control,
) -> Result<M, TrainError> {
    if data.is_empty() {
        return Err(TrainError::Invalid("the training set is empty".into()));
    }
    if options.batch_size == 0 || options.epochs == 0 {
        return Err(TrainError::Invalid(
            "epochs and batch size must be positive".into(),
        ));
    }
    let mut optimizer = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let mut rng = ChaCha20Rng::seed_from_u64(options.seed);
    let steps_per_epoch = data.len().div_ceil(options.batch_size);
    let mut order: Vec<usize> = (0..data.len()).collect();
    for epoch in 1..=options.epochs {
        order.shuffle(&mut rng);
        let shuffled = data.subset(&order);
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        for step in 0..steps_per_epoch {
            let range =
                step * options.batch_size..((step + 1) * options.batch_size).min(data.len());
            let batch = range.len();
            let images = shuffled.images_tensor(range.clone(), device);
            let targets = shuffled.labels_tensor(range, device);
            let logits = model.forward(images);
            let loss = loss_fn.forward(logits.clone(), targets.clone());
            let predicted = logits.argmax(1).squeeze_dim::<1>(1);
            let hits = predicted.equal(targets).int().sum().into_scalar::<i64>() as usize;
            let loss_value = loss.clone().into_scalar::<f32>();
            if !loss_value.is_finite() {
                return Err(TrainError::NonFiniteLoss {
                    loss: loss_value,
                    epoch,
                    step: step + 1,
                });
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(options.learning_rate, model, grads);
            loss_sum += f64::from(loss_value) * batch as f64;
            correct += hits;
            seen += batch;
            let report = StepReport {
                epoch,
                step: step + 1,
                steps_per_epoch,
                loss: (loss_sum / seen as f64) as f32,
                accuracy: correct as f32 / seen as f32,
            };
            if on_step(&report) == Control::Stop {
                return Ok(model);
            }
        }
    }
    Ok(model)
}

/// Logits of every image, in batches, as a row-major `[N, K]` vector (synchronous read: for
/// native devices; the browser reads asynchronously).
pub fn predict_logits<M: Classifier>(model: &M, data: &ImageDataset, device: &Device) -> Vec<f32> {
    let model = model.valid();
    let mut out = Vec::new();
    for start in (0..data.len()).step_by(256) {
        let range = start..(start + 256).min(data.len());
        let logits = model.forward(data.images_tensor(range, device));
        out.extend(logits.into_data().iter::<f32>());
    }
    out
}

/// The index of the largest value of each row of a row-major `[N, K]` matrix.
pub fn argmax_rows(values: &[f32], k: usize) -> Vec<u32> {
    values
        .chunks_exact(k)
        .map(|row| {
            let mut best = 0;
            for (i, v) in row.iter().enumerate() {
                if *v > row[best] {
                    best = i;
                }
            }
            best as u32
        })
        .collect()
}

/// Top-1 accuracy of `model` on `data`.
pub fn accuracy<M: Classifier>(model: &M, data: &ImageDataset, device: &Device) -> f32 {
    let logits = predict_logits(model, data, device);
    let predicted = argmax_rows(&logits, data.num_classes());
    let hits = predicted
        .iter()
        .zip(&data.labels)
        .filter(|(p, l)| p == l)
        .count();
    hits as f32 / data.len().max(1) as f32
}
