//! The typed `results.json` of `veil experiment ciphertext-only` and its markdown report.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::experiments::pct;

/// Everything `veil experiment ciphertext-only` measured. Keys are stable.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CiphertextOnlyResults {
    /// The command that produced these figures.
    pub command: String,
    /// The data source.
    pub data: String,
    /// Image shape, `C×H×W`.
    pub shape: String,
    /// The rotation's dimension m.
    pub dim: usize,
    /// The attacked classes.
    pub classes: Vec<usize>,
    /// Per class: the attacker's own images of the domain (never encrypted).
    pub data_per_class: usize,
    /// Per class: the owner's encrypted images the attacker sees as ciphertexts only.
    pub ciphertexts_per_class: usize,
    /// A quick run.
    pub quick: bool,
    /// One entry per family of flows (flow quality).
    pub flows: Vec<FlowQuality>,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// The attack against one family of flows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowQuality {
    /// Where the flows came from.
    pub flows: String,
    /// Mean over the attacked classes of the class flow's held-out bits/dim (from its manifest),
    /// when recorded.
    pub bits_per_dim: Option<f64>,
    /// Mean over the attacked classes of the sliced Wasserstein-1 distance of the attacker's data
    /// latents to N(0, I) (`veil::flow::gaussianity`): how far the flow is from Theorem 1's ideal.
    pub sliced_w1: f64,
    /// The same distance for a true Gaussian sample of that size (the floor of the estimate).
    pub sliced_w1_floor: f64,
    /// Per setting.
    pub settings: Vec<SettingResult>,
}

/// The attack under one encryption setting, averaged over the attacked classes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SettingResult {
    /// `algorithm-1` or `veil`.
    pub name: String,
    /// Share of classes whose decoding flow the attacker identified from latent norms.
    pub decoder_found: f64,
    /// `‖Â − A‖_F / ‖A‖_F`, mean over classes (≈ 1.41 for a random rotation, 0 for the key).
    pub relative_error: f64,
    /// Directions whose eigenvalue stood apart from its neighbours (mean over classes): the
    /// attacker decrypts along these and puts the rest at the prior's mean.
    pub confident_directions: f64,
    /// The same for a random rotation (what a guess gives).
    pub random_relative_error: f64,
    /// PSNR of the attacker's decryptions of the ciphertexts (along the confident directions)
    /// against their originals (dB).
    pub psnr: f64,
    /// PSNR of the prior's mean image against the same originals: what no key at all gives.
    pub psnr_prior_mean: f64,
    /// PSNR of the mean of the attacker's own images of the class: what knowing the domain
    /// gives without any ciphertext. The attack learned something from the ciphertexts only
    /// where it beats this.
    pub psnr_domain_mean: f64,
    /// PSNR of decrypting with a random rotation.
    pub psnr_random_rotation: f64,
    /// Images the flows could not encrypt (left out).
    pub unencryptable: usize,
}

/// The markdown report.
pub fn report(r: &CiphertextOnlyResults) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Ciphertext-only key recovery against flow rotation (moment matching)\n\nCommand: `{}`\n\n\
         Data {} ({}, m = {}). Per attacked class ({:?}): the attacker's own {} images of the \
         class (never encrypted) and {} ciphertexts of other images. It matches the second \
         moments of the two sets of latents (eigenvectors) and their first and third moments \
         (signs), and decrypts the ciphertexts with the rotation it found. Wall time {:.0} s.\n",
        r.command,
        r.data,
        r.shape,
        r.dim,
        r.classes,
        r.data_per_class,
        r.ciphertexts_per_class,
        r.seconds
    );
    let _ = writeln!(
        s,
        "| flows | bits/dim | sliced W1 (floor) | setting | decoder found | ‖Â−A‖/‖A‖ (random) | confident directions | PSNR attack | PSNR domain mean | PSNR prior mean | PSNR random rotation |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for q in &r.flows {
        for set in &q.settings {
            let _ = writeln!(
                s,
                "| `{}` | {} | {:.3} ({:.3}) | {} | {} | {:.3} ({:.3}) | {:.1} of {} | {:.1} dB | {:.1} dB | {:.1} dB | {:.1} dB |",
                q.flows,
                q.bits_per_dim.map_or("—".to_owned(), |b| format!("{b:.2}")),
                q.sliced_w1,
                q.sliced_w1_floor,
                set.name,
                pct(set.decoder_found),
                set.relative_error,
                set.random_relative_error,
                set.confident_directions,
                r.dim,
                set.psnr,
                set.psnr_domain_mean,
                set.psnr_prior_mean,
                set.psnr_random_rotation
            );
        }
    }
    let _ = writeln!(
        s,
        "\nThe domain mean is what the attacker's own images give without any ciphertext; where \
         the attack's PSNR is not above it, the key held against this attacker. Theorem 1 bounds the attacker by the latents' distance to N(0, I); the \
         sliced W1 column estimates that distance."
    );
    s
}
