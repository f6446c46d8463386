//! OWSD scrambling through the client session, natively: the page's code path against
//! `veil::schemes::owsd` used directly, and the key budget.
#![cfg(not(target_arch = "wasm32"))]

use crate::common::{block_on, session};

use veil::burn::tensor::{Device, Tensor, TensorData};
use veil::crypto::keys::{MasterKey, Scheme};
use veil::data::{ImageShape, digits};
use veil::schemes::owsd::generator_label;
use veil::schemes::owsd::{KeyUsage, ScrambleConfig};
use veil_client::owsd::ScrambleSetup;

fn setup() -> ScrambleSetup {
    ScrambleSetup {
        encoders: vec![64],
        output: ImageShape::new(1, 8, 8),
        generation: 0,
    }
}

#[test]
fn the_page_scrambles_like_the_library_and_keys_and_generations_differ() {
    let key = MasterKey::from_bytes([31; 32]);
    let s = session(&key);
    let data = digits().subset(&(0..50).collect::<Vec<_>>());
    let emb = block_on(s.owsd().embed(&data.images, &[0])).unwrap();
    assert_eq!(emb.len(), 50 * 64);
    s.owsd()
        .scramble_begin(setup(), KeyUsage::new(1000))
        .unwrap();
    let page = block_on(s.owsd().scramble(&emb, false)).unwrap();
    assert_eq!(page.pixels.len(), 50 * 64);
    assert!(page.pixels.iter().all(|v| (0.0..=1.0).contains(v)));
    // The library, with the experiment's subkey for generation 0.
    let device = Device::flex();
    let native = ScrambleConfig::new(64, setup().output)
        .init(&key.subkey(Scheme::Owsd, &generator_label(0, 0)), &device)
        .unwrap()
        .scramble(Tensor::from_data(
            TensorData::new(emb.clone(), [50, 64]),
            &device,
        ))
        .unwrap()
        .into_data()
        .iter::<f32>()
        .collect::<Vec<_>>();
    assert_eq!(page.pixels, native);
    // Deterministic per key and generation; another generation or key scrambles differently.
    let again = block_on(s.owsd().scramble(&emb, false)).unwrap();
    assert_eq!(again.pixels, page.pixels);
    let diff = |a: &[f32], b: &[f32]| {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32
    };
    s.owsd()
        .scramble_begin(
            ScrambleSetup {
                generation: 1,
                ..setup()
            },
            KeyUsage::new(1000),
        )
        .unwrap();
    let rotated = block_on(s.owsd().scramble(&emb, false)).unwrap();
    assert!(
        diff(&rotated.pixels, &page.pixels) > 0.1,
        "generation 1 scrambles like 0"
    );
    let other = session(&MasterKey::from_bytes([32; 32]));
    other
        .owsd()
        .scramble_begin(setup(), KeyUsage::new(1000))
        .unwrap();
    let theirs = block_on(other.owsd().scramble(&emb, false)).unwrap();
    assert!(
        diff(&theirs.pixels, &page.pixels) > 0.1,
        "another key scrambles alike"
    );
}

#[test]
fn the_budget_warns_refuses_and_survives_a_reload() {
    let key = MasterKey::from_bytes([33; 32]);
    let s = session(&key);
    let emb = vec![0.25f32; 40 * 64];
    s.owsd()
        .scramble_begin(setup(), KeyUsage::new(100))
        .unwrap();
    let first = block_on(s.owsd().scramble(&emb, false)).unwrap();
    assert_eq!(first.usage.used, 40);
    assert!(first.warning.is_none());
    let second = block_on(s.owsd().scramble(&emb, false)).unwrap();
    assert_eq!(second.usage.used, 80);
    let warning = second.warning.expect("past 80 % of the budget");
    assert!(warning.contains("20 left"), "{warning}");
    // A batch that would pass the budget is refused and not counted.
    let refused = block_on(s.owsd().scramble(&emb, false))
        .unwrap_err()
        .to_string();
    assert!(refused.contains("budget is 100"), "{refused}");
    assert_eq!(s.owsd().scramble_status().unwrap().usage.used, 80);
    // The page persists the count; a new session (a reload) starts from it.
    let persisted = s.owsd().scramble_status().unwrap().usage;
    let reloaded = session(&key);
    reloaded.owsd().scramble_begin(setup(), persisted).unwrap();
    assert!(block_on(reloaded.owsd().scramble(&emb, false)).is_err());
    // Forced, it goes through and the count says so.
    let forced = block_on(reloaded.owsd().scramble(&emb, true)).unwrap();
    assert_eq!(forced.usage.used, 120);
    // A rotation starts a fresh count with a new generator.
    let status = reloaded
        .owsd()
        .scramble_begin(
            ScrambleSetup {
                generation: 1,
                ..setup()
            },
            KeyUsage::new(100),
        )
        .unwrap();
    assert_eq!((status.generation, status.usage.used), (1, 0));
}

fn err<T>(r: Result<T, veil_client::ClientError>) -> String {
    r.map(|_| ()).unwrap_err().to_string()
}

#[test]
fn bad_scramble_input_is_refused_with_a_reason() {
    let key = MasterKey::from_bytes([34; 32]);
    let s = session(&key);
    assert!(err(block_on(s.owsd().scramble(&[0.0; 64], false))).contains("set one up"));
    assert!(
        err(s.owsd().scramble_begin(
            setup(),
            KeyUsage {
                used: 0,
                budget: 0,
                warn_at: 0
            }
        ))
        .contains("budget")
    );
    let bad_shape = ScrambleSetup {
        output: ImageShape::new(1, 10, 10),
        ..setup()
    };
    assert!(err(s.owsd().scramble_begin(bad_shape, KeyUsage::new(10))).contains("square"));
    s.owsd().scramble_begin(setup(), KeyUsage::new(10)).unwrap();
    assert!(err(block_on(s.owsd().scramble(&[0.0; 65], false))).contains("whole number"));
    let mut nan = vec![0.0; 128];
    nan[70] = f32::NAN;
    assert!(err(block_on(s.owsd().scramble(&nan, false))).contains("embedding 1"));
    assert_eq!(
        s.owsd().scramble_status().unwrap().usage.used,
        0,
        "refused batches are not counted"
    );
    // Another key loaded: the scrambler of the old one is not used.
    s.import_key(
        &veil::crypto::keyfile::KeyFile::plain(&MasterKey::from_bytes([35; 32]), "other").to_json(),
        None,
    )
    .unwrap();
    assert!(s.owsd().scramble_status().is_none());
    assert!(err(block_on(s.owsd().scramble(&[0.0; 64], false))).contains("set one up"));
}

#[test]
fn the_internal_network_reads_labels_from_embeddings_and_cloud_vectors() {
    let key = MasterKey::from_bytes([36; 32]);
    let s = session(&key);
    s.owsd()
        .scramble_begin(setup(), KeyUsage::new(10_000))
        .unwrap();
    // The cloud: the demo CNN classifying the scrambled images (softmax of its logits).
    let features = |d: &veil::data::ImageDataset| {
        let emb = block_on(s.owsd().embed(&d.images, &[0])).unwrap();
        let scrambled = block_on(s.owsd().scramble(&emb, false)).unwrap().pixels;
        let logits = block_on(s.logits(&scrambled)).unwrap();
        let probs: Vec<f32> = logits
            .chunks(10)
            .flat_map(|row| {
                let m = row.iter().cloned().fold(f32::MIN, f32::max);
                let e: Vec<f32> = row.iter().map(|v| (v - m).exp()).collect();
                let z: f32 = e.iter().sum();
                e.into_iter().map(move |v| v / z)
            })
            .collect();
        (emb, probs)
    };
    let all = digits();
    let sample = all.subset(&(0..350).collect::<Vec<_>>());
    let new = all.subset(&(1400..1600).collect::<Vec<_>>());
    let (emb, cloud) = features(&sample);
    let classes: Vec<String> = (0..10).map(|k| k.to_string()).collect();
    let report = s
        .owsd()
        .iin_train(&emb, &cloud, &sample.labels, classes, Default::default())
        .unwrap();
    assert!(report.validation_accuracy > 0.8, "{report:?}");
    let (emb, cloud) = features(&new);
    let (labels, probs) = s.owsd().iin_predict(&emb, &cloud).unwrap();
    assert_eq!(probs.len(), 200 * 10);
    let acc = labels
        .iter()
        .zip(&new.labels)
        .filter(|(a, b)| a == b)
        .count() as f64
        / 200.0;
    assert!(
        acc >= 0.85,
        "the internal network reads {acc} of 200 new digits"
    );
    // Wrong widths are refused.
    assert!(
        err(s.owsd().iin_predict(&emb[..64 * 10], &cloud))
            .contains("trained on 64-value embeddings")
    );
}

/// Use case 4 in the page: the demo model's layer and an imported encoder (PyTorch layout, 32
/// units), each embedding scrambled by its own generator; the count is of images per generator.
#[test]
fn an_ensemble_scrambles_each_encoding_with_its_own_generator() {
    use veil::nn::model::SmallCnnConfig;
    use veil::schemes::owsd::encoder::{WeightLayout, export_encoder};
    let key = MasterKey::from_bytes([37; 32]);
    let s = session(&key);
    let device = Device::flex();
    device.seed(9);
    let theirs = SmallCnnConfig::for_shape(ImageShape::new(1, 8, 8), 5)
        .with_hidden(32)
        .init(&device);
    let file = export_encoder(&theirs, WeightLayout::PyTorch).unwrap();
    let summary = s
        .owsd()
        .import_encoder("theirs.safetensors", &file)
        .unwrap();
    assert_eq!((summary.index, summary.info.embedding), (1, 32));

    let data = digits().subset(&(0..20).collect::<Vec<_>>());
    let demo_emb = block_on(s.owsd().embed(&data.images, &[0])).unwrap();
    let their_emb: Vec<f32> = theirs
        .embed(data.images_tensor(0..20, &device))
        .into_data()
        .iter::<f32>()
        .collect();
    let rows = block_on(s.owsd().embed(&data.images, &[0, 1])).unwrap();
    assert_eq!(rows.len(), 20 * 96);
    for i in 0..20 {
        assert_eq!(rows[i * 96..i * 96 + 64], demo_emb[i * 64..(i + 1) * 64]);
        assert_eq!(
            rows[i * 96 + 64..(i + 1) * 96],
            their_emb[i * 32..(i + 1) * 32]
        );
    }

    let status = s
        .owsd()
        .scramble_begin(
            ScrambleSetup {
                encoders: vec![64, 32],
                ..setup()
            },
            KeyUsage::new(1000),
        )
        .unwrap();
    assert_eq!(status.encoders, vec![64, 32]);
    let out = block_on(s.owsd().scramble(&rows, false)).unwrap();
    assert_eq!(out.usage.used, 20, "20 images per generator");
    assert_eq!(out.pixels.len(), 20 * 2 * 64);
    let library = |width: usize, encoder: usize, emb: &[f32]| -> Vec<f32> {
        ScrambleConfig::new(width, setup().output)
            .init(
                &key.subkey(Scheme::Owsd, &generator_label(0, encoder)),
                &device,
            )
            .unwrap()
            .scramble(Tensor::from_data(
                TensorData::new(emb.to_vec(), [20, width]),
                &device,
            ))
            .unwrap()
            .into_data()
            .iter::<f32>()
            .collect()
    };
    let (a, b) = (library(64, 0, &demo_emb), library(32, 1, &their_emb));
    for i in 0..20 {
        assert_eq!(
            out.pixels[(2 * i) * 64..(2 * i + 1) * 64],
            a[i * 64..(i + 1) * 64]
        );
        assert_eq!(
            out.pixels[(2 * i + 1) * 64..(2 * i + 2) * 64],
            b[i * 64..(i + 1) * 64]
        );
    }

    assert!(err(block_on(s.owsd().embed(&data.images, &[0, 2]))).contains("no encoder 2"));
    assert!(err(block_on(s.owsd().embed(&data.images, &[]))).contains("at least one encoder"));
    assert!(err(s.owsd().import_encoder("x.bin", b"junk")).contains("x.bin is not an encoder"));
    let too_many = ScrambleSetup {
        encoders: vec![64; 9],
        ..setup()
    };
    assert!(err(s.owsd().scramble_begin(too_many, KeyUsage::new(10))).contains("1 to 8 encoders"));
}
