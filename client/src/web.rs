//! The JavaScript boundary: the only `#[wasm_bindgen]` file. Every export returns
//! `Result<_, JsError>` (a rejected promise with the message, never a panic: a panic aborts the
//! wasm instance and leaves the page's promises pending forever).

use std::rc::Rc;

use wasm_bindgen::prelude::*;

use crate::session::Session;

fn err(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// Whether the global scope (window or worker) offers `navigator.gpu`. Uses `js_sys::Reflect`
/// rather than web-sys's `Navigator::gpu`, which needs `--cfg web_sys_unstable_apis`.
pub(crate) fn has_webgpu() -> bool {
    let global = js_sys::global();
    js_sys::Reflect::get(&global, &"navigator".into())
        .ok()
        .filter(|n| !n.is_undefined())
        .and_then(|n| js_sys::Reflect::get(&n, &"gpu".into()).ok())
        .is_some_and(|gpu| !gpu.is_undefined() && !gpu.is_null())
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

    /// Hex SHA-256 of the Haar rotation of `dim` dimensions for class `class` of the loaded key
    /// (or of the public test key when `testKey` is true).
    #[wasm_bindgen(js_name = haarDigest)]
    pub fn haar_digest(&self, dim: usize, class: u32, test_key: bool) -> Result<String, JsError> {
        use veil::haar::HaarRotation;
        use veil::keys::Scheme;
        let key = if test_key {
            veil::testvectors::test_key()
        } else {
            self.inner.key().map_err(err)?
        };
        if dim == 0 || dim > 4096 {
            return Err(JsError::new("the dimension must be between 1 and 4096"));
        }
        let rot = HaarRotation::from_subkey(&key.class_subkey(Scheme::FlowRotation, class), dim);
        Ok(veil::keys::to_hex(&rot.digest()))
    }
}

fn serde_wasm<T: serde::Serialize>(value: &T) -> Result<JsValue, JsError> {
    let json = serde_json::to_string(value).map_err(err)?;
    js_sys::JSON::parse(&json).map_err(|_| JsError::new("internal: JSON round trip failed"))
}
