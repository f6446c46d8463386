//! Image-reconstruction metrics as gradient-inversion papers report them (the `breaching`
//! library's MSE, PSNR and SSIM), on plain `[C, H, W]` slices with values in [0, 1].

use crate::data::ImageShape;

/// Mean squared error.
pub fn mse(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len()).max(1);
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = f64::from(*x) - f64::from(*y);
            d * d
        })
        .sum::<f64>()
        / n as f64
}

/// Peak signal-to-noise ratio in dB for data range 1, capped at 100 dB for identical images.
pub fn psnr(a: &[f32], b: &[f32]) -> f64 {
    let m = mse(a, b);
    if m <= 1e-10 { 100.0 } else { -10.0 * m.log10() }
}

/// Structural similarity (Wang, Bovik, Sheikh, Simoncelli 2004) with a Gaussian window
/// (σ = 1.5), `K1 = 0.01`, `K2 = 0.03`, data range 1, averaged over the window positions that fit
/// in the image and over channels. The window is 11×11, or the largest odd size that fits (7×7 on
/// 8×8 digits, as scikit-image's default for small images).
pub fn ssim(a: &[f32], b: &[f32], shape: ImageShape) -> f64 {
    let (h, w) = (shape.height, shape.width);
    let side = h.min(w);
    let win = if side >= 11 {
        11
    } else if side % 2 == 1 {
        side
    } else {
        side.saturating_sub(1).max(1)
    };
    let half = (win / 2) as f64;
    let mut kernel = vec![0.0f64; win * win];
    for (i, k) in kernel.iter_mut().enumerate() {
        let (dy, dx) = ((i / win) as f64 - half, (i % win) as f64 - half);
        *k = (-(dx * dx + dy * dy) / (2.0 * 1.5 * 1.5)).exp();
    }
    let total: f64 = kernel.iter().sum();
    kernel.iter_mut().for_each(|k| *k /= total);
    let (c1, c2) = (0.01f64.powi(2), 0.03f64.powi(2));
    let mut sum = 0.0;
    let mut count = 0usize;
    for c in 0..shape.channels {
        let at = |img: &[f32], y: usize, x: usize| f64::from(img[(c * h + y) * w + x]);
        for y0 in 0..=h - win {
            for x0 in 0..=w - win {
                let (mut ma, mut mb, mut aa, mut bb, mut ab) = (0.0, 0.0, 0.0, 0.0, 0.0);
                for ky in 0..win {
                    for kx in 0..win {
                        let k = kernel[ky * win + kx];
                        let (u, v) = (at(a, y0 + ky, x0 + kx), at(b, y0 + ky, x0 + kx));
                        ma += k * u;
                        mb += k * v;
                        aa += k * u * u;
                        bb += k * v * v;
                        ab += k * u * v;
                    }
                }
                let (va, vb, cov) = (aa - ma * ma, bb - mb * mb, ab - ma * mb);
                sum += ((2.0 * ma * mb + c1) * (2.0 * cov + c2))
                    / ((ma * ma + mb * mb + c1) * (va + vb + c2));
                count += 1;
            }
        }
    }
    if count == 0 { 0.0 } else { sum / count as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psnr_and_mse_values() {
        let a = vec![0.0f32; 64];
        let b = vec![0.1f32; 64];
        assert!((mse(&a, &b) - 0.01).abs() < 1e-9);
        assert!((psnr(&a, &b) - 20.0).abs() < 1e-6);
        assert_eq!(psnr(&a, &a), 100.0);
    }

    #[test]
    fn ssim_is_one_for_equal_images_and_lower_for_noise() {
        let shape = ImageShape::new(1, 8, 8);
        let a: Vec<f32> = (0..64).map(|i| ((i * 7) % 17) as f32 / 16.0).collect();
        assert!((ssim(&a, &a, shape) - 1.0).abs() < 1e-12);
        let flipped: Vec<f32> = a.iter().map(|v| 1.0 - v).collect();
        assert!(
            ssim(&a, &flipped, shape) < 0.0,
            "an inverted image is anti-correlated"
        );
        let noisy: Vec<f32> = a
            .iter()
            .enumerate()
            .map(|(i, v)| (v + if i % 2 == 0 { 0.05 } else { -0.05 }).clamp(0.0, 1.0))
            .collect();
        let s = ssim(&a, &noisy, shape);
        assert!(s > 0.8 && s < 1.0, "ssim {s}");
    }
}
