//! Adversarial data encryption's exports: setting up the encryptor, encrypting, and training a
//! base model.

use std::rc::Rc;

use wasm_bindgen::prelude::*;

use super::{Veil, err, from_js, options_or_default, to_js, with_pixels};

#[wasm_bindgen]
impl Veil {
    /// Sets up adversarial data encryption under the loaded key. `setup` is `{shape:
    /// {channels, height, width}, classes: [names], epsilon, iterations, method: null |
    /// "horizontal-concat" | "mixup-concat"}`; `base` the owner's base model (burnpack bytes of a
    /// SmallCnn for that shape and those classes, as `adversarialBaseModel` gives, or a
    /// safetensors SmallCnn with its classifier head), or `undefined` for the demo digits model.
    /// Returns `{fingerprint, setup, pgd, demo_base}`.
    #[wasm_bindgen(js_name = adversarialBegin)]
    pub fn adversarial_begin(
        &self,
        setup: JsValue,
        base: Option<Vec<u8>>,
    ) -> Result<JsValue, JsError> {
        let setup = from_js(setup, "the adversarial setup")?;
        to_js(
            &self
                .inner
                .adversarial()
                .begin(setup, base.as_deref())
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
            .adversarial()
            .encrypt(&pixels, &labels)
            .await
            .map_err(err)?;
        with_pixels(to_js(&out)?, &out.pixels)
    }

    /// Plans training a base model for adversarial encryption on the owner's labelled images
    /// (`[N, C, H, W]` in [0, 1]) of `shape` (`{channels, height, width}`), with `classes` names
    /// and options `{epochs, batch_size, learning_rate, validation, seed}` (missing ones take
    /// defaults). Returns the progress object of [`adversarialTrainRun`].
    #[wasm_bindgen(js_name = adversarialTrainBegin)]
    pub fn adversarial_train_begin(
        &self,
        pixels: Vec<f32>,
        labels: Vec<u32>,
        shape: JsValue,
        classes: Vec<String>,
        options: JsValue,
    ) -> Result<JsValue, JsError> {
        let shape = from_js(shape, "the images' shape")?;
        let options = options_or_default(options, "the training options")?;
        to_js(
            &self
                .inner
                .adversarial()
                .train_begin(pixels, labels, shape, classes, options)
                .map_err(err)?,
        )
    }

    /// Runs up to `max_steps` training steps. Returns `{epoch, epochs, done_steps, total_steps,
    /// loss, accuracy, train_images, validation_images, validation_accuracy, finished}`.
    #[wasm_bindgen(js_name = adversarialTrainRun)]
    pub async fn adversarial_train_run(&self, max_steps: usize) -> Result<JsValue, JsError> {
        let session = Rc::clone(&self.inner);
        let progress = session
            .adversarial()
            .train_run(max_steps)
            .await
            .map_err(err)?;
        to_js(&progress)
    }

    /// Drops the base model's training run.
    #[wasm_bindgen(js_name = adversarialTrainCancel)]
    pub fn adversarial_train_cancel(&self) {
        self.inner.adversarial().train_cancel();
    }

    /// The trained base model as burnpack bytes (for `adversarialBegin`, or for the owner to keep).
    #[wasm_bindgen(js_name = adversarialBaseModel)]
    pub async fn adversarial_base_model(&self) -> Result<Vec<u8>, JsError> {
        let session = Rc::clone(&self.inner);
        session.adversarial().base_model().await.map_err(err)
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
            .adversarial()
            .container(encrypted, labels)
            .map_err(err)
    }
}
