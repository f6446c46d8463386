//! The data owner's side in a terminal (crate `veil-cli`, binary `veil`). Everything here may
//! hold a key: it runs on the owner's machine. The untrusted party's code is in `veil-server`,
//! which this crate uses only to run `veil serve` and to read the public built-in models and
//! flows.
//!
//! - [`datasets`]: users' datasets from disk ([`datasets::DataSource`]: the digits, the synthetic
//!   set, MNIST IDX, CIFAR-10 batches, image folders).
//! - [`experiments`]: `veil experiment …`, the papers' experiments on any data source.
//! - [`flows`]: `veil flow train`, flow rotation's public flows.
//! - [`demo`]: `veil train-demo`, the built-in models.
//! - [`factory`]: `veil factory …`, the factory's client over HTTP.
//! - [`rtas`]: `veil party` and `veil rtas demo`, RTAS's parties as processes over TCP.
//! - [`security`]: `veil security-cards`, docs/SECURITY.md from the results files.
//! - [`progress`]: progress of long work, as a bar on a terminal and as lines elsewhere.

pub mod datasets;
pub mod demo;
pub mod experiments;
pub mod factory;
pub mod flows;
pub mod progress;
pub mod rtas;
pub mod security;
