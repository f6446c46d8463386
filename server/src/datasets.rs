//! Reading users' datasets from disk (the file IO that `veil::data` leaves to the binaries):
//! the UCI digits CSV, MNIST IDX pairs, CIFAR-10 binary batches and image folders.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use veil::data::{
    FolderEntry, ImageDataset, ImageShape, decode_cifar10, decode_digits_csv, decode_image_folder,
    decode_mnist_idx,
};

/// A dataset format on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Guess from the path: a `.csv`/`.csv.gz` file is digits; a folder with `*idx3-ubyte*` files is
    /// MNIST; one with `*_batch*.bin` files is CIFAR-10; any other folder is an image folder.
    Auto,
    /// The UCI digits CSV (64 values in 0..=16, then the label).
    Digits,
    /// A folder with an MNIST IDX pair (`*-images-idx3-ubyte[.gz]`, `*-labels-idx1-ubyte[.gz]`).
    Mnist,
    /// A folder of CIFAR-10 binary batches (`data_batch_*.bin`, `test_batch.bin`).
    Cifar10,
    /// A folder with one sub-folder of PNG/JPEG images per class.
    Folder,
}

/// Reads a dataset. `folder_shape` is the size image folders are resized to (ignored otherwise).
pub fn load(path: &Path, format: Format, folder_shape: ImageShape) -> Result<ImageDataset> {
    let format = if format == Format::Auto {
        detect(path)?
    } else {
        format
    };
    match format {
        Format::Digits => {
            let bytes = read(path)?;
            Ok(decode_digits_csv(&display_name(path), &bytes)?)
        }
        Format::Mnist => load_mnist(path),
        Format::Cifar10 => load_cifar(path),
        Format::Folder => load_folder(path, folder_shape),
        Format::Auto => unreachable!("auto is resolved above"),
    }
}

fn display_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    Ok(entries)
}

fn detect(path: &Path) -> Result<Format> {
    if path.is_file() {
        let name = display_name(path).to_lowercase();
        if name.ends_with(".csv") || name.ends_with(".csv.gz") {
            return Ok(Format::Digits);
        }
        bail!(
            "cannot tell the format of {}: give a digits .csv(.gz) file or a folder (MNIST IDX files, CIFAR-10 batches, or one sub-folder per class)",
            path.display()
        );
    }
    if !path.is_dir() {
        bail!("{} does not exist", path.display());
    }
    let names: Vec<String> = sorted_entries(path)?
        .iter()
        .map(|p| display_name(p))
        .collect();
    if names.iter().any(|n| n.contains("idx3-ubyte")) {
        Ok(Format::Mnist)
    } else if names
        .iter()
        .any(|n| n.contains("_batch") && n.ends_with(".bin"))
    {
        Ok(Format::Cifar10)
    } else {
        Ok(Format::Folder)
    }
}

fn load_mnist(dir: &Path) -> Result<ImageDataset> {
    let entries = sorted_entries(dir)?;
    let images = entries
        .iter()
        .find(|p| display_name(p).contains("idx3-ubyte"))
        .with_context(|| format!("{} has no *-images-idx3-ubyte file", dir.display()))?;
    let prefix = display_name(images)
        .split("-images")
        .next()
        .unwrap_or_default()
        .to_owned();
    let labels = entries
        .iter()
        .find(|p| {
            let n = display_name(p);
            n.contains("idx1-ubyte") && n.starts_with(&prefix)
        })
        .with_context(|| format!("{} has no {prefix}-labels-idx1-ubyte file", dir.display()))?;
    Ok(decode_mnist_idx(
        &display_name(images),
        &read(images)?,
        &display_name(labels),
        &read(labels)?,
    )?)
}

fn load_cifar(dir: &Path) -> Result<ImageDataset> {
    let files: Vec<(String, Vec<u8>)> = sorted_entries(dir)?
        .into_iter()
        .filter(|p| {
            let n = display_name(p);
            n.contains("_batch") && n.ends_with(".bin")
        })
        .map(|p| Ok((display_name(&p), read(&p)?)))
        .collect::<Result<_>>()?;
    let batches: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    Ok(decode_cifar10(&batches)?)
}

fn is_image(path: &Path) -> bool {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    matches!(ext.as_str(), "png" | "jpg" | "jpeg")
}

fn load_folder(dir: &Path, shape: ImageShape) -> Result<ImageDataset> {
    let mut entries = Vec::new();
    for class_dir in sorted_entries(dir)?.into_iter().filter(|p| p.is_dir()) {
        let class = display_name(&class_dir);
        for file in sorted_entries(&class_dir)?
            .into_iter()
            .filter(|p| p.is_file() && is_image(p))
        {
            entries.push(FolderEntry {
                class: class.clone(),
                file_name: display_name(&file),
                bytes: read(&file)?,
            });
        }
    }
    if entries.is_empty() {
        bail!(
            "{} holds no class sub-folders with PNG or JPEG images",
            dir.display()
        );
    }
    Ok(decode_image_folder(&entries, shape)?)
}

/// Writes a dataset as an image folder: `<out>/<class>/<index>.png` (8-bit, grey or RGB).
pub fn write_image_folder(data: &ImageDataset, out: &Path) -> Result<()> {
    let shape = data.shape;
    let plane = shape.height * shape.width;
    let byte = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    for (i, &label) in data.labels.iter().enumerate() {
        let dir = out.join(&data.class_names[label as usize]);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let px = data.image(i);
        let (w, h) = (shape.width as u32, shape.height as u32);
        let path = dir.join(format!("{i:05}.png"));
        let saved = if shape.channels == 1 {
            image::GrayImage::from_fn(w, h, |x, y| image::Luma([byte(px[(y * w + x) as usize])]))
                .save(&path)
        } else {
            image::RgbImage::from_fn(w, h, |x, y| {
                let k = (y * w + x) as usize;
                image::Rgb([byte(px[k]), byte(px[plane + k]), byte(px[2 * plane + k])])
            })
            .save(&path)
        };
        saved.with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// A human summary: size, shape, classes with counts, pixel statistics.
pub fn summary(data: &ImageDataset) -> String {
    let n = data.images.len().max(1) as f64;
    let mean = data.images.iter().map(|&p| f64::from(p)).sum::<f64>() / n;
    let var = data
        .images
        .iter()
        .map(|&p| (f64::from(p) - mean).powi(2))
        .sum::<f64>()
        / n;
    let mut s = format!(
        "{} images of {} (channels × height × width), {} classes; pixel mean {:.3}, std {:.3}\n",
        data.len(),
        data.shape,
        data.num_classes(),
        mean,
        var.sqrt()
    );
    for (name, count) in data.class_names.iter().zip(data.class_counts()) {
        s += &format!("  {name:>16}: {count}\n");
    }
    s
}
