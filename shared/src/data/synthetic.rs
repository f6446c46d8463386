//! A synthetic, class-conditional image generator for scale tests and as a "cloud" dataset with
//! many labels: each class is a shape (disc, square, triangle, ring, ...) drawn at a random
//! position, scale, rotation and colour on a random background, with Gaussian pixel noise.
//! Classes 16..32 repeat the 16 shapes on a striped background.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::{DataError, ImageDataset, ImageShape};
use crate::crypto::gaussian::gaussian_fill;

/// The shapes, by class (mod 16).
pub const SHAPES: [&str; 16] = [
    "disc",
    "square",
    "triangle",
    "ring",
    "plus",
    "cross",
    "h-bar",
    "v-bar",
    "diamond",
    "ell",
    "two-dots",
    "frame",
    "half-disc",
    "checker",
    "stripes",
    "arrow",
];

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SyntheticConfig {
    /// Number of classes, 2..=32.
    pub classes: usize,
    /// Images per class.
    pub per_class: usize,
    /// Output shape (1 or 3 channels, any size ≥ 8).
    pub shape: ImageShape,
    /// Standard deviation of the additive pixel noise.
    pub noise: f32,
    /// RNG seed: the same seed gives the same images on every platform.
    pub seed: u64,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            classes: 10,
            per_class: 100,
            shape: ImageShape::new(3, 32, 32),
            noise: 0.05,
            seed: 0,
        }
    }
}

/// Generates the dataset: images are interleaved by class (0, 1, ..., k−1, 0, 1, ...).
pub fn synthetic(config: SyntheticConfig) -> Result<ImageDataset, DataError> {
    if !(2..=32).contains(&config.classes) {
        return Err(DataError::Inconsistent(format!(
            "the synthetic set has 2 to 32 classes, not {}",
            config.classes
        )));
    }
    let shape = config.shape;
    if (shape.channels != 1 && shape.channels != 3) || shape.height < 8 || shape.width < 8 {
        return Err(DataError::Inconsistent(format!(
            "synthetic images need 1 or 3 channels and at least 8×8 pixels, not {shape}"
        )));
    }
    let mut rng = ChaCha20Rng::seed_from_u64(config.seed);
    let n = config.classes * config.per_class;
    let mut images = Vec::with_capacity(n * shape.len());
    let mut labels = Vec::with_capacity(n);
    let mut noise = vec![0.0f64; shape.len()];
    for i in 0..n {
        let class = i % config.classes;
        let start = images.len();
        render(&mut rng, class, shape, &mut images);
        gaussian_fill(&mut rng, &mut noise);
        for (p, z) in images[start..].iter_mut().zip(&noise) {
            *p = (*p + config.noise * *z as f32).clamp(0.0, 1.0);
        }
        labels.push(class as u32);
    }
    let class_names = (0..config.classes)
        .map(|c| {
            let base = SHAPES[c % 16];
            if c >= 16 {
                format!("{base}-striped")
            } else {
                base.to_string()
            }
        })
        .collect();
    ImageDataset::new(images, labels, shape, class_names)
}

fn colour(rng: &mut ChaCha20Rng) -> [f32; 3] {
    [rng.random(), rng.random(), rng.random()]
}

fn render(rng: &mut ChaCha20Rng, class: usize, shape: ImageShape, out: &mut Vec<f32>) {
    let (h, w) = (shape.height as f32, shape.width as f32);
    let size = h.min(w);
    let cx = w * rng.random_range(0.35..0.65);
    let cy = h * rng.random_range(0.35..0.65);
    let scale = size * rng.random_range(0.2..0.32);
    let angle: f32 = rng.random_range(-0.35..0.35);
    let (sin, cos) = angle.sin_cos();
    let bg = colour(rng);
    // Keep the foreground visibly different from the background.
    let mut fg = colour(rng);
    while (0..3).map(|c| (fg[c] - bg[c]).abs()).sum::<f32>() < 0.6 {
        fg = colour(rng);
    }
    let striped = class >= 16;
    let stripe_period = rng.random_range(3.0..6.0f32);
    let base = out.len();
    out.resize(base + shape.len(), 0.0);
    let plane = shape.height * shape.width;
    for y in 0..shape.height {
        for x in 0..shape.width {
            let dx = (x as f32 + 0.5 - cx) / scale;
            let dy = (y as f32 + 0.5 - cy) / scale;
            let u = cos * dx + sin * dy;
            let v = -sin * dx + cos * dy;
            let on = inside(class % 16, u, v);
            let mut px = if on { fg } else { bg };
            if striped && !on && ((x as f32 / stripe_period) as i32) % 2 == 0 {
                px = [px[0] * 0.6, px[1] * 0.6, px[2] * 0.6];
            }
            let idx = y * shape.width + x;
            if shape.channels == 1 {
                out[base + idx] = 0.299 * px[0] + 0.587 * px[1] + 0.114 * px[2];
            } else {
                for (c, value) in px.iter().enumerate() {
                    out[base + c * plane + idx] = *value;
                }
            }
        }
    }
}

/// Whether (u, v), in shape units centred on the shape, is inside shape `s`.
fn inside(s: usize, u: f32, v: f32) -> bool {
    let r = (u * u + v * v).sqrt();
    match s {
        0 => r < 1.0,
        1 => u.abs() < 0.85 && v.abs() < 0.85,
        2 => v < 0.8 && u.abs() < (v + 0.9) / 1.7,
        3 => (0.6..1.0).contains(&r),
        4 => (u.abs() < 0.25 && v.abs() < 1.0) || (v.abs() < 0.25 && u.abs() < 1.0),
        5 => ((u - v).abs() < 0.3 || (u + v).abs() < 0.3) && r < 1.1,
        6 => v.abs() < 0.3 && u.abs() < 1.1,
        7 => u.abs() < 0.3 && v.abs() < 1.1,
        8 => u.abs() + v.abs() < 1.0,
        9 => {
            (u.abs() < 1.0 && (0.5..1.0).contains(&v))
                || ((-1.0..-0.5).contains(&u) && v.abs() < 1.0)
        }
        10 => {
            ((u - 0.55).powi(2) + v * v).sqrt() < 0.4 || ((u + 0.55).powi(2) + v * v).sqrt() < 0.4
        }
        11 => u.abs().max(v.abs()) < 1.0 && u.abs().max(v.abs()) > 0.65,
        12 => r < 1.0 && v > 0.0,
        13 => {
            u.abs() < 1.0
                && v.abs() < 1.0
                && (((u + 1.0) * 2.0) as i32 + ((v + 1.0) * 2.0) as i32) % 2 == 0
        }
        14 => u.abs() < 1.0 && v.abs() < 1.0 && (((v + 1.0) * 2.5) as i32) % 2 == 0,
        _ => {
            (v.abs() < 0.2 && (-1.0..0.3).contains(&u))
                || ((0.3..1.0).contains(&u) && v.abs() < 1.0 - u)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_balanced_and_in_range() {
        let cfg = SyntheticConfig {
            classes: 12,
            per_class: 5,
            ..Default::default()
        };
        let a = synthetic(cfg).unwrap();
        let b = synthetic(cfg).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 60);
        assert_eq!(a.shape, ImageShape::new(3, 32, 32));
        assert_eq!(a.class_counts(), vec![5; 12]);
        assert!(a.images.iter().all(|p| (0.0..=1.0).contains(p)));
        let c = synthetic(SyntheticConfig { seed: 1, ..cfg }).unwrap();
        assert_ne!(a.images, c.images);
    }

    /// Every shape covers a sensible share of its bounding box, and the classes differ: the mean
    /// "foreground mask" of each class is distinct from every other's.
    #[test]
    fn every_shape_is_visible_and_distinct() {
        let grid: Vec<(f32, f32)> = (0..40)
            .flat_map(|i| (0..40).map(move |j| (i as f32 / 16.0 - 1.25, j as f32 / 16.0 - 1.25)))
            .collect();
        let masks: Vec<Vec<bool>> = (0..16)
            .map(|s| grid.iter().map(|&(u, v)| inside(s, u, v)).collect())
            .collect();
        for (s, m) in masks.iter().enumerate() {
            let share = m.iter().filter(|&&b| b).count() as f32 / m.len() as f32;
            assert!(
                (0.04..0.7).contains(&share),
                "shape {} covers {share}",
                SHAPES[s]
            );
        }
        for a in 0..16 {
            for b in a + 1..16 {
                let diff = masks[a]
                    .iter()
                    .zip(&masks[b])
                    .filter(|(x, y)| x != y)
                    .count();
                assert!(
                    diff > 40,
                    "{} and {} differ in {diff} cells",
                    SHAPES[a],
                    SHAPES[b]
                );
            }
        }
    }

    #[test]
    fn bad_configs_are_refused() {
        assert!(
            synthetic(SyntheticConfig {
                classes: 40,
                ..Default::default()
            })
            .is_err()
        );
        let tiny = ImageShape::new(3, 4, 4);
        assert!(
            synthetic(SyntheticConfig {
                shape: tiny,
                ..Default::default()
            })
            .is_err()
        );
    }
}
