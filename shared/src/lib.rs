//! # Veil core
//!
//! Everything secret and everything numerical in Veil, written once for any burn
//! [`Device`](burn::tensor::Device) and run unchanged natively (the `veil` server and CLI) and in
//! the browser (the wasm client, on WebGPU or the CPU). This crate does no IO: it takes bytes and
//! returns values; the binaries read files and talk to networks.
//!
//! - [`keys`], [`keyfile`]: master keys, HKDF subkeys, fingerprints, passphrase-wrapped key files.
//! - [`haar`]: Haar-random orthogonal matrices from a key, bit-identical on every platform.
//! - [`data`]: dataset decoders (UCI digits, MNIST IDX, CIFAR-10, image folders), splits, and a
//!   synthetic generator.
//! - [`container`]: the dataset container (safetensors) that carries images to the ML factory.
//! - [`model`], [`train`]: the small CNN and its (resumable) training loop.
//! - [`glow`], [`flow_train`], [`flow_rotation`], [`gaussianity`]: flow rotation (scheme 1).
//! - [`owsd`]: one-way scrambling by deconvolution (scheme 2): scramble keys, the internal
//!   inference network, key budgets; [`encoder`]: the owner's encoders, imported from
//!   safetensors (burn's or PyTorch's layout).
//! - [`leakage`]: gradient-leakage attacks (DLG, iDLG, Inverting Gradients, analytic) and the
//!   attacked networks' differentiable backward pass.

pub mod container;
pub mod data;
pub mod encoder;
pub mod flow_rotation;
pub mod flow_train;
pub mod gaussianity;
pub mod glow;
pub mod haar;
pub mod keyfile;
pub mod keys;
pub mod leakage;
pub mod model;
pub mod owsd;
pub mod resnet;
pub mod testvectors;
pub mod train;

pub use burn;
