//! OWSD key recovery by fitting the generator (Savransky, Mateless, Katz, §3.2 and §5.4).
//!
//! OWSD's key is the weights of a random generator whose architecture is public. An attacker who
//! holds `n` pairs (image, scramble) and the encoder (public, or the same pretrained network the
//! owner uses) has `n` pairs (embedding, scramble): the generator's input and output. It fits a
//! generator of the public architecture to them by gradient descent on the pre-sigmoid values
//! (the logits of the scrambles), and so gets a copy of the key's *function*. With it the
//! attacker scrambles as many of its own images as it likes, and trains the §5.3 inverter on
//! those instead of on the `n` pairs: the paper's budget of about 9,000 images per key assumes an
//! attacker who only learns from real pairs.

use burn::module::{Module, Param};
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::TensorData;

use crate::crypto::keys::SubKey;
use crate::schemes::owsd::{OwsdError, ScrambleConfig, ScrambleKey, generator_logits};

/// A generator of the public architecture whose weights are being fitted.
#[derive(Module, Debug)]
pub struct GeneratorFit {
    project: Param<Tensor<2>>,
    deconvs: Vec<Param<Tensor<4>>>,
}

impl GeneratorFit {
    fn logits(&self, config: &ScrambleConfig, embeddings: Tensor<2>) -> Tensor<2> {
        let deconvs: Vec<Tensor<4>> = self.deconvs.iter().map(Param::val).collect();
        generator_logits(self.project.val(), &deconvs, config, embeddings)
    }
}

/// How the fit went.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FitReport {
    /// Pairs the attacker fitted on.
    pub pairs: usize,
    /// Mean squared error of the fitted generator's logits on its pairs at the end.
    pub train_logit_mse: f64,
}

/// Options of the fit.
#[derive(Debug, Clone, Copy)]
pub struct FitOptions {
    /// Adam steps.
    pub steps: usize,
    /// Learning rate.
    pub learning_rate: f64,
    /// Batch size.
    pub batch: usize,
    /// Seed of the device's randomness (the initial weights come from `start`).
    pub seed: u64,
}

impl Default for FitOptions {
    fn default() -> Self {
        Self {
            steps: 2000,
            learning_rate: 2e-3,
            batch: 64,
            seed: 7,
        }
    }
}

/// Fits a generator of `config`'s architecture to `n` pairs: `embeddings` (`[n, embedding]`
/// row-major) and the `scrambles` they gave under the owner's key (`[n, C·H·W]`, in (0, 1)).
/// The fit starts from the generator of `start`, the attacker's own random key. Returns the
/// fitted generator as a [`ScrambleKey`] on `device` (it scrambles like the owner's key, as far
/// as the fit went) and the report.
pub fn fit_generator(
    config: ScrambleConfig,
    embeddings: &[f32],
    scrambles: &[f32],
    start: &SubKey,
    options: FitOptions,
    device: &Device,
) -> Result<(ScrambleKey, FitReport), OwsdError> {
    let d = config.embedding;
    let out = config.output.len();
    let n = embeddings.len() / d.max(1);
    if n == 0 || embeddings.len() != n * d || scrambles.len() != n * out {
        return Err(OwsdError::Weights(format!(
            "{} embedding values and {} scramble values are not pairs of {d} and {out}",
            embeddings.len(),
            scrambles.len()
        )));
    }
    let ad = Device::flex().autodiff();
    ad.seed(options.seed);
    let (project, deconvs) = config.init(start, &ad)?.weights();
    let mut model = GeneratorFit {
        project: Param::from_tensor(project),
        deconvs: deconvs.into_iter().map(Param::from_tensor).collect(),
    };
    let mut optim = AdamConfig::new().init();
    let e = Tensor::<2>::from_data(TensorData::new(embeddings.to_vec(), [n, d]), &ad);
    // The targets are the logits of the scrambles: the generator's standardised output.
    let t = Tensor::<2>::from_data(TensorData::new(scrambles.to_vec(), [n, out]), &ad)
        .clamp(1e-6, 1.0 - 1e-6);
    let t = t.clone().log() - t.neg().add_scalar(1.0).log();
    let batch = options.batch.clamp(1, n);
    let mut last = f64::NAN;
    for step in 0..options.steps {
        let s = (step * batch) % n;
        let e_ = (s + batch).min(n);
        let loss = (model.logits(&config, e.clone().slice(s..e_)) - t.clone().slice(s..e_))
            .powi_scalar(2)
            .mean();
        if step + 1 == options.steps {
            last = f64::from(loss.clone().into_scalar::<f32>());
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(options.learning_rate, model, grads);
    }
    let fitted = model.valid();
    let key = ScrambleKey::from_weights(
        config,
        fitted.project.val().to_device(device),
        fitted
            .deconvs
            .iter()
            .map(|w| w.val().to_device(device))
            .collect(),
    )?;
    Ok((
        key,
        FitReport {
            pairs: n,
            train_logit_mse: last,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attacks::leakage::metrics::psnr;
    use crate::crypto::keys::{MasterKey, Scheme};
    use crate::data::ImageShape;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn scramble(key: &ScrambleKey, e: &[f32], d: usize, device: &Device) -> Vec<f32> {
        let n = e.len() / d;
        key.scramble(Tensor::from_data(
            TensorData::new(e.to_vec(), [n, d]),
            device,
        ))
        .unwrap()
        .into_data()
        .iter::<f32>()
        .collect()
    }

    /// Fitted on a few hundred pairs, the copy scrambles embeddings it never saw much like the
    /// owner's key, and far better than another random key does.
    #[test]
    fn pairs_give_a_copy_of_the_key() {
        let device = Device::flex();
        let config = ScrambleConfig::new(16, ImageShape::new(1, 8, 8));
        let owner = config
            .init(
                &MasterKey::from_bytes([3; 32]).subkey(Scheme::Owsd, "generator"),
                &device,
            )
            .unwrap();
        let attacker = MasterKey::from_bytes([4; 32]).subkey(Scheme::Owsd, "attacker");
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut e = vec![0.0f64; 600 * 16];
        crate::crypto::gaussian::gaussian_fill(&mut rng, &mut e);
        let e: Vec<f32> = e.into_iter().map(|x| x.abs() as f32).collect();
        let (train, test) = e.split_at(500 * 16);
        let s_train = scramble(&owner, train, 16, &device);
        let s_test = scramble(&owner, test, 16, &device);
        let (copy, report) = fit_generator(
            config,
            train,
            &s_train,
            &attacker,
            FitOptions {
                steps: 1500,
                ..FitOptions::default()
            },
            &device,
        )
        .unwrap();
        assert_eq!(report.pairs, 500);
        let guess = config.init(&attacker, &device).unwrap();
        let fitted = psnr(&scramble(&copy, test, 16, &device), &s_test);
        let blind = psnr(&scramble(&guess, test, 16, &device), &s_test);
        assert!(fitted > blind + 6.0, "fitted {fitted} dB, blind {blind} dB");
    }

    #[test]
    fn mismatched_pairs_are_refused() {
        let config = ScrambleConfig::new(16, ImageShape::new(1, 8, 8));
        let key = MasterKey::from_bytes([4; 32]).subkey(Scheme::Owsd, "attacker");
        let err = fit_generator(
            config,
            &[0.0; 32],
            &[0.5; 64],
            &key,
            FitOptions::default(),
            &Device::flex(),
        )
        .unwrap_err();
        assert!(matches!(err, OwsdError::Weights(_)), "{err}");
    }
}
