//! The JavaScript boundary: the only `#[wasm_bindgen]` file. Every export returns
//! `Result<_, JsError>` (a rejected promise with the message, never a panic: a panic aborts the
//! wasm instance and leaves the page's promises pending forever).

use std::rc::Rc;

use wasm_bindgen::prelude::*;

use crate::finetune::FineTuneOptions;
use crate::session::{FlowRoute, Session};

fn err(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

#[wasm_bindgen(start)]
fn start() {
    console_error_panic_hook::set_once();
}

/// A Veil session in the page (usually inside a Web Worker).
#[wasm_bindgen]
pub struct Veil {
    inner: Rc<Session>,
}

#[wasm_bindgen]
impl Veil {
    /// Starts a session: WebGPU when `preferGpu` and available, else the CPU.
    #[wasm_bindgen(js_name = create)]
    pub async fn create(prefer_gpu: bool) -> Result<Veil, JsError> {
        let session = Session::start(prefer_gpu).await.map_err(err)?;
        Ok(Veil {
            inner: Rc::new(session),
        })
    }

    /// `{kind: "webgpu"}` or `{kind: "cpu", reason}`.
    pub fn backend(&self) -> Result<JsValue, JsError> {
        serde_wasm(self.inner.backend())
    }

    /// The demo model's card (architecture, classes, test accuracy, reference logits).
    #[wasm_bindgen(js_name = modelCard)]
    pub fn model_card(&self) -> Result<JsValue, JsError> {
        serde_wasm(self.inner.model_card())
    }

    /// Generates a key; returns its fingerprint.
    #[wasm_bindgen(js_name = generateKey)]
    pub fn generate_key(&self, name: &str) -> Result<String, JsError> {
        self.inner.generate_key(name).map_err(err)
    }

    /// The loaded key's fingerprint, or `undefined`.
    pub fn fingerprint(&self) -> Option<String> {
        self.inner.fingerprint()
    }

    /// The loaded key's name.
    #[wasm_bindgen(js_name = keyName)]
    pub fn key_name(&self) -> String {
        self.inner.key_name()
    }

    /// The key file (JSON text), wrapped with `passphrase` when given.
    #[wasm_bindgen(js_name = exportKey)]
    pub fn export_key(&self, passphrase: Option<String>) -> Result<String, JsError> {
        self.inner.export_key(passphrase.as_deref()).map_err(err)
    }

    /// Imports a key file; returns the fingerprint. The current key is kept on error.
    #[wasm_bindgen(js_name = importKey)]
    pub fn import_key(&self, text: &str, passphrase: Option<String>) -> Result<String, JsError> {
        self.inner
            .import_key(text, passphrase.as_deref())
            .map_err(err)
    }

    /// Forgets the key.
    #[wasm_bindgen(js_name = forgetKey)]
    pub fn forget_key(&self) {
        self.inner.forget_key();
    }

    /// Classifies one image (`C·H·W` values in [0, 1]) with the demo model:
    /// `{label, class_name, probabilities, logits}`.
    pub async fn classify(&self, pixels: Vec<f32>) -> Result<JsValue, JsError> {
        let session = Rc::clone(&self.inner);
        let result = session.classify(&pixels).await.map_err(err)?;
        serde_wasm(&result)
    }

    /// Logits of a batch of images (`[B, C, H, W]` values), row-major `[B, K]`.
    pub async fn logits(&self, pixels: Vec<f32>) -> Result<Vec<f32>, JsError> {
        let session = Rc::clone(&self.inner);
        session.logits(&pixels).await.map_err(err)
    }

    /// How this module was built: `{simd128}` (whether it uses WebAssembly SIMD).
    #[wasm_bindgen(js_name = buildInfo)]
    pub fn build_info(&self) -> Result<JsValue, JsError> {
        serde_wasm(&serde_json::json!({ "simd128": cfg!(target_feature = "simd128") }))
    }

    /// Hex SHA-256 of the Haar rotation of `dim` dimensions for class `class` of the loaded key
    /// (or of the public test key when `testKey` is true), drawn by `derivation` (`qr` or
    /// `householder`).
    #[wasm_bindgen(js_name = haarDigest)]
    pub fn haar_digest(
        &self,
        dim: usize,
        class: u32,
        test_key: bool,
        derivation: &str,
    ) -> Result<String, JsError> {
        use veil::crypto::haar::{HaarRotation, RotationDerivation};
        use veil::crypto::keys::Scheme;
        let key = if test_key {
            veil::crypto::testvectors::test_key()
        } else {
            self.inner.key().map_err(err)?
        };
        if dim == 0 || dim > 4096 {
            return Err(JsError::new("the dimension must be between 1 and 4096"));
        }
        let derivation = RotationDerivation::parse(derivation).ok_or_else(|| {
            JsError::new(&format!(
                "unknown rotation derivation {derivation:?}: use qr or householder"
            ))
        })?;
        let rot = HaarRotation::from_subkey(
            &key.class_subkey(Scheme::FlowRotation, class),
            dim,
            derivation,
        );
        Ok(veil::crypto::keys::to_hex(&rot.digest()))
    }
}

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
        serde_wasm(
            &self
                .inner
                .load_flows(family, manifest, &files)
                .map_err(err)?,
        )
    }

    /// The loaded flows' description, or `null`.
    #[wasm_bindgen(js_name = flowsInfo)]
    pub fn flows_info(&self) -> Result<JsValue, JsError> {
        match self.inner.flows_info() {
            Some(info) => serde_wasm(&info),
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
        self.inner.decode_images(&files).map_err(err)
    }

    /// Decodes PNG/JPEG files (as `decodeImages`) to `channels`×`height`×`width` images
    /// quantised to `levels`, whatever flows are loaded (e.g. for an OWSD encoder).
    #[wasm_bindgen(js_name = decodeImagesAs)]
    pub fn decode_images_as(
        &self,
        names: Vec<String>,
        files: js_sys::Array,
        channels: usize,
        height: usize,
        width: usize,
        levels: usize,
    ) -> Result<Vec<f32>, JsError> {
        let files = named_buffers(names, &files)?;
        self.inner
            .decode_images_as(
                &files,
                veil::data::ImageShape::new(channels, height, width),
                levels,
            )
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
            .flow_apply(&pixels, &route, false)
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
            .flow_encrypt_checked(&pixels, &route)
            .await
            .map_err(err)?;
        let failures = serde_wasm(&out.failures)?;
        let obj = js_sys::Object::new();
        let set = |k: &str, v: JsValue| js_sys::Reflect::set(&obj, &k.into(), &v);
        set(
            "ciphertexts",
            js_sys::Float32Array::from(&out.ciphertexts[..]).into(),
        )
        .and_then(|_| set("kept", js_sys::Uint32Array::from(&out.kept[..]).into()))
        .and_then(|_| set("failures", failures))
        .map_err(|_| JsError::new("internal: cannot build the answer object"))?;
        Ok(obj.into())
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
            .known_plaintext(&plain, &cipher, &victims, class)
            .await
            .map_err(err)?;
        let decrypted = std::mem::take(&mut step.decrypted);
        let obj = serde_wasm(&step)?;
        js_sys::Reflect::set(
            &obj,
            &"decrypted".into(),
            &js_sys::Float32Array::from(&decrypted[..]).into(),
        )
        .map_err(|_| JsError::new("internal: cannot build the answer object"))?;
        Ok(obj)
    }

    /// Encrypts every image with class `class`'s flow and key (one step of route c).
    #[wasm_bindgen(js_name = encryptAs)]
    pub async fn encrypt_as(&self, pixels: Vec<f32>, class: u32) -> Result<Vec<f32>, JsError> {
        let session = Rc::clone(&self.inner);
        session
            .flow_apply(&pixels, &FlowRoute::Class(class), false)
            .await
            .map_err(err)
    }

    /// Decrypts ciphertexts to the original pixels. `madeWith` is the JSON of a container
    /// summary's `flow` (its route and settings, see `readContainer`); without it, ciphertexts
    /// the loaded flows made (route a with `labels`, route b without).
    pub async fn decrypt(
        &self,
        ciphertexts: Vec<f32>,
        labels: Option<Vec<u32>>,
        made_with: Option<String>,
    ) -> Result<Vec<f32>, JsError> {
        let session = Rc::clone(&self.inner);
        match made_with {
            Some(json) => {
                let made_with = serde_json::from_str(&json).map_err(|e| {
                    JsError::new(&format!("the ciphertexts' settings are malformed: {e}"))
                })?;
                session
                    .flow_decrypt(&ciphertexts, labels, &made_with)
                    .await
                    .map_err(err)
            }
            None => {
                let route = labels.map_or(FlowRoute::Agnostic, FlowRoute::TrueClass);
                session
                    .flow_apply(&ciphertexts, &route, true)
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
            .flow_container(ciphertexts, labels, agnostic)
            .map_err(err)
    }

    /// The binary body of a classification request for these images.
    #[wasm_bindgen(js_name = imagesBatch)]
    pub fn images_batch(&self, values: Vec<f32>) -> Result<Vec<u8>, JsError> {
        self.inner.images_batch(&values).map_err(err)
    }

    /// Plans fine-tuning the loaded flows on labelled images of their shape. `options` is JSON:
    /// `{target: "all" | "agnostic" | {"class": k}, steps, batch_size, learning_rate,
    /// warmup_steps, held_out, seed}`, missing fields taking their defaults. Returns the plan
    /// `{flows: [{name, train_images, held_out_images}], skipped, total_steps}`.
    #[wasm_bindgen(js_name = fineTuneBegin)]
    pub fn fine_tune_begin(
        &self,
        pixels: Vec<f32>,
        labels: Vec<u32>,
        options: &str,
    ) -> Result<JsValue, JsError> {
        let options: FineTuneOptions = serde_json::from_str(options)
            .map_err(|e| JsError::new(&format!("the fine-tuning options: {e}")))?;
        serde_wasm(
            &self
                .inner
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
        let progress = session.fine_tune_run(max_steps).await.map_err(err)?;
        serde_wasm(&progress)
    }

    /// Abandons the fine-tuning in progress; the loaded flows stay as they were.
    #[wasm_bindgen(js_name = fineTuneCancel)]
    pub fn fine_tune_cancel(&self) {
        self.inner.fine_tune_cancel();
    }

    /// Puts the fine-tuned flows of a finished run in place, named `family`; returns the flows'
    /// description, as `loadFlows` does.
    #[wasm_bindgen(js_name = fineTuneApply)]
    pub fn fine_tune_apply(&self, family: &str) -> Result<JsValue, JsError> {
        serde_wasm(&self.inner.fine_tune_apply(family).map_err(err)?)
    }

    /// The loaded flows as files, to keep in the browser: `{manifest, names, files}` (the
    /// files as `Uint8Array`s, in the order of `names`).
    #[wasm_bindgen(js_name = exportFlows)]
    pub fn export_flows(&self) -> Result<JsValue, JsError> {
        let (manifest, files) = self.inner.export_flows().map_err(err)?;
        let names = js_sys::Array::new();
        let buffers = js_sys::Array::new();
        for (name, bytes) in files {
            names.push(&name.into());
            buffers.push(&js_sys::Uint8Array::from(bytes.as_slice()).into());
        }
        let out = js_sys::Object::new();
        let set = |k: &str, v: JsValue| js_sys::Reflect::set(&out, &k.into(), &v);
        set("manifest", manifest.into())
            .and_then(|_| set("names", names.into()))
            .and_then(|_| set("files", buffers.into()))
            .map_err(|_| JsError::new("internal: cannot build the answer"))?;
        Ok(out.into())
    }

    /// OWSD embeddings of images of the demo model's shape by each of `encoders`, side by side
    /// in a row (`[B, Σ widths]`): 0 is the demo model's penultimate layer (64 values), `i ≥ 1`
    /// the `i`-th imported encoder.
    pub async fn embed(&self, pixels: Vec<f32>, encoders: Vec<u32>) -> Result<Vec<f32>, JsError> {
        let session = Rc::clone(&self.inner);
        let encoders: Vec<usize> = encoders.into_iter().map(|e| e as usize).collect();
        session.embed(&pixels, &encoders).await.map_err(err)
    }

    /// Imports the owner's OWSD encoder from a safetensors file (Veil's SmallCnn architecture,
    /// burn's or PyTorch's layout). Returns `{index, name, info: {config, embedding, layout,
    /// head, ignored}}`. The encoder stays in this page.
    #[wasm_bindgen(js_name = importEncoder)]
    pub fn import_encoder(&self, name: &str, bytes: Vec<u8>) -> Result<JsValue, JsError> {
        serde_wasm(&self.inner.import_encoder(name, &bytes).map_err(err)?)
    }

    /// Sets up the loaded key's OWSD scramble generators, one per encoder. `setup` is JSON
    /// `{encoders: [embedding widths], output: {channels, height, width}, generation}`; `usage`
    /// is the kept count `{used, budget, warn_at}`. Returns the status `{fingerprint, generation,
    /// usage, config, encoders}`.
    #[wasm_bindgen(js_name = scrambleBegin)]
    pub fn scramble_begin(&self, setup: &str, usage: &str) -> Result<JsValue, JsError> {
        let setup = serde_json::from_str(setup)
            .map_err(|e| JsError::new(&format!("the scramble setup: {e}")))?;
        let usage = serde_json::from_str(usage)
            .map_err(|e| JsError::new(&format!("the key's usage count: {e}")))?;
        serde_wasm(&self.inner.scramble_begin(setup, usage).map_err(err)?)
    }

    /// The scrambler's status for the loaded key, or `null`.
    #[wasm_bindgen(js_name = scrambleStatus)]
    pub fn scramble_status(&self) -> Result<JsValue, JsError> {
        match self.inner.scramble_status() {
            Some(s) => serde_wasm(&s),
            None => Ok(JsValue::NULL),
        }
    }

    /// Scrambles embedding rows (`[B, Σ widths]`, as `embed` gives them), counting `B` against
    /// the key's budget first (refused past it unless `force`). Returns `{pixels: Float32Array
    /// ([B·E, C, H, W], image i's scramble by encoder e at i·E + e), usage, warning}`.
    pub async fn scramble(&self, embeddings: Vec<f32>, force: bool) -> Result<JsValue, JsError> {
        let session = Rc::clone(&self.inner);
        let out = session.scramble(&embeddings, force).await.map_err(err)?;
        with_pixels(serde_wasm(&out)?, &out.pixels)
    }

    /// Sets up adversarial data encryption under the loaded key. `setup` is JSON `{shape:
    /// {channels, height, width}, classes: [names], epsilon, iterations, method: null |
    /// "horizontal-concat" | "mixup-concat"}`; `base` the owner's base model (burnpack bytes of a
    /// SmallCnn for that shape and those classes, as `adversarialBaseModel` gives, or a
    /// safetensors SmallCnn with its classifier head), or `undefined` for the demo digits model.
    /// Returns `{fingerprint, setup, pgd, demo_base}`.
    #[wasm_bindgen(js_name = adversarialBegin)]
    pub fn adversarial_begin(
        &self,
        setup: &str,
        base: Option<Vec<u8>>,
    ) -> Result<JsValue, JsError> {
        let setup = serde_json::from_str(setup)
            .map_err(|e| JsError::new(&format!("the adversarial setup: {e}")))?;
        serde_wasm(
            &self
                .inner
                .adversarial_begin(setup, base.as_deref())
                .map_err(err)?,
        )
    }

    /// Encrypts labelled images (`[B, C, H, W]` in [0, 1]) with targeted PGD toward their
    /// classes' secret targets. Returns `{pixels: Float32Array, psnr: [dB], ssim: [..]}`.
    #[wasm_bindgen(js_name = adversarialEncrypt)]
    pub async fn adversarial_encrypt(
        &self,
        pixels: Vec<f32>,
        labels: Vec<u32>,
    ) -> Result<JsValue, JsError> {
        let session = Rc::clone(&self.inner);
        let out = session
            .adversarial_encrypt(&pixels, &labels)
            .await
            .map_err(err)?;
        with_pixels(serde_wasm(&out)?, &out.pixels)
    }

    /// Plans training a base model for adversarial encryption on the owner's labelled images
    /// (`[N, C, H, W]` in [0, 1]) of `channels`×`height`×`width`, with `classes` names and JSON
    /// options `{epochs, batch_size, learning_rate, validation, seed}` (missing ones take
    /// defaults). Returns the progress object of [`adversarialTrainRun`].
    #[wasm_bindgen(js_name = adversarialTrainBegin)]
    #[allow(clippy::too_many_arguments)]
    pub fn adversarial_train_begin(
        &self,
        pixels: Vec<f32>,
        labels: Vec<u32>,
        channels: usize,
        height: usize,
        width: usize,
        classes: Vec<String>,
        options: &str,
    ) -> Result<JsValue, JsError> {
        let options = serde_json::from_str(options)
            .map_err(|e| JsError::new(&format!("the training options: {e}")))?;
        let shape = veil::data::ImageShape::new(channels, height, width);
        serde_wasm(
            &self
                .inner
                .adversarial_train_begin(pixels, labels, shape, classes, options)
                .map_err(err)?,
        )
    }

    /// Runs up to `max_steps` training steps. Returns `{epoch, epochs, done_steps, total_steps,
    /// loss, accuracy, train_images, validation_images, validation_accuracy, finished}`.
    #[wasm_bindgen(js_name = adversarialTrainRun)]
    pub async fn adversarial_train_run(&self, max_steps: usize) -> Result<JsValue, JsError> {
        let session = Rc::clone(&self.inner);
        let progress = session
            .adversarial_train_run(max_steps)
            .await
            .map_err(err)?;
        serde_wasm(&progress)
    }

    /// Drops the base model's training run.
    #[wasm_bindgen(js_name = adversarialTrainCancel)]
    pub fn adversarial_train_cancel(&self) {
        self.inner.adversarial_train_cancel();
    }

    /// The trained base model as burnpack bytes (for `adversarialBegin`, or for the owner to keep).
    #[wasm_bindgen(js_name = adversarialBaseModel)]
    pub async fn adversarial_base_model(&self) -> Result<Vec<u8>, JsError> {
        let session = Rc::clone(&self.inner);
        session.adversarial_base_model().await.map_err(err)
    }

    /// A dataset container of adversarially encrypted images, their labels and the key's
    /// fingerprint.
    #[wasm_bindgen(js_name = adversarialContainer)]
    pub fn adversarial_container(
        &self,
        encrypted: Vec<f32>,
        labels: Vec<u32>,
    ) -> Result<Vec<u8>, JsError> {
        self.inner
            .adversarial_container(encrypted, labels)
            .map_err(err)
    }

    /// Trains OWSD's internal inference network on the owner's labelled sample: embeddings
    /// (`[N, e]`), the cloud's probability vectors of their scrambled images (`[N, k]`), labels,
    /// class names, and JSON options `{max_epochs, patience, batch_size, learning_rate,
    /// validation, seed}` (missing ones take defaults). Returns `{epochs, best_epoch,
    /// validation_accuracy}`.
    #[wasm_bindgen(js_name = iinTrain)]
    pub fn iin_train(
        &self,
        embeddings: Vec<f32>,
        cloud: Vec<f32>,
        labels: Vec<u32>,
        classes: Vec<String>,
        options: &str,
    ) -> Result<JsValue, JsError> {
        let options = serde_json::from_str(options)
            .map_err(|e| JsError::new(&format!("the training options: {e}")))?;
        serde_wasm(
            &self
                .inner
                .iin_train(&embeddings, &cloud, &labels, classes, options)
                .map_err(err)?,
        )
    }

    /// The trained network's answer for new images: `{labels: Uint32Array, probabilities:
    /// Float32Array ([N, classes])}`.
    #[wasm_bindgen(js_name = iinPredict)]
    pub fn iin_predict(&self, embeddings: Vec<f32>, cloud: Vec<f32>) -> Result<JsValue, JsError> {
        let (labels, probs) = self.inner.iin_predict(&embeddings, &cloud).map_err(err)?;
        let out = js_sys::Object::new();
        let set = |k: &str, v: JsValue| js_sys::Reflect::set(&out, &k.into(), &v);
        set(
            "labels",
            js_sys::Uint32Array::from(labels.as_slice()).into(),
        )
        .and_then(|_| {
            set(
                "probabilities",
                js_sys::Float32Array::from(probs.as_slice()).into(),
            )
        })
        .map_err(|_| JsError::new("internal: cannot build the answer"))?;
        Ok(out.into())
    }

    /// Reads a dataset container: `{summary, pixels: Float32Array, labels: Uint32Array}`.
    #[wasm_bindgen(js_name = readContainer)]
    pub fn read_container(&self, bytes: Vec<u8>) -> Result<JsValue, JsError> {
        let (summary, pixels, labels) = self.inner.read_container(&bytes).map_err(err)?;
        let out = js_sys::Object::new();
        let set = |k: &str, v: JsValue| js_sys::Reflect::set(&out, &k.into(), &v);
        set("summary", serde_wasm(&summary)?)
            .and_then(|_| {
                set(
                    "pixels",
                    js_sys::Float32Array::from(pixels.as_slice()).into(),
                )
            })
            .and_then(|_| {
                set(
                    "labels",
                    js_sys::Uint32Array::from(labels.as_slice()).into(),
                )
            })
            .map_err(|_| JsError::new("internal: cannot build the answer"))?;
        Ok(out.into())
    }
}

/// A handwritten digit for the demo model, made the way the UCI digits were made
/// ([`veil::data::handwriting::uci_digit`]: ink found and cropped, centred keeping its aspect
/// ratio, strokes thickened to the UCI digits' width, 4×4 blocks counted). `rgba` is a canvas's
/// `ImageData` (`width × height × 4` bytes). Returns `{pixels: [64 values], inverted, bbox,
/// threshold, dilations}`; a blank image is an error that says so.
#[wasm_bindgen(js_name = uciDigit)]
pub fn uci_digit(rgba: Vec<u8>, width: usize, height: usize) -> Result<JsValue, JsError> {
    use veil::data::handwriting;
    if rgba.len() != width * height * 4 {
        return Err(JsError::new(&format!(
            "{} bytes are not the RGBA pixels of a {width}×{height} image",
            rgba.len()
        )));
    }
    let (pixels, how) =
        handwriting::uci_digit(&handwriting::luma_of_rgba(&rgba), width, height).map_err(err)?;
    #[derive(serde::Serialize)]
    struct Digit {
        pixels: Vec<f32>,
        #[serde(flatten)]
        how: handwriting::DigitNormalisation,
    }
    serde_wasm(&Digit {
        pixels: pixels.to_vec(),
        how,
    })
}

/// The first `n` (at most all 1,797) of the UCI digits compiled into the client, public data for
/// demos and benchmarks: `{pixels: Float32Array, labels: Uint32Array}`.
#[wasm_bindgen(js_name = sampleDigits)]
pub fn sample_digits(n: usize) -> Result<JsValue, JsError> {
    let data = veil::data::digits();
    let n = n.min(data.len());
    let out = js_sys::Object::new();
    let set = |k: &str, v: JsValue| js_sys::Reflect::set(&out, &k.into(), &v);
    set(
        "pixels",
        js_sys::Float32Array::from(&data.images[..n * data.shape.len()]).into(),
    )
    .and_then(|_| {
        set(
            "labels",
            js_sys::Uint32Array::from(&data.labels[..n]).into(),
        )
    })
    .map_err(|_| JsError::new("internal: cannot build the answer"))?;
    Ok(out.into())
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
    serde_wasm(&veil::schemes::owsd::KeyUsage::new(budget))
}

/// Route (c): `probs[k]` (a `Float32Array`, `[n, K]`) is the factory model's answer on the
/// images encrypted as class `k`. Returns `{labels, confidences}`.
#[wasm_bindgen(js_name = modelRouted)]
pub fn model_routed(probs: js_sys::Array, n: usize) -> Result<JsValue, JsError> {
    let probs: Vec<Vec<f32>> = probs
        .iter()
        .map(|p| js_sys::Float32Array::new(&p).to_vec())
        .collect();
    let (labels, confidences) = crate::flows::model_routed(&probs, n).map_err(err)?;
    serde_wasm(&serde_json::json!({ "labels": labels, "confidences": confidences }))
}

fn named_buffers(
    names: Vec<String>,
    files: &js_sys::Array,
) -> Result<Vec<(String, Vec<u8>)>, JsError> {
    if names.len() != files.length() as usize {
        return Err(JsError::new(&format!(
            "{} names for {} files",
            names.len(),
            files.length()
        )));
    }
    Ok(names
        .into_iter()
        .zip(files.iter())
        .map(|(n, f)| (n, js_sys::Uint8Array::new(&f).to_vec()))
        .collect())
}

/// `value` with a `pixels` field holding `pixels` as a `Float32Array` (serde skips pixel
/// buffers: a JSON array of floats would be slow and large).
fn with_pixels(value: JsValue, pixels: &[f32]) -> Result<JsValue, JsError> {
    js_sys::Reflect::set(
        &value,
        &"pixels".into(),
        &js_sys::Float32Array::from(pixels).into(),
    )
    .map_err(|_| JsError::new("internal: cannot build the answer"))?;
    Ok(value)
}

fn serde_wasm<T: serde::Serialize>(value: &T) -> Result<JsValue, JsError> {
    let json = serde_json::to_string(value).map_err(err)?;
    js_sys::JSON::parse(&json).map_err(|_| JsError::new("internal: JSON round trip failed"))
}
