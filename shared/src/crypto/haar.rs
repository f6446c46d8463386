//! Haar-random orthogonal matrices from a key: the secret rotation `A` of flow rotation
//! ("Secure Data Sharing With Flow Model", Wu, Du, Yuan, Algorithm 1: "draw A uniformly from the
//! orthogonal group").
//!
//! Two derivations ([`RotationDerivation`]), both exactly Haar:
//! - **QR** (v1; Mezzadri, "How to generate random matrices from the classical compact groups",
//!   2007, §5): fill an m×m matrix `Z` with i.i.d. N(0, 1) entries, factor `Z = QR`, and multiply
//!   each column of `Q` by the sign of the matching diagonal entry of `R`, so that the
//!   factorisation is the unique one with `diag(R) > 0`. Without that correction `Q` is *not*
//!   Haar-distributed: its distribution depends on the QR implementation's sign convention
//!   (LAPACK's, which numpy and the paper's public code use, makes `r₀₀ = −sign(z₀₀)‖z₀‖`).
//!   nalgebra's Householder QR happens to return `diag(R) > 0` already; the correction is still
//!   applied explicitly, so the Haar property never rests on a library's convention. O(m³).
//! - **Householder** (v2; Stewart 1980): the same distribution as a product of m − 1 random
//!   reflections and a sign matrix, drawn in O(m²) and applied in O(m²) per vector, or block by
//!   block in the compact WY form ([`WyBlock`]) for batches on a burn device. The matrix is never
//!   formed. New keys use it ([`RotationDerivation::CURRENT`]); the QR route stays so that
//!   existing ciphertexts still decrypt.
//!
//! Everything is f64 and deterministic: the same key gives a bit-identical rotation on x86_64 and
//! in wasm32. Two things make that true: the Gaussian sampler uses the pure-Rust `libm` (the
//! platform `ln`/`cos` differ between glibc and wasm), and all arithmetic is scalar Rust
//! (nalgebra's scalar Householder QR, plain loops for the reflections: no FMA contraction or SIMD
//! reduction order that differs by target).
//!
//! Why this file is over 600 lines: more than a third is statistical tests (Haar moments,
//! uniformity, the derivations pinned); the code is two derivations and their application.

use nalgebra::DMatrix;
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::crypto::gaussian::{gaussian_fill, ziggurat_fill};
use crate::crypto::keys::SubKey;

/// `Σ aᵢ·bᵢ` over four interleaved partial sums, added in a fixed order: the same bits on every
/// target (Rust never fuses or reorders float arithmetic), and about four times the speed of
/// one running sum.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f64; 4];
    let (ac, bc) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for k in 0..4 {
            acc[k] += x[k] * y[k];
        }
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + tail
}

/// Which algorithm turned a subkey into its rotation. Both draw from the Haar measure on O(m);
/// they give different matrices for the same key, so the derivation is recorded wherever a
/// rotation must be found again (a flow family's manifest, a ciphertext container) and a
/// ciphertext is never decrypted under the other one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RotationDerivation {
    /// v1: the QR factorisation of an m×m Gaussian matrix, with the sign correction
    /// (Mezzadri 2007, §5), from stream 0 of the subkey's ChaCha20. O(m³) to draw: 13 s for
    /// m = 3072 natively. What a manifest or container without a derivation means.
    Qr,
    /// v2: Stewart's product of m − 1 random Householder reflections and a sign matrix
    /// (Stewart 1980; Mezzadri 2007, §5), from stream 1 of the subkey's ChaCha20. O(m²) to
    /// draw and to apply to a vector; never forms the matrix.
    Householder,
}

impl RotationDerivation {
    /// What new flow families and ciphertexts use.
    pub const CURRENT: Self = Self::Householder;
    /// What a manifest or container written before derivations were recorded used.
    pub const LEGACY: Self = Self::Qr;

    /// The name written in manifests and containers (`qr`, `householder`).
    pub fn label(self) -> &'static str {
        match self {
            Self::Qr => "qr",
            Self::Householder => "householder",
        }
    }

    /// The derivation a label names.
    pub fn parse(label: &str) -> Option<Self> {
        [Self::Qr, Self::Householder]
            .into_iter()
            .find(|d| d.label() == label)
    }

    /// [`Self::LEGACY`], for `#[serde(default = …)]`.
    pub fn legacy() -> Self {
        Self::LEGACY
    }
}

impl std::fmt::Display for RotationDerivation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// A secret m×m orthogonal matrix drawn from the Haar measure on O(m).
#[derive(Clone, PartialEq)]
pub struct HaarRotation {
    dim: usize,
    form: Form,
}

#[derive(Clone, PartialEq)]
enum Form {
    /// Row-major entries ([`RotationDerivation::Qr`]).
    Dense(Vec<f64>),
    /// `A = H₀·H₁·…·H_{m−2}·D` ([`RotationDerivation::Householder`]).
    Householder(Reflections),
}

/// Householder reflections `Hⱼ = I − 2·vⱼ·vⱼᵀ` with unit `vⱼ` supported on coordinates `j..m`,
/// and the diagonal sign matrix `D`.
#[derive(Clone, PartialEq)]
struct Reflections {
    /// `v₀ ‖ v₁ ‖ … ‖ v_{m−2}`: `vⱼ` has `m − j` entries.
    vectors: Vec<f64>,
    /// The diagonal of `D`, each ±1.
    signs: Vec<f64>,
}

impl Reflections {
    /// `(j, vⱼ)` for every reflection, first to last.
    fn iter(&self, dim: usize) -> impl DoubleEndedIterator<Item = (usize, &[f64])> {
        // vⱼ starts after v₀ … vⱼ₋₁, that is at Σᵢ₍ᵢ<ⱼ₎ (m − i) = j·m − j(j−1)/2.
        (0..dim.saturating_sub(1)).map(move |j| {
            let start = j * dim - j * j.saturating_sub(1) / 2;
            (j, &self.vectors[start..start + dim - j])
        })
    }
}

/// `x ← (I − 2·v·vᵀ)·x` on `x`'s trailing `v.len()` coordinates.
fn reflect(v: &[f64], x: &mut [f64]) {
    let tail = x.len() - v.len();
    let x = &mut x[tail..];
    let d = 2.0 * dot(v, x);
    for (xi, vi) in x.iter_mut().zip(v) {
        *xi -= d * vi;
    }
}

/// One block of reflections in the compact WY form of Schreiber & Van Loan (1989), as LAPACK's
/// `dlarft` builds it: `H_s·H_{s+1}·…·H_{s+k−1} = I − V·T·Vᵀ` on coordinates `start..m`. Applying
/// a rotation block by block costs two matrix products per block, so a batch of vectors is
/// rotated with matrix-matrix speed on any burn device without ever forming the m×m matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct WyBlock {
    /// The first coordinate the block acts on.
    pub start: usize,
    /// `m − start`, the rows of `V`.
    pub rows: usize,
    /// `k`, the reflections in the block (the columns of `V`).
    pub cols: usize,
    /// `V`, row-major `[rows, cols]`: column `i` is `v_{start+i}` from row `i` on, zero above.
    pub v: Vec<f64>,
    /// `T`, row-major `[cols, cols]`, upper triangular.
    pub t: Vec<f64>,
}

impl HaarRotation {
    /// The rotation of `dim` dimensions that `derivation` draws from a subkey's ChaCha20
    /// stream.
    pub fn from_subkey(key: &SubKey, dim: usize, derivation: RotationDerivation) -> Self {
        let mut rng = key.rng();
        match derivation {
            RotationDerivation::Qr => Self::sample(&mut rng, dim),
            RotationDerivation::Householder => {
                // Stream 1: the QR route reads stream 0 of the same subkey, so the two
                // derivations of one key never share a Gaussian.
                rng.set_stream(1);
                Self::sample_householder(&mut rng, dim)
            }
        }
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
        Self {
            dim,
            form: Form::Dense(entries),
        }
    }

    /// Draws a Haar-random orthogonal matrix as Stewart's product of Householder reflections
    /// (G. W. Stewart, "The efficient generation of random orthogonal matrices with an
    /// application to condition estimators", SIAM J. Numer. Anal. 17(3), 1980; Mezzadri 2007,
    /// §5).
    ///
    /// Householder QR of a Gaussian matrix `Z` reflects column `j`'s trailing `m − j` entries
    /// `xⱼ` onto `−sign(xⱼ₀)·‖xⱼ‖·e₁` and leaves the columns after it with i.i.d. N(0, 1)
    /// trailing entries, independent of that reflection (the Gaussian is rotation-invariant).
    /// So `xⱼ` may be drawn fresh for each `j` instead of being carried through the
    /// factorisation: `Q = H₀·…·H_{m−2}` with `Hⱼ` the reflection of `xⱼ`, and the sign
    /// correction `D = diag(sign Rⱼⱼ) = diag(−sign xⱼ₀)` (the last, 1×1, entry: `sign x_{m−1}`)
    /// makes `Q·D` exactly Haar, as in [`Self::sample`]. It costs m(m+1)/2 Gaussians (drawn by
    /// [`ziggurat_fill`]) and O(m²) arithmetic.
    pub fn sample_householder(rng: &mut impl Rng, dim: usize) -> Self {
        assert!(dim > 0, "a rotation needs at least one dimension");
        let mut vectors = vec![0.0f64; dim * (dim + 1) / 2 - 1];
        let mut signs = vec![1.0f64; dim];
        let mut start = 0;
        for (j, sign) in signs.iter_mut().enumerate() {
            let len = dim - j;
            if len == 1 {
                let mut last = [0.0];
                ziggurat_fill(rng, &mut last);
                *sign = if last[0] < 0.0 { -1.0 } else { 1.0 };
                break;
            }
            let v = &mut vectors[start..start + len];
            ziggurat_fill(rng, v);
            start += len;
            // A zero leading entry has probability 0; treat it as positive.
            let s = if v[0] < 0.0 { -1.0 } else { 1.0 };
            let norm2 = dot(v, v);
            // u = x + sign(x₀)·‖x‖·e₁ reflects x onto −sign(x₀)·‖x‖·e₁ without cancellation;
            // ‖u‖² = ‖x‖² − x₀² + (x₀ + sign(x₀)·‖x‖)².
            let x0 = v[0];
            v[0] += s * norm2.sqrt();
            let unorm = (norm2 - x0 * x0 + v[0] * v[0]).sqrt();
            if unorm > 0.0 {
                v.iter_mut().for_each(|x| *x /= unorm);
            } else {
                // x = 0 (probability 0): any reflection will do.
                v[0] = 1.0;
            }
            *sign = -s;
        }
        Self {
            dim,
            form: Form::Householder(Reflections { vectors, signs }),
        }
    }

    /// m.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The derivation this rotation's form comes from (a rotation drawn by [`Self::sample`] is
    /// dense, like [`RotationDerivation::Qr`]'s).
    pub fn derivation(&self) -> RotationDerivation {
        match self.form {
            Form::Dense(_) => RotationDerivation::Qr,
            Form::Householder(_) => RotationDerivation::Householder,
        }
    }

    /// Row-major entries. A Householder rotation forms its matrix here, in O(m³): for tests and
    /// small dimensions.
    pub fn entries(&self) -> std::borrow::Cow<'_, [f64]> {
        match &self.form {
            Form::Dense(e) => std::borrow::Cow::Borrowed(e),
            Form::Householder(_) => {
                let m = self.dim;
                // Row i of A is column i of Aᵀ, that is Aᵀ·eᵢ.
                let mut entries = Vec::with_capacity(m * m);
                for i in 0..m {
                    let mut e = vec![0.0; m];
                    e[i] = 1.0;
                    entries.extend(self.apply_transpose(&e));
                }
                std::borrow::Cow::Owned(entries)
            }
        }
    }

    /// The compact WY blocks of a Householder rotation, `block` reflections each (`None` for a
    /// dense one). `A = B₀·B₁·…·D` with `Bᵦ = I − Vᵦ·Tᵦ·Vᵦᵀ`, `D` = [`Self::signs`].
    pub fn wy_blocks(&self, block: usize) -> Option<Vec<WyBlock>> {
        let Form::Householder(r) = &self.form else {
            return None;
        };
        let block = block.max(1);
        let all: Vec<(usize, &[f64])> = r.iter(self.dim).collect();
        Some(
            all.chunks(block)
                .map(|refl| {
                    let start = refl[0].0;
                    let rows = self.dim - start;
                    let cols = refl.len();
                    let mut v = vec![0.0; rows * cols];
                    for (i, (_, vi)) in refl.iter().enumerate() {
                        for (r, x) in vi.iter().enumerate() {
                            v[(i + r) * cols + i] = *x;
                        }
                    }
                    // dlarft, forward and columnwise, with τ = 2 (unit vectors):
                    // T[..i, i] = −τ·T[..i, ..i]·(V[:, ..i]ᵀ·vᵢ), T[i, i] = τ.
                    let mut t = vec![0.0; cols * cols];
                    for i in 0..cols {
                        let (_, vi) = refl[i];
                        // Column s of V is v_{start+s} from row s on; vᵢ starts at row i > s.
                        let w: Vec<f64> = (0..i).map(|s| dot(&refl[s].1[i - s..], vi)).collect();
                        for row in 0..i {
                            let acc = dot(&t[row * cols + row..row * cols + i], &w[row..]);
                            t[row * cols + i] = -2.0 * acc;
                        }
                        t[i * cols + i] = 2.0;
                    }
                    WyBlock {
                        start,
                        rows,
                        cols,
                        v,
                        t,
                    }
                })
                .collect(),
        )
    }

    /// The diagonal of a Householder rotation's sign matrix `D` (`None` for a dense one).
    pub fn signs(&self) -> Option<&[f64]> {
        match &self.form {
            Form::Dense(_) => None,
            Form::Householder(r) => Some(&r.signs),
        }
    }

    /// `A·x`.
    pub fn apply(&self, x: &[f64]) -> Vec<f64> {
        assert_eq!(
            x.len(),
            self.dim,
            "vector length must equal the rotation's dimension"
        );
        match &self.form {
            Form::Dense(entries) => entries
                .chunks_exact(self.dim)
                .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
                .collect(),
            Form::Householder(r) => {
                let mut y: Vec<f64> = x.iter().zip(&r.signs).map(|(a, s)| a * s).collect();
                for (_, v) in r.iter(self.dim).rev() {
                    reflect(v, &mut y);
                }
                y
            }
        }
    }

    /// `Aᵀ·y`, the inverse rotation.
    pub fn apply_transpose(&self, y: &[f64]) -> Vec<f64> {
        assert_eq!(
            y.len(),
            self.dim,
            "vector length must equal the rotation's dimension"
        );
        match &self.form {
            Form::Dense(entries) => {
                let mut out = vec![0.0; self.dim];
                for (row, &yi) in entries.chunks_exact(self.dim).zip(y) {
                    for (o, a) in out.iter_mut().zip(row) {
                        *o += a * yi;
                    }
                }
                out
            }
            Form::Householder(r) => {
                let mut x = y.to_vec();
                for (_, v) in r.iter(self.dim) {
                    reflect(v, &mut x);
                }
                x.iter_mut().zip(&r.signs).for_each(|(a, s)| *a *= s);
                x
            }
        }
    }

    /// The trace, Σ Aᵢᵢ (mean 0 and variance 1 under the Haar measure for m ≥ 2).
    pub fn trace(&self) -> f64 {
        let e = self.entries();
        (0..self.dim).map(|i| e[i * self.dim + i]).sum()
    }

    /// max |AᵀA − I|, the orthogonality error.
    pub fn orthogonality_error(&self) -> f64 {
        let a = DMatrix::from_row_slice(self.dim, self.dim, &self.entries());
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

    /// SHA-256 of the rotation's form: equal digests mean bit-identical rotations (used to check
    /// native against wasm). A dense rotation hashes the dimension and the entries'
    /// little-endian bytes; a Householder one the dimension, the tag `householder`, the
    /// reflection vectors and the signs.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update((self.dim as u64).to_le_bytes());
        let words: Box<dyn Iterator<Item = &f64>> = match &self.form {
            Form::Dense(entries) => Box::new(entries.iter()),
            Form::Householder(r) => {
                h.update(b"householder");
                Box::new(r.vectors.iter().chain(&r.signs))
            }
        };
        for x in words {
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
        for d in [RotationDerivation::Qr, RotationDerivation::Householder] {
            let a = HaarRotation::from_subkey(&k.class_subkey(Scheme::FlowRotation, 0), 32, d);
            let b = HaarRotation::from_subkey(&k.class_subkey(Scheme::FlowRotation, 0), 32, d);
            let c = HaarRotation::from_subkey(&k.class_subkey(Scheme::FlowRotation, 1), 32, d);
            assert_eq!(a.digest(), b.digest());
            assert_ne!(a.digest(), c.digest());
            assert_eq!(a.derivation(), d);
        }
        // The two derivations of one subkey are different matrices.
        let sub = k.class_subkey(Scheme::FlowRotation, 0);
        let qr = HaarRotation::from_subkey(&sub, 32, RotationDerivation::Qr);
        let hh = HaarRotation::from_subkey(&sub, 32, RotationDerivation::Householder);
        let gap = qr
            .entries()
            .iter()
            .zip(hh.entries().iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(gap > 0.1, "the derivations agree to {gap}");
    }

    /// The same digest is asserted inside headless Chromium (client/tests/web.rs): together the
    /// two tests show the matrix is bit-identical on x86_64 and wasm32.
    #[test]
    fn pinned_digest_for_the_test_vector_key() {
        let a = testvectors::haar_test_rotation();
        assert_eq!(hex::encode(a.digest()), testvectors::HAAR_DIGEST_64);
        let h = testvectors::householder_test_rotation();
        assert_eq!(hex::encode(h.digest()), testvectors::HOUSEHOLDER_DIGEST_64);
    }

    fn max_gap(a: &[f64], b: &[f64]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f64::max)
    }

    #[test]
    fn householder_rotation_is_orthogonal_and_its_forms_agree() {
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        for dim in [1, 2, 3, 5, 64, 200] {
            let a = HaarRotation::sample_householder(&mut rng, dim);
            assert!(
                a.orthogonality_error() < 1e-12,
                "dim {dim}: {}",
                a.orthogonality_error()
            );
            let x: Vec<f64> = (0..dim).map(|i| (i as f64 * 0.7).cos()).collect();
            let y = a.apply(&x);
            assert!(max_gap(&x, &a.apply_transpose(&y)) < 1e-12);
            // The product form equals the matrix it defines.
            let e = a.entries();
            let dense: Vec<f64> = e
                .chunks_exact(dim)
                .map(|row| row.iter().zip(&x).map(|(p, q)| p * q).sum())
                .collect();
            assert!(max_gap(&y, &dense) < 1e-12, "dim {dim}");
            // And block by block in the WY form (`A = B₀·B₁·…·D`), for several block sizes.
            for block in [1, 4, 32] {
                let mut z: Vec<f64> = x
                    .iter()
                    .zip(a.signs().unwrap())
                    .map(|(p, s)| p * s)
                    .collect();
                for b in a.wy_blocks(block).unwrap().iter().rev() {
                    // z[start..] ← (I − V·T·Vᵀ)·z[start..]
                    let tail = &mut z[b.start..];
                    let w: Vec<f64> = (0..b.cols)
                        .map(|c| (0..b.rows).map(|r| b.v[r * b.cols + c] * tail[r]).sum())
                        .collect();
                    let tw: Vec<f64> = (0..b.cols)
                        .map(|r| (0..b.cols).map(|c| b.t[r * b.cols + c] * w[c]).sum())
                        .collect();
                    for (r, t) in tail.iter_mut().enumerate() {
                        *t -= (0..b.cols)
                            .map(|c| b.v[r * b.cols + c] * tw[c])
                            .sum::<f64>();
                    }
                }
                assert!(max_gap(&y, &z) < 1e-12, "dim {dim}, block {block}");
            }
        }
        assert!(HaarRotation::sample(&mut rng, 8).wy_blocks(4).is_none());
    }

    /// Haar measure on O(m) gives det = +1 and −1 with probability ½ each. Every reflection has
    /// det −1, so without the sign matrix D the product would always have det (−1)^(m−1): this
    /// test fails for Stewart's product without the correction.
    #[test]
    fn householder_determinant_is_plus_or_minus_one_with_even_odds() {
        let mut rng = ChaCha20Rng::seed_from_u64(12);
        let draws = 4000;
        let dim = 9;
        let mut plus = 0usize;
        for _ in 0..draws {
            let a = HaarRotation::sample_householder(&mut rng, dim);
            let det = a.signs().unwrap().iter().product::<f64>() * (-1f64).powi(dim as i32 - 1);
            let dense = DMatrix::from_row_slice(dim, dim, &a.entries()).determinant();
            assert!((dense - det).abs() < 1e-9, "det {dense} vs {det}");
            plus += usize::from(det > 0.0);
        }
        let se = (0.25 / draws as f64).sqrt();
        let p = plus as f64 / draws as f64;
        assert!((p - 0.5).abs() < 3.0 * se, "P(det = +1) = {p}");
    }

    #[test]
    fn trace_of_16x16_householder_draws_has_mean_0_and_variance_1() {
        let mut rng = ChaCha20Rng::seed_from_u64(13);
        assert_haar_trace_moments(|| HaarRotation::sample_householder(&mut rng, 16));
    }

    /// The two-sample Kolmogorov–Smirnov statistic sup |F₁ − F₂|.
    fn ks_statistic(mut a: Vec<f64>, mut b: Vec<f64>) -> f64 {
        a.sort_by(f64::total_cmp);
        b.sort_by(f64::total_cmp);
        let (mut i, mut j, mut worst) = (0, 0, 0.0f64);
        while i < a.len() && j < b.len() {
            if a[i] <= b[j] {
                i += 1;
            } else {
                j += 1;
            }
            worst = worst.max((i as f64 / a.len() as f64 - j as f64 / b.len() as f64).abs());
        }
        worst
    }

    /// The QR and Householder derivations have the same distribution: two-sample KS tests on the
    /// trace and on three entries (a corner, the centre, an off-diagonal one) of 2,000 draws
    /// each at m = 12 stay under the 0.1 % critical value, 1.95·√(2/2000) = 0.062. The test can
    /// fail: the same statistic between the Haar trace and the trace of `Q` without the sign
    /// correction (LAPACK's convention) is far above it.
    #[test]
    fn the_two_derivations_have_the_same_distribution() {
        let mut rng = ChaCha20Rng::seed_from_u64(14);
        let (draws, dim) = (2000, 12);
        let pick = |a: &HaarRotation| {
            let e = a.entries();
            [a.trace(), e[0], e[6 * dim + 6], e[2 * dim + 9]]
        };
        let qr: Vec<[f64; 4]> = (0..draws)
            .map(|_| pick(&HaarRotation::sample(&mut rng, dim)))
            .collect();
        let hh: Vec<[f64; 4]> = (0..draws)
            .map(|_| pick(&HaarRotation::sample_householder(&mut rng, dim)))
            .collect();
        let critical = 1.95 * (2.0 / draws as f64).sqrt();
        for (k, what) in ["trace", "A[0,0]", "A[6,6]", "A[2,9]"].iter().enumerate() {
            let d = ks_statistic(
                qr.iter().map(|s| s[k]).collect(),
                hh.iter().map(|s| s[k]).collect(),
            );
            assert!(d < critical, "{what}: KS {d:.4} ≥ {critical:.4}");
        }
        // LAPACK's convention: the first column of Q flipped by −sign(z₀₀), so Q₀₀ < 0 always.
        let lapack: Vec<f64> = (0..draws)
            .map(|_| {
                let mut z = vec![0.0; dim * dim];
                gaussian_fill(&mut rng, &mut z);
                let (q, _) = DMatrix::from_row_slice(dim, dim, &z).qr().unpack();
                -z[0].signum() * q[(0, 0)]
            })
            .collect();
        let d = ks_statistic(lapack, hh.iter().map(|s| s[1]).collect());
        assert!(d > 5.0 * critical, "KS against LAPACK's convention: {d:.4}");
    }

    /// Haar property: for A uniform on O(m), m ≥ 2, tr(A) has mean 0 and variance 1 (Diaconis &
    /// Shahshahani 1994). A plain QR without the sign correction fails this: its trace is biased.
    #[test]
    fn trace_of_16x16_draws_has_mean_0_and_variance_1() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        assert_haar_trace_moments(|| HaarRotation::sample(&mut rng, 16));
    }

    /// The traces of 4,000 draws have mean 0 and variance 1 within 3 standard errors.
    fn assert_haar_trace_moments(mut draw: impl FnMut() -> HaarRotation) {
        let draws = 4000;
        let traces: Vec<f64> = (0..draws).map(|_| draw().trace()).collect();
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
