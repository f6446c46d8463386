//! The typed `results.json` of `veil experiment owsd` and the report rendered from it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use veil::schemes::owsd::ScrambleConfig;

use super::OwsdArgs;

/// `results.json` of `veil experiment owsd`: its keys are stable (docs/RESULTS.md quotes them),
/// and the report is rendered from this struct, so a renamed figure fails to compile instead of
/// printing "—".
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OwsdResults {
    pub setup: OwsdSetup,
    /// The matching-labels cloud on the owner's unscrambled test images.
    pub cloud_on_unscrambled: CloudOnPlain,
    /// Table 1, by cloud: `matching`, `more`, `disjoint`.
    pub table1: BTreeMap<String, IinRow>,
    /// One encoder, three scramble keys.
    pub ensemble_matching_3_keys: IinRow,
    /// Use case 4: an ensemble of encoders.
    pub ensemble_matching_encoders: IinRow,
    /// IIN top-1 (matching cloud) ÷ the cloud's top-1 on unscrambled images.
    pub iin_over_cloud: f64,
    /// The same with the ensemble of encoders.
    pub iin_over_cloud_encoder_ensemble: f64,
    pub table2_fewer_owner_labels: Vec<FewerLabelsRow>,
    pub use_case_5_per_class: Vec<PerClassRow>,
    pub table5: CloudView,
    /// The §5.3 inverter against the number of known pairs.
    pub attack: Vec<AttackRow>,
    /// PSNR of guessing the mean image (what a reconstruction must beat).
    pub attack_mean_image_psnr: f64,
    /// Key recovery: a generator of the public architecture fitted to the same N pairs, then
    /// the inverter trained on pairs the copy makes from all the attacker's own images.
    pub generator_fit: Vec<GeneratorFitRow>,
    /// PSNR of a random key's scrambles against the owner's (what a blind guess of the key
    /// gives; the fitted copies must beat it).
    pub generator_fit_blind_scramble_psnr: f64,
    pub timing_s: OwsdTiming,
}

/// What `veil experiment owsd` ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OwsdSetup {
    pub data: String,
    pub quick: bool,
    pub seed: u64,
    pub owner_classes: usize,
    pub cloud_own_images: usize,
    pub owner_pool: usize,
    pub owner_test: usize,
    pub other_images: usize,
    pub other_classes: usize,
    pub encoder: String,
    pub encoders_in_ensemble: usize,
    pub scramble: ScrambleConfig,
    pub key_fingerprint: String,
    pub classifier_epochs: usize,
}

/// Top-1 and top-5 accuracy.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct TopK {
    pub top1: f64,
    pub top5: f64,
}

/// The cloud on unscrambled images.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct CloudOnPlain {
    pub top1: f64,
    pub top5: f64,
    pub accuracy: f64,
}

/// The internal network on `[embedding ‖ cloud]` (`both`), on the embedding alone and on the
/// cloud's vector alone, with what the row varies.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IinRow {
    pub both: TopK,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<TopK>,
    pub cloud: TopK,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_labels: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoders: Option<usize>,
}

/// Table 2: fewer owner labels.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FewerLabelsRow {
    pub owner_labels: usize,
    pub labels_ratio: f64,
    pub iin: f64,
    pub iin_cloud_only: f64,
}

/// Use case 5: labelled images per class (`per_class` is a count, or `"all"`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PerClassRow {
    pub per_class: PerClass,
    pub images: usize,
    pub iin: f64,
    pub iin_embedding_only: f64,
}

/// Images per class: a count, or every labelled image (`"all"`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PerClass {
    Count(usize),
    All(String),
}

impl std::fmt::Display for PerClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Count(n) => write!(f, "{n}"),
            Self::All(s) => write!(f, "{s:?}"),
        }
    }
}

/// Table 5: what the cloud sees.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CloudView {
    pub cloud_labels: usize,
    pub top1_same: f64,
    pub top5_intersect: f64,
    pub entropy_bits_original: f64,
    pub entropy_bits_scrambled: f64,
    pub entropy_bits_uniform: f64,
}

/// The inverter with `pairs` known pairs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttackRow {
    pub pairs: usize,
    pub psnr: f64,
    pub mse: f64,
    pub baseline_original_psnr: f64,
    pub baseline_original_mse: f64,
}

/// The generator fitted on `pairs` known pairs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GeneratorFitRow {
    /// Known (image, scramble) pairs the generator was fitted on.
    pub pairs: usize,
    /// The fit's final logit MSE on its pairs.
    pub train_logit_mse: f64,
    /// PSNR of the copy's scrambles of the test images against the owner's scrambles (mean per
    /// image): how well the key's function was copied.
    pub scramble_psnr: f64,
    /// Pairs the inverter was then trained on (all the attacker's images, scrambled by the copy).
    pub inverter_pairs: usize,
    /// PSNR of the inverter's reconstructions of the owner's test images from their real
    /// scrambles.
    pub psnr: f64,
    /// Their MSE.
    pub mse: f64,
}

/// Wall times, seconds, and scramble throughput.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OwsdTiming {
    pub models: f64,
    pub iin: f64,
    pub attack: f64,
    pub total: f64,
    pub scramble_images_per_s: f64,
}

pub(super) fn report(r: &OwsdResults, args: &OwsdArgs) -> String {
    let pct = crate::experiments::pct;
    let s0 = &r.setup;
    let mut s = format!(
        "# OWSD on {}\n\nCommand: `veil experiment owsd --data {} --out {}{}`\n\n\
         The cloud's own labelled data: {} images; the owner's labelled pool: {}; the owner's test set: {}. \
         The owner's encoder is a small CNN trained on the other data ({} images, {} classes); the \
         scramble key is a random DCGAN-style generator (64-d embedding → 1×8×8), key {}.\n\n",
        s0.data,
        args.common.data,
        args.common.out.display(),
        if args.common.quick { " --quick" } else { "" },
        s0.cloud_own_images,
        s0.owner_pool,
        s0.owner_test,
        s0.other_images,
        s0.other_classes,
        s0.key_fingerprint,
    );
    let cell = |k: Option<TopK>| {
        k.map_or("—".to_owned(), |k| {
            format!("{} / {}", pct(k.top1), pct(k.top5))
        })
    };
    let labels = |n: Option<usize>| n.map_or("—".to_owned(), |n| n.to_string());
    let c = &r.cloud_on_unscrambled;
    s += &format!(
        "## Table 1: the IIN against the cloud on unscrambled images\n\nThe matching-labels cloud on the owner's *unscrambled* test images: top-1 {}, top-5 {}.\nIIN top-1 / cloud top-1 = **{:.3}** with one encoder, **{:.3}** with the ensemble of encoders (the paper's CIFAR-10: 86.5/93.3 = 0.927).\n\n| Cloud | cloud labels | IIN (embedding ‖ cloud vector) | embedding alone | cloud vector alone |\n|---|---|---|---|---|\n",
        pct(c.top1),
        pct(c.top5),
        r.iin_over_cloud,
        r.iin_over_cloud_encoder_ensemble,
    );
    for (k, name) in [
        ("matching", "matching labels"),
        ("more", "more labels"),
        ("disjoint", "owner labels absent (use case 3)"),
    ] {
        let Some(row) = r.table1.get(k) else {
            continue;
        };
        s += &format!(
            "| {name} | {} | {} | {} | {} |\n",
            labels(row.cloud_labels),
            cell(Some(row.both)),
            cell(row.embedding),
            cell(Some(row.cloud))
        );
    }
    let matching_labels = labels(r.table1.get("matching").and_then(|m| m.cloud_labels));
    let e = &r.ensemble_matching_encoders;
    s += &format!(
        "| matching labels, {} encoders (use case 4) | {} | {} | {} | {} |\n",
        labels(e.encoders),
        matching_labels,
        cell(Some(e.both)),
        cell(e.embedding),
        cell(Some(e.cloud))
    );
    let e = &r.ensemble_matching_3_keys;
    s += &format!(
        "| matching labels, one encoder, 3 scramble keys | {} | {} | — | {} |\n",
        matching_labels,
        cell(Some(e.both)),
        cell(Some(e.cloud))
    );
    s += "\nCells: top-1 / top-5 on the owner's test images.\n\n## Table 2: fewer owner labels (the more-labels cloud)\n\n| owner labels | owner/cloud labels | IIN | IIN on the cloud vector alone |\n|---|---|---|---|\n";
    for row in &r.table2_fewer_owner_labels {
        s += &format!(
            "| {} | {:.2} | {} | {} |\n",
            row.owner_labels,
            row.labels_ratio,
            pct(row.iin),
            pct(row.iin_cloud_only)
        );
    }
    s += "\n## Use case 5: labelled images per class\n\n| per class | images | IIN | embedding alone |\n|---|---|---|---|\n";
    for row in &r.use_case_5_per_class {
        s += &format!(
            "| {} | {} | {} | {} |\n",
            row.per_class,
            row.images,
            pct(row.iin),
            pct(row.iin_embedding_only)
        );
    }
    let t5 = &r.table5;
    s += &format!(
        "\n## Table 5: what the cloud sees (the more-labels cloud, {} labels)\n\n| measure | value |\n|---|---|\n| scrambled top-1 = original top-1 | {} |\n| scrambled top-5 ∩ original top-5 ≠ ∅ | {} |\n| mean entropy of the cloud's vector, original images | {:.2} bits |\n| same, scrambled images | {:.2} bits |\n| uniform vector | {:.2} bits |\n\n",
        t5.cloud_labels,
        pct(t5.top1_same),
        pct(t5.top5_intersect),
        t5.entropy_bits_original,
        t5.entropy_bits_scrambled,
        t5.entropy_bits_uniform,
    );
    s += "## The autoencoder attack (§5.3–5.4)\n\nAn MLP autoencoder trained on N (scrambled, original) pairs under the owner's key, tested on the owner's scrambled test images; beside it the same network trained on (original, original) pairs.\n\n| pairs N | PSNR of the reconstruction | MSE | baseline (original → original) PSNR |\n|---|---|---|---|\n";
    for row in &r.attack {
        s += &format!(
            "| {} | {:.2} dB | {:.4} | {:.2} dB |\n",
            row.pairs, row.psnr, row.mse, row.baseline_original_psnr
        );
    }
    s += &format!(
        "\nGuessing the average image scores {:.2} dB: a reconstruction must beat that to show anything of the image.\n",
        r.attack_mean_image_psnr
    );
    s += &format!(
        "\n## Key recovery: fitting the generator\n\nThe generator's architecture is public and only its weights are the key. An attacker with N (image, scramble) pairs and the encoder fits a generator of that architecture to the (embedding, scramble) pairs, scrambles all its own images with the copy, and trains the same inverter on those pairs. A random key's scrambles score {:.2} dB against the owner's.\n\n| pairs N | scramble PSNR of the copy | inverter pairs | PSNR of the reconstruction | MSE |\n|---|---|---|---|---|\n",
        r.generator_fit_blind_scramble_psnr
    );
    for row in &r.generator_fit {
        s += &format!(
            "| {} | {:.2} dB | {} | {:.2} dB | {:.4} |\n",
            row.pairs, row.scramble_psnr, row.inverter_pairs, row.psnr, row.mse
        );
    }
    s += "\n## Figure\n\n![originals above their scrambled images](figure.png)\n";
    s
}
