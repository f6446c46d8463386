//! # veil-client
//!
//! Veil in the data owner's browser. Keys are generated and kept here, and images are encrypted or
//! classified here; nothing secret is sent anywhere. Modules import downwards only:
//!
//! - [`error`] and [`device`] at the bottom: the one error type, the device choice (WebGPU when
//!   the browser has it, the flex CPU backend otherwise) with asynchronous reads, and the batch
//!   check;
//! - [`context`]: what every scheme shares (device, demo model, the one master key);
//! - one module per scheme, each with one struct holding that scheme's state:
//!   [`flow_rotation`] (with fine-tuning the served flows and the attacker's known-plaintext key
//!   recovery, which takes no key), [`owsd`] and [`adversarial`] (adversarial data encryption);
//! - [`session`]: what a page's worker holds (the context and each scheme's struct), in plain
//!   Rust, so it is testable natively;
//! - `web`: the only `#[wasm_bindgen]` code, one file per scheme, turning errors into `JsError`
//!   and JavaScript objects into typed arguments.

pub mod adversarial;
pub mod context;
pub mod device;
pub mod error;
pub mod flow_rotation;
pub mod owsd;
pub mod session;
#[cfg(target_arch = "wasm32")]
mod web;

pub use context::{Classification, Context};
pub use device::Backend;
pub use error::ClientError;
pub use flow_rotation::FlowRoute;
pub use session::Session;
