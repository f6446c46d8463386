//! The scramble inverter of OWSD §5.3 (Savransky, Mateless, Katz): an attacker with pairs of
//! (scramble, original image) trains an autoencoder to invert the owner's generator. Its PSNR
//! against the number of pairs is what the paper's "empirical bound" of 9,000 images per key
//! rests on; `veil experiment owsd` reports it.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::{relu, sigmoid};

use crate::attacks::leakage::metrics::{self, psnr};

/// The autoencoder of the attack (§5.3): `dim` → 256 → 256 → `dim`, ReLU, sigmoid output.
#[derive(Module, Debug)]
pub struct Inverter {
    a: Linear,
    b: Linear,
    c: Linear,
}

impl Inverter {
    /// A freshly initialised inverter for vectors of `dim` values.
    pub fn new(dim: usize, device: &Device) -> Self {
        Self {
            a: LinearConfig::new(dim, 256).init(device),
            b: LinearConfig::new(256, 256).init(device),
            c: LinearConfig::new(256, dim).init(device),
        }
    }

    /// The inversion of a batch `[B, dim]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        sigmoid(
            self.c
                .forward(relu(self.b.forward(relu(self.a.forward(x))))),
        )
    }
}

/// The attack of OWSD §5.3: an attacker who holds `n` pairs (scramble → original image) trains
/// an [`Inverter`] on them with Adam (learning rate 10⁻³, batches of 64, `steps` steps from
/// `seed`), then inverts the scrambles `test_in` of images the attacker never saw. Returns the
/// mean PSNR and MSE of the inversions against `test_target`. The same call with originals as
/// inputs is the baseline of an autoencoder that sees the image itself.
pub fn inversion_attack(
    inputs: &[f32],
    targets: &[f32],
    n: usize,
    test_in: &[f32],
    test_target: &[f32],
    dim: usize,
    (steps, seed): (usize, u64),
) -> (f64, f64) {
    let device = Device::flex().autodiff();
    device.seed(seed);
    let mut model = Inverter::new(dim, &device);
    let mut optim = AdamConfig::new().init();
    let x = Tensor::<2>::from_data(
        TensorData::new(inputs[..n * dim].to_vec(), [n, dim]),
        &device,
    );
    let y = Tensor::<2>::from_data(
        TensorData::new(targets[..n * dim].to_vec(), [n, dim]),
        &device,
    );
    let batch = 64.min(n);
    for step in 0..steps {
        let s = (step * batch) % n;
        let e = (s + batch).min(n);
        let loss = (model.forward(x.clone().slice(s..e)) - y.clone().slice(s..e))
            .powi_scalar(2)
            .mean();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-3, model, grads);
    }
    let cpu = Device::flex();
    let model = model.valid().to_device(&cpu);
    let m = test_in.len() / dim;
    let out: Vec<f32> = model
        .forward(Tensor::from_data(
            TensorData::new(test_in.to_vec(), [m, dim]),
            &cpu,
        ))
        .into_data()
        .iter::<f32>()
        .collect();
    let (mut p, mut mse) = (0.0, 0.0);
    for i in 0..m {
        let (a, b) = (
            &out[i * dim..(i + 1) * dim],
            &test_target[i * dim..(i + 1) * dim],
        );
        p += psnr(a, b);
        mse += metrics::mse(a, b);
    }
    (p / m as f64, mse / m as f64)
}
