//! Image folders: one sub-folder per class, PNG or JPEG files inside (the layout of torchvision's
//! `ImageFolder`). The binary walks the folder; this module decodes and resizes the bytes.

use image::imageops::FilterType;

use super::{DataError, ImageDataset, ImageShape};

/// One file of an image folder.
#[derive(Debug, Clone)]
pub struct FolderEntry {
    /// The sub-folder's name: the class.
    pub class: String,
    /// The file's name, for error messages.
    pub file_name: String,
    /// The encoded image.
    pub bytes: Vec<u8>,
}

/// Decodes every entry, converts it to `target.channels` (1: luminance, 3: RGB) and resizes it to
/// `target.height × target.width` (Lanczos3 when shrinking, triangle when enlarging). Classes are
/// the sorted distinct sub-folder names.
pub fn decode_image_folder(
    entries: &[FolderEntry],
    target: ImageShape,
) -> Result<ImageDataset, DataError> {
    if entries.is_empty() {
        return Err(DataError::Empty("the folder holds no image files".into()));
    }
    if target.channels != 1 && target.channels != 3 {
        return Err(DataError::Inconsistent(format!(
            "images can have 1 or 3 channels, not {}",
            target.channels
        )));
    }
    let mut class_names: Vec<String> = entries.iter().map(|e| e.class.clone()).collect();
    class_names.sort();
    class_names.dedup();
    let mut images = Vec::with_capacity(entries.len() * target.len());
    let mut labels = Vec::with_capacity(entries.len());
    for e in entries {
        let name = format!("{}/{}", e.class, e.file_name);
        images.extend(decode_image(&name, &e.bytes, target)?);
        let label = class_names.binary_search(&e.class).unwrap_or_default() as u32;
        labels.push(label);
    }
    ImageDataset::new(images, labels, target, class_names)
}

/// Decodes one PNG or JPEG image to `target` (the conversion and resizing of
/// [`decode_image_folder`]): `C·H·W` values in [0, 1], row-major. The browser client calls this
/// too, so a file gives the same pixels natively and in the page. `name` is for error messages.
pub fn decode_image(name: &str, bytes: &[u8], target: ImageShape) -> Result<Vec<f32>, DataError> {
    if target.channels != 1 && target.channels != 3 {
        return Err(DataError::Inconsistent(format!(
            "images can have 1 or 3 channels, not {}",
            target.channels
        )));
    }
    let img = image::load_from_memory(bytes)
        .map_err(|err| DataError::corrupt(name, format!("cannot decode the image ({err})")))?;
    let (w, h) = (target.width as u32, target.height as u32);
    let filter = if img.width() > w || img.height() > h {
        FilterType::Lanczos3
    } else {
        FilterType::Triangle
    };
    let resized = img.resize_exact(w, h, filter);
    Ok(if target.channels == 1 {
        resized
            .to_luma8()
            .pixels()
            .map(|p| f32::from(p.0[0]) / 255.0)
            .collect()
    } else {
        let rgb = resized.to_rgb8();
        (0..3)
            .flat_map(|c| rgb.pixels().map(move |p| f32::from(p.0[c]) / 255.0))
            .collect()
    })
}

/// `data` resized to `target` with the filters of [`decode_image`] (Lanczos3 when shrinking,
/// triangle when enlarging; one channel is repeated to three, three are averaged to luminance)
/// and quantised to 8 bits, as if its images had been written to a folder and read back: the
/// digits upsampled to 28×28, for example.
pub fn resize_dataset(data: &ImageDataset, target: ImageShape) -> Result<ImageDataset, DataError> {
    use image::{ImageBuffer, Luma};
    if target.channels != 1 && target.channels != 3 {
        return Err(DataError::Inconsistent(format!(
            "images can have 1 or 3 channels, not {}",
            target.channels
        )));
    }
    let s = data.shape;
    let (w, h) = (target.width as u32, target.height as u32);
    let filter = if s.width > target.width || s.height > target.height {
        FilterType::Lanczos3
    } else {
        FilterType::Triangle
    };
    let plane = s.height * s.width;
    let mut images = Vec::with_capacity(data.len() * target.len());
    for i in 0..data.len() {
        let img = data.image(i);
        let planes: Vec<Vec<f32>> = (0..s.channels)
            .map(|c| {
                let buf: ImageBuffer<Luma<f32>, Vec<f32>> = ImageBuffer::from_raw(
                    s.width as u32,
                    s.height as u32,
                    img[c * plane..(c + 1) * plane].to_vec(),
                )
                .unwrap_or_else(|| unreachable!("a plane holds height × width values"));
                image::imageops::resize(&buf, w, h, filter).into_raw()
            })
            .collect();
        let byte = |p: f32| (p.clamp(0.0, 1.0) * 255.0).round() / 255.0;
        match (s.channels, target.channels) {
            (a, b) if a == b => images.extend(planes.iter().flatten().map(|&p| byte(p))),
            (1, 3) => (0..3).for_each(|_| images.extend(planes[0].iter().map(|&p| byte(p)))),
            (3, 1) => {
                images.extend((0..planes[0].len()).map(|k| {
                    byte(0.299 * planes[0][k] + 0.587 * planes[1][k] + 0.114 * planes[2][k])
                }))
            }
            (a, b) => {
                return Err(DataError::Inconsistent(format!(
                    "cannot convert {a} channels to {b}"
                )));
            }
        }
    }
    ImageDataset::new(
        images,
        data.labels.clone(),
        target,
        data.class_names.clone(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageFormat, Rgb, RgbImage};
    use std::io::Cursor;

    fn encoded(colour: [u8; 3], format: ImageFormat) -> Vec<u8> {
        let img = RgbImage::from_pixel(10, 6, Rgb(colour));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    fn entry(class: &str, file: &str, bytes: Vec<u8>) -> FolderEntry {
        FolderEntry {
            class: class.into(),
            file_name: file.into(),
            bytes,
        }
    }

    #[test]
    fn decodes_png_and_jpeg_resizes_and_labels_by_sorted_folder() {
        let entries = vec![
            entry("zebra", "a.png", encoded([255, 0, 0], ImageFormat::Png)),
            entry("apple", "b.jpg", encoded([0, 0, 255], ImageFormat::Jpeg)),
        ];
        let d = decode_image_folder(&entries, ImageShape::new(3, 4, 4)).unwrap();
        assert_eq!(d.class_names, vec!["apple", "zebra"]);
        assert_eq!(d.labels, vec![1, 0]);
        assert_eq!(d.image(0)[0], 1.0); // red channel of the red PNG
        assert_eq!(d.image(0)[16], 0.0); // its green channel
        assert!(d.image(1)[32] > 0.9); // blue channel of the (lossy) blue JPEG
        let grey = decode_image_folder(&entries, ImageShape::new(1, 8, 8)).unwrap();
        assert_eq!(grey.shape.len(), 64);
        assert!(
            (grey.image(0)[0] - 0.2126).abs() < 0.01,
            "{}",
            grey.image(0)[0]
        );
    }

    #[test]
    fn corrupt_file_is_named() {
        let mut png = encoded([1, 2, 3], ImageFormat::Png);
        png.truncate(png.len() / 2);
        let entries = vec![
            entry("cats", "ok.png", encoded([1, 2, 3], ImageFormat::Png)),
            entry("cats", "broken.png", png),
        ];
        let err = decode_image_folder(&entries, ImageShape::new(1, 4, 4)).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cats/broken.png: cannot decode"),
            "{err}"
        );
        assert!(decode_image_folder(&[], ImageShape::new(1, 4, 4)).is_err());
    }

    #[test]
    fn resizing_keeps_where_the_ink_is_and_converts_channels() {
        // An 8×8 image, white in its top-left quadrant only, twice (labels 0 and 1).
        let one: Vec<f32> = (0..64)
            .map(|k| if k / 8 < 4 && k % 8 < 4 { 1.0 } else { 0.0 })
            .collect();
        let data = ImageDataset::new(
            [one.clone(), one].concat(),
            vec![0, 1],
            ImageShape::new(1, 8, 8),
            vec!["a".into(), "b".into()],
        )
        .unwrap();
        let big = resize_dataset(&data, ImageShape::new(3, 28, 28)).unwrap();
        assert_eq!((big.len(), big.shape), (2, ImageShape::new(3, 28, 28)));
        assert_eq!(big.labels, vec![0, 1]);
        let px = |c: usize, y: usize, x: usize| big.image(1)[c * 784 + y * 28 + x];
        for c in 0..3 {
            assert_eq!(px(c, 3, 3), 1.0);
            assert_eq!(px(c, 24, 24), 0.0);
            assert_eq!(px(c, 3, 24), 0.0);
        }
        // 8-bit values, as if read from a PNG.
        assert!(
            big.images
                .iter()
                .all(|p| (p * 255.0 - (p * 255.0).round()).abs() < 1e-4)
        );
        let grey = resize_dataset(&big, ImageShape::new(1, 8, 8)).unwrap();
        assert!((grey.image(0)[0] - 1.0).abs() < 0.01 && grey.image(0)[63] < 0.01);
    }
}
