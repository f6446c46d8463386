//! The dataset container: how a labelled image dataset travels from the data owner to the ML
//! factory (and back), as one [safetensors](https://huggingface.co/docs/safetensors) file.
//!
//! Layout (format `veil-dataset/1`):
//!
//! | tensor   | dtype        | shape          | meaning                                           |
//! |----------|--------------|----------------|---------------------------------------------------|
//! | `images` | `U8` or `F32`| `[N, C, H, W]` | pixels: `U8` is `x·255`, `F32` is `x` itself       |
//! | `labels` | `U32`        | `[N]`          | class indices in `0..classes.len()`               |
//!
//! String metadata (`__metadata__`), and nothing else:
//!
//! | key               | required | value                                                      |
//! |-------------------|----------|------------------------------------------------------------|
//! | `format`          | yes      | `veil-dataset/1`                                           |
//! | `classes`         | yes      | a JSON array of the class names, indexed by label          |
//! | `scheme`          | yes      | how the images were produced: `plain`, `flow-rotation`, …  |
//! | `key_fingerprint` | no       | the [fingerprint](crate::crypto::keys) of the key that encrypted them |
//! | `description`     | no       | free text, at most 1,000 characters                        |
//! | `settings`        | no       | a JSON object of the scheme's public settings, at most 1,000 characters (flow rotation: [`crate::schemes::flow_rotation::CiphertextSettings`]) |
//!
//! A container never holds a key: only a key's *fingerprint*, so that the owner can tell which
//! key a dataset needs. Unknown metadata keys are refused rather than carried along, so that
//! nothing secret can ride in a field this version does not know.
//!
//! [`decode`] is total: any byte string gives a value or a [`ContainerError`] naming the defect,
//! never a panic (it is fuzzed: `cargo xtask fuzz`).
//!
//! Why this file is over 600 lines: a quarter is its unit tests; the format's writer and its
//! validating reader belong together.

use std::collections::HashMap;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::data::{ImageDataset, ImageShape};

/// The format tag written in every container.
pub const FORMAT: &str = "veil-dataset/1";

/// The largest side, channel count and class count a container may declare.
pub const MAX_SIDE: usize = 512;
/// See [`MAX_SIDE`].
pub const MAX_CHANNELS: usize = 4;
/// See [`MAX_SIDE`].
pub const MAX_CLASSES: usize = 10_000;
const MAX_DESCRIPTION: usize = 1_000;
const MAX_SCHEME: usize = 64;

/// How pixels are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PixelType {
    /// One byte a pixel value, `round(x·255)`: for images in [0, 1] that tolerate quantisation.
    U8,
    /// `f32` little-endian, exact: for ciphertexts and anything outside [0, 1].
    F32,
}

/// What a container says about its images besides pixels and labels.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContainerMeta {
    /// How the images were produced (`plain`, `flow-rotation`, `owsd-scrambled`, …): 1 to 64
    /// characters of `[a-z0-9-]`.
    pub scheme: String,
    /// The fingerprint of the key that produced them, if any (never the key).
    pub key_fingerprint: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// The scheme's public settings, a JSON object (what decryption needs besides the key: for
    /// flow rotation, the route, the temperature, cover classes and the rotation derivation).
    /// Never secret. Absent in containers written before it existed.
    #[serde(default)]
    pub settings: Option<String>,
}

impl ContainerMeta {
    /// Metadata for images in the clear (public or demo data).
    pub fn plain() -> Self {
        Self {
            scheme: "plain".into(),
            key_fingerprint: None,
            description: None,
            settings: None,
        }
    }
}

/// Why bytes are not a valid dataset container. Each message says what is wrong in words a user
/// can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContainerError {
    /// Not a safetensors file at all, or a damaged one (truncated, bad header).
    #[error("not a readable safetensors file: {0}")]
    NotSafetensors(String),
    /// A safetensors file, but not a Veil dataset (wrong or missing `format`).
    #[error("not a Veil dataset container: {0}")]
    WrongFormat(String),
    /// A tensor is missing, or has the wrong dtype or shape.
    #[error("bad tensor {name:?}: {reason}")]
    Tensor {
        /// `images` or `labels`.
        name: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A metadata field is missing or malformed.
    #[error("bad metadata {key:?}: {reason}")]
    Metadata {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A label is not below the number of classes.
    #[error(
        "label {label} of image {index} is out of range: the container names {classes} classes"
    )]
    LabelOutOfRange {
        /// The image.
        index: usize,
        /// Its label.
        label: u32,
        /// Number of classes.
        classes: usize,
    },
    /// A pixel value is NaN or infinite.
    #[error("image {index} holds a non-finite pixel value (NaN or infinity)")]
    NonFinite {
        /// The first offending image.
        index: usize,
    },
    /// The dataset to encode is unusable (empty, or its pixels do not fit the pixel type).
    #[error("cannot encode: {0}")]
    Encode(String),
}

fn tensor_err(name: &'static str, reason: impl Into<String>) -> ContainerError {
    ContainerError::Tensor {
        name,
        reason: reason.into(),
    }
}

fn meta_err(key: &str, reason: impl Into<String>) -> ContainerError {
    ContainerError::Metadata {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

fn check_scheme(scheme: &str) -> Result<(), ContainerError> {
    let ok = !scheme.is_empty()
        && scheme.len() <= MAX_SCHEME
        && scheme
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(meta_err(
            "scheme",
            format!("{scheme:?} is not 1 to {MAX_SCHEME} characters of a-z, 0-9 and '-'"),
        ))
    }
}

/// A `settings` value: a JSON object of at most [`MAX_DESCRIPTION`] characters.
fn check_settings(settings: &str) -> Result<(), ContainerError> {
    if settings.chars().count() > MAX_DESCRIPTION {
        return Err(meta_err(
            "settings",
            format!("longer than {MAX_DESCRIPTION} characters"),
        ));
    }
    match serde_json::from_str::<serde_json::Value>(settings) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        Ok(_) => Err(meta_err("settings", "not a JSON object")),
        Err(e) => Err(meta_err("settings", format!("not JSON: {e}"))),
    }
}

fn check_fingerprint(fp: &str) -> Result<(), ContainerError> {
    let ok =
        !fp.is_empty() && fp.len() <= 64 && fp.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(meta_err(
            "key_fingerprint",
            "a fingerprint is 1 to 64 characters of hexadecimal digits and '-' (a key's \
             fingerprint, never the key itself)",
        ))
    }
}

fn check_classes(classes: &[String]) -> Result<(), ContainerError> {
    if classes.is_empty() || classes.len() > MAX_CLASSES {
        return Err(meta_err(
            "classes",
            format!(
                "{} class names; a dataset has 1 to {MAX_CLASSES}",
                classes.len()
            ),
        ));
    }
    if let Some(bad) = classes
        .iter()
        .find(|c| c.is_empty() || c.chars().count() > 100)
    {
        return Err(meta_err(
            "classes",
            format!("class name {bad:?} must have 1 to 100 characters"),
        ));
    }
    Ok(())
}

/// Checks an image shape against the container's limits.
pub fn check_shape(shape: ImageShape) -> Result<(), String> {
    if !(1..=MAX_CHANNELS).contains(&shape.channels) {
        return Err(format!(
            "{} channels; images have 1 to {MAX_CHANNELS}",
            shape.channels
        ));
    }
    for (what, side) in [("height", shape.height), ("width", shape.width)] {
        if !(1..=MAX_SIDE).contains(&side) {
            return Err(format!("{what} {side}; sides are 1 to {MAX_SIDE} pixels"));
        }
    }
    Ok(())
}

/// Writes `data` as a container. `U8` requires every pixel in [0, 1].
pub fn encode(
    data: &ImageDataset,
    meta: &ContainerMeta,
    pixels: PixelType,
) -> Result<Vec<u8>, ContainerError> {
    if data.is_empty() {
        return Err(ContainerError::Encode("the dataset has no images".into()));
    }
    check_shape(data.shape).map_err(ContainerError::Encode)?;
    check_scheme(&meta.scheme)?;
    check_classes(&data.class_names)?;
    if let Some(fp) = &meta.key_fingerprint {
        check_fingerprint(fp)?;
    }
    if let Some(i) = data.images.iter().position(|v| !v.is_finite()) {
        return Err(ContainerError::NonFinite {
            index: i / data.shape.len(),
        });
    }
    let n = data.len();
    let s = data.shape;
    let image_bytes: Vec<u8> = match pixels {
        PixelType::U8 => {
            if let Some(i) = data.images.iter().position(|v| !(0.0..=1.0).contains(v)) {
                return Err(ContainerError::Encode(format!(
                    "image {} has a pixel value outside [0, 1]; store it as f32",
                    i / s.len()
                )));
            }
            data.images
                .iter()
                .map(|v| (v * 255.0).round() as u8)
                .collect()
        }
        PixelType::F32 => data.images.iter().flat_map(|v| v.to_le_bytes()).collect(),
    };
    let label_bytes: Vec<u8> = data.labels.iter().flat_map(|l| l.to_le_bytes()).collect();
    let dtype = match pixels {
        PixelType::U8 => Dtype::U8,
        PixelType::F32 => Dtype::F32,
    };
    let view = |dtype, shape, bytes| {
        TensorView::new(dtype, shape, bytes)
            .map_err(|e| ContainerError::Encode(format!("safetensors: {e}")))
    };
    let images = view(dtype, vec![n, s.channels, s.height, s.width], &image_bytes)?;
    let labels = view(Dtype::U32, vec![n], &label_bytes)?;
    let mut info = HashMap::new();
    info.insert("format".to_owned(), FORMAT.to_owned());
    info.insert("scheme".to_owned(), meta.scheme.clone());
    info.insert(
        "classes".to_owned(),
        serde_json::to_string(&data.class_names)
            .map_err(|e| ContainerError::Encode(e.to_string()))?,
    );
    if let Some(fp) = &meta.key_fingerprint {
        info.insert("key_fingerprint".to_owned(), fp.clone());
    }
    if let Some(d) = &meta.description {
        info.insert("description".to_owned(), d.clone());
    }
    if let Some(settings) = &meta.settings {
        check_settings(settings).map_err(|e| ContainerError::Encode(e.to_string()))?;
        info.insert("settings".to_owned(), settings.clone());
    }
    safetensors::tensor::serialize([("images", images), ("labels", labels)], Some(info))
        .map_err(|e| ContainerError::Encode(format!("safetensors: {e}")))
}

/// A decoded container: the dataset, how its pixels were stored, and its metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Container {
    /// Images (f32 `[N, C, H, W]`; `U8` pixels are divided by 255) and labels.
    pub dataset: ImageDataset,
    /// How the pixels were stored.
    pub pixels: PixelType,
    /// The metadata.
    pub meta: ContainerMeta,
}

/// Reads and validates a container: format, tensor names, dtypes and shapes, label range, finite
/// pixels, and the metadata fields.
pub fn decode(bytes: &[u8]) -> Result<Container, ContainerError> {
    let tensors = SafeTensors::deserialize(bytes)
        .map_err(|e| ContainerError::NotSafetensors(e.to_string()))?;
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| ContainerError::NotSafetensors(e.to_string()))?;
    let info = header
        .metadata()
        .as_ref()
        .ok_or_else(|| ContainerError::WrongFormat("it has no metadata".into()))?;
    match info.get("format").map(String::as_str) {
        Some(FORMAT) => {}
        Some(other) => {
            return Err(ContainerError::WrongFormat(format!(
                "format {other:?}; this version reads {FORMAT:?}"
            )));
        }
        None => {
            return Err(ContainerError::WrongFormat(
                "its metadata has no \"format\" field".into(),
            ));
        }
    }
    let mut keys: Vec<&String> = info.keys().collect();
    keys.sort();
    if let Some(unknown) = keys.iter().find(|k| {
        !matches!(
            k.as_str(),
            "format" | "classes" | "scheme" | "key_fingerprint" | "description" | "settings"
        )
    }) {
        return Err(meta_err(
            unknown,
            "unknown metadata field: a container carries only format, classes, scheme, \
             key_fingerprint, description and settings (and never a key)",
        ));
    }
    let scheme = info
        .get("scheme")
        .ok_or_else(|| meta_err("scheme", "missing"))?
        .clone();
    check_scheme(&scheme)?;
    let key_fingerprint = info.get("key_fingerprint").cloned();
    if let Some(fp) = &key_fingerprint {
        check_fingerprint(fp)?;
    }
    let description = info.get("description").cloned();
    if description
        .as_ref()
        .is_some_and(|d| d.chars().count() > MAX_DESCRIPTION)
    {
        return Err(meta_err(
            "description",
            format!("longer than {MAX_DESCRIPTION} characters"),
        ));
    }
    let settings = info.get("settings").cloned();
    if let Some(settings) = &settings {
        check_settings(settings)?;
    }
    let classes: Vec<String> = serde_json::from_str(
        info.get("classes")
            .ok_or_else(|| meta_err("classes", "missing"))?,
    )
    .map_err(|e| meta_err("classes", format!("not a JSON array of strings: {e}")))?;
    check_classes(&classes)?;

    let names = tensors.names();
    if let Some(extra) = names.iter().find(|n| !matches!(**n, "images" | "labels")) {
        return Err(ContainerError::WrongFormat(format!(
            "unexpected tensor {extra:?}: a container holds exactly \"images\" and \"labels\""
        )));
    }
    let (values, shape, pixels) = read_images(&tensors)?;
    let n = values.len() / shape.len();
    let labels = tensors
        .tensor("labels")
        .map_err(|_| tensor_err("labels", "missing"))?;
    if labels.dtype() != Dtype::U32 {
        return Err(tensor_err(
            "labels",
            format!("dtype {:?}; labels are U32", labels.dtype()),
        ));
    }
    if labels.shape() != [n] {
        return Err(tensor_err(
            "labels",
            format!(
                "shape {:?}; there are {n} images, so labels must be [{n}]",
                labels.shape()
            ),
        ));
    }
    // safetensors has checked that each tensor's byte length matches its shape and dtype.
    let label_values: Vec<u32> = labels
        .data()
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if let Some((index, &label)) = label_values
        .iter()
        .enumerate()
        .find(|(_, l)| **l as usize >= classes.len())
    {
        return Err(ContainerError::LabelOutOfRange {
            index,
            label,
            classes: classes.len(),
        });
    }
    let dataset = ImageDataset::new(values, label_values, shape, classes)
        .map_err(|e| ContainerError::WrongFormat(e.to_string()))?;
    Ok(Container {
        dataset,
        pixels,
        meta: ContainerMeta {
            scheme,
            key_fingerprint,
            description,
            settings,
        },
    })
}

/// A batch of images with no labels, as a safetensors file with one tensor `images`
/// (`U8` or `F32`, `[N, C, H, W]`): the binary body of a classification request.
pub fn encode_images(
    pixels: &[f32],
    shape: ImageShape,
    dtype: PixelType,
) -> Result<Vec<u8>, ContainerError> {
    if shape.is_empty() || pixels.is_empty() || !pixels.len().is_multiple_of(shape.len()) {
        return Err(ContainerError::Encode(format!(
            "{} values are not a whole number of {shape} images",
            pixels.len()
        )));
    }
    let n = pixels.len() / shape.len();
    let bytes: Vec<u8> = match dtype {
        PixelType::U8 => pixels
            .iter()
            .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
            .collect(),
        PixelType::F32 => pixels.iter().flat_map(|v| v.to_le_bytes()).collect(),
    };
    let dt = match dtype {
        PixelType::U8 => Dtype::U8,
        PixelType::F32 => Dtype::F32,
    };
    let view = TensorView::new(
        dt,
        vec![n, shape.channels, shape.height, shape.width],
        &bytes,
    )
    .map_err(|e| ContainerError::Encode(format!("safetensors: {e}")))?;
    safetensors::tensor::serialize([("images", view)], None)
        .map_err(|e| ContainerError::Encode(format!("safetensors: {e}")))
}

/// Reads a batch written by [`encode_images`]: f32 pixels `[N·C·H·W]` and the shape.
pub fn decode_images(bytes: &[u8]) -> Result<(Vec<f32>, ImageShape), ContainerError> {
    let tensors = SafeTensors::deserialize(bytes)
        .map_err(|e| ContainerError::NotSafetensors(e.to_string()))?;
    let (values, shape, _) = read_images(&tensors)?;
    Ok((values, shape))
}

/// The `images` tensor, checked (4-D, at least one image, shape within limits, `U8` or `F32`,
/// finite values) and converted to f32 in [0, 1] for `U8`.
fn read_images(
    tensors: &SafeTensors<'_>,
) -> Result<(Vec<f32>, ImageShape, PixelType), ContainerError> {
    let images = tensors
        .tensor("images")
        .map_err(|_| tensor_err("images", "missing"))?;
    let &[n, c, h, w] = images.shape() else {
        return Err(tensor_err(
            "images",
            format!("shape {:?}; images are 4-D [N, C, H, W]", images.shape()),
        ));
    };
    if n == 0 {
        return Err(tensor_err("images", "no images (N = 0)"));
    }
    let shape = ImageShape::new(c, h, w);
    check_shape(shape).map_err(|r| tensor_err("images", r))?;
    // safetensors has checked that the byte length matches the shape and dtype.
    let (values, pixels): (Vec<f32>, _) = match images.dtype() {
        Dtype::U8 => (
            images
                .data()
                .iter()
                .map(|&b| f32::from(b) / 255.0)
                .collect(),
            PixelType::U8,
        ),
        Dtype::F32 => (
            images
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            PixelType::F32,
        ),
        other => {
            return Err(tensor_err(
                "images",
                format!("dtype {other:?}; pixels are U8 or F32"),
            ));
        }
    };
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(ContainerError::NonFinite {
            index: i / shape.len(),
        });
    }
    Ok((values, shape, pixels))
}

/// A `[N, K]` f32 matrix (e.g. class probabilities) as a safetensors file with one tensor `name`.
pub fn encode_matrix(name: &str, values: &[f32], cols: usize) -> Result<Vec<u8>, ContainerError> {
    if cols == 0 || !values.len().is_multiple_of(cols) {
        return Err(ContainerError::Encode(format!(
            "{} values are not rows of {cols}",
            values.len()
        )));
    }
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = TensorView::new(Dtype::F32, vec![values.len() / cols, cols], &bytes)
        .map_err(|e| ContainerError::Encode(format!("safetensors: {e}")))?;
    safetensors::tensor::serialize([(name, view)], None)
        .map_err(|e| ContainerError::Encode(format!("safetensors: {e}")))
}

/// Reads a matrix written by [`encode_matrix`]: the values and the column count.
pub fn decode_matrix(
    bytes: &[u8],
    name: &'static str,
) -> Result<(Vec<f32>, usize), ContainerError> {
    let tensors = SafeTensors::deserialize(bytes)
        .map_err(|e| ContainerError::NotSafetensors(e.to_string()))?;
    let t = tensors
        .tensor(name)
        .map_err(|_| tensor_err(name, "missing"))?;
    let &[_, cols] = t.shape() else {
        return Err(tensor_err(
            name,
            format!("shape {:?}; expected 2-D", t.shape()),
        ));
    };
    if t.dtype() != Dtype::F32 {
        return Err(tensor_err(
            name,
            format!("dtype {:?}; expected F32", t.dtype()),
        ));
    }
    Ok((
        t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        cols,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(n: usize) -> ImageDataset {
        let shape = ImageShape::new(1, 4, 4);
        let images = (0..n * 16).map(|i| (i % 17) as f32 / 16.0).collect();
        let labels = (0..n).map(|i| (i % 3) as u32).collect();
        ImageDataset::new(
            images,
            labels,
            shape,
            vec!["a".into(), "b".into(), "c".into()],
        )
        .unwrap()
    }

    fn with_meta(
        extra: &[(&str, &str)],
        images: TensorView<'_>,
        labels: TensorView<'_>,
    ) -> Vec<u8> {
        let mut info = HashMap::new();
        info.insert("format".to_owned(), FORMAT.to_owned());
        info.insert("scheme".to_owned(), "plain".to_owned());
        info.insert("classes".to_owned(), r#"["a","b","c"]"#.to_owned());
        for (k, v) in extra {
            info.insert((*k).to_owned(), (*v).to_owned());
        }
        safetensors::tensor::serialize([("images", images), ("labels", labels)], Some(info))
            .unwrap()
    }

    #[test]
    fn round_trip_f32_is_exact_and_u8_is_within_half_a_level() {
        let data = tiny(5);
        let meta = ContainerMeta {
            scheme: "flow-rotation".into(),
            key_fingerprint: Some("3f9a-1c2e-77b0-d415".into()),
            description: Some("five tiny images".into()),
            settings: Some(r#"{"route":"agnostic"}"#.into()),
        };
        let f = decode(&encode(&data, &meta, PixelType::F32).unwrap()).unwrap();
        assert_eq!(f.dataset, data);
        assert_eq!(f.meta, meta);
        assert_eq!(f.pixels, PixelType::F32);
        let u = decode(&encode(&data, &meta, PixelType::U8).unwrap()).unwrap();
        assert_eq!(u.dataset.labels, data.labels);
        let worst = u
            .dataset
            .images
            .iter()
            .zip(&data.images)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst <= 0.5 / 255.0 + 1e-6, "{worst}");
    }

    #[test]
    fn every_defect_is_named() {
        let data = tiny(3);
        let good = encode(&data, &ContainerMeta::plain(), PixelType::F32).unwrap();
        // Truncated.
        assert!(matches!(
            decode(&good[..good.len() - 3]),
            Err(ContainerError::NotSafetensors(_))
        ));
        assert!(matches!(
            decode(b""),
            Err(ContainerError::NotSafetensors(_))
        ));
        let px: Vec<u8> = vec![0; 3 * 16];
        let lb: Vec<u8> = [0u32, 1, 2].iter().flat_map(|l| l.to_le_bytes()).collect();
        let images = || TensorView::new(Dtype::U8, vec![3, 1, 4, 4], &px).unwrap();
        let labels = || TensorView::new(Dtype::U32, vec![3], &lb).unwrap();
        assert!(decode(&with_meta(&[], images(), labels())).is_ok());
        // Wrong shape (3-D images).
        let flat = TensorView::new(Dtype::U8, vec![3, 4, 4], &px).unwrap();
        let err = decode(&with_meta(&[], flat, labels())).unwrap_err();
        assert!(
            matches!(err, ContainerError::Tensor { name: "images", .. }),
            "{err}"
        );
        // Labels out of range.
        let bad: Vec<u8> = [0u32, 7, 2].iter().flat_map(|l| l.to_le_bytes()).collect();
        let err = decode(&with_meta(
            &[],
            images(),
            TensorView::new(Dtype::U32, vec![3], &bad).unwrap(),
        ))
        .unwrap_err();
        assert_eq!(
            err,
            ContainerError::LabelOutOfRange {
                index: 1,
                label: 7,
                classes: 3
            }
        );
        // Labels of the wrong length.
        let err = decode(&with_meta(
            &[],
            images(),
            TensorView::new(Dtype::U32, vec![2], &lb[..8]).unwrap(),
        ))
        .unwrap_err();
        assert!(
            matches!(err, ContainerError::Tensor { name: "labels", .. }),
            "{err}"
        );
        // NaN pixels.
        let mut nan: Vec<u8> = [0.5f32; 3 * 16]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        nan[16 * 4 + 8..16 * 4 + 12].copy_from_slice(&f32::NAN.to_le_bytes());
        let err = decode(&with_meta(
            &[],
            TensorView::new(Dtype::F32, vec![3, 1, 4, 4], &nan).unwrap(),
            labels(),
        ))
        .unwrap_err();
        assert_eq!(err, ContainerError::NonFinite { index: 1 });
        // A field that could smuggle a key.
        let err = decode(&with_meta(&[("master_key", "00ff")], images(), labels())).unwrap_err();
        assert!(err.to_string().contains("never a key"), "{err}");
        // A wrong format tag.
        let err = decode(&with_meta(
            &[("format", "veil-dataset/9")],
            images(),
            labels(),
        ))
        .unwrap_err();
        assert!(matches!(err, ContainerError::WrongFormat(_)), "{err}");
        // A malformed fingerprint.
        let err = decode(&with_meta(
            &[("key_fingerprint", "not a fingerprint!")],
            images(),
            labels(),
        ))
        .unwrap_err();
        assert!(matches!(err, ContainerError::Metadata { .. }), "{err}");
        // Settings that are not a JSON object.
        for bad in ["[1, 2]", "{not json", "\"route\""] {
            let err = decode(&with_meta(&[("settings", bad)], images(), labels())).unwrap_err();
            assert!(
                matches!(&err, ContainerError::Metadata { key, .. } if key == "settings"),
                "{bad}: {err}"
            );
        }
        let long = format!(r#"{{"x":"{}"}}"#, "a".repeat(MAX_DESCRIPTION));
        let err = decode(&with_meta(&[("settings", &long)], images(), labels())).unwrap_err();
        assert!(err.to_string().contains("longer than"), "{err}");
    }

    #[test]
    fn u8_refuses_values_outside_the_unit_interval() {
        let mut data = tiny(2);
        data.images[3] = 1.5;
        assert!(encode(&data, &ContainerMeta::plain(), PixelType::U8).is_err());
        assert!(encode(&data, &ContainerMeta::plain(), PixelType::F32).is_ok());
    }

    #[test]
    fn image_batches_and_matrices_round_trip() {
        let shape = ImageShape::new(3, 2, 2);
        let px: Vec<f32> = (0..24).map(|i| i as f32 / 23.0).collect();
        let (back, s) = decode_images(&encode_images(&px, shape, PixelType::F32).unwrap()).unwrap();
        assert_eq!((back, s), (px, shape));
        let m = vec![0.25f32, 0.75, 1.0, 0.0];
        assert_eq!(
            decode_matrix(
                &encode_matrix("probabilities", &m, 2).unwrap(),
                "probabilities"
            )
            .unwrap(),
            (m, 2)
        );
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics_on_damaged_containers(cut in 0usize..400, flip in 0usize..400, bit in 0u8..8) {
            let good = encode(&tiny(4), &ContainerMeta::plain(), PixelType::U8).unwrap();
            let mut bytes = good.clone();
            let i = flip % bytes.len();
            bytes[i] ^= 1 << bit;
            let _ = decode(&bytes);
            let _ = decode(&good[..cut.min(good.len())]);
        }
    }
}
