//! The combined methods' merge T (paper §4.1, Eq. 2): Horizontal Concat (§4.2.1) and Mixup And
//! Concat (§4.2.2), on images `[C, H, W]` in row-major order.

use super::AdversarialError;
use super::correspondence::{CombineMethod, CombinedKey};
use crate::data::{ImageDataset, ImageShape};

/// The first column taken from the right part when `ratio` of the width comes from the left:
/// `round(ratio · W)`, within `0..=W`.
pub fn split_column(width: usize, ratio: f32) -> usize {
    ((ratio.clamp(0.0, 1.0) * width as f32).round() as usize).min(width)
}

/// Columns `0..split` of `left` beside columns `split..W` of `right`.
pub fn horizontal_concat(left: &[f32], right: &[f32], shape: ImageShape, ratio: f32) -> Vec<f32> {
    let split = split_column(shape.width, ratio);
    left.iter()
        .zip(right)
        .enumerate()
        .map(|(i, (&l, &r))| if i % shape.width < split { l } else { r })
        .collect()
}

/// `weight · a + (1 − weight) · b`.
pub fn mixup(a: &[f32], b: &[f32], weight: f32) -> Vec<f32> {
    a.iter()
        .zip(b)
        .map(|(&a, &b)| weight * a + (1.0 - weight) * b)
        .collect()
}

/// Merges the N(y) perturbed copies of one image of class `label` as `key` says, at the class's
/// ratio or at `ratio` when given (the paper's Table 5 varies it at test time).
pub fn merge(
    key: &CombinedKey,
    label: u32,
    copies: &[&[f32]],
    shape: ImageShape,
    ratio: Option<f32>,
) -> Vec<f32> {
    let y = label as usize;
    let ratio = ratio.unwrap_or(key.ratios[y]);
    match key.method {
        CombineMethod::HorizontalConcat => horizontal_concat(copies[0], copies[1], shape, ratio),
        CombineMethod::MixupConcat => {
            let [w1, w2] = key.weights[y];
            let left = mixup(copies[0], copies[1], w1);
            let right = mixup(copies[2], copies[3], w2);
            horizontal_concat(&left, &right, shape, ratio)
        }
    }
}

/// Merges whole datasets of copies (`copies[j]` perturbed toward each image's j-th target; same
/// images, same order) into the combined encryption of the set.
pub fn merge_dataset(
    key: &CombinedKey,
    copies: &[ImageDataset],
    ratio: Option<f32>,
) -> Result<ImageDataset, AdversarialError> {
    let n = key.method.targets_per_class();
    if copies.len() != n {
        return Err(AdversarialError::Invalid(format!(
            "{} merges {n} copies per image, not {}",
            key.method.name(),
            copies.len()
        )));
    }
    let first = &copies[0];
    if copies
        .iter()
        .any(|c| c.labels != first.labels || c.shape != first.shape)
    {
        return Err(AdversarialError::Invalid(
            "the copies to merge are not copies of the same images".into(),
        ));
    }
    let mut images = Vec::with_capacity(first.images.len());
    for (i, &y) in first.labels.iter().enumerate() {
        let parts: Vec<&[f32]> = copies.iter().map(|c| c.image(i)).collect();
        images.extend(merge(key, y, &parts, first.shape, ratio));
    }
    Ok(ImageDataset {
        images,
        labels: first.labels.clone(),
        shape: first.shape,
        class_names: first.class_names.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concat_and_mixup_place_the_pixels_the_paper_says() {
        let shape = ImageShape::new(2, 2, 5);
        let a = vec![1.0f32; shape.len()];
        let b = vec![0.0f32; shape.len()];
        // 40 % of 5 columns: 2 from the left image, 3 from the right, in every row and channel.
        let c = horizontal_concat(&a, &b, shape, 0.4);
        for row in c.chunks(5) {
            assert_eq!(row, &[1.0, 1.0, 0.0, 0.0, 0.0]);
        }
        assert_eq!(horizontal_concat(&a, &b, shape, 1.0), a);
        assert_eq!(horizontal_concat(&a, &b, shape, 0.0), b);
        assert!(mixup(&a, &b, 0.3).iter().all(|&v| (v - 0.3).abs() < 1e-6));
        let key = CombinedKey {
            method: CombineMethod::MixupConcat,
            targets: vec![vec![1, 2, 3, 4]],
            ratios: vec![0.6],
            weights: vec![[0.25, 0.5]],
        };
        let (c1, c2, c3, c4) = (vec![1.0; 10], vec![0.0; 10], vec![0.2; 10], vec![0.6; 10]);
        let m = merge(
            &key,
            0,
            &[&c1, &c2, &c3, &c4],
            ImageShape::new(1, 2, 5),
            None,
        );
        // Left 3 columns: 0.25·1 + 0.75·0; right 2: 0.5·0.2 + 0.5·0.6.
        for row in m.chunks(5) {
            for (x, want) in row.iter().zip([0.25, 0.25, 0.25, 0.4, 0.4]) {
                assert!((x - want).abs() < 1e-6, "{row:?}");
            }
        }
    }
}
