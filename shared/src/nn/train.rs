//! Training and evaluating a [`Classifier`] on an [`ImageDataset`], on any burn device.

use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;

use crate::data::ImageDataset;
use crate::nn::model::Classifier;

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
    /// The loss became NaN or infinite on finite inputs (the inputs are checked first): the
    /// learning rate is too high for this model and data.
    #[error(
        "the training loss became {loss} at epoch {epoch}, step {step} although every input is finite; lower the learning rate"
    )]
    NonFiniteLoss {
        /// The loss value.
        loss: f32,
        /// Epoch.
        epoch: usize,
        /// Step.
        step: usize,
    },
    /// Some training images hold NaN or infinite pixels: the data is at fault, not the
    /// training. (A flow that cannot encrypt an image gives a non-finite ciphertext.)
    #[error(
        "{bad} of {total} training images hold NaN or infinite values (the first is image {first}); \
         drop or repair them before training"
    )]
    NonFiniteInput {
        /// Images with a non-finite value.
        bad: usize,
        /// Images in the set.
        total: usize,
        /// The first one's index.
        first: usize,
    },
    /// The dataset and model disagree, or the dataset is empty.
    #[error("{0}")]
    Invalid(String),
}

/// Indices of the images of `data` that hold a NaN or infinite value.
pub fn non_finite_images(data: &ImageDataset) -> Vec<usize> {
    let len = data.shape.len().max(1);
    data.images
        .chunks_exact(len)
        .enumerate()
        .filter(|(_, px)| px.iter().any(|v| !v.is_finite()))
        .map(|(i, _)| i)
        .collect()
}

/// Where a training run stands: enough to resume it exactly (same shuffles, same optimizer
/// state), written by [`train_classifier_resumable`] at every epoch's end and when it is stopped.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainCheckpoint {
    /// Epochs completed.
    pub epochs_done: usize,
    /// Steps completed of the epoch after those (0 at an epoch boundary).
    pub step_in_epoch: usize,
    /// Running sums of the partial epoch: loss × images, correct predictions, images.
    pub partial: (f64, usize, usize),
    /// Adam's state (burnpack bytes of `ModuleOptimizer::into_bytes`).
    #[serde(skip)]
    pub optimizer: Vec<u8>,
}

/// The end of an epoch, handed to the `on_epoch` callback of [`train_classifier_resumable`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochReport {
    /// 1-based epoch just completed.
    pub epoch: usize,
    /// Mean training loss over the epoch.
    pub loss: f32,
    /// Training accuracy over the epoch.
    pub accuracy: f32,
}

/// What [`train_classifier_resumable`] returns: the model, where training stopped, and whether
/// it ran to the last epoch.
#[derive(Debug)]
pub struct Trained<M> {
    /// The model as training left it.
    pub model: M,
    /// The position reached (resume from it to continue).
    pub checkpoint: TrainCheckpoint,
    /// `true` if every epoch ran; `false` if a callback stopped training.
    pub finished: bool,
}

/// Trains `model` (whose parameters live on an autodiff device) with Adam and cross-entropy.
/// `on_step` sees every step and may stop training early.
pub fn train_classifier<M: Classifier>(
    model: M,
    data: &ImageDataset,
    options: TrainOptions,
    device: &Device,
    on_step: impl FnMut(&StepReport) -> Control,
) -> Result<M, TrainError> {
    train_classifier_resumable(model, data, options, device, None, on_step, |_, _, _| {
        Control::Continue
    })
    .map(|t| t.model)
}

/// [`train_classifier`] that can start from a checkpoint (`resume`: the weights in `model` must
/// be the checkpoint's) and hands one to `on_epoch` after every epoch, with the model, for
/// saving. The shuffle of epoch `e` and the dropout noise of each step depend only on the seed,
/// `e` and the step, so a run stopped anywhere and resumed takes the same steps as one that was
/// never stopped.
pub fn train_classifier_resumable<M: Classifier>(
    mut model: M,
    data: &ImageDataset,
    options: TrainOptions,
    device: &Device,
    resume: Option<&TrainCheckpoint>,
    mut on_step: impl FnMut(&StepReport) -> Control,
    mut on_epoch: impl FnMut(&EpochReport, &M, &TrainCheckpoint) -> Control,
) -> Result<Trained<M>, TrainError> {
    if data.is_empty() {
        return Err(TrainError::Invalid("the training set is empty".into()));
    }
    if options.batch_size == 0 || options.epochs == 0 {
        return Err(TrainError::Invalid(
            "epochs and batch size must be positive".into(),
        ));
    }
    let bad = non_finite_images(data);
    if let Some(&first) = bad.first() {
        return Err(TrainError::NonFiniteInput {
            bad: bad.len(),
            total: data.len(),
            first,
        });
    }
    let steps_per_epoch = data.len().div_ceil(options.batch_size);
    let mut optimizer = ClassifierStepper::optimizer();
    let (first_epoch, first_step, mut partial) = match resume {
        Some(c) => {
            if c.step_in_epoch > steps_per_epoch {
                return Err(TrainError::Invalid(format!(
                    "the checkpoint is at step {} of an epoch of {steps_per_epoch} steps: it \
                     belongs to another dataset or batch size",
                    c.step_in_epoch
                )));
            }
            optimizer = optimizer
                .from_bytes(burn::tensor::Bytes::from_bytes_vec(c.optimizer.clone()))
                .map_err(|e| {
                    TrainError::Invalid(format!(
                        "the checkpoint's optimizer state cannot be read: {e}"
                    ))
                })?;
            (c.epochs_done + 1, c.step_in_epoch, c.partial)
        }
        None => (1, 0, (0.0, 0, 0)),
    };
    let stepper = ClassifierStepper::new(options, data.len(), device);
    let checkpoint = |optimizer: &ModuleOptimizer, epochs_done, step_in_epoch, partial| {
        optimizer_bytes(optimizer).map(|optimizer| TrainCheckpoint {
            epochs_done,
            step_in_epoch,
            partial,
            optimizer,
        })
    };
    for epoch in first_epoch..=options.epochs {
        let shuffled = data.subset(&stepper.epoch_order(epoch));
        let start = if epoch == first_epoch { first_step } else { 0 };
        if start == 0 {
            partial = (0.0, 0, 0);
        }
        for step in start..steps_per_epoch {
            let range = stepper.batch_range(step);
            let batch = range.len();
            let images = shuffled.images_tensor(range.clone(), device);
            let targets = shuffled.labels_tensor(range, device);
            let (loss, hits) = stepper.forward(&model, images, targets, epoch, step);
            let hits = hits.into_scalar::<i64>() as usize;
            let loss_value = loss.clone().into_scalar::<f32>();
            if !loss_value.is_finite() {
                return Err(TrainError::NonFiniteLoss {
                    loss: loss_value,
                    epoch,
                    step: step + 1,
                });
            }
            model = stepper.step(&mut optimizer, model, loss);
            partial.0 += f64::from(loss_value) * batch as f64;
            partial.1 += hits;
            partial.2 += batch;
            let report = StepReport {
                epoch,
                step: step + 1,
                steps_per_epoch,
                loss: (partial.0 / partial.2 as f64) as f32,
                accuracy: partial.1 as f32 / partial.2 as f32,
            };
            if on_step(&report) == Control::Stop {
                let at = if step + 1 == steps_per_epoch {
                    checkpoint(&optimizer, epoch, 0, (0.0, 0, 0))?
                } else {
                    checkpoint(&optimizer, epoch - 1, step + 1, partial)?
                };
                return Ok(Trained {
                    model,
                    checkpoint: at,
                    finished: false,
                });
            }
        }
        let end = EpochReport {
            epoch,
            loss: (partial.0 / partial.2.max(1) as f64) as f32,
            accuracy: partial.1 as f32 / partial.2.max(1) as f32,
        };
        let saved = checkpoint(&optimizer, epoch, 0, (0.0, 0, 0))?;
        if on_epoch(&end, &model, &saved) == Control::Stop {
            return Ok(Trained {
                model,
                checkpoint: saved,
                finished: epoch == options.epochs,
            });
        }
        if epoch == options.epochs {
            return Ok(Trained {
                model,
                checkpoint: saved,
                finished: true,
            });
        }
    }
    // Resumed from a checkpoint that had already finished every epoch.
    Ok(Trained {
        model,
        checkpoint: checkpoint(&optimizer, options.epochs, 0, (0.0, 0, 0))?,
        finished: true,
    })
}

/// The pieces of one training step of [`train_classifier_resumable`], apart so that a caller
/// that must read values asynchronously (the browser on WebGPU) takes exactly the same steps: the
/// epoch's shuffle, the batch ranges, the forward pass with its dropout seed, and Adam's update.
/// Nothing here reads a tensor back.
pub struct ClassifierStepper {
    options: TrainOptions,
    len: usize,
    loss_fn: CrossEntropyLoss,
}

impl ClassifierStepper {
    /// A stepper for a training set of `len` images, with its loss on `device`.
    pub fn new(options: TrainOptions, len: usize, device: &Device) -> Self {
        Self {
            options,
            len,
            loss_fn: CrossEntropyLossConfig::new().init(device),
        }
    }

    /// A fresh Adam optimizer, as every training run starts with.
    pub fn optimizer() -> ModuleOptimizer {
        AdamConfig::new().init()
    }

    /// Steps per epoch.
    pub fn steps_per_epoch(&self) -> usize {
        self.len.div_ceil(self.options.batch_size.max(1))
    }

    /// The order of the images in 1-based `epoch`: a ChaCha20 shuffle that depends only on the
    /// seed and the epoch.
    pub fn epoch_order(&self, epoch: usize) -> Vec<usize> {
        let mut rng = ChaCha20Rng::seed_from_u64(
            self.options.seed ^ (epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        );
        let mut order: Vec<usize> = (0..self.len).collect();
        order.shuffle(&mut rng);
        order
    }

    /// The positions, in the epoch's order, of 0-based `step`'s batch.
    pub fn batch_range(&self, step: usize) -> std::ops::Range<usize> {
        let b = self.options.batch_size;
        step * b..((step + 1) * b).min(self.len)
    }

    /// The mean cross-entropy of a batch (`[1]`) and how many of its images the model gets
    /// right (`[1]`), after seeding the device's dropout noise for (`epoch`, `step`). Unread.
    pub fn forward<M: Classifier>(
        &self,
        model: &M,
        images: Tensor<4>,
        targets: Tensor<1, Int>,
        epoch: usize,
        step: usize,
    ) -> (Tensor<1>, Tensor<1, Int>) {
        images
            .device()
            .seed(step_seed(self.options.seed, epoch, step));
        let logits = model.forward(images);
        let loss = self.loss_fn.forward(logits.clone(), targets.clone());
        let predicted = logits.argmax(1).squeeze_dim::<1>(1);
        (loss, predicted.equal(targets).int().sum())
    }

    /// Adam's update of `model` from `loss` (from [`ClassifierStepper::forward`]).
    pub fn step<M: Classifier>(
        &self,
        optimizer: &mut ModuleOptimizer,
        model: M,
        loss: Tensor<1>,
    ) -> M {
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        optimizer.step(self.options.learning_rate, model, grads)
    }
}

/// The device seed of one step (dropout noise): SplitMix64 of (seed, epoch, step), so that
/// neighbouring steps draw unrelated noise whatever the backend's generator does with its seed.
fn step_seed(seed: u64, epoch: usize, step: usize) -> u64 {
    let mut z = seed
        .wrapping_add((epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .wrapping_add((step as u64).wrapping_mul(0xd1b5_4a32_d192_ed03));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn optimizer_bytes(optimizer: &ModuleOptimizer) -> Result<Vec<u8>, TrainError> {
    optimizer
        .into_bytes()
        .map(|b| b.to_vec())
        .map_err(|e| TrainError::Invalid(format!("cannot save the optimizer state: {e}")))
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

/// Top-1 and top-5 accuracy of score rows.
pub fn top1_top5(scores: &[f32], k: usize, labels: &[u32]) -> (f64, f64) {
    let (mut t1, mut t5) = (0usize, 0usize);
    for (row, &l) in scores.chunks_exact(k).zip(labels) {
        let mut order: Vec<usize> = (0..k).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        t1 += usize::from(order[0] == l as usize);
        t5 += usize::from(order.iter().take(5).any(|&c| c == l as usize));
    }
    let n = labels.len().max(1) as f64;
    (t1 as f64 / n, t5 as f64 / n)
}

/// The mean Shannon entropy, in bits, of probability rows of `k` values.
pub fn mean_entropy_bits(rows: &[f32], k: usize) -> f64 {
    let n = rows.len() / k;
    rows.chunks_exact(k)
        .map(|r| {
            -r.iter()
                .filter(|&&p| p > 0.0)
                .map(|&p| f64::from(p) * f64::from(p).log2())
                .sum::<f64>()
        })
        .sum::<f64>()
        / n.max(1) as f64
}

#[cfg(test)]
mod non_finite_tests {
    use super::*;
    use crate::data::ImageShape;
    use crate::nn::model::SmallCnnConfig;

    #[test]
    fn non_finite_training_images_are_named_not_blamed_on_the_learning_rate() {
        let shape = ImageShape::new(1, 8, 8);
        let mut images = vec![0.5f32; 4 * shape.len()];
        images[shape.len() + 3] = f32::NAN;
        images[3 * shape.len()] = f32::INFINITY;
        let data = ImageDataset::new(
            images,
            vec![0, 1, 0, 1],
            shape,
            vec!["a".into(), "b".into()],
        )
        .unwrap();
        assert_eq!(non_finite_images(&data), vec![1, 3]);
        let device = Device::flex().autodiff();
        let model = SmallCnnConfig::for_shape(shape, 2).init(&device);
        let options = TrainOptions {
            epochs: 1,
            batch_size: 2,
            learning_rate: 1e-3,
            seed: 0,
        };
        let err = train_classifier(model, &data, options, &device, |_| Control::Continue)
            .expect_err("refused");
        assert!(
            matches!(
                err,
                TrainError::NonFiniteInput {
                    bad: 2,
                    total: 4,
                    first: 1
                }
            ),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("2 of 4") && !msg.contains("learning rate"),
            "{msg}"
        );
    }
}
