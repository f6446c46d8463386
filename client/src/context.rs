//! What every scheme in a page's worker shares: the device, the demo model and (at most) one
//! master key. Below the schemes: it imports only `error` and `device`.

use std::cell::RefCell;

use veil::burn::tensor::Device;
use veil::crypto::keyfile::{KdfCost, KeyFile};
use veil::crypto::keys::MasterKey;
use veil::data::{ImageShape, images_tensor};
use veil::nn::model::{Classifier, ModelCard, SmallCnn, demo};

use crate::device::{Backend, check_batch, init_device};
use crate::error::ClientError;

/// The demo model's answer for one image.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Classification {
    /// Predicted class index.
    pub label: u32,
    /// Its name.
    pub class_name: String,
    /// Softmax probabilities, by class.
    pub probabilities: Vec<f32>,
    /// Raw logits, by class.
    pub logits: Vec<f32>,
}

/// The device, the demo model and the loaded key. The schemes hold it behind an `Rc`.
pub struct Context {
    pub(crate) device: Device,
    pub(crate) backend: Backend,
    pub(crate) card: ModelCard,
    pub(crate) model: SmallCnn,
    /// The loaded key and its name. Borrowed briefly, never across an `await`.
    key: RefCell<Option<(MasterKey, String)>>,
}

impl Context {
    /// Picks the device (see [`init_device`]) and loads the shipped demo model onto it.
    pub async fn start(prefer_gpu: bool) -> Result<Self, ClientError> {
        let (device, backend) = init_device(prefer_gpu).await;
        let card = demo::card();
        let model = card.config.load(demo::WEIGHTS, &device)?;
        Ok(Self {
            device,
            backend,
            card,
            model,
            key: RefCell::new(None),
        })
    }

    /// The backend in use.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The demo model's card.
    pub fn model_card(&self) -> &ModelCard {
        &self.card
    }

    /// The demo model's input shape.
    pub fn input_shape(&self) -> ImageShape {
        self.card.config.input_shape()
    }

    /// Generates a new master key, replacing any loaded one. Returns its fingerprint.
    pub fn generate_key(&self, name: &str) -> Result<String, ClientError> {
        let key = MasterKey::generate()?;
        let fp = key.fingerprint().to_string();
        *self.key.borrow_mut() = Some((key, name.to_owned()));
        Ok(fp)
    }

    /// The loaded key's fingerprint, if any.
    pub fn fingerprint(&self) -> Option<String> {
        self.key
            .borrow()
            .as_ref()
            .map(|(k, _)| k.fingerprint().to_string())
    }

    /// The loaded key's name (empty when none is loaded).
    pub fn key_name(&self) -> String {
        self.key
            .borrow()
            .as_ref()
            .map(|(_, n)| n.clone())
            .unwrap_or_default()
    }

    /// Exports the loaded key as a key file, wrapped with `passphrase` (Argon2id with the default
    /// cost), or plain when `passphrase` is `None`.
    pub fn export_key(&self, passphrase: Option<&str>) -> Result<String, ClientError> {
        self.export_key_with_cost(passphrase, KdfCost::default())
    }

    /// [`Context::export_key`] with explicit Argon2id costs.
    pub fn export_key_with_cost(
        &self,
        passphrase: Option<&str>,
        cost: KdfCost,
    ) -> Result<String, ClientError> {
        let guard = self.key.borrow();
        let (key, name) = guard.as_ref().ok_or(ClientError::NoKey)?;
        let file = match passphrase {
            Some(p) => KeyFile::wrap(key, name, p, cost)?,
            None => KeyFile::plain(key, name),
        };
        Ok(file.to_json())
    }

    /// Imports a key file (unlocking it with `passphrase` when it is wrapped). On any error the
    /// current key stays loaded. Returns the imported key's fingerprint.
    pub fn import_key(&self, text: &str, passphrase: Option<&str>) -> Result<String, ClientError> {
        let file = KeyFile::from_json(text)?;
        let key = file.unlock(passphrase)?;
        let fp = key.fingerprint().to_string();
        *self.key.borrow_mut() = Some((key, file.name));
        Ok(fp)
    }

    /// Drops the key from memory.
    pub fn forget_key(&self) {
        *self.key.borrow_mut() = None;
    }

    /// A copy of the loaded key (for the schemes that derive subkeys).
    pub fn key(&self) -> Result<MasterKey, ClientError> {
        self.key
            .borrow()
            .as_ref()
            .map(|(k, _)| k.clone())
            .ok_or(ClientError::NoKey)
    }

    /// Logits of a batch of images (`[B, C, H, W]` pixels in [0, 1]) under the demo model, read
    /// back asynchronously (WebGPU does not allow synchronous reads).
    pub async fn logits(&self, pixels: &[f32]) -> Result<Vec<f32>, ClientError> {
        let shape = self.input_shape();
        check_batch(pixels, shape)?;
        let input = images_tensor(pixels, shape, &self.device);
        let logits = self.model.forward(input);
        let data = logits
            .into_data_async()
            .await
            .map_err(|e| ClientError::Device {
                backend: self.backend.label(),
                message: format!("{e:?}"),
            })?;
        Ok(data.iter::<f32>().collect())
    }

    /// Classifies one image of the demo model's shape.
    pub async fn classify(&self, pixels: &[f32]) -> Result<Classification, ClientError> {
        let shape = self.input_shape();
        if pixels.len() != shape.len() {
            return Err(ClientError::BadInput(format!(
                "expected one {shape} image ({} values), got {} values",
                shape.len(),
                pixels.len()
            )));
        }
        let logits = self.logits(pixels).await?;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
        let total: f32 = exp.iter().sum();
        let probabilities: Vec<f32> = exp.iter().map(|e| e / total).collect();
        let label = veil::nn::train::argmax_rows(&logits, logits.len())[0];
        Ok(Classification {
            label,
            class_name: self.card.classes[label as usize].clone(),
            probabilities,
            logits,
        })
    }

    /// Decodes PNG/JPEG files to `shape` (the native decoder, so a file gives the same pixels
    /// here and in `veil`), quantised to `bins` grey levels (by default the shape's,
    /// [`veil::data::default_bins`]). Errors name the file.
    pub fn decode_images_as(
        &self,
        files: &[(String, Vec<u8>)],
        shape: ImageShape,
        bins: Option<usize>,
    ) -> Result<Vec<f32>, ClientError> {
        if shape.is_empty() || shape.len() > 4096 * 4096 * 4 {
            return Err(ClientError::BadInput(format!(
                "cannot decode to {shape} images"
            )));
        }
        let levels = bins
            .unwrap_or_else(|| veil::data::default_bins(shape))
            .max(2) as f32;
        let mut out = Vec::with_capacity(files.len() * shape.len());
        for (name, bytes) in files {
            let px = veil::data::decode_image(name, bytes, shape)
                .map_err(|e| ClientError::BadInput(e.to_string()))?;
            out.extend(
                px.into_iter()
                    .map(|v| (v * (levels - 1.0)).round() / (levels - 1.0)),
            );
        }
        Ok(out)
    }

    /// The backend's label, which errors of asynchronous reads name.
    pub(crate) fn label(&self) -> &'static str {
        self.backend.label()
    }
}
