//! Flow rotation ("Secure Data Sharing With Flow Model", Wu, Du, Yuan, Algorithm 1):
//! `Enc(s) = f⁻¹(A·f(s))`, `Dec(c) = f⁻¹(Aᵀ·f(c))`, with `f` a trained [`Glow`] (its standardised
//! latent, flattened in the documented order) and `A` a secret Haar-random rotation derived from
//! the owner's key ([`HaarRotation`]).
//!
//! Ciphertexts are f32 images on the pixel scale of the data: `(sigmoid(s′) − α)/(1 − α)` of the
//! rotated logit-space image `s′`, *not* clamped to [0, 1] (clamping would destroy the bits that
//! decryption needs), so they must be stored as floats, never as 8-bit images.
//!
//! Why this file is over 600 lines: a third is its unit tests; the rest is the encryptor, the flow
//! set and the settings, which share their types.

use burn::prelude::*;
use burn::tensor::activation::sigmoid;

use crate::crypto::haar::{HaarRotation, RotationDerivation};
use crate::crypto::keys::{MasterKey, Scheme, SubKey};
use crate::flow::glow::{Glow, GlowConfig, Preprocess};

mod rotation;
pub use rotation::{DeviceRotation, DeviceWyBlock};

/// One class's (or the class-agnostic) encryptor: a flow and a rotation on one device, with
/// Veil's two optional refinements of Algorithm 1 ([`EncryptionSettings`]).
#[derive(Debug, Clone)]
pub struct FlowEncryptor {
    glow: Glow,
    pre: Preprocess,
    /// `A`, on the device.
    rotation: DeviceRotation,
    /// τ: encryption decodes `τ·A·f(s)`.
    temperature: f32,
    /// The flow that decodes the rotated latent (and encodes ciphertexts to decrypt): `None`
    /// for Algorithm 1's `f⁻¹(A·f(s))`, class `π(c)`'s flow with cover classes.
    cover: Option<Glow>,
}

impl FlowEncryptor {
    /// The encryptor for `key` (the rotation has the flow's latent dimension), its rotation
    /// drawn by `derivation`.
    pub fn new(
        glow: Glow,
        pre: Preprocess,
        key: &SubKey,
        derivation: RotationDerivation,
        device: &Device,
    ) -> Self {
        let dim: usize = glow.latent_shapes().iter().map(|s| s.len()).sum();
        Self::with_rotation(
            glow,
            pre,
            &HaarRotation::from_subkey(key, dim, derivation),
            device,
        )
    }

    /// The encryptor for an explicit rotation.
    pub fn with_rotation(
        glow: Glow,
        pre: Preprocess,
        rotation: &HaarRotation,
        device: &Device,
    ) -> Self {
        Self {
            glow,
            pre,
            rotation: DeviceRotation::new(rotation, device),
            temperature: 1.0,
            cover: None,
        }
    }

    /// The same rotation with another flow of the same architecture (e.g. a fine-tuned one).
    pub fn with_glow(&self, glow: Glow) -> Self {
        Self {
            glow,
            ..self.clone()
        }
    }

    /// Encrypts at latent temperature `temperature` (τ in `(0, 1]`, see
    /// [`EncryptionSettings::temperature`]).
    pub fn with_temperature(self, temperature: f32) -> Self {
        Self {
            temperature,
            ..self
        }
    }

    /// Decodes the rotated latent with `cover` (of the same architecture) instead of this flow:
    /// cover classes ([`EncryptionSettings::cover_classes`]).
    pub fn with_cover(self, cover: Glow) -> Self {
        Self {
            cover: Some(cover),
            ..self
        }
    }

    /// `to⁻¹(scale · f(s) · matrix)` with `from` = this flow and `to` = the cover when
    /// encrypting, the other way round when decrypting.
    fn rotate(&self, s: Tensor<4>, scale: f32, encrypt: bool) -> Tensor<4> {
        let cover = self.cover.as_ref().unwrap_or(&self.glow);
        let (from, to) = if encrypt {
            (&self.glow, cover)
        } else {
            (cover, &self.glow)
        };
        let flat = Glow::flatten_latents(from.encode(s));
        let flat = if encrypt {
            self.rotation.rotate_rows(flat)
        } else {
            self.rotation.unrotate_rows(flat)
        };
        let flat = if scale == 1.0 { flat } else { flat * scale };
        to.decode_eps(&to.unflatten_latents(flat))
    }

    /// Encrypts pixels `[B, C, H, W]` in [0, 1] (quantised to the preprocessing's levels).
    pub fn encrypt(&self, x: Tensor<4>) -> Tensor<4> {
        let (s, _) = self.pre.to_logit(x, false);
        self.logit_to_pixels(self.rotate(s, self.temperature, true))
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

    /// Encrypts pixels like [`FlowEncryptor::encrypt`], then decrypts each ciphertext and checks
    /// that it gives back every pixel of its image. Returns the ciphertexts and, per image, `None`
    /// when it round-trips or why it does not. A flow that fits an image badly cannot encrypt it:
    /// its inverse overflows f32 ([`EncryptFailure::NonFinite`]) or loses precision
    /// ([`EncryptFailure::NoRoundTrip`]); such a ciphertext must not be shared.
    pub fn encrypt_verified(&self, x: Tensor<4>) -> (Tensor<4>, Vec<Option<EncryptFailure>>) {
        let [b, _, _, _] = x.dims();
        let c = self.encrypt(x.clone());
        let values: Vec<f32> = c.clone().into_data().iter::<f32>().collect();
        let per = values.len() / b.max(1);
        let finite: Vec<bool> = values
            .chunks(per.max(1))
            .map(|img| img.iter().all(|v| v.is_finite()))
            .collect();
        // Decrypt the finite ones (NaN would only propagate); compare in level units.
        let levels = (self.pre.bins - 1) as f32;
        let back: Vec<f32> = self
            .decrypt_quantised(
                c.clone()
                    .mask_fill(c.clone().is_nan(), 0.5)
                    .clamp(-1e6, 1e6),
            )
            .into_data()
            .iter::<f32>()
            .collect();
        let original: Vec<f32> = x.into_data().iter::<f32>().collect();
        let failures = (0..b)
            .map(|i| {
                if !finite[i] {
                    return Some(EncryptFailure::NonFinite);
                }
                let r = i * per..(i + 1) * per;
                // Against the image as encryption reads it: quantised to the data's levels (burn
                // rounds ties to even).
                let worst = back[r.clone()]
                    .iter()
                    .zip(&original[r])
                    .map(|(d, o)| (d * levels - (o * levels).round_ties_even()).abs())
                    .fold(0.0f32, |m, e| if e.is_nan() { f32::NAN } else { m.max(e) });
                (worst.is_nan() || worst >= 0.5).then_some(EncryptFailure::NoRoundTrip {
                    max_error_levels: if worst.is_nan() { f32::INFINITY } else { worst },
                })
            })
            .collect();
        (c, failures)
    }

    /// Decrypts ciphertext pixels; returns the continuous pixel value `(k + ½)/levels`.
    pub fn decrypt(&self, c: Tensor<4>) -> Tensor<4> {
        let s = self.pixels_to_logit(c);
        self.pre
            .from_logit(self.rotate(s, 1.0 / self.temperature, false))
    }

    /// Decrypts and re-quantises to the data's levels (`k/(levels − 1)`): the original pixels.
    pub fn decrypt_quantised(&self, c: Tensor<4>) -> Tensor<4> {
        self.pre.quantise(self.decrypt(c))
    }

    fn logit_to_pixels(&self, s: Tensor<4>) -> Tensor<4> {
        (sigmoid(s) - self.pre.alpha) / (1.0 - self.pre.alpha)
    }

    fn pixels_to_logit(&self, c: Tensor<4>) -> Tensor<4> {
        let p = c * (1.0 - self.pre.alpha) + self.pre.alpha;
        p.clone().log() - (p.neg() + 1.0).log()
    }
}

/// Route (d), the factory's side: the latents `g(c)` of ciphertexts `c` under the public
/// class-agnostic flow `g` (flattened, `[B, C·H·W]`). For a route-(b) ciphertext
/// `c = g⁻¹(τ·A·g(s))` this is `τ·A·g(s)`: the image's latent, rotated by the owner's secret
/// `A` and scaled by τ. The factory needs no key and no label to compute it; a classifier of
/// these vectors ([`crate::nn::latent::LatentMlp`]) learns `A` into its first layer. What it
/// learns about the images is what `g(c)` shows: the latents' norms and their pairwise inner
/// products (a rotation keeps both), which route (b)'s ciphertexts already show to anyone who
/// holds `g`.
pub fn public_latents(glow: &Glow, pre: Preprocess, c: Tensor<4>) -> Tensor<2> {
    let p = c * (1.0 - pre.alpha) + pre.alpha;
    let s = p.clone().log() - (p.neg() + 1.0).log();
    Glow::flatten_latents(glow.encode(s))
}

/// Why an image could not be encrypted ([`FlowEncryptor::encrypt_verified`]).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum EncryptFailure {
    /// The inverse flow overflowed f32: the ciphertext holds NaN or infinity. The flow does not
    /// fit the image (it lies far from what the flow was trained on).
    NonFinite,
    /// The ciphertext is finite but decrypts to other pixels: the largest error, in quantisation
    /// levels, is `max_error_levels` (≥ ½, so at least one pixel changed level).
    NoRoundTrip {
        /// The largest pixel error after decryption, in levels.
        max_error_levels: f32,
    },
}

impl std::fmt::Display for EncryptFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NonFinite => f.write_str(
                "the inverse flow overflowed (a NaN or infinite ciphertext pixel): the flow does not fit this image",
            ),
            Self::NoRoundTrip { max_error_levels } => write!(
                f,
                "the ciphertext does not decrypt to the image (a pixel is off by {max_error_levels:.1} levels): the flow is numerically unstable on it"
            ),
        }
    }
}

/// How a flow family encrypts: Algorithm 1 (the defaults) or with Veil's refinements. Public, like
/// the flows themselves; it lives in the family's [`FlowManifest`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct EncryptionSettings {
    /// Latent temperature τ: `Enc(s) = g⁻¹(τ·A·f(s))`, `Dec(c) = f⁻¹(Aᵀ·g(c)/τ)`. 1 is the
    /// paper's Algorithm 1. Below 1 the rotated latent decodes nearer the flow's mode, as Glow's
    /// reduced-temperature sampling (Kingma & Dhariwal 2018, §5) does: the decoded latents of an
    /// imperfect flow at τ = 1 fall off the data manifold, so ciphertexts are noisier than the
    /// data. τ is public and `z ↦ τ·z` invertible, so Theorem 1's bound is unchanged (an adversary
    /// divides by τ).
    pub temperature: f32,
    /// Cover classes: class `c`'s rotated latent is decoded by class `π(c)`'s flow, `π` a secret
    /// derangement of the classes ([`cover_permutation`]), so that a ciphertext of class `c`
    /// looks like an image of class `π(c)` and a model trained on ciphertexts mislabels original
    /// images. Per-class flows only.
    pub cover_classes: bool,
    /// How the key's rotations are drawn ([`RotationDerivation`]). Absent (settings written
    /// before derivations were recorded): the QR derivation, which made them.
    #[serde(default = "RotationDerivation::legacy")]
    pub rotation: RotationDerivation,
}

impl Default for EncryptionSettings {
    fn default() -> Self {
        Self::ALGORITHM_1
    }
}

impl EncryptionSettings {
    /// The paper's Algorithm 1: τ = 1, no cover classes (with the current rotation
    /// derivation).
    pub const ALGORITHM_1: Self = Self {
        temperature: 1.0,
        cover_classes: false,
        rotation: RotationDerivation::CURRENT,
    };

    /// Veil's refinements as `veil experiment flow` measures them: cover classes and τ = 0.5,
    /// chosen from its temperature sweep (docs/RESULTS.md).
    pub const VEIL: Self = Self {
        temperature: 0.5,
        cover_classes: true,
        rotation: RotationDerivation::CURRENT,
    };

    /// What a manifest or container without settings means: Algorithm 1 with the QR
    /// derivation, the only one Veil had when it wrote them.
    pub fn legacy() -> Self {
        Self {
            rotation: RotationDerivation::LEGACY,
            ..Self::ALGORITHM_1
        }
    }

    /// Why the settings cannot be used, if they cannot.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature > 0.0 && self.temperature <= 1.0) {
            return Err(format!(
                "the encryption temperature must lie in (0, 1], not {}",
                self.temperature
            ));
        }
        Ok(())
    }
}

/// Which flows a set of ciphertexts went through: route (a), each image with its class's flow
/// and key, or route (b), the class-agnostic flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CiphertextRoute {
    /// Route (a): decrypting needs each ciphertext's label.
    PerClass,
    /// Route (b).
    Agnostic,
}

/// What decrypting a container of flow-rotation ciphertexts needs besides the key and the
/// flows, written in its `settings` metadata ([`crate::data::container`]): the route and the
/// [`EncryptionSettings`] (temperature, cover classes, rotation derivation) they were made with.
/// All public, like the flows.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CiphertextSettings {
    /// The route.
    pub route: CiphertextRoute,
    /// How they were encrypted.
    pub encryption: EncryptionSettings,
}

impl CiphertextSettings {
    /// The `settings` metadata value.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|_| unreachable!("the settings always serialise"))
    }

    /// The settings a flow-rotation container records. A container written before they were
    /// recorded (no `settings`) was made by Algorithm 1's QR derivation at the loaded flows'
    /// `temperature` and `cover_classes` (they cannot be checked), its route named in the
    /// description.
    pub fn of_container(
        meta: &crate::data::container::ContainerMeta,
        flows: &EncryptionSettings,
    ) -> Result<Self, String> {
        match &meta.settings {
            Some(json) => serde_json::from_str(json)
                .map_err(|e| format!("the container's flow-rotation settings are malformed: {e}")),
            None => Ok(Self {
                route: if meta
                    .description
                    .as_deref()
                    .is_some_and(|d| d.contains("route (b)"))
                {
                    CiphertextRoute::Agnostic
                } else {
                    CiphertextRoute::PerClass
                },
                encryption: EncryptionSettings {
                    rotation: RotationDerivation::LEGACY,
                    ..*flows
                },
            }),
        }
    }

    /// Why flows that encrypt with `flows` cannot decrypt these ciphertexts, if they cannot.
    /// The temperature and cover classes belong to a flow family and must match; the rotation
    /// derivation need not: decryption draws the rotation these ciphertexts name.
    pub fn check_flows(&self, flows: &EncryptionSettings) -> Result<(), String> {
        let theirs = &self.encryption;
        let describe = |s: &EncryptionSettings| {
            format!(
                "temperature {}{}",
                s.temperature,
                if s.cover_classes {
                    " with cover classes"
                } else {
                    " without cover classes"
                }
            )
        };
        if theirs.temperature != flows.temperature || theirs.cover_classes != flows.cover_classes {
            return Err(format!(
                "these ciphertexts were encrypted at {}, but the loaded flows encrypt at {}: \
                 load the flows they were made with",
                describe(theirs),
                describe(flows)
            ));
        }
        Ok(())
    }
}

/// The secret cover-class derangement `π` of a key: class `c`'s images are encrypted with class
/// `c`'s flow and decoded by class `π(c)`'s, so that they look like class `π(c)`. Uniform over the
/// derangements of `classes` (rejection sampling: a uniform shuffle is a derangement with
/// probability ≈ 1/e), from the subkey `cover-classes`.
pub fn cover_permutation(key: &MasterKey, classes: usize) -> Vec<usize> {
    use rand::seq::SliceRandom;
    let mut rng = key.subkey(Scheme::FlowRotation, "cover-classes").rng();
    let mut p: Vec<usize> = (0..classes).collect();
    if classes < 2 {
        return p;
    }
    loop {
        p.shuffle(&mut rng);
        if p.iter().enumerate().all(|(i, &v)| i != v) {
            return p;
        }
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
    /// How the flows encrypt (absent: Algorithm 1 with the QR derivation,
    /// [`EncryptionSettings::legacy`]).
    #[serde(default = "EncryptionSettings::legacy")]
    pub encryption: EncryptionSettings,
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
        source: crate::nn::weights::ModelError,
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
        manifest
            .encryption
            .validate()
            .map_err(FlowSetError::Manifest)?;
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

    /// Class `class`'s encryptor under `key` (route a), with the manifest's
    /// [`EncryptionSettings`]: see [`class_encryptor`].
    pub fn class_encryptor(&self, key: &MasterKey, class: usize, device: &Device) -> FlowEncryptor {
        class_encryptor(
            &self.per_class,
            class,
            self.manifest.preprocess,
            key,
            self.manifest.encryption,
            device,
        )
    }

    /// The class-agnostic encryptor under `key` (route b): see [`agnostic_encryptor`].
    pub fn agnostic_encryptor(&self, key: &MasterKey, device: &Device) -> Option<FlowEncryptor> {
        self.agnostic.as_ref().map(|g| {
            agnostic_encryptor(
                g,
                self.manifest.preprocess,
                key,
                self.manifest.encryption,
                device,
            )
        })
    }
}

/// Class `class`'s encryptor among the per-class flows `per_class` under `key` (route a): the
/// rotation of subkey `class/<k>` of the flow-rotation scheme, at `settings`' temperature, and
/// decoded by class `π(class)`'s flow with cover classes.
pub fn class_encryptor(
    per_class: &[Glow],
    class: usize,
    pre: Preprocess,
    key: &MasterKey,
    settings: EncryptionSettings,
    device: &Device,
) -> FlowEncryptor {
    let enc = FlowEncryptor::new(
        per_class[class].clone(),
        pre,
        &key.class_subkey(Scheme::FlowRotation, class as u32),
        settings.rotation,
        device,
    )
    .with_temperature(settings.temperature);
    if settings.cover_classes {
        let pi = cover_permutation(key, per_class.len());
        enc.with_cover(per_class[pi[class]].clone())
    } else {
        enc
    }
}

/// The class-agnostic encryptor of `glow` under `key` (route b): subkey `agnostic`, at
/// `settings`' temperature (cover classes need classes, so they do not apply).
pub fn agnostic_encryptor(
    glow: &Glow,
    pre: Preprocess,
    key: &MasterKey,
    settings: EncryptionSettings,
    device: &Device,
) -> FlowEncryptor {
    FlowEncryptor::new(
        glow.clone(),
        pre,
        &key.subkey(Scheme::FlowRotation, "agnostic"),
        settings.rotation,
        device,
    )
    .with_temperature(settings.temperature)
}

/// Route (c), model-routed classification without the label (Veil's, not the paper's): each
/// image is encrypted with every class's flow and key, and `probs[k]` is the classifier's
/// probability matrix (`[n, K]`, row-major) on the images encrypted with class `k`'s. Each image
/// gets the class `k` whose encryption the classifier most believes is of class `k`. Returns the
/// labels and, per image, those `K` confidences. The page and `veil experiment flow` both decide
/// through this function.
pub fn model_routed(probs: &[Vec<f32>], n: usize) -> Result<(Vec<u32>, Vec<Vec<f32>>), RouteError> {
    let k = probs.len();
    if k == 0 || probs.iter().any(|p| p.len() != n * k) {
        return Err(RouteError {
            classes: k,
            images: n,
        });
    }
    let mut labels = Vec::with_capacity(n);
    let mut confidences = Vec::with_capacity(n);
    for i in 0..n {
        let conf: Vec<f32> = (0..k).map(|c| probs[c][i * k + c]).collect();
        labels.push(crate::nn::train::argmax_rows(&conf, k)[0]);
        confidences.push(conf);
    }
    Ok((labels, confidences))
}

/// Route (c) was given probability matrices of the wrong count or size.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("route (c) needs {classes} probability matrices of {images}×{classes} values")]
pub struct RouteError {
    /// Classes (matrices given).
    pub classes: usize,
    /// Images.
    pub images: usize,
}

#[cfg(test)]
mod tests {
    #[test]
    fn model_routed_takes_the_most_confident_own_class() {
        // Two images, three classes; probs[k] = classifier output on Enc_k(images).
        let probs = vec![
            vec![0.2, 0.5, 0.3, 0.9, 0.05, 0.05],
            vec![0.1, 0.8, 0.1, 0.3, 0.3, 0.4],
            vec![0.3, 0.3, 0.4, 0.0, 0.0, 1.0],
        ];
        let (labels, conf) = model_routed(&probs, 2).unwrap();
        assert_eq!(labels, vec![1, 2]);
        assert_eq!(conf[0], vec![0.2, 0.8, 0.4]);
        assert_eq!(conf[1], vec![0.9, 0.3, 1.0]);
        assert!(model_routed(&probs[..2], 2).is_err());
    }

    use super::*;
    use crate::crypto::keys::{MasterKey, Scheme};
    use crate::data::digits;
    use crate::flow::glow::GlowConfig;
    use burn::tensor::TensorData;

    /// The first `n` digits and an untrained (data-initialised) 8×8 Glow of them.
    fn digits_and_glow(n: usize) -> (Device, Preprocess, Tensor<4>, Glow) {
        let device = Device::flex();
        let pre = Preprocess {
            bins: 17,
            alpha: 0.05,
        };
        let data = digits().subset(&(0..n).collect::<Vec<_>>());
        let x = data.images_tensor(0..n, &device);
        let (s, _) = pre.to_logit(x.clone(), true);
        let glow = GlowConfig::new(1, 8, 8)
            .with_hidden(16)
            .init(&device)
            .data_init(s);
        (device, pre, x, glow)
    }

    #[test]
    fn round_trip_within_1e_4_pixel_units_and_keys_matter() {
        let (device, pre, x, glow) = digits_and_glow(64);
        let key = MasterKey::from_bytes([4; 32]);
        let enc = FlowEncryptor::new(
            glow.clone(),
            pre,
            &key.class_subkey(Scheme::FlowRotation, 0),
            RotationDerivation::CURRENT,
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
            RotationDerivation::CURRENT,
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
    fn the_public_flow_reads_a_ciphertext_as_the_rotated_scaled_latent() {
        let (device, pre, x, glow) = digits_and_glow(32);
        let key = MasterKey::from_bytes([9; 32]).class_subkey(Scheme::FlowRotation, 0);
        let rotation = HaarRotation::from_subkey(&key, 64, RotationDerivation::CURRENT);
        let enc = FlowEncryptor::with_rotation(glow.clone(), pre, &rotation, &device)
            .with_temperature(0.5);
        let c = enc.encrypt(x.clone());
        let seen = public_latents(&glow, pre, c);
        let z = crate::flow::train::flow_latents(&glow, x, pre);
        let entries: Vec<f32> = rotation.entries().iter().map(|&v| v as f32).collect();
        let a = Tensor::<2>::from_data(TensorData::new(entries, [64, 64]), &device);
        let expected = z.clone().matmul(a.transpose()) * 0.5;
        let err = (seen.clone() - expected).abs().max().into_scalar::<f32>();
        assert!(err < 1e-2, "g(c) differs from τ·A·g(s) by {err}");
        // It is not the unrotated latent.
        let far = (seen - z * 0.5).abs().mean().into_scalar::<f32>();
        assert!(
            far > 0.1,
            "g(c) is the plain latent (mean difference {far})"
        );
    }

    #[test]
    fn verified_encryption_names_the_images_that_do_not_round_trip() {
        let (device, pre, x, glow) = digits_and_glow(16);
        let key = MasterKey::from_bytes([4; 32]).class_subkey(Scheme::FlowRotation, 0);
        let enc = FlowEncryptor::new(glow, pre, &key, RotationDerivation::CURRENT, &device);
        let (c, failures) = enc.encrypt_verified(x.clone());
        assert_eq!(failures, vec![None; 16]);
        // Pixels between levels (an unquantised image) are read at their nearest level, and
        // compared with it.
        let off_grid = x.clone() + 0.5 / 16.0;
        let (_, failures) = enc.encrypt_verified(off_grid.clamp(0.0, 1.0));
        assert_eq!(failures, vec![None; 16]);
        assert_eq!(c.dims(), [16, 1, 8, 8]);
        // A latent scaled far beyond the flow's range saturates its inverse: nothing comes back.
        let wild = enc.clone().with_temperature(1e30);
        let (_, failures) = wild.encrypt_verified(x.clone());
        assert_eq!(failures.len(), 16);
        assert!(failures.iter().all(Option::is_some), "{failures:?}");
        // A NaN anywhere in the flow's output is named as an overflow, for that image only.
        let poisoned = x.clone().slice_assign(
            [0..1, 0..1, 0..1, 0..1],
            Tensor::<4>::from_data(TensorData::new(vec![f32::NAN], [1, 1, 1, 1]), &device),
        );
        let (_, failures) = enc.encrypt_verified(poisoned);
        assert_eq!(failures[0], Some(EncryptFailure::NonFinite));
        assert_eq!(failures[1..], vec![None; 15]);
        assert!(EncryptFailure::NonFinite.to_string().contains("overflowed"));
    }

    #[test]
    fn encryption_is_deterministic_per_key() {
        let device = Device::flex();
        let pre = Preprocess {
            bins: 17,
            alpha: 0.05,
        };
        let data = digits().subset(&(0..8).collect::<Vec<_>>());
        let x = data.images_tensor(0..8, &device);
        let glow = GlowConfig::new(1, 8, 8).with_hidden(8).init(&device);
        let key = MasterKey::from_bytes([6; 32]);
        let sub = key.class_subkey(Scheme::FlowRotation, 3);
        let a = FlowEncryptor::new(
            glow.clone(),
            pre,
            &sub,
            RotationDerivation::CURRENT,
            &device,
        )
        .encrypt(x.clone());
        let b =
            FlowEncryptor::new(glow, pre, &sub, RotationDerivation::CURRENT, &device).encrypt(x);
        assert_eq!(
            a.into_data().iter::<f32>().collect::<Vec<_>>(),
            b.into_data().iter::<f32>().collect::<Vec<_>>()
        );
    }

    #[test]
    fn temperature_and_cover_classes_round_trip_and_change_the_ciphertext() {
        let device = Device::flex();
        let pre = Preprocess {
            bins: 17,
            alpha: 0.05,
        };
        let data = digits().subset(&(0..32).collect::<Vec<_>>());
        let x = data.images_tensor(0..32, &device);
        let (s, _) = pre.to_logit(x.clone(), true);
        let config = GlowConfig::new(1, 8, 8).with_hidden(16);
        let glow = config.init(&device).data_init(s.clone());
        let cover = config.clone().with_seed(99).init(&device).data_init(s);
        let key = MasterKey::from_bytes([8; 32]);
        let sub = key.class_subkey(Scheme::FlowRotation, 2);
        let plain = FlowEncryptor::new(glow, pre, &sub, RotationDerivation::CURRENT, &device);
        let values = |t: Tensor<4>| t.into_data().iter::<f32>().collect::<Vec<_>>();
        let base = values(plain.encrypt(x.clone()));
        for enc in [
            plain.clone().with_temperature(0.5),
            plain.clone().with_cover(cover.clone()),
            plain
                .clone()
                .with_temperature(0.6)
                .with_cover(cover.clone()),
        ] {
            let c = enc.encrypt(x.clone());
            let moved = values(c.clone())
                .iter()
                .zip(&base)
                .map(|(a, b)| (a - b).abs())
                .sum::<f32>()
                / base.len() as f32;
            assert!(moved > 0.01, "the setting left the ciphertext as it was");
            let exact = (enc.decrypt_quantised(c) - x.clone())
                .abs()
                .max()
                .into_scalar::<f32>();
            assert_eq!(exact, 0.0, "{enc:?} does not round-trip");
        }
    }

    #[test]
    fn cover_permutations_are_uniform_derangements_fixed_by_the_key() {
        let n = 5;
        let mut counts = vec![0usize; n * n];
        let trials = 2000;
        for t in 0..trials {
            let mut b = [0u8; 32];
            b[..8].copy_from_slice(&(t as u64).to_le_bytes());
            let key = MasterKey::from_bytes(b);
            let p = cover_permutation(&key, n);
            assert_eq!(p, cover_permutation(&key, n));
            let mut sorted = p.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..n).collect::<Vec<_>>());
            for (i, &v) in p.iter().enumerate() {
                assert_ne!(i, v, "{p:?} fixes {i}");
                counts[i * n + v] += 1;
            }
        }
        // Uniform over derangements: class i goes to each other class with probability 1/(n−1).
        // Chi-square over the 20 off-diagonal cells, each of 4 classes per row (df ≈ 15): the 0.999
        // quantile is 37.7.
        let expected = trials as f64 / (n - 1) as f64;
        let chi2: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| (counts[i * n + j] as f64 - expected).powi(2) / expected)
            .sum();
        assert!(chi2 < 37.7, "chi-square {chi2:.1} of {counts:?}");
    }

    #[test]
    fn manifests_without_encryption_settings_mean_algorithm_1_and_bad_ones_are_refused() {
        let device = Device::flex();
        let config = GlowConfig::new(1, 8, 8).with_hidden(4);
        let bytes = config.init(&device).to_bytes().unwrap();
        let manifest = |extra: &str| {
            format!(
                r#"{{"data":"digits","classes":["a"],"glow":{},"preprocess":{{"levels":17,"alpha":0.05}},"flows":[{{"name":"class-0","file":"f.bpk"}}]{extra}}}"#,
                serde_json::to_string(&config).unwrap()
            )
        };
        let file = |_: &str| Some(bytes.as_slice());
        // Written before settings and derivations were recorded: Algorithm 1 with the QR
        // derivation that made its ciphertexts.
        let set = FlowSet::load(&manifest(""), file, &device).unwrap();
        assert_eq!(set.manifest.encryption, EncryptionSettings::legacy());
        assert_eq!(set.manifest.encryption.rotation, RotationDerivation::Qr);
        let set = FlowSet::load(
            &manifest(r#","encryption":{"temperature":1.0,"cover_classes":false,"rotation":"householder"}"#),
            file,
            &device,
        )
        .unwrap();
        assert_eq!(set.manifest.encryption, EncryptionSettings::ALGORITHM_1);
        assert!(
            FlowSet::load(
                &manifest(r#","encryption":{"rotation":"lu"}"#),
                file,
                &device
            )
            .unwrap_err()
            .to_string()
            .contains("unknown variant"),
        );
        let set = FlowSet::load(
            &manifest(r#","encryption":{"temperature":0.5,"cover_classes":true}"#),
            file,
            &device,
        )
        .unwrap();
        assert_eq!(set.manifest.encryption.temperature, 0.5);
        assert_eq!(set.manifest.encryption.rotation, RotationDerivation::Qr);
        for bad in ["0", "-1", "1.5"] {
            let err = FlowSet::load(
                &manifest(&format!(r#","encryption":{{"temperature":{bad}}}"#)),
                file,
                &device,
            )
            .unwrap_err();
            assert!(err.to_string().contains("temperature"), "{err}");
        }
    }

    #[test]
    fn a_flow_with_a_blocked_rotation_round_trips() {
        let device = Device::flex();
        let pre = Preprocess::EIGHT_BIT;
        // 1×20×20 = 400 latent dimensions: blocked.
        let data = crate::data::synthetic(crate::data::SyntheticConfig {
            classes: 2,
            per_class: 4,
            shape: crate::data::ImageShape::new(1, 20, 20),
            ..Default::default()
        })
        .unwrap();
        let x = data.images_tensor(0..8, &device);
        let (s, _) = pre.to_logit(x.clone(), true);
        let glow = GlowConfig::new(1, 20, 20)
            .with_hidden(8)
            .init(&device)
            .data_init(s);
        let key = MasterKey::from_bytes([3; 32]).class_subkey(Scheme::FlowRotation, 0);
        let enc = FlowEncryptor::new(glow, pre, &key, RotationDerivation::Householder, &device);
        assert!(matches!(enc.rotation, DeviceRotation::Blocked { .. }));
        let (c, failures) = enc.encrypt_verified(x.clone());
        assert_eq!(failures, vec![None; 8]);
        let dist = (c - x).abs().mean().into_scalar::<f32>();
        assert!(dist > 0.1, "mean |c − x| = {dist}");
    }
}
