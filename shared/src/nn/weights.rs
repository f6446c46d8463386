//! Burnpack weights, loaded and saved one way for every network (the CNN, the ResNet, Glow, the
//! factory's models): a record that does not fit the architecture, or that holds NaN or
//! infinity, is refused with the reason, and never reaches a device.

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use burn::store::ModuleRecord;

/// The weights of a burnpack record (as [`to_bytes`] writes them) loaded into `model`, which must
/// have been initialised on the CPU (`Device::flex()`): the record is checked for NaN and
/// infinity there, where parameters can be read synchronously, then moved to `device`. On an
/// autodiff device the parameters track gradients again (to resume training).
pub fn load<M: Module>(model: M, bytes: &[u8], device: &Device) -> Result<M, ModelError> {
    let record = ModuleRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes.to_vec()))
        .map_err(|e| ModelError::Weights(format!("not a burnpack record: {e}")))?;
    let model = model
        .try_load_record(record)
        .map_err(|e| ModelError::Weights(e.to_string()))?;
    check_finite(&model)?;
    let model = model.to_device(device);
    Ok(if device.is_autodiff() {
        model.train()
    } else {
        model
    })
}

/// The weights of `model` as a burnpack byte buffer.
pub fn to_bytes<M: Module>(model: &M) -> Result<Vec<u8>, ModelError> {
    model
        .clone()
        .into_record()
        .into_bytes()
        .map(|b| b.to_vec())
        .map_err(|e| ModelError::Weights(e.to_string()))
}

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The weights do not fit the architecture, or the bytes are not a burnpack record.
    #[error("the weights cannot be loaded: {0}")]
    Weights(String),
    /// A parameter holds NaN or infinity.
    #[error("the weights hold non-finite values (NaN or infinity) in {0}")]
    NonFinite(String),
}

/// Refuses weights with NaN or infinite values, naming the first offending parameter.
///
/// Reads every parameter synchronously: call it on a CPU (flex) device, before moving the model
/// to a WebGPU device (where synchronous reads are not allowed).
pub fn check_finite<M: Module>(model: &M) -> Result<(), ModelError> {
    let mut visitor = FiniteCheck::default();
    model.visit(&mut visitor);
    match visitor.first_bad {
        Some(path) => Err(ModelError::NonFinite(path)),
        None => Ok(()),
    }
}

#[derive(Default)]
struct FiniteCheck {
    path: Vec<String>,
    first_bad: Option<String>,
}

impl ModuleVisitor for FiniteCheck {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_owned());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.first_bad.is_some() {
            return;
        }
        let finite = param.val().into_data().iter::<f32>().all(f32::is_finite);
        if !finite {
            self.first_bad = Some(if self.path.is_empty() {
                "the model".to_owned()
            } else {
                self.path.join(".")
            });
        }
    }
}
