//! Handwriting-style jitter: random affine warps of small grey images (slant, shear, stretch,
//! shift), so that a model trained on one set of writers reads more of the ways people write.
//! Used to train the demo model (see its model card).

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::ImageDataset;

/// `data` followed by `copies` warped copies of each image, re-quantised to `levels` levels:
/// rotation ±12°, shear ±0.3, horizontal scale 0.75–1.1, vertical 0.9–1.05, shift ±0.5 pixel
/// (bilinear resampling, zero outside the image). Reproducible from `seed`.
pub fn handwriting_jitter(
    data: &ImageDataset,
    copies: usize,
    levels: usize,
    seed: u64,
) -> ImageDataset {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let s = data.shape;
    let (h, w) = (s.height, s.width);
    let q = (levels.max(2) - 1) as f32;
    let mut out = data.clone();
    for _ in 0..copies {
        for i in 0..data.len() {
            let img = data.image(i);
            let angle = rng.random_range(-12.0..12.0f32).to_radians();
            let shear = rng.random_range(-0.3..0.3f32);
            let (sx, sy) = (
                rng.random_range(0.75..1.1f32),
                rng.random_range(0.9..1.05f32),
            );
            let (tx, ty) = (
                rng.random_range(-0.5..0.5f32),
                rng.random_range(-0.5..0.5f32),
            );
            let (sin, cos) = angle.sin_cos();
            // Forward map (centred): p' = R·Sh·S·p + t. Sample the source at its inverse.
            let m = [
                [cos * sx, (cos * shear - sin) * sy],
                [sin * sx, (sin * shear + cos) * sy],
            ];
            let det = m[0][0] * m[1][1] - m[0][1] * m[1][0];
            let inv = [
                [m[1][1] / det, -m[0][1] / det],
                [-m[1][0] / det, m[0][0] / det],
            ];
            let (cx, cy) = ((w as f32 - 1.0) / 2.0, (h as f32 - 1.0) / 2.0);
            for c in 0..s.channels {
                let plane = &img[c * h * w..(c + 1) * h * w];
                let at = |x: i64, y: i64| {
                    if x < 0 || y < 0 || x >= w as i64 || y >= h as i64 {
                        0.0
                    } else {
                        plane[y as usize * w + x as usize]
                    }
                };
                for y in 0..h {
                    for x in 0..w {
                        let (dx, dy) = (x as f32 - cx - tx, y as f32 - cy - ty);
                        let u = inv[0][0] * dx + inv[0][1] * dy + cx;
                        let v = inv[1][0] * dx + inv[1][1] * dy + cy;
                        let (x0, y0) = (u.floor(), v.floor());
                        let (fx, fy) = (u - x0, v - y0);
                        let (x0, y0) = (x0 as i64, y0 as i64);
                        let val = at(x0, y0) * (1.0 - fx) * (1.0 - fy)
                            + at(x0 + 1, y0) * fx * (1.0 - fy)
                            + at(x0, y0 + 1) * (1.0 - fx) * fy
                            + at(x0 + 1, y0 + 1) * fx * fy;
                        out.images.push((val.clamp(0.0, 1.0) * q).round() / q);
                    }
                }
            }
            out.labels.push(data.labels[i]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::digits;

    #[test]
    fn jitter_keeps_labels_levels_and_most_of_the_ink() {
        let data = digits().subset(&(0..50).collect::<Vec<_>>());
        let more = handwriting_jitter(&data, 2, 17, 3);
        assert_eq!(more.len(), 150);
        assert_eq!(more.labels[50..100], data.labels[..]);
        assert_eq!(more.images[..data.images.len()], data.images[..]);
        assert!(more.images.iter().all(|v| (v * 16.0).fract() == 0.0));
        let ink = |d: &[f32]| d.iter().sum::<f32>();
        let (before, after) = (
            ink(&data.images),
            ink(&more.images[data.images.len()..]) / 2.0,
        );
        assert!(
            after > 0.7 * before && after < 1.3 * before,
            "{before} → {after}"
        );
        assert_ne!(
            more.images[data.images.len()..2 * data.images.len()],
            data.images[..]
        );
        assert_eq!(handwriting_jitter(&data, 2, 17, 3), more);
    }
}
