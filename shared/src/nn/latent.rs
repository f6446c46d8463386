//! A classifier of flat feature vectors: the factory's model for route (d) of flow rotation,
//! which classifies the latent `g(c)` that the public flow `g` gives for a ciphertext `c`
//! ([`crate::schemes::flow_rotation::public_latents`]).
//!
//! A convolutional network assumes that neighbouring inputs are related, which a rotated latent
//! does not keep; a multilayer perceptron does not care, and a fixed rotation of its input costs
//! its first linear layer nothing (`W·(A·z) = (W·A)·z`).

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;

use crate::nn::model::Classifier;

/// A two-hidden-layer perceptron on `dims` features.
#[derive(Config, Debug, PartialEq)]
pub struct LatentMlpConfig {
    /// Input features (the latent dimension: C·H·W of the images).
    pub dims: usize,
    /// Classes.
    pub num_classes: usize,
    /// Width of both hidden layers.
    #[config(default = 256)]
    pub hidden: usize,
    #[config(default = 0.3)]
    pub dropout: f64,
}

/// The perceptron of [`LatentMlpConfig`]. Its input is a `[B, C, H, W]` tensor read as `B`
/// vectors of `C·H·W` features (so it trains with [`crate::nn::train::train_classifier`] on a
/// dataset of feature vectors stored as `1×1×dims` "images").
#[derive(Module, Debug)]
pub struct LatentMlp {
    first: Linear,
    second: Linear,
    output: Linear,
    dropout: Dropout,
}

impl LatentMlpConfig {
    pub fn init(&self, device: &Device) -> LatentMlp {
        LatentMlp {
            first: LinearConfig::new(self.dims, self.hidden).init(device),
            second: LinearConfig::new(self.hidden, self.hidden).init(device),
            output: LinearConfig::new(self.hidden, self.num_classes).init(device),
            dropout: DropoutConfig::new(self.dropout).init(),
        }
    }
}

impl Classifier for LatentMlp {
    fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        // No per-sample normalisation: a latent's norm (its likelihood) is a feature.
        let x = images.flatten::<2>(1, 3);
        let x = self.dropout.forward(relu(self.first.forward(x)));
        let x = self.dropout.forward(relu(self.second.forward(x)));
        self.output.forward(x)
    }
}
