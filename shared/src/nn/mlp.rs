//! A multilayer perceptron on flattened images: the third architecture of adversarial data
//! encryption's Table 1, beside [`crate::nn::model::SmallCnn`] and
//! [`crate::nn::resnet::SmallResNet`] (the paper uses three unrelated architectures to show
//! that the effect is not one network's quirk; a network without convolutions is the most
//! unlike the CNN base model).

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;

use crate::data::ImageShape;
use crate::nn::model::Classifier;

/// Configuration of [`Mlp`].
#[derive(Config, Debug, PartialEq)]
pub struct MlpConfig {
    /// Values per image (C·H·W).
    pub inputs: usize,
    /// Number of classes.
    pub num_classes: usize,
    /// Units of each of the two hidden layers.
    #[config(default = 256)]
    pub hidden: usize,
    /// Dropout after each hidden layer.
    #[config(default = 0.2)]
    pub dropout: f64,
}

impl MlpConfig {
    /// The configuration for images of `shape`.
    pub fn for_shape(shape: ImageShape, num_classes: usize) -> Self {
        Self::new(shape.len(), num_classes)
    }

    /// A freshly initialised model.
    pub fn init(&self, device: &Device) -> Mlp {
        Mlp {
            first: LinearConfig::new(self.inputs, self.hidden).init(device),
            second: LinearConfig::new(self.hidden, self.hidden).init(device),
            output: LinearConfig::new(self.hidden, self.num_classes).init(device),
            dropout: DropoutConfig::new(self.dropout).init(),
        }
    }
}

/// Flatten, two ReLU hidden layers with dropout, and the output layer.
#[derive(Module, Debug)]
pub struct Mlp {
    first: Linear,
    second: Linear,
    output: Linear,
    dropout: Dropout,
}

impl Classifier for Mlp {
    fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let x = images.flatten::<2>(1, 3);
        let x = self.dropout.forward(relu(self.first.forward(x)));
        let x = self.dropout.forward(relu(self.second.forward(x)));
        self.output.forward(x)
    }
}
