//! RTAS: private training and inference by random transformations and arithmetic sharing
//! ("Private Machine Learning by Random Transformations", §4).
//!
//! - [`ring`]: fixed-point values in Z₂⁶⁴, additive shares ⟨x⟩₀ + ⟨x⟩₁ = x, share-local truncation
//!   (with its error bound).
//! - [`party`]: the share holders P0 and P1 (Beaver products for element-wise and matrix products,
//!   §4.1; the permuted non-linear protocol, §4.2.1), the [`Dealer`] of triples and the [`Helper`].
//! - [`network`]: logistic regression and the paper's CNN, written once over [`Arith`], so the
//!   plaintext reference and the protocol run the same code; RTAS-fast's upper layers (§4.2.2).
//! - [`wire`]: the framed, versioned messages, the [`Channel`] that checks them and counts bytes,
//!   and the [`Transport`] a caller plugs in. This crate does no IO: [`run::simulate`] connects
//!   the four parties over in-process channels; the `veil` binary connects them over TCP.
//!
//! What the permutation protects is measured, not assumed: a permutation hides the order of the
//! helper's vector, not its multiset (`veil::attacks::rtas_helper`).

pub mod network;
pub mod party;
pub mod ring;
pub mod run;
pub mod wire;

#[cfg(test)]
mod tests;

pub use network::{Arith, LayerKind, LayerSpec, NetworkError, NetworkSpec, Params, Plain};
pub use party::{Dealer, Helper, HelperReport, HelperView, Party, PartyStats};
pub use ring::{FixedPoint, Matrix, PlainMatrix, RingMatrix};
pub use run::{Mode, RunConfig, Simulation, Sizes, run_holder, simulate};
pub use wire::{Activation, Channel, Message, Role, RtasError, RunId, Traffic, Transport};
