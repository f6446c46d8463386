//! The shipped demo model: its measured accuracy holds, and native inference reproduces the
//! reference logits in its card (the browser tests compare against the same numbers).

use veil::burn::tensor::Device;
use veil::data::digits;
use veil::nn::model::demo;
use veil::nn::train::{accuracy, predict_logits};

#[test]
fn demo_model_reaches_95_percent_on_the_held_out_digits() {
    let _rng = crate::device_rng();
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
    let _rng = crate::device_rng();
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
    let _rng = crate::device_rng();
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

/// Larger images get the SmallCnn's extra pools; a configuration written before they existed
/// (no `extra_pools` field, as in every card shipped until then) reads as none, so its weights
/// keep meaning the network they were trained in.
#[test]
fn the_small_cnn_pools_large_images_and_old_configs_read_as_unpooled() {
    let _rng = crate::device_rng();
    use veil::burn::tensor::{Distribution, Tensor};
    use veil::data::ImageShape;
    use veil::nn::model::{Classifier, SmallCnnConfig};
    let pools = |c, s| SmallCnnConfig::for_shape(ImageShape::new(c, s, s), 10).extra_pools;
    assert_eq!(
        [
            pools(1, 8),
            pools(1, 15),
            pools(1, 16),
            pools(1, 28),
            pools(3, 32)
        ],
        [None, None, Some(1), Some(2), Some(2)]
    );
    let old: SmallCnnConfig = serde_json::from_str(
        r#"{"channels":3,"height":32,"width":32,"num_classes":10,"base_filters":16,"hidden":64,"dropout":0.25}"#,
    )
    .unwrap();
    assert_eq!(old.extra_pools, None);
    let device = Device::flex();
    device.seed(3);
    let shape = ImageShape::new(3, 32, 32);
    let pooled = SmallCnnConfig::for_shape(shape, 10).init(&device);
    let bytes = pooled.to_bytes().unwrap();
    // The same weights fit both networks (pools have none), but they compute different things.
    let unpooled = old.load(&bytes, &device).unwrap();
    let x = Tensor::<4>::random([2, 3, 32, 32], Distribution::Uniform(0.0, 1.0), &device);
    let a: Vec<f32> = pooled
        .forward(x.clone())
        .into_data()
        .iter::<f32>()
        .collect();
    let b: Vec<f32> = unpooled.forward(x).into_data().iter::<f32>().collect();
    assert_eq!((a.len(), b.len()), (20, 20));
    let diff = a
        .iter()
        .zip(&b)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0, f32::max);
    assert!(diff > 1e-3, "max difference {diff}");
}
