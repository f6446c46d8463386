//! Flow rotation in the page ("Secure Data Sharing With Flow Model", Wu, Du, Yuan, Algorithm 1):
//! the public flows come from the server (`/api/flows`), the rotations from the owner's key, and
//! only ciphertexts leave. Plain Rust over `veil::schemes::flow_rotation`; `web.rs` converts types.
//!
//! Routes for a *test* image (see `veil experiment flow`): (a) the flow and key of its true class
//! — the paper's setting, which needs the label; (b) one class-agnostic flow and key; (c)
//! model-routed: encrypt with every class's flow and key and let the classifier's confidences
//! decide ([`FlowRoute::Class`], [`model_routed`]).

use veil::burn::tensor::{Device, Tensor};
use veil::crypto::haar::RotationDerivation;
use veil::crypto::keys::MasterKey;
use veil::data::container::{self, ContainerMeta, PixelType};
use veil::data::{ImageDataset, ImageShape, images_tensor};
use veil::schemes::flow_rotation::{
    CiphertextRoute, CiphertextSettings, EncryptionSettings, FlowEncryptor, FlowManifest, FlowSet,
    agnostic_encryptor, class_encryptor,
};

use super::finetune::Slot;
use crate::device::check_batch;
use crate::error::ClientError;

/// Named files: a family's burnpack flows, by the names its manifest uses.
pub type NamedFiles = Vec<(String, Vec<u8>)>;

/// What [`Flows::install`] writes into a manifest's `data`: the mark of fine-tuned flows.
pub const FINE_TUNED: &str = "fine-tuned in the browser";

/// Images per tensor batch: bounds the memory a call takes on either backend.
const CHUNK: usize = 256;

/// What the page learns about loaded flows.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FlowsInfo {
    /// The family's name (`digits`, …).
    pub family: String,
    /// The images the flows read.
    pub shape: ImageShape,
    /// Class names, in label order.
    pub classes: Vec<String>,
    /// Quantisation bins of the data (17 for the UCI digits, 256 for 8-bit images).
    pub bins: usize,
    /// Whether route (b) is available.
    pub agnostic: bool,
    /// What the flows were trained on (the manifest's `data`; fine-tuned flows say so).
    pub data: String,
    /// How they encrypt: Algorithm 1, or with a lower temperature and cover classes.
    pub encryption: EncryptionSettings,
}

/// Which flows and keys encrypt a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowRoute {
    /// Route (a): each image with its class's flow and key.
    TrueClass(Vec<u32>),
    /// Route (b): the class-agnostic flow and key.
    Agnostic,
    /// One class's flow and key for every image (a step of route c; see
    /// [`FlowEncryptor::encrypt_for_routing`]).
    Class(u32),
}

impl FlowRoute {
    /// The route for the images at `indices` of the batch.
    pub fn subset(&self, indices: &[usize]) -> Self {
        match self {
            Self::TrueClass(labels) => {
                Self::TrueClass(indices.iter().map(|&i| labels[i]).collect())
            }
            other => other.clone(),
        }
    }
}

/// The ciphertexts of the images of a batch that encrypt, and the others named
/// ([`super::FlowRotation::encrypt_checked`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CheckedCiphertexts {
    /// The ciphertexts of the images in `kept`, in that order.
    pub ciphertexts: Vec<f32>,
    /// Batch indices of the images encrypted.
    pub kept: Vec<u32>,
    /// Batch indices of the images that cannot be encrypted with these flows, and why.
    pub failures: Vec<EncryptionFailure>,
}

/// One image a flow cannot encrypt.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EncryptionFailure {
    pub index: u32,
    pub reason: String,
}

/// Loaded flows plus the encryptors of the current key (rebuilt when the key changes).
pub struct Flows {
    family: String,
    set: FlowSet,
    shape: ImageShape,
    /// The files the manifest names (burnpack bytes), kept to start fine-tuning from and to
    /// export the family.
    files: NamedFiles,
    /// The encryptors of the last key and rotation derivation used.
    encryptors: Option<Encryptors>,
}

/// The encryptors of one key under one rotation derivation.
#[derive(Debug)]
struct Encryptors {
    fingerprint: String,
    rotation: RotationDerivation,
    per_class: Vec<FlowEncryptor>,
    agnostic: Option<FlowEncryptor>,
}

impl Flows {
    /// Loads a family from its manifest and files.
    pub fn load(
        family: &str,
        manifest: &str,
        files: &[(String, Vec<u8>)],
        device: &Device,
    ) -> Result<Self, ClientError> {
        let set = FlowSet::load(
            manifest,
            |name| {
                files
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, b)| b.as_slice())
            },
            device,
        )
        .map_err(|e| ClientError::BadInput(format!("the {family} flows: {e}")))?;
        let g = &set.manifest.glow;
        let shape = ImageShape::new(g.channels, g.height, g.width);
        let files = set
            .manifest
            .flows
            .iter()
            .filter_map(|e| files.iter().find(|(n, _)| *n == e.file).cloned())
            .collect();
        Ok(Self {
            family: family.to_owned(),
            set,
            shape,
            files,
            encryptors: None,
        })
    }

    /// Whether these flows were fine-tuned in a browser (their manifest says so).
    pub fn fine_tuned(&self) -> bool {
        self.set.manifest.data.contains(FINE_TUNED)
    }

    /// The manifest the flows were loaded from (updated by [`Flows::install`]).
    pub fn manifest(&self) -> &FlowManifest {
        &self.set.manifest
    }

    /// The loaded flows themselves (public: the attacks read them too).
    pub(crate) fn set(&self) -> &FlowSet {
        &self.set
    }

    /// The current weights of one flow (burnpack bytes).
    pub fn flow_bytes(&self, slot: Slot) -> Result<Vec<u8>, ClientError> {
        let name = slot.name();
        self.set
            .manifest
            .flows
            .iter()
            .find(|e| e.name == name)
            .and_then(|e| self.files.iter().find(|(n, _)| *n == e.file))
            .map(|(_, b)| b.clone())
            .ok_or_else(|| {
                ClientError::BadInput(format!("the {} flows have no flow {name}", self.family))
            })
    }

    /// Replaces flows by fine-tuned ones (burnpack bytes, loaded onto `device`), renames the
    /// family and records in its manifest what the flows were tuned on and their new held-out
    /// bits/dim. The key's encryptors are rebuilt on next use.
    pub fn install(
        &mut self,
        family: &str,
        data: &str,
        tuned: &[(Slot, Vec<u8>)],
        held_out_bits_per_dim: &[(Slot, f32)],
        device: &Device,
    ) -> Result<FlowsInfo, ClientError> {
        if family.trim().is_empty() {
            return Err(ClientError::BadInput("name the fine-tuned flows".into()));
        }
        let config = self.set.manifest.glow.clone();
        let mut loaded = Vec::with_capacity(tuned.len());
        for (slot, bytes) in tuned {
            loaded.push((*slot, config.load(bytes, device)?, bytes.clone()));
        }
        for (slot, glow, bytes) in loaded {
            let name = slot.name();
            match slot {
                Slot::Class(k) => self.set.per_class[k] = glow,
                Slot::Agnostic => self.set.agnostic = Some(glow),
            }
            let entry = self
                .set
                .manifest
                .flows
                .iter_mut()
                .find(|e| e.name == name)
                .ok_or_else(|| ClientError::BadInput(format!("no flow {name} to replace")))?;
            entry.held_out_bits_per_dim = held_out_bits_per_dim
                .iter()
                .find(|(s, _)| *s == slot)
                .map(|&(_, b)| f64::from(b));
            match self.files.iter_mut().find(|(n, _)| *n == entry.file) {
                Some((_, b)) => *b = bytes,
                None => self.files.push((entry.file.clone(), bytes)),
            }
        }
        self.family = family.trim().to_owned();
        self.set.manifest.data = data.to_owned();
        self.encryptors = None;
        Ok(self.info())
    }

    /// The family as files: the manifest's JSON text and the files it names.
    pub fn export(&self) -> Result<(String, NamedFiles), ClientError> {
        let manifest = serde_json::to_string_pretty(&self.set.manifest)
            .map_err(|e| ClientError::BadInput(format!("the manifest cannot be written: {e}")))?;
        Ok((manifest, self.files.clone()))
    }

    /// What the page shows.
    pub fn info(&self) -> FlowsInfo {
        FlowsInfo {
            family: self.family.clone(),
            shape: self.shape,
            classes: self.set.manifest.classes.clone(),
            bins: self.bins(),
            agnostic: self.set.agnostic.is_some(),
            data: self.set.manifest.data.clone(),
            encryption: self.set.manifest.encryption,
        }
    }

    /// The images the flows read.
    pub fn shape(&self) -> ImageShape {
        self.shape
    }

    /// Quantisation bins of the data.
    pub fn bins(&self) -> usize {
        self.set.manifest.preprocess.bins
    }

    fn classes(&self) -> usize {
        self.set.per_class.len()
    }

    /// Derives (once per key and derivation) the rotations of every class and of the agnostic
    /// flow, with the family's temperature and cover classes.
    fn prepare(&mut self, key: &MasterKey, rotation: RotationDerivation, device: &Device) {
        let fingerprint = key.fingerprint().to_string();
        if self
            .encryptors
            .as_ref()
            .is_some_and(|e| e.fingerprint == fingerprint && e.rotation == rotation)
        {
            return;
        }
        let settings = EncryptionSettings {
            rotation,
            ..self.set.manifest.encryption
        };
        let pre = self.set.manifest.preprocess;
        let per_class = (0..self.classes())
            .map(|k| class_encryptor(&self.set.per_class, k, pre, key, settings, device))
            .collect();
        let agnostic = self
            .set
            .agnostic
            .as_ref()
            .map(|g| agnostic_encryptor(g, pre, key, settings, device));
        self.encryptors = Some(Encryptors {
            fingerprint,
            rotation,
            per_class,
            agnostic,
        });
    }

    /// The rotation derivation this family encrypts with.
    fn rotation(&self) -> RotationDerivation {
        self.set.manifest.encryption.rotation
    }

    /// The encryptor of one flow under `key` (computing the key's rotations on first use).
    pub fn encryptor(
        &mut self,
        key: &MasterKey,
        slot: Slot,
        device: &Device,
    ) -> Option<FlowEncryptor> {
        self.prepare(key, self.rotation(), device);
        let e = self.encryptors.as_ref()?;
        match slot {
            Slot::Class(k) => e.per_class.get(k).cloned(),
            Slot::Agnostic => e.agnostic.clone(),
        }
    }

    /// How to decrypt ciphertexts that a container says were made with `made_with`: their
    /// route and the rotation derivation to draw, or why these flows cannot decrypt them.
    pub fn decryption(
        &self,
        made_with: &CiphertextSettings,
        labels: Option<Vec<u32>>,
    ) -> Result<(FlowRoute, RotationDerivation), ClientError> {
        made_with
            .check_flows(&self.set.manifest.encryption)
            .map_err(ClientError::BadInput)?;
        let route = match (made_with.route, labels) {
            (CiphertextRoute::Agnostic, _) => FlowRoute::Agnostic,
            (CiphertextRoute::PerClass, Some(labels)) => FlowRoute::TrueClass(labels),
            (CiphertextRoute::PerClass, None) => {
                return Err(ClientError::BadInput(
                    "these ciphertexts went through route (a), one flow per class: decrypting \
                     them needs their labels"
                        .into(),
                ));
            }
        };
        Ok((route, made_with.encryption.rotation))
    }

    /// Checks a batch: a whole number of images of the flows' shape, finite values.
    pub fn check_pixels(&self, pixels: &[f32]) -> Result<usize, ClientError> {
        check_batch(pixels, self.shape)
    }

    /// The tensors a route produces for `pixels` (`[B, C, H, W]` values), chunk by chunk, in
    /// image order, `decrypt` choosing Dec instead of Enc, with the family's rotation
    /// derivation. The returned tensors are computed lazily by the device; read them back with
    /// [`read_all`].
    pub fn apply(
        &mut self,
        key: &MasterKey,
        pixels: &[f32],
        route: &FlowRoute,
        decrypt: bool,
        device: &Device,
    ) -> Result<Vec<(Vec<usize>, Tensor<4>)>, ClientError> {
        self.apply_as(key, pixels, route, decrypt, self.rotation(), device)
    }

    /// [`Flows::apply`] with the rotations drawn by `rotation` (to decrypt ciphertexts made
    /// under another derivation than the family's: see [`Flows::decryption`]).
    pub fn apply_as(
        &mut self,
        key: &MasterKey,
        pixels: &[f32],
        route: &FlowRoute,
        decrypt: bool,
        rotation: RotationDerivation,
        device: &Device,
    ) -> Result<Vec<(Vec<usize>, Tensor<4>)>, ClientError> {
        let n = self.check_pixels(pixels)?;
        let classes = self.classes();
        match route {
            FlowRoute::TrueClass(labels) => {
                if labels.len() != n {
                    return Err(ClientError::BadInput(format!(
                        "{n} images but {} labels",
                        labels.len()
                    )));
                }
                if let Some(bad) = labels.iter().find(|&&l| l as usize >= classes) {
                    return Err(ClientError::BadInput(format!(
                        "label {bad} is not one of the flows' {classes} classes"
                    )));
                }
            }
            FlowRoute::Agnostic if self.set.agnostic.is_none() => {
                return Err(ClientError::BadInput(format!(
                    "the {} flows have no class-agnostic flow (route b)",
                    self.family
                )));
            }
            FlowRoute::Class(k) if *k as usize >= classes => {
                return Err(ClientError::BadInput(format!(
                    "class {k} is not one of the flows' {classes} classes"
                )));
            }
            _ => {}
        }
        self.prepare(key, rotation, device);
        let Some(Encryptors {
            per_class,
            agnostic,
            ..
        }) = &self.encryptors
        else {
            unreachable!("prepare sets the encryptors")
        };
        // Group the images by the encryptor that handles them, keeping their positions.
        let groups: Vec<(&FlowEncryptor, Vec<usize>)> = match route {
            FlowRoute::TrueClass(labels) => per_class
                .iter()
                .enumerate()
                .map(|(k, enc)| {
                    let idx = (0..n).filter(|&i| labels[i] as usize == k).collect();
                    (enc, idx)
                })
                .filter(|(_, idx): &(_, Vec<usize>)| !idx.is_empty())
                .collect(),
            FlowRoute::Agnostic => {
                vec![(agnostic.as_ref().expect("checked above"), (0..n).collect())]
            }
            FlowRoute::Class(k) => vec![(&per_class[*k as usize], (0..n).collect())],
        };
        let len = self.shape.len();
        let mut out = Vec::new();
        for (enc, idx) in groups {
            for chunk in idx.chunks(CHUNK) {
                let mut batch = Vec::with_capacity(chunk.len() * len);
                for &i in chunk {
                    batch.extend_from_slice(&pixels[i * len..(i + 1) * len]);
                }
                let x = images_tensor(&batch, self.shape, device);
                let y = match (decrypt, route) {
                    (true, _) => enc.decrypt_quantised(x),
                    (false, FlowRoute::Class(_)) => enc.encrypt_for_routing(x),
                    (false, _) => enc.encrypt(x),
                };
                out.push((chunk.to_vec(), y));
            }
        }
        Ok(out)
    }

    /// A dataset container of ciphertexts (`F32`, exact) with their labels and the key's
    /// fingerprint — never the key. `agnostic` names route (b) in the description.
    pub fn container(
        &self,
        key: &MasterKey,
        ciphertexts: Vec<f32>,
        labels: Vec<u32>,
        agnostic: bool,
    ) -> Result<Vec<u8>, ClientError> {
        check_batch(&ciphertexts, self.shape)?;
        let data = ImageDataset::new(
            ciphertexts,
            labels,
            self.shape,
            self.set.manifest.classes.clone(),
        )
        .map_err(|e| ClientError::BadInput(e.to_string()))?;
        let route = if agnostic {
            "route (b), the class-agnostic flow"
        } else {
            "route (a), one flow and key per class"
        };
        let settings = CiphertextSettings {
            route: if agnostic {
                CiphertextRoute::Agnostic
            } else {
                CiphertextRoute::PerClass
            },
            encryption: self.set.manifest.encryption,
        };
        let meta = ContainerMeta {
            scheme: "flow-rotation".into(),
            settings: Some(settings.to_json()),
            key_fingerprint: Some(key.fingerprint().to_string()),
            description: Some(format!(
                "flow rotation of the {} family{}, {route}, encrypted in the browser",
                self.family,
                if self.fine_tuned() {
                    " (fine-tuned in this browser)"
                } else {
                    ""
                }
            )),
        };
        container::encode(&data, &meta, PixelType::F32)
            .map_err(|e| ClientError::BadInput(e.to_string()))
    }
}

/// Reads back every tensor of [`Flows::apply`] into one `[B, C, H, W]` buffer in image order,
/// refusing non-finite values.
pub async fn read_all(
    parts: Vec<(Vec<usize>, Tensor<4>)>,
    n: usize,
    len: usize,
    backend: &'static str,
) -> Result<Vec<f32>, ClientError> {
    let out = read_parts(parts, n, len, backend).await?;
    if let Some(bad) = out.iter().position(|v| !v.is_finite()) {
        return Err(ClientError::Device {
            backend,
            message: format!(
                "image {} came out with a non-finite value: the flow overflowed on it, so these flows do not fit such images (fine-tune them on yours: Fine-tune the flows page)",
                bad / len
            ),
        });
    }
    Ok(out)
}

/// [`read_all`] without the finiteness check.
pub async fn read_parts(
    parts: Vec<(Vec<usize>, Tensor<4>)>,
    n: usize,
    len: usize,
    backend: &'static str,
) -> Result<Vec<f32>, ClientError> {
    let mut out = vec![0.0f32; n * len];
    for (idx, t) in parts {
        let values = crate::device::read_vec(t, backend).await?;
        for (j, &i) in idx.iter().enumerate() {
            out[i * len..(i + 1) * len].copy_from_slice(&values[j * len..(j + 1) * len]);
        }
    }
    Ok(out)
}

/// Route (c)'s decision ([`veil::schemes::flow_rotation::model_routed`]), with the client's
/// error.
pub fn model_routed(
    probs: &[Vec<f32>],
    n: usize,
) -> Result<(Vec<u32>, Vec<Vec<f32>>), ClientError> {
    veil::schemes::flow_rotation::model_routed(probs, n)
        .map_err(|e| ClientError::BadInput(e.to_string()))
}
