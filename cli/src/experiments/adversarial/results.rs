//! The typed `results.json` of `veil experiment adversarial` and its markdown report.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};
use veil::attacks::adversarial::{BasicRecovery, CombinedRanking};
use veil::schemes::adversarial::PgdConfig;

use super::super::pct;

/// Everything `veil experiment adversarial` measured. Keys are stable: RESULTS.md and the tests
/// read them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdversarialResults {
    /// The command that produced these figures.
    pub command: String,
    /// The data source.
    pub data: String,
    /// Image shape, `C×H×W`.
    pub shape: String,
    /// Classes.
    pub classes: usize,
    /// Images in the owner's training set, the test set and the attacker's own data D′.
    pub split: SplitSizes,
    /// A quick run.
    pub quick: bool,
    /// The encryption's PGD settings.
    pub pgd: PgdConfig,
    /// The key's fingerprint and the correspondence it gives.
    pub key: KeyInfo,
    /// The owner's base classifier (a small CNN) on the clean test set.
    pub base_accuracy: f64,
    /// Whether the base classifier is too close to chance for its perturbations to carry any
    /// class's features (then the encryption, and every figure built on it, is a failure).
    /// Absent from runs written before the flag existed (docs/results/adversarial-28.json and
    /// -32.json): read as false; their `base_accuracy` shows it.
    #[serde(default)]
    pub base_failed: bool,
    /// Distortion of each encryption of the training set against the originals.
    pub distortion: BTreeMap<String, Distortion>,
    /// The paper's Table 1, per architecture.
    pub table1: BTreeMap<String, Table1Row>,
    /// The paper's Table 5: the CNN trained on Horizontal Concat, tested on encrypted test
    /// images merged at other ratios.
    pub table5: Option<Table5>,
    /// The paper's Table 7: both combined methods, per architecture.
    pub table7: BTreeMap<String, BTreeMap<String, EncOrig>>,
    /// The paper's Table 3, for every class: the basic correspondence attack.
    pub table3: Table3,
    /// The paper's Table 8 and §4.3, per combined method: the combined search.
    pub table8: BTreeMap<String, Table8>,
    /// A factory that fights back (not in the paper).
    pub fights_back: FightsBack,
    /// ε against distortion and protection, for the CNN.
    pub epsilon_sweep: Vec<SweepRow>,
    /// Wall times.
    pub seconds: Seconds,
}

/// Images per split.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SplitSizes {
    /// The owner's training set (encrypted and sent).
    pub train: usize,
    /// The test set.
    pub test: usize,
    /// The attacker's own clean labelled data D′.
    pub attacker: usize,
}

/// The experiment's key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyInfo {
    /// The master key's fingerprint.
    pub fingerprint: String,
    /// `P(0), P(1), …`.
    pub correspondence: Vec<u32>,
}

/// Mean and minimum PSNR (dB) and SSIM of encrypted against original images.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Distortion {
    /// Mean PSNR.
    pub psnr_mean: f64,
    /// Lowest PSNR.
    pub psnr_min: f64,
    /// Mean SSIM.
    pub ssim_mean: f64,
    /// Lowest SSIM.
    pub ssim_min: f64,
}

/// One architecture's row of Table 1.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Table1Row {
    /// The same architecture trained on the clean training set, on the clean test set.
    pub clean: f64,
    /// Whether `clean` is too close to chance to compare anything with (then no ratio).
    pub baseline_failed: bool,
    /// Trained on the encrypted set, tested on the encrypted test set (needs the labels).
    pub enc: f64,
    /// Trained on the encrypted set, tested on the clean test set: what the factory gets.
    pub orig: f64,
    /// As `orig`, reading the prediction through P (`P(pred) = y`).
    pub orig_p: f64,
    /// Trained on a set encrypted toward a random class per image, tested on clean images.
    pub r_orig: f64,
    /// `enc / clean`, withheld when the baseline failed.
    pub enc_over_clean: Option<f64>,
}

/// Accuracy on encrypted and on clean test images.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct EncOrig {
    /// On the test set encrypted the same way.
    pub enc: f64,
    /// On the clean test set.
    pub orig: f64,
}

/// Table 5.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Table5 {
    /// On test images merged at each class's own secret ratio.
    pub key_ratios: f64,
    /// On the clean test set.
    pub orig: f64,
    /// `(share of the width from the first copy, accuracy)`, from 0.5 down to 0 (the second
    /// copy alone).
    pub by_ratio: Vec<(f32, f64)>,
}

/// Table 3 for every class.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Table3 {
    /// The search's accuracies and the recovered correspondence.
    pub search: BasicRecovery,
    /// Classes whose target was found.
    pub correct: usize,
    /// Whether all of P was found.
    pub recovered: bool,
}

/// The combined search.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Table8 {
    /// The ratio and weights the attacker assumed (the key's are secret).
    pub guess: (f32, [f32; 2]),
    /// Candidates the full per-class enumeration needs (`K · K^N`, ordered tuples).
    pub search_space: f64,
    /// The classes searched.
    pub classes: Vec<CombinedRanking>,
}

/// The factory fights back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FightsBack {
    /// Madry's PGD adversarial training of the CNN on the encrypted set, at several radii (ε of
    /// the encryption, ½ ε, ¼ ε).
    pub adversarial_training: Vec<AdversarialTraining>,
    /// Ordinary training of the CNN on pre-processed encrypted images.
    pub preprocess: Vec<PreprocessRow>,
}

/// Adversarial training's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdversarialTraining {
    /// The inner PGD (untargeted, random start).
    pub pgd: PgdConfig,
    /// On clean test images: what the factory gets.
    pub orig: f64,
    /// On the encrypted test set.
    pub enc: f64,
    /// The same adversarial training on the *clean* training set, on clean test images: what
    /// robust training costs by itself.
    pub clean_control: f64,
}

/// One pre-processing's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreprocessRow {
    /// Its name.
    pub name: String,
    /// Trained on pre-processed encrypted images, tested on pre-processed clean images.
    pub orig: f64,
    /// Trained and tested on pre-processed clean images: what the pre-processing costs.
    pub clean_control: f64,
}

/// One ε of the sweep (CNN, basic encryption).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepRow {
    /// ε.
    pub epsilon: f32,
    /// Distortion of the encrypted training set.
    pub distortion: Distortion,
    /// On the encrypted test set.
    pub enc: f64,
    /// On clean test images.
    pub orig: f64,
}

/// Wall times, seconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Seconds {
    /// Basic encryption of the training set.
    pub encrypt_train: f64,
    /// Images per second of that encryption (PGD, `pgd.iterations` steps).
    pub encrypt_images_per_s: f64,
    /// Table 1.
    pub table1: f64,
    /// Combined methods and Table 5/7.
    pub combined: f64,
    /// The correspondence attacks.
    pub attacks: f64,
    /// The factory fighting back.
    pub fights_back: f64,
    /// The ε sweep.
    pub sweep: f64,
    /// The whole run.
    pub total: f64,
}

/// The paper's CIFAR-10 figures (DenseNet-100bc unless said), for the report.
const PAPER: &str =
    "DenseNet-100bc on CIFAR-10: Enc 94.70 %, Orig 22.61 %, Orig+P 32.00 %, R+Orig 94.26 %";

fn f(x: f64) -> String {
    pct(x)
}

/// The markdown report.
pub fn report(r: &AdversarialResults) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Adversarial data encryption on {} ({}, {} classes)\n\n`{}`\n",
        r.data, r.shape, r.classes, r.command
    );
    let _ = writeln!(
        s,
        "Training set {}, test set {}, attacker's own data {}. PGD: ε {:.3}, step {:.3}, {} iterations{}. \
         Key {}; P = {:?}. Base CNN on clean test images: {}.\n",
        r.split.train,
        r.split.test,
        r.split.attacker,
        r.pgd.epsilon,
        r.pgd.step,
        r.pgd.iterations,
        if r.quick { " (quick run)" } else { "" },
        r.key.fingerprint,
        r.key.correspondence,
        f(r.base_accuracy)
    );
    let _ = writeln!(
        s,
        "## Distortion (encrypted against original training images)\n"
    );
    let _ = writeln!(
        s,
        "| encryption | PSNR mean | PSNR min | SSIM mean | SSIM min |\n|---|---|---|---|---|"
    );
    for (name, d) in &r.distortion {
        let _ = writeln!(
            s,
            "| {name} | {:.1} dB | {:.1} dB | {:.3} | {:.3} |",
            d.psnr_mean, d.psnr_min, d.ssim_mean, d.ssim_min
        );
    }
    let _ = writeln!(s, "\n## Table 1 (paper: {PAPER})\n");
    let _ = writeln!(
        s,
        "Enc needs every test image's label (the target is P(label)); the paper calls it vacuous in practice.\n"
    );
    let _ = writeln!(
        s,
        "| model | clean | Enc | Orig | Orig+P | R+Orig | Enc / clean |\n|---|---|---|---|---|---|---|"
    );
    for (arch, row) in &r.table1 {
        let ratio = match (row.baseline_failed, row.enc_over_clean) {
            (true, _) | (_, None) => "baseline failed: no ratio".to_string(),
            (false, Some(x)) => format!("{x:.3}"),
        };
        let _ = writeln!(
            s,
            "| {arch} | {} | {} | {} | {} | {} | {ratio} |",
            f(row.clean),
            f(row.enc),
            f(row.orig),
            f(row.orig_p),
            f(row.r_orig)
        );
    }
    if let Some(cnn) = r.table1.get("cnn") {
        let verdict = if cnn.baseline_failed {
            "the SmallCnn baseline failed, so nothing is concluded".to_string()
        } else if cnn.orig <= 0.4 {
            format!(
                "the encryption protects against ordinary training (SmallCnn Orig {} against {} clean)",
                f(cnn.orig),
                f(cnn.clean)
            )
        } else if cnn.orig >= 0.9 * cnn.clean {
            format!(
                "**the encryption does not protect at this ε**: a SmallCnn trained on it reads clean images at {} ({} when trained on clean ones); see the ε sweep",
                f(cnn.orig),
                f(cnn.clean)
            )
        } else {
            format!(
                "partial protection only: SmallCnn Orig {} against {} clean",
                f(cnn.orig),
                f(cnn.clean)
            )
        };
        let _ = writeln!(s, "\nVerdict: {verdict}.");
    }
    let _ = writeln!(
        s,
        "\n## Table 5: composition ratio (CNN on Horizontal Concat; paper 94.44 % at 50 % … 82.79 % at 0 %, 31.70 % on clean)\n"
    );
    if let Some(t5) = &r.table5 {
        let _ = writeln!(s, "| test images | accuracy |\n|---|---|");
        let _ = writeln!(s, "| merged at the key's ratios | {} |", f(t5.key_ratios));
        for (ratio, acc) in &t5.by_ratio {
            let _ = writeln!(
                s,
                "| {:.0} % left + {:.0} % right | {} |",
                100.0 * ratio,
                100.0 * (1.0 - ratio),
                f(*acc)
            );
        }
        let _ = writeln!(s, "| clean | {} |", f(t5.orig));
    } else {
        let _ = writeln!(s, "Not run: Horizontal Concat needs 3 classes or more.");
    }
    let _ = writeln!(
        s,
        "\n## Table 7: combined methods (paper DenseNet: Horizontal Concat 94.62 % / 29.69 %, Mixup And Concat 94.45 % / 32.92 %)\n"
    );
    let _ = writeln!(s, "| method | model | Enc | Orig |\n|---|---|---|---|");
    for (method, rows) in &r.table7 {
        for (arch, e) in rows {
            let _ = writeln!(s, "| {method} | {arch} | {} | {} |", f(e.enc), f(e.orig));
        }
    }
    let t3 = &r.table3;
    let _ = writeln!(
        s,
        "\n## Table 3: recovering P (§3.4)\n\n{} candidates tried; {} of {} classes found; P {}.\n",
        t3.search.candidates_tried,
        t3.correct,
        r.classes,
        if t3.recovered {
            "recovered in full"
        } else {
            "not recovered in full"
        }
    );
    let _ = writeln!(
        s,
        "Class 0's candidates (M1's accuracy on D′'s class-0 images pushed toward each):\n"
    );
    let _ = writeln!(s, "| candidate | accuracy |\n|---|---|");
    if let Some(row) = t3.search.accuracy.first() {
        for (t, a) in row.iter().enumerate() {
            let mark = if r.key.correspondence.first() == Some(&(t as u32)) {
                " (true P(0))"
            } else {
                ""
            };
            let _ = writeln!(s, "| 0 → {t}{mark} | {} |", f(*a));
        }
    }
    for (method, t8) in &r.table8 {
        let _ = writeln!(
            s,
            "\n## Table 8 / §4.3: recovering {method} (attacker assumes ratio {:.2}, weights {:?}; full search {:.0} candidates)\n",
            t8.guess.0, t8.guess.1, t8.search_space
        );
        let _ = writeln!(
            s,
            "| class | candidates | rank of the true tuple | best rank, any order | true tuple's accuracy | best tuple | clean |\n|---|---|---|---|---|---|---|"
        );
        for c in &t8.classes {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {:?} at {} | {} |",
                c.class,
                c.candidates,
                c.true_rank,
                c.same_targets_rank,
                f(c.true_accuracy),
                c.best.0,
                f(c.best.1),
                f(c.clean_accuracy)
            );
        }
    }
    let fb = &r.fights_back;
    let _ = writeln!(s, "\n## A factory that fights back (not in the paper)\n");
    let _ = writeln!(
        s,
        "| PGD adversarial training (untargeted, random start) | Orig | Enc | same training on clean data |\n|---|---|---|---|"
    );
    for a in &fb.adversarial_training {
        let _ = writeln!(
            s,
            "| ε {:.3}, {} steps of {:.3} | {} | {} | {} |",
            a.pgd.epsilon,
            a.pgd.iterations,
            a.pgd.step,
            f(a.orig),
            f(a.enc),
            f(a.clean_control)
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| pre-processing | Orig after training on encrypted | on clean (control) |\n|---|---|---|"
    );
    for p in &fb.preprocess {
        let _ = writeln!(s, "| {} | {} | {} |", p.name, f(p.orig), f(p.clean_control));
    }
    let _ = writeln!(s, "\n## ε sweep (CNN, basic encryption)\n");
    let _ = writeln!(
        s,
        "| ε | PSNR mean | SSIM mean | Enc | Orig |\n|---|---|---|---|---|"
    );
    for row in &r.epsilon_sweep {
        let _ = writeln!(
            s,
            "| {:.3} | {:.1} dB | {:.3} | {} | {} |",
            row.epsilon,
            row.distortion.psnr_mean,
            row.distortion.ssim_mean,
            f(row.enc),
            f(row.orig)
        );
    }
    let t = &r.seconds;
    let _ = writeln!(
        s,
        "\n## Wall times\n\nEncryption of the training set {:.0} s ({:.1} images/s); Table 1 {:.0} s; combined {:.0} s; attacks {:.0} s; fights back {:.0} s; sweep {:.0} s; total {:.0} s.",
        t.encrypt_train,
        t.encrypt_images_per_s,
        t.table1,
        t.combined,
        t.attacks,
        t.fights_back,
        t.sweep,
        t.total
    );
    s
}
