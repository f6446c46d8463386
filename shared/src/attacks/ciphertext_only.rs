//! Ciphertext-only key recovery against flow rotation: Theorem 1 of "Secure Data Sharing With
//! Flow Model" (Wu, Du, Yuan) made concrete.
//!
//! The attacker holds the public flows, other images of the domain (so the latents `z = f(x)` of
//! the data distribution) and ciphertexts only (so `z′ = g(c) = τ·A·z` for images it never saw).
//! Theorem 1 bounds what it can learn about `A` by how far the latents are from N(0, I): if they
//! were exactly Gaussian, a rotation would leave their distribution unchanged and nothing could
//! be matched. An imperfect flow leaves structure, and **moment matching** finds `A` from it:
//!
//! - Second moments: `E[z′z′ᵀ]/τ² = A·E[zzᵀ]·Aᵀ`. With eigendecompositions `E[zzᵀ] = V·Λ·Vᵀ`
//!   and `E[z′z′ᵀ]/τ² = U·Λ·Uᵀ`, `A·V = U·S` for a diagonal of signs `S`, wherever the
//!   eigenvalues are distinct enough to be told apart from the sampling noise.
//! - Signs: the first and third moments of each eigen-direction's projections must agree on both
//!   sides (a rotation keeps them).
//!
//! The attack recovers the directions in which the flow's latents are most anisotropic first; a
//! flow whose latents are near N(0, I) (a low sliced-W1 distance) leaves it only noise.

use nalgebra::{DMatrix, DVector};

use super::known_plaintext::{KnownPlaintextError, RecoveredRotation};

/// What moment matching found.
#[derive(Debug, Clone)]
pub struct MomentMatch {
    /// `Â` on every direction: each eigenvector of the data's second moments sent to the
    /// ciphertexts' of the same rank.
    pub rotation: RecoveredRotation,
    /// `Â` on the directions whose eigenvalue stands apart from its neighbours by more than the
    /// sampling noise (the others are a coin toss among near-equal eigenvalues): decrypting with
    /// it puts the rest at the prior's mean, which never does worse than guessing.
    pub confident: RecoveredRotation,
}

/// Eigenvalues closer to a neighbour than this many standard errors (`λ·√(2/n)` for `n`
/// samples) are taken as indistinguishable.
pub const GAP_STANDARD_ERRORS: f64 = 3.0;

/// Moment matching: `A` from data latents `data` and ciphertext latents `cipher` (rows of `dim`
/// values, of different images: the attacker never has pairs), with the public scale τ.
pub fn moment_matching(
    data: &[f32],
    cipher: &[f32],
    dim: usize,
    scale: f64,
) -> Result<MomentMatch, KnownPlaintextError> {
    if dim == 0 || !data.len().is_multiple_of(dim) || !cipher.len().is_multiple_of(dim) {
        return Err(KnownPlaintextError::Shape {
            plain: data.len(),
            cipher: cipher.len(),
            dim,
        });
    }
    if data.is_empty() || cipher.is_empty() {
        return Err(KnownPlaintextError::Empty);
    }
    for (i, row) in data.chunks(dim).chain(cipher.chunks(dim)).enumerate() {
        if !row.iter().all(|v| v.is_finite()) {
            return Err(KnownPlaintextError::NonFinite(i));
        }
    }
    let z = columns(data, dim, 1.0);
    let zc = columns(cipher, dim, 1.0 / scale);
    let (v, lambda) = eigen(&z);
    let (u, _) = eigen(&zc);
    let samples = z.ncols().min(zc.ncols()) as f64;
    // Signs: standardised first and third moments along each direction must agree.
    let signs = DVector::from_iterator(
        dim,
        (0..dim).map(|i| {
            let (ma, ka) = moments(&z, &v.column(i).into_owned());
            let (mb, kb) = moments(&zc, &u.column(i).into_owned());
            if ma * mb + ka * kb < 0.0 { -1.0 } else { 1.0 }
        }),
    );
    let u = u * DMatrix::from_diagonal(&signs);
    let noise = |l: f64| GAP_STANDARD_ERRORS * l.abs() * (2.0 / samples).sqrt();
    let confident: Vec<usize> = (0..dim)
        .filter(|&i| {
            let below = if i + 1 < dim {
                lambda[i] - lambda[i + 1]
            } else {
                f64::INFINITY
            };
            let above = if i > 0 {
                lambda[i - 1] - lambda[i]
            } else {
                f64::INFINITY
            };
            below.min(above) > noise(lambda[i])
        })
        .collect();
    Ok(MomentMatch {
        confident: RecoveredRotation::from_bases(
            u.select_columns(&confident),
            v.select_columns(&confident),
            scale,
        ),
        rotation: RecoveredRotation::from_bases(u, v, scale),
    })
}

/// Rows of `dim` values as the columns of an `m × n` matrix, times `factor`.
fn columns(rows: &[f32], dim: usize, factor: f64) -> DMatrix<f64> {
    DMatrix::from_iterator(
        dim,
        rows.len() / dim,
        rows.iter().map(|&v| f64::from(v) * factor),
    )
}

/// The eigenvectors of the second-moment matrix `Z·Zᵀ/n`, by decreasing eigenvalue, and the
/// eigenvalues.
fn eigen(z: &DMatrix<f64>) -> (DMatrix<f64>, Vec<f64>) {
    let n = z.ncols() as f64;
    let second = (z * z.transpose()) / n;
    let eig = second.symmetric_eigen();
    let mut order: Vec<usize> = (0..eig.eigenvalues.len()).collect();
    order.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
    let values = order.iter().map(|&i| eig.eigenvalues[i]).collect();
    (eig.eigenvectors.select_columns(&order), values)
}

/// The mean and the third moment of the projections `wᵀz`, standardised by their second
/// moment.
fn moments(z: &DMatrix<f64>, w: &DVector<f64>) -> (f64, f64) {
    let p = z.transpose() * w;
    let n = p.len() as f64;
    let second = (p.iter().map(|x| x * x).sum::<f64>() / n).sqrt().max(1e-12);
    let mean = p.iter().sum::<f64>() / n / second;
    let third = p.iter().map(|x| (x / second).powi(3)).sum::<f64>() / n;
    (mean, third)
}

/// Which candidate flow decoded ciphertexts, without pairs: a rotation keeps every latent's
/// norm, so the right `g` gives ciphertext latent norms `‖g(c)‖/τ` distributed as the data's
/// `‖f(x)‖`. Returns per candidate the Kolmogorov–Smirnov distance of the two samples of norms
/// (∞ for a candidate under which a ciphertext's latent is not finite) and the best candidate.
pub fn decoder_by_norms(
    data: &[f32],
    candidates: &[Vec<f32>],
    dim: usize,
    scale: f64,
) -> (usize, Vec<f64>) {
    let norms = |rows: &[f32], factor: f64| -> Vec<f64> {
        let mut v: Vec<f64> = rows
            .chunks(dim)
            .map(|r| r.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt() * factor)
            .collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let reference = norms(data, 1.0);
    let distances: Vec<f64> = candidates
        .iter()
        .map(|c| {
            if !c.iter().all(|v| v.is_finite()) {
                return f64::INFINITY;
            }
            ks_distance(&reference, &norms(c, 1.0 / scale))
        })
        .collect();
    let best = (0..distances.len())
        .min_by(|&a, &b| distances[a].total_cmp(&distances[b]))
        .unwrap_or(0);
    (best, distances)
}

/// The two-sample Kolmogorov–Smirnov statistic of two sorted samples.
fn ks_distance(a: &[f64], b: &[f64]) -> f64 {
    let (mut i, mut j, mut d) = (0, 0, 0.0f64);
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / a.len() as f64 - j as f64 / b.len() as f64).abs());
    }
    d
}

/// `‖Â − A‖_F / ‖A‖_F` for row-major `m × m` matrices (`‖A‖_F = √m` for a rotation): 0 for the
/// key itself, about √2 for an unrelated rotation.
pub fn relative_error(recovered: &[f64], truth: &[f64]) -> f64 {
    let m = (truth.len() as f64).sqrt();
    recovered
        .iter()
        .zip(truth)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f64>()
        .sqrt()
        / m.sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attacks::known_plaintext::tests::rotate_rows as rotate;
    use crate::crypto::haar::HaarRotation;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// Latents with distinct variances per axis and a skew: what an imperfect flow leaves.
    fn anisotropic(rng: &mut ChaCha8Rng, n: usize, m: usize, spread: f64) -> Vec<f32> {
        let mut g = vec![0.0f64; n * m];
        crate::crypto::gaussian::gaussian_fill(rng, &mut g);
        g.chunks(m)
            .flat_map(|row| {
                row.iter().enumerate().map(move |(j, &x)| {
                    let sd = 1.0 + spread * (m - j) as f64 / m as f64;
                    (sd * (x + 0.3 * (x * x - 1.0))) as f32
                })
            })
            .collect()
    }

    /// Clearly anisotropic latents give the rotation back from ciphertexts alone (different
    /// images on the two sides); isotropic Gaussian latents (Theorem 1's ideal flow) give
    /// nothing better than a random rotation.
    #[test]
    fn anisotropy_is_what_leaks_the_key() {
        let m = 12;
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        let a = HaarRotation::sample_householder(&mut rng, m);
        let truth = a.entries().to_vec();
        let data = anisotropic(&mut rng, 20_000, m, 3.0);
        let secret = anisotropic(&mut rng, 20_000, m, 3.0);
        let got = moment_matching(&data, &rotate(&a, &secret, 0.5), m, 0.5).unwrap();
        let err = relative_error(&got.rotation.rotation().unwrap(), &truth);
        assert!(err < 0.1, "anisotropic latents: error {err}");
        assert_eq!(got.confident.rank(), m);

        let mut iso = vec![0.0f64; 2 * 20_000 * m];
        crate::crypto::gaussian::gaussian_fill(&mut rng, &mut iso);
        let iso: Vec<f32> = iso.into_iter().map(|x| x as f32).collect();
        let (d, c) = iso.split_at(20_000 * m);
        let got = moment_matching(d, &rotate(&a, c, 1.0), m, 1.0).unwrap();
        let err = relative_error(&got.rotation.rotation().unwrap(), &truth);
        assert!(err > 0.8, "Gaussian latents: error {err}");
        // Equal eigenvalues: no direction stands out.
        assert!(got.confident.rank() <= 2, "{}", got.confident.rank());
    }

    /// The norms tell the decoding flow apart from one that scales latents differently.
    #[test]
    fn norms_pick_the_decoder() {
        let m = 16;
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let data = anisotropic(&mut rng, 2_000, m, 1.0);
        let right = anisotropic(&mut rng, 2_000, m, 1.0);
        let wrong: Vec<f32> = anisotropic(&mut rng, 2_000, m, 1.0)
            .iter()
            .map(|v| v * 1.3)
            .collect();
        let (best, d) = decoder_by_norms(&data, &[wrong, right], m, 1.0);
        assert_eq!(best, 1, "{d:?}");
        assert!(d[0] > 0.2 && d[1] < 0.05, "{d:?}");
    }

    #[test]
    fn ks_of_equal_and_disjoint_samples() {
        assert_eq!(ks_distance(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]), 0.0);
        assert_eq!(ks_distance(&[1.0, 2.0], &[3.0, 4.0]), 1.0);
    }
}
