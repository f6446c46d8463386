//! The typed `results.json` of `veil experiment leakage` and the report rendered from it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use veil::attacks::leakage::{AttackedArch, Method};

use super::{CaseSummary, LeakageArgs};

/// `results.json` of `veil experiment leakage`: its keys are stable (docs/RESULTS.md quotes
/// them), and the report is rendered from this struct, so a renamed figure fails to compile
/// instead of printing "—".
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeakageResults {
    /// What ran.
    pub setup: LeakageSetup,
    /// iDLG on each case, with retries.
    pub leak: LeakCases,
    /// Each method once on the first images of the plain case (`dlg`, `idlg`,
    /// `inverting-gradients`).
    pub methods: BTreeMap<String, CaseSummary>,
    /// The analytic first-layer attack on an MLP, every image.
    pub analytic_mlp: AnalyticSummary,
    /// Classifiers trained on true and leaked images (`true_plaintext`, `leaked_plain`,
    /// `true_ciphertext_a`, `leaked_encrypted_a`, `true_ciphertext_b`, `leaked_encrypted_b`).
    pub classifiers: BTreeMap<String, TestAccuracies>,
    /// Wall times, seconds.
    pub timing_s: LeakageTiming,
}

/// What `veil experiment leakage` ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeakageSetup {
    pub data: String,
    pub images: usize,
    pub test_images: usize,
    pub arch: AttackedArch,
    pub attacked_params: usize,
    pub method: String,
    pub iterations: usize,
    pub restarts: usize,
    pub learning_rate: f64,
    pub seed: u64,
    pub quick: bool,
    pub flows: String,
    pub key_fingerprint: String,
    pub classifier: String,
    pub classifier_epochs: usize,
}

/// iDLG on plain training and on both encrypted routes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeakCases {
    pub plain: CaseSummary,
    pub encrypted_a: CaseSummary,
    pub encrypted_b: CaseSummary,
}

/// The analytic attack's figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AnalyticSummary {
    pub images: usize,
    pub mean_psnr: f64,
    pub min_psnr: f64,
    pub label_accuracy: f64,
}

/// A classifier's accuracy on the three test sets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestAccuracies {
    pub test_original: f64,
    pub test_encrypted_a: f64,
    pub test_encrypted_b: f64,
}

/// Wall times of the run's parts, seconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeakageTiming {
    pub encrypt: f64,
    pub leak: f64,
    pub compare: f64,
    pub classifiers: f64,
    pub total: f64,
    pub idlg_images_per_s: f64,
}

pub(super) fn report(r: &LeakageResults, args: &LeakageArgs) -> String {
    let pct = crate::experiments::pct;
    let setup = &r.setup;
    let mut s = format!(
        "# Gradient leakage on {}\n\nCommand: `veil experiment leakage --data {} --out {}{}`\n\n\
         {} training images leaked per case from single-image gradients of {} ({} parameters, sigmoid, \
         no strides, weights uniform in ±0.5) with iDLG, {} iterations, up to {} retries (each doubling \
         the iterations); encrypted cases use the flows {} and the experiment key {}.\n\n",
        setup.data,
        args.common.data,
        args.common.out.display(),
        if args.common.quick { " --quick" } else { "" },
        setup.images,
        setup.arch.name(),
        setup.attacked_params,
        setup.iterations,
        setup.restarts,
        setup.flows,
        setup.key_fingerprint,
    );
    s += "## What the gradients leak\n\n| Client trained on | PSNR vs training input | PSNR vs plaintext | input's own PSNR vs plaintext | SSIM vs input | label accuracy | ≥ 25 dB |\n|---|---|---|---|---|---|---|\n";
    for (k, name, c) in [
        ("plain", "plaintext images", &r.leak.plain),
        (
            "encrypted_a",
            "per-class ciphertexts (route a)",
            &r.leak.encrypted_a,
        ),
        (
            "encrypted_b",
            "class-agnostic ciphertexts (route b)",
            &r.leak.encrypted_b,
        ),
    ] {
        s += &format!(
            "| {name} | {:.1} dB | {:.1} dB | {} | {:.3} | {} | {} |\n",
            c.mean_psnr_vs_input,
            c.mean_psnr_vs_plaintext,
            if k == "plain" {
                "—".to_owned()
            } else {
                format!("{:.1} dB", c.mean_input_psnr_vs_plaintext)
            },
            c.mean_ssim_vs_input,
            pct(c.label_accuracy),
            pct(c.share_recovered_25db),
        );
    }
    s += "\nPSNR is capped at 100 dB for exact recoveries, so means above about 50 dB mostly say \"exact\".\n\n";
    s += "## Classifiers trained on leaked images (Tables 3-4 in kind)\n\n| Trained on | original test | encrypted test, route (a) | encrypted test, route (b) |\n|---|---|---|---|\n";
    for (k, name) in [
        ("true_plaintext", "the true plaintexts (reference)"),
        ("leaked_plain", "images leaked from plain training"),
        ("true_ciphertext_a", "the true ciphertexts (a) (reference)"),
        (
            "leaked_encrypted_a",
            "images leaked from encrypted training (a)",
        ),
        ("true_ciphertext_b", "the true ciphertexts (b) (reference)"),
        (
            "leaked_encrypted_b",
            "images leaked from encrypted training (b)",
        ),
    ] {
        let Some(c) = r.classifiers.get(k) else {
            continue;
        };
        s += &format!(
            "| {name} | {} | {} | {} |\n",
            pct(c.test_original),
            pct(c.test_encrypted_a),
            pct(c.test_encrypted_b)
        );
    }
    s += "\n## Methods (plain training, first images, one run each, no retries)\n\n| Method | mean PSNR | median PSNR | SSIM | label accuracy | converged |\n|---|---|---|---|---|---|\n";
    for m in Method::ALL {
        let Some(c) = r.methods.get(m.name()) else {
            continue;
        };
        s += &format!(
            "| {} | {:.1} dB | {:.1} dB | {:.3} | {} | {} |\n",
            m.name(),
            c.mean_psnr_vs_input,
            c.median_psnr_vs_input,
            c.mean_ssim_vs_input,
            pct(c.label_accuracy),
            pct(c.converged)
        );
    }
    let a = &r.analytic_mlp;
    s += &format!(
        "| analytic, MLP first layer (all {} images) | {:.1} dB | min {:.1} dB | — | {} | — |\n\n",
        a.images,
        a.mean_psnr,
        a.min_psnr,
        pct(a.label_accuracy)
    );
    s += "## Figure\n\n![leaked images](figure.png)\n\nRows: plaintexts; leaked from plain training; per-class ciphertexts (a); leaked from them; class-agnostic ciphertexts (b); leaked from them.\n";
    s
}
