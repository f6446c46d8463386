//! The shipped demo model: its measured accuracy holds, and native inference reproduces the
//! reference logits in its card (the browser tests compare against the same numbers).

use veil::burn::tensor::Device;
use veil::data::digits;
use veil::nn::model::demo;
use veil::nn::train::{accuracy, predict_logits};

#[test]
fn demo_model_reaches_95_percent_on_the_held_out_digits() {
    let card = demo::card();
    let device = Device::flex();
    let model = card.config.load(demo::WEIGHTS, &device).unwrap();
    let (_, test) = digits().split(card.split.0, card.split.1);
    let acc = accuracy(&model, &test, &device);
    assert!(acc >= 0.95, "test accuracy {acc}");
    assert!(
        (acc - card.test_accuracy).abs() < 1e-6,
        "card says {}, measured {acc}",
        card.test_accuracy
    );
}

#[test]
fn native_inference_reproduces_the_reference_logits() {
    let card = demo::card();
    let device = Device::flex();
    let model = card.config.load(demo::WEIGHTS, &device).unwrap();
    let (_, test) = digits().split(card.split.0, card.split.1);
    let logits = predict_logits(&model, &test.subset(&card.reference_indices), &device);
    let worst = logits
        .iter()
        .zip(&card.reference_logits)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-5, "max logit difference {worst}");
}

#[test]
fn corrupt_or_non_finite_weights_are_refused_with_a_reason() {
    let card = demo::card();
    let device = Device::flex();
    let err = card
        .config
        .load(&demo::WEIGHTS[..1000], &device)
        .unwrap_err();
    assert!(err.to_string().contains("cannot be loaded"), "{err}");
    // Weights of another architecture.
    let other = veil::nn::model::SmallCnnConfig::new(3, 32, 32, 10).with_base_filters(8);
    assert!(other.load(demo::WEIGHTS, &device).is_err());
    // NaN in the weights: find the float32 bytes of the last parameter and poison them.
    let mut poisoned = demo::WEIGHTS.to_vec();
    let n = poisoned.len();
    poisoned[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
    let err = card.config.load(&poisoned, &device).unwrap_err();
    assert!(err.to_string().contains("non-finite"), "{err}");
}
