//! Importing the owner's encoder from safetensors: burn's and PyTorch's layouts give the same
//! embeddings as the network that was saved, and unusable files are refused with a reason.

use std::collections::HashMap;

use veil::burn::prelude::*;
use veil::burn::tensor::TensorData;
use veil::data::{ImageShape, digits};
use veil::nn::model::{SmallCnn, SmallCnnConfig};
use veil::nn::weights::ModelError;
use veil::schemes::owsd::encoder::{WeightLayout, export_encoder, import_encoder};

const SHAPE: ImageShape = ImageShape::new(1, 8, 8);

fn encoder(base_filters: usize, hidden: usize, seed: u64) -> SmallCnn {
    let device = Device::flex();
    device.seed(seed);
    SmallCnnConfig::for_shape(SHAPE, 10)
        .with_base_filters(base_filters)
        .with_hidden(hidden)
        .init(&device)
}

fn embeddings(model: &SmallCnn) -> Vec<f32> {
    let data = digits();
    let x = data.images_tensor(0..32, &Device::flex());
    model.embed(x).into_data().iter::<f32>().collect()
}

/// The tensors of a safetensors file, by name: (dtype, shape, bytes).
fn tensors(bytes: &[u8]) -> Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> {
    let file = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let mut out: Vec<_> = file
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn write(tensors: &[(String, safetensors::Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::tensor::serialize(views, None::<HashMap<String, String>>).unwrap()
}

#[test]
fn burn_and_pytorch_layouts_give_the_saved_embeddings() {
    let _rng = crate::device_rng();
    for (f, h) in [(16, 64), (8, 32)] {
        let model = encoder(f, h, 3);
        let want = embeddings(&model);
        for layout in [WeightLayout::Burn, WeightLayout::PyTorch] {
            let bytes = export_encoder(&model, layout).unwrap();
            let (back, info) = import_encoder(&bytes, SHAPE, &Device::flex()).unwrap();
            assert_eq!(info.layout, layout);
            assert_eq!(info.embedding, h);
            assert_eq!(info.config.base_filters, f);
            assert!(info.head, "the head was saved");
            assert!(info.ignored.is_empty(), "{:?}", info.ignored);
            assert_eq!(
                embeddings(&back),
                want,
                "{layout:?}, {f} filters, {h} units"
            );
        }
    }
}

/// A file as PyTorch's `save_file` writes it: no Veil metadata, `[out, in]` dense weights, and
/// here no classifier head and one extra tensor.
#[test]
fn a_pytorch_file_without_a_head_is_read_by_its_shapes() {
    let _rng = crate::device_rng();
    let model = encoder(16, 64, 4);
    let want = embeddings(&model);
    let mut t = tensors(&export_encoder(&model, WeightLayout::PyTorch).unwrap());
    t.retain(|(n, ..)| !n.starts_with("output."));
    t.push((
        "num_batches_tracked".into(),
        safetensors::Dtype::F32,
        vec![1],
        1f32.to_le_bytes().to_vec(),
    ));
    let (back, info) = import_encoder(&write(&t), SHAPE, &Device::flex()).unwrap();
    assert_eq!(info.layout, WeightLayout::PyTorch);
    assert!(!info.head);
    assert_eq!(info.ignored, vec!["num_batches_tracked".to_string()]);
    assert_eq!(embeddings(&back), want);
}

fn refusal(bytes: &[u8], input: ImageShape) -> String {
    match import_encoder(bytes, input, &Device::flex()) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unusable_files_are_refused_with_a_reason() {
    let _rng = crate::device_rng();
    let model = encoder(16, 64, 5);
    let good = tensors(&export_encoder(&model, WeightLayout::Burn).unwrap());

    assert!(refusal(b"not a safetensors file", SHAPE).contains("not a readable safetensors"));
    // A dataset container, not an encoder.
    let mut t = good.clone();
    t.retain(|(n, ..)| n != "conv2.weight");
    assert!(refusal(&write(&t), SHAPE).contains("no tensor conv2.weight"));
    // The encoder takes grey images; the owner's are colour.
    assert!(
        refusal(&write(&good), ImageShape::new(3, 8, 8)).contains("1-channel images"),
        "{}",
        refusal(&write(&good), ImageShape::new(3, 8, 8))
    );
    // A half-precision export.
    let mut t = good.clone();
    for x in t.iter_mut().filter(|(n, ..)| n == "hidden.bias") {
        x.1 = safetensors::Dtype::F16;
        x.3.truncate(x.3.len() / 2);
    }
    assert!(refusal(&write(&t), SHAPE).contains("float32"));
    // conv2 of another width.
    let mut t = good.clone();
    for x in t.iter_mut().filter(|(n, ..)| n == "conv2.weight") {
        x.2 = vec![16, 32, 3, 3];
    }
    assert!(refusal(&write(&t), SHAPE).contains("must be [32, 16, 3, 3]"));
    // A hidden layer that does not follow conv3.
    let mut t = good.clone();
    for x in t.iter_mut().filter(|(n, ..)| n == "hidden.weight") {
        x.2 = vec![128, 128];
    }
    assert!(refusal(&write(&t), SHAPE).contains("must read 256 values"));
    // NaN weights.
    let mut t = good.clone();
    for x in t.iter_mut().filter(|(n, ..)| n == "conv3.bias") {
        x.3[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    }
    let err = import_encoder(&write(&t), SHAPE, &Device::flex())
        .err()
        .unwrap();
    assert!(
        matches!(err, ModelError::NonFinite(ref p) if p.contains("conv3")),
        "{err}"
    );
}

/// Sanity of the test's own helper: rewriting a file unchanged keeps it importable and equal.
#[test]
fn rewriting_a_file_keeps_it() {
    let _rng = crate::device_rng();
    let model = encoder(16, 64, 6);
    let t = tensors(&export_encoder(&model, WeightLayout::Burn).unwrap());
    let (back, info) = import_encoder(&write(&t), SHAPE, &Device::flex()).unwrap();
    assert_eq!(info.layout, WeightLayout::Burn);
    let x = Tensor::<4>::from_data(
        TensorData::new(vec![0.5f32; 64], [1, 1, 8, 8]),
        &Device::flex(),
    );
    assert_eq!(
        back.embed(x.clone())
            .into_data()
            .iter::<f32>()
            .collect::<Vec<_>>(),
        model.embed(x).into_data().iter::<f32>().collect::<Vec<_>>()
    );
}
