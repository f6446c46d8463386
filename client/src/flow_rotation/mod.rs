//! Flow rotation in the page ("Secure Data Sharing With Flow Model", Wu, Du, Yuan, Algorithm 1):
//! [`FlowRotation`] holds the loaded public flows and a fine-tuning run, and uses the
//! [`Context`]'s key and device.
//!
//! - [`flows`]: a loaded family of flows, the routes, and the key's encryptors;
//! - [`finetune`]: fine-tuning the served flows on the owner's images;
//! - [`known_plaintext`]: the attacker's key recovery against the page's own ciphertexts (it
//!   takes no key).

pub mod finetune;
pub mod flows;
pub mod known_plaintext;

use std::cell::RefCell;
use std::rc::Rc;

use veil::burn::tensor::Tensor;
use veil::crypto::keys::MasterKey;
use veil::data::ImageShape;
use veil::schemes::flow_rotation::{CiphertextSettings, EncryptionSettings};

use crate::context::Context;
use crate::device::{Backend, check_batch};
use crate::error::ClientError;
use finetune::{FineTune, FineTuneOptions, FineTunePlan, FineTuneProgress, Slot};
pub use flows::FlowRoute;
use flows::{
    CheckedCiphertexts, EncryptionFailure, Flows, FlowsInfo, NamedFiles, read_all, read_parts,
};
use known_plaintext::KnownPlaintextStep;

/// Ciphertexts per encryption call that WebGPU sessions decrypt again to check them (see
/// [`FlowRotation::apply`]).
pub const ROUND_TRIP_CHECKS: usize = 16;

/// Flow rotation's state in a page.
pub struct FlowRotation {
    ctx: Rc<Context>,
    /// The flows, once loaded. Borrowed briefly, never across an `await`.
    flows: RefCell<Option<Flows>>,
    /// A fine-tuning run of the loaded flows, between calls (taken out while a call runs).
    fine_tune: RefCell<Option<FineTune>>,
}

impl FlowRotation {
    /// No flows loaded yet.
    pub fn new(ctx: Rc<Context>) -> Self {
        Self {
            ctx,
            flows: RefCell::new(None),
            fine_tune: RefCell::new(None),
        }
    }

    /// The loaded family's encryption settings (Algorithm 1's when none is loaded): how a
    /// container that records none was made.
    pub fn loaded_settings(&self) -> EncryptionSettings {
        self.flows
            .borrow()
            .as_ref()
            .map_or_else(EncryptionSettings::legacy, |f| f.manifest().encryption)
    }

    /// Loads a family of flows (its manifest and the files it names), replacing any loaded one.
    pub fn load(
        &self,
        family: &str,
        manifest: &str,
        files: &[(String, Vec<u8>)],
    ) -> Result<FlowsInfo, ClientError> {
        let flows = Flows::load(family, manifest, files, &self.ctx.device)?;
        let info = flows.info();
        *self.flows.borrow_mut() = Some(flows);
        *self.fine_tune.borrow_mut() = None;
        Ok(info)
    }

    /// The loaded flows, if any.
    pub fn info(&self) -> Option<FlowsInfo> {
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
        let parts = flows.apply(key, pixels, route, decrypt, &self.ctx.device)?;
        let len = flows.shape().len();
        Ok((parts, pixels.len() / len, len))
    }

    /// Decrypts ciphertexts that a container says were made with `made_with` (see
    /// [`ContainerSummary::flow`]), refusing with the reason when the loaded flows cannot:
    /// another temperature or cover classes, or route (a) without labels. The rotations are
    /// drawn as the container says, so ciphertexts made under an earlier derivation decrypt.
    pub async fn decrypt(
        &self,
        ciphertexts: &[f32],
        labels: Option<Vec<u32>>,
        made_with: &CiphertextSettings,
    ) -> Result<Vec<f32>, ClientError> {
        let key = self.ctx.key()?;
        let (parts, len) = {
            let mut guard = self.flows.borrow_mut();
            let flows = guard.as_mut().ok_or_else(no_flows)?;
            let (route, rotation) = flows.decryption(made_with, labels)?;
            let parts =
                flows.apply_as(&key, ciphertexts, &route, true, rotation, &self.ctx.device)?;
            (parts, flows.shape().len())
        };
        read_all(parts, ciphertexts.len() / len, len, self.ctx.label()).await
    }

    /// Known-plaintext key recovery against the loaded flows, as an attacker runs it (see
    /// [`known_plaintext`]): the rotation of class `class` (`None`: route b's agnostic
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
        known_plaintext::recover(
            view,
            plain,
            cipher,
            victims,
            shape,
            &self.ctx.device,
            self.ctx.label(),
        )
        .await
    }

    /// Encrypts (or, with `decrypt`, decrypts and re-quantises) a batch `[B, C, H, W]` of the
    /// flows' shape with the loaded key along `route`.
    pub async fn apply(
        &self,
        pixels: &[f32],
        route: &FlowRoute,
        decrypt: bool,
    ) -> Result<Vec<f32>, ClientError> {
        let key = self.ctx.key()?;
        let (parts, n, len) = self.apply_parts(&key, pixels, route, decrypt)?;
        let out = read_all(parts, n, len, self.ctx.label()).await?;
        // On the CPU an overflowing inverse flow gives NaN, which `read_all` refuses. WGSL leaves
        // overflow implementation-defined, so on WebGPU it can give finite garbage that would
        // never decrypt: there, decrypt a spread of the ciphertexts and compare. (Route c's
        // per-class encryptions are for classification only and are never decrypted.)
        if !decrypt && self.ctx.backend == Backend::Webgpu && !matches!(route, FlowRoute::Class(_))
        {
            self.check_round_trip(pixels, &out, route, &key).await?;
        }
        Ok(out)
    }

    /// Encrypts a batch along route (a) or (b) like [`FlowRotation::apply`], but an image the
    /// flows cannot encrypt (its inverse flow overflows) is left out and named instead of failing
    /// the batch: the owner learns the encryptable fraction and keeps the rest.
    pub async fn encrypt_checked(
        &self,
        pixels: &[f32],
        route: &FlowRoute,
    ) -> Result<CheckedCiphertexts, ClientError> {
        if matches!(route, FlowRoute::Class(_)) {
            return Err(ClientError::BadInput(
                "checked encryption is for route (a) or (b) data, not a step of route (c)".into(),
            ));
        }
        let key = self.ctx.key()?;
        let (parts, n, len) = self.apply_parts(&key, pixels, route, false)?;
        let all = read_parts(parts, n, len, self.ctx.label()).await?;
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
        if self.ctx.backend == Backend::Webgpu {
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
            (flows.shape().len(), (flows.bins().max(2) - 1) as f32)
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
        let back = read_parts(parts, picks.len(), len, self.ctx.label()).await?;
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
            (flows.shape(), flows.bins())
        };
        self.ctx.decode_images_as(files, shape, Some(levels))
    }

    /// A dataset container of ciphertexts made with the loaded key (see
    /// [`Flows::container`]).
    pub fn container(
        &self,
        ciphertexts: Vec<f32>,
        labels: Vec<u32>,
        agnostic: bool,
    ) -> Result<Vec<u8>, ClientError> {
        let key = self.ctx.key()?;
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

    // --- fine-tuning the flows ---------------------------------------------------------------

    /// Plans fine-tuning the loaded flows on labelled images of their shape (see
    /// [`finetune`]), replacing any run in progress. Run it with
    /// [`FlowRotation::fine_tune_run`].
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
        let key = self.ctx.key().ok();
        let encryptor = |slot: Slot| {
            let key = key.as_ref()?;
            self.flows
                .borrow_mut()
                .as_mut()?
                .encryptor(key, slot, &self.ctx.device)
        };
        let result = run
            .run(
                max_steps,
                served,
                encryptor,
                &self.ctx.device,
                self.ctx.label(),
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
            flows::FINE_TUNED,
            run.plan_info().total_steps / run.plan_info().flows.len().max(1)
        );
        let bpd: Vec<(Slot, f32)> = run
            .tuned()
            .iter()
            .zip(run.reports())
            .map(|((slot, _), r)| (*slot, r.after.bits_per_dim))
            .collect();
        flows.install(family, &data, run.tuned(), &bpd, &self.ctx.device)
    }

    /// The loaded family as files (manifest text, then the files it names), e.g. to keep
    /// fine-tuned flows in the browser's storage.
    pub fn export(&self) -> Result<(String, NamedFiles), ClientError> {
        self.flows.borrow().as_ref().ok_or_else(no_flows)?.export()
    }
}

fn no_flows() -> ClientError {
    ClientError::BadInput("no flows are loaded: load a family first".into())
}
