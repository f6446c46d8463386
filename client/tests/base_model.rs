//! The page's base model for adversarial data encryption against the library's training loop,
//! bit for bit. Its own binary, with one test, because it compares two runs that draw from the CPU
//! backend's random generator (initial weights, dropout), which is process-wide: a test running
//! beside it in the same process would draw from it too.
#![cfg(not(target_arch = "wasm32"))]

#[path = "it/common.rs"]
mod common;

use common::{block_on, digits_adversarial_setup, session};
use veil::burn::tensor::Device;
use veil::crypto::keys::MasterKey;
use veil::data::{ImageShape, digits};
use veil::nn::model::SmallCnnConfig;
use veil::nn::train::Control;

/// The page's base model (trained a few steps per call, every value read asynchronously) is the
/// library's: the same split, the same steps as `train_classifier`, the same weights bit for bit
/// on the same device, and the same held-out accuracy. Then it serves as the base of PGD.
#[test]
fn the_page_trains_the_base_model_like_the_library() {
    use veil::nn::train::{TrainOptions, accuracy, train_classifier};
    use veil_client::adversarial::BaseTrainOptions;
    let key = MasterKey::from_bytes([46; 32]);
    let s = session(&key);
    let data = digits().subset(&(0..300).collect::<Vec<_>>());
    let options = BaseTrainOptions {
        epochs: 12,
        seed: 5,
        ..BaseTrainOptions::default()
    };
    let shape = ImageShape::new(1, 8, 8);
    let first = s
        .adversarial()
        .train_begin(
            data.images.clone(),
            data.labels.clone(),
            shape,
            data.class_names.clone(),
            options,
        )
        .unwrap();
    assert_eq!((first.done_steps, first.finished), (0, false));
    // Not finished: no model yet.
    assert!(
        block_on(s.adversarial().base_model())
            .unwrap_err()
            .to_string()
            .contains("still training")
    );
    let mut calls = 0;
    let last = loop {
        let p = block_on(s.adversarial().train_run(2)).unwrap();
        calls += 1;
        if p.finished {
            break p;
        }
    };
    let page = block_on(s.adversarial().base_model()).unwrap();

    let (train, held_out) = data.split(0.1, 5);
    assert_eq!(last.train_images, train.len());
    assert_eq!(last.validation_images, held_out.len());
    assert_eq!(last.total_steps, 12 * train.len().div_ceil(64));
    assert_eq!(calls, last.total_steps.div_ceil(2));
    let device = Device::flex().autodiff();
    device.seed(5);
    let config = SmallCnnConfig::for_shape(shape, 10);
    let native = train_classifier(
        config.init(&device),
        &train,
        TrainOptions {
            epochs: 12,
            batch_size: 64,
            learning_rate: options.learning_rate,
            seed: 5,
        },
        &device,
        |_| Control::Continue,
    )
    .unwrap();
    use veil::burn::module::Module;
    use veil::nn::train::predict_logits;
    // The records carry parameter ids, so compare what the weights compute.
    let flex = Device::flex();
    let page_model = config.load(&page, &flex).unwrap();
    let native_model = config
        .load(&native.valid().to_bytes().unwrap(), &flex)
        .unwrap();
    assert_eq!(
        predict_logits(&page_model, &data, &flex),
        predict_logits(&native_model, &data, &flex),
        "the page's base model is not the library's"
    );
    let acc = accuracy(&native_model, &held_out, &flex);
    assert_eq!(last.validation_accuracy, Some(acc));
    assert!(
        acc > 0.8,
        "12 epochs on 270 digits read {acc} of the held-out ones"
    );

    // The trained model is a base for PGD.
    let status = s
        .adversarial()
        .begin(digits_adversarial_setup(None), Some(&page))
        .unwrap();
    assert!(!status.demo_base);
    let out = block_on(
        s.adversarial()
            .encrypt(held_out.image(0), &held_out.labels[..1]),
    )
    .unwrap();
    assert!(out.psnr[0] >= 14.5 - 1e-3);
}
