//! # veil-client
//!
//! Veil in the data owner's browser. Keys are generated and kept here, and images are encrypted or
//! classified here; nothing secret is sent anywhere. The crate follows burn's
//! `mnist-inference-web` split:
//!
//! - [`state`]: device choice (WebGPU when the browser has it, the flex CPU backend otherwise)
//!   and the shipped weights;
//! - [`session`]: what a page's worker holds (device, model, key) and does, in plain Rust, so it
//!   is testable natively;
//! - `web`: the only `#[wasm_bindgen]` file, a thin layer turning errors into `JsError`.

pub mod finetune;
pub mod flows;
pub mod owsd;
pub mod session;
pub mod state;
#[cfg(target_arch = "wasm32")]
mod web;

pub use session::{Classification, ClientError, FlowRoute, Session};
pub use state::Backend;
