//! # Veil core
//!
//! Everything secret and everything numerical in Veil, written once for any burn
//! [`Device`](burn::tensor::Device) and run unchanged natively (the `veil` CLI and the factory)
//! and in the browser (the wasm client, on WebGPU or the CPU). This crate does no IO: it takes
//! bytes and returns values; the binaries read files and talk to networks.
//!
//! Grouped by concern:
//!
//! - [`crypto`]: master keys, HKDF subkeys, fingerprints, passphrase-wrapped key files, Haar
//!   rotations from a key, pinned test vectors.
//! - [`data`]: dataset decoders (UCI digits, MNIST IDX, CIFAR-10, image folders), splits, a
//!   synthetic generator, and the dataset container that carries images to the ML factory.
//! - [`nn`]: the small CNN and its model card, the small ResNet, safe weight loading, the
//!   classifier training loop and its metrics.
//! - [`flow`]: Glow, its training, and the Gaussianity probe.
//! - [`schemes`]: one folder per scheme (flow rotation, OWSD).
//! - [`attacks`]: what measures each scheme's claims (gradient leakage, …).

pub mod attacks;
pub mod crypto;
pub mod data;
pub mod flow;
pub mod nn;
pub mod schemes;

pub use burn;
