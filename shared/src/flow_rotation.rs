//! Flow rotation ("Secure Data Sharing With Flow Model", Wu, Du, Yuan, Algorithm 1):
//! `Enc(s) = f⁻¹(A·f(s))`, `Dec(c) = f⁻¹(Aᵀ·f(c))`, with `f` a trained [`Glow`] (its standardised
//! latent, flattened in the documented order) and `A` a secret Haar-random rotation derived from
//! the owner's key ([`HaarRotation`]).
//!
//! Ciphertexts are f32 images on the pixel scale of the data: `(sigmoid(s′) − α)/(1 − α)` of the
//! rotated logit-space image `s′`, *not* clamped to [0, 1] (clamping would destroy the bits that
//! decryption needs), so they must be stored as floats, never as 8-bit images.

use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::sigmoid;

use crate::glow::{Glow, GlowConfig, Preprocess};
use crate::haar::HaarRotation;
use crate::keys::{MasterKey, Scheme, SubKey};

/// One class's (or the class-agnostic) encryptor: a flow and a rotation on one device.
#[derive(Debug, Clone)]
pub struct FlowEncryptor {
    glow: Glow,
    pre: Preprocess,
    /// `Aᵀ` (latents are row vectors: `(A·e)ᵀ = eᵀ·Aᵀ`).
    rotation_t: Tensor<2>,
    /// `A` (to decrypt: `(Aᵀ·e)ᵀ = eᵀ·A`).
    rotation: Tensor<2>,
}

impl FlowEncryptor {
    /// The encryptor for `key` (the rotation has the flow's latent dimension).
    pub fn new(glow: Glow, pre: Preprocess, key: &SubKey, device: &Device) -> Self {
        let dim: usize = glow.latent_shapes().iter().map(|s| s.len()).sum();
        Self::with_rotation(glow, pre, &HaarRotation::from_subkey(key, dim), device)
    }

    /// The encryptor for an explicit rotation.
    pub fn with_rotation(
        glow: Glow,
        pre: Preprocess,
        rotation: &HaarRotation,
        device: &Device,
    ) -> Self {
        let d = rotation.dim();
        let a = Tensor::<2>::from_data(TensorData::new(rotation.to_f32(), [d, d]), device);
        Self {
            glow,
            pre,
            rotation_t: a.clone().transpose(),
            rotation: a,
        }
    }

    /// The same rotation with another flow of the same architecture (e.g. a fine-tuned one).
    pub fn with_glow(&self, glow: Glow) -> Self {
        Self {
            glow,
            ..self.clone()
        }
    }

    fn rotate(&self, s: Tensor<4>, matrix: &Tensor<2>) -> Tensor<4> {
        let eps = self.glow.forward(s).eps;
        let flat = Glow::flatten_latents(eps).matmul(matrix.clone());
        self.glow.decode_eps(&self.glow.unflatten_latents(flat))
    }

    /// Encrypts pixels `[B, C, H, W]` in [0, 1] (quantised to the preprocessing's levels).
    pub fn encrypt(&self, x: Tensor<4>) -> Tensor<4> {
        let (s, _) = self.pre.to_logit(x, false);
        self.logit_to_pixels(self.rotate(s, &self.rotation_t))
    }

    /// Encrypts images that may not be of this flow's class, for route (c) (model-routed
    /// classification, which encrypts every image with every class's flow). Far from its
    /// class's distribution the inverse flow can overflow f32 (its affine couplings divide by
    /// scales below 1 at every step) and give NaN; such pixels become ½, so that every image
    /// still yields one finite image of the same shape — the server sees the same number of
    /// queries whatever the image — and the classifier finds nothing of class `k` in it. Never
    /// use it for data to decrypt: those pixels are lost.
    pub fn encrypt_for_routing(&self, x: Tensor<4>) -> Tensor<4> {
        let c = self.encrypt(x);
        let bad = c.clone().is_nan();
        c.mask_fill(bad, 0.5)
    }

    /// Decrypts ciphertext pixels; returns the continuous pixel value `(k + ½)/levels`.
    pub fn decrypt(&self, c: Tensor<4>) -> Tensor<4> {
        let s = self.pixels_to_logit(c);
        self.pre.from_logit(self.rotate(s, &self.rotation))
    }

    /// Decrypts and re-quantises to the data's levels (`k/(levels − 1)`): the original pixels.
    pub fn decrypt_quantised(&self, c: Tensor<4>) -> Tensor<4> {
        let levels = self.pre.levels as f32;
        let y = self.decrypt(c);
        (y * levels - 0.5).round().clamp(0.0, levels - 1.0) / (levels - 1.0)
    }

    fn logit_to_pixels(&self, s: Tensor<4>) -> Tensor<4> {
        (sigmoid(s) - self.pre.alpha) / (1.0 - self.pre.alpha)
    }

    fn pixels_to_logit(&self, c: Tensor<4>) -> Tensor<4> {
        let p = c * (1.0 - self.pre.alpha) + self.pre.alpha;
        p.clone().log() - (p.neg() + 1.0).log()
    }
}

/// One flow in a [`FlowManifest`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FlowEntry {
    /// `agnostic` or `class-<k>`.
    pub name: String,
    /// The burnpack file, relative to the manifest.
    pub file: String,
    /// Held-out bits/dim measured by `veil flow train`.
    #[serde(default)]
    pub held_out_bits_per_dim: Option<f64>,
}

/// `flows.json`, written by `veil flow train` beside the flows (unknown fields are ignored).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FlowManifest {
    /// The data the flows were trained on (`digits` or a path).
    pub data: String,
    /// Class names, in label order.
    pub classes: Vec<String>,
    /// The architecture of every flow.
    pub glow: GlowConfig,
    /// The pixel preprocessing.
    pub preprocess: Preprocess,
    /// The flows.
    pub flows: Vec<FlowEntry>,
}

/// Why a set of flows cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum FlowSetError {
    /// `flows.json` is not a manifest.
    #[error("the flow manifest cannot be read: {0}")]
    Manifest(String),
    /// A file the manifest names is missing.
    #[error("the flow manifest names {0}, which is missing")]
    Missing(String),
    /// A flow's weights do not load.
    #[error("flow {name}: {source}")]
    Weights {
        /// The flow.
        name: String,
        /// Why.
        source: crate::model::ModelError,
    },
}

/// The flows of flow rotation for one kind of data: one per class (the paper's supervised
/// setting, route a) and optionally a class-agnostic one (route b), with their preprocessing.
#[derive(Debug, Clone)]
pub struct FlowSet {
    /// The manifest they were loaded from.
    pub manifest: FlowManifest,
    /// `per_class[k]` is class `k`'s flow.
    pub per_class: Vec<Glow>,
    /// The class-agnostic flow, if trained.
    pub agnostic: Option<Glow>,
}

impl FlowSet {
    /// Loads the flows a manifest (`flows.json`'s text) names; `file` returns a named file's
    /// bytes. Every class must have its flow.
    pub fn load<'a>(
        manifest: &str,
        file: impl Fn(&str) -> Option<&'a [u8]>,
        device: &Device,
    ) -> Result<Self, FlowSetError> {
        let manifest: FlowManifest =
            serde_json::from_str(manifest).map_err(|e| FlowSetError::Manifest(e.to_string()))?;
        manifest.glow.validate().map_err(FlowSetError::Manifest)?;
        let load = |name: &str| -> Result<Option<Glow>, FlowSetError> {
            let Some(entry) = manifest.flows.iter().find(|f| f.name == name) else {
                return Ok(None);
            };
            let bytes =
                file(&entry.file).ok_or_else(|| FlowSetError::Missing(entry.file.clone()))?;
            manifest
                .glow
                .load(bytes, device)
                .map(Some)
                .map_err(|source| FlowSetError::Weights {
                    name: name.to_owned(),
                    source,
                })
        };
        let mut per_class = Vec::with_capacity(manifest.classes.len());
        for k in 0..manifest.classes.len() {
            let name = format!("class-{k}");
            per_class.push(load(&name)?.ok_or(FlowSetError::Missing(name))?);
        }
        let agnostic = load("agnostic")?;
        Ok(Self {
            manifest,
            per_class,
            agnostic,
        })
    }

    /// Class `class`'s encryptor under `key` (route a): subkey `class/<k>` of the flow-rotation
    /// scheme.
    pub fn class_encryptor(&self, key: &MasterKey, class: usize, device: &Device) -> FlowEncryptor {
        FlowEncryptor::new(
            self.per_class[class].clone(),
            self.manifest.preprocess,
            &key.class_subkey(Scheme::FlowRotation, class as u32),
            device,
        )
    }

    /// The class-agnostic encryptor under `key` (route b): subkey `agnostic`.
    pub fn agnostic_encryptor(&self, key: &MasterKey, device: &Device) -> Option<FlowEncryptor> {
        self.agnostic.as_ref().map(|g| {
            FlowEncryptor::new(
                g.clone(),
                self.manifest.preprocess,
                &key.subkey(Scheme::FlowRotation, "agnostic"),
                device,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::digits;
    use crate::glow::GlowConfig;
    use crate::keys::{MasterKey, Scheme};

    #[test]
    fn round_trip_within_1e_4_pixel_units_and_keys_matter() {
        let device = Device::flex();
        let pre = Preprocess {
            levels: 17,
            alpha: 0.05,
        };
        let data = digits().subset(&(0..64).collect::<Vec<_>>());
        let x = data.images_tensor(0..64, &device);
        let (s, _) = pre.to_logit(x.clone(), true);
        let glow = GlowConfig::new(1, 8, 8)
            .with_hidden(16)
            .init(&device)
            .data_init(s);
        let key = MasterKey::from_bytes([4; 32]);
        let enc = FlowEncryptor::new(
            glow.clone(),
            pre,
            &key.class_subkey(Scheme::FlowRotation, 0),
            &device,
        );
        let c = enc.encrypt(x.clone());
        let (expected, _) = pre.to_logit(x.clone(), false);
        let y = enc.decrypt(c.clone());
        let err = (y - pre.from_logit(expected))
            .abs()
            .max()
            .into_scalar::<f32>();
        assert!(err < 1e-4, "round-trip error {err} in pixel units");
        let exact = (enc.decrypt_quantised(c.clone()) - x.clone())
            .abs()
            .max()
            .into_scalar::<f32>();
        assert_eq!(exact, 0.0);
        // The ciphertext is far from the plaintext, and another key does not decrypt it.
        let dist = (c.clone() - x.clone()).abs().mean().into_scalar::<f32>();
        assert!(dist > 0.1, "mean |c − x| = {dist}");
        let other = FlowEncryptor::new(
            glow,
            pre,
            &key.class_subkey(Scheme::FlowRotation, 1),
            &device,
        );
        let wrong = (other.decrypt_quantised(c) - x)
            .abs()
            .mean()
            .into_scalar::<f32>();
        assert!(
            wrong > 0.1,
            "a wrong key recovers the image: mean error {wrong}"
        );
    }

    #[test]
    fn encryption_is_deterministic_per_key() {
        let device = Device::flex();
        let pre = Preprocess {
            levels: 17,
            alpha: 0.05,
        };
        let data = digits().subset(&(0..8).collect::<Vec<_>>());
        let x = data.images_tensor(0..8, &device);
        let glow = GlowConfig::new(1, 8, 8).with_hidden(8).init(&device);
        let key = MasterKey::from_bytes([6; 32]);
        let sub = key.class_subkey(Scheme::FlowRotation, 3);
        let a = FlowEncryptor::new(glow.clone(), pre, &sub, &device).encrypt(x.clone());
        let b = FlowEncryptor::new(glow, pre, &sub, &device).encrypt(x);
        assert_eq!(
            a.into_data().iter::<f32>().collect::<Vec<_>>(),
            b.into_data().iter::<f32>().collect::<Vec<_>>()
        );
    }
}
