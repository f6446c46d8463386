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

use veil::burn::tensor::activation::softmax;
use veil::burn::tensor::{Device, Tensor, TensorData, s};
use veil::crypto::keys::{MasterKey, Scheme};
use veil::data::ImageShape;
use veil::schemes::owsd::{
    BudgetStatus, IinReport, IinTrainOptions, InternalInferenceNet, InternalInferenceNetConfig,
    KeyUsage, ScrambleConfig, ScrambleKey, cloud_features, generator_label, train_internal_net,
};

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

/// The internal inference network (paper §3.3) in the page: trained on the owner's labelled
/// sample, `[embedding ‖ cloud probability vector]` → the owner's label. It is small, and
/// [`train_internal_net`] reads its validation accuracy synchronously, so it always runs on the
/// CPU (flex), whatever the page's device.
pub struct Iin {
    net: InternalInferenceNet,
    embedding: usize,
    cloud: usize,
    classes: Vec<String>,
}

impl Iin {
    /// Trains a network on `n` rows: `embeddings` (`[n, e]`), `cloud` (`[n, k]`), `labels`
    /// in `0..classes.len()`.
    pub fn train(
        embeddings: &[f32],
        cloud: &[f32],
        labels: &[u32],
        classes: Vec<String>,
        options: IinTrainOptions,
    ) -> Result<(Self, IinReport), ClientError> {
        let n = labels.len();
        if n < 4 {
            return Err(ClientError::BadInput(format!(
                "the internal network needs at least 4 labelled images, got {n}"
            )));
        }
        let (e, k) = widths(embeddings, cloud, n)?;
        if let Some(bad) = labels.iter().find(|&&l| l as usize >= classes.len()) {
            return Err(ClientError::BadInput(format!(
                "label {bad} is not one of the {} classes",
                classes.len()
            )));
        }
        let device = Device::flex().autodiff();
        device.seed(options.seed);
        let net = InternalInferenceNetConfig::new(e, k, classes.len()).init(&device);
        let (net, report) = train_internal_net(
            net,
            &rows(embeddings, cloud, n, e, k),
            labels,
            options,
            &device,
        );
        Ok((
            Self {
                net,
                embedding: e,
                cloud: k,
                classes,
            },
            report,
        ))
    }

    /// Labels and softmax probabilities (`[n, classes]`) of new rows.
    pub fn predict(
        &self,
        embeddings: &[f32],
        cloud: &[f32],
    ) -> Result<(Vec<u32>, Vec<f32>), ClientError> {
        let n = embeddings.len() / self.embedding.max(1);
        let (e, k) = widths(embeddings, cloud, n)?;
        if (e, k) != (self.embedding, self.cloud) {
            return Err(ClientError::BadInput(format!(
                "the network was trained on {}-value embeddings and {}-value cloud vectors, not {e} and {k}",
                self.embedding, self.cloud
            )));
        }
        let device = Device::flex();
        let x = Tensor::<2>::from_data(
            TensorData::new(rows(embeddings, cloud, n, e, k), [n, e + k]),
            &device,
        );
        let probs: Vec<f32> = softmax(self.net.forward(x), 1)
            .into_data()
            .iter::<f32>()
            .collect();
        let labels = veil::nn::train::argmax_rows(&probs, self.classes.len());
        Ok((labels, probs))
    }
}

/// The widths of `n` embeddings and cloud vectors, checked.
fn widths(embeddings: &[f32], cloud: &[f32], n: usize) -> Result<(usize, usize), ClientError> {
    if n == 0 || !embeddings.len().is_multiple_of(n) || !cloud.len().is_multiple_of(n) {
        return Err(ClientError::BadInput(format!(
            "{} embedding values and {} cloud values do not split into {n} images",
            embeddings.len(),
            cloud.len()
        )));
    }
    if embeddings.iter().chain(cloud).any(|v| !v.is_finite()) {
        return Err(ClientError::BadInput(
            "an embedding or cloud vector has a value that is not finite".into(),
        ));
    }
    Ok((embeddings.len() / n, cloud.len() / n))
}

/// `[embedding ‖ cloud features]` rows: the cloud's probabilities enter as
/// [`cloud_features`], as in `veil experiment owsd`.
fn rows(embeddings: &[f32], cloud: &[f32], n: usize, e: usize, k: usize) -> Vec<f32> {
    veil::schemes::owsd::iin_rows(embeddings, e, &cloud_features(cloud), k, n)
}
