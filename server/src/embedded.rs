//! Data and models compiled into the server: the flows of flow rotation for the UCI digits
//! (`assets/flows/digits`, trained by `veil flow train --out assets/flows/digits --epochs 40`,
//! about a minute on 2 cores; see `assets/flows/README.md`), and the built-in classifiers
//! (`assets/models`, trained by `veil train-demo`; see `assets/models/README.md`).

use veil::burn::tensor::Device;
use veil::nn::model::ModelCard;
use veil::schemes::flow_rotation::{FlowSet, FlowSetError};

macro_rules! flow_files {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_bytes!(concat!("../../assets/flows/digits/", $name)) as &[u8])),*]
    };
}

/// `flows.json` of the digits flows.
pub const DIGITS_FLOWS_MANIFEST: &str = include_str!("../../assets/flows/digits/flows.json");

/// The digits flows' files by name.
pub const DIGITS_FLOW_FILES: &[(&str, &[u8])] = flow_files!(
    "flow-agnostic.bpk",
    "flow-class-0.bpk",
    "flow-class-1.bpk",
    "flow-class-2.bpk",
    "flow-class-3.bpk",
    "flow-class-4.bpk",
    "flow-class-5.bpk",
    "flow-class-6.bpk",
    "flow-class-7.bpk",
    "flow-class-8.bpk",
    "flow-class-9.bpk",
);

/// The shipped digits flows (ten per-class flows and a class-agnostic one) on `device`.
pub fn digits_flows(device: &Device) -> Result<FlowSet, FlowSetError> {
    FlowSet::load(
        DIGITS_FLOWS_MANIFEST,
        |name| {
            DIGITS_FLOW_FILES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, b)| *b)
        },
        device,
    )
}

/// The built-in classifiers as (card JSON, burnpack weights): the demo CNN (also compiled into
/// the browser's client) and OWSD's cloud with more labels than the owner's.
const BUILTIN_MODELS: &[(&str, &[u8])] = &[
    (
        veil::nn::model::demo::CARD_JSON,
        veil::nn::model::demo::WEIGHTS,
    ),
    (
        include_str!("../../assets/models/digits-shapes-cnn.json"),
        include_bytes!("../../assets/models/digits-shapes-cnn.bpk"),
    ),
];

/// The built-in classifiers' cards and weights.
pub fn builtin_models() -> Vec<(ModelCard, &'static [u8])> {
    BUILTIN_MODELS
        .iter()
        .map(|(card, weights)| {
            let card: ModelCard = serde_json::from_str(card)
                .unwrap_or_else(|e| unreachable!("the shipped model cards parse: {e}"));
            (card, *weights)
        })
        .collect()
}

/// The built-in classifier called `name`, if there is one.
pub fn builtin_model(name: &str) -> Option<(ModelCard, &'static [u8])> {
    builtin_models()
        .into_iter()
        .find(|(card, _)| card.name == name)
}

/// The demo classifier's name.
pub const DEMO: &str = "digits-cnn";
/// The name of OWSD's built-in cloud with more labels than the owner's.
pub const CLOUD: &str = "digits-shapes-cnn";
/// Its dataset's name in the card.
pub const CLOUD_DATASET: &str = "uci-digits+synthetic-shapes-32";

/// The data of OWSD's built-in cloud: the UCI digits (labels 0–9) then 60 images of each of the
/// 32 synthetic shapes at 8×8 (labels 10–41, seed 1000). The paper's key factor is the ratio of
/// the owner's labels to the cloud's (§5, Table 2): an owner with the ten digits has 10/42 here.
pub fn cloud_data() -> Result<veil::data::ImageDataset, veil::data::DataError> {
    let digits = veil::data::digits();
    let shapes = veil::data::synthetic(veil::data::SyntheticConfig {
        classes: 32,
        per_class: 60,
        shape: digits.shape,
        noise: 0.05,
        seed: 1000,
    })?;
    Ok(union_classes(&digits, &shapes, "shape:"))
}

/// `a` then `b`, with `b`'s labels shifted past `a`'s and its class names prefixed: a dataset
/// that knows both label sets (OWSD's clouds with more labels than the owner's).
pub fn union_classes(
    a: &veil::data::ImageDataset,
    b: &veil::data::ImageDataset,
    prefix: &str,
) -> veil::data::ImageDataset {
    let offset = a.num_classes() as u32;
    let mut data = a.clone();
    data.images.extend_from_slice(&b.images);
    data.labels.extend(b.labels.iter().map(|l| l + offset));
    data.class_names
        .extend(b.class_names.iter().map(|n| format!("{prefix}{n}")));
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_flows_load_and_round_trip() {
        let device = Device::flex();
        let flows = digits_flows(&device).expect("the shipped flows load");
        assert_eq!(flows.per_class.len(), 10);
        assert!(flows.agnostic.is_some());
        let data = veil::data::digits();
        let key = veil::crypto::keys::MasterKey::from_bytes([9; 32]);
        let enc = flows.class_encryptor(&key, data.labels[0] as usize, &device);
        let x = data.images_tensor(0..1, &device);
        let back = enc.decrypt_quantised(enc.encrypt(x.clone()));
        let err = (back - x).abs().max().into_scalar::<f32>();
        assert_eq!(err, 0.0);
    }
}
