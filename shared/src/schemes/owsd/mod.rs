//! One-way scrambling by deconvolution (OWSD; Savransky, Mateless, Katz, "Secure Machine
//! Learning in the Cloud Using One Way Scrambling by Deconvolution").
//!
//! The owner embeds an image with an encoder, a **randomly initialised, never trained**
//! DCGAN-style generator — the [`ScrambleKey`], whose weights are the secret — turns the
//! embedding into a scrambled image, the untrusted cloud classifies the scrambled image as it
//! would any image, and a small [`InternalInferenceNet`] maps `[embedding ‖ cloud probabilities]`
//! to the owner's label (paper §3–4). Only scrambled images leave the owner.
//!
//! The generator's weights are drawn from the key's OWSD subkey with ChaCha20 and a Box–Muller
//! transform computed in f64, so the same key scrambles the same way natively and in wasm.
//! [`KeyUsage`] counts the images a key has scrambled: the paper bounds a key at about 9,000
//! submitted images (§5.4) before an attacker with pairs could learn to invert it.
//!
//! Why this file is over 600 lines: about a fifth is its unit tests; the rest is the scheme's three
//! parts (scramble key, budget, internal network), which share their types.

pub mod encoder;

use burn::module::Module;
use burn::nn::{BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::module::conv_transpose2d;
use burn::tensor::ops::ConvTransposeOptions;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use crate::crypto::keys::SubKey;
use crate::data::ImageShape;

/// The subkey label of the scramble generator of key generation `generation` for encoder
/// `encoder` of an ensemble: `generator` for generation 0 and the first encoder (the one `veil
/// experiment owsd` uses), `generator/<g>` after `g` rotations, and `…/encoder/<e>` for the other
/// encoders of an ensemble (paper §4, use case 4: each encoding is scrambled and sent on its
/// own, so each gets its own generator).
pub fn generator_label(generation: u32, encoder: usize) -> String {
    let base = if generation == 0 {
        "generator".to_string()
    } else {
        format!("generator/{generation}")
    };
    if encoder == 0 {
        base
    } else {
        format!("{base}/encoder/{encoder}")
    }
}

/// Why a scramble key cannot be built or used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum OwsdError {
    /// The output shape is not one the generator can make.
    #[error(
        "the scrambled image must be square with a side that is 4 × a power of two (8, 16, 32, …), not {0}"
    )]
    Shape(ImageShape),
    /// The embedding has the wrong width.
    #[error("the embedding has {got} values; the key expects {want}")]
    Embedding {
        /// Received.
        got: usize,
        /// Expected.
        want: usize,
    },
    /// The key has scrambled its budget of images.
    #[error(
        "this scramble key has scrambled {used} images and its budget is {budget}: rotate the key \
         (a new generator, and the internal network retrained on your labelled sample), or raise \
         the budget knowingly"
    )]
    BudgetExhausted {
        /// Images scrambled so far.
        used: u64,
        /// The budget.
        budget: u64,
    },
    /// Weights that do not fit the generator's architecture.
    #[error("the weights do not fit the generator: {0}")]
    Weights(String),
}

/// The architecture of a scramble generator (the key is the weights, drawn from a subkey).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScrambleConfig {
    /// Width of the owner's embedding.
    pub embedding: usize,
    /// The scrambled image (the cloud's input shape).
    pub output: ImageShape,
    /// Channels of the first feature map; halved at every upsampling.
    pub base_channels: usize,
}

impl ScrambleConfig {
    /// DCGAN's layout: a linear map to a `base × 4 × 4`… map, then 4×4 stride-2 transposed
    /// convolutions doubling the side until it reaches the output.
    pub fn new(embedding: usize, output: ImageShape) -> Self {
        Self {
            embedding,
            output,
            base_channels: 64,
        }
    }

    /// Upsampling stages, and the side of the first feature map (4, or 2 for 8×8 outputs).
    fn stages(&self) -> Result<(usize, usize), OwsdError> {
        let side = self.output.height;
        if side != self.output.width
            || side < 8
            || !side.is_multiple_of(4)
            || !(side / 4).is_power_of_two()
        {
            return Err(OwsdError::Shape(self.output));
        }
        let start = if side == 8 { 2 } else { 4 };
        Ok(((side / start).trailing_zeros() as usize, start))
    }

    /// The generator of `key` on `device`.
    pub fn init(&self, key: &SubKey, device: &Device) -> Result<ScrambleKey, OwsdError> {
        let (stages, start) = self.stages()?;
        let mut rng = key.rng();
        // He-normal weights keep the activations' scale through the ReLUs, so an untrained
        // generator without batch statistics still makes high-contrast images (DCGAN's N(0, 0.02)
        // would shrink them to a constant grey without its batch normalisation).
        let mut normal = |n: usize, std: f64| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
                    let u2: f64 = rng.random::<f64>();
                    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos() * std) as f32
                })
                .collect()
        };
        let c0 = self.base_channels;
        let first = c0 * start * start;
        let project = Tensor::<2>::from_data(
            TensorData::new(
                normal(self.embedding * first, (2.0 / self.embedding as f64).sqrt()),
                [self.embedding, first],
            ),
            device,
        );
        let mut deconvs = Vec::with_capacity(stages);
        let mut cin = c0;
        for s in 0..stages {
            let cout = if s + 1 == stages {
                self.output.channels
            } else {
                (cin / 2).max(8)
            };
            // Each output pixel of a 4×4, stride-2 transposed convolution sums 4 taps per input
            // channel.
            let std = (2.0 / (cin as f64 * 4.0)).sqrt();
            deconvs.push(Tensor::<4>::from_data(
                TensorData::new(normal(cin * cout * 16, std), [cin, cout, 4, 4]),
                device,
            ));
            cin = cout;
        }
        Ok(ScrambleKey {
            config: *self,
            project,
            deconvs,
        })
    }
}

/// A scramble key: the weights of a random DCGAN-style generator (paper §3.2). Never trained.
#[derive(Debug, Clone)]
pub struct ScrambleKey {
    config: ScrambleConfig,
    project: Tensor<2>,
    /// `[in, out, 4, 4]` each.
    deconvs: Vec<Tensor<4>>,
}

impl ScrambleKey {
    /// The configuration.
    pub fn config(&self) -> &ScrambleConfig {
        &self.config
    }

    /// Scrambled images `[B, C, H, W]` in (0, 1) from embeddings `[B, embedding]`: ReLU between
    /// layers, a per-image standardisation before the final sigmoid (so every scrambled image
    /// uses the whole range, whatever the embedding's scale).
    pub fn scramble(&self, embeddings: Tensor<2>) -> Result<Tensor<4>, OwsdError> {
        let [b, d] = embeddings.dims();
        if d != self.config.embedding {
            return Err(OwsdError::Embedding {
                got: d,
                want: self.config.embedding,
            });
        }
        let s = self.config.output;
        Ok(sigmoid(generator_logits(
            self.project.clone(),
            &self.deconvs,
            &self.config,
            embeddings,
        ))
        .reshape([b, s.channels, s.height, s.width]))
    }

    /// The weights: the projection `[embedding, base·side²]` and the transposed convolutions'
    /// kernels `[in, out, 4, 4]`, first to last. They are the secret.
    pub fn weights(&self) -> (Tensor<2>, Vec<Tensor<4>>) {
        (self.project.clone(), self.deconvs.clone())
    }

    /// A generator of `config`'s architecture with the given weights (shaped as
    /// [`ScrambleKey::weights`] returns them): for instance weights an attacker fitted.
    pub fn from_weights(
        config: ScrambleConfig,
        project: Tensor<2>,
        deconvs: Vec<Tensor<4>>,
    ) -> Result<Self, OwsdError> {
        let (stages, side) = config.stages()?;
        let first = config.base_channels * side * side;
        if project.dims() != [config.embedding, first] || deconvs.len() != stages {
            return Err(OwsdError::Weights(format!(
                "a projection of {:?} and {} kernels for a generator of {} stages from {} values",
                project.dims(),
                deconvs.len(),
                stages,
                config.embedding
            )));
        }
        Ok(Self {
            config,
            project,
            deconvs,
        })
    }
}

/// The generator's layers (paper §3.2) before the final sigmoid: `project`, then ReLU and a 4×4
/// stride-2 transposed convolution per kernel of `deconvs`, then a per-image standardisation.
/// Returns `[B, C·H·W]`. [`ScrambleKey::scramble`] and an attacker fitting the weights
/// ([`crate::attacks::owsd_generator`]) both run this.
pub fn generator_logits(
    project: Tensor<2>,
    deconvs: &[Tensor<4>],
    config: &ScrambleConfig,
    embeddings: Tensor<2>,
) -> Tensor<2> {
    let [b, _] = embeddings.dims();
    let first = project.dims()[1];
    let c0 = config.base_channels;
    let start = ((first / c0) as f64).sqrt().round() as usize;
    let mut h: Tensor<4> = embeddings.matmul(project).reshape([b, c0, start, start]);
    for w in deconvs {
        h = relu(h);
        h = conv_transpose2d(
            h,
            w.clone(),
            None,
            ConvTransposeOptions::new([2, 2], [1, 1], [0, 0], [1, 1], 1),
        );
    }
    let flat: Tensor<2> = h.flatten(1, 3);
    let mean = flat.clone().mean_dim(1);
    let std = (flat.clone() - mean.clone())
        .powi_scalar(2)
        .mean_dim(1)
        .sqrt()
        .add_scalar(1e-6);
    (flat - mean) / std
}

/// How many images a scramble key has scrambled, against its budget (paper §5.4: about 9,000
/// submitted images before the autoencoder attack starts to reconstruct originals).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyUsage {
    /// Images scrambled so far.
    pub used: u64,
    /// Refuse past this many (unless overridden).
    pub budget: u64,
    /// Warn from this many on.
    pub warn_at: u64,
}

/// What [`KeyUsage::reserve`] says about a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetStatus {
    /// Well within the budget.
    Ok,
    /// Allowed, but past the warning level: `remaining` images are left.
    Warn {
        /// Images left within the budget.
        remaining: u64,
    },
}

impl KeyUsage {
    /// The paper's bound, 9,000 images, with a warning at 80 %.
    pub const DEFAULT_BUDGET: u64 = 9_000;

    /// A fresh key's usage with `budget` (warning at 80 % of it).
    pub fn new(budget: u64) -> Self {
        Self {
            used: 0,
            budget,
            warn_at: budget / 5 * 4,
        }
    }

    /// Counts `n` more images, or refuses if that would pass the budget and `force` is false.
    pub fn reserve(&mut self, n: u64, force: bool) -> Result<BudgetStatus, OwsdError> {
        let after = self.used.saturating_add(n);
        if after > self.budget && !force {
            return Err(OwsdError::BudgetExhausted {
                used: self.used,
                budget: self.budget,
            });
        }
        self.used = after;
        Ok(if after >= self.warn_at {
            BudgetStatus::Warn {
                remaining: self.budget.saturating_sub(after),
            }
        } else {
            BudgetStatus::Ok
        })
    }
}

/// How a cloud's probability vector enters the IIN: log-probabilities floored at 10⁻⁶ and scaled
/// to about [−1, 0]. A confident cloud's probabilities are nearly one-hot, and their logarithms
/// keep the ranking of the other classes, which is what distinguishes scrambled images.
pub fn cloud_features(probabilities: &[f32]) -> Vec<f32> {
    probabilities
        .iter()
        .map(|p| p.max(1e-6).ln() / 6.0)
        .collect()
}

/// The internal network's input rows `[a_i ‖ b_i]` for `n` images: `a` has rows of `wa` values
/// (the owner's embeddings), `b` rows of `wb` (the cloud's [`cloud_features`]). The page and
/// `veil experiment owsd` build the rows through this function.
pub fn iin_rows(a: &[f32], wa: usize, b: &[f32], wb: usize, n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n * (wa + wb));
    for i in 0..n {
        out.extend_from_slice(&a[i * wa..(i + 1) * wa]);
        out.extend_from_slice(&b[i * wb..(i + 1) * wb]);
    }
    out
}

/// Configuration of an [`InternalInferenceNet`].
#[derive(Config, Debug, PartialEq)]
pub struct InternalInferenceNetConfig {
    /// Width of the owner's embedding (0 to use the cloud vector alone).
    pub embedding: usize,
    /// Width of the cloud's output vector (0 to use the embedding alone).
    pub cloud: usize,
    /// The owner's classes.
    pub classes: usize,
    /// Hidden units.
    #[config(default = 128)]
    pub hidden: usize,
    /// Dropout after the hidden layer.
    #[config(default = 0.3)]
    pub dropout: f64,
}

impl InternalInferenceNetConfig {
    /// A freshly initialised network on `device`.
    pub fn init(&self, device: &Device) -> InternalInferenceNet {
        InternalInferenceNet {
            hidden: LinearConfig::new(self.embedding + self.cloud, self.hidden).init(device),
            norm: BatchNormConfig::new(self.hidden).init(device),
            dropout: DropoutConfig::new(self.dropout).init(),
            output: LinearConfig::new(self.hidden, self.classes).init(device),
        }
    }
}

/// The Internal Inference Network (paper §3.3): one hidden dense layer with batch normalisation
/// and dropout, from `[embedding ‖ cloud probability vector]` to the owner's label.
#[derive(Module, Debug)]
pub struct InternalInferenceNet {
    hidden: Linear,
    norm: BatchNorm,
    dropout: Dropout,
    output: Linear,
}

impl InternalInferenceNet {
    /// Logits `[B, classes]` of inputs `[B, embedding + cloud]`.
    pub fn forward(&self, input: Tensor<2>) -> Tensor<2> {
        let [b, _] = input.dims();
        let h = self.hidden.forward(input);
        let [_, f] = h.dims();
        let h = self.norm.forward(h.reshape([b, f, 1])).reshape([b, f]);
        self.output.forward(self.dropout.forward(relu(h)))
    }
}

/// Settings of [`train_internal_net`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IinTrainOptions {
    /// Most epochs.
    pub max_epochs: usize,
    /// Stop after this many epochs without a better validation accuracy (early stopping).
    pub patience: usize,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Adam's learning rate.
    pub learning_rate: f64,
    /// Share of the labelled sample held out for early stopping (at least one row).
    pub validation: f64,
    /// Seed of the split, the shuffles and dropout.
    pub seed: u64,
}

impl Default for IinTrainOptions {
    fn default() -> Self {
        Self {
            max_epochs: 300,
            patience: 30,
            batch_size: 32,
            learning_rate: 1e-3,
            validation: 0.2,
            seed: 0,
        }
    }
}

/// What IIN training reached.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct IinReport {
    /// Epochs run.
    pub epochs: usize,
    /// The epoch whose weights were kept.
    pub best_epoch: usize,
    /// Validation accuracy of the kept weights.
    pub validation_accuracy: f32,
}

/// Trains the IIN with Adam on rows `inputs` (`[N, width]`, row-major) and `labels`, keeping the
/// weights of the epoch with the best validation accuracy (paper §4: Adam, early stopping).
/// `device` must be an autodiff device; the returned network is in inference mode.
pub fn train_internal_net(
    mut net: InternalInferenceNet,
    inputs: &[f32],
    labels: &[u32],
    options: IinTrainOptions,
    device: &Device,
) -> (InternalInferenceNet, IinReport) {
    use burn::nn::loss::CrossEntropyLossConfig;
    use burn::optim::{AdamConfig, GradientsParams};
    let n = labels.len();
    let width = inputs.len() / n.max(1);
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = ChaCha20Rng::seed_from_u64(options.seed);
    order.shuffle(&mut rng);
    let n_val =
        ((n as f64 * options.validation).round() as usize).clamp(1, n.saturating_sub(1).max(1));
    let (val, train) = order.split_at(n_val.min(n));
    let rows = |idx: &[usize]| -> (Tensor<2>, Tensor<1, Int>) {
        let mut x = Vec::with_capacity(idx.len() * width);
        for &i in idx {
            x.extend_from_slice(&inputs[i * width..(i + 1) * width]);
        }
        let y: Vec<i64> = idx.iter().map(|&i| i64::from(labels[i])).collect();
        (
            Tensor::from_data(TensorData::new(x, [idx.len(), width]), device),
            Tensor::from_data(TensorData::new(y, [idx.len()]), device),
        )
    };
    let (val_x, val_y) = rows(val);
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let mut optimizer = AdamConfig::new().init();
    let mut best = (net.clone().valid(), 0usize, -1.0f32);
    let mut train: Vec<usize> = train.to_vec();
    let mut epochs = 0;
    for epoch in 1..=options.max_epochs {
        epochs = epoch;
        train.shuffle(&mut rng);
        for chunk in train.chunks(options.batch_size.max(2)) {
            if chunk.len() < 2 {
                continue; // batch normalisation needs two rows
            }
            device.seed(options.seed ^ ((epoch as u64) << 20) ^ chunk[0] as u64);
            let (x, y) = rows(chunk);
            let loss = loss_fn.forward(net.forward(x), y);
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            net = optimizer.step(options.learning_rate, net, grads);
        }
        let eval = net.clone().valid();
        let predicted = eval
            .forward(val_x.clone().inner())
            .argmax(1)
            .squeeze_dim::<1>(1);
        let hits = predicted
            .equal(val_y.clone().inner())
            .int()
            .sum()
            .into_scalar::<i64>();
        let acc = hits as f32 / val.len().max(1) as f32;
        if acc > best.2 {
            best = (eval, epoch, acc);
        } else if epoch - best.1 >= options.patience {
            break;
        }
    }
    (
        best.0,
        IinReport {
            epochs,
            best_epoch: best.1,
            validation_accuracy: best.2,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keys::{MasterKey, Scheme};

    fn embeddings(device: &Device) -> Tensor<2> {
        let v: Vec<f32> = (0..4 * 16)
            .map(|i| ((i * 13 % 7) as f32 - 3.0) / 3.0)
            .collect();
        Tensor::from_data(TensorData::new(v, [4, 16]), device)
    }

    #[test]
    fn the_scramble_is_deterministic_per_key_and_differs_across_keys() {
        let device = Device::flex();
        let config = ScrambleConfig::new(16, ImageShape::new(1, 8, 8));
        let k1 = MasterKey::from_bytes([1; 32]).subkey(Scheme::Owsd, "generator");
        let k2 = MasterKey::from_bytes([2; 32]).subkey(Scheme::Owsd, "generator");
        let scramble = |key| -> Vec<f32> {
            config
                .init(key, &device)
                .unwrap()
                .scramble(embeddings(&device))
                .unwrap()
                .into_data()
                .iter::<f32>()
                .collect()
        };
        let (a, b, c) = (scramble(&k1), scramble(&k1), scramble(&k2));
        assert_eq!(a, b);
        assert_eq!(a.len(), 4 * 64);
        let diff = a.iter().zip(&c).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32;
        assert!(diff > 0.1, "two keys scramble alike: mean |Δ| {diff}");
        // High contrast: the per-image standardisation spreads every image over (0, 1).
        let spread =
            a.iter().fold(0.0f32, |m, v| m.max(*v)) - a.iter().fold(1.0f32, |m, v| m.min(*v));
        assert!(spread > 0.8, "spread {spread}");
    }

    #[test]
    fn shapes_and_widths_are_checked() {
        let device = Device::flex();
        let key = MasterKey::from_bytes([3; 32]).subkey(Scheme::Owsd, "generator");
        for side in [8, 16, 32] {
            let k = ScrambleConfig::new(16, ImageShape::new(3, side, side))
                .init(&key, &device)
                .unwrap();
            assert_eq!(
                k.scramble(embeddings(&device)).unwrap().dims(),
                [4, 3, side, side]
            );
        }
        assert!(matches!(
            ScrambleConfig::new(16, ImageShape::new(1, 12, 12)).init(&key, &device),
            Err(OwsdError::Shape(_))
        ));
        let k = ScrambleConfig::new(8, ImageShape::new(1, 8, 8))
            .init(&key, &device)
            .unwrap();
        assert_eq!(
            k.scramble(embeddings(&device)).err(),
            Some(OwsdError::Embedding { got: 16, want: 8 })
        );
    }

    #[test]
    fn the_budget_warns_then_refuses_unless_forced() {
        let mut u = KeyUsage::new(100);
        assert_eq!(u.reserve(50, false), Ok(BudgetStatus::Ok));
        assert_eq!(
            u.reserve(40, false),
            Ok(BudgetStatus::Warn { remaining: 10 })
        );
        assert_eq!(
            u.reserve(11, false),
            Err(OwsdError::BudgetExhausted {
                used: 90,
                budget: 100
            })
        );
        assert_eq!(u.used, 90, "a refused batch is not counted");
        assert_eq!(u.reserve(11, true), Ok(BudgetStatus::Warn { remaining: 0 }));
        assert_eq!(u.used, 101);
    }

    /// With an informative input (a noisy one-hot of the label) the IIN learns the labels, and
    /// early stopping keeps a good epoch.
    #[test]
    fn the_internal_network_learns_and_stops_early() {
        let device = Device::flex().autodiff();
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let (n, width, classes) = (300usize, 12usize, 4usize);
        let labels: Vec<u32> = (0..n).map(|i| (i % classes) as u32).collect();
        let inputs: Vec<f32> = (0..n * width)
            .map(|k| {
                let (i, j) = (k / width, k % width);
                let signal = if j == labels[i] as usize { 1.5 } else { 0.0 };
                signal + rng.random::<f32>() - 0.5
            })
            .collect();
        let net = InternalInferenceNetConfig::new(width, 0, classes).init(&device);
        let options = IinTrainOptions {
            max_epochs: 200,
            patience: 10,
            ..IinTrainOptions::default()
        };
        let (net, report) = train_internal_net(net, &inputs, &labels, options, &device);
        assert!(report.validation_accuracy >= 0.95, "{report:?}");
        assert!(
            report.epochs < 200,
            "early stopping never fired: {report:?}"
        );
        let x = Tensor::<2>::from_data(
            TensorData::new(inputs[..width * 8].to_vec(), [8, width]),
            &Device::flex(),
        );
        let net = net.to_device(&Device::flex());
        let predicted: Vec<i64> = net.forward(x).argmax(1).into_data().iter::<i64>().collect();
        let right = predicted
            .iter()
            .zip(&labels)
            .filter(|(p, l)| **p == i64::from(**l))
            .count();
        assert!(right >= 7, "{predicted:?}");
    }

    #[test]
    fn the_internal_network_maps_inputs_to_logits() {
        let device = Device::flex();
        let net = InternalInferenceNetConfig::new(16, 20, 10).init(&device);
        let x = Tensor::<2>::ones([5, 36], &device);
        assert_eq!(net.forward(x).dims(), [5, 10]);
    }
}
