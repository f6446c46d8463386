//! Data and models compiled into the server: the flows of flow rotation for the UCI digits
//! (`assets/flows/digits`, trained by `veil flow train --out assets/flows/digits --epochs 40`,
//! about a minute on 2 cores; see `assets/flows/README.md`).

use veil::burn::tensor::Device;
use veil::flow_rotation::{FlowSet, FlowSetError};

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
        let key = veil::keys::MasterKey::from_bytes([9; 32]);
        let enc = flows.class_encryptor(&key, data.labels[0] as usize, &device);
        let x = data.images_tensor(0..1, &device);
        let back = enc.decrypt_quantised(enc.encrypt(x.clone()));
        let err = (back - x).abs().max().into_scalar::<f32>();
        assert_eq!(err, 0.0);
    }
}
