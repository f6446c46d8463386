//! Known-plaintext key recovery against flow rotation.
//!
//! Flow rotation's flows are public ("Secure Data Sharing With Flow Model", §3: only the rotation
//! `A` is secret), and so are the latent temperature τ and whether cover classes are on (they live
//! in the flows' manifest). An attacker who holds `n` pairs `(x, c = Enc(x))` of one class — a
//! leaked batch, images the factory itself planted in the owner's data — computes the plaintext
//! latents `z = f(x)` with the class's public flow and the ciphertext latents `z′ = g(c)` with
//! the decoding flow `g` (the class's own, or with cover classes one of the other classes'
//! flows, found by trying them all), and then has `z′ = τ·A·z` for every pair: `A` is the
//! solution of an orthogonal Procrustes problem (Schönemann 1966), `A = U·Vᵀ` for the SVD
//! `Σᵢ z′ᵢ·zᵢᵀ = U·Σ·Vᵀ`.
//!
//! With `n ≥ m` pairs in general position (`m` the image's dimensions) `A` comes out exactly, and
//! every other ciphertext of that class and key decrypts. With fewer, `A` is known on the span of
//! the known latents only: [`RecoveredRotation::unrotate`] recovers each other ciphertext's latent on
//! that span and puts the rest at the prior's mean, 0.
//!
//! Theorem 1 of the paper bounds what a *ciphertext-only* attacker learns; it says nothing about
//! known pairs, and this attack measures how few break a key.

use burn::prelude::*;
use nalgebra::DMatrix;

use crate::flow::glow::{Glow, Preprocess};
use crate::schemes::flow_rotation::public_latents;

/// Why the attack cannot run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KnownPlaintextError {
    /// The two sides do not hold the same number of latents of the same dimension.
    #[error(
        "{plain} plaintext latent values against {cipher} ciphertext latent values of dimension {dim}: the pairs do not match"
    )]
    Shape {
        /// Values on the plaintext side.
        plain: usize,
        /// Values on the ciphertext side.
        cipher: usize,
        /// The latent dimension.
        dim: usize,
    },
    /// A latent holds NaN or infinity (a ciphertext the flow could not encrypt).
    #[error("latent {0} is not finite")]
    NonFinite(usize),
    /// No pairs.
    #[error("the attack needs at least one known pair")]
    Empty,
}

/// A rotation `A` as far as an attack determined it: `A` restricted to a subspace (for `n` known
/// pairs, the span of their plaintext latents), `A·V_r = U_r` (both `m × r`, orthonormal columns,
/// `r ≤ m`), and the scale τ.
#[derive(Debug, Clone)]
pub struct RecoveredRotation {
    /// An orthonormal basis of the plaintext latents' span (`m × r`).
    v: DMatrix<f64>,
    /// Its image under `A` (`m × r`), a basis of the ciphertext latents' span.
    u: DMatrix<f64>,
    scale: f64,
    /// Singular values above [`RANK_TOLERANCE`] of the largest.
    spanned: usize,
}

/// A direction whose singular value is below this share of the largest is not spanned by the
/// pairs.
pub const RANK_TOLERANCE: f64 = 1e-12;

impl RecoveredRotation {
    /// Fits `z′ᵢ = scale·A·zᵢ` to the pairs, given as rows of `dim` values (`plain[i]` the
    /// plaintext latent of pair `i`, `cipher[i]` its ciphertext latent). `scale` is τ, public in
    /// Veil's manifests.
    ///
    /// `n < m` works in the pairs' span (two thin QR factorisations and an `n × n` SVD, O(m·n²));
    /// `n ≥ m` takes the SVD of the `m × m` cross-covariance (O(n·m² + m³)).
    pub fn procrustes(
        plain: &[f32],
        cipher: &[f32],
        dim: usize,
        scale: f64,
    ) -> Result<Self, KnownPlaintextError> {
        if dim == 0 || plain.len() != cipher.len() || !plain.len().is_multiple_of(dim) {
            return Err(KnownPlaintextError::Shape {
                plain: plain.len(),
                cipher: cipher.len(),
                dim,
            });
        }
        let n = plain.len() / dim;
        if n == 0 {
            return Err(KnownPlaintextError::Empty);
        }
        for (i, (p, c)) in plain.chunks(dim).zip(cipher.chunks(dim)).enumerate() {
            if !p.iter().chain(c).all(|v| v.is_finite()) {
                return Err(KnownPlaintextError::NonFinite(i));
            }
        }
        // Columns are latents: Z is m × n.
        let z = DMatrix::from_iterator(dim, n, plain.iter().map(|&v| f64::from(v)));
        let zc = DMatrix::from_iterator(dim, n, cipher.iter().map(|&v| f64::from(v)));
        if n >= dim {
            // The orthogonal polar factor of Σ z′·zᵀ is U·Vᵀ ([`polar_factor`]).
            let cross = &zc * z.transpose();
            if let Some(polar) = polar_factor(cross.clone()) {
                return Ok(Self {
                    v: DMatrix::identity(dim, dim),
                    u: polar,
                    scale,
                    spanned: dim,
                });
            }
            // Singular (pairs that repeat one another): the SVD below handles it.
        }
        let (u, v, singular) = if n < dim {
            // Σ z′·zᵀ = Q_c·(R_c·R_zᵀ)·Q_zᵀ; the SVD of the small middle factor gives U and V.
            let (qz, rz) = z.clone().qr().unpack();
            let (qc, rc) = zc.clone().qr().unpack();
            let svd = (rc * rz.transpose()).svd(true, true);
            let (uk, vk) = (svd.u.expect("u requested"), svd.v_t.expect("v requested"));
            (qc * uk, qz * vk.transpose(), svd.singular_values)
        } else {
            let svd = (&zc * z.transpose()).svd(true, true);
            let (uk, vk) = (svd.u.expect("u requested"), svd.v_t.expect("v requested"));
            (uk, vk.transpose(), svd.singular_values)
        };
        // Below m pairs, only the directions the pairs actually span (pairs that repeat one
        // another span fewer than n). From m on, every direction: `U·Vᵀ` is the least-squares
        // rotation even where the pairs determine it poorly.
        let top = singular.max();
        let spanned = (0..singular.len())
            .filter(|&i| singular[i] > top * RANK_TOLERANCE)
            .count();
        let (u, v) = if n < dim {
            let keep: Vec<usize> = (0..singular.len())
                .filter(|&i| singular[i] > top * RANK_TOLERANCE)
                .collect();
            (u.select_columns(&keep), v.select_columns(&keep))
        } else {
            (u, v)
        };
        Ok(Self {
            v,
            u,
            scale,
            spanned,
        })
    }

    /// [`RecoveredRotation::procrustes`], then again without the pairs that fit far worse than the rest
    /// (a relative residual over [`TRIM_FACTOR`] times the median), when enough remain to span
    /// as much as all did. A ciphertext stores pixels in f32, and a pixel near 0 or 1 keeps few
    /// bits of its logit, so a few pairs carry errors a hundred times the others': on the
    /// digits, one pair in 128 moved `Â`'s entries by 1e-5 where the rest agree to 1e-6.
    pub fn procrustes_trimmed(
        plain: &[f32],
        cipher: &[f32],
        dim: usize,
        scale: f64,
    ) -> Result<Self, KnownPlaintextError> {
        let first = Self::procrustes(plain, cipher, dim, scale)?;
        let residuals = first.pair_residuals(plain, cipher);
        let mut sorted = residuals.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        let keep: Vec<usize> = (0..residuals.len())
            .filter(|&i| residuals[i] <= TRIM_FACTOR * median)
            .collect();
        if keep.len() == residuals.len() || keep.len() < first.v.ncols() {
            return Ok(first);
        }
        let pick = |rows: &[f32]| -> Vec<f32> {
            keep.iter()
                .flat_map(|&i| rows[i * dim..(i + 1) * dim].iter().copied())
                .collect()
        };
        let second = Self::procrustes(&pick(plain), &pick(cipher), dim, scale)?;
        Ok(if second.v.ncols() == first.v.ncols() {
            second
        } else {
            first
        })
    }

    /// Per pair, `‖z′ − τ·Â·z‖ / ‖z′‖`.
    pub fn pair_residuals(&self, plain: &[f32], cipher: &[f32]) -> Vec<f64> {
        let (zc, fitted) = self.fitted(plain, cipher);
        (0..zc.ncols())
            .map(|i| {
                let c = zc.column(i);
                (c - fitted.column(i)).norm() / c.norm().max(f64::MIN_POSITIVE)
            })
            .collect()
    }

    /// The dimensions the pairs determine (`min(n, m)` for pairs in general position).
    pub fn rank(&self) -> usize {
        self.spanned
    }

    /// `A` known on the span of `v`'s columns: `A·v = u` (both `m × r` with orthonormal columns),
    /// with scale τ. Every attack ends here, however it found the bases.
    pub fn from_bases(u: DMatrix<f64>, v: DMatrix<f64>, scale: f64) -> Self {
        let spanned = v.ncols();
        Self {
            v,
            u,
            scale,
            spanned,
        }
    }

    /// A whole rotation, row-major `m × m` (a guess, or a rotation found elsewhere).
    pub fn from_matrix(entries: &[f64], m: usize, scale: f64) -> Self {
        Self::from_bases(
            DMatrix::from_row_slice(m, m, entries),
            DMatrix::identity(m, m),
            scale,
        )
    }

    /// `‖Z′ − τ·Â·Z‖ / ‖Z′‖` over pairs (rows of `plain` and `cipher`): ≈ 0 (f32 rounding) for
    /// the pairs of a fit when the decoding flow was the right one.
    pub fn relative_residual(&self, plain: &[f32], cipher: &[f32]) -> f64 {
        let (zc, fitted) = self.fitted(plain, cipher);
        (&zc - fitted).norm() / zc.norm().max(f64::MIN_POSITIVE)
    }

    /// The ciphertext latents as an `m × n` matrix, and `τ·Â·z` for their plaintext latents.
    fn fitted(&self, plain: &[f32], cipher: &[f32]) -> (DMatrix<f64>, DMatrix<f64>) {
        let m = self.v.nrows();
        let n = plain.len() / m;
        let z = DMatrix::from_iterator(m, n, plain.iter().map(|&v| f64::from(v)));
        let zc = DMatrix::from_iterator(m, n, cipher.iter().map(|&v| f64::from(v)));
        let fitted = &self.u * (self.v.transpose() * z) * self.scale;
        (zc, fitted)
    }

    /// `Â`, row-major `m × m`, from `m` pairs on (`None` below: `A` is then known on a subspace
    /// only).
    pub fn rotation(&self) -> Option<Vec<f64>> {
        let m = self.v.nrows();
        (self.v.ncols() == m).then(|| {
            let a = &self.u * self.v.transpose();
            (0..m)
                .flat_map(|i| (0..m).map(move |j| (i, j)))
                .map(|(i, j)| a[(i, j)])
                .collect()
        })
    }

    /// The plaintext latents of ciphertext latents `cipher` (rows of `m` values): `Aᵀ·z′/τ` on
    /// the known span, 0 (the prior's mean) off it.
    pub fn unrotate(&self, cipher: &[f32]) -> Vec<f32> {
        let m = self.v.nrows();
        let n = cipher.len() / m;
        let zc = DMatrix::from_iterator(m, n, cipher.iter().map(|&v| f64::from(v)));
        let z = &self.v * (self.u.transpose() * zc) / self.scale;
        z.iter().map(|&v| v as f32).collect()
    }

    /// The share of each ciphertext latent's energy that lies in the known span (1: it decrypts
    /// exactly; the rest is lost to the attacker).
    pub fn captured_energy(&self, cipher: &[f32]) -> Vec<f64> {
        let m = self.u.nrows();
        cipher
            .chunks(m)
            .map(|row| {
                let zc = nalgebra::DVector::from_iterator(m, row.iter().map(|&v| f64::from(v)));
                let total = zc.norm_squared();
                if total == 0.0 {
                    1.0
                } else {
                    (self.u.transpose() * zc).norm_squared() / total
                }
            })
            .collect()
    }
}

/// The plaintext latents `f(x)` of pixels `x` (`[B, C, H, W]` in [0, 1]) under class flow `glow`,
/// as encryption computes them (bin centres, no dequantisation noise): rows of `m` values.
pub fn plaintext_latents(glow: &Glow, pre: Preprocess, x: Tensor<4>) -> Vec<f32> {
    plaintext_latent_rows(glow, pre, x)
        .into_data()
        .iter::<f32>()
        .collect()
}

/// [`plaintext_latents`] as a lazy `[B, m]` tensor, for callers that must read values back
/// asynchronously (WebGPU in a browser).
pub fn plaintext_latent_rows(glow: &Glow, pre: Preprocess, x: Tensor<4>) -> Tensor<2> {
    let (s, _) = pre.to_logit(x, false);
    Glow::flatten_latents(glow.encode(s))
}

/// The ciphertext latents `g(c)` of ciphertexts `c` under decoding flow `glow`: rows of `m`
/// values.
pub fn ciphertext_latents(glow: &Glow, pre: Preprocess, c: Tensor<4>) -> Vec<f32> {
    public_latents(glow, pre, c)
        .into_data()
        .iter::<f32>()
        .collect()
}

/// Which flow decoded a class's ciphertexts, when cover classes hide it: the candidate whose
/// ciphertext latents have the plaintext latents' geometry. A rotation keeps inner products, so
/// the right `g` gives `⟨g(cᵢ), g(cⱼ)⟩ = τ²·⟨f(xᵢ), f(xⱼ)⟩` for every pair of known images; the
/// others do not. `plain` holds the plaintext latents of `ciphertexts`, in order. Returns, per
/// candidate, the relative mismatch of the two Gram matrices (over the first [`GRAM_PAIRS`]
/// pairs at most), and the best candidate. One pair fixes only a norm, which τ scales: it
/// cannot tell the candidates apart unless τ is known, as it is in Veil.
pub fn find_decoder(
    candidates: &[Glow],
    pre: Preprocess,
    plain: &[f32],
    ciphertexts: Tensor<4>,
    scale: f64,
) -> (usize, Vec<f64>) {
    let dim: usize = candidates
        .first()
        .map(|g| g.latent_shapes().iter().map(|s| s.len()).sum())
        .unwrap_or(1);
    let n = (plain.len() / dim)
        .min(ciphertexts.dims()[0])
        .min(GRAM_PAIRS);
    let c = ciphertexts.narrow(0, 0, n);
    let latents: Vec<Vec<f32>> = candidates
        .iter()
        .map(|g| ciphertext_latents(g, pre, c.clone()))
        .collect();
    choose_decoder(&plain[..n * dim], &latents, dim, scale)
}

/// [`find_decoder`]'s choice from latents already computed: `plain` holds `n` plaintext latents
/// (rows of `dim` values), and `candidates[j]` the latents of the same pairs' ciphertexts under
/// candidate flow `j` (at least the first `n.min(GRAM_PAIRS)` rows). A candidate whose latents
/// are not finite (its inverse overflowed) never wins.
pub fn choose_decoder(
    plain: &[f32],
    candidates: &[Vec<f32>],
    dim: usize,
    scale: f64,
) -> (usize, Vec<f64>) {
    let n = (plain.len() / dim.max(1)).min(GRAM_PAIRS);
    let gram = |rows: &[f32], s: f64| -> Vec<f64> {
        let mut g = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..=i {
                let dot: f64 = rows[i * dim..(i + 1) * dim]
                    .iter()
                    .zip(&rows[j * dim..(j + 1) * dim])
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum();
                g[i * n + j] = dot * s;
                g[j * n + i] = dot * s;
            }
        }
        g
    };
    let target = gram(&plain[..n * dim], scale * scale);
    let norm = target.iter().map(|v| v * v).sum::<f64>().sqrt();
    let mismatch: Vec<f64> = candidates
        .iter()
        .map(|zc| {
            let zc = &zc[..(n * dim).min(zc.len())];
            if zc.len() < n * dim || !zc.iter().all(|v| v.is_finite()) {
                return f64::INFINITY;
            }
            gram(zc, 1.0)
                .iter()
                .zip(&target)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f64>()
                .sqrt()
                / norm.max(f64::MIN_POSITIVE)
        })
        .collect();
    let best = (0..mismatch.len())
        .min_by(|&a, &b| mismatch[a].total_cmp(&mismatch[b]))
        .unwrap_or(0);
    (best, mismatch)
}

/// The orthogonal factor `U·Vᵀ` of a square matrix `U·Σ·Vᵀ` of full rank, by the Newton–Schulz
/// iteration `X ← X·(3I − XᵀX)/2` from `X₀ = M/‖M‖_F` (Higham, *Functions of Matrices*, §8.3):
/// matrix products only, which nalgebra runs about forty times faster than an inverse at m =
/// 3,072 (0.9 s against 40 s on 2 cores), where its SVD took over five minutes. Each step
/// multiplies the small singular values by about 1.5 and squares the error of the others, so an
/// ill-conditioned `M` (as many pairs as dimensions) takes a few dozen steps. `None` when it
/// has not converged to an orthogonal matrix (`M` singular to working precision).
fn polar_factor(m: DMatrix<f64>) -> Option<DMatrix<f64>> {
    let dim = m.nrows();
    let norm = m.norm();
    if !(norm.is_finite() && norm > 0.0) {
        return None;
    }
    let mut x = m / norm;
    let identity = DMatrix::<f64>::identity(dim, dim);
    for _ in 0..POLAR_MAX_ITERATIONS {
        let gram = x.transpose() * &x;
        let off = (&gram - &identity).amax();
        if off < 1e-13 {
            return Some(x);
        }
        x = &x * (&identity * 3.0 - gram) * 0.5;
    }
    let off = (x.transpose() * &x - identity).amax();
    (off < 1e-9).then_some(x)
}

/// Newton–Schulz stops after this many steps (a condition number of 10¹² needs about 75).
const POLAR_MAX_ITERATIONS: usize = 120;

/// [`RecoveredRotation::procrustes_trimmed`] drops the pairs whose residual exceeds this many times the
/// median.
pub const TRIM_FACTOR: f64 = 10.0;

/// Pairs [`find_decoder`] compares at most (its Gram matrices grow with their square).
pub const GRAM_PAIRS: usize = 256;

/// Decrypts ciphertext latents with a fit: pixels `[B, C, H, W]` re-quantised to the data's
/// levels, through class flow `glow`.
pub fn decrypt_latents(
    fit: &RecoveredRotation,
    glow: &Glow,
    pre: Preprocess,
    cipher: &[f32],
    device: &Device,
) -> Tensor<4> {
    let dim: usize = glow.latent_shapes().iter().map(|s| s.len()).sum();
    let z = fit.unrotate(cipher);
    let rows = z.len() / dim;
    let flat = Tensor::<2>::from_data(TensorData::new(z, [rows, dim]), device);
    pre.quantise(pre.from_logit(glow.decode_eps(&glow.unflatten_latents(flat))))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crypto::haar::HaarRotation;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn gaussian_rows(rng: &mut ChaCha8Rng, n: usize, m: usize) -> Vec<f32> {
        let mut v = vec![0.0f64; n * m];
        crate::crypto::gaussian::gaussian_fill(rng, &mut v);
        v.into_iter().map(|x| x as f32).collect()
    }

    /// Each row `z` of `rows` as `scale·A·z` (test data for the attacks).
    pub(crate) fn rotate_rows(a: &HaarRotation, rows: &[f32], scale: f64) -> Vec<f32> {
        rows.chunks(a.dim())
            .flat_map(|r| {
                let x: Vec<f64> = r.iter().map(|&v| f64::from(v)).collect();
                a.apply(&x).into_iter().map(move |v| (v * scale) as f32)
            })
            .collect()
    }

    /// With `n ≥ m` exact pairs the fit is `A` (to f32 rounding of the latents), and it
    /// decrypts latents it never saw.
    #[test]
    fn full_rank_pairs_give_the_rotation() {
        let m = 24;
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let a = HaarRotation::sample_householder(&mut rng, m);
        let z = gaussian_rows(&mut rng, 2 * m, m);
        let fit = RecoveredRotation::procrustes(&z, &rotate_rows(&a, &z, 0.5), m, 0.5).unwrap();
        assert_eq!(fit.rank(), m);
        let got = fit.rotation().unwrap();
        let worst = got
            .iter()
            .zip(a.entries().iter())
            .map(|(g, t)| (g - t).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-6, "largest entry error {worst}");
        assert!(fit.relative_residual(&z, &rotate_rows(&a, &z, 0.5)) < 1e-6);
        let other = gaussian_rows(&mut rng, 3, m);
        let back = fit.unrotate(&rotate_rows(&a, &other, 0.5));
        for (b, o) in back.iter().zip(&other) {
            assert!((b - o).abs() < 1e-5, "{b} against {o}");
        }
    }

    /// The Newton–Schulz polar factor is the SVD's `U·Vᵀ`, also for an ill-conditioned matrix.
    #[test]
    fn polar_factor_matches_the_svd() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let m = 20;
        let mut g = vec![0.0f64; m * m];
        crate::crypto::gaussian::gaussian_fill(&mut rng, &mut g);
        let x = DMatrix::from_row_slice(m, m, &g);
        let svd = x.clone().svd(true, true);
        let (u, v_t) = (svd.u.unwrap(), svd.v_t.unwrap());
        let want = &u * &v_t;
        let got = polar_factor(x).unwrap();
        assert!((got - &want).amax() < 1e-10);
        // Singular values from 1 down to 1e-8.
        let sigma = DMatrix::from_diagonal(&nalgebra::DVector::from_fn(m, |i, _| {
            10f64.powf(-8.0 * i as f64 / (m - 1) as f64)
        }));
        let got = polar_factor(&u * sigma * &v_t).unwrap();
        assert!((got - want).amax() < 1e-6);
    }

    /// With `n < m` pairs the fit is exact on their span and 0 off it: an unseen latent comes
    /// back as its projection onto the known latents, and the captured energy says how much.
    #[test]
    fn fewer_pairs_recover_the_span() {
        let (m, n) = (32, 8);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let a = HaarRotation::sample_householder(&mut rng, m);
        let z = gaussian_rows(&mut rng, n, m);
        let fit = RecoveredRotation::procrustes(&z, &rotate_rows(&a, &z, 1.0), m, 1.0).unwrap();
        assert_eq!(fit.rank(), n);
        assert!(fit.rotation().is_none());
        // A combination of known latents decrypts exactly.
        let inside: Vec<f32> = (0..m).map(|j| z[j] - 2.0 * z[3 * m + j]).collect();
        let back = fit.unrotate(&rotate_rows(&a, &inside, 1.0));
        for (b, o) in back.iter().zip(&inside) {
            assert!((b - o).abs() < 1e-4, "{b} against {o}");
        }
        let energy = fit.captured_energy(&rotate_rows(&a, &inside, 1.0))[0];
        assert!((energy - 1.0).abs() < 1e-6, "{energy}");
        // A fresh latent keeps about n/m of its energy (its projection), not more.
        let fresh = gaussian_rows(&mut rng, 200, m);
        let energy = fit.captured_energy(&rotate_rows(&a, &fresh, 1.0));
        let mean = energy.iter().sum::<f64>() / energy.len() as f64;
        assert!((mean - n as f64 / m as f64).abs() < 0.05, "{mean}");
    }

    /// One corrupted pair spoils the plain fit; the trimmed fit drops it.
    #[test]
    fn trimming_drops_an_outlying_pair() {
        let m = 16;
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let a = HaarRotation::sample_householder(&mut rng, m);
        let z = gaussian_rows(&mut rng, 3 * m, m);
        let mut zc = rotate_rows(&a, &z, 1.0);
        zc[5 * m + 2] += 0.05;
        let worst = |fit: &RecoveredRotation| {
            fit.rotation()
                .unwrap()
                .iter()
                .zip(a.entries().iter())
                .map(|(g, t)| (g - t).abs())
                .fold(0.0, f64::max)
        };
        let plain = RecoveredRotation::procrustes(&z, &zc, m, 1.0).unwrap();
        let trimmed = RecoveredRotation::procrustes_trimmed(&z, &zc, m, 1.0).unwrap();
        assert!(worst(&plain) > 1e-4, "{}", worst(&plain));
        assert!(worst(&trimmed) < 1e-6, "{}", worst(&trimmed));
    }

    /// Pairs that do not come from one rotation leave a large residual (the test that rejects a
    /// wrong decoding flow).
    #[test]
    fn unrelated_pairs_do_not_fit() {
        let m = 16;
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let z = gaussian_rows(&mut rng, 3 * m, m);
        let other = gaussian_rows(&mut rng, 3 * m, m);
        let fit = RecoveredRotation::procrustes(&z, &other, m, 1.0).unwrap();
        let residual = fit.relative_residual(&z, &other);
        assert!(residual > 0.5, "{residual}");
    }

    #[test]
    fn bad_pairs_are_refused() {
        assert_eq!(
            RecoveredRotation::procrustes(&[1.0; 6], &[1.0; 4], 2, 1.0).unwrap_err(),
            KnownPlaintextError::Shape {
                plain: 6,
                cipher: 4,
                dim: 2
            }
        );
        assert_eq!(
            RecoveredRotation::procrustes(&[], &[], 2, 1.0).unwrap_err(),
            KnownPlaintextError::Empty
        );
        assert_eq!(
            RecoveredRotation::procrustes(&[1.0, 2.0, 3.0, f32::NAN], &[1.0; 4], 2, 1.0)
                .unwrap_err(),
            KnownPlaintextError::NonFinite(1)
        );
    }
}
