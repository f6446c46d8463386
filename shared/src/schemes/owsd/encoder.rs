//! The owner's encoders for OWSD: networks whose hidden layer embeds an image before the scramble
//! (Savransky, Mateless, Katz, §3.1 and §4: the owner uses pre-trained networks, and use case 4
//! an ensemble of them).
//!
//! Nothing can be downloaded here, so an owner brings their own encoder as a safetensors file
//! with [`SmallCnn`]'s architecture and names — `conv1`, `conv2`, `conv3` (`weight`
//! `[out, in, 3, 3]` and `bias`), `hidden` (`weight`, `bias`) and, optionally, the classifier head
//! `output` — written by burn ([`export_encoder`]) or by PyTorch (`torch.nn.Linear` stores its
//! weight as `[out, in]`; burn stores `[in, out]`). [`import_encoder`] reads the filter counts and
//! the embedding width from the shapes, works out which layout the file uses, and refuses files it
//! cannot use with a reason. Loading goes through burn-store, not by hand.

use burn::module::Module;
use burn::prelude::*;
use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
use safetensors::SafeTensors;
use safetensors::tensor::Dtype;
use serde::{Deserialize, Serialize};

use crate::data::ImageShape;
use crate::nn::model::{SmallCnn, SmallCnnConfig};
use crate::nn::weights::{ModelError, check_finite};

/// How a file stores dense layers' weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightLayout {
    /// burn's `[in, out]`.
    Burn,
    /// PyTorch's `[out, in]`.
    PyTorch,
}

/// What [`import_encoder`] found in a file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EncoderInfo {
    /// The architecture read from the shapes (the input size is the owner's images').
    pub config: SmallCnnConfig,
    /// The embedding width: the hidden layer's units.
    pub embedding: usize,
    /// The dense layers' layout in the file.
    pub layout: WeightLayout,
    /// Whether the file has a classifier head (`output`); an encoder does not need one.
    pub head: bool,
    /// Tensors in the file that the architecture has no place for (ignored).
    pub ignored: Vec<String>,
}

/// The metadata key [`export_encoder`] writes the layout under.
const LAYOUT_KEY: &str = "veil_layout";
/// The largest filter count and hidden width accepted (a guard against absurd files).
const MAX_WIDTH: usize = 4096;

fn bad(msg: impl Into<String>) -> ModelError {
    ModelError::Weights(msg.into())
}

/// Reads an encoder with [`SmallCnn`]'s architecture from safetensors `bytes` for images of
/// `input` (see the module documentation), checks that every weight is finite, and puts it on
/// `device`.
pub fn import_encoder(
    bytes: &[u8],
    input: ImageShape,
    device: &Device,
) -> Result<(SmallCnn, EncoderInfo), ModelError> {
    let file = SafeTensors::deserialize(bytes)
        .map_err(|e| bad(format!("not a readable safetensors file: {e}")))?;
    const LAYERS: [&str; 5] = ["conv1.", "conv2.", "conv3.", "hidden.", "output."];
    for (name, t) in file.tensors() {
        if t.dtype() != Dtype::F32 && LAYERS.iter().any(|l| name.starts_with(l)) {
            return Err(bad(format!(
                "{name} is {:?}; export the encoder in float32",
                t.dtype()
            )));
        }
    }
    let shape_of = |name: &str| -> Result<Option<Vec<usize>>, ModelError> {
        Ok(file.tensor(name).ok().map(|t| t.shape().to_vec()))
    };
    let need = |name: &str| -> Result<Vec<usize>, ModelError> {
        shape_of(name)?.ok_or_else(|| {
            bad(format!(
                "the file has no tensor {name}: an encoder needs conv1, conv2, conv3 and hidden \
                 (weight and bias each), named as in Veil's SmallCnn"
            ))
        })
    };
    let conv1 = need("conv1.weight")?;
    let (conv2, conv3, hidden) = (
        need("conv2.weight")?,
        need("conv3.weight")?,
        need("hidden.weight")?,
    );
    let [f, c, 3, 3] = conv1[..] else {
        return Err(bad(format!(
            "conv1.weight is {conv1:?}, not [filters, channels, 3, 3]"
        )));
    };
    if c != input.channels {
        return Err(bad(format!(
            "the encoder takes {c}-channel images, but the images are {input}"
        )));
    }
    if f == 0 || f > MAX_WIDTH {
        return Err(bad(format!("conv1 has {f} filters")));
    }
    for (name, got, want) in [
        ("conv2.weight", &conv2, [2 * f, f, 3, 3]),
        ("conv3.weight", &conv3, [4 * f, 2 * f, 3, 3]),
    ] {
        if got[..] != want[..] {
            return Err(bad(format!(
                "{name} is {got:?}; with {f} filters in conv1 it must be {want:?}"
            )));
        }
    }
    // The hidden layer reads conv3's 4f channels pooled to 2×2.
    let flat = 16 * f;
    let named = SafeTensors::read_metadata(bytes)
        .ok()
        .and_then(|(_, m)| m.metadata().as_ref()?.get(LAYOUT_KEY).cloned());
    let (layout, units) = match (&hidden[..], named.as_deref()) {
        ([a, b], Some("burn")) if *a == flat => (WeightLayout::Burn, *b),
        ([a, b], Some("pytorch")) if *b == flat => (WeightLayout::PyTorch, *a),
        ([a, b], _) if *a == flat && *b != flat => (WeightLayout::Burn, *b),
        ([a, b], _) if *b == flat && *a != flat => (WeightLayout::PyTorch, *a),
        // Square: only the file can say. Files not made by Veil are taken to be PyTorch's.
        ([a, _], None) if *a == flat => (WeightLayout::PyTorch, flat),
        _ => {
            return Err(bad(format!(
                "hidden.weight is {hidden:?}; after conv3's {} channels pooled to 2×2 it must \
                 read {flat} values ([{flat}, units] as burn writes it, [units, {flat}] as \
                 PyTorch does)",
                4 * f
            )));
        }
    };
    if units == 0 || units > MAX_WIDTH {
        return Err(bad(format!("the hidden layer has {units} units")));
    }
    let head = shape_of("output.weight")?;
    let classes = match (&head, layout) {
        (None, _) => 1,
        (Some(s), WeightLayout::Burn) if s.len() == 2 && s[0] == units => s[1],
        (Some(s), WeightLayout::PyTorch) if s.len() == 2 && s[1] == units => s[0],
        (Some(s), _) => {
            return Err(bad(format!(
                "output.weight is {s:?}, which does not follow a {units}-unit hidden layer"
            )));
        }
    };
    let config = SmallCnnConfig::new(c, input.height, input.width, classes.max(1))
        .with_base_filters(f)
        .with_hidden(units);
    // Load on the CPU, where parameters can be read synchronously, then move.
    let mut model = config.init(&Device::flex());
    let mut store =
        SafetensorsStore::from_bytes(Some(bytes.to_vec())).allow_partial(head.is_none());
    if layout == WeightLayout::PyTorch {
        store = store.with_from_adapter(PyTorchToBurnAdapter);
    }
    let result = model
        .load_from(&mut store)
        .map_err(|e| bad(format!("the weights cannot be loaded: {e}")))?;
    if let Some((path, _)) = result
        .missing
        .iter()
        .find(|(p, _)| !p.starts_with("output."))
    {
        return Err(bad(format!("the file has no tensor {path}")));
    }
    check_finite(&model)?;
    let info = EncoderInfo {
        embedding: units,
        layout,
        head: head.is_some(),
        ignored: result.unused.clone(),
        config,
    };
    Ok((model.to_device(device), info))
}

/// Writes `model` as safetensors that [`import_encoder`] reads back, with dense weights in
/// `layout` (PyTorch's is what `torch.nn.Linear` loads).
pub fn export_encoder(model: &SmallCnn, layout: WeightLayout) -> Result<Vec<u8>, ModelError> {
    let mut store = SafetensorsStore::from_bytes(None).metadata(
        LAYOUT_KEY,
        match layout {
            WeightLayout::Burn => "burn",
            WeightLayout::PyTorch => "pytorch",
        },
    );
    if layout == WeightLayout::PyTorch {
        store = store.with_to_adapter(BurnToPyTorchAdapter);
    }
    model
        .save_into(&mut store)
        .map_err(|e| bad(format!("the weights cannot be written: {e}")))?;
    store
        .get_bytes()
        .map_err(|e| bad(format!("the weights cannot be written: {e}")))
}
