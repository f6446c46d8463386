//! The typed `results.json` of `veil experiment flow` and the report rendered from it.

use std::collections::BTreeMap;

use crate::experiments::baseline_failed;
use serde::{Deserialize, Serialize};
use veil::flow::gaussianity::GaussianityReport;
use veil::schemes::flow_rotation::EncryptionSettings;

/// `results.json` of `veil experiment flow`: its keys are stable (docs/RESULTS.md quotes them),
/// and the report is rendered from this struct, so a renamed figure fails to compile instead of
/// printing "—".
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowResults {
    pub experiment: String,
    pub command: String,
    pub data: String,
    /// `[C, H, W]`.
    pub shape: [usize; 3],
    pub classes: usize,
    pub train_images: usize,
    pub test_images: usize,
    pub seed: u64,
    pub quick: bool,
    pub flow: FlowSummary,
    /// Veil's encryption settings (τ, cover classes) run beside Algorithm 1.
    pub veil_settings: EncryptionSettings,
    /// The experiment key's cover permutation π.
    pub cover_permutation: Vec<usize>,
    /// Table 1 with Algorithm 1, by architecture (`cnn`, `resnet`).
    pub table1: BTreeMap<String, Table1Row>,
    /// Table 1 with Veil's settings.
    pub table1_veil: BTreeMap<String, Table1Row>,
    /// Route (d), label-free: a perceptron on the public flow's latents `g(c)` of route (b)'s
    /// ciphertexts, by setting (`algorithm_1`, `veil`).
    pub route_d: BTreeMap<String, LatentRoute>,
    /// enc/enc (route a) ÷ orig/orig, by architecture; `null` where the baseline failed.
    pub integrity_ratio: BTreeMap<String, Option<f64>>,
    /// The same with Veil's settings.
    pub integrity_ratio_veil: BTreeMap<String, Option<f64>>,
    /// Which images each setting could encrypt (every ciphertext is decrypted and compared),
    /// by setting (`algorithm_1`, `veil`). Images that do not round-trip are left out of the
    /// figures and listed by index in `encryption-failures.json`.
    pub encryption: BTreeMap<String, EncryptionReport>,
    pub table2_bits_per_dim: Table2,
    pub temperature_sweep: Vec<SweepRow>,
    pub gaussianity: GaussianitySummary,
    pub timing_s: FlowTiming,
}

/// Route (d) of one setting: the factory maps each class-agnostic ciphertext through the public
/// flow, `g(c) = τ·A·g(s)`, and trains a perceptron on those vectors. No label is needed at
/// test time. The owner encrypts `train_copies` jittered copies of each training image beside
/// it, and (for `*_copies`) `test_copies` jittered copies of each test image, whose
/// probabilities are averaged (`veil::nn::latent::OWNER_JITTER_COPIES`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatentRoute {
    /// The same perceptron trained and tested on the latents `g(s)` of the original images: the
    /// ceiling of route (d).
    pub orig_orig: f64,
    /// The ceiling with the test-time copies (absent in runs before the copies).
    #[serde(default)]
    pub orig_orig_copies: Option<f64>,
    /// Trained and tested on `g(c)` of ciphertexts (route d), one query per test image.
    pub enc_enc: f64,
    /// Route (d) with the test-time copies: `1 + test_copies` queries per test image.
    #[serde(default)]
    pub enc_enc_copies: Option<f64>,
    /// Trained on `g(c)`, tested on `g(s)` of originals (specificity: low is good).
    pub enc_orig: f64,
    /// Jittered copies of each training image the owner encrypted (0 before the copies).
    #[serde(default)]
    pub train_copies: usize,
    /// Jittered copies of each test image for `*_copies`.
    #[serde(default)]
    pub test_copies: usize,
}

/// Verified encryption of the four sets of one setting.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncryptionReport {
    pub per_class_train: EncryptionCounts,
    pub per_class_test: EncryptionCounts,
    pub agnostic_train: EncryptionCounts,
    pub agnostic_test: EncryptionCounts,
}

impl EncryptionReport {
    /// The smallest encryptable fraction of the four sets.
    pub fn worst_fraction(&self) -> f64 {
        [
            &self.per_class_train,
            &self.per_class_test,
            &self.agnostic_train,
            &self.agnostic_test,
        ]
        .iter()
        .map(|c| c.encryptable_fraction)
        .fold(1.0, f64::min)
    }
}

/// How many images of one set encrypted and round-tripped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncryptionCounts {
    pub images: usize,
    pub encryptable_fraction: f64,
    /// The inverse flow overflowed (NaN or infinite ciphertext).
    pub non_finite: usize,
    /// Finite, but decrypts to other pixels.
    pub no_round_trip: usize,
}

/// One image that could not be encrypted (`encryption-failures.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EncryptionFailureRow {
    /// `algorithm_1`, `veil`, or `tau_<τ>` for the sweep.
    pub setting: String,
    /// `per_class` (route a) or `agnostic` (route b).
    pub route: String,
    /// `train` or `test`.
    pub split: String,
    /// The image's index in its split.
    pub index: usize,
    pub label: u32,
    #[serde(flatten)]
    pub failure: veil::schemes::flow_rotation::EncryptFailure,
}

/// How each class's flow began.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassFlowInit {
    /// A data-dependent initialisation on the class's images (the paper's way).
    #[default]
    Fresh,
    /// The class-agnostic flow's weights, fine-tuned on the class's images.
    FineTunedFromAgnostic,
}

/// The flows' configuration and fit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowSummary {
    pub levels: usize,
    pub steps: usize,
    pub hidden: usize,
    pub epochs: usize,
    /// Quantisation bins of the data.
    pub data_levels: usize,
    pub alpha: f64,
    /// How the per-class flows began (absent in runs before fine-tuning: `fresh`).
    #[serde(default)]
    pub class_flows: ClassFlowInit,
    pub per_class_train_bits_per_dim: Vec<f64>,
    pub per_class_held_out_bits_per_dim: Vec<f64>,
}

/// One classifier's Table 1 row (accuracies).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Table1Row {
    pub orig_orig: f64,
    pub orig_enc: f64,
    pub enc_orig: f64,
    pub enc_enc_true_class: f64,
    pub enc_enc_model_routed: f64,
    pub agnostic_enc_enc: f64,
    pub agnostic_enc_orig: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cover_attack_classes_recovered: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cover_attack_enc_orig: Option<f64>,
}

/// Table 2: held-out bits/dim of Glows trained on each kind of data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Table2 {
    pub trained_on_original: f64,
    pub trained_on_encrypted: f64,
    pub trained_on_encrypted_agnostic: f64,
    pub trained_on_encrypted_veil: f64,
    pub trained_on_encrypted_agnostic_veil: f64,
    pub untrained: f64,
}

/// One temperature of the sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepRow {
    pub temperature: f64,
    pub bits_per_dim_per_class: f64,
    pub bits_per_dim_agnostic: f64,
    pub per_class_over_original: f64,
    pub agnostic_over_original: f64,
    pub cnn_enc_enc_true_class: f64,
    pub cnn_enc_orig: f64,
}

/// The Gaussianity probe on held-out latents.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GaussianitySummary {
    pub agnostic_flow: GaussianityReport,
    pub per_class_mean_sliced_w1: f64,
    pub per_class_mean_gaussian_floor: f64,
}

/// Wall times, seconds, and encryption throughput.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowTiming {
    pub flow_training: f64,
    pub encryption: f64,
    pub encryption_images_per_s: f64,
    pub classifiers: f64,
    pub table2: f64,
    pub temperature_sweep: f64,
    pub total: f64,
}

pub(super) fn report(r: &FlowResults) -> String {
    let pct = |x: Option<f64>| x.map_or("—".to_owned(), crate::experiments::pct);
    let ratio =
        |x: Option<f64>| x.map_or("— (baseline failed)".to_owned(), |x| format!("{x:.3}"));
    let mut s = format!(
        "# Flow rotation on {}\n\nCommand: `{}`\n\n{} training and {} test images of {} (C×H×W), {} classes; Glow with {} levels × {} steps, {} hidden channels, {} epochs; {}; seed {}.\n\n",
        r.data,
        r.command,
        r.train_images,
        r.test_images,
        r.shape.map(|d| d.to_string()).join("×"),
        r.classes,
        r.flow.levels,
        r.flow.steps,
        r.flow.hidden,
        r.flow.epochs,
        match r.flow.class_flows {
            ClassFlowInit::Fresh =>
                "each class's flow trained on its class alone (the paper's way)",
            ClassFlowInit::FineTunedFromAgnostic =>
                "each class's flow fine-tuned from the class-agnostic flow at half the learning rate",
        },
        r.seed,
    );
    for (arch, row) in &r.table1 {
        if baseline_failed(row.orig_orig, r.classes, r.test_images) {
            s += &format!(
                "**Baseline failed: the {arch} trained and tested on the original images scored {} (chance is {}). Its ratios are not reported; the figures below say nothing about the scheme for this model.**\n\n",
                pct(Some(row.orig_orig)),
                pct(Some(1.0 / r.classes as f64)),
            );
        }
    }
    s += "## Table 1: test accuracy\n\nRoutes for encrypting a *test* image: (a) with the flow and key of its true class — the paper's code does this, and it leaks the label an honest user does not have; (b) one class-agnostic flow and key; (c) model-routed: encrypt with every class's flow and key and take the class whose encryption the classifier is most confident about.\n\n";
    s += &format!(
        "Two settings: the paper's Algorithm 1 (τ = 1, no cover classes) and Veil's (latent temperature τ = {}, cover classes: class c's latent decoded by class π(c)'s flow, π = {} from the key).\n\n",
        r.veil_settings.temperature,
        serde_json::to_string(&r.cover_permutation).unwrap_or_default()
    );
    s += "| Trained on | Tested on | CNN, Algorithm 1 | ResNet, Algorithm 1 | CNN, Veil | ResNet, Veil |\n|---|---|---|---|---|---|\n";
    let field = |t: &BTreeMap<String, Table1Row>, arch: &str, key: &str| -> Option<f64> {
        let row = t.get(arch)?;
        match key {
            "orig_orig" => Some(row.orig_orig),
            "orig_enc" => Some(row.orig_enc),
            "enc_orig" => Some(row.enc_orig),
            "enc_enc_true_class" => Some(row.enc_enc_true_class),
            "enc_enc_model_routed" => Some(row.enc_enc_model_routed),
            "agnostic_enc_enc" => Some(row.agnostic_enc_enc),
            "agnostic_enc_orig" => Some(row.agnostic_enc_orig),
            "cover_attack_enc_orig" => row.cover_attack_enc_orig,
            _ => None,
        }
    };
    let (t, v) = (&r.table1, &r.table1_veil);
    for (train, test, key) in [
        ("original", "original", "orig_orig"),
        ("original", "encrypted (a)", "orig_enc"),
        ("encrypted (per class)", "original", "enc_orig"),
        (
            "encrypted (per class)",
            "encrypted, route (a) true class — leaks the label",
            "enc_enc_true_class",
        ),
        (
            "encrypted (per class)",
            "encrypted, route (c) model-routed",
            "enc_enc_model_routed",
        ),
        (
            "encrypted (agnostic)",
            "encrypted, route (b) agnostic",
            "agnostic_enc_enc",
        ),
        ("encrypted (agnostic)", "original", "agnostic_enc_orig"),
        (
            "encrypted (per class)",
            "original, relabelled by the cover-class attack",
            "cover_attack_enc_orig",
        ),
    ] {
        s += &format!(
            "| {train} | {test} | {} | {} | {} | {} |\n",
            pct(field(t, "cnn", key)),
            pct(field(t, "resnet", key)),
            pct(field(v, "cnn", key)),
            pct(field(v, "resnet", key))
        );
    }
    s += &format!(
        "\nIntegrity (encrypted/encrypted over original/original, route a): Algorithm 1 CNN {}, ResNet {}; Veil CNN {}, ResNet {} (the paper's CIFAR-10: 88.5/95.5 = 0.927). The cover-class attack (a classifier of original images votes on the labelled ciphertexts) recovered π for {} / {} of the classes (CNN / ResNet).\n\n",
        ratio(r.integrity_ratio.get("cnn").copied().flatten()),
        ratio(r.integrity_ratio.get("resnet").copied().flatten()),
        ratio(r.integrity_ratio_veil.get("cnn").copied().flatten()),
        ratio(r.integrity_ratio_veil.get("resnet").copied().flatten()),
        pct(v.get("cnn").and_then(|x| x.cover_attack_classes_recovered)),
        pct(v
            .get("resnet")
            .and_then(|x| x.cover_attack_classes_recovered)),
    );
    if !r.route_d.is_empty() {
        let best_a = [&r.table1, &r.table1_veil]
            .iter()
            .flat_map(|t| t.values())
            .filter(|row| !baseline_failed(row.orig_orig, r.classes, r.test_images))
            .map(|row| row.enc_enc_true_class)
            .fold(f64::NAN, f64::max);
        s += "## Route (d): label-free, a perceptron on the public flow's latents\n\nThe factory maps each class-agnostic (route b) ciphertext through the public flow g: g(c) = τ·A·g(s), the image's latent rotated by the owner's secret A. A perceptron trained on these vectors needs no label at test time; a fixed rotation costs its first layer nothing. What the factory sees is what g(c) shows to anyone who holds g: the latents' norms and pairwise inner products. The owner encrypts jittered copies of each training image beside it (the factory cannot jitter rotated latents), and with test-time copies sends jittered copies of each test image and averages the probabilities: no label either way.\n\n| Setting | perceptron on g(s), originals (with copies) | route (d), one query | route (d) with test-time copies | trained on g(c), tested on g(s) | route (d) − best route (a): one query / with copies |\n|---|---|---|---|---|---|\n";
        for (setting, d) in &r.route_d {
            s += &format!(
                "| {setting} | {} ({}) | {} | {} | {} | {} |\n",
                pct(Some(d.orig_orig)),
                pct(d.orig_orig_copies),
                pct(Some(d.enc_enc)),
                match d.enc_enc_copies {
                    Some(v) => format!("{} ({} copies)", pct(Some(v)), d.test_copies),
                    None => "—".to_owned(),
                },
                pct(Some(d.enc_orig)),
                if best_a.is_nan() {
                    "— (baselines failed)".to_owned()
                } else {
                    let gap = |v: f64| format!("{:+.1}", 100.0 * (v - best_a));
                    match d.enc_enc_copies {
                        Some(v) => format!("{} / {} points", gap(d.enc_enc), gap(v)),
                        None => format!("{} points", gap(d.enc_enc)),
                    }
                }
            );
        }
        s += "\n";
    }
    s += "## Encryption: images that round-trip\n\nEvery ciphertext was decrypted and compared with its image; images that do not come back are left out of every figure above and listed by index in `encryption-failures.json`.\n\n| Setting | per-class train | per-class test | agnostic train | agnostic test |\n|---|---|---|---|---|\n";
    for (setting, e) in &r.encryption {
        let cell = |c: &EncryptionCounts| {
            let mut t = format!("{} of {}", pct(Some(c.encryptable_fraction)), c.images);
            if c.non_finite + c.no_round_trip > 0 {
                t += &format!(
                    " ({} overflowed, {} off by a level)",
                    c.non_finite, c.no_round_trip
                );
            }
            t
        };
        s += &format!(
            "| {setting} | {} | {} | {} | {} |\n",
            cell(&e.per_class_train),
            cell(&e.per_class_test),
            cell(&e.agnostic_train),
            cell(&e.agnostic_test)
        );
    }
    s += "\n";
    let b = &r.table2_bits_per_dim;
    s += &format!(
        "## Table 2: held-out bits/dim\n\n| Glow | bits/dim |\n|---|---|\n| trained on original data | {:.3} |\n| trained on per-class ciphertexts, Algorithm 1 | {:.3} |\n| trained on class-agnostic ciphertexts, Algorithm 1 | {:.3} |\n| trained on per-class ciphertexts, Veil | {:.3} |\n| trained on class-agnostic ciphertexts, Veil | {:.3} |\n| untrained | {:.3} |\n\n",
        b.trained_on_original,
        b.trained_on_encrypted,
        b.trained_on_encrypted_agnostic,
        b.trained_on_encrypted_veil,
        b.trained_on_encrypted_agnostic_veil,
        b.untrained,
    );
    s += "## Temperature sweep (cover classes on)\n\n| τ | bits/dim, per-class ciphertexts (÷ original) | bits/dim, agnostic ciphertexts (÷ original) | CNN encrypted/encrypted | CNN encrypted/original |\n|---|---|---|---|---|\n";
    for p in &r.temperature_sweep {
        s += &format!(
            "| {:.2} | {:.3} ({:.3}) | {:.3} ({:.3}) | {} | {} |\n",
            p.temperature,
            p.bits_per_dim_per_class,
            p.per_class_over_original,
            p.bits_per_dim_agnostic,
            p.agnostic_over_original,
            pct(Some(p.cnn_enc_enc_true_class)),
            pct(Some(p.cnn_enc_orig)),
        );
    }
    s += "\n";
    let g = &r.gaussianity;
    s += &format!(
        "## Gaussianity of the latents (held-out data)\n\nClass-agnostic flow: sliced W1 to N(0, I) {:.4} (a true Gaussian sample of the same size: {:.4}); mean |excess kurtosis| {:.3}. Per-class flows: mean sliced W1 {:.4} (floor {:.4}). The closer to the floor, the less Theorem 1's δ term gives an adversary.\n\n",
        g.agnostic_flow.sliced_wasserstein,
        g.agnostic_flow.sliced_wasserstein_gaussian_floor,
        g.agnostic_flow.mean_abs_excess_kurtosis,
        g.per_class_mean_sliced_w1,
        g.per_class_mean_gaussian_floor,
    );
    s += "## Figure 3\n\n![originals and encryptions](figure3.png)\n\nRows, top to bottom: test originals; Algorithm 1's route (a) encryptions; Algorithm 1's route (b) encryptions; Veil's route (a) encryptions (each looks like class π(c)).\n";
    s
}
