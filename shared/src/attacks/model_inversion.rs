//! Model inversion through a classify route (survey §6; Fredrikson, Jha, Ristenpart, "Model
//! Inversion Attacks that Exploit Confidence Information", CCS 2015, Algorithm 1 "MI-Face").
//!
//! The attacker queries a model's class probabilities and looks for the input the model finds
//! most typical of one class: it descends `c(x) = −ln p_y(x) + λ·TV(x)` from a flat grey image,
//! keeping pixels in [0, 1]. Fredrikson et al. had the model's gradient; a classify route gives
//! only probabilities, so the gradient of the first term is estimated from queries by antithetic
//! Gaussian sampling (Ilyas, Engstrom, Athalye, Lin, "Black-box Adversarial Attacks with Limited
//! Queries and Information", ICML 2018, §2.2), `∇ ≈ Σᵢ [c(x+σuᵢ) − c(x−σuᵢ)]·uᵢ / (2σq)`. The
//! smoothness term `TV(x)` (squared differences of neighbouring pixels, Fredrikson's denoising
//! step made part of the objective) is computed by the attacker without queries. Steps are Adam
//! steps (Kingma & Ba 2015).
//!
//! Success is measured against the class means the scorer has ([`score_against_means`]): the
//! inversion's PSNR and SSIM to its class's mean, and whether that mean is the nearest of all.
//! A model trained on ciphertexts inverts to ciphertext-space images: the scorer compares them
//! with the plaintext means to show what the attacker learns about the owner's images.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::attacks::leakage::metrics::{psnr, ssim};
use crate::crypto::gaussian::gaussian_fill;
use crate::data::ImageShape;

/// Options of [`invert`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InversionOptions {
    /// Descent steps.
    pub steps: usize,
    /// Antithetic pairs of queries per step (`2·directions` queries a step).
    pub directions: usize,
    /// Scale of the probing noise, in pixel units.
    pub sigma: f32,
    /// Adam's step size, in pixel units.
    pub learning_rate: f32,
    /// Weight `λ` of the smoothness term.
    pub smoothness: f32,
    /// Weight of `Σ (x − x₀)²`, which keeps the image near its start `x₀`: the domain's mean
    /// image when the attacker has one ([`invert`]'s `prior`), flat grey otherwise. Without
    /// it, on the digits CNN, the descent ends in saturated images that convince the model and
    /// look like no digit (9 dB against the class means; 15–17 dB with it).
    pub prior_weight: f32,
    /// Seed of the probing noise.
    pub seed: u64,
}

impl Default for InversionOptions {
    fn default() -> Self {
        Self {
            steps: 150,
            directions: 20,
            sigma: 0.05,
            learning_rate: 0.03,
            smoothness: 0.1,
            prior_weight: 1.0,
            seed: 0,
        }
    }
}

impl InversionOptions {
    /// Queries one inversion costs: the steps' probes and one final query.
    pub fn queries(&self) -> usize {
        self.steps * 2 * self.directions + 1
    }
}

/// One class's inversion.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Inversion {
    /// The attacked class.
    pub class: u32,
    /// The reconstructed image, `[C, H, W]` values in [0, 1].
    pub image: Vec<f32>,
    /// The model's probability of the class for it.
    pub confidence: f64,
    /// Queries spent.
    pub queries: usize,
}

/// Why an inversion stopped early.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InversionError {
    /// The oracle answered the wrong number of probabilities.
    #[error("the model answered {got} probabilities for {images} images of {classes} classes")]
    Answer {
        /// Values answered.
        got: usize,
        /// Images asked.
        images: usize,
        /// Classes expected per image.
        classes: usize,
    },
    /// The class is not one of the model's.
    #[error("class {class} is not one of the model's {classes} classes")]
    Class {
        /// The class asked for.
        class: u32,
        /// The model's classes.
        classes: usize,
    },
    /// The oracle failed or the caller stopped the run.
    #[error("{0}")]
    Stopped(String),
}

/// Inverts class `class` of a model that `query` answers: `query(images)` takes `[B, C, H, W]`
/// pixels and returns `[B, classes]` probabilities (or why it cannot). `prior`, an image of the
/// domain the attacker knows (its mean image: public data of the same kind, as Zhang et al.'s
/// "generative model inversion" assumes), is the start and the anchor of the descent. `on_step(step,
/// confidence)` reports progress after each step and stops the run by returning an error.
pub fn invert(
    mut query: impl FnMut(&[f32]) -> Result<Vec<f32>, String>,
    shape: ImageShape,
    classes: usize,
    class: u32,
    prior: Option<&[f32]>,
    options: InversionOptions,
    mut on_step: impl FnMut(usize, f64) -> Result<(), String>,
) -> Result<Inversion, InversionError> {
    if class as usize >= classes {
        return Err(InversionError::Class { class, classes });
    }
    let m = shape.len();
    let q = options.directions.max(1);
    let sigma = options.sigma.max(1e-4);
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed ^ (u64::from(class) << 32));
    let mut ask = |images: &[f32]| -> Result<Vec<f64>, InversionError> {
        let b = images.len() / m;
        let p = query(images).map_err(InversionError::Stopped)?;
        if p.len() != b * classes {
            return Err(InversionError::Answer {
                got: p.len(),
                images: b,
                classes,
            });
        }
        Ok((0..b)
            .map(|i| -f64::from(p[i * classes + class as usize]).max(1e-30).ln())
            .collect())
    };
    let mut x = match prior {
        Some(p) if p.len() == m => p.to_vec(),
        _ => vec![0.5f32; m],
    };
    let anchor: Vec<f32> = x.clone();
    let (mut first, mut second) = (vec![0.0f64; m], vec![0.0f64; m]);
    let mut noise = vec![0.0f64; q * m];
    let mut probes = vec![0.0f32; 2 * q * m];
    let mut queries = 0;
    let (beta1, beta2) = (0.9f64, 0.999f64);
    for step in 0..options.steps {
        gaussian_fill(&mut rng, &mut noise);
        for i in 0..q {
            for j in 0..m {
                let d = sigma * noise[i * m + j] as f32;
                probes[(2 * i) * m + j] = (x[j] + d).clamp(0.0, 1.0);
                probes[(2 * i + 1) * m + j] = (x[j] - d).clamp(0.0, 1.0);
            }
        }
        let losses = ask(&probes)?;
        queries += 2 * q;
        let mut grad = smoothness_gradient(&x, shape);
        for (j, g) in grad.iter_mut().enumerate() {
            *g = *g * f64::from(options.smoothness)
                + 2.0 * f64::from(options.prior_weight) * f64::from(x[j] - anchor[j]);
        }
        let scale = 1.0 / (2.0 * f64::from(sigma) * q as f64);
        for i in 0..q {
            let diff = (losses[2 * i] - losses[2 * i + 1]) * scale;
            for j in 0..m {
                grad[j] += diff * noise[i * m + j];
            }
        }
        let t = (step + 1) as i32;
        let (c1, c2) = (1.0 - beta1.powi(t), 1.0 - beta2.powi(t));
        for j in 0..m {
            first[j] = beta1 * first[j] + (1.0 - beta1) * grad[j];
            second[j] = beta2 * second[j] + (1.0 - beta2) * grad[j] * grad[j];
            let update = (first[j] / c1) / ((second[j] / c2).sqrt() + 1e-8);
            x[j] = (x[j] - options.learning_rate * update as f32).clamp(0.0, 1.0);
        }
        let mean_loss = losses.iter().sum::<f64>() / losses.len() as f64;
        on_step(step + 1, (-mean_loss).exp()).map_err(InversionError::Stopped)?;
    }
    let confidence = (-ask(&x)?[0]).exp();
    queries += 1;
    Ok(Inversion {
        class,
        image: x,
        confidence,
        queries,
    })
}

/// The gradient of `Σ (neighbour differences)²` over rows and columns of every channel.
fn smoothness_gradient(x: &[f32], shape: ImageShape) -> Vec<f64> {
    let (h, w) = (shape.height, shape.width);
    let mut g = vec![0.0f64; x.len()];
    for c in 0..shape.channels {
        let at = |i: usize, j: usize| c * h * w + i * w + j;
        for i in 0..h {
            for j in 0..w {
                if j + 1 < w {
                    let d = 2.0 * f64::from(x[at(i, j + 1)] - x[at(i, j)]);
                    g[at(i, j + 1)] += d;
                    g[at(i, j)] -= d;
                }
                if i + 1 < h {
                    let d = 2.0 * f64::from(x[at(i + 1, j)] - x[at(i, j)]);
                    g[at(i + 1, j)] += d;
                    g[at(i, j)] -= d;
                }
            }
        }
    }
    g
}

/// The per-class means of `[N, C, H, W]` `images` with `labels` (a class without images gets an
/// empty mean).
pub fn class_means(
    images: &[f32],
    labels: &[u32],
    shape: ImageShape,
    classes: usize,
) -> Vec<Vec<f32>> {
    let m = shape.len();
    let mut sums = vec![vec![0.0f64; m]; classes];
    let mut counts = vec![0usize; classes];
    for (row, &y) in images.chunks_exact(m).zip(labels) {
        if let Some(s) = sums.get_mut(y as usize) {
            counts[y as usize] += 1;
            for (a, &v) in s.iter_mut().zip(row) {
                *a += f64::from(v);
            }
        }
    }
    sums.into_iter()
        .zip(counts)
        .map(|(s, n)| {
            if n == 0 {
                Vec::new()
            } else {
                s.into_iter().map(|v| (v / n as f64) as f32).collect()
            }
        })
        .collect()
}

/// The domain's mean image as the class means give it: the mean of the non-empty ones (each
/// class weighs the same whatever its count). `None` when every class is empty.
pub fn domain_mean(means: &[Vec<f32>]) -> Option<Vec<f32>> {
    let present: Vec<&Vec<f32>> = means.iter().filter(|m| !m.is_empty()).collect();
    let len = present.first()?.len();
    Some(
        (0..len)
            .map(|j| present.iter().map(|m| m[j]).sum::<f32>() / present.len() as f32)
            .collect(),
    )
}

/// How close an inversion came to what the model learnt.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InversionScore {
    /// PSNR (dB) of the inversion against its class's mean.
    pub psnr: f64,
    /// SSIM against its class's mean.
    pub ssim: f64,
    /// The class whose mean differs from the domain's mean most as the inversion does (cosine
    /// of the two deviations); the attack found the class's own features when it is the
    /// attacked class.
    pub nearest_class: u32,
    /// PSNR of the mean of all class means against the class's mean: what an attacker who
    /// knows only the domain gets without a single query.
    pub domain_mean_psnr: f64,
}

/// Scores `inversion` against `means` (from [`class_means`]).
pub fn score_against_means(
    inversion: &Inversion,
    means: &[Vec<f32>],
    shape: ImageShape,
) -> InversionScore {
    let target = &means[inversion.class as usize];
    let domain = domain_mean(means).unwrap_or_else(|| vec![0.0; shape.len()]);
    // Which class's own features the inversion shows: the class whose mean's deviation from
    // the domain mean points most nearly the way the inversion's does (cosine). Nearest by PSNR
    // would favour whichever class mean lies closest to the domain mean.
    let deviation = |v: &[f32]| -> Vec<f64> {
        v.iter()
            .zip(&domain)
            .map(|(a, b)| f64::from(a - b))
            .collect()
    };
    let own = deviation(&inversion.image);
    let own_norm = own.iter().map(|a| a * a).sum::<f64>().sqrt();
    let cosines: Vec<(usize, f64)> = (0..means.len())
        .filter(|&k| !means[k].is_empty())
        .map(|k| {
            let d = deviation(&means[k]);
            let dot: f64 = own.iter().zip(&d).map(|(a, b)| a * b).sum();
            let norms = own_norm * d.iter().map(|a| a * a).sum::<f64>().sqrt();
            (k, if norms > 0.0 { dot / norms } else { 0.0 })
        })
        .collect();
    let nearest = cosines
        .iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(0, |&(k, _)| k);
    InversionScore {
        psnr: psnr(&inversion.image, target),
        ssim: ssim(&inversion.image, target, shape),
        nearest_class: nearest as u32,
        domain_mean_psnr: psnr(&domain, target),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::digits;
    use crate::nn::model::{Classifier, demo};

    /// Against the shipped digits CNN, through its probabilities only: every class's inversion
    /// convinces the model, and most look like their class's mean more than like any other.
    #[test]
    fn inverting_the_digits_model_finds_each_class() {
        let device = burn::tensor::Device::flex();
        let model = demo::card().config.load(demo::WEIGHTS, &device).unwrap();
        let data = digits();
        let means = class_means(&data.images, &data.labels, data.shape, 10);
        // The attacker's prior: the domain's mean image (here the mean of the class means).
        let domain = domain_mean(&means).unwrap();
        let mut identified = 0;
        let mut above_domain = 0;
        for class in 0..10u32 {
            let query = |images: &[f32]| -> Result<Vec<f32>, String> {
                let x = crate::data::images_tensor(images, data.shape, &device);
                Ok(model.probabilities(x).into_data().iter::<f32>().collect())
            };
            let inv = invert(
                query,
                data.shape,
                10,
                class,
                Some(&domain),
                InversionOptions::default(),
                |_, _| Ok(()),
            )
            .unwrap();
            assert!(
                inv.confidence > 0.9,
                "class {class}: p = {}",
                inv.confidence
            );
            assert_eq!(inv.queries, InversionOptions::default().queries());
            let s = score_against_means(&inv, &means, data.shape);
            identified += usize::from(s.nearest_class == class);
            above_domain += usize::from(s.psnr > s.domain_mean_psnr);
        }
        assert!(identified >= 8, "{identified} of 10 classes identified");
        assert!(
            above_domain >= 6,
            "{above_domain} of 10 nearer their mean than the domain's"
        );
    }

    #[test]
    fn a_class_out_of_range_and_a_short_answer_are_refused() {
        let shape = ImageShape::new(1, 2, 2);
        let err = invert(
            |_| Ok(vec![]),
            shape,
            3,
            3,
            None,
            InversionOptions::default(),
            |_, _| Ok(()),
        )
        .unwrap_err();
        assert!(matches!(
            err,
            InversionError::Class {
                class: 3,
                classes: 3
            }
        ));
        let err = invert(
            |_| Ok(vec![0.5; 3]),
            shape,
            3,
            0,
            None,
            InversionOptions::default(),
            |_, _| Ok(()),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("answered 3 probabilities"),
            "{err}"
        );
    }

    #[test]
    fn class_means_average_each_class() {
        let shape = ImageShape::new(1, 1, 2);
        let m = class_means(&[0.0, 1.0, 1.0, 1.0, 0.5, 0.5], &[0, 0, 2], shape, 3);
        assert_eq!(m, vec![vec![0.5, 1.0], vec![], vec![0.5, 0.5]]);
        assert_eq!(domain_mean(&m), Some(vec![0.5, 0.75]));
        assert_eq!(domain_mean(&[vec![], vec![]]), None);
    }
}
