//! Exports for the test pages and the benchmark page: how the module was built, and pinned
//! rotation digests.

use wasm_bindgen::prelude::*;

use super::{Veil, err, to_js};

#[wasm_bindgen]
impl Veil {
    /// How this module was built: `{simd128}` (whether it uses WebAssembly SIMD).
    #[wasm_bindgen(js_name = buildInfo)]
    pub fn build_info(&self) -> Result<JsValue, JsError> {
        to_js(&serde_json::json!({ "simd128": cfg!(target_feature = "simd128") }))
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
