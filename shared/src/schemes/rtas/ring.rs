//! Fixed-point numbers in the ring Z₂⁶⁴, and the matrices both parties hold shares of.
//!
//! The paper (§4.1) shares floats and admits the leak when x ≫ r; its public code (zfscgy/Amber)
//! uses 64-bit integers with 21 fractional bits. Veil does the latter: a real x is the integer
//! round(x·2ᶠ) taken modulo 2⁶⁴ (two's complement), and shares are uniform in Z₂⁶⁴, so a share alone
//! is independent of x.
//!
//! **Scales.** A product of two values at scale f has scale 2f. Every matrix carries its scale
//! (`frac`), so a product that feeds a non-linear function is sent to the helper at scale 2f and
//! decoded exactly, without a truncation; only products that stay shared are truncated.
//!
//! **Error bound of a truncation** (SecureML, Mohassel and Zhang 2017, Theorem 1): each party
//! shifts its own share, P0 by ⌊s₀/2ᶠ⌋ and P1 by −⌊−s₁/2ᶠ⌋. If the shared value z satisfies
//! |z| < 2^ℓ as an integer, the result is ⌊z/2ᶠ⌋ or ⌊z/2ᶠ⌋+1 except with probability at most
//! 2^(ℓ+1−64), when it is off by about 2^(64−f). With f = 16 and a real value below 2⁸ before the
//! shift (ℓ = 8 + 32 = 40), that is 2⁻²³ per element. [`crate::schemes::rtas::Helper`] counts the
//! pre-activations it receives that are beyond any plausible value, so a failure shows in the
//! results instead of passing silently.
//!
//! Hand-written: no maintained crate offers wrapping u64 matrices with these share-local
//! operations; the products are a plain i-k-j loop (the compiler vectorises the adds, and x86 has
//! no 64-bit vector multiply below AVX-512) split over threads natively.

use serde::{Deserialize, Serialize};

/// Fixed-point encoding: `frac_bits` fractional bits in Z₂⁶⁴.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixedPoint {
    /// Fractional bits f of every shared value between products (CrypTen's default, 16).
    pub frac_bits: u32,
}

impl Default for FixedPoint {
    fn default() -> Self {
        Self { frac_bits: 16 }
    }
}

impl FixedPoint {
    /// round(x·2^frac) modulo 2⁶⁴. Values beyond ±2^(63−frac) saturate (they cannot be represented).
    pub fn encode_at(x: f64, frac: u32) -> u64 {
        let scaled = (x * (frac as f64).exp2()).round();
        (scaled.clamp(i64::MIN as f64, i64::MAX as f64) as i64) as u64
    }

    /// The real a ring element stands for at scale `frac`.
    pub fn decode_at(v: u64, frac: u32) -> f64 {
        v as i64 as f64 / (frac as f64).exp2()
    }

    /// `x` at this encoding's scale.
    pub fn encode(self, x: f64) -> u64 {
        Self::encode_at(x, self.frac_bits)
    }
}

/// What a [`Matrix`] holds: ring elements (`u64`, arithmetic modulo 2⁶⁴) or plaintext reals (`f64`,
/// the reference computation the protocol is compared with).
pub trait Element: Copy + Default + PartialEq + Send + Sync + std::fmt::Debug + 'static {
    /// a + b (wrapping in the ring).
    fn add(self, other: Self) -> Self;
    /// a − b.
    fn sub(self, other: Self) -> Self;
    /// a · b.
    fn mul(self, other: Self) -> Self;
}

impl Element for u64 {
    fn add(self, other: Self) -> Self {
        self.wrapping_add(other)
    }
    fn sub(self, other: Self) -> Self {
        self.wrapping_sub(other)
    }
    fn mul(self, other: Self) -> Self {
        self.wrapping_mul(other)
    }
}

impl Element for f64 {
    fn add(self, other: Self) -> Self {
        self + other
    }
    fn sub(self, other: Self) -> Self {
        self - other
    }
    fn mul(self, other: Self) -> Self {
        self * other
    }
}

/// A row-major matrix: a party's share or a public value over Z₂⁶⁴ at scale `frac`
/// ([`RingMatrix`]), or a plaintext one ([`PlainMatrix`], whose `frac` is unused).
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix<T> {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Fractional bits of the value a ring matrix stands for (0 for plaintext).
    pub frac: u32,
    /// `rows · cols` elements.
    pub data: Vec<T>,
}

/// A share, or a public value, in Z₂⁶⁴.
pub type RingMatrix = Matrix<u64>;
/// A plaintext matrix of reals.
pub type PlainMatrix = Matrix<f64>;

impl<T: Element> Matrix<T> {
    /// All zeros.
    pub fn zeros(rows: usize, cols: usize, frac: u32) -> Self {
        Self {
            rows,
            cols,
            frac,
            data: vec![T::default(); rows * cols],
        }
    }

    /// A matrix of these elements.
    pub fn from_vec(rows: usize, cols: usize, frac: u32, data: Vec<T>) -> Self {
        assert_eq!(data.len(), rows * cols, "matrix of {rows}×{cols}");
        Self {
            rows,
            cols,
            frac,
            data,
        }
    }

    /// (rows, cols).
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Element-wise `f(a, b)` of two matrices of one shape, at this matrix's scale.
    pub fn zip_with(&self, other: &Self, f: impl Fn(T, T) -> T) -> Self {
        assert_eq!(self.shape(), other.shape(), "shapes differ");
        Self {
            data: self
                .data
                .iter()
                .zip(&other.data)
                .map(|(&x, &y)| f(x, y))
                .collect(),
            ..*self
        }
    }

    /// Element-wise `f(a)`.
    pub fn map(&self, f: impl Fn(T) -> T) -> Self {
        Self {
            data: self.data.iter().map(|&x| f(x)).collect(),
            ..*self
        }
    }

    /// Element-wise product of raw elements: the scale is the sum of both scales.
    pub fn hadamard_raw(&self, other: &Self) -> Self {
        Self {
            frac: self.frac + other.frac,
            ..self.zip_with(other, T::mul)
        }
    }

    /// Adds a 1×cols row to every row (same scale).
    pub fn add_row(&self, row: &Self) -> Self {
        assert_eq!((row.rows, row.cols), (1, self.cols), "bias shape");
        let mut out = self.clone();
        for chunk in out.data.chunks_mut(self.cols) {
            for (x, &b) in chunk.iter_mut().zip(&row.data) {
                *x = x.add(b);
            }
        }
        out
    }

    /// The 1×cols sum of all rows.
    pub fn column_sums(&self) -> Self {
        let mut out = Self::zeros(1, self.cols, self.frac);
        for chunk in self.data.chunks(self.cols) {
            for (s, &x) in out.data.iter_mut().zip(chunk) {
                *s = s.add(x);
            }
        }
        out
    }

    /// The transpose.
    pub fn transpose(&self) -> Self {
        let mut data = vec![T::default(); self.data.len()];
        for r in 0..self.rows {
            for c in 0..self.cols {
                data[c * self.rows + r] = self.data[r * self.cols + c];
            }
        }
        Self {
            rows: self.cols,
            cols: self.rows,
            frac: self.frac,
            data,
        }
    }

    /// The same elements read as `rows × cols` (row-major order kept).
    pub fn reshape(mut self, rows: usize, cols: usize) -> Self {
        assert_eq!(
            rows * cols,
            self.data.len(),
            "reshape keeps the element count"
        );
        self.rows = rows;
        self.cols = cols;
        self
    }

    /// Matrix product of raw elements: the scale is the sum of both scales.
    pub fn matmul_raw(&self, other: &Self) -> Self {
        assert_eq!(self.cols, other.rows, "inner dimensions differ");
        let (n, k) = (other.cols, self.cols);
        let mut out = vec![T::default(); self.rows * n];
        let work = |rows: &mut [T], first: usize| {
            for (i, row) in rows.chunks_mut(n).enumerate() {
                let a = &self.data[(first + i) * k..(first + i + 1) * k];
                for (p, &x) in a.iter().enumerate() {
                    if x == T::default() {
                        continue;
                    }
                    let b = &other.data[p * n..(p + 1) * n];
                    for (o, &y) in row.iter_mut().zip(b) {
                        *o = o.add(x.mul(y));
                    }
                }
            }
        };
        parallel_rows(&mut out, n, self.rows * n * k, work);
        Self {
            rows: self.rows,
            cols: n,
            frac: self.frac + other.frac,
            data: out,
        }
    }

    /// The patches of a batch of images as rows, for a convolution as a matrix product (§4.1):
    /// this matrix holds one `shape` image per row; the result has one row per (image, output
    /// position), `channels·k·k` columns, ordered (channel, dy, dx) like a burn Conv2d weight.
    pub fn im2col(&self, shape: crate::data::ImageShape, kernel: usize, stride: usize) -> Self {
        assert_eq!(self.cols, shape.len(), "one image per row");
        let (oh, ow) = conv_output(shape, kernel, stride);
        let cols = shape.channels * kernel * kernel;
        let mut data = Vec::with_capacity(self.rows * oh * ow * cols);
        for img in self.data.chunks(self.cols) {
            for y in 0..oh {
                for x in 0..ow {
                    for c in 0..shape.channels {
                        for dy in 0..kernel {
                            let row = (c * shape.height + y * stride + dy) * shape.width;
                            data.extend_from_slice(
                                &img[row + x * stride..row + x * stride + kernel],
                            );
                        }
                    }
                }
            }
        }
        Self {
            rows: self.rows * oh * ow,
            cols,
            frac: self.frac,
            data,
        }
    }

    /// Elements reordered so that element `i` of the result is element `perm[i]` of this one.
    pub fn permuted(&self, perm: &[u32]) -> Vec<T> {
        perm.iter().map(|&p| self.data[p as usize]).collect()
    }

    /// The inverse of [`Matrix::permuted`]: puts `values[i]` back at `perm[i]`.
    pub fn unpermute(rows: usize, cols: usize, frac: u32, perm: &[u32], values: &[T]) -> Self {
        let mut data = vec![T::default(); rows * cols];
        for (&p, &v) in perm.iter().zip(values) {
            data[p as usize] = v;
        }
        Self {
            rows,
            cols,
            frac,
            data,
        }
    }
}

/// Output height and width of a valid (unpadded) convolution.
pub fn conv_output(shape: crate::data::ImageShape, kernel: usize, stride: usize) -> (usize, usize) {
    (
        (shape.height - kernel) / stride + 1,
        (shape.width - kernel) / stride + 1,
    )
}

impl RingMatrix {
    /// Encodes reals at scale `frac`.
    pub fn encode(rows: usize, cols: usize, frac: u32, values: &[f64]) -> Self {
        Self::from_vec(
            rows,
            cols,
            frac,
            values
                .iter()
                .map(|&x| FixedPoint::encode_at(x, frac))
                .collect(),
        )
    }

    /// The reals this matrix stands for (meaningful for a reconstructed or public value).
    pub fn decode(&self) -> Vec<f64> {
        self.data
            .iter()
            .map(|&v| FixedPoint::decode_at(v, self.frac))
            .collect()
    }

    /// This value at the larger scale `frac`: a share-local shift left, exact.
    pub fn lift(&self, frac: u32) -> Self {
        assert!(frac >= self.frac, "lift lowers a scale; truncate instead");
        let s = frac - self.frac;
        Self {
            frac,
            ..self.map(|v| v.wrapping_shl(s))
        }
    }

    /// Both operands at the larger of their scales.
    pub fn aligned(&self, other: &Self) -> (Self, Self) {
        let frac = self.frac.max(other.frac);
        (self.lift(frac), other.lift(frac))
    }

    /// Element-wise sum at the larger scale (of shares: a share of the sum).
    pub fn add(&self, other: &Self) -> Self {
        let (a, b) = self.aligned(other);
        a.zip_with(&b, u64::wrapping_add)
    }

    /// Element-wise difference at the larger scale.
    pub fn sub(&self, other: &Self) -> Self {
        let (a, b) = self.aligned(other);
        a.zip_with(&b, u64::wrapping_sub)
    }

    /// This party's share of the value truncated to scale `frac` (SecureML's share-local
    /// truncation; see the module's error bound). `party` is 0 or 1.
    pub fn truncate_share(&self, party: u8, frac: u32) -> Self {
        assert!(frac <= self.frac, "truncation raises no scale");
        let s = self.frac - frac;
        let shifted = if party == 0 {
            self.map(|v| ((v as i64) >> s) as u64)
        } else {
            self.map(|v| ((v.wrapping_neg() as i64) >> s) as u64)
                .map(u64::wrapping_neg)
        };
        Self { frac, ..shifted }
    }
}

/// Runs `work(rows, first_row)` over slices of whole rows of `out` (`cols` wide), on several
/// threads natively when the product is large enough to pay for them.
fn parallel_rows<T: Send, F>(out: &mut [T], cols: usize, flops: usize, work: F)
where
    F: Fn(&mut [T], usize) + Sync,
{
    let rows = out.len() / cols.max(1);
    #[cfg(not(target_arch = "wasm32"))]
    {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        if threads > 1 && flops > 1 << 20 && rows >= threads {
            let per = rows.div_ceil(threads);
            std::thread::scope(|s| {
                for (t, chunk) in out.chunks_mut(per * cols).enumerate() {
                    let work = &work;
                    s.spawn(move || work(chunk, t * per));
                }
            });
            return;
        }
    }
    let _ = (flops, rows);
    work(out, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips_within_half_an_ulp() {
        for &x in &[0.0, 1.0, -1.0, 2.71, -1234.5678, 1e-5] {
            let v = FixedPoint::encode_at(x, 16);
            assert!((FixedPoint::decode_at(v, 16) - x).abs() <= 0.5 / 65536.0);
        }
    }

    #[test]
    fn a_shared_product_truncates_to_within_one_ulp() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let x = RingMatrix::encode(1, 3, 32, &[2.5, -7.25, 0.001]);
        let r: Vec<u64> = (0..3).map(|_| rng.random()).collect();
        let s0 = RingMatrix {
            data: r.clone(),
            ..x.clone()
        };
        let s1 = x.sub(&s0);
        let t = s0.truncate_share(0, 16).add(&s1.truncate_share(1, 16));
        for (got, want) in t.decode().iter().zip([2.5, -7.25, 0.001]) {
            assert!((got - want).abs() <= 2.0 / 65536.0, "{got} vs {want}");
        }
    }
}
