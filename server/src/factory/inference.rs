//! The untrusted classifier: models loaded for inference, on the CPU (flex), and a small cache.

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use veil::data::ImageShape;
use veil::nn::model::{Classifier, SmallCnn, SmallCnnConfig};
use veil::nn::resnet::{SmallResNet, SmallResNetConfig};

/// The architectures the factory trains (the menu of issue #4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// [`veil::nn::model::SmallCnn`].
    SmallCnn,
    /// [`veil::nn::resnet::SmallResNet`].
    SmallResnet,
}

impl Arch {
    /// Every architecture, by name.
    pub const ALL: [(&'static str, Arch); 2] = [
        ("small-cnn", Arch::SmallCnn),
        ("small-resnet", Arch::SmallResnet),
    ];

    /// From its name.
    pub fn parse(name: &str) -> Option<Arch> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Arch::SmallCnn => "small-cnn",
            Arch::SmallResnet => "small-resnet",
        }
    }
}

/// The revision of the architectures that new jobs train, stored with every job and model so
/// that weights are always read into the network they were trained in.
/// - 1: the SmallCnn with one max-pool at every input size (models stored before revisions).
/// - 2: the SmallCnn of [`SmallCnnConfig::for_shape`], with extra pools from 16 pixels.
///
/// The SmallResNet is the same in both.
pub const ARCH_REVISION: u32 = 2;

/// The SmallCnn of `revision` for images of `shape`.
fn cnn_config(revision: u32, shape: ImageShape, classes: usize) -> SmallCnnConfig {
    let config = SmallCnnConfig::for_shape(shape, classes);
    if revision < 2 {
        config.with_extra_pools(None)
    } else {
        config
    }
}

/// A model ready to classify, of any architecture on the menu.
// Few of these exist at once (the cache holds eight), so boxing the larger variant buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum LoadedModel {
    /// The small CNN.
    Cnn(SmallCnn),
    /// The small ResNet.
    ResNet(SmallResNet),
}

impl LoadedModel {
    /// A freshly initialised model of `arch` (at `revision`, see [`ARCH_REVISION`]) for images
    /// of `shape` and `classes` classes.
    pub fn init(
        arch: Arch,
        revision: u32,
        shape: ImageShape,
        classes: usize,
        device: &Device,
    ) -> Self {
        match arch {
            Arch::SmallCnn => LoadedModel::Cnn(cnn_config(revision, shape, classes).init(device)),
            Arch::SmallResnet => {
                LoadedModel::ResNet(SmallResNetConfig::for_shape(shape, classes).init(device))
            }
        }
    }

    /// Weights (burnpack, as [`LoadedModel::to_bytes`] writes them) into a model of `arch`;
    /// NaN or infinite weights are refused, naming the parameter.
    pub fn load(
        arch: Arch,
        revision: u32,
        shape: ImageShape,
        classes: usize,
        bytes: &[u8],
        device: &Device,
    ) -> Result<Self> {
        let cpu = Device::flex();
        let fit = |e: veil::nn::weights::ModelError| {
            anyhow::anyhow!("the weights do not fit {}: {e}", arch.name())
        };
        Ok(match Self::init(arch, revision, shape, classes, &cpu) {
            LoadedModel::Cnn(m) => {
                LoadedModel::Cnn(veil::nn::weights::load(m, bytes, device).map_err(fit)?)
            }
            LoadedModel::ResNet(m) => {
                LoadedModel::ResNet(veil::nn::weights::load(m, bytes, device).map_err(fit)?)
            }
        })
    }

    /// The weights as burnpack bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        Ok(match self {
            LoadedModel::Cnn(m) => veil::nn::weights::to_bytes(m)?,
            LoadedModel::ResNet(m) => veil::nn::weights::to_bytes(m)?,
        })
    }

    /// Class probabilities `[N, K]` (row-major) of `n` images of `shape`, in batches of 256.
    pub fn probabilities(&self, pixels: &[f32], shape: ImageShape, device: &Device) -> Vec<f32> {
        let mut out = Vec::with_capacity(pixels.len() / shape.len().max(1) * 16);
        for chunk in pixels.chunks(256 * shape.len()) {
            let images = veil::data::images_tensor(chunk, shape, device);
            let p = match self {
                LoadedModel::Cnn(m) => m.probabilities(images),
                LoadedModel::ResNet(m) => m.probabilities(images),
            };
            out.extend(p.into_data().iter::<f32>());
        }
        out
    }
}

/// A model the classify route can use, with what a request must match.
#[derive(Debug)]
pub struct Ready {
    /// The model.
    pub model: LoadedModel,
    /// Input shape.
    pub shape: ImageShape,
    /// Class names.
    pub classes: Vec<String>,
}

/// The last few models used, by name (an LRU of [`CACHE_SIZE`] entries), so that repeated
/// classification does not reload weights from disk.
#[derive(Debug, Default)]
pub struct ModelCache {
    entries: Mutex<Vec<(String, Arc<Ready>)>>,
}

/// How many loaded models the cache keeps.
pub const CACHE_SIZE: usize = 8;

impl ModelCache {
    /// The cached model `name` (marked most recently used), if it is cached.
    pub fn get(&self, name: &str) -> Option<Arc<Ready>> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let pos = entries.iter().position(|(n, _)| n == name)?;
        let hit = entries.remove(pos);
        let model = hit.1.clone();
        entries.insert(0, hit);
        Some(model)
    }

    /// The cached model `name`, or the one `load` gives (then cached).
    pub fn get_or_load(
        &self,
        name: &str,
        load: impl FnOnce() -> Result<Ready>,
    ) -> Result<Arc<Ready>> {
        if let Some(model) = self.get(name) {
            return Ok(model);
        }
        let ready = Arc::new(load()?);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|(n, _)| n != name);
        entries.insert(0, (name.to_owned(), ready.clone()));
        entries.truncate(CACHE_SIZE);
        Ok(ready)
    }

    /// Forgets `name` (after it is deleted).
    pub fn forget(&self, name: &str) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(n, _)| n != name);
    }
}

/// Loads a built-in model (see [`crate::embedded::builtin_models`]), if `name` is one.
pub fn load_builtin(name: &str, device: &Device) -> Result<Option<Ready>> {
    let Some((card, weights)) = crate::embedded::builtin_model(name) else {
        return Ok(None);
    };
    let model = card
        .config
        .load(weights, device)
        .with_context(|| format!("loading the built-in model {name}"))?;
    Ok(Some(Ready {
        model: LoadedModel::Cnn(model),
        shape: card.config.input_shape(),
        classes: card.classes.clone(),
    }))
}

/// Checks that `pixels` are whole images of `shape` and at most `max_batch` of them.
pub fn check_batch(
    pixels: &[f32],
    got: ImageShape,
    want: ImageShape,
    max_batch: usize,
) -> Result<usize> {
    if got != want {
        bail!("the images are {got}, but the model takes {want}");
    }
    if pixels.is_empty() {
        bail!("no images to classify");
    }
    let n = pixels.len() / want.len();
    if n > max_batch {
        bail!("{n} images in one request; the limit is {max_batch}: split the batch");
    }
    if let Some(i) = pixels.iter().position(|v| !v.is_finite()) {
        bail!(
            "image {} holds a non-finite value (NaN or infinity)",
            i / want.len()
        );
    }
    Ok(n)
}
