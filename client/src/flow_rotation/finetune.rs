//! Fine-tuning the served flows on the owner's own images, in the page.
//!
//! Flow rotation's Theorem 1 ("Secure Data Sharing With Flow Model", Wu, Du, Yuan, §4) bounds what
//! an adversary learns about the key by the total-variation distance between N(0, I) and the
//! flow's latent distribution *of the data being encrypted*; the paper's Table 1 (LSUN(1), a flow
//! trained on the data to encrypt, against LSUN(2), one trained on other data) shows the effect.
//! A served flow was trained on public data; fine-tuning it on the owner's images brings their
//! latents closer to Gaussian. A fine-tuned flow has seen private images, so it never leaves the
//! browser: the page keeps it in IndexedDB and the encrypt and classify pages load it from there.
//!
//! The run is driven from JavaScript a few steps at a time ([`FineTune::run`]), so the worker can
//! report progress and take a cancel between calls. Training runs on the session's device
//! (WebGPU or flex) through an autodiff wrapper; every value is read back asynchronously (WebGPU
//! cannot read synchronously), and the trained weights come back to the CPU through
//! [`params_to_flex`](crate::device::params_to_flex), because burn 0.22 has no asynchronous record export.

use std::collections::VecDeque;

use veil::burn::module::Module;
use veil::burn::tensor::Device;
use veil::data::{ImageDataset, ImageShape};
use veil::flow::gaussianity::{GaussianityReport, probe};
use veil::flow::glow::{Glow, GlowConfig, Preprocess};
use veil::flow::train::{
    FlowStepper, FlowTrainOptions, bits_per_dim_with_noise, epoch_order, flow_latents,
    step_noise_seed,
};
use veil::schemes::flow_rotation::{FlowEncryptor, FlowManifest};

use crate::device::{params_to_flex, read_vec};
use crate::error::ClientError;

/// Held-out images per evaluation batch.
const EVAL_CHUNK: usize = 256;
/// Random directions of the Gaussianity probe (as `veil flow train` uses).
const PROBE_DIRECTIONS: usize = 128;

/// Which flows to fine-tune.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FineTuneTarget {
    /// Every class's flow on that class's images, and the class-agnostic flow on all of them.
    All,
    /// Only the class-agnostic flow (route b), on all the images.
    Agnostic,
    /// One class's flow, on that class's images.
    Class(u32),
}

/// What the page asks for.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FineTuneOptions {
    /// Which flows.
    pub target: FineTuneTarget,
    /// Adam steps per flow.
    pub steps: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Peak learning rate (lower than training from scratch: the flow is already good).
    pub learning_rate: f64,
    /// Steps of linear warm-up.
    pub warmup_steps: usize,
    /// Fraction of each flow's images kept aside to measure it before and after (0 measures on
    /// the training images themselves).
    pub held_out: f64,
    /// Seed of the split, the batches and the dequantisation noise.
    pub seed: u64,
}

impl Default for FineTuneOptions {
    fn default() -> Self {
        Self {
            target: FineTuneTarget::All,
            steps: 100,
            batch_size: 32,
            learning_rate: 2e-4,
            warmup_steps: 10,
            held_out: 0.2,
            seed: 0,
        }
    }
}

/// Fewest images a flow needs to be fine-tuned (and measured).
pub const MIN_IMAGES: usize = 5;

/// Held-out bits/dim and Gaussianity of one flow.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FlowQuality {
    /// Mean NLL of the held-out images in bits per dimension.
    pub bits_per_dim: f32,
    /// The Gaussianity probe of their latents.
    pub gaussianity: GaussianityReport,
    /// The fraction of them that encrypt under the loaded key and decrypt back exactly (`None`
    /// without a key). A flow that does not fit the data maps it to atypical latents, whose
    /// rotations the inverse flow can overflow on: such images cannot be encrypted.
    pub encryptable: Option<f32>,
}

/// One flow's outcome.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FlowFineTuneReport {
    /// `class-<k>` or `agnostic`.
    pub name: String,
    /// Images trained on.
    pub train_images: usize,
    /// Images measured on (the training images when nothing was held out).
    pub held_out_images: usize,
    /// Whether the measurements are on held-out images.
    pub held_out: bool,
    /// The served flow.
    pub before: FlowQuality,
    /// The fine-tuned flow.
    pub after: FlowQuality,
    /// Mean training bits/dim over the last steps.
    pub train_bits_per_dim: f32,
}

/// What a run will do, known before the first step.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FineTunePlan {
    /// The flows to fine-tune, in order, with their image counts.
    pub flows: Vec<PlannedFlow>,
    /// Flows left as served, and why.
    pub skipped: Vec<String>,
    /// Steps over all flows.
    pub total_steps: usize,
}

/// One flow of a [`FineTunePlan`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PlannedFlow {
    /// `class-<k>` or `agnostic`.
    pub name: String,
    /// Images trained on.
    pub train_images: usize,
    /// Images measured on.
    pub held_out_images: usize,
}

/// Where a run stands after a [`FineTune::run`] call.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FineTuneProgress {
    /// The flow being trained (or the last one, when finished).
    pub flow: String,
    /// Its position in the plan (0-based).
    pub flow_index: usize,
    /// Flows in the plan.
    pub flows: usize,
    /// Steps done on this flow.
    pub step: usize,
    /// Steps per flow.
    pub steps: usize,
    /// Steps done over all flows.
    pub done_steps: usize,
    /// Steps over all flows.
    pub total_steps: usize,
    /// Mean training bits/dim of this flow over its last steps.
    pub bits_per_dim: f32,
    /// Whether every flow is done.
    pub finished: bool,
    /// The reports of the flows done so far.
    pub reports: Vec<FlowFineTuneReport>,
}

/// Which flow of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Class `k`'s flow.
    Class(usize),
    /// The class-agnostic flow.
    Agnostic,
}

impl Slot {
    /// The seed of this flow's batches and noise in a run seeded with `seed`: each flow's differ
    /// from the others'. With it, fine-tuning one flow takes exactly the steps of
    /// [`veil::flow::train::train_flow`] over whole epochs of the same images.
    pub fn seed(self, seed: u64) -> u64 {
        seed ^ match self {
            Slot::Class(k) => (k as u64 + 1).wrapping_mul(0xa076_1d64_78bd_642f),
            Slot::Agnostic => 0xe703_7ed1_a0b4_28db,
        }
    }

    /// The flow's name in a manifest.
    pub fn name(self) -> String {
        match self {
            Slot::Class(k) => format!("class-{k}"),
            Slot::Agnostic => "agnostic".into(),
        }
    }
}

struct Job {
    slot: Slot,
    train: ImageDataset,
    held: ImageDataset,
    held_out: bool,
}

struct Running {
    glow: Glow,
    /// The served flow on the CPU: the base the trained parameters are copied onto.
    served: Glow,
    stepper: FlowStepper,
    step: usize,
    before: FlowQuality,
    recent: VecDeque<f32>,
}

/// A fine-tuning run in progress. Plain Rust; the session holds at most one.
pub struct FineTune {
    options: FineTuneOptions,
    pre: Preprocess,
    config: GlowConfig,
    plan: FineTunePlan,
    jobs: Vec<Job>,
    current: usize,
    running: Option<Running>,
    reports: Vec<FlowFineTuneReport>,
    /// The fine-tuned weights (burnpack bytes) of the finished flows.
    tuned: Vec<(Slot, Vec<u8>)>,
}

impl FineTune {
    /// Plans a run over `pixels` (`[B, C, H, W]` of the flows' shape) with `labels`, for the
    /// flows of `manifest`; `has_agnostic` says whether the family has a class-agnostic flow.
    pub fn plan(
        pixels: Vec<f32>,
        labels: Vec<u32>,
        manifest: &FlowManifest,
        has_agnostic: bool,
        options: FineTuneOptions,
    ) -> Result<Self, ClientError> {
        let (config, pre, classes) = (
            manifest.glow.clone(),
            manifest.preprocess,
            &manifest.classes,
        );
        let shape = ImageShape::new(config.channels, config.height, config.width);
        if options.steps == 0 || options.batch_size == 0 {
            return Err(ClientError::BadInput(
                "steps and batch size must be at least 1".into(),
            ));
        }
        if !(options.learning_rate.is_finite() && options.learning_rate > 0.0) {
            return Err(ClientError::BadInput(
                "the learning rate must be a positive number".into(),
            ));
        }
        if !(0.0..0.9).contains(&options.held_out) {
            return Err(ClientError::BadInput(
                "the held-out fraction must be in [0, 0.9)".into(),
            ));
        }
        let data = ImageDataset::new(pixels, labels, shape, classes.to_vec())
            .map_err(|e| ClientError::BadInput(e.to_string()))?;
        // One stratified split for every flow: a class flow and the agnostic flow never train
        // on an image the other holds out.
        let (train, held) = data.split(options.held_out, options.seed);
        let slots: Vec<Slot> = match options.target {
            FineTuneTarget::All => (0..classes.len())
                .map(Slot::Class)
                .chain(has_agnostic.then_some(Slot::Agnostic))
                .collect(),
            FineTuneTarget::Agnostic if !has_agnostic => {
                return Err(ClientError::BadInput(
                    "these flows have no class-agnostic flow".into(),
                ));
            }
            FineTuneTarget::Agnostic => vec![Slot::Agnostic],
            FineTuneTarget::Class(k) if k as usize >= classes.len() => {
                return Err(ClientError::BadInput(format!(
                    "class {k} is not one of the flows' {} classes",
                    classes.len()
                )));
            }
            FineTuneTarget::Class(k) => vec![Slot::Class(k as usize)],
        };
        let (mut jobs, mut skipped) = (Vec::new(), Vec::new());
        for slot in slots {
            let pick = |d: &ImageDataset| match slot {
                Slot::Agnostic => d.clone(),
                Slot::Class(k) => d.subset(
                    &(0..d.len())
                        .filter(|&i| d.labels[i] as usize == k)
                        .collect::<Vec<_>>(),
                ),
            };
            let (t, h) = (pick(&train), pick(&held));
            if t.len() + h.len() < MIN_IMAGES || t.is_empty() {
                let what = match slot {
                    Slot::Class(k) => format!("class {}", classes[k]),
                    Slot::Agnostic => "the class-agnostic flow".into(),
                };
                skipped.push(format!(
                    "{what}: {} images (fine-tuning needs at least {MIN_IMAGES})",
                    t.len() + h.len()
                ));
                continue;
            }
            let held_out = !h.is_empty();
            jobs.push(Job {
                slot,
                held: if held_out { h } else { t.clone() },
                train: t,
                held_out,
            });
        }
        if jobs.is_empty() {
            return Err(ClientError::BadInput(format!(
                "no flow has enough images to fine-tune: {}",
                skipped.join("; ")
            )));
        }
        let plan = FineTunePlan {
            flows: jobs
                .iter()
                .map(|j| PlannedFlow {
                    name: j.slot.name(),
                    train_images: j.train.len(),
                    held_out_images: j.held.len(),
                })
                .collect(),
            skipped,
            total_steps: jobs.len() * options.steps,
        };
        Ok(Self {
            options,
            pre,
            config,
            plan,
            jobs,
            current: 0,
            running: None,
            reports: Vec::new(),
            tuned: Vec::new(),
        })
    }

    /// The plan.
    pub fn plan_info(&self) -> &FineTunePlan {
        &self.plan
    }

    /// Whether every flow is done.
    pub fn finished(&self) -> bool {
        self.current >= self.jobs.len()
    }

    /// The slot of the current job (the next flow to train), if any.
    pub fn current_slot(&self) -> Option<Slot> {
        self.jobs.get(self.current).map(|j| j.slot)
    }

    /// The fine-tuned flows (burnpack bytes), once finished.
    pub fn tuned(&self) -> &[(Slot, Vec<u8>)] {
        &self.tuned
    }

    /// The per-flow reports so far.
    pub fn reports(&self) -> &[FlowFineTuneReport] {
        &self.reports
    }

    /// Runs up to `max_steps` steps. `served` gives a flow's current weights (burnpack bytes) when
    /// a flow starts. On `device` (the session's; an autodiff wrapper is made of it).
    pub async fn run(
        &mut self,
        max_steps: usize,
        served: impl Fn(Slot) -> Result<Vec<u8>, ClientError>,
        encryptor: impl Fn(Slot) -> Option<FlowEncryptor>,
        device: &Device,
        backend: &'static str,
    ) -> Result<FineTuneProgress, ClientError> {
        let mut budget = max_steps.max(1);
        while budget > 0 && !self.finished() {
            if self.running.is_none() {
                self.start_job(&served, &encryptor, device, backend).await?;
            }
            let opts = self.options;
            let job = &self.jobs[self.current];
            let running = self.running.as_mut().expect("started above");
            let n = job.train.len();
            let per_epoch = n.div_ceil(opts.batch_size);
            let epoch = running.step / per_epoch + 1;
            let within = running.step % per_epoch;
            let order = epoch_order(n, job.slot.seed(opts.seed), epoch);
            let range = within * opts.batch_size..((within + 1) * opts.batch_size).min(n);
            let batch = job.train.subset(&order[range]);
            let x = batch.images_tensor(0..batch.len(), &device.clone().autodiff());
            let loss = running.stepper.batch(
                &running.glow,
                x,
                step_noise_seed(job.slot.seed(opts.seed), epoch, within),
            );
            let value = read_vec(loss.loss.clone(), backend).await?[0];
            if !value.is_finite() {
                let (name, step) = (job.slot.name(), running.step + 1);
                self.running = None;
                return Err(ClientError::BadInput(format!(
                    "fine-tuning flow {name} diverged at step {step}: its loss is not finite; lower the learning rate"
                )));
            }
            let glow = running.glow.clone();
            (running.glow, _) = running.stepper.step(glow, loss);
            running.step += 1;
            running.recent.push_back(value);
            if running.recent.len() > 20 {
                running.recent.pop_front();
            }
            budget -= 1;
            if running.step >= opts.steps {
                self.finish_job(&encryptor, device, backend).await?;
            }
        }
        Ok(self.progress())
    }

    fn progress(&self) -> FineTuneProgress {
        let idx = self.current.min(self.jobs.len() - 1);
        let (step, bpd) = match &self.running {
            Some(r) => (r.step, mean(&r.recent)),
            None if self.finished() => (
                self.options.steps,
                self.reports
                    .last()
                    .map_or(f32::NAN, |r| r.train_bits_per_dim),
            ),
            None => (0, f32::NAN),
        };
        FineTuneProgress {
            flow: self.jobs[idx].slot.name(),
            flow_index: idx,
            flows: self.jobs.len(),
            step,
            steps: self.options.steps,
            done_steps: self.current.min(self.jobs.len()) * self.options.steps
                + if self.finished() { 0 } else { step },
            total_steps: self.plan.total_steps,
            bits_per_dim: bpd,
            finished: self.finished(),
            reports: self.reports.clone(),
        }
    }

    async fn start_job(
        &mut self,
        served: &impl Fn(Slot) -> Result<Vec<u8>, ClientError>,
        encryptor: &impl Fn(Slot) -> Option<FlowEncryptor>,
        device: &Device,
        backend: &'static str,
    ) -> Result<(), ClientError> {
        let job = &self.jobs[self.current];
        let bytes = served(job.slot)?;
        let eval = self.config.load(&bytes, device)?;
        let enc = encryptor(job.slot);
        let before = self
            .quality(&eval, &job.held, enc.as_ref(), device, backend)
            .await?;
        let glow = self.config.load(&bytes, &device.clone().autodiff())?;
        let train_opts = FlowTrainOptions {
            epochs: 1,
            batch_size: self.options.batch_size,
            learning_rate: self.options.learning_rate,
            warmup_steps: self.options.warmup_steps,
            max_grad_norm: FlowTrainOptions::default().max_grad_norm,
            seed: self.options.seed,
        };
        self.running = Some(Running {
            glow,
            served: self.config.load(&bytes, &Device::flex())?,
            stepper: FlowStepper::new(train_opts, self.pre),
            step: 0,
            before,
            recent: VecDeque::new(),
        });
        Ok(())
    }

    async fn finish_job(
        &mut self,
        encryptor: &impl Fn(Slot) -> Option<FlowEncryptor>,
        device: &Device,
        backend: &'static str,
    ) -> Result<(), ClientError> {
        let running = self.running.take().expect("a job is running");
        let job = &self.jobs[self.current];
        let trained = running.glow.valid();
        let enc = encryptor(job.slot).map(|e| e.with_glow(trained.clone()));
        let after = self
            .quality(&trained, &job.held, enc.as_ref(), device, backend)
            .await?;
        let bytes = params_to_flex(&trained, running.served, backend)
            .await?
            .to_bytes()?;
        self.reports.push(FlowFineTuneReport {
            name: job.slot.name(),
            train_images: job.train.len(),
            held_out_images: job.held.len(),
            held_out: job.held_out,
            before: running.before,
            after,
            train_bits_per_dim: mean(&running.recent),
        });
        self.tuned.push((job.slot, bytes));
        self.current += 1;
        Ok(())
    }

    /// Held-out bits/dim (with fixed dequantisation noise), the Gaussianity probe and, with `enc`
    /// (the key's rotation and this flow), the encryptable fraction of `glow` on `data`.
    async fn quality(
        &self,
        glow: &Glow,
        data: &ImageDataset,
        enc: Option<&FlowEncryptor>,
        device: &Device,
        backend: &'static str,
    ) -> Result<FlowQuality, ClientError> {
        let (pre, seed) = (self.pre, self.options.seed);
        let (mut sum, mut latents, mut dims, mut ok) = (0.0f64, Vec::new(), 0, 0usize);
        let len = data.shape.len();
        for (i, start) in (0..data.len()).step_by(EVAL_CHUNK).enumerate() {
            let range = start..(start + EVAL_CHUNK).min(data.len());
            let x = data.images_tensor(range, device);
            let bpd = bits_per_dim_with_noise(glow, x.clone(), pre, seed ^ i as u64);
            sum += read_vec(bpd, backend)
                .await?
                .iter()
                .map(|&v| f64::from(v))
                .sum::<f64>();
            if let Some(enc) = enc {
                // Round trip, not just finiteness: WGSL leaves overflow implementation-defined,
                // so on a GPU an overflowing inverse flow can give finite garbage.
                let back = read_vec(enc.decrypt_quantised(enc.encrypt(x.clone())), backend).await?;
                let originals = &data.images[start * len..start * len + back.len()];
                ok += back
                    .chunks(len)
                    .zip(originals.chunks(len))
                    .filter(|(b, o)| b.iter().zip(*o).all(|(b, o)| (b - o).abs() < 1e-4))
                    .count();
            }
            let z = flow_latents(glow, x, pre);
            dims = z.dims()[1];
            latents.extend(read_vec(z, backend).await?);
        }
        Ok(FlowQuality {
            bits_per_dim: (sum / data.len().max(1) as f64) as f32,
            gaussianity: probe(&latents, dims, PROBE_DIRECTIONS, seed),
            encryptable: enc.map(|_| ok as f32 / data.len().max(1) as f32),
        })
    }
}

fn mean(v: &VecDeque<f32>) -> f32 {
    if v.is_empty() {
        return f32::NAN;
    }
    v.iter().sum::<f32>() / v.len() as f32
}
