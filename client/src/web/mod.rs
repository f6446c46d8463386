//! The JavaScript boundary: the only `#[wasm_bindgen]` code, one file per scheme (each adds an
//! `impl Veil` block) and this one for what they share (the session, the key, the demo model,
//! containers). Every export returns `Result<_, JsError>` (a rejected promise with the message,
//! never a panic: a panic aborts the wasm instance and leaves the page's promises pending
//! forever). Arguments that are objects arrive as JavaScript objects and are deserialised into
//! the client's typed structs here; answers go back as plain objects, with pixel buffers as typed
//! arrays.

mod adversarial;
mod diagnostics;
mod flow_rotation;
mod owsd;

use std::rc::Rc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use wasm_bindgen::prelude::*;

use crate::session::Session;

fn err(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// A JavaScript object as the typed argument `T`; the error names `what` and the field.
///
/// serde-wasm-bindgen reads the object into a `serde_json::Value`, and serde reads that into `T`.
/// Reading straight into a struct would skip the properties `T` does not know, so a misspelt
/// option would be ignored without a word; this way `deny_unknown_fields` refuses it by name. A
/// property set to `undefined` or `null` counts as not given, as `JSON.stringify` drops
/// `undefined`.
fn from_js<T: DeserializeOwned>(value: JsValue, what: &str) -> Result<T, JsError> {
    let mut tree: serde_json::Value =
        serde_wasm_bindgen::from_value(value).map_err(|e| JsError::new(&format!("{what}: {e}")))?;
    drop_nulls(&mut tree);
    serde_json::from_value(tree).map_err(|e| JsError::new(&format!("{what}: {e}")))
}

/// Removes the properties that are `null` (or were `undefined`), at every depth.
fn drop_nulls(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(drop_nulls);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// [`from_js`] for options whose missing fields (or a missing object) take their defaults.
fn options_or_default<T: DeserializeOwned + Default>(
    value: JsValue,
    what: &str,
) -> Result<T, JsError> {
    if value.is_undefined() || value.is_null() {
        Ok(T::default())
    } else {
        from_js(value, what)
    }
}

/// `value` as a plain JavaScript object (maps as objects, `None` as `null`, as JSON would give).
fn to_js<T: Serialize + ?Sized>(value: &T) -> Result<JsValue, JsError> {
    value
        .serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .map_err(err)
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
        to_js(self.inner.backend())
    }

    /// The demo model's card (architecture, classes, test accuracy, reference logits).
    #[wasm_bindgen(js_name = modelCard)]
    pub fn model_card(&self) -> Result<JsValue, JsError> {
        to_js(self.inner.model_card())
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
        to_js(&result)
    }

    /// Logits of a batch of images (`[B, C, H, W]` values), row-major `[B, K]`.
    pub async fn logits(&self, pixels: Vec<f32>) -> Result<Vec<f32>, JsError> {
        let session = Rc::clone(&self.inner);
        session.logits(&pixels).await.map_err(err)
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
        bins: Option<usize>,
    ) -> Result<Vec<f32>, JsError> {
        let files = named_buffers(names, &files)?;
        self.inner
            .decode_images_as(
                &files,
                veil::data::ImageShape::new(channels, height, width),
                bins,
            )
            .map_err(err)
    }

    /// Reads a dataset container: `{summary, pixels: Float32Array, labels: Uint32Array}`.
    #[wasm_bindgen(js_name = readContainer)]
    pub fn read_container(&self, bytes: Vec<u8>) -> Result<JsValue, JsError> {
        let (summary, pixels, labels) = self.inner.read_container(&bytes).map_err(err)?;
        object([
            ("summary", to_js(&summary)?),
            (
                "pixels",
                js_sys::Float32Array::from(pixels.as_slice()).into(),
            ),
            (
                "labels",
                js_sys::Uint32Array::from(labels.as_slice()).into(),
            ),
        ])
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
    to_js(&Digit {
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
    object([
        (
            "pixels",
            js_sys::Float32Array::from(&data.images[..n * data.shape.len()]).into(),
        ),
        (
            "labels",
            js_sys::Uint32Array::from(&data.labels[..n]).into(),
        ),
    ])
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
    set_field(&value, "pixels", &js_sys::Float32Array::from(pixels).into())?;
    Ok(value)
}

/// A plain object with these properties: the answers that carry typed arrays (pixels, labels,
/// files), which serde would copy element by element.
fn object<const N: usize>(fields: [(&str, JsValue); N]) -> Result<JsValue, JsError> {
    let obj: JsValue = js_sys::Object::new().into();
    for (key, value) in fields {
        set_field(&obj, key, &value)?;
    }
    Ok(obj)
}

/// Sets one property of an answer object.
fn set_field(obj: &JsValue, key: &str, value: &JsValue) -> Result<(), JsError> {
    js_sys::Reflect::set(obj, &key.into(), value)
        .map(|_| ())
        .map_err(|_| JsError::new("internal: cannot build the answer"))
}
