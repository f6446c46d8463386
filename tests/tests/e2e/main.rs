//! The end-to-end journeys in headless Chromium, one binary (a module per journey). Every test is
//! `#[ignore]`d: `cargo xtask test` runs them with `--ignored --test-threads=1` on WebGPU and on
//! the CPU fallback (`VEIL_E2E_GPU`).

mod adversarial_journey;
mod browser;
mod fine_tune_journey;
mod flow_journey;
mod journeys;
mod known_pairs_journey;
mod labs_journey;
mod owsd_journey;
