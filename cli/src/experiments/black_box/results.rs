//! The typed `results.json` of `veil experiment black-box` and its markdown report.

use std::fmt::Write;

use serde::{Deserialize, Serialize};
use veil::attacks::black_box::MembershipReport;
use veil::attacks::model_inversion::InversionScore;

use crate::experiments::pct;

/// Everything `veil experiment black-box` measured. Keys are stable.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlackBoxResults {
    /// The command that produced these figures.
    pub command: String,
    /// The data source.
    pub data: String,
    /// Image shape, `C×H×W`.
    pub shape: String,
    /// The flows that encrypted the second model's training set.
    pub flows: String,
    /// Images the models were trained on (the members).
    pub members: usize,
    /// Images of the same distribution they never saw (the non-members).
    pub non_members: usize,
    /// The attacker's own images, its query pool for extraction.
    pub query_pool: usize,
    /// Epochs of every model (the victims are trained to overfit, as a factory that trains long
    /// on a small set does).
    pub epochs: usize,
    /// A quick run.
    pub quick: bool,
    /// The experiment key's secret cover permutation π (class c's ciphertexts look like class
    /// π(c)), revealed here only to score the attacker's relabelling against it.
    pub cover_permutation: Vec<usize>,
    /// Classes for which the relabelling the attacker learned from the model on ciphertexts
    /// equals π.
    pub relabelling_matches_cover: usize,
    /// The model trained on plaintext.
    pub plain: Victim,
    /// The model trained on flow-rotation ciphertexts (route a, Veil's settings).
    pub flow_rotation: Victim,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// One attacked model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Victim {
    /// Whether the model is no better than chance on its test set: then it learned nothing,
    /// and every figure built on it (membership, extraction) is a failed run, not evidence.
    pub baseline_failed: bool,
    /// Accuracy on its own training inputs.
    pub train_accuracy: f64,
    /// Accuracy on the non-members, in the form it is queried with (plaintext for the plain
    /// model, the owner's ciphertexts for the encrypted one).
    pub test_accuracy: f64,
    /// The model's accuracy on plain non-members once its answers are relabelled by the map the
    /// attacker learned from its own labelled images (the answer → the true class most often
    /// behind it): for a model trained on cover-class ciphertexts, what the cover permutation
    /// protects.
    pub plain_accuracy_relabelled: f64,
    /// That map, answer → class.
    pub relabelling: Vec<u32>,
    /// Images of the training set the encryption could not take (left out).
    pub unencryptable: usize,
    /// The loss-threshold membership attack, members against non-members, each queried in the
    /// form the model was trained on.
    pub membership: MembershipReport,
    /// Model extraction against the number of queries.
    pub extraction: Vec<ExtractionRow>,
    /// Model inversion of every class (absent in results written before it was measured).
    #[serde(default)]
    pub inversion: Option<InversionSummary>,
}

/// Model inversion (Fredrikson et al., with a query-estimated gradient) of every class of one
/// model, scored against the members' plain class means: what the model's answers show of the
/// owner's images.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InversionSummary {
    /// The attacker's prior (start and anchor): the mean of the images it holds in the form the
    /// model takes (its own plain images for the plain model; for the model on ciphertexts the
    /// non-members' ciphertexts, as the factory holds them).
    pub prior: String,
    /// Queries per class.
    pub queries_per_class: usize,
    /// Per class, in class order.
    pub classes: Vec<InvertedRow>,
    /// Classes whose inversion shows their own class's features ([`InversionScore::nearest_class`]).
    pub identified: usize,
    /// Classes whose inversion shows the features of the class the key's cover permutation
    /// makes its ciphertexts look like (π(c); for the plain model, of no meaning).
    pub shows_cover_class: usize,
    /// Mean PSNR (dB) against the class means.
    pub psnr_mean: f64,
    /// Mean SSIM against the class means.
    pub ssim_mean: f64,
    /// Mean PSNR of the domain's mean image against the class means: no query needed.
    pub domain_mean_psnr_mean: f64,
}

/// One class's inversion.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InvertedRow {
    /// The class.
    pub class: u32,
    /// The model's probability of the class for the inversion.
    pub confidence: f64,
    /// PSNR, SSIM, the class identified, the domain mean's PSNR.
    #[serde(flatten)]
    pub score: InversionScore,
}

/// A copy trained on `queries` answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExtractionRow {
    /// Queries (the attacker's own plain images, labelled by the model).
    pub queries: usize,
    /// Share of the non-members (in the form the model serves) on which the copy and the model
    /// agree.
    pub agreement: f64,
    /// The copy's accuracy on the non-members' true labels, on plain images: what the copy is
    /// worth to the attacker without the owner's key.
    pub copy_accuracy_plain: f64,
    /// The same after the attacker's relabelling ([`Victim::relabelling`]).
    pub copy_accuracy_plain_relabelled: f64,
}

/// The markdown report.
pub fn report(r: &BlackBoxResults) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Black-box attacks on the factory's models (survey §6)\n\nCommand: `{}`\n\n\
         Data {} ({}); {} members, {} non-members, {} images of the attacker's own; every model a \
         SmallCnn trained {} epochs. The encrypted model was trained on the members encrypted with \
         flow rotation (route a, Veil's settings; flows `{}`). Wall time {:.0} s.\n",
        r.command,
        r.data,
        r.shape,
        r.members,
        r.non_members,
        r.query_pool,
        r.epochs,
        r.flows,
        r.seconds
    );
    let _ = writeln!(
        s,
        "## Membership inference (loss threshold)\n\n| model | train accuracy | test accuracy | on plain images, relabelled | AUC | TPR at 1 % FPR | advantage |\n|---|---|---|---|---|---|---|"
    );
    for (name, v) in [("plain", &r.plain), ("flow rotation", &r.flow_rotation)] {
        let name = if v.baseline_failed {
            format!("{name} (**at chance: a failed run**)")
        } else {
            name.to_owned()
        };
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} | {:.3} | {} | {:.3} |",
            pct(v.train_accuracy),
            pct(v.test_accuracy),
            pct(v.plain_accuracy_relabelled),
            v.membership.auc,
            pct(v.membership.tpr_at_1pct_fpr),
            v.membership.advantage
        );
    }
    let _ = writeln!(
        s,
        "\n## Model extraction\n\nThe attacker queries each model with its own plain images and trains a copy on the answers. Agreement is measured on the non-members in the form each model serves; the copy's accuracy on plain images is what it is worth without the key.\n\n| queries | plain: agreement | plain: copy's accuracy | flow rotation: agreement | flow rotation: copy's accuracy on plain images | the same, relabelled |\n|---|---|---|---|---|---|"
    );
    for (a, b) in r.plain.extraction.iter().zip(&r.flow_rotation.extraction) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            a.queries,
            pct(a.agreement),
            pct(a.copy_accuracy_plain),
            pct(b.agreement),
            pct(b.copy_accuracy_plain),
            pct(b.copy_accuracy_plain_relabelled)
        );
    }
    let _ = writeln!(
        s,
        "\n## Model inversion\n\nPer class, the input the model finds most typical of it, from its probabilities alone (gradient estimated from queries), started from and anchored to the attacker's prior; scored against the members' plain class means. Figure: `inversion.png` (rows: the plain class means, the plain model's inversions, the encrypted model's).\n\n| model | prior | queries per class | own class's features shown | cover class's shown | PSNR | SSIM | domain mean's PSNR |\n|---|---|---|---|---|---|---|---|"
    );
    for (name, v) in [("plain", &r.plain), ("flow rotation", &r.flow_rotation)] {
        if let Some(i) = &v.inversion {
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {} of {} | {} | {:.1} dB | {:.3} | {:.1} dB |",
                i.prior,
                i.queries_per_class,
                i.identified,
                i.classes.len(),
                if std::ptr::eq(v, &r.plain) {
                    "—".to_owned()
                } else {
                    format!("{} of {}", i.shows_cover_class, i.classes.len())
                },
                i.psnr_mean,
                i.ssim_mean,
                i.domain_mean_psnr_mean
            );
        }
    }
    let _ = writeln!(
        s,
        "\nRelabelling: each answer read as the true class the attacker's own labelled images most often get it for. The map learned from the model on ciphertexts: {:?}, the key's cover permutation π in {} of {} classes (π = {:?}); the plain model's: {:?}.",
        r.flow_rotation.relabelling,
        r.relabelling_matches_cover,
        r.cover_permutation.len(),
        r.cover_permutation,
        r.plain.relabelling
    );
    s
}
