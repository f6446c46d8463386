//! L2 projected gradient descent (Madry, Makelov, Schmidt, Tsipras, Vladu 2018), as adversarial
//! data encryption uses it (paper §3.3): every step has the same L2 length in the direction of
//! the gradient, and after each step the perturbation is projected onto the ε-ball around the
//! original and the image onto [0, 1]. Batched, on any burn device with autodiff.

use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use burn::tensor::Distribution;
use serde::{Deserialize, Serialize};

use super::AdversarialError;
use crate::data::ImageShape;
use crate::nn::model::Classifier;

/// Hyper-parameters of [`pgd_l2`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PgdConfig {
    /// Radius of the L2 ball around the original image (pixels in [0, 1]).
    pub epsilon: f32,
    /// L2 length of each step.
    pub step: f32,
    /// Steps.
    pub iterations: usize,
    /// Start from a random point of the ball instead of the image itself.
    pub random_start: bool,
}

impl PgdConfig {
    /// The paper's CIFAR-10 setting (§3.3): ε 0.5, step 0.1, 100 iterations.
    pub fn paper() -> Self {
        Self {
            epsilon: 0.5,
            step: 0.1,
            iterations: 100,
            random_start: false,
        }
    }

    /// The ε whose full use changes an image of `shape` by exactly `psnr_db` dB:
    /// `ε = √d · 10^(−PSNR/20)`. At 32×32×3 and 40.8 dB this is the paper's 0.5; Veil's default
    /// keeps 30 dB, which is ε 0.25 on the 8×8 digits and 1.75 on 32×32×3.
    pub fn epsilon_for_psnr(shape: ImageShape, psnr_db: f64) -> f32 {
        ((shape.len() as f64).sqrt() * 10f64.powf(-psnr_db / 20.0)) as f32
    }

    /// ε, `iterations` steps of length `2.5 ε / iterations` (so the walk can cross the ball and
    /// come back, as the paper's 0.1 × 100 against 0.5 does with room to spare), no random
    /// start.
    pub fn with_epsilon(epsilon: f32, iterations: usize) -> Self {
        Self {
            epsilon,
            step: (2.5 * epsilon / iterations.max(1) as f32).max(epsilon / 5.0),
            iterations,
            random_start: false,
        }
    }

    /// Refuses ε or a step that is not positive and finite, and zero iterations.
    pub fn validate(&self) -> Result<(), AdversarialError> {
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return Err(AdversarialError::Epsilon(self.epsilon));
        }
        if !(self.step.is_finite() && self.step > 0.0) {
            return Err(AdversarialError::Step(self.step));
        }
        if self.iterations == 0 {
            return Err(AdversarialError::Invalid(
                "PGD needs at least one iteration".into(),
            ));
        }
        Ok(())
    }
}

/// Which way PGD walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// Targeted: lower the loss of the given classes (encryption, Eq. 1).
    Toward,
    /// Untargeted: raise the loss of the given (true) classes (Madry's adversarial training).
    Away,
}

/// Per-image L2 norms `[B, 1, 1, 1]`, floored at `1e-12`.
fn norms(t: Tensor<4>) -> Tensor<4> {
    t.powi_scalar(2)
        .sum_dim(1)
        .sum_dim(2)
        .sum_dim(3)
        .sqrt()
        .clamp_min(1e-12)
}

/// L2 PGD on `images` `[B, C, H, W]` with pixels in [0, 1]: each step moves every image by
/// `step` (in L2) along its own normalised loss gradient, toward `classes` or away from them,
/// then projects the perturbation onto the ε-ball and the image onto [0, 1] (paper §3.3; Madry et
/// al. §2). `model` must live on an autodiff device; it is used frozen (no dropout, batch norm
/// on its running statistics) and left unchanged. With a random start the device's seed decides
/// the start. Returns the perturbed images, without autodiff.
pub fn pgd_l2<M: Classifier>(
    model: &M,
    images: Tensor<4>,
    classes: Tensor<1, Int>,
    goal: Goal,
    config: &PgdConfig,
) -> Result<Tensor<4>, AdversarialError> {
    config.validate()?;
    let device = images.device();
    if !device.is_autodiff() {
        return Err(AdversarialError::NotAutodiff);
    }
    let x0 = images.inner();
    // Burn initialises parameters lazily, and a clone shares the pending initialisation: touch
    // the caller's parameters first, so that freezing the clone cannot freeze a fresh model the
    // caller goes on to train (as adversarial training does).
    let _ = model.forward(x0.clone().narrow(0, 0, 1).autodiff());
    let model = model.clone().freeze();
    let [b, c, h, w] = x0.dims();
    let mut delta = if config.random_start {
        // A random direction, at a radius uniform in [0, ε].
        let dir = Tensor::<4>::random([b, c, h, w], Distribution::Normal(0.0, 1.0), &x0.device());
        let radius = Tensor::<4>::random(
            [b, 1, 1, 1],
            Distribution::Uniform(0.0, f64::from(config.epsilon)),
            &x0.device(),
        );
        let d = dir.clone() / norms(dir) * radius;
        (x0.clone() + d).clamp(0.0, 1.0) - x0.clone()
    } else {
        x0.zeros_like()
    };
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let sign = match goal {
        Goal::Toward => -1.0,
        Goal::Away => 1.0,
    };
    for _ in 0..config.iterations {
        let x = (x0.clone() + delta.clone()).autodiff().require_grad();
        let loss = loss_fn.forward(model.forward(x.clone()), classes.clone());
        let grads = loss.backward();
        let g = x.grad(&grads).ok_or(AdversarialError::NotAutodiff)?;
        let stepped = delta + g.clone() / norms(g) * (sign * config.step);
        let factor = (norms(stepped.clone()).recip() * config.epsilon).clamp_max(1.0);
        let projected = stepped * factor;
        delta = (x0.clone() + projected).clamp(0.0, 1.0) - x0.clone();
    }
    Ok(x0 + delta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::model::SmallCnnConfig;
    use crate::nn::train::{Control, TrainOptions, train_classifier};
    use burn::tensor::TensorData;

    fn trained() -> (
        crate::nn::model::SmallCnn,
        crate::data::ImageDataset,
        Device,
    ) {
        let all = crate::data::digits();
        let data = all.subset(&(0..600).collect::<Vec<_>>());
        let device = Device::flex().autodiff();
        device.seed(1);
        let model = SmallCnnConfig::for_shape(data.shape, 10).init(&device);
        let options = TrainOptions {
            epochs: 8,
            batch_size: 32,
            learning_rate: 3e-3,
            seed: 1,
        };
        let model =
            train_classifier(model, &data, options, &device, |_| Control::Continue).unwrap();
        (model, data, device)
    }

    /// The perturbation stays in the ε-ball and in [0, 1], and targeted PGD moves most images to
    /// their target class while untargeted PGD moves them off their own.
    #[test]
    fn pgd_stays_in_the_ball_and_reaches_its_goal() {
        let (model, data, device) = trained();
        let n = 64;
        let x = data.images_tensor(0..n, &device);
        let labels = data.labels_tensor(0..n, &device);
        let targets: Vec<i64> = data.labels[..n]
            .iter()
            .map(|&y| i64::from((y + 1) % 10))
            .collect();
        let targets = Tensor::<1, Int>::from_data(TensorData::new(targets, [n]), &device);
        let config = PgdConfig {
            epsilon: 1.5,
            step: 0.3,
            iterations: 30,
            random_start: true,
        };
        let valid = model.valid();
        let predict = |t: Tensor<4>| -> Vec<i64> {
            valid
                .forward(t)
                .argmax(1)
                .into_data()
                .iter::<i64>()
                .collect()
        };
        for (goal, classes) in [
            (Goal::Toward, targets.clone()),
            (Goal::Away, labels.clone()),
        ] {
            let adv = pgd_l2(&model, x.clone(), classes.clone(), goal, &config).unwrap();
            let d: Vec<f32> = (adv.clone() - x.clone().inner())
                .into_data()
                .iter::<f32>()
                .collect();
            for img in d.chunks(64) {
                let norm = img.iter().map(|v| v * v).sum::<f32>().sqrt();
                assert!(norm <= 1.5 + 1e-4, "perturbation of L2 norm {norm}");
            }
            let px: Vec<f32> = adv.clone().into_data().iter::<f32>().collect();
            assert!(px.iter().all(|v| (0.0..=1.0).contains(v)));
            let pred = predict(adv);
            let want: Vec<i64> = classes.inner().into_data().iter::<i64>().collect();
            let hits = pred.iter().zip(&want).filter(|(p, w)| p == w).count();
            match goal {
                Goal::Toward => assert!(hits >= n * 3 / 4, "{hits} of {n} reached their target"),
                Goal::Away => assert!(hits <= n / 4, "{hits} of {n} kept their label"),
            }
        }
        // Without autodiff there is no gradient: a clear error, not a panic.
        let err = pgd_l2(
            &model.valid(),
            x.inner(),
            labels.inner(),
            Goal::Away,
            &config,
        )
        .unwrap_err();
        assert!(matches!(err, AdversarialError::NotAutodiff));
    }

    #[test]
    fn bad_settings_are_refused() {
        for (eps, step) in [(0.0, 0.1), (-1.0, 0.1), (f32::NAN, 0.1), (0.5, 0.0)] {
            let c = PgdConfig {
                epsilon: eps,
                step,
                iterations: 3,
                random_start: false,
            };
            assert!(c.validate().is_err(), "{c:?}");
        }
        let eps = PgdConfig::epsilon_for_psnr(ImageShape::new(3, 32, 32), 40.8);
        assert!((eps - 0.5).abs() < 0.01, "{eps}");
    }
}
