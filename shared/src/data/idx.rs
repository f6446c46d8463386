//! MNIST's IDX format (LeCun et al.): big-endian headers, `u8` pixels. Plain or gzip.

use super::{DataError, ImageDataset, ImageShape, maybe_gunzip};

/// Decodes an MNIST-style pair of IDX files: images (magic 0x00000803, `[N, H, W]` u8) and labels
/// (magic 0x00000801, `[N]` u8). Works for MNIST, Fashion-MNIST and KMNIST.
pub fn decode_mnist_idx(
    images_name: &str,
    images: &[u8],
    labels_name: &str,
    labels: &[u8],
) -> Result<ImageDataset, DataError> {
    let images = maybe_gunzip(images_name, images)?;
    let labels = maybe_gunzip(labels_name, labels)?;
    let dims = header(images_name, &images, 0x0803, 3)?;
    let (n, h, w) = (dims[0], dims[1], dims[2]);
    let ldims = header(labels_name, &labels, 0x0801, 1)?;
    if ldims[0] != n {
        return Err(DataError::Inconsistent(format!(
            "{images_name} holds {n} images but {labels_name} holds {} labels",
            ldims[0]
        )));
    }
    let pixels = &images[16..];
    let expected = n
        .checked_mul(h)
        .and_then(|x| x.checked_mul(w))
        .ok_or_else(|| DataError::corrupt(images_name, "dimensions overflow"))?;
    if pixels.len() != expected {
        return Err(DataError::corrupt(
            images_name,
            format!(
                "{} pixel bytes, header promises {expected} ({n}×{h}×{w})",
                pixels.len()
            ),
        ));
    }
    let label_bytes = &labels[8..];
    if label_bytes.len() != n {
        return Err(DataError::corrupt(
            labels_name,
            format!("{} label bytes, header promises {n}", label_bytes.len()),
        ));
    }
    if n == 0 {
        return Err(DataError::Empty(format!("{images_name} holds no images")));
    }
    let max_label = *label_bytes.iter().max().unwrap_or(&0);
    let classes = (max_label as usize + 1).max(10);
    ImageDataset::new(
        pixels.iter().map(|&p| f32::from(p) / 255.0).collect(),
        label_bytes.iter().map(|&l| u32::from(l)).collect(),
        ImageShape::new(1, h, w),
        (0..classes).map(|c| c.to_string()).collect(),
    )
}

fn header(name: &str, bytes: &[u8], magic: u32, ndims: usize) -> Result<Vec<usize>, DataError> {
    let need = 4 + 4 * ndims;
    if bytes.len() < need {
        return Err(DataError::corrupt(
            name,
            format!("{} bytes, shorter than the IDX header", bytes.len()),
        ));
    }
    let word = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let found = word(0);
    if found != magic {
        return Err(DataError::corrupt(
            name,
            format!(
                "magic number {found:#010x}, expected {magic:#010x} (is this the right IDX file?)"
            ),
        ));
    }
    Ok((0..ndims).map(|d| word(4 + 4 * d) as usize).collect())
}

/// Encodes an IDX pair (used by tests and by `veil` to export data).
pub fn encode_mnist_idx(pixels: &[u8], labels: &[u8], h: usize, w: usize) -> (Vec<u8>, Vec<u8>) {
    let n = labels.len();
    let mut img = Vec::with_capacity(16 + pixels.len());
    img.extend(0x0803u32.to_be_bytes());
    for d in [n, h, w] {
        img.extend((d as u32).to_be_bytes());
    }
    img.extend_from_slice(pixels);
    let mut lab = Vec::with_capacity(8 + n);
    lab.extend(0x0801u32.to_be_bytes());
    lab.extend((n as u32).to_be_bytes());
    lab.extend_from_slice(labels);
    (img, lab)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn sample() -> (Vec<u8>, Vec<u8>) {
        let pixels: Vec<u8> = (0..3 * 4 * 5).map(|i| (i * 4) as u8).collect();
        encode_mnist_idx(&pixels, &[7, 0, 9], 4, 5)
    }

    #[test]
    fn decodes_plain_and_gzip() {
        let (img, lab) = sample();
        let d = decode_mnist_idx("i", &img, "l", &lab).unwrap();
        assert_eq!(d.shape, ImageShape::new(1, 4, 5));
        assert_eq!(d.labels, vec![7, 0, 9]);
        assert_eq!(d.image(0)[1], 4.0 / 255.0);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&img).unwrap();
        let d2 = decode_mnist_idx("i.gz", &gz.finish().unwrap(), "l", &lab).unwrap();
        assert_eq!(d, d2);
    }

    #[test]
    fn corrupt_files_are_named() {
        let (img, lab) = sample();
        let err = decode_mnist_idx("train-images", &img[..img.len() - 1], "l", &lab).unwrap_err();
        assert!(err.to_string().starts_with("train-images:"), "{err}");
        let err = decode_mnist_idx("i", &img, "l", &img).unwrap_err();
        assert!(err.to_string().contains("magic"), "{err}");
        let err =
            decode_mnist_idx("i", &img, "l", &encode_mnist_idx(&[], &[1, 2], 4, 5).1).unwrap_err();
        assert!(err.to_string().contains("3 images but l holds 2"), "{err}");
        assert!(decode_mnist_idx("i", &img[..6], "l", &lab).is_err());
    }
}
