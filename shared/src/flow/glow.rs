//! Glow (Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1×1 Convolutions", 2018), the
//! flow that flow rotation ("Secure Data Sharing With Flow Model", Wu, Du, Yuan, §4 and §6) uses
//! to map images to a Gaussian-like latent.
//!
//! Architecture (Glow §3): `levels` levels; each squeezes (2×2 space → 4× channels), applies
//! `steps` flow steps — [`ActNorm`] → [`InvConv1x1`] → [`AffineCoupling`] — and, except the last,
//! splits off half of the channels, modelled by a Gaussian whose mean and scale a zero-initialised
//! convolution predicts from the other half (the learned prior). The last level's prior is a learned
//! per-position mean and scale ("learn_top").
//!
//! Every map is exactly invertible and returns its log-determinant.
//!
//! The latent used by flow rotation is the *standardised* latent ε = (z − μ)/σ of every level,
//! which the model makes N(0, I); [`Glow::encode`] flattens it in a fixed order — level 0 first,
//! and within a level channel-major, then rows, then columns (C order of `[C, H, W]`) — so that a
//! rotation of the whole vector is well defined; [`Glow::decode`] reads the same order.
//!
//! Why this file is over 600 lines: a quarter is its unit tests; the rest is Glow's layers, which
//! are only used together.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::{relu, sigmoid};
use nalgebra::DMatrix;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use crate::crypto::haar::HaarRotation;
use crate::data::ImageShape;
use crate::nn::weights::ModelError;

/// Configuration of [`Glow`].
#[derive(Config, Debug, PartialEq)]
pub struct GlowConfig {
    /// Image channels.
    pub channels: usize,
    /// Image height (divisible by 2^levels).
    pub height: usize,
    /// Image width (divisible by 2^levels).
    pub width: usize,
    /// Levels L: the scales of the multi-scale architecture (not the data's quantisation bins,
    /// which are [`Preprocess::bins`]).
    #[config(default = 2)]
    pub levels: usize,
    /// Flow steps K per level.
    #[config(default = 4)]
    pub steps: usize,
    /// Hidden channels of the coupling networks.
    #[config(default = 64)]
    pub hidden: usize,
    /// Additive coupling (Glow's cheaper option) instead of affine.
    #[config(default = false)]
    pub additive: bool,
    /// Seed of the invertible convolutions' initial rotations.
    #[config(default = 0)]
    pub seed: u64,
}

impl GlowConfig {
    /// The configuration for images of `shape`, other fields default.
    pub fn for_shape(shape: ImageShape) -> Self {
        Self::new(shape.channels, shape.height, shape.width)
    }

    /// Checks the shape against the number of levels.
    pub fn validate(&self) -> Result<(), String> {
        let f = 1usize << self.levels;
        if self.levels == 0 || self.steps == 0 {
            return Err("Glow needs at least one level and one step".into());
        }
        if !self.height.is_multiple_of(f) || !self.width.is_multiple_of(f) {
            return Err(format!(
                "a {}-level Glow needs height and width divisible by {f}, not {}×{}",
                self.levels, self.height, self.width
            ));
        }
        Ok(())
    }

    /// The shape `[C, H, W]` of the flow state inside each level (after its squeeze) and of the
    /// latent it emits.
    pub fn level_shapes(&self) -> Vec<(ImageShape, ImageShape)> {
        let (mut c, mut h, mut w) = (self.channels, self.height, self.width);
        let mut out = Vec::new();
        for l in 0..self.levels {
            c *= 4;
            h /= 2;
            w /= 2;
            let inner = ImageShape::new(c, h, w);
            if l + 1 < self.levels {
                c /= 2;
                out.push((inner, ImageShape::new(c, h, w)));
            } else {
                out.push((inner, inner));
            }
        }
        out
    }

    /// The flow with the weights of `bytes` (from [`Glow::to_bytes`]), checked for NaN and
    /// infinity on the CPU before moving to `device`.
    pub fn load(&self, bytes: &[u8], device: &Device) -> Result<Glow, ModelError> {
        crate::nn::weights::load(self.init(&Device::flex()), bytes, device)
    }

    /// A freshly initialised flow. Call [`Glow::data_init`] on a batch before training.
    pub fn init(&self, device: &Device) -> Glow {
        let mut rng = ChaCha20Rng::seed_from_u64(self.seed);
        let shapes = self.level_shapes();
        let levels = shapes
            .iter()
            .enumerate()
            .map(|(l, (inner, _))| GlowLevel {
                steps: (0..self.steps)
                    .map(|_| FlowStep {
                        actnorm: ActNorm::new(inner.channels, device),
                        invconv: InvConv1x1::new(inner.channels, &mut rng, device),
                        coupling: AffineCoupling::new(
                            inner.channels,
                            self.hidden,
                            self.additive,
                            device,
                        ),
                    })
                    .collect(),
                prior: (l + 1 < self.levels)
                    .then(|| ZeroConv2d::new(inner.channels / 2, inner.channels, device)),
            })
            .collect();
        let (top, _) = shapes[shapes.len() - 1];
        Glow {
            levels,
            top_prior: Param::from_tensor(Tensor::zeros(
                [1, 2 * top.channels, top.height, top.width],
                device,
            )),
            latent_shapes: shapes.iter().map(|(_, out)| *out).collect(),
        }
    }
}

/// Activation normalisation (Glow §3.1): a per-channel affine map `y = (x + b)·exp(s)`,
/// initialised from data so that the first batch has zero mean and unit variance per channel.
#[derive(Module, Debug)]
pub struct ActNorm {
    bias: Param<Tensor<4>>,
    log_scale: Param<Tensor<4>>,
}

impl ActNorm {
    fn new(channels: usize, device: &Device) -> Self {
        Self {
            bias: Param::from_tensor(Tensor::zeros([1, channels, 1, 1], device)),
            log_scale: Param::from_tensor(Tensor::zeros([1, channels, 1, 1], device)),
        }
    }

    /// Sets the bias and scale from `x`'s per-channel statistics (data-dependent init).
    fn data_init(self, x: &Tensor<4>) -> Self {
        let [_, c, _, _] = x.dims();
        let flat = x.clone().detach().swap_dims(0, 1).reshape([c as i64, -1]);
        let mean = flat.clone().mean_dim(1);
        let std = (flat - mean.clone()).powi_scalar(2).mean_dim(1).sqrt();
        let bias = mean.neg().reshape([1, c, 1, 1]);
        let log_scale = (std + 1e-6).log().neg().reshape([1, c, 1, 1]);
        // The new values must stay trainable: `Param::map` takes the gradient requirement from
        // the value it is given, and statistics of a detached batch require none.
        Self {
            bias: self
                .bias
                .map(|old| bias.set_require_grad(old.is_require_grad())),
            log_scale: self
                .log_scale
                .map(|old| log_scale.set_require_grad(old.is_require_grad())),
        }
    }

    fn forward(&self, x: Tensor<4>) -> (Tensor<4>, Tensor<1>) {
        let [b, _, h, w] = x.dims();
        let s = self.log_scale.val();
        let y = (x + self.bias.val()) * s.clone().exp();
        let logdet = s.sum().mul_scalar((h * w) as f32).expand([b]);
        (y, logdet)
    }

    /// [`ActNorm::forward`] without the log-determinant.
    fn transform(&self, x: Tensor<4>) -> Tensor<4> {
        (x + self.bias.val()) * self.log_scale.val().exp()
    }

    fn inverse(&self, y: Tensor<4>) -> Tensor<4> {
        y * self.log_scale.val().neg().exp() - self.bias.val()
    }
}

/// The invertible 1×1 convolution (Glow §3.2), LU-parametrised: `W = P·L·(U + diag(sign·exp(log_s)))`
/// with `P` a fixed permutation, `L` unit lower-triangular, `U` strictly upper-triangular;
/// initialised to a random rotation. `log|det W| = Σ log_s`, so the log-determinant costs O(C).
#[derive(Module, Debug)]
pub struct InvConv1x1 {
    /// Fixed: a constant, not a parameter. It is not recorded with the weights: `GlowConfig::init`
    /// regenerates it from the config's seed, identically, before a record is loaded.
    permutation: Tensor<2>,
    lower: Param<Tensor<2>>,
    upper: Param<Tensor<2>>,
    log_s: Param<Tensor<1>>,
    /// Fixed, like `permutation`.
    sign_s: Tensor<1>,
}

fn from_rows(rows: &DMatrix<f64>, device: &Device) -> Tensor<2> {
    let (r, c) = rows.shape();
    let data: Vec<f32> = (0..r)
        .flat_map(|i| (0..c).map(move |j| (i, j)))
        .map(|(i, j)| rows[(i, j)] as f32)
        .collect();
    Tensor::from_data(TensorData::new(data, [r, c]), device)
}

impl InvConv1x1 {
    fn new(channels: usize, rng: &mut ChaCha20Rng, device: &Device) -> Self {
        let rot = HaarRotation::sample(rng, channels);
        let w = DMatrix::from_row_slice(channels, channels, &rot.entries());
        // nalgebra: P·W = L·U, so W = Pᵀ·L·U.
        let lu = w.lu();
        let (p, l, u) = lu.unpack();
        let mut perm = DMatrix::<f64>::identity(channels, channels);
        p.inv_permute_rows(&mut perm);
        let diag: Vec<f64> = (0..channels).map(|i| u[(i, i)]).collect();
        let mut strict_u = u.clone();
        for i in 0..channels {
            strict_u[(i, i)] = 0.0;
        }
        let mut strict_l = l.clone();
        for i in 0..channels {
            strict_l[(i, i)] = 0.0;
        }
        let vec1 =
            |v: Vec<f32>| Tensor::<1>::from_data(TensorData::new(v.clone(), [v.len()]), device);
        Self {
            permutation: from_rows(&perm, device),
            lower: Param::from_tensor(from_rows(&strict_l, device)),
            upper: Param::from_tensor(from_rows(&strict_u, device)),
            log_s: Param::from_tensor(vec1(diag.iter().map(|d| d.abs().ln() as f32).collect())),
            sign_s: vec1(diag.iter().map(|d| d.signum() as f32).collect()),
        }
    }

    fn factors(&self) -> (Tensor<2>, Tensor<2>, Tensor<2>, Tensor<1>) {
        let lower = self.lower.val().tril(-1);
        let upper = self.upper.val().triu(1);
        let s = self.sign_s.clone() * self.log_s.val().exp();
        (self.permutation.clone(), lower, upper, s)
    }

    /// The weight matrix W.
    pub fn weight(&self) -> Tensor<2> {
        let (p, lower, upper, s) = self.factors();
        let c = s.dims()[0];
        let device = s.device();
        let l = lower + Tensor::eye(c, &device);
        let u = upper + Tensor::<2>::eye(c, &device) * s.unsqueeze_dim::<2>(0);
        p.matmul(l).matmul(u)
    }

    /// W⁻¹ = (U + D)⁻¹·L⁻¹·Pᵀ, computed with tensor operations only (so on any device, and
    /// differentiable): the inverse of a unit triangular `I + N` is the finite product
    /// `(I − N)(I + N²)(I + N⁴)…`, exact because `N` is nilpotent.
    pub fn inverse_weight(&self) -> Tensor<2> {
        let (p, lower, upper, s) = self.factors();
        let l_inv = unit_triangular_inverse(lower);
        // U + D = D·(I + D⁻¹U).
        let d_inv = s.recip();
        let scaled = upper * d_inv.clone().unsqueeze_dim::<2>(1);
        let u_inv = unit_triangular_inverse(scaled) * d_inv.unsqueeze_dim::<2>(0);
        u_inv.matmul(l_inv).matmul(p.transpose())
    }

    fn apply(w: Tensor<2>, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, wd] = x.dims();
        let flat = x.reshape([b, c, h * wd]);
        w.unsqueeze_dim::<3>(0)
            .expand([b, c, c])
            .matmul(flat)
            .reshape([b, c, h, wd])
    }

    fn forward(&self, x: Tensor<4>) -> (Tensor<4>, Tensor<1>) {
        let [b, _, h, w] = x.dims();
        let logdet = self
            .log_s
            .val()
            .sum()
            .mul_scalar((h * w) as f32)
            .expand([b]);
        (Self::apply(self.weight(), x), logdet)
    }

    /// [`InvConv1x1::forward`] without the log-determinant.
    fn transform(&self, x: Tensor<4>) -> Tensor<4> {
        Self::apply(self.weight(), x)
    }

    fn inverse(&self, y: Tensor<4>) -> Tensor<4> {
        Self::apply(self.inverse_weight(), y)
    }
}

/// `(I + N)⁻¹` for strictly triangular `N` (nilpotent: `N^C = 0`).
fn unit_triangular_inverse(n: Tensor<2>) -> Tensor<2> {
    let c = n.dims()[0];
    let device = n.device();
    let eye = Tensor::<2>::eye(c, &device);
    let mut inv = eye.clone() - n.clone();
    let mut power = n;
    let mut reach = 2;
    while reach < c {
        power = power.clone().matmul(power);
        inv = inv.matmul(eye.clone() + power.clone());
        reach *= 2;
    }
    inv
}

/// A 3×3 convolution initialised to zero, whose output is scaled by `exp(3·logs)` (Glow's
/// "Conv2DZeros"): the last layer of each coupling network and the split priors, so that every
/// coupling starts as the identity.
#[derive(Module, Debug)]
pub struct ZeroConv2d {
    conv: Conv2d,
    logs: Param<Tensor<4>>,
}

impl ZeroConv2d {
    fn new(input: usize, output: usize, device: &Device) -> Self {
        Self {
            conv: Conv2dConfig::new([input, output], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_initializer(Initializer::Zeros)
                .init(device),
            logs: Param::from_tensor(Tensor::zeros([1, output, 1, 1], device)),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.conv.forward(x) * self.logs.val().mul_scalar(3.0).exp()
    }
}

/// Affine coupling (RealNVP / Glow §3.3): the second half of the channels is scaled and shifted by
/// functions of the first half: `y_b = (x_b + t(x_a))·σ(s(x_a) + 2)`. With `additive`, `y_b = x_b + t(x_a)`.
#[derive(Module, Debug)]
pub struct AffineCoupling {
    conv1: Conv2d,
    conv2: Conv2d,
    out: ZeroConv2d,
    #[module(skip)]
    additive: bool,
}

impl AffineCoupling {
    fn new(channels: usize, hidden: usize, additive: bool, device: &Device) -> Self {
        let half = channels / 2;
        Self {
            conv1: Conv2dConfig::new([half, hidden], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device),
            conv2: Conv2dConfig::new([hidden, hidden], [1, 1]).init(device),
            out: ZeroConv2d::new(hidden, if additive { half } else { channels }, device),
            additive,
        }
    }

    fn params(&self, xa: Tensor<4>) -> (Tensor<4>, Option<Tensor<4>>) {
        let h = relu(self.conv1.forward(xa));
        let h = relu(self.conv2.forward(h));
        let h = self.out.forward(h);
        if self.additive {
            (h, None)
        } else {
            let mut parts = h.chunk(2, 1);
            let raw = parts.pop().unwrap_or_else(|| unreachable!("two chunks"));
            let shift = parts.pop().unwrap_or_else(|| unreachable!("two chunks"));
            (shift, Some(sigmoid(raw + 2.0)))
        }
    }

    /// The coupling applied forwards or backwards: `x_b` (or `y_b`) moved by the functions of
    /// the first half, which passes unchanged. Also returns the scale (`None` if additive).
    fn couple(&self, x: Tensor<4>, inverse: bool) -> (Tensor<4>, Option<Tensor<4>>) {
        let [_, c, _, _] = x.dims();
        let xa = x.clone().narrow(1, 0, c / 2);
        let xb = x.narrow(1, c / 2, c - c / 2);
        let (shift, scale) = self.params(xa.clone());
        let yb = match (&scale, inverse) {
            (None, false) => xb + shift,
            (None, true) => xb - shift,
            (Some(scale), false) => (xb + shift) * scale.clone(),
            (Some(scale), true) => xb / scale.clone() - shift,
        };
        (Tensor::cat(vec![xa, yb], 1), scale)
    }

    /// [`AffineCoupling::forward`] without the log-determinant (which costs a logarithm of
    /// every scale).
    fn transform(&self, x: Tensor<4>) -> Tensor<4> {
        self.couple(x, false).0
    }

    fn forward(&self, x: Tensor<4>) -> (Tensor<4>, Tensor<1>) {
        let [b, _, _, _] = x.dims();
        let device = x.device();
        let (y, scale) = self.couple(x, false);
        let logdet = match scale {
            None => Tensor::zeros([b], &device),
            Some(scale) => scale
                .log()
                .flatten::<2>(1, 3)
                .sum_dim(1)
                .squeeze_dim::<1>(1),
        };
        (y, logdet)
    }

    fn inverse(&self, y: Tensor<4>) -> Tensor<4> {
        self.couple(y, true).0
    }
}

/// One step of flow: ActNorm → InvConv1x1 → coupling.
#[derive(Module, Debug)]
pub struct FlowStep {
    actnorm: ActNorm,
    invconv: InvConv1x1,
    coupling: AffineCoupling,
}

impl FlowStep {
    fn forward(&self, x: Tensor<4>) -> (Tensor<4>, Tensor<1>) {
        let (x, a) = self.actnorm.forward(x);
        let (x, b) = self.invconv.forward(x);
        let (x, c) = self.coupling.forward(x);
        (x, a + b + c)
    }

    /// [`FlowStep::forward`] without the log-determinant.
    fn transform(&self, x: Tensor<4>) -> Tensor<4> {
        self.coupling
            .transform(self.invconv.transform(self.actnorm.transform(x)))
    }

    fn inverse(&self, y: Tensor<4>) -> Tensor<4> {
        let y = self.coupling.inverse(y);
        let y = self.invconv.inverse(y);
        self.actnorm.inverse(y)
    }
}

/// One level: K steps, then (except for the last level) a split with a learned prior.
#[derive(Module, Debug)]
pub struct GlowLevel {
    steps: Vec<FlowStep>,
    prior: Option<ZeroConv2d>,
}

/// The Glow flow. See the module documentation.
#[derive(Module, Debug)]
pub struct Glow {
    levels: Vec<GlowLevel>,
    top_prior: Param<Tensor<4>>,
    /// Shape of each level's latent ε (level 0 first).
    #[module(skip)]
    latent_shapes: Vec<ImageShape>,
}

/// 2×2 space-to-depth: `[B, C, H, W] → [B, 4C, H/2, W/2]`.
pub fn squeeze(x: Tensor<4>) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h / 2, 2, w / 2, 2])
        .permute([0, 1, 3, 5, 2, 4])
        .reshape([b, c * 4, h / 2, w / 2])
}

/// The inverse of [`squeeze`].
pub fn unsqueeze(x: Tensor<4>) -> Tensor<4> {
    let [b, c4, h, w] = x.dims();
    let c = c4 / 4;
    x.reshape([b, c, 2, 2, h, w])
        .permute([0, 1, 4, 2, 5, 3])
        .reshape([b, c, h * 2, w * 2])
}

fn mean_logs(params: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
    let [_, c, _, _] = params.dims();
    let mean = params.clone().narrow(1, 0, c / 2);
    let logs = params.narrow(1, c / 2, c / 2);
    (mean, logs)
}

/// Σ log N(z; mean, exp(logs)²) per sample.
fn gaussian_log_prob(z: Tensor<4>, mean: Tensor<4>, logs: Tensor<4>) -> Tensor<1> {
    let eps = (z - mean) * logs.clone().neg().exp();
    let ln2pi = (2.0 * std::f32::consts::PI).ln();
    let per = (eps.powi_scalar(2) + logs * 2.0 + ln2pi) * -0.5;
    per.flatten::<2>(1, 3).sum_dim(1).squeeze_dim::<1>(1)
}

/// What [`Glow::forward`] returns.
#[derive(Debug, Clone)]
pub struct FlowOutput {
    /// The standardised latent ε of each level (level 0 first).
    pub eps: Vec<Tensor<4>>,
    /// log|det ∂z/∂x| of the flow, per sample.
    pub logdet: Tensor<1>,
    /// log p(z) under the learned priors, per sample.
    pub log_prior: Tensor<1>,
}

impl Glow {
    /// Data-dependent initialisation of every ActNorm from a batch (in logit space), level by
    /// level, as Glow does before training.
    pub fn data_init(mut self, x: Tensor<4>) -> Self {
        let mut h = x;
        let n = self.levels.len();
        for (l, level) in self.levels.iter_mut().enumerate() {
            h = squeeze(h);
            let steps = std::mem::take(&mut level.steps);
            for mut step in steps {
                step.actnorm = step.actnorm.data_init(&h);
                h = step.forward(h).0.detach();
                level.steps.push(step);
            }
            if l + 1 < n {
                let [_, c, _, _] = h.dims();
                h = h.narrow(1, 0, c / 2);
            }
        }
        self
    }

    /// The raw flow: the split-off `z` of each level (the last level's whole state last) and
    /// log|det ∂z/∂x|. Exactly inverted by [`Glow::inverse_raw`].
    pub fn forward_raw(&self, x: Tensor<4>) -> (Vec<Tensor<4>>, Tensor<1>) {
        let (zs, _, logdet) = self.forward_with_kept(x);
        (zs, logdet)
    }

    /// [`Glow::forward_raw`] plus the kept half of each split (the input of its prior).
    fn forward_with_kept(&self, x: Tensor<4>) -> (Vec<Tensor<4>>, Vec<Tensor<4>>, Tensor<1>) {
        let [b, _, _, _] = x.dims();
        let mut logdet = Tensor::zeros([b], &x.device());
        let (zs, kept) = self.run_levels(x, |step, h| {
            let (y, ld) = step.forward(h);
            logdet = logdet.clone() + ld;
            y
        });
        (zs, kept, logdet)
    }

    /// The levels' split-off `z` (the last level's whole state last) and the kept half of each
    /// split, with `step` applying each flow step.
    fn run_levels(
        &self,
        x: Tensor<4>,
        mut step: impl FnMut(&FlowStep, Tensor<4>) -> Tensor<4>,
    ) -> (Vec<Tensor<4>>, Vec<Tensor<4>>) {
        let mut zs = Vec::with_capacity(self.levels.len());
        let mut kept = Vec::with_capacity(self.levels.len());
        let mut h = x;
        for level in &self.levels {
            h = squeeze(h);
            for s in &level.steps {
                h = step(s, h);
            }
            if level.prior.is_some() {
                let [_, c, _, _] = h.dims();
                zs.push(h.clone().narrow(1, c / 2, c - c / 2));
                h = h.narrow(1, 0, c / 2);
                kept.push(h.clone());
            }
        }
        zs.push(h);
        (zs, kept)
    }

    /// The inverse of [`Glow::forward_raw`].
    pub fn inverse_raw(&self, zs: &[Tensor<4>]) -> Tensor<4> {
        let mut h = zs[zs.len() - 1].clone();
        for (l, level) in self.levels.iter().enumerate().rev() {
            if level.prior.is_some() {
                h = Tensor::cat(vec![h, zs[l].clone()], 1);
            }
            for step in level.steps.iter().rev() {
                h = step.inverse(h);
            }
            h = unsqueeze(h);
        }
        h
    }

    fn top(&self, batch: usize) -> (Tensor<4>, Tensor<4>) {
        let p = self.top_prior.val();
        let [_, c, h, w] = p.dims();
        mean_logs(p.expand([batch, c, h, w]))
    }

    /// The flow with its priors: standardised latents, log-determinant and log-prior.
    pub fn forward(&self, x: Tensor<4>) -> FlowOutput {
        let [b, _, _, _] = x.dims();
        let (zs, kept, logdet) = self.forward_with_kept(x);
        let mut log_prior = Tensor::zeros([b], &logdet.device());
        let eps = self.standardise(zs, &kept, |z, mean, logs| {
            log_prior = log_prior.clone() + gaussian_log_prob(z, mean, logs);
        });
        FlowOutput {
            eps,
            logdet,
            log_prior,
        }
    }

    /// The standardised latents ε alone: [`Glow::forward`]'s `eps` (the same values) without
    /// the log-determinants and log-prior, which encryption and the latent routes would compute
    /// and discard (a logarithm of every coupling scale and a Gaussian log-density per level).
    pub fn encode(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        let (zs, kept) = self.run_levels(x, |step, h| step.transform(h));
        self.standardise(zs, &kept, |_, _, _| {})
    }

    /// `(z − mean)·exp(−logs)` per level, with each level's prior (the top prior for the last);
    /// `seen` gets each level's `z`, mean and log-scale first.
    fn standardise(
        &self,
        zs: Vec<Tensor<4>>,
        kept: &[Tensor<4>],
        mut seen: impl FnMut(Tensor<4>, Tensor<4>, Tensor<4>),
    ) -> Vec<Tensor<4>> {
        let [b, _, _, _] = zs[0].dims();
        zs.into_iter()
            .enumerate()
            .map(|(l, z)| {
                let (mean, logs) = match (&self.levels[l].prior, kept.get(l)) {
                    (Some(prior), Some(k)) => mean_logs(prior.forward(k.clone())),
                    _ => self.top(b),
                };
                seen(z.clone(), mean.clone(), logs.clone());
                (z - mean) * logs.neg().exp()
            })
            .collect()
    }

    /// Runs the flow layer by layer (without autodiff, reading values back) and names the first
    /// layer whose output holds NaN or infinity: `level 2, step 3, coupling`. For error reports.
    pub fn first_non_finite_layer(&self, x: Tensor<4>) -> Option<String> {
        let glow = self.valid();
        let finite = |t: &Tensor<4>| t.clone().into_data().iter::<f32>().all(f32::is_finite);
        if !finite(&x) {
            return Some("the input (after the logit preprocessing)".into());
        }
        let mut h = x;
        for (l, level) in glow.levels.iter().enumerate() {
            h = squeeze(h);
            for (k, step) in level.steps.iter().enumerate() {
                let name = |layer: &str| format!("level {}, step {}, {layer}", l + 1, k + 1);
                let (y, _) = step.actnorm.forward(h);
                if !finite(&y) {
                    return Some(name("actnorm"));
                }
                let (y, _) = step.invconv.forward(y);
                if !finite(&y) {
                    return Some(name("invconv"));
                }
                let (y, _) = step.coupling.forward(y);
                if !finite(&y) {
                    return Some(name("coupling"));
                }
                h = y;
            }
            if let Some(prior) = &level.prior {
                let [_, c, _, _] = h.dims();
                let kept = h.narrow(1, 0, c / 2);
                if !finite(&prior.forward(kept.clone())) {
                    return Some(format!("level {}, split prior", l + 1));
                }
                h = kept;
            }
        }
        None
    }

    /// The weights as burnpack bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, ModelError> {
        crate::nn::weights::to_bytes(self)
    }

    /// Shape of each level's latent ε (level 0 first).
    pub fn latent_shapes(&self) -> &[ImageShape] {
        &self.latent_shapes
    }

    /// The latents as one `[B, D]` matrix, in the documented order (level 0 first; within a
    /// level, C order of `[C, H, W]`).
    pub fn flatten_latents(eps: Vec<Tensor<4>>) -> Tensor<2> {
        Tensor::cat(eps.into_iter().map(|e| e.flatten::<2>(1, 3)).collect(), 1)
    }

    /// The inverse of [`Glow::flatten_latents`].
    pub fn unflatten_latents(&self, flat: Tensor<2>) -> Vec<Tensor<4>> {
        let [b, _] = flat.dims();
        let mut offset = 0;
        self.latent_shapes
            .iter()
            .map(|s| {
                let part = flat.clone().narrow(1, offset, s.len());
                offset += s.len();
                part.reshape([b, s.channels, s.height, s.width])
            })
            .collect()
    }

    /// Decodes standardised latents (level 0 first) back to the input space.
    pub fn decode_eps(&self, eps: &[Tensor<4>]) -> Tensor<4> {
        let n = self.levels.len();
        let [b, _, _, _] = eps[0].dims();
        let (mean, logs) = self.top(b);
        let mut h = mean + logs.exp() * eps[n - 1].clone();
        for l in (0..n).rev() {
            let level = &self.levels[l];
            if let Some(prior) = &level.prior {
                let (mean, logs) = mean_logs(prior.forward(h.clone()));
                let z = mean + logs.exp() * eps[l].clone();
                h = Tensor::cat(vec![h, z], 1);
            }
            for step in level.steps.iter().rev() {
                h = step.inverse(h);
            }
            h = unsqueeze(h);
        }
        h
    }
}

/// Uniform dequantisation noise in [10⁻⁴, 1 − 10⁻⁴] of `shape`, drawn on the host from ChaCha20
/// seeded with `seed`: the same values natively, in wasm and on any GPU, so that a training run
/// takes the same steps on every backend (a device's RNG differs between backends).
pub fn dequantization_noise(shape: [usize; 4], seed: u64, device: &Device) -> Tensor<4> {
    use rand::RngExt;
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let n = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| rng.random::<f32>().clamp(1e-4, 1.0 - 1e-4))
        .collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// The logit preprocessing of RealNVP (§4.1) and Glow: a pixel `x ∈ [0, 1]` quantised to `bins`
/// values becomes `y = (k + u)/bins` (`k = round(x·(bins − 1))`, `u ~ U(0, 1)` when
/// dequantising, `u = ½` otherwise), then `s = logit(α + (1 − α)·y)`. For 8-bit images
/// (`bins = 256`) this is the paper's `logit(α + (1 − α)·x/256)`.
///
/// (Glow's own `levels`, in [`GlowConfig`], are its scales. Manifests written before the rename
/// call the bins `levels` too, and still read.)
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Preprocess {
    /// Quantisation bins of the data (256 for 8-bit images, 17 for the UCI digits).
    #[serde(alias = "levels")]
    pub bins: usize,
    /// α, which keeps the logit away from ±∞.
    pub alpha: f32,
}

impl Preprocess {
    /// 8-bit images.
    pub const EIGHT_BIT: Preprocess = Preprocess {
        bins: 256,
        alpha: 0.05,
    };

    /// Pixels to logit space; also returns log|det ∂s/∂y| per sample. `dequantize` draws the
    /// uniform dequantisation noise from the device's RNG; without it every pixel sits in the
    /// middle of its bin.
    pub fn to_logit(&self, x: Tensor<4>, dequantize: bool) -> (Tensor<4>, Tensor<1>) {
        let u = if dequantize {
            // Kept off 0 and 1 so that 1 − y stays positive in f32.
            x.random_like(burn::tensor::Distribution::Uniform(0.0, 1.0))
                .clamp(1e-4, 1.0 - 1e-4)
        } else {
            x.zeros_like() + 0.5
        };
        self.to_logit_with_noise(x, u)
    }

    /// [`Preprocess::to_logit`] with given dequantisation noise `u` (in (0, 1), the shape of `x`),
    /// e.g. from [`dequantization_noise`], which is the same on every backend.
    pub fn to_logit_with_noise(&self, x: Tensor<4>, u: Tensor<4>) -> (Tensor<4>, Tensor<1>) {
        let bins = self.bins as f32;
        let k = (x * (bins - 1.0)).round().clamp(0.0, bins - 1.0);
        // 1 − p = (1 − α)(1 − y), computed from (bins − k − u) directly: forming p first and
        // subtracting it from 1 rounds to 0 in f32 for the brightest pixels.
        let one_minus_y = (k.clone().neg() + bins - u.clone()) / bins;
        let y = (k + u) / bins;
        let p = y * (1.0 - self.alpha) + self.alpha;
        let log_p = p.clone().log();
        let log_1mp = one_minus_y.log() + (1.0 - self.alpha).ln();
        let s = log_p.clone() - log_1mp.clone();
        let per = (log_p + log_1mp).neg() + (1.0 - self.alpha).ln();
        let logdet = per.flatten::<2>(1, 3).sum_dim(1).squeeze_dim::<1>(1);
        (s, logdet)
    }

    /// Logit space back to pixels `y ∈ [0, 1]` (the continuous, dequantised value).
    pub fn from_logit(&self, s: Tensor<4>) -> Tensor<4> {
        ((sigmoid(s) - self.alpha) / (1.0 - self.alpha)).clamp(0.0, 1.0)
    }

    /// A continuous pixel value `y` ([`Preprocess::from_logit`]) back to its quantisation
    /// level, `k/(bins − 1)`: the bin `y` falls in.
    pub fn quantise(&self, y: Tensor<4>) -> Tensor<4> {
        let bins = self.bins as f32;
        (y * bins - 0.5).round().clamp(0.0, bins - 1.0) / (bins - 1.0)
    }

    /// Negative log-likelihood of the discrete pixels in bits per dimension, per sample:
    /// `(−log p(y) + D·ln bins)/(D·ln 2)` with `log p(y) = log p(z) + log|det| (flow) +
    /// log|det| (preprocessing)`.
    pub fn bits_per_dim(&self, out: &FlowOutput, logdet_pre: Tensor<1>, dims: usize) -> Tensor<1> {
        let d = dims as f32;
        let log_py = out.log_prior.clone() + out.logdet.clone() + logdet_pre;
        (log_py.neg() + d * (self.bins as f32).ln()) / (d * std::f32::consts::LN_2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    thread_local! {
        /// Per-test-thread RNG, so that parallel tests do not share the device's global RNG.
        static RNG: std::cell::RefCell<ChaCha20Rng> = std::cell::RefCell::new(ChaCha20Rng::seed_from_u64(17));
    }

    /// Host-generated N(0, scale²) values of `shape`, from the thread's seeded RNG.
    fn normal<const D: usize>(shape: [usize; D], scale: f64, device: &Device) -> Tensor<D> {
        let n = shape.iter().product();
        let mut v = vec![0.0f64; n];
        RNG.with(|r| crate::crypto::gaussian::gaussian_fill(&mut *r.borrow_mut(), &mut v));
        let v: Vec<f32> = v.iter().map(|x| (x * scale) as f32).collect();
        Tensor::from_data(TensorData::new(v, shape), device)
    }

    /// Adds N(0, scale²) noise; the result is a fresh leaf (no autodiff history).
    fn jitter<const D: usize>(p: Param<Tensor<D>>, scale: f64) -> Param<Tensor<D>> {
        p.map(|t| (t.clone() + normal(t.dims(), scale, &t.device())).detach())
    }

    /// Moves every trainable parameter off its identity-like initialisation, so that the tests
    /// exercise non-trivial couplings, scales and triangular factors.
    fn perturbed(glow: Glow, scale: f64) -> Glow {
        let levels = glow
            .levels
            .into_iter()
            .map(|level| GlowLevel {
                steps: level
                    .steps
                    .into_iter()
                    .map(|s| FlowStep {
                        actnorm: ActNorm {
                            bias: jitter(s.actnorm.bias, scale),
                            log_scale: jitter(s.actnorm.log_scale, scale),
                        },
                        invconv: InvConv1x1 {
                            lower: jitter(s.invconv.lower, scale),
                            upper: jitter(s.invconv.upper, scale),
                            log_s: jitter(s.invconv.log_s, scale),
                            ..s.invconv
                        },
                        coupling: AffineCoupling {
                            out: ZeroConv2d {
                                conv: Conv2d {
                                    weight: jitter(s.coupling.out.conv.weight, scale),
                                    ..s.coupling.out.conv
                                },
                                logs: s.coupling.out.logs,
                            },
                            ..s.coupling
                        },
                    })
                    .collect(),
                prior: level.prior.map(|p| ZeroConv2d {
                    conv: Conv2d {
                        weight: jitter(p.conv.weight, scale),
                        ..p.conv
                    },
                    logs: jitter(p.logs, scale),
                }),
            })
            .collect();
        Glow {
            levels,
            top_prior: jitter(glow.top_prior, scale),
            latent_shapes: glow.latent_shapes,
        }
    }

    fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    #[test]
    fn squeeze_order_and_inverse() {
        let device = Device::flex();
        let x = Tensor::<1>::from_data(
            TensorData::new((0..16).map(|v| v as f32).collect::<Vec<_>>(), [16]),
            &device,
        )
        .reshape([1, 1, 4, 4]);
        let s = squeeze(x.clone());
        assert_eq!(s.dims(), [1, 4, 2, 2]);
        // Channel k of the squeezed map holds the pixel at offset (k / 2, k % 2) of each 2×2 block.
        let v: Vec<f32> = s.clone().into_data().iter::<f32>().collect();
        assert_eq!(&v[..4], &[0.0, 2.0, 8.0, 10.0]);
        assert_eq!(&v[4..8], &[1.0, 3.0, 9.0, 11.0]);
        assert_eq!(max_abs_diff(unsqueeze(s), x), 0.0);
    }

    #[test]
    fn invconv_inverse_is_exact() {
        let device = Device::flex();
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        for c in [4, 12, 48] {
            let conv = InvConv1x1::new(c, &mut rng, &device);
            // Triangular factors of a rotation have entries of order 1/√C; stay at that scale.
            let scale = 0.3 / (c as f64).sqrt();
            let conv = InvConv1x1 {
                lower: jitter(conv.lower, scale),
                upper: jitter(conv.upper, scale),
                log_s: jitter(conv.log_s, 0.3),
                ..conv
            };
            let eye = Tensor::<2>::eye(c, &device);
            let err = max_abs_diff(conv.weight().matmul(conv.inverse_weight()), eye);
            assert!(err < 1e-4, "C = {c}: |W·W⁻¹ − I| = {err}");
        }
    }

    #[test]
    fn flow_round_trips_and_decodes_its_standardised_latent() {
        let device = Device::flex();
        for additive in [false, true] {
            let config = GlowConfig::new(1, 8, 8)
                .with_levels(2)
                .with_steps(3)
                .with_hidden(16)
                .with_additive(additive);
            let x = normal([5, 1, 8, 8], 1.0, &device);
            let glow = perturbed(config.init(&device).data_init(x.clone()), 0.2);
            let (zs, _) = glow.forward_raw(x.clone());
            let back = glow.inverse_raw(&zs);
            assert!(max_abs_diff(back, x.clone()) < 1e-4);
            let out = glow.forward(x.clone());
            assert_eq!(out.eps.len(), 2);
            assert_eq!(out.eps[0].dims(), [5, 2, 4, 4]);
            assert_eq!(out.eps[1].dims(), [5, 8, 2, 2]);
            // `encode` gives the same latents without the log-determinants, to the bit.
            for (a, b) in glow.encode(x.clone()).into_iter().zip(&out.eps) {
                assert_eq!(max_abs_diff(a, b.clone()), 0.0, "additive {additive}");
            }
            let decoded = glow.decode_eps(&out.eps);
            // Logit-space values of order 1 through 6 perturbed steps and back, in f32. (The
            // pixel-unit bound of the encryption round trip is tested where encryption is.)
            let err = max_abs_diff(decoded, x.clone());
            assert!(err < 3e-4, "additive {additive}: decode error {err}");
        }
    }

    #[test]
    fn data_init_standardises_the_first_actnorm() {
        let device = Device::flex();
        let x = normal([64, 1, 8, 8], 2.0, &device) + 3.0;
        let glow = GlowConfig::new(1, 8, 8)
            .with_hidden(8)
            .init(&device)
            .data_init(x.clone());
        let (y, _) = glow.levels[0].steps[0].actnorm.forward(squeeze(x));
        let mean = y.clone().mean().into_scalar::<f32>();
        let var = y.powi_scalar(2).mean().into_scalar::<f32>() - mean * mean;
        assert!(
            mean.abs() < 1e-3 && (var - 1.0).abs() < 1e-2,
            "mean {mean}, var {var}"
        );
    }

    /// log|det J| from the layers equals the log-determinant of the Jacobian computed row by row
    /// with autodiff (16 × 16 on a 1×4×4 input), in f64.
    #[test]
    fn logdet_matches_a_brute_force_jacobian() {
        let device = Device::flex().autodiff();
        let config = GlowConfig::new(1, 4, 4)
            .with_levels(2)
            .with_steps(2)
            .with_hidden(8);
        // ActNorm statistics need a batch; the Jacobian is taken at one sample.
        let batch = normal([16, 1, 4, 4], 1.0, &device);
        let x0 = normal([1, 1, 4, 4], 1.0, &device);
        let glow = perturbed(config.init(&device).data_init(batch), 0.3);
        let d = 16;
        let mut jac = DMatrix::<f64>::zeros(d, d);
        for i in 0..d {
            let x = x0.clone().detach().require_grad();
            let (zs, _) = glow.forward_raw(x.clone());
            let flat = Tensor::cat(zs.into_iter().map(|z| z.flatten::<2>(1, 3)).collect(), 1);
            let grads = flat.narrow(1, i, 1).sum().backward();
            let g: Vec<f32> = x
                .grad(&grads)
                .expect("gradient")
                .into_data()
                .iter::<f32>()
                .collect();
            for (j, v) in g.iter().enumerate() {
                jac[(i, j)] = f64::from(*v);
            }
        }
        let brute = jac.determinant().abs().ln();
        let (_, logdet) = glow.forward_raw(x0);
        let reported = f64::from(logdet.into_scalar::<f32>());
        assert!(
            (brute - reported).abs() < 1e-3 * brute.abs().max(1.0),
            "brute force {brute}, layers {reported}"
        );
    }

    #[test]
    fn preprocessing_round_trips_and_bits_per_dim_of_a_fresh_flow_is_plausible() {
        let device = Device::flex();
        let pre = Preprocess {
            bins: 17,
            alpha: 0.05,
        };
        let k = Tensor::<4>::random([4, 1, 8, 8], Distribution::Uniform(0.0, 17.0), &device)
            .floor()
            .clamp(0.0, 16.0);
        let x = k / 16.0;
        let (s, _) = pre.to_logit(x.clone(), false);
        let y = pre.from_logit(s.clone());
        // Without dequantisation noise y = (k + 1/2)/17: recover k exactly.
        let k_back = (y * 17.0).floor() / 16.0;
        assert_eq!(max_abs_diff(k_back, x.clone()), 0.0);
        let glow = GlowConfig::new(1, 8, 8)
            .with_hidden(8)
            .init(&device)
            .data_init(s.clone());
        let out = glow.forward(s);
        let (_, ld) = pre.to_logit(x, true);
        let bpd = pre.bits_per_dim(&out, ld, 64).mean().into_scalar::<f32>();
        // An untrained flow is no better than uniform over 17 levels (log2 17 = 4.09 bits) by much,
        // and finite.
        assert!(bpd.is_finite() && bpd > 1.0 && bpd < 12.0, "bits/dim {bpd}");
    }

    #[test]
    fn a_non_finite_layer_is_named() {
        let device = Device::flex();
        let x = normal([4, 1, 8, 8], 1.0, &device);
        let mut glow = GlowConfig::new(1, 8, 8)
            .with_hidden(8)
            .init(&device)
            .data_init(x.clone());
        assert_eq!(glow.first_non_finite_layer(x.clone()), None);
        let step = &mut glow.levels[1].steps[2];
        let poisoned = step.invconv.log_s.val().zeros_like() + f32::INFINITY;
        step.invconv.log_s = Param::from_tensor(poisoned);
        assert_eq!(
            glow.first_non_finite_layer(x).as_deref(),
            Some("level 2, step 3, invconv")
        );
    }
}
