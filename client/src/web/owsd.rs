//! OWSD's exports: embedding, importing encoders, scrambling, and the internal inference
//! network.

use std::rc::Rc;

use wasm_bindgen::prelude::*;

use super::{Veil, err, from_js, object, options_or_default, to_js, with_pixels};

#[wasm_bindgen]
impl Veil {
    /// OWSD embeddings of images of the demo model's shape by each of `encoders`, side by side
    /// in a row (`[B, Σ widths]`): 0 is the demo model's penultimate layer (64 values), `i ≥ 1`
    /// the `i`-th imported encoder.
    pub async fn embed(&self, pixels: Vec<f32>, encoders: Vec<u32>) -> Result<Vec<f32>, JsError> {
        let session = Rc::clone(&self.inner);
        let encoders: Vec<usize> = encoders.into_iter().map(|e| e as usize).collect();
        session.owsd().embed(&pixels, &encoders).await.map_err(err)
    }

    /// Imports the owner's OWSD encoder from a safetensors file (Veil's SmallCnn architecture,
    /// burn's or PyTorch's layout). Returns `{index, name, info: {config, embedding, layout,
    /// head, ignored}}`. The encoder stays in this page.
    #[wasm_bindgen(js_name = importEncoder)]
    pub fn import_encoder(&self, name: &str, bytes: Vec<u8>) -> Result<JsValue, JsError> {
        to_js(
            &self
                .inner
                .owsd()
                .import_encoder(name, &bytes)
                .map_err(err)?,
        )
    }

    /// Sets up the loaded key's OWSD scramble generators, one per encoder. `setup` is
    /// `{encoders: [embedding widths], output: {channels, height, width}, generation}`; `usage`
    /// is the kept count `{used, budget, warn_at}`. Returns the status `{fingerprint, generation,
    /// usage, config, encoders}`.
    #[wasm_bindgen(js_name = scrambleBegin)]
    pub fn scramble_begin(&self, setup: JsValue, usage: JsValue) -> Result<JsValue, JsError> {
        let setup = from_js(setup, "the scramble setup")?;
        let usage = from_js(usage, "the key's usage count")?;
        to_js(
            &self
                .inner
                .owsd()
                .scramble_begin(setup, usage)
                .map_err(err)?,
        )
    }

    /// The scrambler's status for the loaded key, or `null`.
    #[wasm_bindgen(js_name = scrambleStatus)]
    pub fn scramble_status(&self) -> Result<JsValue, JsError> {
        match self.inner.owsd().scramble_status() {
            Some(s) => to_js(&s),
            None => Ok(JsValue::NULL),
        }
    }

    /// Scrambles embedding rows (`[B, Σ widths]`, as `embed` gives them), counting `B` against
    /// the key's budget first (refused past it unless `force`). Returns `{pixels: Float32Array
    /// ([B·E, C, H, W], image i's scramble by encoder e at i·E + e), usage, warning}`.
    pub async fn scramble(&self, embeddings: Vec<f32>, force: bool) -> Result<JsValue, JsError> {
        let session = Rc::clone(&self.inner);
        let out = session
            .owsd()
            .scramble(&embeddings, force)
            .await
            .map_err(err)?;
        with_pixels(to_js(&out)?, &out.pixels)
    }

    /// Trains OWSD's internal inference network on the owner's labelled sample: embeddings
    /// (`[N, e]`), the cloud's probability vectors of their scrambled images (`[N, k]`), labels,
    /// class names, and options `{max_epochs, patience, batch_size, learning_rate,
    /// validation, seed}` (missing ones take defaults). Returns `{epochs, best_epoch,
    /// validation_accuracy}`.
    #[wasm_bindgen(js_name = iinTrain)]
    pub fn iin_train(
        &self,
        embeddings: Vec<f32>,
        cloud: Vec<f32>,
        labels: Vec<u32>,
        classes: Vec<String>,
        options: JsValue,
    ) -> Result<JsValue, JsError> {
        let options = options_or_default(options, "the training options")?;
        to_js(
            &self
                .inner
                .owsd()
                .iin_train(&embeddings, &cloud, &labels, classes, options)
                .map_err(err)?,
        )
    }

    /// The trained network's answer for new images: `{labels: Uint32Array, probabilities:
    /// Float32Array ([N, classes])}`.
    #[wasm_bindgen(js_name = iinPredict)]
    pub fn iin_predict(&self, embeddings: Vec<f32>, cloud: Vec<f32>) -> Result<JsValue, JsError> {
        let (labels, probs) = self
            .inner
            .owsd()
            .iin_predict(&embeddings, &cloud)
            .map_err(err)?;
        object([
            (
                "labels",
                js_sys::Uint32Array::from(labels.as_slice()).into(),
            ),
            (
                "probabilities",
                js_sys::Float32Array::from(probs.as_slice()).into(),
            ),
        ])
    }
}

/// OWSD's budget policy, from the library rather than written again in JavaScript: a fresh
/// key's usage `{used: 0, budget, warn_at}` with `budget` images (the paper's 9,000 when absent)
/// and the warning at 80 % of it.
#[wasm_bindgen(js_name = owsdUsage)]
pub fn owsd_usage(budget: Option<f64>) -> Result<JsValue, JsError> {
    let budget = match budget {
        None => veil::schemes::owsd::KeyUsage::DEFAULT_BUDGET,
        Some(b) if b.is_finite() && b >= 1.0 => b as u64,
        Some(b) => {
            return Err(JsError::new(&format!(
                "the budget must be at least 1 image, not {b}"
            )));
        }
    };
    to_js(&veil::schemes::owsd::KeyUsage::new(budget))
}
