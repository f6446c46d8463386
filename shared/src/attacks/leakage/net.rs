//! The networks gradient-leakage attacks are run against, with a **hand-written backward pass**
//! made of ordinary tensor operations.
//!
//! Why by hand: gradient matching (DLG, iDLG, Inverting Gradients) minimises a distance between
//! the victim's parameter gradient and the parameter gradient of a dummy input, so the attacker
//! differentiates *through* a gradient. burn 0.22 has no double backward (an autodiff device
//! over an autodiff device is one device, and `grad()` returns an untracked tensor: see
//! `shared/TOOLCHAIN.md`). [`AttackedNet::param_gradients`] therefore writes the backward pass
//! of these small networks — linear, stride-1 convolution, sigmoid, softmax cross-entropy — with
//! differentiable operations (matmul, conv2d, conv_transpose2d), so one autodiff graph covers
//! forward, backward and the matching loss. Tests check it against burn's own autodiff
//! (first order) and against finite differences (second order).
//!
//! The architectures follow DLG (Zhu, Liu, Han, NeurIPS 2019, §4): sigmoid activations (smooth,
//! so the matching loss is twice differentiable), no strides, batch 1, weights drawn uniformly
//! from ±`init_scale` (DLG's `weights_init`).

use burn::prelude::*;
use burn::tensor::activation::{log_softmax, sigmoid, softmax};
use burn::tensor::module::{conv_transpose2d, conv2d};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use burn::tensor::{FloatDType, TensorData};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use crate::data::ImageShape;

/// Which network is attacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum AttackedArch {
    /// DLG's LeNet without strides: `convs` 5×5 convolutions of `channels` filters ("same"
    /// padding, sigmoid after each), then one linear layer to the classes.
    Lenet {
        /// Filters per convolution.
        channels: usize,
        /// Number of convolutions.
        convs: usize,
    },
    /// A linear layer with bias, a sigmoid, and a linear output layer: the setting of the
    /// analytic attack on a first fully connected layer ([`super::analytic_first_layer`]).
    Mlp {
        /// Hidden units.
        hidden: usize,
    },
}

impl AttackedArch {
    /// DLG's LeNet at its default width (12 filters, 3 convolutions).
    pub const LENET: Self = Self::Lenet {
        channels: 12,
        convs: 3,
    };
    /// The default MLP (128 hidden units).
    pub const MLP: Self = Self::Mlp { hidden: 128 };

    /// The short name used by the CLI and the API (`lenet`, `mlp`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Lenet { .. } => "lenet",
            Self::Mlp { .. } => "mlp",
        }
    }

    /// The default architecture of a short name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "lenet" => Some(Self::LENET),
            "mlp" => Some(Self::MLP),
            _ => None,
        }
    }
}

/// Configuration of an [`AttackedNet`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AttackedNetConfig {
    /// The architecture.
    pub arch: AttackedArch,
    /// Input images.
    pub shape: ImageShape,
    /// Output classes.
    pub classes: usize,
    /// Weights and biases are uniform in `[-init_scale, init_scale]` (DLG uses 0.5).
    pub init_scale: f32,
    /// Seed of the weights (ChaCha20, so the same on every host).
    pub seed: u64,
}

/// Convolutions are 5×5 with 2 pixels of zero padding and stride 1 ("same").
const KERNEL: usize = 5;
const PAD: usize = 2;

#[derive(Debug, Clone)]
struct Conv {
    /// `[out, in, 5, 5]`.
    weight: Tensor<4>,
    bias: Tensor<1>,
}

#[derive(Debug, Clone)]
struct Linear {
    /// `[out, in]` (PyTorch's layout: `z = u·Wᵀ + b`).
    weight: Tensor<2>,
    bias: Tensor<1>,
}

/// A network under attack: convolutions, then linear layers, sigmoid between all layers, softmax
/// cross-entropy on the logits. Its weights are constants (never trained): the attacker knows
/// them, as in federated learning, where the server sends the model to the clients.
#[derive(Debug, Clone)]
pub struct AttackedNet {
    config: AttackedNetConfig,
    convs: Vec<Conv>,
    linears: Vec<Linear>,
}

/// The parameter gradient of one training step, flattened per parameter in the network's order
/// (per layer: weight, then bias; convolutions first).
#[derive(Debug, Clone)]
pub struct ParamGrads(pub Vec<Tensor<1>>);

impl ParamGrads {
    /// The gradient as plain numbers, one vector per parameter.
    pub fn to_vecs(&self) -> Vec<Vec<f32>> {
        self.0
            .iter()
            .map(|g| g.clone().into_data().iter::<f32>().collect())
            .collect()
    }

    /// Moves the gradient to `device` (as constants: nothing is tracked).
    pub fn to_device(&self, device: &Device) -> Self {
        Self(
            self.0
                .iter()
                .map(|g| Tensor::from_data(g.clone().into_data(), device))
                .collect(),
        )
    }
}

fn uniform(rng: &mut ChaCha20Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale)
        .collect()
}

/// One-hot rows for `labels` (`[N, classes]`).
pub fn one_hot(labels: &[usize], classes: usize, device: &Device) -> Tensor<2> {
    let mut v = vec![0.0f32; labels.len() * classes];
    for (r, &l) in labels.iter().enumerate() {
        v[r * classes + l] = 1.0;
    }
    Tensor::from_data(TensorData::new(v, [labels.len(), classes]), device)
}

impl AttackedNetConfig {
    /// The configuration for images of `shape` and `classes` classes, DLG's initialisation.
    pub fn new(arch: AttackedArch, shape: ImageShape, classes: usize, seed: u64) -> Self {
        Self {
            arch,
            shape,
            classes,
            init_scale: 0.5,
            seed,
        }
    }

    /// Number of scalar parameters.
    pub fn num_params(&self) -> usize {
        let s = self.shape;
        match self.arch {
            AttackedArch::Lenet { channels, convs } => {
                let mut n = 0;
                let mut cin = s.channels;
                for _ in 0..convs {
                    n += channels * cin * KERNEL * KERNEL + channels;
                    cin = channels;
                }
                n + self.classes * (cin * s.height * s.width) + self.classes
            }
            AttackedArch::Mlp { hidden } => {
                hidden * s.len() + hidden + self.classes * hidden + self.classes
            }
        }
    }

    /// The network with its seeded weights on `device`.
    pub fn init(&self, device: &Device) -> AttackedNet {
        let mut rng = ChaCha20Rng::seed_from_u64(self.seed);
        let scale = self.init_scale;
        let s = self.shape;
        let mut convs = Vec::new();
        let mut linears = Vec::new();
        let linear = |rng: &mut ChaCha20Rng, out: usize, inp: usize| Linear {
            weight: Tensor::from_data(
                TensorData::new(uniform(rng, out * inp, scale), [out, inp]),
                device,
            ),
            bias: Tensor::from_data(TensorData::new(uniform(rng, out, scale), [out]), device),
        };
        match self.arch {
            AttackedArch::Lenet { channels, convs: n } => {
                let mut cin = s.channels;
                for _ in 0..n {
                    convs.push(Conv {
                        weight: Tensor::from_data(
                            TensorData::new(
                                uniform(&mut rng, channels * cin * KERNEL * KERNEL, scale),
                                [channels, cin, KERNEL, KERNEL],
                            ),
                            device,
                        ),
                        bias: Tensor::from_data(
                            TensorData::new(uniform(&mut rng, channels, scale), [channels]),
                            device,
                        ),
                    });
                    cin = channels;
                }
                linears.push(linear(&mut rng, self.classes, cin * s.height * s.width));
            }
            AttackedArch::Mlp { hidden } => {
                linears.push(linear(&mut rng, hidden, s.len()));
                linears.push(linear(&mut rng, self.classes, hidden));
            }
        }
        AttackedNet {
            config: *self,
            convs,
            linears,
        }
    }
}

fn conv_options() -> ConvOptions<2> {
    ConvOptions::new([1, 1], [PAD, PAD], [1, 1], 1)
}

/// What the forward pass keeps for the backward pass.
struct Trace {
    /// The input of each convolution (the image, then sigmoid outputs).
    conv_inputs: Vec<Tensor<4>>,
    /// The input of each linear layer (`[N, F]`).
    linear_inputs: Vec<Tensor<2>>,
    logits: Tensor<2>,
}

impl AttackedNet {
    /// The configuration.
    pub fn config(&self) -> &AttackedNetConfig {
        &self.config
    }

    /// The parameters in the order of [`ParamGrads`], flattened.
    pub fn params(&self) -> Vec<Tensor<1>> {
        let mut out = Vec::new();
        for c in &self.convs {
            out.push(c.weight.clone().flatten(0, 3));
            out.push(c.bias.clone());
        }
        for l in &self.linears {
            out.push(l.weight.clone().flatten(0, 1));
            out.push(l.bias.clone());
        }
        out
    }

    /// The same network with every parameter cast to `dtype` (f64 for finite-difference checks).
    pub fn cast(self, dtype: FloatDType) -> Self {
        self.map_params(&|t| t.cast(dtype), &|t| t.cast(dtype), &|t| t.cast(dtype))
    }

    /// The same network on `device`.
    pub fn to_device(&self, device: &Device) -> Self {
        self.map_params(
            &|t| Tensor::from_data(t.into_data(), device),
            &|t| Tensor::from_data(t.into_data(), device),
            &|t| Tensor::from_data(t.into_data(), device),
        )
    }

    /// The same network with every parameter marked as requiring a gradient.
    fn tracked(&self) -> Self {
        self.map_params(
            &Tensor::require_grad,
            &Tensor::require_grad,
            &Tensor::require_grad,
        )
    }

    /// Applies `f4` to convolution weights, `f2` to linear weights and `f1` to biases.
    fn map_params(
        &self,
        f4: &dyn Fn(Tensor<4>) -> Tensor<4>,
        f2: &dyn Fn(Tensor<2>) -> Tensor<2>,
        f1: &dyn Fn(Tensor<1>) -> Tensor<1>,
    ) -> Self {
        Self {
            config: self.config,
            convs: self
                .convs
                .iter()
                .map(|c| Conv {
                    weight: f4(c.weight.clone()),
                    bias: f1(c.bias.clone()),
                })
                .collect(),
            linears: self
                .linears
                .iter()
                .map(|l| Linear {
                    weight: f2(l.weight.clone()),
                    bias: f1(l.bias.clone()),
                })
                .collect(),
        }
    }

    fn trace(&self, x: Tensor<4>) -> Trace {
        let mut conv_inputs = Vec::with_capacity(self.convs.len());
        let mut h = x;
        for c in &self.convs {
            conv_inputs.push(h.clone());
            h = sigmoid(conv2d(
                h,
                c.weight.clone(),
                Some(c.bias.clone()),
                conv_options(),
            ));
        }
        let mut u = h.flatten::<2>(1, 3);
        let mut linear_inputs = Vec::with_capacity(self.linears.len());
        let last = self.linears.len() - 1;
        let mut logits = None;
        for (j, l) in self.linears.iter().enumerate() {
            linear_inputs.push(u.clone());
            let z = u.matmul(l.weight.clone().transpose()) + l.bias.clone().unsqueeze_dim(0);
            if j == last {
                logits = Some(z.clone());
            }
            u = sigmoid(z);
        }
        Trace {
            conv_inputs,
            linear_inputs,
            logits: logits.unwrap_or(u),
        }
    }

    /// Class logits `[N, classes]` of images `[N, C, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.trace(x).logits
    }

    /// The training loss: mean over the batch of the cross-entropy between `targets` (rows of
    /// class probabilities, one-hot for hard labels) and the softmax of the logits.
    pub fn loss(&self, x: Tensor<4>, targets: Tensor<2>) -> Tensor<1> {
        let n = x.dims()[0] as f64;
        (log_softmax(self.forward(x), 1) * targets).sum().neg() / n
    }

    /// The parameter gradient of [`AttackedNet::loss`], written out layer by layer with
    /// differentiable tensor operations (see the module documentation): when `x` or `targets`
    /// are tracked by an autodiff device, the result is differentiable with respect to them.
    ///
    /// Backward rules used (batch `N`, `δ` the gradient at a layer's output before its
    /// activation):
    /// - softmax cross-entropy: `δ = (softmax(z) − p)/N` (rows of `p` sum to 1);
    /// - linear `z = u·Wᵀ + b`: `∂W = δᵀ·u`, `∂b = Σₙ δ`, `∂u = δ·W`;
    /// - sigmoid `a = σ(z)`: `∂z = ∂a ⊙ a ⊙ (1 − a)`;
    /// - stride-1 convolution: `∂W[o,i] = Σₙ x̃[n,i] ⋆ δ[n,o]` (a convolution of the input with
    ///   the batch and channel axes swapped, by `δ` as the kernel), `∂b = Σ δ`, and
    ///   `∂x = conv_transpose(δ, W)`.
    pub fn param_gradients(&self, x: Tensor<4>, targets: Tensor<2>) -> ParamGrads {
        let n = x.dims()[0];
        let t = self.trace(x);
        let mut delta = (softmax(t.logits, 1) - targets) / n as f64;
        let mut linear_grads = Vec::with_capacity(2 * self.linears.len());
        for (j, l) in self.linears.iter().enumerate().rev() {
            let u = t.linear_inputs[j].clone();
            linear_grads.push(delta.clone().sum_dim(0).squeeze_dim::<1>(0));
            linear_grads.push(delta.clone().transpose().matmul(u.clone()).flatten(0, 1));
            let du = delta.matmul(l.weight.clone());
            // `u` is a sigmoid output except for the network's input (an MLP's first layer).
            delta = if j > 0 || !self.convs.is_empty() {
                du * u.clone() * (u.neg() + 1.0)
            } else {
                du
            };
        }
        linear_grads.reverse(); // (bias, weight) pairs reversed → (weight, bias) in order.
        let mut conv_grads = Vec::with_capacity(2 * self.convs.len());
        if !self.convs.is_empty() {
            let c = self.convs.last().map_or(0, |l| l.weight.dims()[0]);
            let (h, w) = (self.config.shape.height, self.config.shape.width);
            let mut d4: Tensor<4> = delta.reshape([n, c, h, w]);
            for (i, conv) in self.convs.iter().enumerate().rev() {
                let input = t.conv_inputs[i].clone();
                // [Cin, N, H, W] ⋆ [Cout, N, H, W] → [Cin, Cout, k, k] → [Cout, Cin, k, k].
                let dw = conv2d(
                    input.clone().swap_dims(0, 1),
                    d4.clone().swap_dims(0, 1),
                    None,
                    conv_options(),
                )
                .swap_dims(0, 1);
                let db = d4
                    .clone()
                    .sum_dim(3)
                    .sum_dim(2)
                    .sum_dim(0)
                    .flatten::<1>(0, 3);
                conv_grads.push(db);
                conv_grads.push(dw.flatten(0, 3));
                if i > 0 {
                    let dx = conv_transpose2d(
                        d4,
                        conv.weight.clone(),
                        None,
                        ConvTransposeOptions::new([1, 1], [PAD, PAD], [0, 0], [1, 1], 1),
                    );
                    d4 = dx * input.clone() * (input.neg() + 1.0);
                } else {
                    break;
                }
            }
            conv_grads.reverse();
        }
        conv_grads.extend(linear_grads);
        ParamGrads(conv_grads)
    }

    /// The parameter gradient computed by burn's autodiff (what a real training client computes
    /// and shares). The tensors must live on an autodiff device; the result is detached (inner
    /// device).
    pub fn autodiff_gradients(&self, x: Tensor<4>, targets: Tensor<2>) -> ParamGrads {
        let tracked = self.tracked();
        let grads = tracked.loss(x, targets).backward();
        let mut out = Vec::with_capacity(2 * (self.convs.len() + self.linears.len()));
        for c in &tracked.convs {
            out.push(grad_or_zeros(&c.weight, &grads).flatten(0, 3));
            out.push(grad_or_zeros(&c.bias, &grads));
        }
        for l in &tracked.linears {
            out.push(grad_or_zeros(&l.weight, &grads).flatten(0, 1));
            out.push(grad_or_zeros(&l.bias, &grads));
        }
        ParamGrads(out)
    }
}

fn grad_or_zeros<const D: usize>(p: &Tensor<D>, grads: &burn::tensor::Gradients) -> Tensor<D> {
    p.grad(grads)
        .unwrap_or_else(|| p.clone().inner().zeros_like())
}
