//! The typed `results.json` of `veil experiment rtas` and its markdown report.

use std::fmt::Write;

use serde::{Deserialize, Serialize};
use veil::schemes::rtas::Traffic;

use crate::experiments::pct;

/// Everything `veil experiment rtas` measured. Keys are stable.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RtasResults {
    /// The command that produced these figures.
    pub command: String,
    /// The data source.
    pub data: String,
    /// Image shape, `C×H×W`.
    pub shape: String,
    /// Training images.
    pub train_images: usize,
    /// Test images.
    pub test_images: usize,
    /// Fractional bits of the fixed-point encoding in Z₂⁶⁴.
    pub fixed_point_bits: u32,
    /// A quick run.
    pub quick: bool,
    /// Logistic regression ("is it a 0") and the paper's CNN.
    pub models: Vec<ModelResults>,
    /// What the helper learns (the CNN's views).
    pub helper: HelperAttacks,
    /// The paper's figures (MNIST CNN, LAN), quoted beside these.
    pub paper: PaperFigures,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// One network, trained three ways from the same initial weights in the same batch order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelResults {
    /// `logistic` or `cnn`.
    pub model: String,
    /// The layers, in words.
    pub architecture: String,
    /// Epochs.
    pub epochs: usize,
    /// SGD learning rate.
    pub learning_rate: f64,
    /// Chance: the accuracy of always answering the commonest test class.
    pub chance: f64,
    /// Plaintext training of the same network (the reference).
    pub plaintext_accuracy: f64,
    /// Whether the plaintext reference is no better than chance (then no comparison means
    /// anything).
    pub baseline_failed: bool,
    /// Every layer on shares.
    pub rtas: ProtocolFigures,
    /// Layer 0 on shares, the rest at the helper.
    pub rtas_fast: ProtocolFigures,
}

/// One run through the protocol.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProtocolFigures {
    /// Test accuracy.
    pub accuracy: f64,
    /// Accuracy minus the plaintext reference's, in points.
    pub gap_points: f64,
    /// Training batch size.
    pub train_batch: usize,
    /// Median wall time of a full training batch, seconds (all four parties on this machine).
    pub train_seconds_per_batch: f64,
    /// Bytes on every link per training batch, in MB (10⁶ bytes), summed over links.
    pub train_mb_per_batch: f64,
    /// Inference batch size (8192, or the whole test set when smaller).
    pub inference_batch: usize,
    /// Wall time of the first inference batch, seconds.
    pub inference_seconds_per_batch: f64,
    /// Bytes on every link per inference batch, MB.
    pub inference_mb_per_batch: f64,
    /// Inference bytes per image, summed over links, kB.
    pub inference_kb_per_image: f64,
    /// Inference throughput, images per second.
    pub inference_images_per_second: f64,
    /// Bytes per link over training and the timed inference.
    pub links: Vec<LinkBytes>,
    /// Beaver triples P0 consumed.
    pub triples: u64,
    /// Calls to the helper.
    pub helper_calls: u64,
    /// Values the helper received beyond any plausible magnitude (failed truncations).
    pub implausible_values: u64,
}

/// The bytes on one directed link.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkBytes {
    /// Sender.
    pub from: String,
    /// Receiver.
    pub to: String,
    /// Bytes during training (with the set-up: the permutation seed and the initial weights).
    pub train_bytes: u64,
    /// Bytes during the timed inference.
    pub inference_bytes: u64,
}

/// The helper-view attacks on the CNN, on the test images classified one at a time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelperAttacks {
    /// Views with known labels the attacker learns from (half the test set).
    pub known_views: usize,
    /// Views attacked.
    pub attacked_views: usize,
    /// Quantiles that summarise a permuted view.
    pub quantiles: usize,
    /// The paper's claim for one image's first-layer vector of n values: a chance of 1/n! to
    /// reconstruct it; log10(n!) here.
    pub claimed_log10_factorial: f64,
    /// Values in one image's first-layer vector.
    pub values_per_image: usize,
    /// Chance for the class of one image (the commonest class among the known views).
    pub chance: f64,
    /// RTAS: the class of one image from the sorted values of its permuted first-layer vector
    /// (5-NN on the known views).
    pub rtas_class_accuracy: f64,
    /// RTAS, batches of 8: the batch's label histogram from its permuted vector; mean L1
    /// distance to the truth (0 is exact, 2 is disjoint).
    pub rtas_histogram_l1: f64,
    /// The same L1 for the attacker's prior (the known views' class fractions).
    pub histogram_prior_l1: f64,
    /// RTAS: PSNR of the nearest known image (by sorted view) to the true image, dB.
    pub rtas_nearest_psnr: f64,
    /// Baseline: PSNR of the known images' mean to the true image, dB.
    pub mean_image_psnr: f64,
    /// RTAS-fast: the class of one image from its (unpermuted) first-layer output.
    pub fast_class_accuracy: f64,
    /// RTAS-fast: known (image, output) pairs used to fit the first layer (all the known views).
    pub fast_known_pairs: usize,
    /// RTAS-fast: mean PSNR of the images inverted from their first-layer outputs, dB.
    pub fast_inversion_psnr: f64,
    /// RTAS-fast: share of attacked images inverted above 40 dB.
    pub fast_exact_share: f64,
    /// The same with a quarter of the pairs, dB.
    pub fast_inversion_psnr_quarter: f64,
}

/// The paper's Tables 3 and 4 (MNIST CNN, LAN), for comparison.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PaperFigures {
    /// RTAS inference, batch 8192, seconds.
    pub rtas_inference_seconds: f64,
    /// RTAS inference traffic, MB.
    pub rtas_inference_mb: f64,
    /// RTAS training, batch 32, seconds.
    pub rtas_train_seconds: f64,
    /// RTAS training traffic, MB.
    pub rtas_train_mb: f64,
    /// SecureNN inference, seconds / MB.
    pub securenn_inference: (f64, f64),
    /// SecureNN training, seconds / MB.
    pub securenn_train: (f64, f64),
    /// CryptoNets inference, seconds / MB.
    pub cryptonets_inference: (f64, f64),
}

impl PaperFigures {
    /// Tables 3 and 4 as printed.
    pub const TABLES: Self = Self {
        rtas_inference_seconds: 10.61,
        rtas_inference_mb: 10.23,
        rtas_train_seconds: 0.54,
        rtas_train_mb: 333.6,
        securenn_inference: (122.61, 1052.33),
        securenn_train: (0.38, 22632.0),
        cryptonets_inference: (55.21, 294.0),
    };
}

/// Directed links, from the share holders' counters (every link touches P0 or P1).
pub fn links(p0: &[Traffic; 3], p1: &[Traffic; 3]) -> Vec<LinkBytes> {
    // Index 0: at the start (zero), 1: after training, 2: after the timed inference.
    let phase = |t: &[Traffic; 3], f: &dyn Fn(&Traffic) -> u64| (f(&t[1]), f(&t[2]) - f(&t[1]));
    let rows: [(&str, &str, (u64, u64)); 9] = [
        ("p0", "p1", phase(p0, &|t| t.sent[1])),
        ("p1", "p0", phase(p1, &|t| t.sent[0])),
        ("p0", "dealer", phase(p0, &|t| t.sent[2])),
        ("dealer", "p0", phase(p0, &|t| t.received[2])),
        ("dealer", "p1", phase(p1, &|t| t.received[2])),
        ("p0", "helper", phase(p0, &|t| t.sent[3])),
        ("p1", "helper", phase(p1, &|t| t.sent[3])),
        ("helper", "p0", phase(p0, &|t| t.received[3])),
        ("helper", "p1", phase(p1, &|t| t.received[3])),
    ];
    rows.into_iter()
        .map(|(from, to, (train_bytes, inference_bytes))| LinkBytes {
            from: from.into(),
            to: to.into(),
            train_bytes,
            inference_bytes,
        })
        .collect()
}

/// The markdown report.
pub fn report(r: &RtasResults) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# RTAS: private training and inference by secret shares and permuted non-linearities\n\n\
         Command: `{}`\n\nData {} ({}): {} training and {} test images. Fixed point: {} fractional \
         bits in Z₂⁶⁴. All four parties ran in this process, each on its own thread, over \
         in-memory links (frames counted byte for byte). Wall time {:.0} s.\n",
        r.command, r.data, r.shape, r.train_images, r.test_images, r.fixed_point_bits, r.seconds
    );
    let _ = writeln!(
        s,
        "## Accuracy against plaintext training of the same network\n\n\
         | model | epochs | chance | plaintext | RTAS | gap | RTAS-fast | gap |\n|---|---|---|---|---|---|---|---|"
    );
    for m in &r.models {
        let plain = if m.baseline_failed {
            format!(
                "{} (**at chance: a failed run**)",
                pct(m.plaintext_accuracy)
            )
        } else {
            pct(m.plaintext_accuracy)
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {plain} | {} | {:+.1} | {} | {:+.1} |",
            m.architecture,
            m.epochs,
            pct(m.chance),
            pct(m.rtas.accuracy),
            m.rtas.gap_points,
            pct(m.rtas_fast.accuracy),
            m.rtas_fast.gap_points
        );
    }
    let _ = writeln!(
        s,
        "\n## Time and bytes (this machine, loopback in one process) beside the paper's Tables 3 and 4\n\n\
         | model | scheme | train s/batch | train MB/batch | inference batch | inference s/batch | MB/batch | kB/image | images/s |\n|---|---|---|---|---|---|---|---|---|"
    );
    for m in &r.models {
        for (name, p) in [("RTAS", &m.rtas), ("RTAS-fast", &m.rtas_fast)] {
            let _ = writeln!(
                s,
                "| {} | {name} | {:.4} | {:.3} | {} | {:.3} | {:.2} | {:.2} | {:.0} |",
                m.model,
                p.train_seconds_per_batch,
                p.train_mb_per_batch,
                p.inference_batch,
                p.inference_seconds_per_batch,
                p.inference_mb_per_batch,
                p.inference_kb_per_image,
                p.inference_images_per_second
            );
        }
    }
    let p = &r.paper;
    let _ = writeln!(
        s,
        "| paper CNN, MNIST | RTAS | {} | {} | 8192 | {} | {} | {:.2} | {:.0} |\n\
         | paper CNN, MNIST | SecureNN | {} | {} | 8192 | {} | {} | | |\n\
         | paper CNN, MNIST | CryptoNets | — | — | 8192 | {} | {} | | |\n",
        p.rtas_train_seconds,
        p.rtas_train_mb,
        p.rtas_inference_seconds,
        p.rtas_inference_mb,
        p.rtas_inference_mb * 1000.0 / 8192.0,
        8192.0 / p.rtas_inference_seconds,
        p.securenn_train.0,
        p.securenn_train.1,
        p.securenn_inference.0,
        p.securenn_inference.1,
        p.cryptonets_inference.0,
        p.cryptonets_inference.1
    );
    for m in &r.models {
        let _ = writeln!(
            s,
            "Bytes per link, {} (RTAS; training with set-up / timed inference):\n",
            m.model
        );
        let _ = writeln!(s, "| link | training | inference |\n|---|---|---|");
        for l in &m.rtas.links {
            let _ = writeln!(
                s,
                "| {} → {} | {} | {} |",
                l.from, l.to, l.train_bytes, l.inference_bytes
            );
        }
        let _ = writeln!(
            s,
            "\n{} triples, {} helper calls, {} implausible values at the helper (failed truncations).\n",
            m.rtas.triples, m.rtas.helper_calls, m.rtas.implausible_values
        );
    }
    let h = &r.helper;
    let _ = writeln!(
        s,
        "## What the helper learns (CNN, test images one at a time)\n\n\
         The paper claims 1/n! reconstructive privacy for a permuted vector of n values: here n = {} \
         and log₁₀ n! = {:.0}. A permutation hides the order, not the multiset. The attacker knows the \
         labels (or the images) of {} views and attacks the other {}.\n\n\
         | attack | measured | chance / baseline |\n|---|---|---|\n\
         | RTAS: class of one image from its sorted first-layer values (5-NN, {} quantiles) | {} | {} |\n\
         | RTAS: label histogram of a batch of 8 (mean L1, 0 = exact) | {:.3} | {:.3} (prior) |\n\
         | RTAS: nearest known image by sorted view, PSNR | {:.1} dB | {:.1} dB (mean image) |\n\
         | RTAS-fast: class of one image from its first-layer output | {} | {} |\n\
         | RTAS-fast: image inverted from its first-layer output, {} known pairs | {:.1} dB ({} above 40 dB) | {:.1} dB (mean image) |\n\
         | RTAS-fast: the same with a quarter of the pairs | {:.1} dB | |\n",
        h.values_per_image,
        h.claimed_log10_factorial,
        h.known_views,
        h.attacked_views,
        h.quantiles,
        pct(h.rtas_class_accuracy),
        pct(h.chance),
        h.rtas_histogram_l1,
        h.histogram_prior_l1,
        h.rtas_nearest_psnr,
        h.mean_image_psnr,
        pct(h.fast_class_accuracy),
        pct(h.chance),
        h.fast_known_pairs,
        h.fast_inversion_psnr,
        pct(h.fast_exact_share),
        h.mean_image_psnr,
        h.fast_inversion_psnr_quarter
    );
    s
}
