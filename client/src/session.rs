//! A client session: the device, the demo model and (at most) one master key, held in the page's
//! worker. Plain Rust: `web.rs` only converts types.

use std::cell::RefCell;

use veil::burn::tensor::{Device, Tensor};
use veil::crypto::keyfile::{KdfCost, KeyFile};
use veil::crypto::keys::MasterKey;
use veil::data::{ImageShape, images_tensor};
use veil::nn::model::{Classifier, ModelCard, SmallCnn, demo};
use veil::schemes::flow_rotation::{CiphertextSettings, EncryptionSettings};
use veil::schemes::owsd::encoder::EncoderInfo;

use crate::adversarial::{
    AdversarialBatch, AdversarialEncryptor, AdversarialSetup, AdversarialStatus, BaseTrainOptions,
    BaseTrainProgress, BaseTrainer,
};
use crate::device::{Backend, init_device};
pub use crate::error::ClientError;
use crate::finetune::{FineTune, FineTuneOptions, FineTunePlan, FineTuneProgress, Slot};
pub use crate::flows::FlowRoute;
use crate::flows::{
    CheckedCiphertexts, EncryptionFailure, Flows, FlowsInfo, NamedFiles, check_batch, read_all,
    read_parts,
};
use crate::known_plaintext::KnownPlaintextStep;
use crate::owsd::{Iin, ScrambleSetup, ScrambleStatus, Scrambled, Scrambler};
use veil::schemes::owsd::KeyUsage;
use veil::schemes::owsd::{IinReport, IinTrainOptions};

/// Ciphertexts per encryption call that WebGPU sessions decrypt again to check them (see
/// [`Session::flow_apply`]).
pub const ROUND_TRIP_CHECKS: usize = 16;

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

/// What a page's worker holds.
pub struct Session {
    device: Device,
    backend: Backend,
    card: ModelCard,
    model: SmallCnn,
    /// The loaded key and its name. Borrowed briefly, never across an `await`.
    key: RefCell<Option<(MasterKey, String)>>,
    /// Flow rotation's flows, once loaded. Borrowed briefly, never across an `await`.
    flows: RefCell<Option<Flows>>,
    /// A fine-tuning run of the loaded flows, between calls (taken out while a call runs).
    fine_tune: RefCell<Option<FineTune>>,
    /// OWSD's scramble generator of the loaded key, once set up. Borrowed briefly.
    scrambler: RefCell<Option<Scrambler>>,
    /// OWSD's internal inference network, once trained (on the CPU). Borrowed briefly.
    iin: RefCell<Option<Iin>>,
    /// The owner's own OWSD encoders, imported in this visit (encoder `i + 1`; encoder 0 is the
    /// demo model). Borrowed briefly.
    encoders: RefCell<Vec<(String, SmallCnn, EncoderInfo)>>,
    /// Adversarial data encryption's encryptor for the loaded key, once set up. Borrowed
    /// briefly (cloned out before an `await`).
    adversarial: RefCell<Option<AdversarialEncryptor>>,
    /// A base model being trained for adversarial encryption, between calls (taken out while a
    /// call runs).
    base_trainer: RefCell<Option<BaseTrainer>>,
}

/// An imported encoder, as the page lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EncoderSummary {
    /// Its index for [`Session::embed`] (0 is the demo model's layer).
    pub index: usize,
    /// The file's name.
    pub name: String,
    /// What the file holds.
    pub info: EncoderInfo,
}

/// A dataset container read back in the page.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ContainerSummary {
    /// Images in it.
    pub count: usize,
    /// Their shape.
    pub shape: ImageShape,
    /// Class names.
    pub classes: Vec<String>,
    /// How they were made.
    pub scheme: String,
    /// The fingerprint of the key that made them.
    pub key_fingerprint: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// Flow-rotation ciphertexts: the route and settings they were made with (what
    /// [`Session::flow_decrypt`] needs).
    pub flow: Option<CiphertextSettings>,
}

impl Session {
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
            flows: RefCell::new(None),
            fine_tune: RefCell::new(None),
            scrambler: RefCell::new(None),
            iin: RefCell::new(None),
            encoders: RefCell::new(Vec::new()),
            adversarial: RefCell::new(None),
            base_trainer: RefCell::new(None),
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

    /// [`Session::export_key`] with explicit Argon2id costs.
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

    // --- flow rotation ------------------------------------------------------------------------

    /// Loads a family of flows (its manifest and the files it names), replacing any loaded one.
    pub fn load_flows(
        &self,
        family: &str,
        manifest: &str,
        files: &[(String, Vec<u8>)],
    ) -> Result<FlowsInfo, ClientError> {
        let flows = Flows::load(family, manifest, files, &self.device)?;
        let info = flows.info();
        *self.flows.borrow_mut() = Some(flows);
        *self.fine_tune.borrow_mut() = None;
        Ok(info)
    }

    /// The loaded flows, if any.
    pub fn flows_info(&self) -> Option<FlowsInfo> {
        self.flows.borrow().as_ref().map(Flows::info)
    }

    fn flows_shape(&self) -> Result<ImageShape, ClientError> {
        self.flows
            .borrow()
            .as_ref()
            .map(Flows::shape)
            .ok_or_else(no_flows)
    }

    /// The loaded flows applied to a batch under `key` (lazy device tensors, see
    /// [`Flows::apply`]), with the batch's image count and image length.
    #[allow(clippy::type_complexity)]
    fn apply_parts(
        &self,
        key: &MasterKey,
        pixels: &[f32],
        route: &FlowRoute,
        decrypt: bool,
    ) -> Result<(Vec<(Vec<usize>, Tensor<4>)>, usize, usize), ClientError> {
        let mut guard = self.flows.borrow_mut();
        let flows = guard.as_mut().ok_or_else(no_flows)?;
        let parts = flows.apply(key, pixels, route, decrypt, &self.device)?;
        let len = flows.shape().len();
        Ok((parts, pixels.len() / len, len))
    }

    /// Decrypts ciphertexts that a container says were made with `made_with` (see
    /// [`ContainerSummary::flow`]), refusing with the reason when the loaded flows cannot:
    /// another temperature or cover classes, or route (a) without labels. The rotations are
    /// drawn as the container says, so ciphertexts made under an earlier derivation decrypt.
    pub async fn flow_decrypt(
        &self,
        ciphertexts: &[f32],
        labels: Option<Vec<u32>>,
        made_with: &CiphertextSettings,
    ) -> Result<Vec<f32>, ClientError> {
        let key = self.key()?;
        let (parts, len) = {
            let mut guard = self.flows.borrow_mut();
            let flows = guard.as_mut().ok_or_else(no_flows)?;
            let (route, rotation) = flows.decryption(made_with, labels)?;
            let parts = flows.apply_as(&key, ciphertexts, &route, true, rotation, &self.device)?;
            (parts, flows.shape().len())
        };
        read_all(parts, ciphertexts.len() / len, len, self.backend.label()).await
    }

    /// Known-plaintext key recovery against the loaded flows, as an attacker runs it (see
    /// [`crate::known_plaintext`]): the rotation of class `class` (`None`: route b's agnostic
    /// flow) fitted to the pairs (`plain`, `cipher`), and the `victims` decrypted with it. Uses
    /// no key.
    pub async fn known_plaintext(
        &self,
        plain: &[f32],
        cipher: &[f32],
        victims: &[f32],
        class: Option<u32>,
    ) -> Result<KnownPlaintextStep, ClientError> {
        let (view, shape) = {
            let guard = self.flows.borrow();
            let flows = guard.as_ref().ok_or_else(no_flows)?;
            (flows.public_view(class)?, flows.shape())
        };
        crate::known_plaintext::recover(
            view,
            plain,
            cipher,
            victims,
            shape,
            &self.device,
            self.backend.label(),
        )
        .await
    }

    /// Encrypts (or, with `decrypt`, decrypts and re-quantises) a batch `[B, C, H, W]` of the
    /// flows' shape with the loaded key along `route`.
    pub async fn flow_apply(
        &self,
        pixels: &[f32],
        route: &FlowRoute,
        decrypt: bool,
    ) -> Result<Vec<f32>, ClientError> {
        let key = self.key()?;
        let (parts, n, len) = self.apply_parts(&key, pixels, route, decrypt)?;
        let out = read_all(parts, n, len, self.backend.label()).await?;
        // On the CPU an overflowing inverse flow gives NaN, which `read_all` refuses. WGSL leaves
        // overflow implementation-defined, so on WebGPU it can give finite garbage that would
        // never decrypt: there, decrypt a spread of the ciphertexts and compare. (Route c's
        // per-class encryptions are for classification only and are never decrypted.)
        if !decrypt && self.backend == Backend::Webgpu && !matches!(route, FlowRoute::Class(_)) {
            self.check_round_trip(pixels, &out, route, &key).await?;
        }
        Ok(out)
    }

    /// Encrypts a batch along route (a) or (b) like [`Session::flow_apply`], but an image the
    /// flows cannot encrypt (its inverse flow overflows) is left out and named instead of failing
    /// the batch: the owner learns the encryptable fraction and keeps the rest.
    pub async fn flow_encrypt_checked(
        &self,
        pixels: &[f32],
        route: &FlowRoute,
    ) -> Result<CheckedCiphertexts, ClientError> {
        if matches!(route, FlowRoute::Class(_)) {
            return Err(ClientError::BadInput(
                "checked encryption is for route (a) or (b) data, not a step of route (c)".into(),
            ));
        }
        let key = self.key()?;
        let (parts, n, len) = self.apply_parts(&key, pixels, route, false)?;
        let all = read_parts(parts, n, len, self.backend.label()).await?;
        let (mut kept, mut failures, mut ciphertexts) = (Vec::new(), Vec::new(), Vec::new());
        for (i, c) in all.chunks(len).enumerate() {
            if c.iter().all(|v| v.is_finite()) {
                kept.push(i);
                ciphertexts.extend_from_slice(c);
            } else {
                failures.push(EncryptionFailure {
                    index: i as u32,
                    reason: veil::schemes::flow_rotation::EncryptFailure::NonFinite.to_string(),
                });
            }
        }
        if kept.is_empty() {
            return Ok(CheckedCiphertexts {
                ciphertexts,
                kept: Vec::new(),
                failures,
            });
        }
        let originals: Vec<f32> = kept
            .iter()
            .flat_map(|&i| pixels[i * len..(i + 1) * len].iter().copied())
            .collect();
        let kept_route = route.subset(&kept);
        if self.backend == Backend::Webgpu {
            // Decrypting every image costs a software adapter as much again as encrypting:
            // check a spread (see `flow_apply`).
            self.check_round_trip(&originals, &ciphertexts, &kept_route, &key)
                .await?;
        } else {
            // A finite ciphertext can still fail to decrypt (the inverse overflowed on the way
            // back): decrypt every one, and move those that do not come back to the failures.
            let all: Vec<usize> = (0..kept.len()).collect();
            let bad = self
                .round_trip_failures(&originals, &ciphertexts, &kept_route, &key, &all)
                .await?;
            if !bad.is_empty() {
                for &j in &bad {
                    failures.push(EncryptionFailure {
                        index: kept[j] as u32,
                        reason: "the ciphertext does not decrypt back to the image: the flow is numerically unstable on it".into(),
                    });
                }
                failures.sort_by_key(|f| f.index);
                let good: Vec<usize> = (0..kept.len())
                    .filter(|j| bad.binary_search(j).is_err())
                    .collect();
                ciphertexts = good
                    .iter()
                    .flat_map(|&j| ciphertexts[j * len..(j + 1) * len].to_vec())
                    .collect();
                kept = good.iter().map(|&j| kept[j]).collect();
            }
        }
        Ok(CheckedCiphertexts {
            ciphertexts,
            kept: kept.iter().map(|&i| i as u32).collect(),
            failures,
        })
    }

    /// Decrypts up to [`ROUND_TRIP_CHECKS`] of `ciphertexts`, spread over the batch, and fails
    /// unless each gives back its (quantised) original.
    async fn check_round_trip(
        &self,
        pixels: &[f32],
        ciphertexts: &[f32],
        route: &FlowRoute,
        key: &MasterKey,
    ) -> Result<(), ClientError> {
        let len = self.flows_shape()?.len();
        let n = pixels.len() / len;
        let k = n.min(ROUND_TRIP_CHECKS);
        let picks: Vec<usize> = (0..k).map(|j| j * n / k).collect();
        let bad = self
            .round_trip_failures(pixels, ciphertexts, route, key, &picks)
            .await?
            .len();
        if bad > 0 {
            return Err(ClientError::BadInput(format!(
                "{bad} of {k} checked images do not decrypt back: these flows do not fit your images (their inverse overflows). Fine-tune the flows on your images first (Fine-tune the flows page)"
            )));
        }
        Ok(())
    }

    /// Decrypts the ciphertexts at `picks` and returns those (batch indices) that do not give
    /// back their (quantised) original.
    async fn round_trip_failures(
        &self,
        pixels: &[f32],
        ciphertexts: &[f32],
        route: &FlowRoute,
        key: &MasterKey,
        picks: &[usize],
    ) -> Result<Vec<usize>, ClientError> {
        let (len, levels) = {
            let guard = self.flows.borrow();
            let flows = guard.as_ref().ok_or_else(no_flows)?;
            (flows.shape().len(), (flows.levels().max(2) - 1) as f32)
        };
        let take = |src: &[f32]| -> Vec<f32> {
            picks
                .iter()
                .flat_map(|&i| src[i * len..(i + 1) * len].iter().copied())
                .collect()
        };
        let (parts, _, _) =
            self.apply_parts(key, &take(ciphertexts), &route.subset(picks), true)?;
        // A garbage ciphertext may decrypt to NaN: that is a failed round trip, not an error.
        let back = read_parts(parts, picks.len(), len, self.backend.label()).await?;
        let want = take(pixels);
        Ok(back
            .chunks(len)
            .zip(want.chunks(len))
            .zip(picks)
            .filter(|((b, w), _)| {
                !b.iter()
                    .zip(*w)
                    .all(|(b, w)| (b - (w * levels).round_ties_even() / levels).abs() < 1e-4)
            })
            .map(|(_, &i)| i)
            .collect())
    }

    /// Decodes PNG/JPEG files to the loaded flows' shape (the native decoder, so a file gives the
    /// same pixels here and in `veil`), quantised to the flows' levels. Errors name the file.
    pub fn decode_images(&self, files: &[(String, Vec<u8>)]) -> Result<Vec<f32>, ClientError> {
        let (shape, levels) = {
            let guard = self.flows.borrow();
            let flows = guard.as_ref().ok_or_else(no_flows)?;
            (flows.shape(), flows.levels())
        };
        self.decode_images_as(files, shape, levels)
    }

    /// [`Session::decode_images`] to a given shape and number of levels.
    pub fn decode_images_as(
        &self,
        files: &[(String, Vec<u8>)],
        shape: ImageShape,
        levels: usize,
    ) -> Result<Vec<f32>, ClientError> {
        if shape.is_empty() || shape.len() > 4096 * 4096 * 4 {
            return Err(ClientError::BadInput(format!(
                "cannot decode to {shape} images"
            )));
        }
        let levels = levels.max(2) as f32;
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

    /// A dataset container of ciphertexts made with the loaded key (see
    /// [`Flows::container`]).
    pub fn flow_container(
        &self,
        ciphertexts: Vec<f32>,
        labels: Vec<u32>,
        agnostic: bool,
    ) -> Result<Vec<u8>, ClientError> {
        let key = self.key()?;
        let guard = self.flows.borrow();
        let flows = guard.as_ref().ok_or_else(no_flows)?;
        flows.container(&key, ciphertexts, labels, agnostic)
    }

    /// The binary body of a classification request: the images as one `F32` safetensors tensor.
    pub fn images_batch(&self, values: &[f32]) -> Result<Vec<u8>, ClientError> {
        let shape = self.flows_shape()?;
        check_batch(values, shape)?;
        veil::data::container::encode_images(values, shape, veil::data::container::PixelType::F32)
            .map_err(|e| ClientError::BadInput(e.to_string()))
    }

    /// Reads a dataset container (e.g. a downloaded ciphertext set): its summary, its pixels
    /// and its labels.
    pub fn read_container(
        &self,
        bytes: &[u8],
    ) -> Result<(ContainerSummary, Vec<f32>, Vec<u32>), ClientError> {
        let c = veil::data::container::decode(bytes)
            .map_err(|e| ClientError::BadInput(e.to_string()))?;
        let flow = if c.meta.scheme == "flow-rotation" {
            // A container without settings predates them: read it with the loaded flows'
            // temperature and cover classes (or Algorithm 1's when none are loaded).
            let flows = self
                .flows
                .borrow()
                .as_ref()
                .map_or_else(EncryptionSettings::legacy, |f| f.manifest().encryption);
            Some(CiphertextSettings::of_container(&c.meta, &flows).map_err(ClientError::BadInput)?)
        } else {
            None
        };
        let summary = ContainerSummary {
            flow,
            count: c.dataset.len(),
            shape: c.dataset.shape,
            classes: c.dataset.class_names.clone(),
            scheme: c.meta.scheme,
            key_fingerprint: c.meta.key_fingerprint,
            description: c.meta.description,
        };
        Ok((summary, c.dataset.images, c.dataset.labels))
    }
}

impl Session {
    // --- fine-tuning the flows ---------------------------------------------------------------

    /// Plans fine-tuning the loaded flows on labelled images of their shape (see
    /// [`crate::finetune`]), replacing any run in progress. Run it with
    /// [`Session::fine_tune_run`].
    pub fn fine_tune_begin(
        &self,
        pixels: Vec<f32>,
        labels: Vec<u32>,
        options: FineTuneOptions,
    ) -> Result<FineTunePlan, ClientError> {
        let run = {
            let guard = self.flows.borrow();
            let flows = guard.as_ref().ok_or_else(no_flows)?;
            check_batch(&pixels, flows.shape())?;
            let agnostic = flows.info().agnostic;
            FineTune::plan(pixels, labels, flows.manifest(), agnostic, options)?
        };
        let plan = run.plan_info().clone();
        *self.fine_tune.borrow_mut() = Some(run);
        Ok(plan)
    }

    /// Runs up to `max_steps` steps of the run in progress; the page calls it repeatedly until
    /// `finished`, showing the progress in between.
    pub async fn fine_tune_run(&self, max_steps: usize) -> Result<FineTuneProgress, ClientError> {
        let mut run =
            self.fine_tune.borrow_mut().take().ok_or_else(|| {
                ClientError::BadInput("no fine-tuning run: start one first".into())
            })?;
        let served = |slot: Slot| {
            self.flows
                .borrow()
                .as_ref()
                .ok_or_else(no_flows)?
                .flow_bytes(slot)
        };
        // The key's rotation of each flow, to measure which images it can encrypt.
        let key = self.key().ok();
        let encryptor = |slot: Slot| {
            let key = key.as_ref()?;
            self.flows
                .borrow_mut()
                .as_mut()?
                .encryptor(key, slot, &self.device)
        };
        let result = run
            .run(
                max_steps,
                served,
                encryptor,
                &self.device,
                self.backend.label(),
            )
            .await;
        // A failed run is dropped: its flow diverged or the device failed.
        if result.is_ok() {
            *self.fine_tune.borrow_mut() = Some(run);
        }
        result
    }

    /// Abandons the run in progress; the loaded flows stay as they were.
    pub fn fine_tune_cancel(&self) {
        *self.fine_tune.borrow_mut() = None;
    }

    /// Puts the fine-tuned flows of a finished run in place of the served ones, under the name
    /// `family`, and returns the family's new description.
    pub fn fine_tune_apply(&self, family: &str) -> Result<FlowsInfo, ClientError> {
        let run =
            self.fine_tune.borrow_mut().take().ok_or_else(|| {
                ClientError::BadInput("no fine-tuning run: start one first".into())
            })?;
        if !run.finished() {
            *self.fine_tune.borrow_mut() = Some(run);
            return Err(ClientError::BadInput(
                "the fine-tuning run has not finished".into(),
            ));
        }
        let mut guard = self.flows.borrow_mut();
        let flows = guard.as_mut().ok_or_else(no_flows)?;
        let images = run
            .reports()
            .iter()
            .map(|r| r.train_images + if r.held_out { r.held_out_images } else { 0 })
            .max()
            .unwrap_or(0);
        let data = format!(
            "{}, {} on {images} of the owner's images ({} steps per flow)",
            flows.manifest().data,
            crate::flows::FINE_TUNED,
            run.plan_info().total_steps / run.plan_info().flows.len().max(1)
        );
        let bpd: Vec<(Slot, f32)> = run
            .tuned()
            .iter()
            .zip(run.reports())
            .map(|((slot, _), r)| (*slot, r.after.bits_per_dim))
            .collect();
        flows.install(family, &data, run.tuned(), &bpd, &self.device)
    }

    /// The loaded family as files (manifest text, then the files it names), e.g. to keep
    /// fine-tuned flows in the browser's storage.
    pub fn export_flows(&self) -> Result<(String, NamedFiles), ClientError> {
        self.flows.borrow().as_ref().ok_or_else(no_flows)?.export()
    }
}

impl Session {
    // --- OWSD: scrambling ----------------------------------------------------------------------

    /// Sets up the loaded key's scramble generator (generation `setup.generation`), counting from
    /// `usage` — the count the page kept for this key and generation, or `KeyUsage::new(budget)`.
    pub fn scramble_begin(
        &self,
        setup: ScrambleSetup,
        usage: KeyUsage,
    ) -> Result<ScrambleStatus, ClientError> {
        let key = self.key()?;
        let scrambler = Scrambler::new(&key, setup, usage, &self.device)?;
        let status = scrambler.status();
        *self.scrambler.borrow_mut() = Some(scrambler);
        Ok(status)
    }

    /// The scrambler's status, if one is set up for the loaded key.
    pub fn scramble_status(&self) -> Option<ScrambleStatus> {
        let fp = self.fingerprint()?;
        self.scrambler
            .borrow()
            .as_ref()
            .filter(|s| s.fingerprint() == fp)
            .map(Scrambler::status)
    }

    /// Scrambles embeddings (`[B, embedding]`) with the loaded key's generator, counting them
    /// against its budget first (see [`Scrambler::scramble`]).
    pub async fn scramble(
        &self,
        embeddings: &[f32],
        force: bool,
    ) -> Result<Scrambled, ClientError> {
        let fp = self.fingerprint().ok_or(ClientError::NoKey)?;
        let (images, warning, usage) = {
            let mut guard = self.scrambler.borrow_mut();
            let s = guard
                .as_mut()
                .filter(|s| s.fingerprint() == fp)
                .ok_or_else(|| {
                    ClientError::BadInput(
                        "no scrambler is set up for the loaded key: set one up first".into(),
                    )
                })?;
            let (images, warning) = s.scramble(embeddings, force, &self.device)?;
            (images, warning, s.usage())
        };
        let pixels = crate::device::read_vec(images, self.backend.label()).await?;
        Ok(Scrambled {
            pixels,
            usage,
            warning,
        })
    }

    /// Trains the internal inference network on the owner's labelled sample: per image its
    /// embedding (`[N, embedding]`) and the cloud's probability vector for its scrambled image
    /// (`[N, cloud]`), and its label among `classes` (see [`Iin::train`]). Replaces any trained
    /// one.
    pub fn iin_train(
        &self,
        embeddings: &[f32],
        cloud: &[f32],
        labels: &[u32],
        classes: Vec<String>,
        options: IinTrainOptions,
    ) -> Result<IinReport, ClientError> {
        let (iin, report) = Iin::train(embeddings, cloud, labels, classes, options)?;
        *self.iin.borrow_mut() = Some(iin);
        Ok(report)
    }

    /// The trained network's labels and probabilities for new images (their embeddings and the
    /// cloud's vectors).
    pub fn iin_predict(
        &self,
        embeddings: &[f32],
        cloud: &[f32],
    ) -> Result<(Vec<u32>, Vec<f32>), ClientError> {
        self.iin
            .borrow()
            .as_ref()
            .ok_or_else(|| {
                ClientError::BadInput("no internal network is trained: train one first".into())
            })?
            .predict(embeddings, cloud)
    }

    /// Imports the owner's encoder from safetensors (see [`veil::schemes::owsd::encoder::import_encoder`]) for
    /// images of the demo model's shape, and lists it for [`Session::embed`].
    pub fn import_encoder(&self, name: &str, bytes: &[u8]) -> Result<EncoderSummary, ClientError> {
        let (model, info) =
            veil::schemes::owsd::encoder::import_encoder(bytes, self.input_shape(), &self.device)
                .map_err(|e| {
                ClientError::BadInput(format!("{name} is not an encoder Veil can use: {e}"))
            })?;
        let mut encoders = self.encoders.borrow_mut();
        if encoders.len() + 1 >= crate::owsd::MAX_ENCODERS {
            return Err(ClientError::BadInput(format!(
                "at most {} encoders can be imported",
                crate::owsd::MAX_ENCODERS - 1
            )));
        }
        encoders.push((name.to_owned(), model, info.clone()));
        Ok(EncoderSummary {
            index: encoders.len(),
            name: name.to_owned(),
            info,
        })
    }

    /// Embeddings of images of the demo model's shape by each of `encoders`, side by side in a
    /// row (`[B, Σ widths]`): 0 is the demo model's penultimate layer (64 values), `i ≥ 1` the
    /// `i`-th imported encoder.
    pub async fn embed(&self, pixels: &[f32], encoders: &[usize]) -> Result<Vec<f32>, ClientError> {
        let shape = self.input_shape();
        check_batch(pixels, shape)?;
        if encoders.is_empty() {
            return Err(ClientError::BadInput("choose at least one encoder".into()));
        }
        let x = images_tensor(pixels, shape, &self.device);
        let mut parts = Vec::with_capacity(encoders.len());
        for &e in encoders {
            let embedding = if e == 0 {
                self.model.embed(x.clone())
            } else {
                let imported = self.encoders.borrow();
                let (_, model, _) = imported.get(e - 1).ok_or_else(|| {
                    ClientError::BadInput(format!(
                        "there is no encoder {e}: {} are imported",
                        imported.len()
                    ))
                })?;
                model.embed(x.clone())
            };
            parts.push(embedding);
        }
        let rows = Tensor::cat(parts, 1);
        crate::device::read_vec(rows, self.backend.label()).await
    }
}

fn no_flows() -> ClientError {
    ClientError::BadInput("no flows are loaded: load a family first".into())
}

impl Session {
    // --- adversarial data encryption -----------------------------------------------------------

    /// Sets up adversarial encryption under the loaded key with the owner's base model
    /// (burnpack bytes of a SmallCnn for the setup's shape and classes), or the demo model when
    /// `base` is `None` and the setup is the digits' (see [`AdversarialEncryptor::new`]).
    pub fn adversarial_begin(
        &self,
        setup: AdversarialSetup,
        base: Option<&[u8]>,
    ) -> Result<AdversarialStatus, ClientError> {
        let key = self.key()?;
        let encryptor = AdversarialEncryptor::new(
            &key,
            setup,
            base,
            (&self.card.config, demo::WEIGHTS),
            &self.device,
        )?;
        let status = encryptor.status();
        *self.adversarial.borrow_mut() = Some(encryptor);
        Ok(status)
    }

    /// The encryptor set up for the loaded key (a clone: it is used across `await`s).
    fn adversarial_encryptor(&self) -> Result<AdversarialEncryptor, ClientError> {
        let fp = self.fingerprint().ok_or(ClientError::NoKey)?;
        self.adversarial
            .borrow()
            .as_ref()
            .filter(|e| e.fingerprint() == fp)
            .cloned()
            .ok_or_else(|| {
                ClientError::BadInput(
                    "adversarial encryption is not set up for the loaded key: set it up first"
                        .into(),
                )
            })
    }

    /// Encrypts a batch of labelled images (see [`AdversarialEncryptor::encrypt`]).
    pub async fn adversarial_encrypt(
        &self,
        pixels: &[f32],
        labels: &[u32],
    ) -> Result<AdversarialBatch, ClientError> {
        let encryptor = self.adversarial_encryptor()?;
        encryptor
            .encrypt(pixels, labels, &self.device, self.backend.label())
            .await
    }

    /// A dataset container of encrypted images (see [`AdversarialEncryptor::container`]).
    pub fn adversarial_container(
        &self,
        encrypted: Vec<f32>,
        labels: Vec<u32>,
    ) -> Result<Vec<u8>, ClientError> {
        self.adversarial_encryptor()?.container(encrypted, labels)
    }

    /// Plans training a base model on the owner's labelled images (see [`BaseTrainer::new`]);
    /// replaces any run in progress.
    pub fn adversarial_train_begin(
        &self,
        pixels: Vec<f32>,
        labels: Vec<u32>,
        shape: ImageShape,
        classes: Vec<String>,
        options: BaseTrainOptions,
    ) -> Result<BaseTrainProgress, ClientError> {
        let trainer = BaseTrainer::new(pixels, labels, shape, classes, options, &self.device)?;
        let progress = trainer.progress();
        *self.base_trainer.borrow_mut() = Some(trainer);
        Ok(progress)
    }

    fn take_trainer(&self) -> Result<BaseTrainer, ClientError> {
        self.base_trainer.borrow_mut().take().ok_or_else(|| {
            ClientError::BadInput("no base model is being trained: start training first".into())
        })
    }

    /// Runs up to `max_steps` steps of the base model's training. A failed step ends the run.
    pub async fn adversarial_train_run(
        &self,
        max_steps: usize,
    ) -> Result<BaseTrainProgress, ClientError> {
        let mut trainer = self.take_trainer()?;
        let progress = trainer
            .run(max_steps, &self.device, self.backend.label())
            .await?;
        *self.base_trainer.borrow_mut() = Some(trainer);
        Ok(progress)
    }

    /// Drops the run in progress.
    pub fn adversarial_train_cancel(&self) {
        *self.base_trainer.borrow_mut() = None;
    }

    /// The trained base model (burnpack bytes, for [`Session::adversarial_begin`] or to keep).
    pub async fn adversarial_base_model(&self) -> Result<Vec<u8>, ClientError> {
        let trainer = self.take_trainer()?;
        let bytes = trainer.model_bytes(self.backend.label()).await;
        *self.base_trainer.borrow_mut() = Some(trainer);
        bytes
    }
}
