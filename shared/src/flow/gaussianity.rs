//! How far a learned latent distribution is from N(0, I): the quantity that bounds what flow
//! rotation's Theorem 1 lets an adversary learn about the key (the better the flow Gaussianises
//! the data, the closer the total-variation term δ is to 0).
//!
//! Total variation in hundreds of dimensions cannot be estimated from a few thousand samples, so
//! the probe reports cheap, documented proxies: per-dimension moments, and the sliced
//! 1-Wasserstein distance between the latents and N(0, I) over random directions, beside the same
//! distance for a genuine Gaussian sample of the same size (the estimator's noise floor).

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use crate::crypto::gaussian::gaussian_fill;

/// The probe's figures.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GaussianityReport {
    /// Samples and dimensions.
    pub samples: usize,
    /// Dimensions.
    pub dims: usize,
    /// Mean over dimensions of |mean| (0 for N(0, I)).
    pub mean_abs_mean: f64,
    /// Mean over dimensions of |variance − 1|.
    pub mean_abs_var_error: f64,
    /// Mean over dimensions of |skewness|.
    pub mean_abs_skewness: f64,
    /// Mean over dimensions of |excess kurtosis|.
    pub mean_abs_excess_kurtosis: f64,
    /// Sliced 1-Wasserstein distance to N(0, I) over random unit directions.
    pub sliced_wasserstein: f64,
    /// The same statistic for a true N(0, I) sample of the same size: values near it mean the
    /// probe cannot tell the latents from Gaussian.
    pub sliced_wasserstein_gaussian_floor: f64,
}

impl std::fmt::Display for GaussianityReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Gaussianity of {} latents in {} dims: |mean| {:.3}, |var−1| {:.3}, |skew| {:.3}, |excess kurtosis| {:.3}; sliced W1 to N(0,I) {:.4} (a true Gaussian sample: {:.4})",
            self.samples,
            self.dims,
            self.mean_abs_mean,
            self.mean_abs_var_error,
            self.mean_abs_skewness,
            self.mean_abs_excess_kurtosis,
            self.sliced_wasserstein,
            self.sliced_wasserstein_gaussian_floor
        )
    }
}

/// Probes row-major latents `[n, dims]` with `directions` random projections (seeded).
pub fn probe(latents: &[f32], dims: usize, directions: usize, seed: u64) -> GaussianityReport {
    let n = latents.len() / dims.max(1);
    let (mut m, mut v, mut s, mut k) = (0.0, 0.0, 0.0, 0.0);
    for d in 0..dims {
        let col: Vec<f64> = (0..n).map(|i| f64::from(latents[i * dims + d])).collect();
        let mean = col.iter().sum::<f64>() / n as f64;
        let var = col.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        let sd = var.sqrt().max(1e-12);
        let skew = col.iter().map(|x| ((x - mean) / sd).powi(3)).sum::<f64>() / n as f64;
        let kurt = col.iter().map(|x| ((x - mean) / sd).powi(4)).sum::<f64>() / n as f64 - 3.0;
        m += mean.abs();
        v += (var - 1.0).abs();
        s += skew.abs();
        k += kurt.abs();
    }
    let dn = dims.max(1) as f64;
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut gauss = vec![0.0f64; n * dims];
    gaussian_fill(&mut rng, &mut gauss);
    let gauss32: Vec<f32> = gauss.iter().map(|&x| x as f32).collect();
    let mut dirs = vec![0.0f64; directions * dims];
    gaussian_fill(&mut rng, &mut dirs);
    let sw = sliced_w1(latents, dims, &dirs, directions);
    let floor = sliced_w1(&gauss32, dims, &dirs, directions);
    GaussianityReport {
        samples: n,
        dims,
        mean_abs_mean: m / dn,
        mean_abs_var_error: v / dn,
        mean_abs_skewness: s / dn,
        mean_abs_excess_kurtosis: k / dn,
        sliced_wasserstein: sw,
        sliced_wasserstein_gaussian_floor: floor,
    }
}

/// Mean over directions of W1(projection of the sample, N(0, 1)), comparing sorted projections to
/// the standard normal quantiles Φ⁻¹((i − ½)/n).
fn sliced_w1(x: &[f32], dims: usize, dirs: &[f64], directions: usize) -> f64 {
    let n = x.len() / dims.max(1);
    let quantiles: Vec<f64> = (0..n)
        .map(|i| normal_quantile((i as f64 + 0.5) / n as f64))
        .collect();
    let mut total = 0.0;
    for u in dirs.chunks_exact(dims).take(directions) {
        let norm = u.iter().map(|a| a * a).sum::<f64>().sqrt().max(1e-12);
        let mut proj: Vec<f64> = (0..n)
            .map(|i| {
                x[i * dims..(i + 1) * dims]
                    .iter()
                    .zip(u)
                    .map(|(a, b)| f64::from(*a) * b)
                    .sum::<f64>()
                    / norm
            })
            .collect();
        proj.sort_by(f64::total_cmp);
        total += proj
            .iter()
            .zip(&quantiles)
            .map(|(a, b)| (a - b).abs())
            .sum::<f64>()
            / n as f64;
    }
    total / directions.max(1) as f64
}

/// Φ⁻¹(p) by Acklam's rational approximation (relative error < 1.2e-9), written out because no
/// small crate in the workspace provides it.
#[allow(clippy::excessive_precision)] // the published coefficients, verbatim
fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.383577518672690e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_right() {
        assert!((normal_quantile(0.5)).abs() < 1e-12);
        assert!((normal_quantile(0.975) - 1.959963984540054).abs() < 1e-8);
        assert!((normal_quantile(0.001) + 3.090232306167813).abs() < 1e-7);
    }

    #[test]
    fn gaussian_data_sits_at_the_floor_and_uniform_data_does_not() {
        let (n, d) = (2000, 16);
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let mut g = vec![0.0f64; n * d];
        gaussian_fill(&mut rng, &mut g);
        let g: Vec<f32> = g.iter().map(|&x| x as f32).collect();
        let r = probe(&g, d, 64, 1);
        assert!(
            r.sliced_wasserstein < 2.0 * r.sliced_wasserstein_gaussian_floor + 0.01,
            "{r}"
        );
        assert!(r.mean_abs_excess_kurtosis < 0.3, "{r}");
        // Uniform on [−√3, √3]: unit variance, but excess kurtosis −1.2 per dimension.
        let u: Vec<f32> = (0..n * d)
            .map(|i| (((i * 7919) % 1000) as f32 / 1000.0 - 0.5) * 2.0 * 3f32.sqrt())
            .collect();
        let r = probe(&u, d, 64, 1);
        assert!((r.mean_abs_excess_kurtosis - 1.2).abs() < 0.1, "{r}");
        // A shifted Gaussian is far from N(0, I) along most directions.
        let shifted: Vec<f32> = g.iter().map(|x| x + 1.0).collect();
        let r = probe(&shifted, d, 64, 1);
        assert!(
            r.sliced_wasserstein > 10.0 * r.sliced_wasserstein_gaussian_floor,
            "{r}"
        );
    }
}
