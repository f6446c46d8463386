//! Image datasets: decoding the formats users hold their data in (bytes in, tensors out; the
//! binaries do the file IO), deterministic splits, and a synthetic class-conditional generator.
//!
//! Every loader produces an [`ImageDataset`]: f32 pixels in [0, 1], laid out `[N, C, H, W]`.

pub mod augment;
mod cifar;
mod digits;
mod folder;
pub mod handwriting;
mod idx;
mod synthetic;

pub mod container;

pub use cifar::{CIFAR10_CLASSES, decode_cifar10};
pub use digits::{DIGITS_CSV_GZ, DIGITS_LEVELS, decode_digits_csv, default_bins, digits};
pub use folder::{FolderEntry, decode_image, decode_image_folder, resize_dataset};
pub use idx::{decode_mnist_idx, encode_mnist_idx};
pub use synthetic::{SyntheticConfig, synthetic};

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

/// Why data could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The bytes are not in the expected format; the message says where and why.
    #[error("{source_name}: {reason}")]
    Corrupt {
        /// The file or entry.
        source_name: String,
        /// What is wrong.
        reason: String,
    },
    /// Two parts that must agree do not (e.g. MNIST image and label counts).
    #[error("inconsistent data: {0}")]
    Inconsistent(String),
    /// Nothing to load.
    #[error("no images found: {0}")]
    Empty(String),
}

impl DataError {
    pub(crate) fn corrupt(source_name: impl Into<String>, reason: impl Into<String>) -> Self {
        DataError::Corrupt {
            source_name: source_name.into(),
            reason: reason.into(),
        }
    }
}

/// Channels, height and width of every image of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ImageShape {
    /// 1 (grey) or 3 (RGB).
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

impl ImageShape {
    /// A shape.
    pub const fn new(channels: usize, height: usize, width: usize) -> Self {
        Self {
            channels,
            height,
            width,
        }
    }

    /// C·H·W.
    pub const fn len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Whether the shape has no pixels.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Display for ImageShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}×{}×{}", self.channels, self.height, self.width)
    }
}

/// A labelled image dataset held in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageDataset {
    /// Pixels in [0, 1], `[N, C, H, W]` row-major.
    pub images: Vec<f32>,
    /// Labels in `0..class_names.len()`.
    pub labels: Vec<u32>,
    /// Image shape.
    pub shape: ImageShape,
    /// Class names, indexed by label.
    pub class_names: Vec<String>,
}

impl ImageDataset {
    /// Builds a dataset, checking that sizes and labels agree.
    pub fn new(
        images: Vec<f32>,
        labels: Vec<u32>,
        shape: ImageShape,
        class_names: Vec<String>,
    ) -> Result<Self, DataError> {
        if shape.is_empty() {
            return Err(DataError::Inconsistent(
                "the image shape has no pixels".into(),
            ));
        }
        if images.len() != labels.len() * shape.len() {
            return Err(DataError::Inconsistent(format!(
                "{} pixel values for {} labels of shape {shape}",
                images.len(),
                labels.len()
            )));
        }
        if let Some(bad) = labels.iter().find(|&&l| l as usize >= class_names.len()) {
            return Err(DataError::Inconsistent(format!(
                "label {bad} is out of range for {} classes",
                class_names.len()
            )));
        }
        Ok(Self {
            images,
            labels,
            shape,
            class_names,
        })
    }

    /// The images of `self` followed by those of `other`, which must have the same shape and the
    /// same class names (two splits of one dataset, for example).
    pub fn concat(&self, other: &Self) -> Result<Self, DataError> {
        if self.shape != other.shape || self.class_names != other.class_names {
            return Err(DataError::Inconsistent(format!(
                "cannot join images of {} in {} classes with images of {} in {} classes",
                self.shape,
                self.num_classes(),
                other.shape,
                other.num_classes()
            )));
        }
        let mut joined = self.clone();
        joined.images.extend_from_slice(&other.images);
        joined.labels.extend_from_slice(&other.labels);
        Ok(joined)
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// The pixels of image `i`.
    pub fn image(&self, i: usize) -> &[f32] {
        let n = self.shape.len();
        &self.images[i * n..(i + 1) * n]
    }

    /// Images per class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes()];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }

    /// The indices of class `class`'s images, in order.
    pub fn class_indices(&self, class: u32) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.labels[i] == class)
            .collect()
    }

    /// The images at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Self {
        let n = self.shape.len();
        let mut images = Vec::with_capacity(indices.len() * n);
        for &i in indices {
            images.extend_from_slice(self.image(i));
        }
        Self {
            images,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            shape: self.shape,
            class_names: self.class_names.clone(),
        }
    }

    /// A deterministic stratified split: within each class, a seeded shuffle puts
    /// `round(test_fraction × class size)` images in the test set. Returns `(train, test)`, each in
    /// the original order.
    pub fn split(&self, test_fraction: f64, seed: u64) -> (Self, Self) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut train = Vec::new();
        let mut test = Vec::new();
        for class in 0..self.num_classes() as u32 {
            let mut idx = self.class_indices(class);
            idx.shuffle(&mut rng);
            let n_test = (idx.len() as f64 * test_fraction).round() as usize;
            test.extend_from_slice(&idx[..n_test]);
            train.extend_from_slice(&idx[n_test..]);
        }
        train.sort_unstable();
        test.sort_unstable();
        (self.subset(&train), self.subset(&test))
    }

    /// Images `range` as a `[B, C, H, W]` tensor.
    pub fn images_tensor(&self, range: std::ops::Range<usize>, device: &Device) -> Tensor<4> {
        let n = self.shape.len();
        images_tensor(
            &self.images[range.start * n..range.end * n],
            self.shape,
            device,
        )
    }

    /// Labels `range` as an int tensor.
    pub fn labels_tensor(&self, range: std::ops::Range<usize>, device: &Device) -> Tensor<1, Int> {
        let labels: Vec<i64> = self.labels[range].iter().map(|&l| i64::from(l)).collect();
        let len = labels.len();
        Tensor::from_data(TensorData::new(labels, [len]), device)
    }
}

/// A batch of images (`[B, C, H, W]` row-major pixels) as a tensor.
pub fn images_tensor(pixels: &[f32], shape: ImageShape, device: &Device) -> Tensor<4> {
    let b = pixels.len() / shape.len();
    Tensor::from_data(
        TensorData::new(
            pixels.to_vec(),
            [b, shape.channels, shape.height, shape.width],
        ),
        device,
    )
}

/// Decompresses gzip data, or returns the bytes as they are when they do not start with the gzip
/// magic number.
pub fn maybe_gunzip(source_name: &str, bytes: &[u8]) -> Result<Vec<u8>, DataError> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes), &mut out)
            .map_err(|e| DataError::corrupt(source_name, format!("bad gzip data ({e})")))?;
        Ok(out)
    } else {
        Ok(bytes.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n_per_class: usize) -> ImageDataset {
        let shape = ImageShape::new(1, 2, 2);
        let mut images = Vec::new();
        let mut labels = Vec::new();
        for c in 0..3u32 {
            for i in 0..n_per_class {
                images.extend([c as f32, i as f32, 0.0, 1.0]);
                labels.push(c);
            }
        }
        ImageDataset::new(
            images,
            labels,
            shape,
            vec!["a".into(), "b".into(), "c".into()],
        )
        .unwrap()
    }

    #[test]
    fn split_is_deterministic_stratified_and_disjoint() {
        let d = toy(10);
        let (train, test) = d.split(0.2, 7);
        assert_eq!(test.class_counts(), vec![2, 2, 2]);
        assert_eq!(train.class_counts(), vec![8, 8, 8]);
        let (train2, test2) = d.split(0.2, 7);
        assert_eq!(test, test2);
        assert_eq!(train, train2);
        let (_, test3) = d.split(0.2, 8);
        assert_ne!(test.images, test3.images);
        for i in 0..test.len() {
            assert!(!(0..train.len()).any(|j| train.image(j) == test.image(i)));
        }
    }

    #[test]
    fn new_rejects_inconsistent_sizes_and_labels() {
        let shape = ImageShape::new(1, 2, 2);
        assert!(ImageDataset::new(vec![0.0; 7], vec![0, 0], shape, vec!["a".into()]).is_err());
        let err = ImageDataset::new(vec![0.0; 8], vec![0, 3], shape, vec!["a".into()]).unwrap_err();
        assert!(err.to_string().contains("label 3"), "{err}");
    }
}
