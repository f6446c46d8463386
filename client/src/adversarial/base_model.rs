//! Training the owner's base model for adversarial data encryption in the page (Hu et al., §3.1:
//! the owner's own classifier, whose gradients PGD follows), a few steps per call so the worker
//! can report progress and take a cancel.

use veil::burn::module::Module;
use veil::burn::optim::ModuleOptimizer;
use veil::burn::tensor::Device;
use veil::data::{ImageDataset, ImageShape};
use veil::nn::model::{Classifier, SmallCnn, SmallCnnConfig};
use veil::nn::train::{ClassifierStepper, TrainOptions, argmax_rows};

use crate::device::check_batch;
use crate::device::{params_to_flex, read_vec};
use crate::error::ClientError;

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
