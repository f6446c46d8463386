//! Flow rotation's exports: loading flows, encrypting and decrypting, the known-plaintext
//! attack, and fine-tuning the flows.

use std::rc::Rc;

use wasm_bindgen::prelude::*;

use super::{Veil, err, from_js, named_buffers, object, options_or_default, set_field, to_js};
use crate::flow_rotation::FlowRoute;
use crate::flow_rotation::finetune::FineTuneOptions;

#[wasm_bindgen]
impl Veil {
    /// Loads a family of flows: its manifest text and the files it names (`names[i]` is
    /// `files[i]`, a `Uint8Array`). Returns `{family, shape, classes, levels, agnostic}`.
    #[wasm_bindgen(js_name = loadFlows)]
    pub fn load_flows(
        &self,
        family: &str,
        manifest: &str,
        names: Vec<String>,
        files: js_sys::Array,
    ) -> Result<JsValue, JsError> {
        let files = named_buffers(names, &files)?;
        to_js(
            &self
                .inner
                .flow_rotation()
                .load(family, manifest, &files)
                .map_err(err)?,
        )
    }

    /// The loaded flows' description, or `null`.
    #[wasm_bindgen(js_name = flowsInfo)]
    pub fn flows_info(&self) -> Result<JsValue, JsError> {
        match self.inner.flow_rotation().info() {
            Some(info) => to_js(&info),
            None => Ok(JsValue::NULL),
        }
    }

    /// Decodes PNG/JPEG files (`names[i]` is `files[i]`) to the flows' shape.
    #[wasm_bindgen(js_name = decodeImages)]
    pub fn decode_images(
        &self,
        names: Vec<String>,
        files: js_sys::Array,
    ) -> Result<Vec<f32>, JsError> {
        let files = named_buffers(names, &files)?;
        self.inner
            .flow_rotation()
            .decode_images(&files)
            .map_err(err)
    }

    /// Encrypts a batch with the loaded key: with `labels`, route (a) (each image with its
    /// class's flow and key); without, route (b) (the class-agnostic flow).
    pub async fn encrypt(
        &self,
        pixels: Vec<f32>,
        labels: Option<Vec<u32>>,
    ) -> Result<Vec<f32>, JsError> {
        let session = Rc::clone(&self.inner);
        let route = labels.map_or(FlowRoute::Agnostic, FlowRoute::TrueClass);
        session
            .flow_rotation()
            .apply(&pixels, &route, false)
            .await
            .map_err(err)
    }

    /// [`Veil::encrypt`] that goes on past images the flows cannot encrypt:
    /// `{ciphertexts: [the encrypted images' values], kept: [batch indices], failures: [{index,
    /// reason}]}`.
    #[wasm_bindgen(js_name = encryptChecked)]
    pub async fn encrypt_checked(
        &self,
        pixels: Vec<f32>,
        labels: Option<Vec<u32>>,
    ) -> Result<JsValue, JsError> {
        let session = Rc::clone(&self.inner);
        let route = labels.map_or(FlowRoute::Agnostic, FlowRoute::TrueClass);
        let out = session
            .flow_rotation()
            .encrypt_checked(&pixels, &route)
            .await
            .map_err(err)?;
        object([
            (
                "ciphertexts",
                js_sys::Float32Array::from(&out.ciphertexts[..]).into(),
            ),
            ("kept", js_sys::Uint32Array::from(&out.kept[..]).into()),
            ("failures", to_js(&out.failures)?),
        ])
    }

    /// Known-plaintext key recovery, the attacker's side (no key is used): fits class `class`'s
    /// rotation (none: route b's agnostic flow) to the pairs (`plain`, `cipher`) and decrypts
    /// `victims` with it. Answers `{known_pairs, decoder, rank, dim, captured_energy, decrypted}`,
    /// `decrypted` a `Float32Array`.
    #[wasm_bindgen(js_name = knownPlaintext)]
    pub async fn known_plaintext(
        &self,
        plain: Vec<f32>,
        cipher: Vec<f32>,
        victims: Vec<f32>,
        class: Option<u32>,
    ) -> Result<JsValue, JsError> {
        let session = Rc::clone(&self.inner);
        let mut step = session
            .flow_rotation()
            .known_plaintext(&plain, &cipher, &victims, class)
            .await
            .map_err(err)?;
        let decrypted = std::mem::take(&mut step.decrypted);
        let obj = to_js(&step)?;
        set_field(
            &obj,
            "decrypted",
            &js_sys::Float32Array::from(&decrypted[..]).into(),
        )?;
        Ok(obj)
    }

    /// Encrypts every image with class `class`'s flow and key (one step of route c).
    #[wasm_bindgen(js_name = encryptAs)]
    pub async fn encrypt_as(&self, pixels: Vec<f32>, class: u32) -> Result<Vec<f32>, JsError> {
        let session = Rc::clone(&self.inner);
        session
            .flow_rotation()
            .apply(&pixels, &FlowRoute::Class(class), false)
            .await
            .map_err(err)
    }

    /// Decrypts ciphertexts to the original pixels. `madeWith` is a container summary's
    /// `flow` (its route and settings, see `readContainer`); without it, ciphertexts
    /// the loaded flows made (route a with `labels`, route b without).
    pub async fn decrypt(
        &self,
        ciphertexts: Vec<f32>,
        labels: Option<Vec<u32>>,
        made_with: JsValue,
    ) -> Result<Vec<f32>, JsError> {
        let session = Rc::clone(&self.inner);
        let made_with = if made_with.is_undefined() || made_with.is_null() {
            None
        } else {
            Some(from_js(made_with, "the ciphertexts' settings")?)
        };
        match made_with {
            Some(made_with) => session
                .flow_rotation()
                .decrypt(&ciphertexts, labels, &made_with)
                .await
                .map_err(err),
            None => {
                let route = labels.map_or(FlowRoute::Agnostic, FlowRoute::TrueClass);
                session
                    .flow_rotation()
                    .apply(&ciphertexts, &route, true)
                    .await
                    .map_err(err)
            }
        }
    }

    /// A dataset container of ciphertexts, their labels and the key's fingerprint.
    #[wasm_bindgen(js_name = flowContainer)]
    pub fn flow_container(
        &self,
        ciphertexts: Vec<f32>,
        labels: Vec<u32>,
        agnostic: bool,
    ) -> Result<Vec<u8>, JsError> {
        self.inner
            .flow_rotation()
            .container(ciphertexts, labels, agnostic)
            .map_err(err)
    }

    /// The binary body of a classification request for these images.
    #[wasm_bindgen(js_name = imagesBatch)]
    pub fn images_batch(&self, values: Vec<f32>) -> Result<Vec<u8>, JsError> {
        self.inner
            .flow_rotation()
            .images_batch(&values)
            .map_err(err)
    }

    /// Plans fine-tuning the loaded flows on labelled images of their shape. `options` is
    /// `{target: "all" | "agnostic" | {"class": k}, steps, batch_size, learning_rate,
    /// warmup_steps, held_out, seed}`, missing fields taking their defaults. Returns the plan
    /// `{flows: [{name, train_images, held_out_images}], skipped, total_steps}`.
    #[wasm_bindgen(js_name = fineTuneBegin)]
    pub fn fine_tune_begin(
        &self,
        pixels: Vec<f32>,
        labels: Vec<u32>,
        options: JsValue,
    ) -> Result<JsValue, JsError> {
        let options: FineTuneOptions = options_or_default(options, "the fine-tuning options")?;
        to_js(
            &self
                .inner
                .flow_rotation()
                .fine_tune_begin(pixels, labels, options)
                .map_err(err)?,
        )
    }

    /// Runs up to `maxSteps` steps of the planned fine-tuning; returns the progress
    /// `{flow, flow_index, flows, step, steps, done_steps, total_steps, bits_per_dim, finished,
    /// reports}`.
    #[wasm_bindgen(js_name = fineTuneRun)]
    pub async fn fine_tune_run(&self, max_steps: usize) -> Result<JsValue, JsError> {
        let session = Rc::clone(&self.inner);
        let progress = session
            .flow_rotation()
            .fine_tune_run(max_steps)
            .await
            .map_err(err)?;
        to_js(&progress)
    }

    /// Abandons the fine-tuning in progress; the loaded flows stay as they were.
    #[wasm_bindgen(js_name = fineTuneCancel)]
    pub fn fine_tune_cancel(&self) {
        self.inner.flow_rotation().fine_tune_cancel();
    }

    /// Puts the fine-tuned flows of a finished run in place, named `family`; returns the flows'
    /// description, as `loadFlows` does.
    #[wasm_bindgen(js_name = fineTuneApply)]
    pub fn fine_tune_apply(&self, family: &str) -> Result<JsValue, JsError> {
        to_js(
            &self
                .inner
                .flow_rotation()
                .fine_tune_apply(family)
                .map_err(err)?,
        )
    }

    /// The loaded flows as files, to keep in the browser: `{manifest, names, files}` (the
    /// files as `Uint8Array`s, in the order of `names`).
    #[wasm_bindgen(js_name = exportFlows)]
    pub fn export_flows(&self) -> Result<JsValue, JsError> {
        let (manifest, files) = self.inner.flow_rotation().export().map_err(err)?;
        let names = js_sys::Array::new();
        let buffers = js_sys::Array::new();
        for (name, bytes) in files {
            names.push(&name.into());
            buffers.push(&js_sys::Uint8Array::from(bytes.as_slice()).into());
        }
        object([
            ("manifest", manifest.into()),
            ("names", names.into()),
            ("files", buffers.into()),
        ])
    }
}

/// Route (c): `probs[k]` (a `Float32Array`, `[n, K]`) is the factory model's answer on the
/// images encrypted as class `k`. Returns `{labels, confidences}`.
#[wasm_bindgen(js_name = modelRouted)]
pub fn model_routed(probs: js_sys::Array, n: usize) -> Result<JsValue, JsError> {
    let probs: Vec<Vec<f32>> = probs
        .iter()
        .map(|p| js_sys::Float32Array::new(&p).to_vec())
        .collect();
    let (labels, confidences) =
        crate::flow_rotation::flows::model_routed(&probs, n).map_err(err)?;
    to_js(&serde_json::json!({ "labels": labels, "confidences": confidences }))
}
