//! # veil-client
//!
//! Veil in the data owner's browser. Keys are generated and kept here, and images are encrypted or
//! classified here; nothing secret is sent anywhere. Modules import downwards only:
//!
//! - [`error`] and [`device`] at the bottom: the one error type, and the device choice (WebGPU
//!   when the browser has it, the flex CPU backend otherwise) with asynchronous reads;
//! - one module per scheme: [`flows`] (flow rotation) with [`finetune`] (fine-tuning the served
//!   flows on the owner's images) and [`known_plaintext`] (the attacker's key recovery against
//!   the page's own ciphertexts, which takes no key), [`owsd`], and [`adversarial`] (adversarial
//!   data encryption);
//! - [`session`]: what a page's worker holds (device, model, key, each scheme's state) and does,
//!   in plain Rust, so it is testable natively;
//! - `web`: the only `#[wasm_bindgen]` file, a thin layer turning errors into `JsError`.

pub mod adversarial;
pub mod device;
pub mod error;
pub mod finetune;
pub mod flows;
pub mod known_plaintext;
pub mod owsd;
pub mod session;
#[cfg(target_arch = "wasm32")]
mod web;

pub use device::Backend;
pub use error::ClientError;
pub use session::{Classification, FlowRoute, Session};
