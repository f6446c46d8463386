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
use veil::burn::tensor::{Device, Int, Tensor, TensorData};
use veil::crypto::keys::MasterKey;
use veil::data::container::{self, ContainerMeta, PixelType};
use veil::data::{ImageDataset, ImageShape, images_tensor};
use veil::nn::model::{Classifier, SmallCnn, SmallCnnConfig};
use veil::schemes::adversarial::{
    ClassCorrespondence, CombineMethod, CombinedKey, Goal, PgdConfig, merge, pgd_l2,
};
use veil::schemes::owsd::encoder::import_encoder;

use crate::device::check_batch;
use crate::device::read_vec;
use crate::error::ClientError;

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
