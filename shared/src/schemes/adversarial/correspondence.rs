//! The key of adversarial data encryption: the secret class correspondence P (paper §3.1) and
//! the combined correspondence with its composition ratios and mixing weights (§4.1), all drawn
//! from the owner's master key.
//!
//! The paper's public code hard-codes one permutation; here P is a uniform *derangement* (no
//! class maps to itself, since a class perturbed toward itself is not encrypted at all), drawn
//! from the subkey `adversarial/correspondence` with ChaCha20, so the same key gives the same
//! correspondence natively and in wasm.

use rand::seq::SliceRandom;
use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};

use super::AdversarialError;
use crate::crypto::keys::{MasterKey, Scheme};

/// The subkey label of the basic correspondence.
pub const CORRESPONDENCE_LABEL: &str = "correspondence";

/// The basic class correspondence P: class `y`'s images carry the non-robust features of class
/// `P(y)` after encryption (paper §3.1, Eq. 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassCorrespondence {
    targets: Vec<u32>,
}

impl ClassCorrespondence {
    /// The owner's correspondence over `classes` classes: a uniform derangement drawn from the
    /// key's `adversarial/correspondence` subkey.
    pub fn from_key(key: &MasterKey, classes: usize) -> Result<Self, AdversarialError> {
        let mut rng = key.subkey(Scheme::Adversarial, CORRESPONDENCE_LABEL).rng();
        Self::derangement(&mut rng, classes)
    }

    /// A uniform derangement of `0..classes`: uniform permutations (Fisher–Yates) drawn until one
    /// has no fixed point. Rejection keeps the law exactly uniform over derangements; about
    /// `e ≈ 2.72` draws are needed on average, whatever the number of classes.
    pub fn derangement<R: Rng>(rng: &mut R, classes: usize) -> Result<Self, AdversarialError> {
        if classes < 2 {
            return Err(AdversarialError::Classes(classes));
        }
        let mut targets: Vec<u32> = (0..classes as u32).collect();
        loop {
            targets.shuffle(rng);
            if targets.iter().enumerate().all(|(y, &t)| y as u32 != t) {
                return Ok(Self { targets });
            }
        }
    }

    /// A correspondence from explicit targets (`targets[y] = P(y)`): any map into the classes,
    /// as the attacker of §3.4 enumerates, not only permutations.
    pub fn from_targets(targets: Vec<u32>) -> Result<Self, AdversarialError> {
        let k = targets.len();
        if k < 2 {
            return Err(AdversarialError::Classes(k));
        }
        if let Some(&bad) = targets.iter().find(|&&t| t as usize >= k) {
            return Err(AdversarialError::Invalid(format!(
                "target class {bad} is out of range for {k} classes"
            )));
        }
        Ok(Self { targets })
    }

    /// P(y).
    pub fn target(&self, class: u32) -> u32 {
        self.targets[class as usize]
    }

    /// `P(0), P(1), …`.
    pub fn targets(&self) -> &[u32] {
        &self.targets
    }

    /// The number of classes.
    pub fn classes(&self) -> usize {
        self.targets.len()
    }

    /// The target of each label.
    pub fn targets_of(&self, labels: &[u32]) -> Vec<u32> {
        labels.iter().map(|&y| self.target(y)).collect()
    }

    /// Whether P is a permutation (every class is some class's target).
    pub fn is_permutation(&self) -> bool {
        let mut seen = vec![false; self.targets.len()];
        self.targets.iter().for_each(|&t| seen[t as usize] = true);
        seen.into_iter().all(|s| s)
    }
}

/// Targets drawn per image, uniformly among the other classes: the **R** setting of the
/// paper's Table 1 (R+Orig), which shows that a *fixed* correspondence is what makes the
/// encryption work.
pub fn random_targets<R: Rng>(rng: &mut R, labels: &[u32], classes: usize) -> Vec<u32> {
    labels
        .iter()
        .map(|&y| {
            let t = rng.random_range(0..classes as u32 - 1);
            if t >= y { t + 1 } else { t }
        })
        .collect()
}

/// [`random_targets`] drawn from the key's `adversarial/random-targets` subkey (the R setting
/// of an experiment, reproducible from its key).
pub fn random_targets_from_key(key: &MasterKey, labels: &[u32], classes: usize) -> Vec<u32> {
    let mut rng = key.subkey(Scheme::Adversarial, "random-targets").rng();
    random_targets(&mut rng, labels, classes)
}

/// How the perturbed copies of an image are merged (paper §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CombineMethod {
    /// Two targets per class: the left part of the first copy beside the right part of the
    /// second, split at the class's secret ratio (§4.2.1).
    HorizontalConcat,
    /// Four targets per class: copies 1 and 2 mixed with the class's first weight, copies 3 and
    /// 4 with its second, and the two mixtures concatenated at its ratio (§4.2.2).
    MixupConcat,
}

impl CombineMethod {
    /// N(y), the targets per class.
    pub fn targets_per_class(self) -> usize {
        match self {
            Self::HorizontalConcat => 2,
            Self::MixupConcat => 4,
        }
    }

    /// The subkey label (`combined/horizontal-concat`, `combined/mixup-concat`).
    pub fn label(self) -> &'static str {
        match self {
            Self::HorizontalConcat => "combined/horizontal-concat",
            Self::MixupConcat => "combined/mixup-concat",
        }
    }

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::HorizontalConcat => "horizontal-concat",
            Self::MixupConcat => "mixup-concat",
        }
    }
}

/// The secret ratios and weights are drawn uniformly from this range: far enough from 0 and 1
/// that each part carries its targets' features (the paper's Table 5 shows accuracy falling as
/// one part shrinks), wide enough that the attacker must search for them.
pub const SECRET_RANGE: (f32, f32) = (0.3, 0.7);

/// The combined correspondence (paper §4.1): N(y) distinct targets per class, none of them `y`,
/// a composition ratio per class (the share of columns taken from the left part) and, for
/// Mixup-and-Concat, two mixing weights per class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CombinedKey {
    /// The merging method.
    pub method: CombineMethod,
    /// `targets[y]`: the N(y) target classes of class `y`, in merge order.
    pub targets: Vec<Vec<u32>>,
    /// `ratios[y]`: the share of the width taken from the left part, in [`SECRET_RANGE`].
    pub ratios: Vec<f32>,
    /// `weights[y]`: Mixup's weights of copy 1 (against 2) and copy 3 (against 4), in
    /// [`SECRET_RANGE`]; unused by Horizontal Concat.
    pub weights: Vec<[f32; 2]>,
}

impl CombinedKey {
    /// The owner's combined key for `method` over `classes` classes, drawn from the key's
    /// `adversarial/combined/<method>` subkey.
    pub fn from_key(
        key: &MasterKey,
        classes: usize,
        method: CombineMethod,
    ) -> Result<Self, AdversarialError> {
        let mut rng = key.subkey(Scheme::Adversarial, method.label()).rng();
        Self::draw(&mut rng, classes, method)
    }

    /// Draws a combined key: for each class, N distinct targets among the other classes
    /// (uniformly), a ratio and two weights uniform in [`SECRET_RANGE`].
    pub fn draw<R: Rng>(
        rng: &mut R,
        classes: usize,
        method: CombineMethod,
    ) -> Result<Self, AdversarialError> {
        let n = method.targets_per_class();
        if classes < n + 1 {
            return Err(AdversarialError::TooFewClasses {
                method: method.name(),
                need: n + 1,
                classes,
            });
        }
        let (lo, hi) = SECRET_RANGE;
        let mut targets = Vec::with_capacity(classes);
        let mut ratios = Vec::with_capacity(classes);
        let mut weights = Vec::with_capacity(classes);
        for y in 0..classes as u32 {
            let mut others: Vec<u32> = (0..classes as u32).filter(|&c| c != y).collect();
            others.shuffle(rng);
            others.truncate(n);
            targets.push(others);
            ratios.push(lo + (hi - lo) * rng.random::<f32>());
            weights.push([
                lo + (hi - lo) * rng.random::<f32>(),
                lo + (hi - lo) * rng.random::<f32>(),
            ]);
        }
        Ok(Self {
            method,
            targets,
            ratios,
            weights,
        })
    }

    /// The number of classes.
    pub fn classes(&self) -> usize {
        self.targets.len()
    }

    /// The j-th target of each label (the target of copy `j`).
    pub fn targets_of(&self, labels: &[u32], j: usize) -> Vec<u32> {
        labels
            .iter()
            .map(|&y| self.targets[y as usize][j])
            .collect()
    }

    /// Candidates an attacker who knows the method, N and every ratio and weight must try to
    /// find all targets by the paper's per-class enumeration (§4.3): `K · K^N` ordered target
    /// tuples (the paper's 1,000 for Horizontal Concat on ten classes). Unknown ratios and
    /// weights multiply it further.
    pub fn search_space(&self) -> f64 {
        let k = self.classes() as f64;
        k * k.powi(self.method.targets_per_class() as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn key(i: u32) -> MasterKey {
        let mut b = [7u8; 32];
        b[..4].copy_from_slice(&i.to_le_bytes());
        MasterKey::from_bytes(b)
    }

    /// Pinned: changing the derivation would give an owner's existing key another
    /// correspondence, and their encrypted sets would no longer match their key.
    #[test]
    fn the_test_key_gives_the_pinned_correspondence() {
        let key = crate::crypto::testvectors::test_key();
        let p = ClassCorrespondence::from_key(&key, 10).unwrap();
        assert_eq!(p.targets(), PINNED_P, "{:?}", p.targets());
        let c = CombinedKey::from_key(&key, 10, CombineMethod::HorizontalConcat).unwrap();
        assert_eq!(c.targets[0], PINNED_HC0, "{:?}", c.targets[0]);
    }

    const PINNED_P: &[u32] = &[4, 2, 3, 6, 1, 7, 8, 0, 9, 5];
    const PINNED_HC0: [u32; 2] = [8, 4];

    #[test]
    fn the_correspondence_is_a_derangement_fixed_by_the_key() {
        for k in [2usize, 3, 10, 100] {
            let p = ClassCorrespondence::from_key(&key(1), k).unwrap();
            assert!(p.is_permutation());
            assert!(p.targets().iter().enumerate().all(|(y, &t)| y as u32 != t));
            assert_eq!(p, ClassCorrespondence::from_key(&key(1), k).unwrap());
        }
        assert_ne!(
            ClassCorrespondence::from_key(&key(1), 10).unwrap(),
            ClassCorrespondence::from_key(&key(2), 10).unwrap()
        );
        assert!(matches!(
            ClassCorrespondence::from_key(&key(1), 1),
            Err(AdversarialError::Classes(1))
        ));
    }

    /// Over 9,000 keys, the 9 derangements of 4 classes come up equally often: Pearson's
    /// chi-square with 8 degrees of freedom stays below 26.12, its 0.1 % critical value.
    #[test]
    fn derangements_are_uniform_over_keys() {
        let mut counts = std::collections::BTreeMap::<Vec<u32>, usize>::new();
        let keys = 9000;
        for i in 0..keys {
            let p = ClassCorrespondence::from_key(&key(i), 4).unwrap();
            *counts.entry(p.targets().to_vec()).or_default() += 1;
        }
        assert_eq!(counts.len(), 9, "{counts:?}");
        let expected = keys as f64 / 9.0;
        let chi2: f64 = counts
            .values()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum();
        assert!(chi2 < 26.12, "chi-square {chi2:.2} over {counts:?}");
    }

    /// The random targets of the R setting avoid the label and are uniform over the others.
    #[test]
    fn random_targets_avoid_the_label_uniformly() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let labels = vec![2u32; 9000];
        let t = random_targets(&mut rng, &labels, 4);
        let mut counts = [0usize; 4];
        t.iter().for_each(|&c| counts[c as usize] += 1);
        assert_eq!(counts[2], 0);
        for c in [0, 1, 3] {
            assert!((2850..3150).contains(&counts[c]), "{counts:?}");
        }
    }

    #[test]
    fn combined_keys_draw_distinct_targets_and_secret_ratios() {
        for method in [CombineMethod::HorizontalConcat, CombineMethod::MixupConcat] {
            let c = CombinedKey::from_key(&key(5), 10, method).unwrap();
            assert_eq!(c, CombinedKey::from_key(&key(5), 10, method).unwrap());
            for (y, t) in c.targets.iter().enumerate() {
                assert_eq!(t.len(), method.targets_per_class());
                assert!(!t.contains(&(y as u32)));
                let mut s = t.clone();
                s.sort_unstable();
                s.dedup();
                assert_eq!(s.len(), t.len());
            }
            let (lo, hi) = SECRET_RANGE;
            assert!(c.ratios.iter().all(|r| (lo..=hi).contains(r)));
            assert!(c.weights.iter().flatten().all(|w| (lo..=hi).contains(w)));
            // The ratios differ between classes (they are secret per class).
            assert!(c.ratios.windows(2).any(|w| (w[0] - w[1]).abs() > 1e-3));
        }
        assert_ne!(
            CombinedKey::from_key(&key(5), 10, CombineMethod::HorizontalConcat)
                .unwrap()
                .targets,
            CombinedKey::from_key(&key(6), 10, CombineMethod::HorizontalConcat)
                .unwrap()
                .targets
        );
        assert!(matches!(
            CombinedKey::from_key(&key(5), 4, CombineMethod::MixupConcat),
            Err(AdversarialError::TooFewClasses { need: 5, .. })
        ));
        assert_eq!(
            CombinedKey::from_key(&key(5), 10, CombineMethod::HorizontalConcat)
                .unwrap()
                .search_space(),
            1000.0
        );
    }
}
