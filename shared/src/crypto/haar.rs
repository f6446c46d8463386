//! Haar-random orthogonal matrices from a key: the secret rotation `A` of flow rotation
//! ("Secure Data Sharing With Flow Model", Wu, Du, Yuan, Algorithm 1: "draw A uniformly from the
//! orthogonal group").
//!
//! Construction (Mezzadri, "How to generate random matrices from the classical compact groups",
//! 2007, §5): fill an m×m matrix `Z` with i.i.d. N(0, 1) entries, factor `Z = QR`, and multiply
//! each column of `Q` by the sign of the matching diagonal entry of `R`, so that the factorisation
//! is the unique one with `diag(R) > 0`. Without that correction `Q` is *not* Haar-distributed:
//! its distribution depends on the QR implementation's sign convention (LAPACK's, which numpy and
//! the paper's public code use, makes `r₀₀ = −sign(z₀₀)‖z₀‖`). nalgebra's Householder QR happens
//! to return `diag(R) > 0` already; the correction is still applied explicitly, so the Haar
//! property never rests on a library's convention.
//!
//! Everything is f64 and deterministic: the same key gives a bit-identical matrix on x86_64 and
//! in wasm32. Two things make that true: the Gaussian sampler uses the pure-Rust `libm` (the
//! platform `ln`/`cos` differ between glibc and wasm), and the QR is nalgebra's scalar
//! Householder code (no FMA contraction or SIMD reduction order that differs by target).

use nalgebra::DMatrix;
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::crypto::keys::SubKey;

/// Standard normal samples by the Box–Muller transform over a ChaCha stream.
///
/// Written by hand rather than taken from `rand_distr`: its ziggurat calls the platform's
/// `exp`/`ln`, which are not bit-identical between native and wasm, and the key's matrix must be.
pub fn gaussian_fill(rng: &mut impl Rng, out: &mut [f64]) {
    let mut chunks = out.chunks_exact_mut(2);
    for pair in &mut chunks {
        let (a, b) = box_muller(rng);
        pair[0] = a;
        pair[1] = b;
    }
    if let [last] = chunks.into_remainder() {
        *last = box_muller(rng).0;
    }
}

fn box_muller(rng: &mut impl Rng) -> (f64, f64) {
    // u1 in (0, 1] so that ln(u1) is finite; u2 in [0, 1).
    let u1 = 1.0 - unit(rng.next_u64());
    let u2 = unit(rng.next_u64());
    let r = (-2.0 * libm::log(u1)).sqrt();
    let theta = 2.0 * std::f64::consts::PI * u2;
    (r * libm::cos(theta), r * libm::sin(theta))
}

/// A uniform double in [0, 1) from the top 53 bits.
fn unit(x: u64) -> f64 {
    (x >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A secret m×m orthogonal matrix drawn from the Haar measure on O(m).
#[derive(Clone, PartialEq)]
pub struct HaarRotation {
    dim: usize,
    /// Row-major entries.
    entries: Vec<f64>,
}

impl std::fmt::Debug for HaarRotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The entries are the secret: print only the size.
        write!(f, "HaarRotation({}×{})", self.dim, self.dim)
    }
}

impl HaarRotation {
    /// The rotation for a subkey: its ChaCha stream seeds the Gaussian matrix.
    pub fn from_subkey(key: &SubKey, dim: usize) -> Self {
        Self::sample(&mut key.rng(), dim)
    }

    /// Draws a Haar-random orthogonal matrix from any RNG (QR of a Gaussian matrix with the sign
    /// correction `diag(R) > 0`).
    pub fn sample(rng: &mut impl Rng, dim: usize) -> Self {
        assert!(dim > 0, "a rotation needs at least one dimension");
        let mut z = vec![0.0f64; dim * dim];
        gaussian_fill(rng, &mut z);
        let (q, r) = DMatrix::from_row_slice(dim, dim, &z).qr().unpack();
        let mut entries = vec![0.0f64; dim * dim];
        for j in 0..dim {
            // A zero diagonal has probability 0 for a Gaussian matrix; treat it as positive.
            let sign = if r[(j, j)] < 0.0 { -1.0 } else { 1.0 };
            for i in 0..dim {
                entries[i * dim + j] = sign * q[(i, j)];
            }
        }
        Self { dim, entries }
    }

    /// m.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Row-major entries.
    pub fn entries(&self) -> &[f64] {
        &self.entries
    }

    /// Row-major entries as f32, for a tensor on a burn device.
    pub fn to_f32(&self) -> Vec<f32> {
        self.entries.iter().map(|&x| x as f32).collect()
    }

    /// `A·x`.
    pub fn apply(&self, x: &[f64]) -> Vec<f64> {
        assert_eq!(
            x.len(),
            self.dim,
            "vector length must equal the rotation's dimension"
        );
        self.entries
            .chunks_exact(self.dim)
            .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
            .collect()
    }

    /// `Aᵀ·y`, the inverse rotation.
    pub fn apply_transpose(&self, y: &[f64]) -> Vec<f64> {
        assert_eq!(
            y.len(),
            self.dim,
            "vector length must equal the rotation's dimension"
        );
        let mut out = vec![0.0; self.dim];
        for (row, &yi) in self.entries.chunks_exact(self.dim).zip(y) {
            for (o, a) in out.iter_mut().zip(row) {
                *o += a * yi;
            }
        }
        out
    }

    /// The trace, Σ Aᵢᵢ (mean 0 and variance 1 under the Haar measure for m ≥ 2).
    pub fn trace(&self) -> f64 {
        (0..self.dim).map(|i| self.entries[i * self.dim + i]).sum()
    }

    /// max |AᵀA − I|, the orthogonality error.
    pub fn orthogonality_error(&self) -> f64 {
        let a = DMatrix::from_row_slice(self.dim, self.dim, &self.entries);
        let g = a.transpose() * &a;
        let mut worst = 0.0f64;
        for i in 0..self.dim {
            for j in 0..self.dim {
                let target = if i == j { 1.0 } else { 0.0 };
                worst = worst.max((g[(i, j)] - target).abs());
            }
        }
        worst
    }

    /// SHA-256 of the dimension and the entries' little-endian bytes: equal digests mean
    /// bit-identical matrices (used to check native against wasm).
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update((self.dim as u64).to_le_bytes());
        for x in &self.entries {
            h.update(x.to_le_bytes());
        }
        h.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keys::{MasterKey, Scheme};
    use crate::crypto::testvectors;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn rotation_is_orthogonal() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        for dim in [1, 2, 5, 64, 256] {
            let a = HaarRotation::sample(&mut rng, dim);
            assert!(
                a.orthogonality_error() < 1e-12,
                "dim {dim}: {}",
                a.orthogonality_error()
            );
            let x: Vec<f64> = (0..dim).map(|i| (i as f64).sin()).collect();
            let back = a.apply_transpose(&a.apply(&x));
            let err = x
                .iter()
                .zip(&back)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-12);
        }
    }

    #[test]
    fn same_key_same_matrix_other_key_other_matrix() {
        let k = MasterKey::from_bytes([9; 32]);
        let a = HaarRotation::from_subkey(&k.class_subkey(Scheme::FlowRotation, 0), 32);
        let b = HaarRotation::from_subkey(&k.class_subkey(Scheme::FlowRotation, 0), 32);
        let c = HaarRotation::from_subkey(&k.class_subkey(Scheme::FlowRotation, 1), 32);
        assert_eq!(a.digest(), b.digest());
        assert_ne!(a.digest(), c.digest());
    }

    /// The same digest is asserted inside headless Chromium (client/tests/web.rs): together the
    /// two tests show the matrix is bit-identical on x86_64 and wasm32.
    #[test]
    fn pinned_digest_for_the_test_vector_key() {
        let a = testvectors::haar_test_rotation();
        assert_eq!(hex::encode(a.digest()), testvectors::HAAR_DIGEST_64);
    }

    #[test]
    fn gaussian_moments() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let mut z = vec![0.0; 200_001];
        gaussian_fill(&mut rng, &mut z);
        let n = z.len() as f64;
        let mean = z.iter().sum::<f64>() / n;
        let var = z.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        let kurt = z.iter().map(|x| (x - mean).powi(4)).sum::<f64>() / n / var.powi(2);
        // Standard errors: mean 1/sqrt(n) = 0.0022, variance sqrt(2/n) = 0.0032, kurtosis
        // sqrt(24/n) = 0.011; bounds are 4 standard errors.
        assert!(mean.abs() < 0.009, "mean {mean}");
        assert!((var - 1.0).abs() < 0.013, "var {var}");
        assert!((kurt - 3.0).abs() < 0.044, "kurtosis {kurt}");
    }

    /// Haar property: for A uniform on O(m), m ≥ 2, tr(A) has mean 0 and variance 1 (Diaconis &
    /// Shahshahani 1994). A plain QR without the sign correction fails this: its trace is biased.
    #[test]
    fn trace_of_16x16_draws_has_mean_0_and_variance_1() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let draws = 4000;
        let traces: Vec<f64> = (0..draws)
            .map(|_| HaarRotation::sample(&mut rng, 16).trace())
            .collect();
        let n = draws as f64;
        let mean = traces.iter().sum::<f64>() / n;
        let var = traces.iter().map(|t| (t - mean).powi(2)).sum::<f64>() / (n - 1.0);
        // Standard error of the mean: sqrt(1/n); of the variance: sqrt(Var(t²)/n) with
        // E t⁴ = 3 for the Haar trace (m ≥ 4), so Var(t²) = 2.
        let se_mean = (1.0 / n).sqrt();
        let se_var = (2.0 / n).sqrt();
        assert!(mean.abs() < 3.0 * se_mean, "mean {mean} (se {se_mean})");
        assert!(
            (var - 1.0).abs() < 3.0 * se_var,
            "variance {var} (se {se_var})"
        );
    }

    /// Under the Haar measure every entry is symmetric about 0, so P(A₀₀ > 0) = 1/2. LAPACK's
    /// Householder QR (what numpy's `qr` calls) returns r₀₀ = −sign(z₀₀)·‖z₀‖, hence a first column
    /// whose leading entry is always negative: not Haar. This test passes for our matrices and
    /// fails for LAPACK-convention output, so it can tell the two apart.
    #[test]
    fn sign_correction_is_what_makes_it_haar() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let draws = 4000;
        let (mut haar_pos, mut lapack_pos) = (0usize, 0usize);
        for _ in 0..draws {
            let mut z = vec![0.0; 64];
            gaussian_fill(&mut rng, &mut z);
            let (q, r) = DMatrix::from_row_slice(8, 8, &z).qr().unpack();
            // nalgebra happens to return diag(R) > 0, so its Q is the Haar one ...
            assert!((0..8).all(|j| r[(j, j)] > 0.0));
            // ... and LAPACK's convention flips column 0 by -sign(z00).
            let lapack_q00 = -z[0].signum() * q[(0, 0)];
            lapack_pos += usize::from(lapack_q00 > 0.0);
            let haar = HaarRotation::sample(&mut rng, 8);
            haar_pos += usize::from(haar.entries()[0] > 0.0);
        }
        let se = (0.25 / draws as f64).sqrt();
        let haar = haar_pos as f64 / draws as f64;
        let lapack = lapack_pos as f64 / draws as f64;
        assert!((haar - 0.5).abs() < 3.0 * se, "Haar: P(A00 > 0) = {haar}");
        assert!(
            (lapack - 0.5).abs() > 10.0 * se,
            "LAPACK convention: P(Q00 > 0) = {lapack}"
        );
    }
}
