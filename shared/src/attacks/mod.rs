//! Attacks that measure what each scheme protects. Every security claim in Veil's pages and docs
//! is backed by one of these, run by an experiment.
//!
//! - [`adversarial`]: correspondence recovery (paper §3.4, §4.3) and a factory that fights
//!   back (adversarial training, pre-processing) against adversarial data encryption.
//! - [`black_box`]: the survey's black-box attacks on a trained model (membership inference by
//!   the loss threshold, model extraction by querying).
//! - [`ciphertext_only`]: recovering flow rotation's rotation from ciphertexts and the data
//!   distribution alone, by moment matching (the paper's Theorem 1 made concrete).
//! - [`known_plaintext`]: recovering flow rotation's secret rotation from known
//!   (image, ciphertext) pairs by orthogonal Procrustes.
//! - [`leakage`]: gradient leakage (DLG, iDLG, Inverting Gradients, the analytic first-layer
//!   attack) against plain and encrypted training.
//! - [`model_inversion`]: a class's typical input from a classify route's probabilities
//!   (Fredrikson et al.'s MI-Face with a query-estimated gradient).
//! - [`owsd_generator`]: recovering OWSD's key function by fitting a generator of the public
//!   architecture to (embedding, scramble) pairs.
//! - [`owsd_inverter`]: the autoencoder that inverts OWSD's scrambles from known pairs (§5.3).
//! - [`rtas_helper`]: what RTAS's helper learns from its permuted views (their multiset) and
//!   RTAS-fast's helper from the first layer's output.

pub mod adversarial;
pub mod black_box;
pub mod ciphertext_only;
pub mod known_plaintext;
pub mod leakage;
pub mod model_inversion;
pub mod owsd_generator;
pub mod owsd_inverter;
pub mod rtas_helper;
