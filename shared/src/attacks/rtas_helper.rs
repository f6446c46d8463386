//! What RTAS's helper learns (issue: measure the paper's "1/n! reconstructive privacy", §3.1).
//!
//! In RTAS the helper reconstructs every non-linear function's input, permuted (§4.2.1). A
//! permutation hides the order of the vector, not its multiset: the sorted values of one image's
//! first-layer pre-activations are a fingerprint of the image. In RTAS-fast the helper receives
//! the first layer's output X·W₀ + b₀ unpermuted (§4.2.2), a linear map of the image.
//!
//! The attacks here read only what the helper reconstructs, plus labelled or known examples that
//! the experiment states (a helper that learns the labels of some queries, or that knows some of
//! the images that pass through the service, as in a known-plaintext attack):
//! - [`quantiles`] summarises a permuted view by its sorted values, and [`knn_average`] predicts a
//!   view's class (or its batch's label histogram) from the nearest labelled views;
//! - [`LinearMap`] fits RTAS-fast's first layer from known (image, output) pairs by least squares
//!   and inverts it on any other output.

use nalgebra::DMatrix;

/// `q` evenly spaced quantiles of the sorted `values` (the multiset the helper learns, at a
/// fixed length whatever the batch).
pub fn quantiles(values: &[f64], q: usize) -> Vec<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n == 0 {
        return vec![0.0; q];
    }
    (0..q)
        .map(|i| {
            let at = (i as f64 + 0.5) / q as f64 * (n - 1) as f64;
            let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
            let t = at - lo as f64;
            sorted[lo] * (1.0 - t) + sorted[hi] * t
        })
        .collect()
}

/// Per-feature mean and standard deviation of the labelled views, so no feature dominates the
/// distance.
fn standardiser(rows: &[Vec<f64>]) -> (Vec<f64>, Vec<f64>) {
    let d = rows.first().map_or(0, Vec::len);
    let n = rows.len().max(1) as f64;
    let mean: Vec<f64> = (0..d)
        .map(|j| rows.iter().map(|r| r[j]).sum::<f64>() / n)
        .collect();
    let sd = (0..d)
        .map(|j| {
            let v = rows.iter().map(|r| (r[j] - mean[j]).powi(2)).sum::<f64>() / n;
            v.sqrt().max(1e-12)
        })
        .collect();
    (mean, sd)
}

/// For each query, the mean target of its `k` nearest labelled views (Euclidean distance on
/// standardised features). With one-hot targets the argmax is a k-NN classifier; with label
/// histograms it estimates a batch's histogram.
pub fn knn_average(
    known: &[Vec<f64>],
    targets: &[Vec<f64>],
    queries: &[Vec<f64>],
    k: usize,
) -> Vec<Vec<f64>> {
    assert_eq!(known.len(), targets.len(), "one target per known view");
    let (mean, sd) = standardiser(known);
    let z = |r: &Vec<f64>| -> Vec<f64> {
        r.iter()
            .zip(&mean)
            .zip(&sd)
            .map(|((x, m), s)| (x - m) / s)
            .collect()
    };
    let known_z: Vec<Vec<f64>> = known.iter().map(z).collect();
    let width = targets.first().map_or(0, Vec::len);
    queries
        .iter()
        .map(|q| {
            let qz = z(q);
            let mut d: Vec<(f64, usize)> = known_z
                .iter()
                .enumerate()
                .map(|(i, r)| (r.iter().zip(&qz).map(|(a, b)| (a - b).powi(2)).sum(), i))
                .collect();
            let k = k.min(d.len()).max(1);
            d.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0));
            let mut avg = vec![0.0; width];
            for &(_, i) in &d[..k] {
                for (a, t) in avg.iter_mut().zip(&targets[i]) {
                    *a += t / k as f64;
                }
            }
            avg
        })
        .collect()
}

/// The index of the largest entry.
pub fn argmax(v: &[f64]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f64::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
        .0
}

/// Σ|a − b|: 0 for equal histograms, 2 for disjoint ones.
pub fn l1(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum()
}

/// The class fractions of `labels` over `classes` classes.
pub fn histogram(labels: &[u32], classes: usize) -> Vec<f64> {
    let mut h = vec![0.0; classes];
    for &y in labels {
        if (y as usize) < classes {
            h[y as usize] += 1.0 / labels.len() as f64;
        }
    }
    h
}

/// An affine map z = x·M + c fitted from known pairs: RTAS-fast's first layer, as its helper can
/// learn it.
#[derive(Debug, Clone)]
pub struct LinearMap {
    /// d × w.
    m: DMatrix<f64>,
    /// 1 × w.
    c: DMatrix<f64>,
    /// M⁺ (w × d), the Moore–Penrose inverse, computed once.
    inverse: DMatrix<f64>,
}

impl LinearMap {
    /// Least squares on `n` known (image, first-layer output) pairs; exact once n > d and the
    /// images span ℝᵈ.
    pub fn fit(images: &[Vec<f64>], outputs: &[Vec<f64>]) -> Option<Self> {
        let (n, d, w) = (images.len(), images.first()?.len(), outputs.first()?.len());
        let x = DMatrix::from_fn(n, d + 1, |i, j| if j < d { images[i][j] } else { 1.0 });
        let z = DMatrix::from_fn(n, w, |i, j| outputs[i][j]);
        let sol = x.svd(true, true).solve(&z, 1e-9).ok()?;
        let m = sol.rows(0, d).into_owned();
        let inverse = m.clone().pseudo_inverse(1e-9).ok()?;
        Some(Self {
            m,
            c: sol.rows(d, 1).into_owned(),
            inverse,
        })
    }

    /// The least-squares (minimum-norm where M has a null space) image of an output.
    pub fn invert(&self, output: &[f64]) -> Option<Vec<f64>> {
        let w = self.m.ncols();
        if output.len() != w {
            return None;
        }
        let z = DMatrix::from_fn(1, w, |_, j| output[j]) - &self.c;
        Some((z * &self.inverse).iter().copied().collect())
    }

    /// The map's output for `image`.
    pub fn apply(&self, image: &[f64]) -> Vec<f64> {
        let x = DMatrix::from_fn(1, image.len(), |_, j| image[j]);
        (x * &self.m + &self.c).iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_ignore_order() {
        let a = [3.0, 1.0, 2.0, 5.0, 4.0];
        let b = [5.0, 4.0, 3.0, 2.0, 1.0];
        assert_eq!(quantiles(&a, 4), quantiles(&b, 4));
        assert_eq!(quantiles(&a, 5), vec![1.4, 2.2, 3.0, 3.8, 4.6]);
    }

    #[test]
    fn knn_reads_the_class_of_separated_views() {
        let known = vec![
            vec![0.0, 0.0],
            vec![0.1, 0.0],
            vec![5.0, 5.0],
            vec![5.1, 5.0],
        ];
        let targets = vec![
            vec![1.0, 0.0],
            vec![1.0, 0.0],
            vec![0.0, 1.0],
            vec![0.0, 1.0],
        ];
        let got = knn_average(&known, &targets, &[vec![4.9, 5.2], vec![0.2, -0.1]], 2);
        assert_eq!(
            got.iter().map(|v| argmax(v)).collect::<Vec<_>>(),
            vec![1, 0]
        );
    }

    #[test]
    fn a_linear_layer_is_inverted_from_d_plus_one_pairs() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let (d, w) = (6, 9);
        let m: Vec<f64> = (0..d * w).map(|_| rng.random_range(-1.0..1.0)).collect();
        let layer = |x: &[f64]| -> Vec<f64> {
            (0..w)
                .map(|j| 0.5 + (0..d).map(|i| x[i] * m[i * w + j]).sum::<f64>())
                .collect()
        };
        let images: Vec<Vec<f64>> = (0..d + 1)
            .map(|_| (0..d).map(|_| rng.random()).collect())
            .collect();
        let outputs: Vec<Vec<f64>> = images.iter().map(|x| layer(x)).collect();
        let fit = LinearMap::fit(&images, &outputs).unwrap();
        let secret: Vec<f64> = (0..d).map(|_| rng.random()).collect();
        let back = fit.invert(&layer(&secret)).unwrap();
        for (a, b) in back.iter().zip(&secret) {
            assert!((a - b).abs() < 1e-8, "{a} vs {b}");
        }
    }
}
