//! Reading users' datasets from disk (the file IO that `veil::data` leaves to the binaries):
//! the UCI digits CSV, MNIST IDX pairs, CIFAR-10 binary batches and image folders; and
//! [`DataSource`], what every experiment's `--data` accepts.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use veil::data::{
    DIGITS_LEVELS, FolderEntry, ImageDataset, ImageShape, SyntheticConfig, decode_cifar10,
    decode_digits_csv, decode_image_folder, decode_mnist_idx, digits, synthetic,
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

/// Which files of an MNIST folder to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Split {
    /// Every IDX pair in the folder (MNIST's `train` and `t10k` together), joined; experiments
    /// then make their own seeded split.
    #[default]
    All,
    /// The training pair only (`train-*`).
    Train,
    /// The test pair only (`t10k-*` or `test-*`).
    Test,
}

/// Reads a dataset. `folder_shape` is the size image folders are resized to (ignored otherwise).
/// A folder holding several MNIST pairs loads all of them (see [`load_split`]).
pub fn load(path: &Path, format: Format, folder_shape: ImageShape) -> Result<ImageDataset> {
    load_split(path, format, folder_shape, Split::All)
}

/// [`load`], choosing which MNIST pairs of a folder to read.
pub fn load_split(
    path: &Path,
    format: Format,
    folder_shape: ImageShape,
    split: Split,
) -> Result<ImageDataset> {
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
        Format::Mnist => load_mnist(path, split),
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

/// Reads the MNIST IDX pairs of `dir` (`<prefix>-images-idx3-ubyte[.gz]` with
/// `<prefix>-labels-idx1-ubyte[.gz]`) that `split` asks for, joins them in name order, and says
/// on standard error which files it read and how many images each held.
fn load_mnist(dir: &Path, split: Split) -> Result<ImageDataset> {
    let entries = sorted_entries(dir)?;
    let pairs: Vec<(PathBuf, PathBuf, String)> = entries
        .iter()
        .filter(|p| display_name(p).contains("idx3-ubyte"))
        .map(|images| {
            let name = display_name(images);
            let prefix = name.split("-images").next().unwrap_or_default().to_owned();
            let labels = entries
                .iter()
                .find(|p| {
                    let n = display_name(p);
                    n.contains("idx1-ubyte") && n.starts_with(&prefix)
                })
                .with_context(|| {
                    format!(
                        "{} has {name} but no {prefix}-labels-idx1-ubyte file beside it",
                        dir.display()
                    )
                })?;
            Ok((images.clone(), labels.clone(), prefix))
        })
        .collect::<Result<_>>()?;
    if pairs.is_empty() {
        bail!("{} has no *-images-idx3-ubyte file", dir.display());
    }
    let is_test = |prefix: &str| prefix.starts_with("t10k") || prefix.starts_with("test");
    let chosen: Vec<&(PathBuf, PathBuf, String)> = pairs
        .iter()
        .filter(|(_, _, prefix)| match split {
            Split::All => true,
            Split::Train => !is_test(prefix),
            Split::Test => is_test(prefix),
        })
        .collect();
    if chosen.is_empty() {
        let found: Vec<String> = pairs.iter().map(|(i, _, _)| display_name(i)).collect();
        bail!(
            "{} has no MNIST {} pair (found {}); use --split all, train or test",
            dir.display(),
            if split == Split::Test {
                "test (t10k-*)"
            } else {
                "training"
            },
            found.join(", ")
        );
    }
    let mut joined: Option<ImageDataset> = None;
    let mut read_files = Vec::new();
    for (images, labels, _) in chosen {
        let part = decode_mnist_idx(
            &display_name(images),
            &read(images)?,
            &display_name(labels),
            &read(labels)?,
        )?;
        read_files.push(format!("{} ({} images)", display_name(images), part.len()));
        joined = Some(match joined {
            None => part,
            Some(j) => j.concat(&part).with_context(|| {
                format!("joining {} to the other MNIST files", display_name(images))
            })?,
        });
    }
    let data = joined.expect("at least one pair was chosen");
    eprintln!(
        "MNIST from {}: read {}; {} images in all",
        dir.display(),
        read_files.join(" and "),
        data.len()
    );
    Ok(data)
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

/// Where an experiment's images come from: what `--data` accepts, for every experiment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSource {
    /// The embedded UCI handwritten digits (1×8×8, 17 grey levels, 1,797 images).
    Digits,
    /// Veil's synthetic class-conditional shapes, at `--size` and `--channels`.
    Synthetic,
    /// A dataset on disk: a digits `.csv(.gz)`, an MNIST IDX folder, CIFAR-10 batches, or one
    /// sub-folder of images per class.
    Path(PathBuf),
}

impl std::str::FromStr for DataSource {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(match s {
            "digits" => Self::Digits,
            "synthetic" => Self::Synthetic,
            path => Self::Path(PathBuf::from(path)),
        })
    }
}

impl std::fmt::Display for DataSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Digits => f.write_str("digits"),
            Self::Synthetic => f.write_str("synthetic"),
            Self::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// The options every experiment takes: where the data comes from, how images are sized, where
/// the outputs go, how long the run is, and the seed.
#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    /// `digits` (the embedded UCI digits), `synthetic` (Veil's synthetic shapes at
    /// --size/--channels), or a dataset path: a digits .csv(.gz), an MNIST IDX folder, CIFAR-10
    /// batches, or one sub-folder of PNG/JPEG images per class (see `veil data-info`).
    #[arg(long, default_value = "digits")]
    pub data: DataSource,
    /// Output folder for report.md, results.json and the figures.
    #[arg(long)]
    pub out: PathBuf,
    /// A small, fast run (fewer images, epochs and iterations) to check the pipeline.
    #[arg(long)]
    pub quick: bool,
    /// Side length of image folders and of the synthetic set (the experiment's default when
    /// absent); given with `--data digits`, the 8×8 digits are resampled to it.
    #[arg(long)]
    pub size: Option<usize>,
    /// Channels, 1 or 3, of image folders and of the synthetic set (the experiment's default
    /// when absent); given with `--data digits`, the digits are converted to it.
    #[arg(long)]
    pub channels: Option<usize>,
    /// MNIST folders: which IDX pairs to read (all joins `train` and `t10k`).
    #[arg(long, value_enum, default_value = "all")]
    pub split: Split,
    /// Seed of the splits, the initialisations and the experiment's key.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

/// What an experiment assumes when `--size`, `--channels` or the synthetic set's size are not
/// given.
#[derive(Debug, Clone, Copy)]
pub struct SourceDefaults {
    /// Side length of image folders and of the synthetic set.
    pub size: usize,
    /// Channels of image folders and of the synthetic set.
    pub channels: usize,
    /// Synthetic set: classes.
    pub classes: usize,
    /// Synthetic set: images per class.
    pub per_class: usize,
    /// Synthetic set: generator seed.
    pub seed: u64,
}

/// A loaded data source.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The images.
    pub data: ImageDataset,
    /// Quantisation bins of the pixels (17 for the digits, 256 for 8-bit images).
    pub bins: usize,
}

impl CommonArgs {
    /// The options as they would be typed after `veil experiment NAME` (for reports).
    pub fn command_line(&self, experiment: &str) -> String {
        let mut line = format!(
            "veil experiment {experiment} --data {} --out {}",
            self.data,
            self.out.display()
        );
        if let Some(size) = self.size {
            line += &format!(" --size {size}");
        }
        if let Some(channels) = self.channels {
            line += &format!(" --channels {channels}");
        }
        if self.split != Split::All {
            line += &format!(" --split {}", format!("{:?}", self.split).to_lowercase());
        }
        if self.seed != 7 {
            line += &format!(" --seed {}", self.seed);
        }
        if self.quick {
            line += " --quick";
        }
        line
    }

    /// The image shape of folders and of the synthetic set.
    pub fn shape(&self, defaults: SourceDefaults) -> ImageShape {
        let side = self.size.unwrap_or(defaults.size);
        ImageShape::new(self.channels.unwrap_or(defaults.channels), side, side)
    }

    /// Loads `--data`, with `defaults` for what the command line leaves open.
    ///
    /// The digits are 8×8 grey; an explicit `--size` or `--channels` resamples them (the digits
    /// upsampled to 28×28, quantised to 8 bits as a folder of PNGs would be).
    pub fn load(&self, defaults: SourceDefaults) -> Result<Loaded> {
        load_sized(&self.data, self.split, self.size, self.channels, defaults)
    }
}

/// Loads `source` at an optional `--size` and `--channels` (`defaults` for what is left open).
///
/// The digits are 8×8 grey; an explicit size or channel count resamples them (the digits
/// upsampled to 28×28, quantised to 8 bits as a folder of PNGs would be).
pub fn load_sized(
    source: &DataSource,
    split: Split,
    size: Option<usize>,
    channels: Option<usize>,
    defaults: SourceDefaults,
) -> Result<Loaded> {
    let side = size.unwrap_or(defaults.size);
    let shape = ImageShape::new(channels.unwrap_or(defaults.channels), side, side);
    let loaded = load_source(
        source,
        split,
        SourceDefaults {
            size: shape.height,
            channels: shape.channels,
            ..defaults
        },
    )?;
    let explicit = size.is_some() || channels.is_some();
    if matches!(source, DataSource::Digits) && explicit && loaded.data.shape != shape {
        let data = veil::data::resize_dataset(&loaded.data, shape)
            .with_context(|| format!("resampling the digits to {shape}"))?;
        return Ok(Loaded { data, bins: 256 });
    }
    Ok(loaded)
}

/// Loads `source`; image folders and the synthetic set take their shape from `defaults`.
pub fn load_source(source: &DataSource, split: Split, defaults: SourceDefaults) -> Result<Loaded> {
    let shape = ImageShape::new(defaults.channels, defaults.size, defaults.size);
    if !matches!(shape.channels, 1 | 3) {
        bail!("--channels must be 1 or 3, not {}", shape.channels);
    }
    Ok(match source {
        DataSource::Digits => Loaded {
            data: digits(),
            bins: DIGITS_LEVELS,
        },
        DataSource::Synthetic => {
            let data = synthetic(SyntheticConfig {
                classes: defaults.classes,
                per_class: defaults.per_class,
                shape,
                noise: 0.05,
                seed: defaults.seed,
            })?;
            Loaded { data, bins: 256 }
        }
        DataSource::Path(path) => {
            if !path.exists() {
                bail!(
                    "{} does not exist: --data takes `digits`, `synthetic`, or the path of a dataset \
                     (a digits .csv(.gz), an MNIST IDX folder, CIFAR-10 batches, or one sub-folder of \
                     images per class)",
                    path.display()
                );
            }
            let format = detect(path)?;
            let data = load_split(path, format, shape, split)?;
            let bins = if format == Format::Digits {
                DIGITS_LEVELS
            } else {
                256
            };
            Loaded { data, bins }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common(size: Option<usize>, channels: Option<usize>) -> CommonArgs {
        CommonArgs {
            data: DataSource::Digits,
            out: PathBuf::from("unused"),
            quick: false,
            size,
            channels,
            split: Split::All,
            seed: 7,
        }
    }

    const DEFAULTS: SourceDefaults = SourceDefaults {
        size: 32,
        channels: 3,
        classes: 10,
        per_class: 10,
        seed: 7,
    };

    #[test]
    fn the_digits_stay_8x8_unless_a_size_is_given() {
        let plain = common(None, None).load(DEFAULTS).unwrap();
        assert_eq!(plain.data.shape, ImageShape::new(1, 8, 8));
        assert_eq!(plain.bins, DIGITS_LEVELS);
        let big = common(Some(28), Some(1)).load(DEFAULTS).unwrap();
        assert_eq!(big.data.shape, ImageShape::new(1, 28, 28));
        assert_eq!((big.data.len(), big.bins), (plain.data.len(), 256));
        assert_eq!(big.data.labels, plain.data.labels);
        let line = common(Some(28), Some(1)).command_line("flow");
        assert_eq!(
            line,
            "veil experiment flow --data digits --out unused --size 28 --channels 1"
        );
    }
}
