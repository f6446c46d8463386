//! The small CNN classifier: defined once, trained natively by `veil train-demo` and by the ML
//! factory, and run in the browser with the same weights.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::{relu, softmax};

use crate::data::ImageShape;
use crate::nn::weights::{self, ModelError};

/// A model that maps a batch of images `[B, C, H, W]` to class logits `[B, K]`.
pub trait Classifier: Module + Clone {
    /// Class logits.
    fn forward(&self, images: Tensor<4>) -> Tensor<2>;

    /// Class probabilities (softmax of the logits).
    fn probabilities(&self, images: Tensor<4>) -> Tensor<2> {
        softmax(self.forward(images), 1)
    }
}

/// Configuration of [`SmallCnn`].
#[derive(Config, Debug, PartialEq)]
pub struct SmallCnnConfig {
    /// Input channels.
    pub channels: usize,
    /// Input height.
    pub height: usize,
    /// Input width.
    pub width: usize,
    /// Number of classes.
    pub num_classes: usize,
    /// Filters of the first convolution; later ones have 2× and 4× as many.
    #[config(default = 16)]
    pub base_filters: usize,
    /// Units of the hidden dense layer.
    #[config(default = 64)]
    pub hidden: usize,
    /// Dropout before the output layer.
    #[config(default = 0.25)]
    pub dropout: f64,
    /// 2×2 max-pools besides the one after the second convolution, for larger images: one after
    /// the first convolution, then one after the third ([`SmallCnnConfig::for_shape`] sets one
    /// from 16 pixels and two from 24; more than two count as two). `None` means none: it is
    /// what a model card written before this field existed reads as, and those models had none.
    pub extra_pools: Option<usize>,
}

/// Three 3×3 convolutions (f, 2f, 4f filters) with ReLU, a 2×2 max-pool after the second (and,
/// for larger images, after the first and the third: [`SmallCnnConfig::extra_pools`]), an
/// adaptive average pool to 2×2, a hidden dense layer and the output layer. Works for any input of
/// at least 4×4 pixels (8×8 digits, 28×28 MNIST, 32×32 CIFAR).
#[derive(Module, Debug)]
pub struct SmallCnn {
    conv1: Conv2d,
    conv2: Conv2d,
    conv3: Conv2d,
    pool: MaxPool2d,
    /// How many of [`SmallCnnConfig::extra_pools`] there are (0, 1 or 2).
    extra_pools: usize,
    squeeze: AdaptiveAvgPool2d,
    hidden: Linear,
    dropout: Dropout,
    output: Linear,
}

impl SmallCnnConfig {
    /// The configuration for images of `shape` and `num_classes` classes, other fields default.
    ///
    /// Images of 16 pixels or more on their short side get an extra 2×2 max-pool, and from 24
    /// pixels a second one. Without them the network sees large images through 3×3 windows at
    /// full resolution, learns slowly and stays far from what it reaches with them. Measured on
    /// the synthetic set (ten classes, 80 training and 20 test images each, noise 0.05, 40
    /// epochs; test accuracy, time on 2 cores): 3×32×32 no extra pool 13.0 % (69 s), one 66.0 % (24 s),
    /// two 80.0 % (24 s); 1×28×28 no extra pool 11.0 % (48 s), one 44.5 % (16 s), two 60.5 % (17 s).
    pub fn for_shape(shape: ImageShape, num_classes: usize) -> Self {
        let side = shape.height.min(shape.width);
        let extra = usize::from(side >= 16) + usize::from(side >= 24);
        Self::new(shape.channels, shape.height, shape.width, num_classes)
            .with_extra_pools((extra > 0).then_some(extra))
    }

    /// The input shape.
    pub fn input_shape(&self) -> ImageShape {
        ImageShape::new(self.channels, self.height, self.width)
    }

    /// A freshly initialised model on `device`.
    pub fn init(&self, device: &Device) -> SmallCnn {
        let f = self.base_filters;
        let conv = |i, o| {
            Conv2dConfig::new([i, o], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        SmallCnn {
            conv1: conv(self.channels, f),
            conv2: conv(f, 2 * f),
            conv3: conv(2 * f, 4 * f),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            extra_pools: self.extra_pools.unwrap_or(0).min(2),
            squeeze: AdaptiveAvgPool2dConfig::new([2, 2]).init(),
            hidden: LinearConfig::new(4 * f * 4, self.hidden).init(device),
            dropout: DropoutConfig::new(self.dropout).init(),
            output: LinearConfig::new(self.hidden, self.num_classes).init(device),
        }
    }

    /// The model with the weights of a burnpack record (as written by [`SmallCnn::to_bytes`]),
    /// refused when they do not fit or hold NaN or infinity.
    pub fn load(&self, bytes: &[u8], device: &Device) -> Result<SmallCnn, ModelError> {
        weights::load(self.init(&Device::flex()), bytes, device)
    }
}

impl SmallCnn {
    /// The weights as a burnpack byte buffer.
    pub fn to_bytes(&self) -> Result<Vec<u8>, ModelError> {
        weights::to_bytes(self)
    }
}

impl SmallCnn {
    /// The width of [`SmallCnn::embed`]'s rows: the hidden layer's units.
    pub fn embedding_width(&self) -> usize {
        self.hidden.weight.val().dims()[1]
    }

    /// The hidden layer's activations `[B, hidden]`: the embedding OWSD's owner uses when this
    /// network is its encoder.
    pub fn embed(&self, images: Tensor<4>) -> Tensor<2> {
        let mut x = relu(self.conv1.forward(images));
        if self.extra_pools >= 1 {
            x = self.pool.forward(x);
        }
        let x = self.pool.forward(relu(self.conv2.forward(x)));
        let mut x = relu(self.conv3.forward(x));
        if self.extra_pools >= 2 {
            x = self.pool.forward(x);
        }
        let x = self.squeeze.forward(x).flatten::<2>(1, 3);
        relu(self.hidden.forward(x))
    }
}

impl Classifier for SmallCnn {
    fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.output
            .forward(self.dropout.forward(self.embed(images)))
    }
}

/// What a shipped model is: its architecture, the data it was trained on, its measured accuracy,
/// and reference outputs that every host must reproduce (`assets/models/<name>.json`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelCard {
    /// Model name (also the weights' file stem).
    pub name: String,
    /// The architecture.
    pub config: SmallCnnConfig,
    /// Class names, by label.
    pub classes: Vec<String>,
    /// The data it was trained on.
    pub dataset: String,
    /// The deterministic split: test fraction and seed.
    pub split: (f64, u64),
    /// Training hyper-parameters.
    pub train: crate::nn::train::TrainOptions,
    /// Top-1 accuracy on the held-out test split, measured natively after training.
    pub test_accuracy: f32,
    /// Warped copies of each training image added to the training set
    /// ([`crate::data::augment::handwriting_jitter`]); 0 for none.
    #[serde(default)]
    pub augment: usize,
    /// Accuracy on handwriting the model never saw ([`HandwritingScore`]); digit models only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handwriting: Option<HandwritingScore>,
    /// Indices (into the test split) of the reference images.
    pub reference_indices: Vec<usize>,
    /// Native logits of the reference images, row-major `[R, K]`: every host must reproduce them.
    pub reference_logits: Vec<f32>,
}

/// The demo model shipped with Veil: the small CNN trained on the embedded digits by
/// `veil train-demo`.
/// A digit model on digits drawn by a script
/// ([`crate::data::handwriting::scripted::draw_digits`]): at several sizes, margins and
/// polarities, a third at 28×28, read the way the home page reads a dropped image.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HandwritingScore {
    /// Drawn digits per class.
    pub per_class: usize,
    /// The drawing seed.
    pub seed: u64,
    /// Read through [`crate::data::handwriting::uci_digit`] (what the pages do).
    pub accuracy: f32,
    /// Read through the plain 8×8 area average (what the home page did before).
    pub area_averaged_accuracy: f32,
    /// Accuracy per class through `uci_digit`.
    pub per_class_accuracy: Vec<f32>,
}

impl HandwritingScore {
    /// The drawn set of the model card: 30 per class, seed 2026.
    pub const PER_CLASS: usize = 30;
    pub const SEED: u64 = 2026;

    /// Measures `model` (8×8 inputs, classes 0..=9 first) on the drawn digits.
    pub fn measure<M: Classifier>(model: &M, device: &Device) -> Self {
        use crate::data::handwriting::{area_average, scripted::draw_digits, uci_digit};
        let drawn = draw_digits(Self::PER_CLASS, Self::SEED);
        let read = |images: Vec<f32>| -> Vec<bool> {
            let x = Tensor::<4>::from_data(TensorData::new(images, [drawn.len(), 1, 8, 8]), device);
            let logits: Vec<f32> = model.forward(x).into_data().iter::<f32>().collect();
            let k = logits.len() / drawn.len();
            crate::nn::train::argmax_rows(&logits, k)
                .iter()
                .zip(&drawn)
                .map(|(&p, d)| p == d.label)
                .collect()
        };
        let normalised = read(
            drawn
                .iter()
                .flat_map(|d| {
                    // The drawn digits always have ink.
                    uci_digit(&d.luma, d.width, d.height)
                        .map(|(digit, _)| digit)
                        .unwrap_or([0.0; 64])
                })
                .collect(),
        );
        let naive = read(
            drawn
                .iter()
                .flat_map(|d| area_average(&d.luma, d.width, d.height))
                .collect(),
        );
        let share = |hits: &[bool]| hits.iter().filter(|&&h| h).count() as f32 / hits.len() as f32;
        Self {
            per_class: Self::PER_CLASS,
            seed: Self::SEED,
            accuracy: share(&normalised),
            area_averaged_accuracy: share(&naive),
            per_class_accuracy: normalised.chunks(Self::PER_CLASS).map(share).collect(),
        }
    }
}

pub mod demo {
    use super::ModelCard;

    /// How `digits-cnn` was trained and tested: `digits().split(SPLIT.0, SPLIT.1)` (20 % test,
    /// seed 7). The black-box lab's membership attack needs to know which images were members.
    pub const SPLIT: (f64, u64) = (0.2, 7);

    /// The model card (JSON).
    pub const CARD_JSON: &str = include_str!("../../../assets/models/digits-cnn.json");
    /// The weights (burnpack).
    pub const WEIGHTS: &[u8] = include_bytes!("../../../assets/models/digits-cnn.bpk");

    /// The parsed model card.
    pub fn card() -> ModelCard {
        serde_json::from_str(CARD_JSON)
            .unwrap_or_else(|e| unreachable!("the shipped model card parses: {e}"))
    }
}
