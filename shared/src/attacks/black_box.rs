//! The survey's black-box attacks on a trained classifier (survey §6), measured the same way for
//! a model trained on plaintext and for one trained on a scheme's ciphertexts.
//!
//! - **Membership inference** by the loss threshold (Yeom, Giacomelli, Fredrikson, Jha 2018): a
//!   model fits its training images better than others, so a low loss on `(x, y)` says `x` was
//!   trained on. [`membership`] reports the attack's ROC AUC (0.5: no better than a coin) and its
//!   true-positive rate at 1 % false positives (Carlini et al.'s "LiRA" paper argues for this
//!   figure over the AUC).
//! - **Model extraction**: query the model with inputs of one's own, train a copy on the answers,
//!   and measure how often the copy agrees with the model ([`agreement`]).

/// Per-example cross-entropy of row-major logits `[N, K]` against `labels`.
pub fn per_example_loss(logits: &[f32], labels: &[u32], classes: usize) -> Vec<f64> {
    logits
        .chunks_exact(classes)
        .zip(labels)
        .map(|(row, &y)| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = row.iter().map(|v| f64::from(v - max).exp()).sum();
            sum.ln() - f64::from(row[y as usize] - max)
        })
        .collect()
}

/// What the loss-threshold attack achieves.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MembershipReport {
    /// Area under the ROC curve of the score `−loss` (members positive): the probability that
    /// a random member has a lower loss than a random non-member, ties counting half.
    pub auc: f64,
    /// The largest true-positive rate at a false-positive rate of at most 1 %.
    pub tpr_at_1pct_fpr: f64,
    /// The best accuracy of a single threshold minus ½, doubled (Yeom et al.'s membership
    /// advantage: 0 for a coin, 1 for a perfect attack).
    pub advantage: f64,
}

/// The loss-threshold membership attack on `members`' and `non_members`' losses.
pub fn membership(members: &[f64], non_members: &[f64]) -> MembershipReport {
    // Scores: −loss; sort everything by loss ascending (most member-like first).
    let mut all: Vec<(f64, bool)> = members
        .iter()
        .map(|&l| (l, true))
        .chain(non_members.iter().map(|&l| (l, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (p, n) = (members.len().max(1) as f64, non_members.len().max(1) as f64);
    // AUC by ranks (Mann–Whitney), with ties counted half.
    let mut auc_sum = 0.0;
    let mut i = 0;
    let mut non_members_above = non_members.len() as f64;
    while i < all.len() {
        let mut j = i;
        while j < all.len() && all[j].0 == all[i].0 {
            j += 1;
        }
        let (tied_m, tied_n) =
            all[i..j].iter().fold(
                (0.0, 0.0),
                |(m, k), e| {
                    if e.1 { (m + 1.0, k) } else { (m, k + 1.0) }
                },
            );
        non_members_above -= tied_n;
        auc_sum += tied_m * (non_members_above + 0.5 * tied_n);
        i = j;
    }
    // Thresholds after each group of ties: TPR and FPR of "loss ≤ threshold".
    let (mut tp, mut fp) = (0.0, 0.0);
    let (mut best_tpr, mut best_adv) = (0.0f64, 0.0f64);
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j < all.len() && all[j].0 == all[i].0 {
            if all[j].1 {
                tp += 1.0;
            } else {
                fp += 1.0;
            }
            j += 1;
        }
        let (tpr, fpr) = (tp / p, fp / n);
        if fpr <= 0.01 {
            best_tpr = best_tpr.max(tpr);
        }
        best_adv = best_adv.max(tpr - fpr);
        i = j;
    }
    MembershipReport {
        auc: auc_sum / (p * n),
        tpr_at_1pct_fpr: best_tpr,
        advantage: best_adv,
    }
}

/// Share of positions where two label sequences agree.
pub fn agreement(a: &[u32], b: &[u32]) -> f64 {
    let n = a.len().min(b.len());
    if n == 0 {
        return 0.0;
    }
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separated_losses_are_found_and_equal_ones_are_not() {
        let r = membership(&[0.1, 0.2, 0.3], &[1.0, 2.0, 3.0]);
        assert_eq!(r.auc, 1.0);
        assert_eq!(r.tpr_at_1pct_fpr, 1.0);
        assert_eq!(r.advantage, 1.0);
        let r = membership(&[1.0; 4], &[1.0; 4]);
        assert_eq!(r.auc, 0.5);
        assert_eq!(r.advantage, 0.0);
        // Reversed: members fit worse (the attack is worse than a coin).
        let r = membership(&[2.0, 3.0], &[0.5, 1.0]);
        assert_eq!(r.auc, 0.0);
    }

    /// The AUC equals the share of (member, non-member) pairs ordered correctly.
    #[test]
    fn auc_counts_ordered_pairs() {
        let m = [0.2, 0.5, 0.9, 0.4];
        let n = [0.3, 0.6, 0.5, 1.2, 0.1];
        let mut ordered = 0.0;
        for a in m {
            for b in n {
                ordered += if a < b {
                    1.0
                } else if a == b {
                    0.5
                } else {
                    0.0
                };
            }
        }
        let r = membership(&m, &n);
        assert!((r.auc - ordered / 20.0).abs() < 1e-12, "{}", r.auc);
    }

    #[test]
    fn cross_entropy_of_logits() {
        let l = per_example_loss(&[0.0, 0.0, 2.0, 0.0], &[0, 0], 2);
        assert!((l[0] - 2f64.ln()).abs() < 1e-9);
        assert!((l[1] - (1.0 + (-2f64).exp()).ln()).abs() < 1e-6);
        assert_eq!(agreement(&[1, 2, 3], &[1, 0, 3]), 2.0 / 3.0);
    }
}
