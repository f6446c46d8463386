//! One-way scrambling by deconvolution in the page (Savransky, Mateless, Katz): [`Owsd`] holds
//! the loaded key's scramble generator, the owner's imported encoders and the trained internal
//! inference network.
//!
//! - [`scrambler`]: the scramble key (a random generator) and its budget (§3.2, §5.4);
//! - [`iin`]: the internal inference network that reads the true label back (§3.3).

pub mod iin;
pub mod scrambler;

use std::cell::RefCell;
use std::rc::Rc;

use veil::burn::tensor::Tensor;
use veil::data::images_tensor;
use veil::nn::model::SmallCnn;
use veil::schemes::owsd::encoder::EncoderInfo;
use veil::schemes::owsd::{IinReport, IinTrainOptions, KeyUsage};

use crate::context::Context;
use crate::device::{check_batch, read_vec};
use crate::error::ClientError;
pub use iin::Iin;
pub use scrambler::{MAX_ENCODERS, ScrambleSetup, ScrambleStatus, Scrambled, Scrambler};

/// An imported encoder, as the page lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EncoderSummary {
    /// Its index for [`Owsd::embed`] (0 is the demo model's layer).
    pub index: usize,
    /// The file's name.
    pub name: String,
    /// What the file holds.
    pub info: EncoderInfo,
}

/// OWSD's state in a page.
pub struct Owsd {
    ctx: Rc<Context>,
    /// The scramble generator of the loaded key, once set up. Borrowed briefly.
    scrambler: RefCell<Option<Scrambler>>,
    /// The internal inference network, once trained (on the CPU). Borrowed briefly.
    iin: RefCell<Option<Iin>>,
    /// The owner's own encoders, imported in this visit (encoder `i + 1`; encoder 0 is the
    /// demo model). Borrowed briefly.
    encoders: RefCell<Vec<(String, SmallCnn, EncoderInfo)>>,
}

impl Owsd {
    /// Nothing set up yet.
    pub fn new(ctx: Rc<Context>) -> Self {
        Self {
            ctx,
            scrambler: RefCell::new(None),
            iin: RefCell::new(None),
            encoders: RefCell::new(Vec::new()),
        }
    }

    /// Sets up the loaded key's scramble generator (generation `setup.generation`), counting from
    /// `usage` — the count the page kept for this key and generation, or `KeyUsage::new(budget)`.
    pub fn scramble_begin(
        &self,
        setup: ScrambleSetup,
        usage: KeyUsage,
    ) -> Result<ScrambleStatus, ClientError> {
        let key = self.ctx.key()?;
        let scrambler = Scrambler::new(&key, setup, usage, &self.ctx.device)?;
        let status = scrambler.status();
        *self.scrambler.borrow_mut() = Some(scrambler);
        Ok(status)
    }

    /// The scrambler's status, if one is set up for the loaded key.
    pub fn scramble_status(&self) -> Option<ScrambleStatus> {
        let fp = self.ctx.fingerprint()?;
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
        let fp = self.ctx.fingerprint().ok_or(ClientError::NoKey)?;
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
            let (images, warning) = s.scramble(embeddings, force, &self.ctx.device)?;
            (images, warning, s.usage())
        };
        let pixels = read_vec(images, self.ctx.label()).await?;
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
    /// images of the demo model's shape, and lists it for [`Owsd::embed`].
    pub fn import_encoder(&self, name: &str, bytes: &[u8]) -> Result<EncoderSummary, ClientError> {
        let (model, info) = veil::schemes::owsd::encoder::import_encoder(
            bytes,
            self.ctx.input_shape(),
            &self.ctx.device,
        )
        .map_err(|e| {
            ClientError::BadInput(format!("{name} is not an encoder Veil can use: {e}"))
        })?;
        let mut encoders = self.encoders.borrow_mut();
        if encoders.len() + 1 >= MAX_ENCODERS {
            return Err(ClientError::BadInput(format!(
                "at most {} encoders can be imported",
                MAX_ENCODERS - 1
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
        let shape = self.ctx.input_shape();
        check_batch(pixels, shape)?;
        if encoders.is_empty() {
            return Err(ClientError::BadInput("choose at least one encoder".into()));
        }
        let x = images_tensor(pixels, shape, &self.ctx.device);
        let mut parts = Vec::with_capacity(encoders.len());
        for &e in encoders {
            let embedding = if e == 0 {
                self.ctx.model.embed(x.clone())
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
        read_vec(rows, self.ctx.label()).await
    }
}
