//! CIFAR-10's binary batches (Krizhevsky, 2009): records of one label byte followed by 3,072
//! pixel bytes (1,024 red, then green, then blue, each row-major 32×32).

use super::{DataError, ImageDataset, ImageShape};

/// CIFAR-10's class names, by label (`batches.meta.txt`).
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

const RECORD: usize = 1 + 3 * 32 * 32;

/// Decodes one or more CIFAR-10 binary batch files (`data_batch_1.bin`, ..., `test_batch.bin`)
/// into one dataset, in the given order.
pub fn decode_cifar10(batches: &[(&str, &[u8])]) -> Result<ImageDataset, DataError> {
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for (name, bytes) in batches {
        if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD) {
            return Err(DataError::corrupt(
                *name,
                format!(
                    "{} bytes is not a whole number of {RECORD}-byte CIFAR-10 records (truncated?)",
                    bytes.len()
                ),
            ));
        }
        for (i, rec) in bytes.chunks_exact(RECORD).enumerate() {
            if rec[0] > 9 {
                return Err(DataError::corrupt(
                    *name,
                    format!(
                        "record {i}: label {} is outside 0..=9 (is this CIFAR-100?)",
                        rec[0]
                    ),
                ));
            }
            labels.push(u32::from(rec[0]));
            images.extend(rec[1..].iter().map(|&p| f32::from(p) / 255.0));
        }
    }
    if labels.is_empty() {
        return Err(DataError::Empty("no CIFAR-10 batches given".into()));
    }
    ImageDataset::new(
        images,
        labels,
        ImageShape::new(3, 32, 32),
        CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(labels: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, &l) in labels.iter().enumerate() {
            out.push(l);
            out.extend((0..3072).map(|p| ((p + i) % 256) as u8));
        }
        out
    }

    #[test]
    fn decodes_several_batches_in_order() {
        let a = batch(&[3, 1]);
        let b = batch(&[9]);
        let d = decode_cifar10(&[("a", &a), ("b", &b)]).unwrap();
        assert_eq!(d.labels, vec![3, 1, 9]);
        assert_eq!(d.shape, ImageShape::new(3, 32, 32));
        // Second image, first red pixel = (0 + 1) / 255; first green pixel = (1024 + 1) % 256.
        assert_eq!(d.image(1)[0], 1.0 / 255.0);
        assert_eq!(d.image(1)[1024], ((1024 + 1) % 256) as f32 / 255.0);
        assert_eq!(d.class_names[3], "cat");
    }

    #[test]
    fn truncated_and_foreign_batches_are_refused() {
        let a = batch(&[3, 1]);
        let err = decode_cifar10(&[("data_batch_1.bin", &a[..a.len() - 10])]).unwrap_err();
        assert!(err.to_string().contains("data_batch_1.bin"), "{err}");
        assert!(err.to_string().contains("truncated"), "{err}");
        let err = decode_cifar10(&[("x", &batch(&[42]))]).unwrap_err();
        assert!(err.to_string().contains("label 42"), "{err}");
    }
}
