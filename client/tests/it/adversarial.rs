//! Adversarial data encryption through the client session, natively: the page's code path
//! against `veil::schemes::adversarial` used directly, the container, and bad input.
#![cfg(not(target_arch = "wasm32"))]

use crate::common::{block_on, digits_adversarial_setup, session};

use veil::burn::tensor::Device;
use veil::crypto::keys::MasterKey;
use veil::data::{ImageShape, digits};
use veil::nn::model::{SmallCnnConfig, demo};
use veil::nn::train::Control;
use veil::schemes::adversarial::{
    ClassCorrespondence, CombineMethod, CombinedKey, PgdConfig, encrypt_basic, encrypt_combined,
};
use veil_client::Session;

/// The page's encryptions (demo base model, key-drawn P) equal the library's bit for bit on the
/// same device, for the basic and a combined method; PSNR is reported per image and the
/// perturbation stays inside the ε-ball.
#[test]
fn the_page_encrypts_like_the_library() {
    let key = MasterKey::from_bytes([44; 32]);
    let s = session(&key);
    let data = digits().subset(&(0..40).collect::<Vec<_>>());
    let device = Device::flex().autodiff();
    let base = demo::card().config.load(demo::WEIGHTS, &device).unwrap();
    let pgd = PgdConfig::with_epsilon(1.5, 10);
    for method in [None, Some(CombineMethod::HorizontalConcat)] {
        let status = s
            .adversarial()
            .begin(digits_adversarial_setup(method), None)
            .unwrap();
        assert!(status.demo_base);
        assert_eq!(status.fingerprint, key.fingerprint().to_string());
        let page = block_on(s.adversarial().encrypt(&data.images, &data.labels)).unwrap();
        let native = match method {
            None => encrypt_basic(
                &base,
                &data,
                &ClassCorrespondence::from_key(&key, 10).unwrap(),
                &pgd,
                &device,
                |_, _| Control::Continue,
            ),
            Some(m) => encrypt_combined(
                &base,
                &data,
                &CombinedKey::from_key(&key, 10, m).unwrap(),
                &pgd,
                &device,
                |_, _| Control::Continue,
            ),
        }
        .unwrap();
        let diff = page
            .pixels
            .iter()
            .zip(&native.images)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            diff <= 1e-6,
            "{method:?}: page and library differ by {diff}"
        );
        assert_eq!(page.psnr.len(), 40);
        // Inside the 1.5-ball: PSNR ≥ 10·log10(64 / 2.25) = 14.5 dB (the basic method; a
        // concatenation of two copies stays within √2 ε).
        let floor = if method.is_none() { 14.5 } else { 11.5 };
        assert!(
            page.psnr.iter().all(|&p| p >= floor - 1e-3),
            "{:?}",
            page.psnr
        );
        assert!(page.ssim.iter().all(|&v| v > 0.0 && v <= 1.0));
        // The container names the scheme and the key's fingerprint, and holds what was encrypted.
        let bytes = s
            .adversarial()
            .container(page.pixels.clone(), data.labels.clone())
            .unwrap();
        let c = veil::data::container::decode(&bytes).unwrap();
        assert_eq!(c.meta.scheme, "adversarial");
        assert_eq!(c.meta.key_fingerprint, Some(key.fingerprint().to_string()));
        assert_eq!(c.dataset.images, page.pixels);
    }
}

#[test]
fn bad_setups_and_batches_are_refused_with_the_cause() {
    let key = MasterKey::from_bytes([45; 32]);
    let s = block_on(Session::start(false)).unwrap();
    fn msg<T>(r: Result<T, veil_client::ClientError>) -> String {
        r.err().expect("refused").to_string()
    }
    assert!(msg(s.adversarial().begin(digits_adversarial_setup(None), None)).contains("no key"));
    let s = session(&key);
    let mut bad = digits_adversarial_setup(None);
    bad.epsilon = 0.0;
    assert!(msg(s.adversarial().begin(bad, None)).contains("ε must be a positive"));
    // A base model for another shape, and the demo model for data it does not fit.
    let other = SmallCnnConfig::new(1, 16, 16, 10)
        .init(&Device::flex())
        .to_bytes()
        .unwrap();
    let mut sixteen = digits_adversarial_setup(None);
    sixteen.shape = ImageShape::new(1, 16, 16);
    assert!(msg(s.adversarial().begin(sixteen.clone(), None)).contains("import a base model"));
    let mut six = digits_adversarial_setup(None);
    six.classes.truncate(6);
    assert!(msg(s.adversarial().begin(six, Some(&other))).contains("not a SmallCnn"));
    // One class: no correspondence exists.
    let mut one = digits_adversarial_setup(None);
    one.classes.truncate(1);
    assert!(msg(s.adversarial().begin(one, None)).contains("at least 2 classes"));
    // A base model whose weights hold NaN is refused when it is loaded.
    let nan = {
        let mut b = demo::WEIGHTS.to_vec();
        let at = b.len() - 8;
        b[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        b
    };
    let m = msg(s
        .adversarial()
        .begin(digits_adversarial_setup(None), Some(&nan)));
    assert!(m.contains("NaN"), "{m}");
    s.adversarial()
        .begin(digits_adversarial_setup(None), None)
        .unwrap();
    let data = digits().subset(&[0, 1]);
    assert!(msg(block_on(s.adversarial().encrypt(&data.images, &[0]))).contains("1 labels for 2"));
    assert!(
        msg(block_on(s.adversarial().encrypt(&data.images, &[0, 10]))).contains("out of range")
    );
    let mut bright = data.images.clone();
    bright[3] = 1.5;
    assert!(msg(block_on(s.adversarial().encrypt(&bright, &data.labels))).contains("[0, 1]"));
}

/// A base model imported from safetensors (PyTorch's layout, as OWSD's encoders) encrypts exactly
/// as the same weights in burnpack; one without the classes' head, or for other classes, is
/// refused with the cause; so are base-model runs on one class or with no epochs.
#[test]
fn a_safetensors_base_model_is_the_same_model() {
    use veil::schemes::owsd::encoder::{WeightLayout, export_encoder};
    use veil_client::adversarial::BaseTrainOptions;
    let key = MasterKey::from_bytes([47; 32]);
    let s = session(&key);
    let data = digits().subset(&(0..16).collect::<Vec<_>>());
    let demo_model = demo::card()
        .config
        .load(demo::WEIGHTS, &Device::flex())
        .unwrap();
    let file = export_encoder(&demo_model, WeightLayout::PyTorch).unwrap();
    s.adversarial()
        .begin(digits_adversarial_setup(None), None)
        .unwrap();
    let from_demo = block_on(s.adversarial().encrypt(&data.images, &data.labels)).unwrap();
    let status = s
        .adversarial()
        .begin(digits_adversarial_setup(None), Some(&file))
        .unwrap();
    assert!(!status.demo_base);
    let from_file = block_on(s.adversarial().encrypt(&data.images, &data.labels)).unwrap();
    assert_eq!(from_demo.pixels, from_file.pixels);

    fn msg<T>(r: Result<T, veil_client::ClientError>) -> String {
        r.err().expect("refused").to_string()
    }
    let mut six = digits_adversarial_setup(None);
    six.classes.truncate(6);
    let m = msg(s.adversarial().begin(six, Some(&file)));
    assert!(
        m.contains("scores 10 classes") && m.contains("have 6"),
        "{m}"
    );
    let m = msg(s
        .adversarial()
        .begin(digits_adversarial_setup(None), Some(b"not a model at all")));
    assert!(m.contains("not a SmallCnn"), "{m}");

    let shape = ImageShape::new(1, 8, 8);
    let ones: Vec<u32> = vec![0; data.len()];
    let m = msg(s.adversarial().train_begin(
        data.images.clone(),
        ones,
        shape,
        vec!["0".into()],
        BaseTrainOptions::default(),
    ));
    assert!(m.contains("at least two"), "{m}");
    let m = msg(s.adversarial().train_begin(
        data.images.clone(),
        data.labels.clone(),
        shape,
        data.class_names.clone(),
        BaseTrainOptions {
            epochs: 0,
            ..BaseTrainOptions::default()
        },
    ));
    assert!(m.contains("must be positive"), "{m}");
    assert!(msg(block_on(s.adversarial().train_run(1))).contains("no base model is being trained"));
}
