//! One-way scrambling by deconvolution in the page (Savransky, Mateless, Katz, §3.2 and §5.4):
//! the scramble key is a random DCGAN-style generator drawn from the owner's key
//! ([`veil::schemes::owsd::ScrambleConfig::init`]), embeddings become scrambled images here, and only those
//! go to the cloud. Every key counts what it has scrambled ([`KeyUsage`]): the page keeps the
//! count in IndexedDB and hands it back when it sets the scrambler up, the client refuses a batch
//! that would pass the budget unless told to, and rotating the key means the next *generation*:
//! a new generator from the same master key (subkey `generator/<g>`), with a fresh count.
//!
//! Use case 4 (paper §4): an ensemble of encoders. Each encoder's embedding is scrambled by its
//! own generator ([`veil::schemes::owsd::generator_label`]) and sent on its own; the internal network reads
//! all embeddings and all the cloud's vectors. A key's count is of images per generator.

use veil::burn::tensor::{Device, Tensor, TensorData, s};
use veil::crypto::keys::{MasterKey, Scheme};
use veil::data::ImageShape;
use veil::schemes::owsd::{BudgetStatus, KeyUsage, ScrambleConfig, ScrambleKey, generator_label};

use crate::error::ClientError;

/// The most encoders of an ensemble.
pub const MAX_ENCODERS: usize = 8;

/// What the page asks for.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScrambleSetup {
    /// The embedding width of each of the owner's encoders (one for a single encoder; several
    /// for an ensemble, in the order of the embeddings in a row).
    pub encoders: Vec<usize>,
    /// The cloud's input: the scrambled image's shape.
    pub output: ImageShape,
    /// Rotations of the key so far.
    pub generation: u32,
}

/// Where a scrambler stands: what the page shows and persists.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ScrambleStatus {
    /// The master key's fingerprint.
    pub fingerprint: String,
    /// Rotations so far.
    pub generation: u32,
    /// Images scrambled by this generation, its budget and warning level.
    pub usage: KeyUsage,
    /// The first generator's architecture.
    pub config: ScrambleConfig,
    /// The embedding width of each encoder, one generator each.
    pub encoders: Vec<usize>,
}

/// A scrambled batch.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Scrambled {
    /// `[B·E, C, H, W]` in (0, 1): image `i`'s scramble by encoder `e`'s generator at `i·E + e`,
    /// so that the cloud's vectors, in the same order, are rows `[cloud₁ ‖ … ‖ cloud_E]`.
    #[serde(skip)]
    pub pixels: Vec<f32>,
    /// The count after this batch (persist it).
    pub usage: KeyUsage,
    /// Set past the warning level: what to tell the user.
    pub warning: Option<String>,
}

/// One generation of a key's scramble generator, with its count.
pub struct Scrambler {
    fingerprint: String,
    generation: u32,
    keys: Vec<ScrambleKey>,
    usage: KeyUsage,
}

impl Scrambler {
    /// The generator of `master` for `setup`, counting from `usage` (the persisted count;
    /// `KeyUsage::new(budget)` for a fresh generation).
    pub fn new(
        master: &MasterKey,
        setup: ScrambleSetup,
        usage: KeyUsage,
        device: &Device,
    ) -> Result<Self, ClientError> {
        if usage.budget == 0 || usage.warn_at > usage.budget {
            return Err(ClientError::BadInput(format!(
                "a key budget must be positive with its warning level within it (budget {}, warning at {})",
                usage.budget, usage.warn_at
            )));
        }
        if setup.encoders.is_empty() || setup.encoders.len() > MAX_ENCODERS {
            return Err(ClientError::BadInput(format!(
                "use 1 to {MAX_ENCODERS} encoders, not {}",
                setup.encoders.len()
            )));
        }
        if setup.encoders.contains(&0) {
            return Err(ClientError::BadInput(
                "an embedding must have at least one value".into(),
            ));
        }
        let keys = setup
            .encoders
            .iter()
            .enumerate()
            .map(|(e, &width)| {
                ScrambleConfig::new(width, setup.output)
                    .init(
                        &master.subkey(Scheme::Owsd, &generator_label(setup.generation, e)),
                        device,
                    )
                    .map_err(|e| ClientError::BadInput(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            fingerprint: master.fingerprint().to_string(),
            generation: setup.generation,
            keys,
            usage,
        })
    }

    /// The master key's fingerprint it was made from.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// What the page shows and persists.
    pub fn status(&self) -> ScrambleStatus {
        ScrambleStatus {
            fingerprint: self.fingerprint.clone(),
            generation: self.generation,
            usage: self.usage,
            config: *self.keys[0].config(),
            encoders: self.keys.iter().map(|k| k.config().embedding).collect(),
        }
    }

    /// Counts a batch of embedding rows (`[B, Σ widths]` row-major: each row the encoders'
    /// embeddings side by side) against the budget, refusing one that would pass it unless
    /// `force`, and scrambles each embedding with its encoder's generator (a lazy tensor
    /// `[B·E, C, H, W]`, ordered as [`Scrambled::pixels`]; read it back asynchronously). The count
    /// is taken before the images exist, so a refused batch scrambles nothing and a counted one
    /// is never lost from the count.
    pub fn scramble(
        &mut self,
        embeddings: &[f32],
        force: bool,
        device: &Device,
    ) -> Result<(Tensor<4>, Option<String>), ClientError> {
        let widths: Vec<usize> = self.keys.iter().map(|k| k.config().embedding).collect();
        let d: usize = widths.iter().sum();
        if embeddings.is_empty() || !embeddings.len().is_multiple_of(d) {
            return Err(ClientError::BadInput(format!(
                "expected a whole number of {d}-value embeddings, got {} values",
                embeddings.len()
            )));
        }
        if let Some(i) = embeddings.iter().position(|v| !v.is_finite()) {
            return Err(ClientError::BadInput(format!(
                "embedding {} has a value that is not finite",
                i / d
            )));
        }
        let n = embeddings.len() / d;
        let status = self
            .usage
            .reserve(n as u64, force)
            .map_err(|e| ClientError::BadInput(e.to_string()))?;
        let warning = match status {
            BudgetStatus::Ok => None,
            BudgetStatus::Warn { remaining } => Some(format!(
                "this scramble key has scrambled {} of its {} images ({remaining} left): plan to rotate it",
                self.usage.used, self.usage.budget
            )),
        };
        let x = Tensor::<2>::from_data(TensorData::new(embeddings.to_vec(), [n, d]), device);
        let mut start = 0;
        let mut parts = Vec::with_capacity(self.keys.len());
        for (key, w) in self.keys.iter().zip(&widths) {
            let part = key
                .scramble(x.clone().slice(s![.., start..start + w]))
                .map_err(|e| ClientError::BadInput(e.to_string()))?;
            parts.push(part);
            start += w;
        }
        let images = if parts.len() == 1 {
            parts.remove(0)
        } else {
            let [_, c, h, w] = parts[0].dims();
            let e = parts.len();
            Tensor::stack::<5>(parts, 1).reshape([n * e, c, h, w])
        };
        Ok((images, warning))
    }

    /// The count so far.
    pub fn usage(&self) -> KeyUsage {
        self.usage
    }
}
