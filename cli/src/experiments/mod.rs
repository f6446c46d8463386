//! `veil experiment ...`: reproductions of the papers' experiments, writing a markdown report,
//! figures and a `results.json` with stable keys.

pub mod adversarial;
pub mod black_box;
pub mod flow;
pub mod flow_attacks;
pub mod leakage;
pub mod owsd;
pub mod rtas;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use veil::burn::prelude::*;
use veil::data::{ImageDataset, ImageShape};
use veil::nn::model::Classifier;
use veil::nn::train::{Control, TrainOptions, train_classifier};
use veil::schemes::flow_rotation::FlowSet;

use crate::datasets::DataSource;

/// `text` as a file name or an HTML id: ASCII letters and digits lowercased, anything else a
/// dash, no dash at either end.
pub fn slug(text: &str) -> String {
    let s: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    s.trim_matches('-').to_owned()
}

/// A share as a percentage with one decimal, for reports.
pub fn pct(x: f64) -> String {
    format!("{:.1} %", 100.0 * x)
}

/// Whether a classifier's accuracy on original data is no better than chance: below chance plus
/// three binomial standard deviations on `n` test images of `classes` classes. A ratio built on
/// such a baseline means nothing, so the report says so and prints none.
pub fn baseline_failed(accuracy: f64, classes: usize, n: usize) -> bool {
    let chance = 1.0 / classes.max(1) as f64;
    let sd = (chance * (1.0 - chance) / n.max(1) as f64).sqrt();
    accuracy < chance + 3.0 * sd
}

/// Writes `results.json` and `report.md` into `out` and says so.
pub fn write_outputs<R: serde::Serialize>(
    out: &Path,
    results: &R,
    report: String,
    started: std::time::Instant,
) -> Result<()> {
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(results)? + "\n",
    )?;
    std::fs::write(out.join("report.md"), report)?;
    let figure = if out.join("figure.png").exists() {
        " and figure.png"
    } else {
        ""
    };
    eprintln!(
        "wrote {}/report.md, results.json{figure} in {:.0} s",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Progress of `len` steps labelled `prefix`: a bar on a terminal, lines elsewhere.
pub fn bar(len: u64, prefix: &str) -> crate::progress::Progress {
    crate::progress::Progress::new(len, prefix)
}

/// A PNG grid: one row per dataset, the images `picks` of each, scaled up to about 64 pixels.
pub fn image_grid(path: &Path, rows: &[&ImageDataset], picks: &[usize]) -> Result<()> {
    let shape = rows[0].shape;
    let scale = (64 / shape.height.max(shape.width)).max(1) as u32;
    let (h, w) = (shape.height as u32 * scale, shape.width as u32 * scale);
    let gap = 4;
    let mut img = image::RgbImage::from_pixel(
        picks.len() as u32 * (w + gap) + gap,
        rows.len() as u32 * (h + gap) + gap,
        image::Rgb([255, 255, 255]),
    );
    let plane = shape.height * shape.width;
    for (r, data) in rows.iter().enumerate() {
        for (c, &i) in picks.iter().enumerate() {
            let px = data.image(i);
            for y in 0..h {
                for x in 0..w {
                    let idx = (y / scale) as usize * shape.width + (x / scale) as usize;
                    let v =
                        |ch: usize| (px[ch * plane + idx].clamp(0.0, 1.0) * 255.0).round() as u8;
                    let rgb = if shape.channels == 3 {
                        [v(0), v(1), v(2)]
                    } else {
                        [v(0); 3]
                    };
                    img.put_pixel(
                        gap + c as u32 * (w + gap) + x,
                        gap + r as u32 * (h + gap) + y,
                        image::Rgb(rgb),
                    );
                }
            }
        }
    }
    img.save(path)
        .with_context(|| format!("writing {}", path.display()))
}

/// Trains `model` (on an autodiff device) on `data` with `options`, showing progress under
/// `label`; returns it still on the autodiff device (for gradients of its inputs).
pub fn fit_autodiff<M: Classifier>(
    model: M,
    options: TrainOptions,
    data: &ImageDataset,
    label: &str,
) -> Result<M> {
    let device = Device::flex().autodiff();
    let per_epoch = data.len().div_ceil(options.batch_size);
    let pb = bar((options.epochs * per_epoch) as u64, label).per_epoch(per_epoch as u64, 0);
    let model = train_classifier(model, data, options, &device, |r| {
        pb.inc(1);
        pb.set_message(format!("loss {:.3} acc {:.3}", r.loss, r.accuracy));
        Control::Continue
    })
    .with_context(|| format!("training the {label}"))?;
    pb.finish();
    Ok(model)
}

/// [`fit_autodiff`], returning the model for inference.
pub fn fit_with<M: Classifier>(
    model: M,
    options: TrainOptions,
    data: &ImageDataset,
    label: &str,
) -> Result<M> {
    Ok(fit_autodiff(model, options, data, label)?.valid())
}

/// The flows that encrypt `data` from `source`: the shipped digits flows for the digits (unless
/// `flows` names others), otherwise the folder `flows` written by `veil flow train`, checked
/// against the data's shape and classes. Also returns where the flows came from, for reports.
pub fn data_and_flows(
    source: &DataSource,
    data: ImageDataset,
    flows: Option<&Path>,
) -> Result<(ImageDataset, FlowSet, String)> {
    if *source == DataSource::Digits && data.shape == ImageShape::new(1, 8, 8) && flows.is_none() {
        let flows = veil_server::embedded::digits_flows(&Device::flex())?;
        return Ok((data, flows, "assets/flows/digits".into()));
    }
    let Some(dir) = flows else {
        bail!(
            "encrypting {source} at {} needs flows trained on it: train them with `veil flow train \
             --data {source} --out DIR` (with the same --size/--channels) and pass `--flows DIR`",
            data.shape
        );
    };
    let flows = load_flow_dir(dir)?;
    let g = &flows.manifest.glow;
    let flow_shape = ImageShape::new(g.channels, g.height, g.width);
    if flow_shape != data.shape {
        bail!(
            "the flows in {} encrypt images of {flow_shape}, but {source} holds images of {} (give \
             --size and --channels as for `veil flow train`)",
            dir.display(),
            data.shape
        );
    }
    if flows.per_class.len() != data.num_classes() {
        bail!(
            "the flows in {} have {} class flows, but {source} has {} classes",
            dir.display(),
            flows.per_class.len(),
            data.num_classes()
        );
    }
    Ok((data, flows, dir.display().to_string()))
}

/// The flows in a folder written by `veil flow train` (its `flows.json` and `.bpk` files).
pub fn load_flow_dir(dir: &Path) -> Result<FlowSet> {
    let manifest_path = dir.join("flows.json");
    let manifest = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("reading {}", manifest_path.display()))?;
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "bpk") {
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            files.insert(name, bytes);
        }
    }
    FlowSet::load(
        &manifest,
        |name| files.get(name).map(Vec::as_slice),
        &Device::flex(),
    )
    .with_context(|| format!("loading the flows in {}", dir.display()))
}
