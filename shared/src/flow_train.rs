//! Training a [`Glow`] by maximum likelihood (Glow §3, flow rotation §6), with the guards that
//! users of Glow ports keep asking for: learning-rate warm-up, gradient-norm clipping, the
//! zero-initialised last layer of every coupling (in [`crate::glow`]), and a clear error naming the
//! first layer whose output is NaN or infinite.

use burn::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;

use crate::data::ImageDataset;
use crate::glow::{Glow, Preprocess};
use crate::train::Control;

/// Hyper-parameters of [`train_flow`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FlowTrainOptions {
    /// Passes over the data.
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Adam's peak learning rate.
    pub learning_rate: f64,
    /// Steps of linear warm-up from 0 to the peak learning rate.
    pub warmup_steps: usize,
    /// Gradients are rescaled to at most this global L2 norm.
    pub max_grad_norm: f32,
    /// Seed of the shuffles.
    pub seed: u64,
}

impl Default for FlowTrainOptions {
    fn default() -> Self {
        Self {
            epochs: 30,
            batch_size: 64,
            learning_rate: 1e-3,
            warmup_steps: 200,
            max_grad_norm: 50.0,
            seed: 0,
        }
    }
}

/// Progress after a step.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct FlowStepReport {
    /// 1-based epoch.
    pub epoch: usize,
    /// Steps done in this epoch.
    pub step: usize,
    /// Steps per epoch.
    pub steps_per_epoch: usize,
    /// Mean training NLL in bits per dimension so far in this epoch.
    pub bits_per_dim: f32,
    /// The learning rate of this step.
    pub learning_rate: f64,
}

/// Why flow training failed.
#[derive(Debug, thiserror::Error)]
pub enum FlowTrainError {
    /// A layer produced NaN or infinity.
    #[error(
        "training diverged at epoch {epoch}, step {step}: {layer} produced NaN or infinite values; lower the learning rate, lengthen the warm-up or tighten gradient clipping"
    )]
    NonFinite {
        /// The first layer (`level 1, step 3, coupling`) whose output is not finite, or `the loss`.
        layer: String,
        /// Epoch.
        epoch: usize,
        /// Step.
        step: usize,
    },
    /// The data does not fit the flow.
    #[error("{0}")]
    Invalid(String),
}

/// Where a training run stands after an epoch: enough to resume it exactly.
#[derive(Debug, Clone)]
pub struct FlowCheckpoint {
    /// Epochs completed.
    pub epoch: usize,
    /// Optimizer steps taken (the warm-up position).
    pub global_step: usize,
    /// Adam's state (burnpack bytes of `ModuleOptimizer::into_bytes`).
    pub optimizer: Vec<u8>,
    /// Mean training bits/dim of the last epoch.
    pub bits_per_dim: f32,
}

/// Trains `glow` (on an autodiff device; initialise it with [`Glow::data_init`] first) on `data`.
pub fn train_flow(
    glow: Glow,
    data: &ImageDataset,
    pre: Preprocess,
    options: FlowTrainOptions,
    device: &Device,
    on_step: impl FnMut(&FlowStepReport) -> Control,
) -> Result<Glow, FlowTrainError> {
    train_flow_resumable(glow, data, pre, options, device, None, on_step, |_, _| {
        Control::Continue
    })
}

/// [`train_flow`] that starts from a checkpoint (`resume`: the weights in `glow` must be the
/// checkpoint's) and hands one to `on_epoch` after every epoch, with the flow, for saving. The
/// shuffle of epoch `e` depends only on the seed and `e`, so a resumed run takes the same steps as
/// an uninterrupted one.
#[allow(clippy::too_many_arguments)]
pub fn train_flow_resumable(
    mut glow: Glow,
    data: &ImageDataset,
    pre: Preprocess,
    options: FlowTrainOptions,
    device: &Device,
    resume: Option<&FlowCheckpoint>,
    mut on_step: impl FnMut(&FlowStepReport) -> Control,
    mut on_epoch: impl FnMut(&FlowCheckpoint, &Glow) -> Control,
) -> Result<Glow, FlowTrainError> {
    if data.is_empty() || options.batch_size == 0 || options.epochs == 0 {
        return Err(FlowTrainError::Invalid(
            "the data is empty, or epochs or batch size is zero".into(),
        ));
    }
    let dims = data.shape.len();
    let mut optimizer = AdamConfig::new()
        .with_grad_clipping(Some(GradientClippingConfig::Norm(options.max_grad_norm)))
        .init();
    let (first_epoch, mut global_step) = match resume {
        Some(c) => {
            optimizer = optimizer
                .from_bytes(burn::tensor::Bytes::from_bytes_vec(c.optimizer.clone()))
                .map_err(|e| {
                    FlowTrainError::Invalid(format!(
                        "the checkpoint's optimizer state cannot be read: {e}"
                    ))
                })?;
            (c.epoch + 1, c.global_step)
        }
        None => (1, 0),
    };
    let steps_per_epoch = data.len().div_ceil(options.batch_size);
    for epoch in first_epoch..=options.epochs {
        let mut rng = ChaCha20Rng::seed_from_u64(
            options.seed ^ (epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        );
        let mut order: Vec<usize> = (0..data.len()).collect();
        order.shuffle(&mut rng);
        let shuffled = data.subset(&order);
        let (mut sum, mut seen) = (0.0f64, 0usize);
        for step in 0..steps_per_epoch {
            global_step += 1;
            let range =
                step * options.batch_size..((step + 1) * options.batch_size).min(data.len());
            let batch = range.len();
            // The dequantisation noise of each step depends only on (seed, epoch, step), so that a
            // resumed run draws the same noise as an uninterrupted one.
            device.seed(options.seed ^ ((epoch as u64) << 32) ^ step as u64);
            let (s, logdet_pre) = pre.to_logit(shuffled.images_tensor(range, device), true);
            let out = glow.forward(s.clone());
            let loss = pre.bits_per_dim(&out, logdet_pre, dims).mean();
            let value = loss.clone().into_scalar::<f32>();
            if !value.is_finite() {
                let layer = glow
                    .first_non_finite_layer(s.inner())
                    .unwrap_or_else(|| "the loss".into());
                return Err(FlowTrainError::NonFinite {
                    layer,
                    epoch,
                    step: step + 1,
                });
            }
            let lr = options.learning_rate
                * (global_step as f64 / options.warmup_steps.max(1) as f64).min(1.0);
            let grads = GradientsParams::from_grads(loss.backward(), &glow);
            glow = optimizer.step(lr, glow, grads);
            sum += f64::from(value) * batch as f64;
            seen += batch;
            let report = FlowStepReport {
                epoch,
                step: step + 1,
                steps_per_epoch,
                bits_per_dim: (sum / seen as f64) as f32,
                learning_rate: lr,
            };
            if on_step(&report) == Control::Stop {
                return Ok(glow);
            }
        }
        let checkpoint = FlowCheckpoint {
            epoch,
            global_step,
            optimizer: optimizer
                .into_bytes()
                .map_err(|e| {
                    FlowTrainError::Invalid(format!("cannot save the optimizer state: {e}"))
                })?
                .to_vec(),
            bits_per_dim: (sum / seen.max(1) as f64) as f32,
        };
        if on_epoch(&checkpoint, &glow) == Control::Stop {
            return Ok(glow);
        }
    }
    Ok(glow)
}

/// Mean NLL in bits per dimension of `data` (uniform dequantisation noise from the device's RNG).
pub fn evaluate_bits_per_dim(
    glow: &Glow,
    data: &ImageDataset,
    pre: Preprocess,
    device: &Device,
) -> f32 {
    let dims = data.shape.len();
    let (mut sum, mut n) = (0.0f64, 0usize);
    for start in (0..data.len()).step_by(256) {
        let range = start..(start + 256).min(data.len());
        let count = range.len();
        let (s, ld) = pre.to_logit(data.images_tensor(range, device), true);
        let bpd = pre
            .bits_per_dim(&glow.forward(s), ld, dims)
            .sum()
            .into_scalar::<f32>();
        sum += f64::from(bpd);
        n += count;
    }
    (sum / n.max(1) as f64) as f32
}
