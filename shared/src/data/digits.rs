//! The UCI "Optical Recognition of Handwritten Digits" set (Alpaydin & Kaynak, 1998; CC BY 4.0),
//! vendored as Veil's embedded default dataset: 1,797 images of 8×8 pixels with values 0..=16
//! (counts of set pixels in 4×4 blocks of a 32×32 bitmap), one row per image, the label last.

use super::{DataError, ImageDataset, ImageShape, maybe_gunzip};

/// The vendored file (see `assets/data/README.md` for the attribution).
/// The digits' quantisation: 17 grey levels (0..=16 in the CSV). A flow dequantises with this
/// many bins, where 8-bit images use 256.
pub const DIGITS_LEVELS: usize = 17;

/// The quantisation bins images of `shape` are read at when nothing else says: the UCI digits'
/// [`DIGITS_LEVELS`] for 8×8 grey images (the demo model reads those), 256 (8 bits) otherwise.
pub fn default_bins(shape: ImageShape) -> usize {
    if shape == ImageShape::new(1, 8, 8) {
        DIGITS_LEVELS
    } else {
        256
    }
}

pub const DIGITS_CSV_GZ: &[u8] = include_bytes!("../../../assets/data/digits.csv.gz");

/// The embedded digits, decoded.
pub fn digits() -> ImageDataset {
    decode_digits_csv("digits.csv.gz", DIGITS_CSV_GZ)
        .unwrap_or_else(|e| unreachable!("the vendored digits file decodes: {e}"))
}

/// Decodes the digits CSV (plain or gzip): 64 integers in 0..=16, then a label in 0..=9, per row.
/// Pixels are scaled to [0, 1] by dividing by 16.
pub fn decode_digits_csv(source_name: &str, bytes: &[u8]) -> Result<ImageDataset, DataError> {
    let raw = maybe_gunzip(source_name, bytes)?;
    let text =
        std::str::from_utf8(&raw).map_err(|_| DataError::corrupt(source_name, "not UTF-8 text"))?;
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for (lineno, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let at = |reason: String| {
            DataError::corrupt(source_name, format!("line {}: {reason}", lineno + 1))
        };
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != 65 {
            return Err(at(format!(
                "{} fields, expected 65 (64 pixels and a label)",
                fields.len()
            )));
        }
        for f in &fields[..64] {
            let v: u8 = f
                .trim()
                .parse()
                .map_err(|_| at(format!("pixel {f:?} is not an integer")))?;
            if v > 16 {
                return Err(at(format!("pixel {v} is outside 0..=16")));
            }
            images.push(f32::from(v) / 16.0);
        }
        let label: u32 = fields[64]
            .trim()
            .parse()
            .map_err(|_| at(format!("label {:?} is not an integer", fields[64])))?;
        if label > 9 {
            return Err(at(format!("label {label} is outside 0..=9")));
        }
        labels.push(label);
    }
    if labels.is_empty() {
        return Err(DataError::Empty(format!("{source_name} has no rows")));
    }
    let class_names = (0..10).map(|d| d.to_string()).collect();
    ImageDataset::new(images, labels, ImageShape::new(1, 8, 8), class_names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_digits_decode() {
        let d = digits();
        assert_eq!(d.len(), 1797);
        assert_eq!(d.shape, ImageShape::new(1, 8, 8));
        assert_eq!(d.class_counts().iter().sum::<usize>(), 1797);
        assert!(d.class_counts().iter().all(|&c| (170..=190).contains(&c)));
        // First row of the file: label 0, pixel (0, 2) = 5.
        assert_eq!(d.labels[0], 0);
        assert_eq!(d.image(0)[2], 5.0 / 16.0);
    }

    #[test]
    fn plain_text_and_errors() {
        let row: String = (0..64)
            .map(|i| (i % 17).to_string())
            .collect::<Vec<_>>()
            .join(",");
        let ok = format!("{row},3\n{row},4\n");
        let d = decode_digits_csv("t.csv", ok.as_bytes()).unwrap();
        assert_eq!(d.labels, vec![3, 4]);
        let err = decode_digits_csv("t.csv", format!("{row}\n").as_bytes()).unwrap_err();
        assert!(err.to_string().contains("line 1: 64 fields"), "{err}");
        let err = decode_digits_csv("t.csv", format!("{row},11\n").as_bytes()).unwrap_err();
        assert!(err.to_string().contains("label 11"), "{err}");
        let bad = ok.replacen('3', "x", 1);
        assert!(decode_digits_csv("t.csv", bad.as_bytes()).is_err());
        // A gzip stream cut in half.
        let err =
            decode_digits_csv("d.csv.gz", &DIGITS_CSV_GZ[..DIGITS_CSV_GZ.len() / 2]).unwrap_err();
        assert!(err.to_string().contains("d.csv.gz"), "{err}");
    }
}
