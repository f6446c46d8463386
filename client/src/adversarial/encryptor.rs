//! Adversarial data encryption in the page (Hu et al., §3.1 and §4.1): the owner's base model and
//! key stay here; targeted L2 PGD runs on the page's device (WebGPU through an autodiff wrapper,
//! or the CPU), every value is read back asynchronously, and only the encrypted images leave, in
//! a container that carries the key's fingerprint.
//!
//! The correspondence and the combined keys come from the owner's master key
//! ([`ClassCorrespondence::from_key`], [`CombinedKey::from_key`]), exactly as `veil experiment
//! adversarial` draws them, so the page's encryptions equal the native library's.

use veil::attacks::leakage::metrics::{psnr, ssim};
use veil::burn::module::Module;
use veil::burn::optim::ModuleOptimizer;
use veil::burn::tensor::{Device, Int, Tensor, TensorData};
use veil::crypto::keys::MasterKey;
use veil::data::container::{self, ContainerMeta, PixelType};
use veil::data::{ImageDataset, ImageShape, images_tensor};
use veil::nn::model::{Classifier, SmallCnn, SmallCnnConfig};
use veil::nn::train::{ClassifierStepper, TrainOptions, argmax_rows};
use veil::schemes::adversarial::{
    ClassCorrespondence, CombineMethod, CombinedKey, Goal, PgdConfig, merge, pgd_l2,
};
use veil::schemes::owsd::encoder::import_encoder;

use crate::device::{params_to_flex, read_vec};
use crate::error::ClientError;
use crate::flows::check_batch;

/// What the page asks for.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdversarialSetup {
    /// The images' shape (the base model's input).
    pub shape: ImageShape,
    /// Class names (the base model's outputs, in order).
    pub classes: Vec<String>,
    /// L2 radius of the perturbation.
    pub epsilon: f32,
    /// PGD steps per image.
    pub iterations: usize,
    /// `None`: the basic method; otherwise a combined one.
    #[serde(default)]
    pub method: Option<CombineMethod>,
}

/// Where an encryptor stands: what the page shows.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AdversarialStatus {
    /// The master key's fingerprint.
    pub fingerprint: String,
    /// The setup.
    pub setup: AdversarialSetup,
    /// The PGD settings in use.
    pub pgd: PgdConfig,
    /// Whether the base model is the shipped demo model.
    pub demo_base: bool,
}

/// An encrypted batch with its distortion.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AdversarialBatch {
    /// `[B, C, H, W]` in [0, 1].
    #[serde(skip)]
    pub pixels: Vec<f32>,
    /// PSNR of each image against its original, dB.
    pub psnr: Vec<f64>,
    /// SSIM of each image against its original.
    pub ssim: Vec<f64>,
}

/// The owner's encryptor: base model (on the page's device, under autodiff), key-drawn
/// correspondence, PGD settings.
#[derive(Clone)]
pub struct AdversarialEncryptor {
    fingerprint: String,
    setup: AdversarialSetup,
    pgd: PgdConfig,
    base: SmallCnn,
    demo_base: bool,
    basic: ClassCorrespondence,
    combined: Option<CombinedKey>,
}

impl AdversarialEncryptor {
    /// Sets up encryption under `master` with `base` (burnpack weights of a SmallCnn for the
    /// setup's shape and classes, as [`BaseTrainer`] makes them, or a safetensors SmallCnn with its
    /// classifier head, in burn's or PyTorch's layout; `None` takes `demo` — the shipped digits model and its bytes —
    /// when the setup is the digits'). Refuses a base model of the wrong shape, with NaN weights,
    /// or with non-finite outputs, and ε or iterations that are not positive.
    pub fn new(
        master: &MasterKey,
        setup: AdversarialSetup,
        base: Option<&[u8]>,
        demo: (&SmallCnnConfig, &[u8]),
        device: &Device,
    ) -> Result<Self, ClientError> {
        let k = setup.classes.len();
        let pgd = PgdConfig::with_epsilon(setup.epsilon, setup.iterations);
        pgd.validate()
            .map_err(|e| ClientError::BadInput(e.to_string()))?;
        if setup.iterations > 1000 {
            return Err(ClientError::BadInput(format!(
                "{} PGD steps per image is more than the 1000 the page allows",
                setup.iterations
            )));
        }
        if setup.shape.is_empty() || setup.shape.len() > 3 * 256 * 256 {
            return Err(ClientError::BadInput(format!(
                "cannot encrypt {} images",
                setup.shape
            )));
        }
        let basic = ClassCorrespondence::from_key(master, k)
            .map_err(|e| ClientError::BadInput(e.to_string()))?;
        let combined = setup
            .method
            .map(|m| CombinedKey::from_key(master, k, m))
            .transpose()
            .map_err(|e| ClientError::BadInput(e.to_string()))?;
        let config = SmallCnnConfig::for_shape(setup.shape, k);
        let ad = device.clone().autodiff();
        let (base, demo_base) = match base {
            Some(bytes) if is_safetensors(bytes) => (import_base(bytes, &setup, &ad)?, false),
            Some(bytes) => (
                config.load(bytes, &ad).map_err(|e| {
                    ClientError::BadInput(format!(
                        "the base model is not a SmallCnn for {} images and {k} classes: {e}",
                        setup.shape
                    ))
                })?,
                false,
            ),
            None if demo.0.input_shape() == setup.shape && demo.0.num_classes == k => {
                (demo.0.load(demo.1, &ad)?, true)
            }
            None => {
                return Err(ClientError::BadInput(format!(
                    "the demo model classifies {} images into {} classes; for {} images and {k} classes import a base model",
                    demo.0.input_shape(),
                    demo.0.num_classes,
                    setup.shape
                )));
            }
        };
        Ok(Self {
            fingerprint: master.fingerprint().to_string(),
            setup,
            pgd,
            base,
            demo_base,
            basic,
            combined,
        })
    }

    /// The key's fingerprint.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// What the page shows.
    pub fn status(&self) -> AdversarialStatus {
        AdversarialStatus {
            fingerprint: self.fingerprint.clone(),
            setup: self.setup.clone(),
            pgd: self.pgd,
            demo_base: self.demo_base,
        }
    }

    /// Encrypts a batch of labelled images (`[B, C, H, W]` in [0, 1]): each toward its class's
    /// target (the basic method), or toward each of its targets and merged (a combined method).
    /// Every batch first checks that the base model's outputs on it are finite (one forward
    /// pass, against the 100 forward and backward passes of PGD).
    pub async fn encrypt(
        &self,
        pixels: &[f32],
        labels: &[u32],
        device: &Device,
        backend: &'static str,
    ) -> Result<AdversarialBatch, ClientError> {
        let shape = self.setup.shape;
        let b = check_batch(pixels, shape)?;
        if labels.len() != b {
            return Err(ClientError::BadInput(format!(
                "{} labels for {b} images",
                labels.len()
            )));
        }
        let k = self.setup.classes.len() as u32;
        if let Some(bad) = labels.iter().find(|&&l| l >= k) {
            return Err(ClientError::BadInput(format!(
                "label {bad} is out of range for {k} classes"
            )));
        }
        if let Some(i) = pixels.iter().position(|v| !(0.0..=1.0).contains(v)) {
            return Err(ClientError::BadInput(format!(
                "pixel {i} is {} (images must be in [0, 1])",
                pixels[i]
            )));
        }
        let ad = device.clone().autodiff();
        let x = images_tensor(pixels, shape, &ad);
        let logits = read_vec(self.base.valid().forward(x.clone().inner()), backend).await?;
        if logits.iter().any(|v| !v.is_finite()) {
            return Err(ClientError::BadInput(
                "the base model's outputs are NaN or infinite on these images: its weights are broken".into(),
            ));
        }
        let toward = |targets: Vec<u32>| {
            let t: Vec<i64> = targets.into_iter().map(i64::from).collect();
            let classes = Tensor::<1, Int>::from_data(TensorData::new(t, [b]), &ad);
            pgd_l2(&self.base, x.clone(), classes, Goal::Toward, &self.pgd)
                .map_err(|e| ClientError::BadInput(e.to_string()))
        };
        let encrypted = match &self.combined {
            None => read_vec(toward(self.basic.targets_of(labels))?, backend).await?,
            Some(key) => {
                let mut copies = Vec::with_capacity(key.method.targets_per_class());
                for j in 0..key.method.targets_per_class() {
                    copies.push(read_vec(toward(key.targets_of(labels, j))?, backend).await?);
                }
                let p = shape.len();
                let mut out = Vec::with_capacity(pixels.len());
                for (i, &y) in labels.iter().enumerate() {
                    let parts: Vec<&[f32]> =
                        copies.iter().map(|c| &c[i * p..(i + 1) * p]).collect();
                    out.extend(merge(key, y, &parts, shape, None));
                }
                out
            }
        };
        let p = shape.len();
        let (mut psnrs, mut ssims) = (Vec::with_capacity(b), Vec::with_capacity(b));
        for i in 0..b {
            let (o, e) = (&pixels[i * p..(i + 1) * p], &encrypted[i * p..(i + 1) * p]);
            psnrs.push(psnr(o, e));
            ssims.push(ssim(o, e, shape));
        }
        Ok(AdversarialBatch {
            pixels: encrypted,
            psnr: psnrs,
            ssim: ssims,
        })
    }

    /// A dataset container of encrypted images (`F32`) with their labels and the key's
    /// fingerprint — never the key, the base model or an original.
    pub fn container(&self, encrypted: Vec<f32>, labels: Vec<u32>) -> Result<Vec<u8>, ClientError> {
        check_batch(&encrypted, self.setup.shape)?;
        let data = ImageDataset::new(
            encrypted,
            labels,
            self.setup.shape,
            self.setup.classes.clone(),
        )
        .map_err(|e| ClientError::BadInput(e.to_string()))?;
        let method = self.setup.method.map_or("basic", CombineMethod::name);
        let meta = ContainerMeta {
            scheme: "adversarial".into(),
            key_fingerprint: Some(self.fingerprint.clone()),
            description: Some(format!(
                "adversarial data encryption ({method}, ε {:.3}, {} PGD steps), encrypted in the browser",
                self.pgd.epsilon, self.pgd.iterations
            )),
            settings: None,
        };
        container::encode(&data, &meta, PixelType::F32)
            .map_err(|e| ClientError::BadInput(e.to_string()))
    }
}

/// Whether `bytes` look like a safetensors file: an 8-byte little-endian header length, then a
/// JSON header that starts with `{`. (A burnpack record does not.)
fn is_safetensors(bytes: &[u8]) -> bool {
    bytes.len() > 9
        && bytes[8] == b'{'
        && u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) < bytes.len() as u64
}

/// A base model from safetensors: a SmallCnn (any filter count and hidden width) whose classifier
/// head has one output per class of the setup. OWSD's encoder import reads the file (the same
/// names and layouts), so a model exported from PyTorch serves both schemes.
fn import_base(
    bytes: &[u8],
    setup: &AdversarialSetup,
    device: &Device,
) -> Result<SmallCnn, ClientError> {
    let (model, info) = import_encoder(bytes, setup.shape, device)
        .map_err(|e| ClientError::BadInput(format!("the base model cannot be imported: {e}")))?;
    let k = setup.classes.len();
    if !info.head {
        return Err(ClientError::BadInput(
            "the base model has no classifier head (output.weight and output.bias): PGD needs the \
             model's class scores"
                .into(),
        ));
    }
    if info.config.num_classes != k {
        return Err(ClientError::BadInput(format!(
            "the base model scores {} classes, but the images have {k}",
            info.config.num_classes
        )));
    }
    Ok(model)
}

/// How the page trains a base model.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BaseTrainOptions {
    /// Passes over the training part.
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Adam's learning rate.
    pub learning_rate: f64,
    /// Share of each class held out to measure the base model (0 keeps none).
    pub validation: f64,
    /// Seed of the split, the shuffles and the dropout noise.
    pub seed: u64,
}

impl Default for BaseTrainOptions {
    fn default() -> Self {
        let t = TrainOptions::default();
        Self {
            epochs: 15,
            batch_size: t.batch_size,
            learning_rate: t.learning_rate,
            validation: 0.1,
            seed: t.seed,
        }
    }
}

/// Where training the base model stands.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BaseTrainProgress {
    /// 1-based epoch of the last step.
    pub epoch: usize,
    /// Epochs planned.
    pub epochs: usize,
    /// Steps done.
    pub done_steps: usize,
    /// Steps planned.
    pub total_steps: usize,
    /// Mean loss of the current epoch so far.
    pub loss: f32,
    /// Training accuracy of the current epoch so far.
    pub accuracy: f32,
    /// Images trained on and held out.
    pub train_images: usize,
    /// Held-out images.
    pub validation_images: usize,
    /// Accuracy on the held-out images, once training has finished (`None` with none held out).
    pub validation_accuracy: Option<f32>,
    /// Whether every epoch has run.
    pub finished: bool,
}

/// The owner's base classifier f_θ (Hu et al. §3.1: PGD needs a model trained on the data),
/// trained in the page a few steps per call so that the worker can report progress and take a
/// cancel. The steps are [`ClassifierStepper`]'s, the same as `veil experiment adversarial`
/// takes natively; every value is read back asynchronously, so it runs on WebGPU too.
pub struct BaseTrainer {
    config: SmallCnnConfig,
    train: ImageDataset,
    validation: ImageDataset,
    options: BaseTrainOptions,
    stepper: ClassifierStepper,
    optimizer: ModuleOptimizer,
    model: SmallCnn,
    done_steps: usize,
    /// Loss × images, correct predictions and images of the current epoch.
    partial: (f64, usize, usize),
    validation_accuracy: Option<f32>,
}

impl BaseTrainer {
    /// Plans training on labelled images of `shape` (`classes` names, at least two, each with an
    /// image). On `device` (an autodiff wrapper is made of it).
    pub fn new(
        pixels: Vec<f32>,
        labels: Vec<u32>,
        shape: ImageShape,
        classes: Vec<String>,
        options: BaseTrainOptions,
        device: &Device,
    ) -> Result<Self, ClientError> {
        if options.epochs == 0 || options.epochs > 500 || options.batch_size == 0 {
            return Err(ClientError::BadInput(format!(
                "{} epochs of {} images per step: both must be positive (at most 500 epochs)",
                options.epochs, options.batch_size
            )));
        }
        if !(options.learning_rate > 0.0 && options.learning_rate.is_finite()) {
            return Err(ClientError::BadInput(format!(
                "the learning rate {} must be positive and finite",
                options.learning_rate
            )));
        }
        if !(0.0..0.5).contains(&options.validation) {
            return Err(ClientError::BadInput(format!(
                "holding out {} of the images: choose a share in [0, 0.5)",
                options.validation
            )));
        }
        check_batch(&pixels, shape)?;
        let data = ImageDataset::new(pixels, labels, shape, classes)
            .map_err(|e| ClientError::BadInput(e.to_string()))?;
        let k = data.num_classes();
        if k < 2 {
            return Err(ClientError::BadInput(format!(
                "the images have {k} class: a base model needs at least two (one sub-folder per class)"
            )));
        }
        let counts = data.class_counts();
        if let Some(empty) = counts.iter().position(|&c| c == 0) {
            return Err(ClientError::BadInput(format!(
                "class {} has no images",
                data.class_names[empty]
            )));
        }
        if let Some(&first) = veil::nn::train::non_finite_images(&data).first() {
            return Err(ClientError::BadInput(format!(
                "image {first} holds NaN or infinite values"
            )));
        }
        let (train, validation) = data.split(options.validation, options.seed);
        let config = SmallCnnConfig::for_shape(shape, k);
        let ad = device.clone().autodiff();
        let train_options = TrainOptions {
            epochs: options.epochs,
            batch_size: options.batch_size,
            learning_rate: options.learning_rate,
            seed: options.seed,
        };
        ad.seed(options.seed);
        Ok(Self {
            model: config.init(&ad),
            stepper: ClassifierStepper::new(train_options, train.len(), &ad),
            optimizer: ClassifierStepper::optimizer(),
            config,
            train,
            validation,
            options,
            done_steps: 0,
            partial: (0.0, 0, 0),
            validation_accuracy: None,
        })
    }

    fn total_steps(&self) -> usize {
        self.options.epochs * self.stepper.steps_per_epoch()
    }

    /// Whether every epoch has run.
    pub fn finished(&self) -> bool {
        self.done_steps >= self.total_steps()
    }

    /// Where training stands.
    pub fn progress(&self) -> BaseTrainProgress {
        let per = self.stepper.steps_per_epoch();
        let (sum, hits, n) = self.partial;
        BaseTrainProgress {
            epoch: (self.done_steps.max(1) - 1) / per + 1,
            epochs: self.options.epochs,
            done_steps: self.done_steps,
            total_steps: self.total_steps(),
            loss: if n == 0 {
                f32::NAN
            } else {
                (sum / n as f64) as f32
            },
            accuracy: if n == 0 {
                f32::NAN
            } else {
                hits as f32 / n as f32
            },
            train_images: self.train.len(),
            validation_images: self.validation.len(),
            validation_accuracy: self.validation_accuracy,
            finished: self.finished(),
        }
    }

    /// Runs up to `max_steps` steps (at least one); measures the held-out images when the last
    /// epoch ends. A loss that stops being finite ends the run with an error.
    pub async fn run(
        &mut self,
        max_steps: usize,
        device: &Device,
        backend: &'static str,
    ) -> Result<BaseTrainProgress, ClientError> {
        let ad = device.clone().autodiff();
        let per = self.stepper.steps_per_epoch();
        for _ in 0..max_steps.max(1) {
            if self.finished() {
                break;
            }
            let (epoch, step) = (self.done_steps / per + 1, self.done_steps % per);
            if step == 0 {
                self.partial = (0.0, 0, 0);
            }
            let order = self.stepper.epoch_order(epoch);
            let batch = self.train.subset(&order[self.stepper.batch_range(step)]);
            let images = batch.images_tensor(0..batch.len(), &ad);
            let targets = batch.labels_tensor(0..batch.len(), &ad);
            let (loss, hits) = self
                .stepper
                .forward(&self.model, images, targets, epoch, step);
            let value = read_vec(loss.clone(), backend).await?[0];
            if !value.is_finite() {
                return Err(ClientError::BadInput(format!(
                    "training the base model diverged at epoch {epoch}, step {}: the loss is {value}; lower the learning rate",
                    step + 1
                )));
            }
            let hits = read_vec(hits.float(), backend).await?[0] as usize;
            self.model = self
                .stepper
                .step(&mut self.optimizer, self.model.clone(), loss);
            self.partial.0 += f64::from(value) * batch.len() as f64;
            self.partial.1 += hits;
            self.partial.2 += batch.len();
            self.done_steps += 1;
        }
        if self.finished() && self.validation_accuracy.is_none() && !self.validation.is_empty() {
            self.validation_accuracy = Some(self.measure(device, backend).await?);
        }
        Ok(self.progress())
    }

    /// Accuracy on the held-out images.
    async fn measure(&self, device: &Device, backend: &'static str) -> Result<f32, ClientError> {
        let model = self.model.valid();
        let k = self.config.num_classes;
        let mut right = 0;
        for start in (0..self.validation.len()).step_by(256) {
            let range = start..(start + 256).min(self.validation.len());
            let logits = read_vec(
                model.forward(self.validation.images_tensor(range.clone(), device)),
                backend,
            )
            .await?;
            right += argmax_rows(&logits, k)
                .iter()
                .zip(&self.validation.labels[range])
                .filter(|(p, y)| p == y)
                .count();
        }
        Ok(right as f32 / self.validation.len() as f32)
    }

    /// The trained base model as burnpack bytes (what [`AdversarialEncryptor::new`] takes),
    /// read back asynchronously. Refuses before every epoch has run.
    pub async fn model_bytes(&self, backend: &'static str) -> Result<Vec<u8>, ClientError> {
        if !self.finished() {
            return Err(ClientError::BadInput(
                "the base model is still training".into(),
            ));
        }
        let flex = params_to_flex(
            &self.model.valid(),
            self.config.init(&Device::flex()),
            backend,
        )
        .await?;
        Ok(flex.to_bytes()?)
    }
}
