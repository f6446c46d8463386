//! A small ResNet (He et al., "Deep Residual Learning for Image Recognition", 2016, §4.2's CIFAR
//! variant, narrowed): a 3×3 stem, three stages of one basic block each (f, 2f, 4f filters, the
//! last two with stride 2), global average pooling and a linear layer. The second classifier of
//! flow rotation's Table 1, beside [`crate::nn::model::SmallCnn`].

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;

use crate::data::ImageShape;
use crate::nn::model::Classifier;

/// Configuration of [`SmallResNet`].
#[derive(Config, Debug, PartialEq)]
pub struct SmallResNetConfig {
    /// Input channels.
    pub channels: usize,
    /// Number of classes.
    pub num_classes: usize,
    /// Filters of the first stage.
    #[config(default = 16)]
    pub base_filters: usize,
}

impl SmallResNetConfig {
    /// The configuration for images of `shape` and `num_classes` classes.
    pub fn for_shape(shape: ImageShape, num_classes: usize) -> Self {
        Self::new(shape.channels, num_classes)
    }

    /// A freshly initialised model.
    pub fn init(&self, device: &Device) -> SmallResNet {
        let f = self.base_filters;
        SmallResNet {
            stem: conv3(self.channels, f, 1, device),
            stem_norm: BatchNormConfig::new(f).init(device),
            blocks: vec![
                BasicBlock::new(f, f, 1, device),
                BasicBlock::new(f, 2 * f, 2, device),
                BasicBlock::new(2 * f, 4 * f, 2, device),
            ],
            pool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            output: LinearConfig::new(4 * f, self.num_classes).init(device),
        }
    }
}

fn conv3(i: usize, o: usize, stride: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([i, o], [3, 3])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_bias(false)
        .init(device)
}

/// Two 3×3 convolutions with batch norm and a shortcut (a strided 1×1 projection when the shape
/// changes).
#[derive(Module, Debug)]
pub struct BasicBlock {
    conv1: Conv2d,
    norm1: BatchNorm,
    conv2: Conv2d,
    norm2: BatchNorm,
    projection: Option<(Conv2d, BatchNorm)>,
}

impl BasicBlock {
    fn new(i: usize, o: usize, stride: usize, device: &Device) -> Self {
        let projection = (i != o || stride != 1).then(|| {
            (
                Conv2dConfig::new([i, o], [1, 1])
                    .with_stride([stride, stride])
                    .with_bias(false)
                    .init(device),
                BatchNormConfig::new(o).init(device),
            )
        });
        Self {
            conv1: conv3(i, o, stride, device),
            norm1: BatchNormConfig::new(o).init(device),
            conv2: conv3(o, o, 1, device),
            norm2: BatchNormConfig::new(o).init(device),
            projection,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = relu(self.norm1.forward(self.conv1.forward(x.clone())));
        let h = self.norm2.forward(self.conv2.forward(h));
        let shortcut = match &self.projection {
            Some((conv, norm)) => norm.forward(conv.forward(x)),
            None => x,
        };
        relu(h + shortcut)
    }
}

/// The small ResNet. See the module documentation.
#[derive(Module, Debug)]
pub struct SmallResNet {
    stem: Conv2d,
    stem_norm: BatchNorm,
    blocks: Vec<BasicBlock>,
    pool: AdaptiveAvgPool2d,
    output: Linear,
}

impl Classifier for SmallResNet {
    fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let mut x = relu(self.stem_norm.forward(self.stem.forward(images)));
        for block in &self.blocks {
            x = block.forward(x);
        }
        self.output.forward(self.pool.forward(x).flatten::<2>(1, 3))
    }
}
