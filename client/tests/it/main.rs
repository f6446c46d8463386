//! The client's native integration tests, one binary (a module per scheme). `tests/web.rs` runs
//! in headless Chromium on wasm32.

#![cfg(not(target_arch = "wasm32"))]

mod adversarial;
mod common;
mod flows;
mod layers;
mod owsd;
