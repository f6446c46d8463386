//! Adversarial data encryption in the page (Hu et al., §3.1 and §4.1): [`Adversarial`] holds the
//! loaded key's encryptor and a base model in training.
//!
//! - [`encryptor`]: targeted L2 PGD toward the key's class correspondence, on the page's device;
//! - [`base_model`]: training the owner's base model in the page.

pub mod base_model;
pub mod encryptor;

use std::cell::RefCell;
use std::rc::Rc;

use veil::data::ImageShape;
use veil::nn::model::demo;

use crate::context::Context;
use crate::error::ClientError;
pub use base_model::{BaseTrainOptions, BaseTrainProgress, BaseTrainer};
pub use encryptor::{AdversarialBatch, AdversarialEncryptor, AdversarialSetup, AdversarialStatus};

/// Adversarial data encryption's state in a page.
pub struct Adversarial {
    ctx: Rc<Context>,
    /// The encryptor for the loaded key, once set up. Borrowed briefly (cloned out before an
    /// `await`).
    encryptor: RefCell<Option<AdversarialEncryptor>>,
    /// A base model being trained, between calls (taken out while a call runs).
    base_trainer: RefCell<Option<BaseTrainer>>,
}

impl Adversarial {
    /// Nothing set up yet.
    pub fn new(ctx: Rc<Context>) -> Self {
        Self {
            ctx,
            encryptor: RefCell::new(None),
            base_trainer: RefCell::new(None),
        }
    }

    /// Sets up adversarial encryption under the loaded key with the owner's base model
    /// (burnpack bytes of a SmallCnn for the setup's shape and classes), or the demo model when
    /// `base` is `None` and the setup is the digits' (see [`AdversarialEncryptor::new`]).
    pub fn begin(
        &self,
        setup: AdversarialSetup,
        base: Option<&[u8]>,
    ) -> Result<AdversarialStatus, ClientError> {
        let key = self.ctx.key()?;
        let encryptor = AdversarialEncryptor::new(
            &key,
            setup,
            base,
            (&self.ctx.card.config, demo::WEIGHTS),
            &self.ctx.device,
        )?;
        let status = encryptor.status();
        *self.encryptor.borrow_mut() = Some(encryptor);
        Ok(status)
    }

    /// The encryptor set up for the loaded key (a clone: it is used across `await`s).
    fn encryptor(&self) -> Result<AdversarialEncryptor, ClientError> {
        let fp = self.ctx.fingerprint().ok_or(ClientError::NoKey)?;
        self.encryptor
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
    pub async fn encrypt(
        &self,
        pixels: &[f32],
        labels: &[u32],
    ) -> Result<AdversarialBatch, ClientError> {
        let encryptor = self.encryptor()?;
        encryptor
            .encrypt(pixels, labels, &self.ctx.device, self.ctx.label())
            .await
    }

    /// A dataset container of encrypted images (see [`AdversarialEncryptor::container`]).
    pub fn container(&self, encrypted: Vec<f32>, labels: Vec<u32>) -> Result<Vec<u8>, ClientError> {
        self.encryptor()?.container(encrypted, labels)
    }

    /// Plans training a base model on the owner's labelled images (see [`BaseTrainer::new`]);
    /// replaces any run in progress.
    pub fn train_begin(
        &self,
        pixels: Vec<f32>,
        labels: Vec<u32>,
        shape: ImageShape,
        classes: Vec<String>,
        options: BaseTrainOptions,
    ) -> Result<BaseTrainProgress, ClientError> {
        let trainer = BaseTrainer::new(pixels, labels, shape, classes, options, &self.ctx.device)?;
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
    pub async fn train_run(&self, max_steps: usize) -> Result<BaseTrainProgress, ClientError> {
        let mut trainer = self.take_trainer()?;
        let progress = trainer
            .run(max_steps, &self.ctx.device, self.ctx.label())
            .await?;
        *self.base_trainer.borrow_mut() = Some(trainer);
        Ok(progress)
    }

    /// Drops the run in progress.
    pub fn train_cancel(&self) {
        *self.base_trainer.borrow_mut() = None;
    }

    /// The trained base model (burnpack bytes, for [`Adversarial::begin`] or to keep).
    pub async fn base_model(&self) -> Result<Vec<u8>, ClientError> {
        let trainer = self.take_trainer()?;
        let bytes = trainer.model_bytes(self.ctx.label()).await;
        *self.base_trainer.borrow_mut() = Some(trainer);
        bytes
    }
}
