//! Gradient leakage: recovering a training image and its label from one shared gradient.
//!
//! - **DLG** (Zhu, Liu, Han, "Deep Leakage from Gradients", NeurIPS 2019, Algorithm 1): optimise
//!   a dummy image and a dummy soft label so that their gradient matches the shared one in
//!   squared Euclidean distance. The paper uses L-BFGS; we use Adam with a step decay, which the
//!   paper's follow-ups found more reliable (users of the public DLG code report L-BFGS runs that
//!   diverge to NaN, mit-han-lab/dlg #9), plus the data's box constraint [0, 1].
//! - **iDLG** (Zhao, Mopuri, Bilen, "iDLG: Improved Deep Leakage from Gradients", 2020, §3): the
//!   label is read off the last layer's gradient first ([`infer_label`]), then only the image is
//!   optimised.
//! - **Inverting Gradients** (Geiping, Bauermeister, Dröge, Moeller, NeurIPS 2020, §4): cosine
//!   distance between the gradients plus a total-variation prior on the image, with the inferred
//!   label.
//! - The **analytic attack** on a first fully connected layer with bias (Geiping et al. §3,
//!   Proposition; Phong et al. 2018): `x = ∂L/∂W_i ÷ ∂L/∂b_i` for any unit `i` with a non-zero
//!   bias gradient ([`analytic_first_layer`]).
//!
//! Gradient matching needs second derivatives, which burn 0.22 does not provide; the attacked
//! networks' parameter gradients are written with differentiable operations in [`net`].
//! Metrics follow the `breaching` library's reports: MSE, PSNR, SSIM and label accuracy
//! ([`metrics`]).

pub mod metrics;
pub mod net;

use burn::module::{Module, Param};
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::softmax;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

pub use net::{AttackedArch, AttackedNet, AttackedNetConfig, ParamGrads, one_hot};

use crate::nn::train::Control;

/// The gradient-matching attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Deep Leakage from Gradients: image and soft label optimised together, squared distance.
    Dlg,
    /// Improved DLG: the label inferred from the last layer first, then the image alone.
    Idlg,
    /// Inverting Gradients: inferred label, cosine distance, total-variation prior.
    InvertingGradients,
}

impl Method {
    /// Every method, in the order reports list them.
    pub const ALL: [Method; 3] = [Method::Dlg, Method::Idlg, Method::InvertingGradients];

    /// The short name (`dlg`, `idlg`, `inverting-gradients`).
    pub fn name(&self) -> &'static str {
        match self {
            Method::Dlg => "dlg",
            Method::Idlg => "idlg",
            Method::InvertingGradients => "inverting-gradients",
        }
    }

    /// The method of a short name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// Settings of a gradient-matching attack.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AttackConfig {
    /// The method.
    pub method: Method,
    /// Optimisation steps.
    pub iterations: usize,
    /// Adam's initial learning rate; divided by 10 at 3/8, 5/8 and 7/8 of the iterations
    /// (Geiping et al.'s schedule).
    pub learning_rate: f64,
    /// Weight of the total-variation prior (Inverting Gradients only).
    pub tv_weight: f32,
    /// Clamp the dummy image to the data's range [0, 1] after every step.
    pub box_constraint: bool,
    /// Seed of the dummy image and label.
    pub seed: u64,
}

impl AttackConfig {
    /// The defaults for `method`: 300 iterations, learning rate 0.1, TV weight 1e-4, boxed.
    pub fn new(method: Method) -> Self {
        Self {
            method,
            iterations: 300,
            learning_rate: 0.1,
            tv_weight: 1e-4,
            box_constraint: true,
            seed: 0,
        }
    }

    fn learning_rate_at(&self, iteration: usize) -> f64 {
        let n = self.iterations.max(1) as f64;
        let at = iteration as f64;
        let drops = [3.0 / 8.0, 5.0 / 8.0, 7.0 / 8.0]
            .iter()
            .filter(|&&f| at >= f * n)
            .count();
        self.learning_rate * 0.1f64.powi(drops as i32)
    }
}

/// Why an attack cannot run.
#[derive(Debug, thiserror::Error)]
pub enum LeakageError {
    /// The shared gradient does not belong to the network.
    #[error(
        "the gradient has {got} parameter tensors of sizes {sizes:?}; the network needs {want:?}"
    )]
    GradientShape {
        /// Tensors received.
        got: usize,
        /// Their sizes.
        sizes: Vec<usize>,
        /// The sizes the network needs.
        want: Vec<usize>,
    },
    /// A setting is out of range.
    #[error("invalid attack settings: {0}")]
    Invalid(String),
    /// The shared gradient or the matching loss holds NaN or infinity.
    #[error("non-finite values: {0}")]
    NonFinite(String),
}

/// The dummy data the attacker optimises.
#[derive(Module, Debug)]
struct Dummy {
    image: Param<Tensor<4>>,
    /// Label logits (DLG only).
    label: Param<Tensor<2>>,
}

/// One step's figures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AttackStep {
    /// Steps done (1-based).
    pub iteration: usize,
    /// The gradient-matching loss before this step's update.
    pub loss: f32,
}

/// What an attack recovered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reconstruction {
    /// The image, `[C, H, W]` in C order.
    pub image: Vec<f32>,
    /// The recovered label.
    pub label: usize,
    /// The final gradient-matching loss.
    pub loss: f32,
    /// The matching loss of the initial dummy.
    pub initial_loss: f32,
    /// How far the reconstruction's gradient is from the shared one, whatever the method's
    /// loss: `‖g(x̂, ŷ) − g*‖² / ‖g*‖²`.
    pub residual: f32,
    /// Steps run (fewer than asked if stopped).
    pub iterations: usize,
    /// Attempts made (restarts + 1) by [`attack_with_restarts`]; 1 otherwise.
    pub attempts: usize,
}

impl Reconstruction {
    /// Whether the reconstruction's gradient matches the shared one: a relative residual of at
    /// most 1e-4. On the digits, runs above it are slow to converge (a digit the network already
    /// classifies confidently has a small, flat gradient) and [`attack_with_restarts`] retries
    /// them with more iterations.
    pub fn converged(&self) -> bool {
        self.residual <= 1e-4
    }
}

/// A gradient-matching attack in progress (DLG, iDLG or Inverting Gradients). Drive it with
/// [`GradientAttack::step`] to show progress, or [`GradientAttack::run`].
pub struct GradientAttack {
    net: AttackedNet,
    target: ParamGrads,
    /// `‖g*‖²`, computed once.
    target_sq_norm: f64,
    config: AttackConfig,
    dummy: Dummy,
    optimizer: ModuleOptimizer,
    /// The label, when inferred (iDLG, Inverting Gradients).
    label: Option<usize>,
    device: Device,
    iteration: usize,
    first_loss: f32,
    last_loss: f32,
}

/// Checks that `grads` has the network's parameter sizes and finite values.
pub fn check_gradient(net: &AttackedNet, grads: &[Vec<f32>]) -> Result<(), LeakageError> {
    let want: Vec<usize> = net.params().iter().map(|p| p.dims()[0]).collect();
    let sizes: Vec<usize> = grads.iter().map(Vec::len).collect();
    if sizes != want {
        return Err(LeakageError::GradientShape {
            got: grads.len(),
            sizes,
            want,
        });
    }
    if let Some(k) = grads.iter().position(|g| g.iter().any(|v| !v.is_finite())) {
        return Err(LeakageError::NonFinite(format!(
            "parameter gradient {k} of the shared gradient"
        )));
    }
    Ok(())
}

/// iDLG's label inference (Zhao et al. §3): with softmax cross-entropy, a one-hot label `y` and
/// non-negative inputs to the last layer (sigmoid outputs), the last layer's weight gradient
/// `∂W[j, :] = (softmax_j − y_j)·u` is negative only in the row of the true class. Returns the row
/// with the smallest sum.
pub fn infer_label(net: &AttackedNet, grads: &[Vec<f32>]) -> usize {
    let classes = net.config().classes;
    let Some(w) = grads.len().checked_sub(2).and_then(|i| grads.get(i)) else {
        return 0;
    };
    let per = w.len() / classes.max(1);
    (0..classes)
        .map(|j| (j, w[j * per..(j + 1) * per].iter().sum::<f32>()))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(0, |(j, _)| j)
}

/// The analytic attack on a first fully connected layer with bias (batch 1): since
/// `∂L/∂W_i = ∂L/∂b_i · x` for every unit `i`, `x` is any row of the weight gradient divided by
/// the bias gradient. All units with a usable bias gradient are combined by least squares,
/// `x = Σ_i g_i·∂W_i / Σ_i g_i²` with `g_i = ∂L/∂b_i`. Returns `None` when the network does not
/// start with a linear layer or every bias gradient vanishes.
pub fn analytic_first_layer(net: &AttackedNet, grads: &[Vec<f32>]) -> Option<Vec<f32>> {
    if !matches!(net.config().arch, AttackedArch::Mlp { .. }) || grads.len() < 2 {
        return None;
    }
    let (dw, db) = (&grads[0], &grads[1]);
    let inputs = net.config().shape.len();
    let norm: f64 = db.iter().map(|&g| f64::from(g) * f64::from(g)).sum();
    if norm < 1e-30 || dw.len() != db.len() * inputs {
        return None;
    }
    let mut x = vec![0.0f64; inputs];
    for (i, &g) in db.iter().enumerate() {
        for (k, xk) in x.iter_mut().enumerate() {
            *xk += f64::from(g) * f64::from(dw[i * inputs + k]);
        }
    }
    Some(x.into_iter().map(|v| (v / norm) as f32).collect())
}

fn total_variation(x: Tensor<4>) -> Tensor<1> {
    let [_, _, h, w] = x.dims();
    let dx = x.clone().slice(s![.., .., .., 1..w]) - x.clone().slice(s![.., .., .., 0..w - 1]);
    let dy = x.clone().slice(s![.., .., 1..h, ..]) - x.slice(s![.., .., 0..h - 1, ..]);
    dx.abs().mean() + dy.abs().mean()
}

impl GradientAttack {
    /// An attack on `net` (its weights, known to the attacker) from the shared gradient `grads`
    /// of one image. `device` must be an autodiff device; the network is moved to it.
    pub fn new(
        net: &AttackedNet,
        grads: &[Vec<f32>],
        config: AttackConfig,
        device: &Device,
    ) -> Result<Self, LeakageError> {
        check_gradient(net, grads)?;
        if config.iterations == 0
            || !config.learning_rate.is_finite()
            || config.learning_rate <= 0.0
            || !config.tv_weight.is_finite()
            || config.tv_weight < 0.0
        {
            return Err(LeakageError::Invalid(format!(
                "iterations {}, learning rate {}, TV weight {}: iterations and learning rate must \
                 be positive, the TV weight non-negative",
                config.iterations, config.learning_rate, config.tv_weight
            )));
        }
        let net = net.to_device(device);
        let target = ParamGrads(
            grads
                .iter()
                .map(|g| Tensor::<1>::from_data(TensorData::new(g.clone(), [g.len()]), device))
                .collect(),
        );
        let shape = net.config().shape;
        let classes = net.config().classes;
        let mut rng = ChaCha20Rng::seed_from_u64(config.seed);
        // DLG draws the dummy from N(0, 1); in the box constraint's range a uniform start is the
        // same idea without clamped outliers.
        let image: Vec<f32> = (0..shape.len()).map(|_| rng.random::<f32>()).collect();
        let label: Vec<f32> = (0..classes)
            .map(|_| rng.random::<f32>() * 2.0 - 1.0)
            .collect();
        let dummy = Dummy {
            image: Param::from_tensor(Tensor::from_data(
                TensorData::new(image, [1, shape.channels, shape.height, shape.width]),
                device,
            )),
            label: Param::from_tensor(Tensor::from_data(
                TensorData::new(label, [1, classes]),
                device,
            )),
        };
        let inferred = match config.method {
            Method::Dlg => None,
            Method::Idlg | Method::InvertingGradients => Some(infer_label(&net, grads)),
        };
        let target_sq_norm = grads
            .iter()
            .flatten()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum();
        Ok(Self {
            net,
            target,
            target_sq_norm,
            config,
            dummy,
            optimizer: AdamConfig::new().init(),
            label: inferred,
            device: device.clone(),
            iteration: 0,
            first_loss: f32::NAN,
            last_loss: f32::NAN,
        })
    }

    fn matching_loss(&self) -> Tensor<1> {
        let x = self.dummy.image.val();
        let targets = match self.label {
            Some(l) => one_hot(&[l], self.net.config().classes, &self.device),
            None => softmax(self.dummy.label.val(), 1),
        };
        let g = self.net.param_gradients(x.clone(), targets);
        match self.config.method {
            Method::Dlg | Method::Idlg => {
                g.0.into_iter()
                    .zip(&self.target.0)
                    .map(|(a, b)| (a - b.clone()).powi_scalar(2).sum())
                    .reduce(|a, b| a + b)
                    .unwrap_or_else(|| Tensor::zeros([1], &self.device))
            }
            Method::InvertingGradients => {
                let mut dot = None;
                let mut na = None;
                for (a, b) in g.0.into_iter().zip(&self.target.0) {
                    let d = (a.clone() * b.clone()).sum();
                    let n = a.powi_scalar(2).sum();
                    dot = Some(dot.map_or(d.clone(), |s: Tensor<1>| s + d));
                    na = Some(na.map_or(n.clone(), |s: Tensor<1>| s + n));
                }
                let nb = self.target_sq_norm;
                let (dot, na) = match (dot, na) {
                    (Some(d), Some(n)) => (d, n),
                    _ => return Tensor::zeros([1], &self.device),
                };
                let cosine = dot / (na.sqrt() * nb.sqrt().max(1e-12) + 1e-12);
                cosine.neg() + 1.0 + total_variation(x) * f64::from(self.config.tv_weight)
            }
        }
    }

    /// One optimisation step. Errors when the loss stops being finite.
    pub fn step(&mut self) -> Result<AttackStep, LeakageError> {
        let loss = self.matching_loss();
        let value = loss.clone().into_scalar::<f32>();
        if !value.is_finite() {
            return Err(LeakageError::NonFinite(format!(
                "the matching loss is {value} at iteration {}",
                self.iteration + 1
            )));
        }
        let lr = self.config.learning_rate_at(self.iteration);
        let grads = GradientsParams::from_grads(loss.backward(), &self.dummy);
        let dummy = std::mem::replace(
            &mut self.dummy,
            Dummy {
                image: Param::from_tensor(Tensor::zeros([1, 1, 1, 1], &self.device)),
                label: Param::from_tensor(Tensor::zeros([1, 1], &self.device)),
            },
        );
        let mut dummy = self.optimizer.step(lr, dummy, grads);
        if self.config.box_constraint {
            dummy.image = dummy
                .image
                .map(|t| t.clamp(0.0, 1.0).detach().require_grad());
        }
        self.dummy = dummy;
        self.iteration += 1;
        if self.iteration == 1 {
            self.first_loss = value;
        }
        self.last_loss = value;
        Ok(AttackStep {
            iteration: self.iteration,
            loss: value,
        })
    }

    /// Steps done.
    pub fn iteration(&self) -> usize {
        self.iteration
    }

    /// The settings.
    pub fn config(&self) -> &AttackConfig {
        &self.config
    }

    /// The current dummy image, `[C, H, W]` in C order.
    pub fn image(&self) -> Vec<f32> {
        self.dummy
            .image
            .val()
            .inner()
            .into_data()
            .iter::<f32>()
            .collect()
    }

    /// The current label: the inferred one, or the argmax of DLG's dummy label.
    pub fn label(&self) -> usize {
        self.label.unwrap_or_else(|| {
            let v: Vec<f32> = self
                .dummy
                .label
                .val()
                .inner()
                .into_data()
                .iter::<f32>()
                .collect();
            crate::nn::train::argmax_rows(&v, v.len().max(1))
                .first()
                .map_or(0, |&l| l as usize)
        })
    }

    /// The relative residual `‖g(x̂, ŷ) − g*‖² / ‖g*‖²` of the current dummy.
    pub fn residual(&self) -> f32 {
        let x = self.dummy.image.val().detach();
        let targets = match self.label {
            Some(l) => one_hot(&[l], self.net.config().classes, &self.device),
            None => softmax(self.dummy.label.val().detach(), 1),
        };
        let g = self.net.param_gradients(x, targets);
        let num: f64 =
            g.0.into_iter()
                .zip(&self.target.0)
                .map(|(a, b)| f64::from((a - b.clone()).powi_scalar(2).sum().into_scalar::<f32>()))
                .sum();
        (num / self.target_sq_norm.max(1e-30)) as f32
    }

    /// The reconstruction so far.
    pub fn reconstruction(&self) -> Reconstruction {
        Reconstruction {
            residual: self.residual(),
            image: self.image(),
            label: self.label(),
            loss: self.last_loss,
            initial_loss: self.first_loss,
            iterations: self.iteration,
            attempts: 1,
        }
    }

    /// Runs the remaining iterations; `on_step` may stop early.
    pub fn run(
        mut self,
        mut on_step: impl FnMut(&AttackStep, &GradientAttack) -> Control,
    ) -> Result<Reconstruction, LeakageError> {
        while self.iteration < self.config.iterations {
            let s = self.step()?;
            if on_step(&s, &self) == Control::Stop {
                break;
            }
        }
        Ok(self.reconstruction())
    }
}

/// The shared gradient of one training image with a hard label, as the victim computes it with
/// burn's autodiff (`device` must be an autodiff device).
pub fn victim_gradient(
    net: &AttackedNet,
    image: &[f32],
    label: usize,
    device: &Device,
) -> Vec<Vec<f32>> {
    let s = net.config().shape;
    let net = net.to_device(device);
    let x = Tensor::<4>::from_data(
        TensorData::new(image.to_vec(), [1, s.channels, s.height, s.width]),
        device,
    );
    let y = one_hot(&[label], net.config().classes, device);
    net.autodiff_gradients(x, y).to_vecs()
}

/// The attack retried up to `restarts` times, each retry from a new dummy (another seed) with
/// twice the previous iterations, until a run [converges](Reconstruction::converged); the run
/// with the smallest residual wins. (Geiping et al. restart the same way; doubling the budget is
/// what the digits need: the runs that fail at 300 iterations are slow, not stuck.)
pub fn attack_with_restarts(
    net: &AttackedNet,
    grads: &[Vec<f32>],
    config: AttackConfig,
    restarts: usize,
    device: &Device,
) -> Result<Reconstruction, LeakageError> {
    let mut best: Option<Reconstruction> = None;
    let mut attempts = 0;
    for r in 0..=restarts {
        attempts += 1;
        let mut c = config;
        c.seed = config
            .seed
            .wrapping_add((r as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        c.iterations = config.iterations.saturating_mul(1 << r.min(16));
        let rec = GradientAttack::new(net, grads, c, device)?.run(|_, _| Control::Continue)?;
        let done = rec.converged();
        if best.as_ref().is_none_or(|b| rec.residual < b.residual) {
            best = Some(rec);
        }
        if done {
            break;
        }
    }
    let mut best = best.ok_or_else(|| LeakageError::Invalid("no attempt ran".into()))?;
    best.attempts = attempts;
    Ok(best)
}

#[cfg(test)]
mod tests;
