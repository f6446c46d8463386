//! Attacks that measure what each scheme protects. Every security claim in Veil's pages and docs
//! is backed by one of these, run by an experiment.
//!
//! - [`leakage`]: gradient leakage (DLG, iDLG, Inverting Gradients, the analytic first-layer
//!   attack) against plain and encrypted training.
//! - [`owsd_inverter`]: the autoencoder that inverts OWSD's scrambles from known pairs (§5.3).

pub mod leakage;
pub mod owsd_inverter;
