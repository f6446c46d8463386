//! The typed `results.json` of `veil experiment known-plaintext` and its markdown report.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::experiments::pct;

/// Everything `veil experiment known-plaintext` measured. Keys are stable: RESULTS.md, SECURITY
/// notes and the tests read them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KnownPlaintextResults {
    /// The command that produced these figures.
    pub command: String,
    /// The data source.
    pub data: String,
    /// Where the (public) flows came from.
    pub flows: String,
    /// Image shape, `C×H×W`.
    pub shape: String,
    /// The rotation's dimension m (= C·H·W).
    pub dim: usize,
    /// The attacked classes (each class has its own key-derived rotation).
    pub classes: Vec<usize>,
    /// Ciphertexts per class the attacker did not know, decrypted to measure the attack.
    pub victims_per_class: usize,
    /// A quick run.
    pub quick: bool,
    /// Per encryption setting (`algorithm-1`, `veil`): the attack against the number of pairs.
    pub settings: Vec<SettingCurve>,
    /// Pair counts asked for but not measured: the attacked classes do not hold that many
    /// images beside the victims, or the run capped them (`--max-pairs`).
    pub not_measured: Vec<usize>,
    /// Wall time of the run in seconds.
    pub seconds: f64,
}

/// The attack under one encryption setting.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SettingCurve {
    /// `algorithm-1` (τ = 1, no cover classes) or `veil` (τ and cover classes).
    pub name: String,
    /// τ, public in the manifest.
    pub temperature: f32,
    /// Whether cover classes hide which flow decoded the ciphertexts.
    pub cover_classes: bool,
    /// Images the flows could not encrypt (they are never shared, so never known or attacked).
    pub unencryptable: usize,
    /// The attacker who knows no pair decodes the prior's mean (latent 0) for every ciphertext:
    /// the floor every other PSNR is measured against.
    pub no_pairs: Point,
    /// One point per number of known pairs, ascending.
    pub curve: Vec<Point>,
}

/// The attack with `known_pairs` pairs per class, averaged over the attacked classes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Point {
    /// Known (image, ciphertext) pairs per class.
    pub known_pairs: usize,
    /// Share of the attacked classes whose decoding flow the attacker identified (always 1
    /// without cover classes: it is the class's own, public flow).
    pub decoder_found: f64,
    /// The dimensions the pairs determine (mean over classes): min(n, m).
    pub rank: f64,
    /// Mean share of a victim latent's energy in the recovered span.
    pub captured_energy: f64,
    /// Largest entry error of the recovered rotation against the true one (when the pairs span
    /// all m dimensions, otherwise absent), worst over classes.
    pub rotation_max_error: Option<f64>,
    /// `‖Â − A‖_F / ‖A‖_F` (when the pairs span all m dimensions), worst over classes.
    pub rotation_relative_error: Option<f64>,
    /// PSNR of the decrypted victims against the originals, mean and minimum (dB; 100 = exact).
    pub psnr_mean: f64,
    /// See `psnr_mean`.
    pub psnr_min: f64,
    /// Share of victims decrypted to exactly their original pixels.
    pub exact: f64,
}

/// The smallest number of pairs at which every victim of every attacked class decrypted exactly.
pub fn pairs_that_break(curve: &[Point]) -> Option<usize> {
    curve.iter().find(|p| p.exact >= 1.0).map(|p| p.known_pairs)
}

/// The markdown report.
pub fn report(r: &KnownPlaintextResults) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Known-plaintext key recovery against flow rotation\n\nCommand: `{}`\n\n\
         Data {} ({}, m = {} dimensions), public flows `{}`. The attacker knows n (image, \
         ciphertext) pairs of one class and the public flows and settings, fits the class's \
         rotation by orthogonal Procrustes, and decrypts {} other ciphertexts of that class. \
         Classes attacked: {:?} (each has its own rotation). Wall time {:.0} s.\n\n\
         [figure.png](figure.png): the first class's first victims, then their decryptions by \
         the attacker at each n, for Algorithm 1 and then Veil's settings.\n",
        r.command, r.data, r.shape, r.dim, r.flows, r.victims_per_class, r.classes, r.seconds
    );
    for set in &r.settings {
        let _ = writeln!(
            s,
            "## {} (τ = {}, cover classes {})\n",
            set.name,
            set.temperature,
            if set.cover_classes { "on" } else { "off" }
        );
        let _ = writeln!(
            s,
            "| known pairs n | decoder found | rank | energy in span | A: max entry error | A: relative error | PSNR mean | PSNR min | exact |\n|---|---|---|---|---|---|---|---|---|"
        );
        for p in std::iter::once(&set.no_pairs).chain(&set.curve) {
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} | {} | {} | {} | {:.1} dB | {:.1} dB | {} |",
                p.known_pairs,
                pct(p.decoder_found),
                p.rank,
                pct(p.captured_energy),
                p.rotation_max_error
                    .map_or("—".to_owned(), |e| format!("{e:.1e}")),
                p.rotation_relative_error
                    .map_or("—".to_owned(), |e| format!("{e:.1e}")),
                p.psnr_mean,
                p.psnr_min,
                pct(p.exact)
            );
        }
        let verdict = match pairs_that_break(&set.curve) {
            Some(n) => format!(
                "{n} known pairs of a class decrypt every other ciphertext of that class exactly."
            ),
            None => "No measured n decrypted every victim exactly.".to_owned(),
        };
        let _ = writeln!(
            s,
            "\n{verdict} {} images could not be encrypted.\n",
            set.unencryptable
        );
    }
    if !r.not_measured.is_empty() {
        let _ = writeln!(
            s,
            "Not measured (too few images per class, or above --max-pairs): n = {:?}.",
            r.not_measured
        );
    }
    s
}
