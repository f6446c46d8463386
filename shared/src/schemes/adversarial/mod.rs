//! Adversarial data encryption (Hu, Zhang, Shan, Qin, Qi, Wu, Yuan, "Adversarial Data
//! Encryption").
//!
//! The owner trains a base classifier f_θ on the data, draws a secret [`ClassCorrespondence`] P
//! from the key, and perturbs every training image of class `y` by targeted L2 PGD toward class
//! `P(y)` inside a small ε-ball (§3.1, Eq. 1): people see the same image, but its non-robust
//! features now point at another class. A model trained on `(x_enc, y)` learns "features of
//! `P(y)` mean `y`" and so does well on encrypted data and badly on clean data (§3.3). The
//! combined methods ([`CombinedKey`]) give each class N(y) ≥ 2 targets and merge the perturbed
//! copies (§4), which makes the correspondence much harder to recover (§4.3).
//!
//! What it does **not** give: confidentiality of the images (they look like the originals, PSNR
//! above 30 dB), and protection against a factory that trains robustly; both are measured in
//! [`crate::attacks::adversarial`].
//!
//! Test-time encryption (the paper's *Enc* column) needs each test image's label, since the
//! target is `P(label)`: the paper calls it vacuous in practice, and so does Veil.

pub mod combine;
pub mod correspondence;
pub mod pgd;

pub use combine::{merge, merge_dataset};
pub use correspondence::{
    ClassCorrespondence, CombineMethod, CombinedKey, random_targets, random_targets_from_key,
};
pub use pgd::{Goal, PgdConfig, pgd_l2};

use burn::prelude::*;
use burn::tensor::TensorData;

use crate::data::ImageDataset;
use crate::nn::model::Classifier;
use crate::nn::train::Control;

/// Why encryption cannot run.
#[derive(Debug, thiserror::Error)]
pub enum AdversarialError {
    /// ε is not a positive finite number.
    #[error("ε must be a positive finite number, not {0}")]
    Epsilon(f32),
    /// The step is not a positive finite number.
    #[error("the PGD step must be a positive finite number, not {0}")]
    Step(f32),
    /// Fewer than two classes.
    #[error(
        "a class correspondence needs at least 2 classes; the data has {0} (encrypting one class toward another needs another)"
    )]
    Classes(usize),
    /// Too few classes for a combined method's distinct targets.
    #[error(
        "{method} needs {need} classes or more (distinct targets other than the class); the data has {classes}"
    )]
    TooFewClasses {
        /// The method.
        method: &'static str,
        /// Classes it needs.
        need: usize,
        /// Classes there are.
        classes: usize,
    },
    /// The base model does not fit the data.
    #[error("the base model gives {got} class scores but the data has {want} classes")]
    ModelClasses {
        /// Scores per image.
        got: usize,
        /// Classes of the data.
        want: usize,
    },
    /// The base model's outputs are not finite on clean images.
    #[error(
        "the base model's outputs are NaN or infinite on clean images: its weights hold NaN or infinity"
    )]
    NonFiniteModel,
    /// PGD needs gradients.
    #[error("PGD needs the base model on an autodiff device (Device::autodiff) to take gradients")]
    NotAutodiff,
    /// The caller stopped encryption.
    #[error("encryption was cancelled")]
    Cancelled,
    /// Anything else that is wrong with the inputs.
    #[error("{0}")]
    Invalid(String),
}

/// Images per PGD batch.
pub const BATCH: usize = 128;

/// Checks that `model` scores `data`'s classes with finite outputs (a base model of the wrong
/// width, or with NaN weights, is refused before any PGD runs).
pub fn check_base_model<M: Classifier>(
    model: &M,
    data: &ImageDataset,
    device: &Device,
) -> Result<(), AdversarialError> {
    if data.is_empty() {
        return Err(AdversarialError::Invalid("the dataset is empty".into()));
    }
    let k = data.num_classes();
    if k < 2 {
        return Err(AdversarialError::Classes(k));
    }
    let logits = model
        .valid()
        .forward(data.images_tensor(0..data.len().min(8), &device.clone().inner()));
    let got = logits.dims()[1];
    if got != k {
        return Err(AdversarialError::ModelClasses { got, want: k });
    }
    if logits
        .into_data()
        .iter::<f32>()
        .any(|v: f32| !v.is_finite())
    {
        return Err(AdversarialError::NonFiniteModel);
    }
    Ok(())
}

/// Perturbs every image of `data` toward its own target class (`targets[i]`) with targeted L2
/// PGD, in batches of [`BATCH`] on `device` (an autodiff device). `on_batch(done, total)` sees
/// the images done after each batch and may cancel. Labels are kept: the result is the
/// encrypted set `(x_enc, y)`.
pub fn encrypt_toward<M: Classifier>(
    model: &M,
    data: &ImageDataset,
    targets: &[u32],
    config: &PgdConfig,
    device: &Device,
    mut on_batch: impl FnMut(usize, usize) -> Control,
) -> Result<ImageDataset, AdversarialError> {
    config.validate()?;
    check_base_model(model, data, device)?;
    if targets.len() != data.len() {
        return Err(AdversarialError::Invalid(format!(
            "{} targets for {} images",
            targets.len(),
            data.len()
        )));
    }
    let k = data.num_classes() as u32;
    if let Some(&bad) = targets.iter().find(|&&t| t >= k) {
        return Err(AdversarialError::Invalid(format!(
            "target class {bad} is out of range for {k} classes"
        )));
    }
    let mut images = Vec::with_capacity(data.images.len());
    for start in (0..data.len()).step_by(BATCH) {
        let range = start..(start + BATCH).min(data.len());
        let t: Vec<i64> = targets[range.clone()]
            .iter()
            .map(|&t| i64::from(t))
            .collect();
        let classes = Tensor::<1, Int>::from_data(TensorData::new(t, [range.len()]), device);
        let x = data.images_tensor(range.clone(), device);
        let enc = pgd_l2(model, x, classes, Goal::Toward, config)?;
        images.extend(enc.into_data().iter::<f32>());
        if on_batch(range.end, data.len()) == Control::Stop {
            return Err(AdversarialError::Cancelled);
        }
    }
    Ok(ImageDataset {
        images,
        labels: data.labels.clone(),
        shape: data.shape,
        class_names: data.class_names.clone(),
    })
}

/// The basic encryption (§3.1): every image of class `y` perturbed toward `P(y)`.
pub fn encrypt_basic<M: Classifier>(
    model: &M,
    data: &ImageDataset,
    correspondence: &ClassCorrespondence,
    config: &PgdConfig,
    device: &Device,
    on_batch: impl FnMut(usize, usize) -> Control,
) -> Result<ImageDataset, AdversarialError> {
    if correspondence.classes() != data.num_classes() {
        return Err(AdversarialError::Invalid(format!(
            "the correspondence covers {} classes; the data has {}",
            correspondence.classes(),
            data.num_classes()
        )));
    }
    let targets = correspondence.targets_of(&data.labels);
    encrypt_toward(model, data, &targets, config, device, on_batch)
}

/// The N(y) perturbed copies of every image for a combined key (copy `j` toward each image's
/// j-th target), before merging; [`merge_dataset`] merges them. Kept apart so that one set of
/// copies serves several ratios (the paper's Table 5).
pub fn combined_copies<M: Classifier>(
    model: &M,
    data: &ImageDataset,
    key: &CombinedKey,
    config: &PgdConfig,
    device: &Device,
    mut on_batch: impl FnMut(usize, usize) -> Control,
) -> Result<Vec<ImageDataset>, AdversarialError> {
    if key.classes() != data.num_classes() {
        return Err(AdversarialError::Invalid(format!(
            "the combined key covers {} classes; the data has {}",
            key.classes(),
            data.num_classes()
        )));
    }
    let n = key.method.targets_per_class();
    let total = n * data.len();
    (0..n)
        .map(|j| {
            let targets = key.targets_of(&data.labels, j);
            encrypt_toward(model, data, &targets, config, device, |done, _| {
                on_batch(j * data.len() + done, total)
            })
        })
        .collect()
}

/// The combined encryption (§4.1, Eq. 2): the copies of [`combined_copies`] merged at the key's
/// ratios and weights.
pub fn encrypt_combined<M: Classifier>(
    model: &M,
    data: &ImageDataset,
    key: &CombinedKey,
    config: &PgdConfig,
    device: &Device,
    on_batch: impl FnMut(usize, usize) -> Control,
) -> Result<ImageDataset, AdversarialError> {
    let copies = combined_copies(model, data, key, config, device, on_batch)?;
    merge_dataset(key, &copies, None)
}
