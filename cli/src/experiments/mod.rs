//! `veil experiment ...`: reproductions of the papers' experiments, writing a markdown report,
//! figures and a `results.json` with stable keys.

pub mod adversarial;
pub mod flow;
pub mod leakage;
pub mod owsd;

use anyhow::{Context, Result};
use veil::burn::prelude::*;
use veil::data::ImageDataset;
use veil::nn::model::Classifier;
use veil::nn::train::{Control, TrainOptions, train_classifier};

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
    out: &std::path::Path,
    results: &R,
    report: String,
    started: std::time::Instant,
) -> Result<()> {
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(results)? + "\n",
    )?;
    std::fs::write(out.join("report.md"), report)?;
    eprintln!(
        "wrote {}/report.md, results.json and figure.png in {:.0} s",
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
pub fn image_grid(path: &std::path::Path, rows: &[&ImageDataset], picks: &[usize]) -> Result<()> {
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
