use burn::tensor::FloatDType;

use super::*;
use crate::data::{ImageShape, digits};

fn max_rel_err(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    let scale = b
        .iter()
        .flatten()
        .fold(0.0f32, |m, v| m.max(v.abs()))
        .max(1e-12);
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

fn soft_targets(n: usize, classes: usize, device: &Device) -> Tensor<2> {
    let v: Vec<f32> = (0..n * classes)
        .map(|i| ((i * 37 % 11) as f32 + 0.5) / 11.0)
        .collect();
    softmax(
        Tensor::from_data(TensorData::new(v, [n, classes]), device),
        1,
    )
}

#[test]
fn hand_written_gradients_equal_autodiff() {
    let device = Device::flex().autodiff();
    let data = digits();
    let shape = data.shape;
    for arch in [
        AttackedArch::LENET,
        AttackedArch::Lenet {
            channels: 4,
            convs: 1,
        },
        AttackedArch::MLP,
    ] {
        let net = AttackedNetConfig::new(arch, shape, 10, 3).init(&device);
        let x = data.images_tensor(0..3, &device);
        let p = soft_targets(3, 10, &device);
        let ours = net.param_gradients(x.clone(), p.clone()).to_vecs();
        let reference = net.autodiff_gradients(x, p).to_vecs();
        let sizes: Vec<usize> = ours.iter().map(Vec::len).collect();
        let total: usize = sizes.iter().sum();
        assert_eq!(total, net.config().num_params(), "{arch:?}");
        assert_eq!(
            sizes,
            reference.iter().map(Vec::len).collect::<Vec<_>>(),
            "{arch:?}"
        );
        let err = max_rel_err(&ours, &reference);
        assert!(err < 1e-5, "{arch:?}: max relative error {err}");
    }
}

/// The matching loss `D(x) = Σ‖g(x) − g*‖²` differentiated by the outer autodiff through the
/// hand-written backward, against central finite differences, in f64.
#[test]
fn second_derivatives_match_finite_differences() {
    let device = Device::flex().autodiff();
    let data = digits();
    let shape = data.shape;
    for arch in [
        AttackedArch::Lenet {
            channels: 4,
            convs: 2,
        },
        AttackedArch::MLP,
    ] {
        let net = AttackedNetConfig::new(arch, shape, 10, 5)
            .init(&device)
            .cast(FloatDType::F64);
        let target = net
            .param_gradients(
                data.images_tensor(0..1, &device).cast(FloatDType::F64),
                one_hot(&[data.labels[0] as usize], 10, &device).cast(FloatDType::F64),
            )
            .0
            .into_iter()
            .map(|t| t.detach())
            .collect::<Vec<_>>();
        let p = one_hot(&[3], 10, &device).cast(FloatDType::F64);
        let d = |x: Tensor<4>| -> Tensor<1> {
            net.param_gradients(x, p.clone())
                .0
                .into_iter()
                .zip(&target)
                .map(|(a, b)| (a - b.clone()).powi_scalar(2).sum())
                .reduce(|a, b| a + b)
                .expect("parameters")
        };
        let x0: Vec<f64> = data
            .image(5)
            .iter()
            .map(|&v| f64::from(v) * 0.8 + 0.1)
            .collect();
        let tensor = |v: &[f64]| {
            Tensor::<4>::from_data(
                TensorData::new(v.to_vec(), [1, 1, 8, 8]),
                (&device, burn::tensor::DType::F64),
            )
        };
        let x = tensor(&x0).require_grad();
        let grads = d(x.clone()).backward();
        let analytic: Vec<f64> = x
            .grad(&grads)
            .expect("a gradient for x")
            .into_data()
            .iter::<f64>()
            .collect();
        let h = 1e-5;
        let scale = analytic.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(scale > 1e-8, "{arch:?}: the gradient vanishes ({scale})");
        let mut worst = 0.0f64;
        for k in 0..x0.len() {
            let (mut plus, mut minus) = (x0.clone(), x0.clone());
            plus[k] += h;
            minus[k] -= h;
            let f = |v: &[f64]| d(tensor(v)).into_scalar::<f64>();
            let fd = (f(&plus) - f(&minus)) / (2.0 * h);
            worst = worst.max((fd - analytic[k]).abs() / scale);
        }
        assert!(worst < 1e-3, "{arch:?}: max relative error {worst}");
    }
}

#[test]
fn idlg_infers_labels_and_the_analytic_attack_is_exact() {
    let device = Device::flex().autodiff();
    let data = digits();
    let lenet = AttackedNetConfig::new(AttackedArch::LENET, data.shape, 10, 1).init(&device);
    let mlp = AttackedNetConfig::new(AttackedArch::MLP, data.shape, 10, 1).init(&device);
    for i in 0..20 {
        let label = data.labels[i] as usize;
        let g = victim_gradient(&lenet, data.image(i), label, &device);
        assert_eq!(infer_label(&lenet, &g), label, "image {i}");
        let g = victim_gradient(&mlp, data.image(i), label, &device);
        assert_eq!(infer_label(&mlp, &g), label, "image {i}");
        let x = analytic_first_layer(&mlp, &g).expect("an MLP");
        let p = metrics::psnr(&x, data.image(i));
        assert!(p > 60.0, "image {i}: analytic PSNR {p}");
    }
    assert!(
        analytic_first_layer(&lenet, &victim_gradient(&lenet, data.image(0), 0, &device)).is_none()
    );
}

#[test]
fn bad_gradients_are_refused() {
    let device = Device::flex().autodiff();
    let net =
        AttackedNetConfig::new(AttackedArch::MLP, ImageShape::new(1, 8, 8), 10, 1).init(&device);
    let config = AttackConfig::new(Method::Idlg);
    let err = GradientAttack::new(&net, &[vec![0.0; 3]], config, &device)
        .err()
        .expect("a wrong shape");
    assert!(matches!(err, LeakageError::GradientShape { .. }), "{err}");
    let mut g = victim_gradient(&net, digits().image(0), 0, &device);
    g[1][0] = f32::NAN;
    let err = GradientAttack::new(&net, &g, config, &device)
        .err()
        .expect("NaN");
    assert!(err.to_string().contains("non-finite"), "{err}");
    g[1][0] = 0.0;
    let mut bad = config;
    bad.iterations = 0;
    assert!(GradientAttack::new(&net, &g, bad, &device).is_err());
}

/// The reliability claim: with fixed seeds, iDLG and Inverting Gradients (with retries) recover
/// every one of the first five digits from the LeNet's gradient, and DLG most of them.
#[test]
fn gradient_matching_recovers_digits() {
    let device = Device::flex().autodiff();
    let data = digits();
    let net = AttackedNetConfig::new(AttackedArch::LENET, data.shape, 10, 7).init(&device);
    for (method, restarts, images, min_mean) in [
        (Method::Idlg, 2, 0..5, 30.0),
        (Method::InvertingGradients, 2, 0..5, 40.0),
        (Method::Dlg, 0, 1..4, 25.0),
    ] {
        let mut psnrs = Vec::new();
        for i in images {
            let label = data.labels[i] as usize;
            let g = victim_gradient(&net, data.image(i), label, &device);
            let mut config = AttackConfig::new(method);
            config.seed = i as u64;
            let rec = attack_with_restarts(&net, &g, config, restarts, &device).expect("finite");
            assert_eq!(rec.label, label, "{method:?} image {i}");
            psnrs.push(metrics::psnr(&rec.image, data.image(i)));
        }
        let mean = psnrs.iter().sum::<f64>() / psnrs.len() as f64;
        let min = psnrs.iter().copied().fold(f64::INFINITY, f64::min);
        assert!(mean >= min_mean, "{method:?}: PSNR {psnrs:?}");
        if restarts > 0 {
            assert!(min >= 25.0, "{method:?}: PSNR {psnrs:?}");
        }
    }
}
