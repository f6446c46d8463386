//! Training a [`Glow`] by maximum likelihood (Glow §3, flow rotation §6), with the guards that
//! users of Glow ports keep asking for: learning-rate warm-up, gradient-norm clipping, the
//! zero-initialised last layer of every coupling (in [`crate::flow::glow`]), and a clear error naming the
//! first layer whose output is NaN or infinite.

use burn::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;

use crate::data::ImageDataset;
use crate::flow::glow::{Glow, Preprocess, dequantization_noise};
use crate::nn::train::Control;

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
    let mut stepper = match resume {
        Some(c) => FlowStepper::resume(options, pre, c)?,
        None => FlowStepper::new(options, pre),
    };
    let first_epoch = resume.map_or(1, |c| c.epoch + 1);
    let steps_per_epoch = data.len().div_ceil(options.batch_size);
    for epoch in first_epoch..=options.epochs {
        let shuffled = data.subset(&epoch_order(data.len(), options.seed, epoch));
        let (mut sum, mut seen) = (0.0f64, 0usize);
        for step in 0..steps_per_epoch {
            let range =
                step * options.batch_size..((step + 1) * options.batch_size).min(data.len());
            let batch = range.len();
            let loss = stepper.batch(
                &glow,
                shuffled.images_tensor(range, device),
                step_noise_seed(options.seed, epoch, step),
            );
            let value = loss.loss.clone().into_scalar::<f32>();
            if !value.is_finite() {
                let layer = glow
                    .first_non_finite_layer(loss.logit.inner())
                    .unwrap_or_else(|| "the loss".into());
                return Err(FlowTrainError::NonFinite {
                    layer,
                    epoch,
                    step: step + 1,
                });
            }
            let lr;
            (glow, lr) = stepper.step(glow, loss);
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
            global_step: stepper.global_step(),
            optimizer: stepper.optimizer_bytes()?,
            bits_per_dim: (sum / seen.max(1) as f64) as f32,
        };
        if on_epoch(&checkpoint, &glow) == Control::Stop {
            return Ok(glow);
        }
    }
    Ok(glow)
}

/// The order of the images in epoch `epoch` (1-based) of a run seeded with `seed`: a shuffle that
/// depends only on the two, so that a resumed run, or the same run on another backend, takes the
/// same batches.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut rng =
        ChaCha20Rng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    order
}

/// The dequantisation-noise seed of step `step` (0-based) of epoch `epoch`.
pub fn step_noise_seed(seed: u64, epoch: usize, step: usize) -> u64 {
    seed ^ ((epoch as u64) << 32) ^ step as u64
}

/// A batch's loss before its step: read [`FlowBatchLoss::loss`], check that it is finite, then
/// hand the batch to [`FlowStepper::step`].
pub struct FlowBatchLoss {
    /// Mean NLL of the batch in bits per dimension (one value, computed lazily by the device).
    pub loss: Tensor<1>,
    /// The batch in logit space, for [`Glow::first_non_finite_layer`] when the loss is not
    /// finite.
    pub logit: Tensor<4>,
}

/// Maximum-likelihood training of a [`Glow`] one step at a time (Glow §3): Adam with linear
/// learning-rate warm-up and per-parameter gradient-norm clipping, and dequantisation noise drawn
/// on the host ([`dequantization_noise`]), so that a run takes the same steps on every backend.
///
/// The loop is the caller's: [`train_flow`] is the native one, which reads each loss
/// synchronously; the browser's reads it asynchronously (WebGPU cannot read synchronously) and
/// yields between steps.
pub struct FlowStepper {
    optimizer: ModuleOptimizer,
    options: FlowTrainOptions,
    pre: Preprocess,
    global_step: usize,
}

impl FlowStepper {
    /// A fresh optimizer.
    pub fn new(options: FlowTrainOptions, pre: Preprocess) -> Self {
        Self {
            optimizer: AdamConfig::new()
                .with_grad_clipping(Some(GradientClippingConfig::Norm(options.max_grad_norm)))
                .init(),
            options,
            pre,
            global_step: 0,
        }
    }

    /// The optimizer of a checkpoint.
    pub fn resume(
        options: FlowTrainOptions,
        pre: Preprocess,
        checkpoint: &FlowCheckpoint,
    ) -> Result<Self, FlowTrainError> {
        let mut stepper = Self::new(options, pre);
        stepper.optimizer = stepper
            .optimizer
            .from_bytes(burn::tensor::Bytes::from_bytes_vec(
                checkpoint.optimizer.clone(),
            ))
            .map_err(|e| {
                FlowTrainError::Invalid(format!(
                    "the checkpoint's optimizer state cannot be read: {e}"
                ))
            })?;
        stepper.global_step = checkpoint.global_step;
        Ok(stepper)
    }

    /// Steps taken.
    pub fn global_step(&self) -> usize {
        self.global_step
    }

    /// The loss of `glow` (on an autodiff device) on `pixels` (`[B, C, H, W]` in [0, 1]) with
    /// the dequantisation noise of `noise_seed`.
    pub fn batch(&self, glow: &Glow, pixels: Tensor<4>, noise_seed: u64) -> FlowBatchLoss {
        let [b, c, h, w] = pixels.dims();
        let u = dequantization_noise([b, c, h, w], noise_seed, &pixels.device());
        let (logit, logdet_pre) = self.pre.to_logit_with_noise(pixels, u);
        let out = glow.forward(logit.clone());
        let loss = self.pre.bits_per_dim(&out, logdet_pre, c * h * w).mean();
        FlowBatchLoss { loss, logit }
    }

    /// One Adam step on a batch's loss; returns the updated flow and the learning rate used.
    pub fn step(&mut self, glow: Glow, batch: FlowBatchLoss) -> (Glow, f64) {
        self.global_step += 1;
        let lr = self.options.learning_rate
            * (self.global_step as f64 / self.options.warmup_steps.max(1) as f64).min(1.0);
        let grads = GradientsParams::from_grads(batch.loss.backward(), &glow);
        (self.optimizer.step(lr, glow, grads), lr)
    }

    /// Adam's state as burnpack bytes (for a [`FlowCheckpoint`]).
    pub fn optimizer_bytes(&self) -> Result<Vec<u8>, FlowTrainError> {
        self.optimizer
            .into_bytes()
            .map(|b| b.to_vec())
            .map_err(|e| FlowTrainError::Invalid(format!("cannot save the optimizer state: {e}")))
    }
}

/// Per-image NLL in bits per dimension of `pixels` (`[B, C, H, W]` in [0, 1]) with the
/// dequantisation noise of `noise_seed`: the held-out figure of a flow, the same on every backend.
pub fn bits_per_dim_with_noise(
    glow: &Glow,
    pixels: Tensor<4>,
    pre: Preprocess,
    noise_seed: u64,
) -> Tensor<1> {
    let [b, c, h, w] = pixels.dims();
    let u = dequantization_noise([b, c, h, w], noise_seed, &pixels.device());
    let (logit, logdet_pre) = pre.to_logit_with_noise(pixels, u);
    pre.bits_per_dim(&glow.forward(logit), logdet_pre, c * h * w)
}

/// The flattened standardised latents `[B, D]` of `pixels` (no dequantisation noise): what the
/// Gaussianity probe ([`crate::flow::gaussianity::probe`]) reads.
pub fn flow_latents(glow: &Glow, pixels: Tensor<4>, pre: Preprocess) -> Tensor<2> {
    let (logit, _) = pre.to_logit(pixels, false);
    Glow::flatten_latents(glow.encode(logit))
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
