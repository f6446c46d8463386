//! Attacks on adversarial data encryption ([`crate::schemes::adversarial`]).
//!
//! - **Correspondence recovery** (paper §3.4 and §4.3). The attacker holds the encrypted set D
//!   and some clean labelled data D′ from elsewhere. He trains M1 on D and M2 on D′, encrypts D′
//!   with M2 under each candidate correspondence, and keeps, for each class, the candidate on
//!   which M1 scores best. [`CandidateCopies`] perturbs D′ toward every class once; the basic
//!   search ([`recover_basic`]) and the combined one ([`rank_combined`]) then only merge and
//!   score.
//! - **A factory that fights back**, which the paper did not try: Madry-style adversarial
//!   training on the encrypted set ([`adversarial_training`]), and simple pre-processing of the
//!   encrypted images before ordinary training ([`Preprocess`]). Work on unlearnable examples
//!   suggests the first can undo such protection; the experiment measures it.

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use crate::data::{ImageDataset, ImageShape};
use crate::nn::model::Classifier;
use crate::nn::train::{Control, TrainError, TrainOptions, accuracy, argmax_rows, predict_logits};
use crate::schemes::adversarial::correspondence::CombinedKey;
use crate::schemes::adversarial::{
    AdversarialError, ClassCorrespondence, CombineMethod, Goal, PgdConfig, encrypt_toward, merge,
    pgd_l2,
};

/// D′ perturbed by M2 toward every class: `copies[t]` holds every image of D′ pushed toward
/// class `t` (the attacker's simulation of the encryption, §3.4).
#[derive(Debug, Clone)]
pub struct CandidateCopies {
    /// The attacker's clean data D′.
    pub clean: ImageDataset,
    /// `copies[t]`: D′ perturbed toward class `t`.
    pub copies: Vec<ImageDataset>,
}

impl CandidateCopies {
    /// Perturbs `clean` toward each class with the attacker's model `m2` (on an autodiff
    /// device). `on_batch(done, total)` counts images over all classes.
    pub fn new<M: Classifier>(
        m2: &M,
        clean: &ImageDataset,
        config: &PgdConfig,
        device: &Device,
        mut on_batch: impl FnMut(usize, usize) -> Control,
    ) -> Result<Self, AdversarialError> {
        let k = clean.num_classes();
        let total = k * clean.len();
        let copies = (0..k as u32)
            .map(|t| {
                let targets = vec![t; clean.len()];
                encrypt_toward(m2, clean, &targets, config, device, |done, _| {
                    on_batch(t as usize * clean.len() + done, total)
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            clean: clean.clone(),
            copies,
        })
    }
}

/// The basic search's outcome (paper Table 3, for every class).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BasicRecovery {
    /// `accuracy[y][t]`: M1's accuracy on D′'s class-`y` images perturbed toward `t`.
    pub accuracy: Vec<Vec<f64>>,
    /// The candidate with the highest accuracy for each class.
    pub recovered: Vec<u32>,
    /// Candidates evaluated: K per class.
    pub candidates_tried: usize,
}

impl BasicRecovery {
    /// Classes whose target was recovered.
    pub fn correct(&self, truth: &ClassCorrespondence) -> usize {
        self.recovered
            .iter()
            .zip(truth.targets())
            .filter(|(a, b)| a == b)
            .count()
    }
}

/// Predicted labels of `data` by `m1`.
fn predictions<M: Classifier>(m1: &M, data: &ImageDataset, device: &Device) -> Vec<u32> {
    argmax_rows(&predict_logits(m1, data, device), data.num_classes())
}

/// The paper's §3.4 search: for each class `y` and each candidate target `t`, M1's accuracy on
/// D′'s class-`y` images perturbed toward `t`; the recovered `P(y)` is the best `t`. K
/// candidates per class, K² in all (the paper's "within 100 attempts" on ten classes).
pub fn recover_basic<M: Classifier>(
    m1: &M,
    candidates: &CandidateCopies,
    device: &Device,
) -> BasicRecovery {
    let k = candidates.clean.num_classes();
    let labels = &candidates.clean.labels;
    let mut accuracy = vec![vec![0.0; k]; k];
    for (t, copy) in candidates.copies.iter().enumerate() {
        let pred = predictions(m1, copy, device);
        for (y, row) in accuracy.iter_mut().enumerate() {
            let (hits, n) = labels
                .iter()
                .zip(&pred)
                .filter(|(l, _)| **l as usize == y)
                .fold((0usize, 0usize), |(h, n), (l, p)| {
                    (h + usize::from(l == p), n + 1)
                });
            row[t] = hits as f64 / n.max(1) as f64;
        }
    }
    let recovered = accuracy
        .iter()
        .map(|row| {
            (0..k)
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap_or(0) as u32
        })
        .collect();
    BasicRecovery {
        accuracy,
        recovered,
        candidates_tried: k * k,
    }
}

/// One class's combined search (paper §4.3, Table 8).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CombinedRanking {
    /// The class searched.
    pub class: u32,
    /// Ordered target tuples evaluated (all N-tuples of distinct classes).
    pub candidates: usize,
    /// The true tuple's rank by M1's accuracy (1 = the attacker's first guess).
    pub true_rank: usize,
    /// The best rank of a tuple with the true targets in any order.
    pub same_targets_rank: usize,
    /// M1's accuracy on the true tuple.
    pub true_accuracy: f64,
    /// The best tuple and its accuracy.
    pub best: (Vec<u32>, f64),
    /// M1's accuracy on clean class images (the "orig test set" row).
    pub clean_accuracy: f64,
}

/// All ordered `n`-tuples of distinct classes below `k`.
fn tuples(k: u32, n: usize) -> Vec<Vec<u32>> {
    let mut out = vec![vec![]];
    for _ in 0..n {
        out = out
            .into_iter()
            .flat_map(|t: Vec<u32>| {
                (0..k)
                    .filter(|c| !t.contains(c))
                    .map(|c| {
                        let mut u = t.clone();
                        u.push(c);
                        u
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
    }
    out
}

/// The §4.3 search for class `class` of a combined method: every ordered tuple of N(y)
/// distinct targets is merged from the candidate copies at `ratio` and `weights` (the
/// attacker's guess: the key's values are secret; the paper's attacker assumes 50 %) and
/// scored by M1. Ranks the true tuple `truth` among them.
pub fn rank_combined<M: Classifier>(
    m1: &M,
    candidates: &CandidateCopies,
    method: CombineMethod,
    class: u32,
    truth: &[u32],
    guess: (f32, [f32; 2]),
    device: &Device,
) -> CombinedRanking {
    let clean = &candidates.clean;
    let k = clean.num_classes();
    let shape = clean.shape;
    let idx = clean.class_indices(class);
    let n = method.targets_per_class();
    let all = tuples(k as u32, n);
    let key = CombinedKey {
        method,
        targets: vec![vec![0; n]; k],
        ratios: vec![guess.0; k],
        weights: vec![guess.1; k],
    };
    let clean_class = clean.subset(&idx);
    let clean_accuracy = f64::from(accuracy(m1, &clean_class, device));
    let mut scores = Vec::with_capacity(all.len());
    // Score candidates in chunks, so that each model call sees a few hundred images.
    let per_chunk = (512 / idx.len().max(1)).max(1);
    for chunk in all.chunks(per_chunk) {
        let mut images = Vec::with_capacity(chunk.len() * idx.len() * shape.len());
        for tuple in chunk {
            for &i in &idx {
                let parts: Vec<&[f32]> = tuple
                    .iter()
                    .map(|&t| candidates.copies[t as usize].image(i))
                    .collect();
                images.extend(merge(&key, class, &parts, shape, None));
            }
        }
        let labels = vec![class; chunk.len() * idx.len()];
        let batch = ImageDataset {
            images,
            labels,
            shape,
            class_names: clean.class_names.clone(),
        };
        let pred = predictions(m1, &batch, device);
        for c in pred.chunks(idx.len()) {
            scores.push(c.iter().filter(|&&p| p == class).count() as f64 / idx.len() as f64);
        }
    }
    let mut order: Vec<usize> = (0..all.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let rank_of = |pred: &dyn Fn(&[u32]) -> bool| {
        order
            .iter()
            .position(|&i| pred(&all[i]))
            .map_or(all.len(), |p| p + 1)
    };
    let mut sorted_truth = truth.to_vec();
    sorted_truth.sort_unstable();
    let true_rank = rank_of(&|t| t == truth);
    let same_targets_rank = rank_of(&|t| {
        let mut s = t.to_vec();
        s.sort_unstable();
        s == sorted_truth
    });
    let true_accuracy = all
        .iter()
        .position(|t| t == truth)
        .map_or(0.0, |i| scores[i]);
    CombinedRanking {
        class,
        candidates: all.len(),
        true_rank,
        same_targets_rank,
        true_accuracy,
        best: (all[order[0]].clone(), scores[order[0]]),
        clean_accuracy,
    }
}

/// Madry et al.'s PGD adversarial training, as a factory that fights back would run it on the
/// encrypted set: every batch is first pushed *away* from its labels by untargeted L2 PGD
/// against the current model (`pgd`, usually with a random start), then the model takes an
/// Adam step on the pushed batch. `on_step(done, total)` counts steps and may stop early.
pub fn adversarial_training<M: Classifier>(
    mut model: M,
    data: &ImageDataset,
    options: TrainOptions,
    pgd: &PgdConfig,
    device: &Device,
    mut on_step: impl FnMut(usize, usize) -> Control,
) -> Result<M, TrainError> {
    if data.is_empty() || options.batch_size == 0 || options.epochs == 0 {
        return Err(TrainError::Invalid(
            "adversarial training needs images, epochs and a batch size".into(),
        ));
    }
    pgd.validate()
        .map_err(|e| TrainError::Invalid(e.to_string()))?;
    let mut optimizer = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let steps = data.len().div_ceil(options.batch_size);
    let total = steps * options.epochs;
    for epoch in 0..options.epochs {
        let mut rng = ChaCha20Rng::seed_from_u64(options.seed ^ ((epoch as u64 + 1) * 0x9e37));
        let mut order: Vec<usize> = (0..data.len()).collect();
        order.shuffle(&mut rng);
        let shuffled = data.subset(&order);
        for step in 0..steps {
            let range =
                step * options.batch_size..((step + 1) * options.batch_size).min(data.len());
            device.seed(options.seed.wrapping_add((epoch * steps + step) as u64));
            let labels = shuffled.labels_tensor(range.clone(), device);
            let pushed = pgd_l2(
                &model,
                shuffled.images_tensor(range, device),
                labels.clone(),
                Goal::Away,
                pgd,
            )
            .map_err(|e| TrainError::Invalid(e.to_string()))?
            .autodiff();
            let loss = loss_fn.forward(model.forward(pushed), labels);
            let value = loss.clone().into_scalar::<f32>();
            if !value.is_finite() {
                return Err(TrainError::NonFiniteLoss {
                    loss: value,
                    epoch: epoch + 1,
                    step: step + 1,
                });
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(options.learning_rate, model, grads);
            if on_step(epoch * steps + step + 1, total) == Control::Stop {
                return Ok(model);
            }
        }
    }
    Ok(model)
}

/// Pre-processing a factory may apply to the encrypted images before ordinary training, in the
/// hope of washing out the perturbation (and to clean test images alike).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Preprocess {
    /// A Gaussian blur of standard deviation `sigma` pixels (kernel radius ⌈2σ⌉, edges clamped).
    GaussianBlur {
        /// σ in pixels.
        sigma: f32,
    },
    /// Pixels rounded to `bits` bits (Xu, Evans, Qi's feature squeezing).
    BitDepth {
        /// Bits kept.
        bits: u32,
    },
    /// A JPEG round trip at `quality` (1–100), through the `image` crate's encoder.
    Jpeg {
        /// JPEG quality.
        quality: u8,
    },
}

impl Preprocess {
    /// A short name for reports.
    pub fn name(&self) -> String {
        match self {
            Self::GaussianBlur { sigma } => format!("blur-sigma-{sigma}"),
            Self::BitDepth { bits } => format!("bit-depth-{bits}"),
            Self::Jpeg { quality } => format!("jpeg-q{quality}"),
        }
    }

    /// The pre-processed copy of every image.
    pub fn apply(&self, data: &ImageDataset) -> Result<ImageDataset, AdversarialError> {
        let shape = data.shape;
        let mut images = Vec::with_capacity(data.images.len());
        for i in 0..data.len() {
            let px = data.image(i);
            match *self {
                Self::GaussianBlur { sigma } => images.extend(blur(px, shape, sigma)),
                Self::BitDepth { bits } => {
                    let levels = ((1u32 << bits.clamp(1, 16)) - 1) as f32;
                    images.extend(
                        px.iter()
                            .map(|v| (v.clamp(0.0, 1.0) * levels).round() / levels),
                    );
                }
                Self::Jpeg { quality } => images.extend(jpeg_round_trip(px, shape, quality)?),
            }
        }
        Ok(ImageDataset {
            images,
            labels: data.labels.clone(),
            shape,
            class_names: data.class_names.clone(),
        })
    }
}

/// A separable Gaussian blur with clamped edges.
fn blur(px: &[f32], shape: ImageShape, sigma: f32) -> Vec<f32> {
    let r = (2.0 * sigma).ceil().max(1.0) as isize;
    let kernel: Vec<f32> = (-r..=r)
        .map(|d| (-(d * d) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f32 = kernel.iter().sum();
    let (h, w) = (shape.height as isize, shape.width as isize);
    let mut out = px.to_vec();
    for plane in out.chunks_mut((h * w) as usize) {
        for pass in 0..2 {
            let src = plane.to_vec();
            for y in 0..h {
                for x in 0..w {
                    let mut acc = 0.0;
                    for (j, kv) in kernel.iter().enumerate() {
                        let d = j as isize - r;
                        let (yy, xx) = if pass == 0 {
                            (y, (x + d).clamp(0, w - 1))
                        } else {
                            ((y + d).clamp(0, h - 1), x)
                        };
                        acc += kv * src[(yy * w + xx) as usize];
                    }
                    plane[(y * w + x) as usize] = acc / total;
                }
            }
        }
    }
    out
}

/// Encodes one image as JPEG at `quality` and decodes it again.
fn jpeg_round_trip(
    px: &[f32],
    shape: ImageShape,
    quality: u8,
) -> Result<Vec<f32>, AdversarialError> {
    use image::ImageEncoder;
    let (h, w, c) = (shape.height, shape.width, shape.channels);
    let plane = h * w;
    let mut interleaved = vec![0u8; plane * c];
    for p in 0..plane {
        for ch in 0..c {
            interleaved[p * c + ch] = (px[ch * plane + p].clamp(0.0, 1.0) * 255.0).round() as u8;
        }
    }
    let color = if c == 3 {
        image::ExtendedColorType::Rgb8
    } else {
        image::ExtendedColorType::L8
    };
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality.clamp(1, 100))
        .write_image(&interleaved, w as u32, h as u32, color)
        .map_err(|e| AdversarialError::Invalid(format!("JPEG encoding failed: {e}")))?;
    let decoded = image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg)
        .map_err(|e| AdversarialError::Invalid(format!("JPEG decoding failed: {e}")))?;
    let raw: Vec<u8> = if c == 3 {
        decoded.to_rgb8().into_raw()
    } else {
        decoded.to_luma8().into_raw()
    };
    let mut out = vec![0.0f32; plane * c];
    for p in 0..plane {
        for ch in 0..c {
            out[ch * plane + p] = f32::from(raw[p * c + ch]) / 255.0;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::crypto::keys::MasterKey;
    use crate::nn::model::SmallCnnConfig;
    use crate::nn::train::train_classifier;
    use crate::schemes::adversarial::encrypt_basic;

    fn fit(data: &ImageDataset, seed: u64) -> crate::nn::model::SmallCnn {
        let device = Device::flex().autodiff();
        device.seed(seed);
        let model = SmallCnnConfig::for_shape(data.shape, data.num_classes()).init(&device);
        let options = TrainOptions {
            epochs: 10,
            batch_size: 32,
            learning_rate: 2e-3,
            seed,
        };
        train_classifier(model, data, options, &device, |_| Control::Continue).unwrap()
    }

    /// The paper's §3.4 attack recovers the basic correspondence on the digits (ε 1.5, where
    /// the encryption protects): the owner's model and the attacker's are trained on disjoint
    /// halves, and at least 8 of the 10 targets come out right (fixed seeds).
    #[test]
    fn the_basic_correspondence_is_recovered_by_enumeration() {
        let all = crate::data::digits();
        let (owner, attacker) = all.split(0.35, 11);
        let device = Device::flex().autodiff();
        let p = ClassCorrespondence::from_key(&MasterKey::from_bytes([9; 32]), 10).unwrap();
        let pgd = PgdConfig::with_epsilon(1.5, 15);
        let base = fit(&owner, 1);
        let encrypted =
            encrypt_basic(&base, &owner, &p, &pgd, &device, |_, _| Control::Continue).unwrap();
        let m1 = fit(&encrypted, 2).valid();
        let m2 = fit(&attacker, 3);
        let copies =
            CandidateCopies::new(&m2, &attacker, &pgd, &device, |_, _| Control::Continue).unwrap();
        let found = recover_basic(&m1, &copies, &Device::flex());
        assert_eq!(found.candidates_tried, 100);
        assert!(
            found.correct(&p) >= 8,
            "{:?} against {:?}",
            found.recovered,
            p.targets()
        );
    }

    #[test]
    fn tuples_enumerate_ordered_distinct_targets() {
        assert_eq!(tuples(10, 2).len(), 90);
        assert_eq!(tuples(5, 4).len(), 120);
        assert!(tuples(4, 3).iter().all(|t| {
            let mut s = t.clone();
            s.dedup();
            s.len() == 3 && t[0] != t[2]
        }));
    }

    #[test]
    fn preprocessing_does_what_it_says() {
        let shape = ImageShape::new(1, 8, 8);
        let mut px = vec![0.0f32; 64];
        px[27] = 1.0;
        let data = ImageDataset::new(px.clone(), vec![0], shape, vec!["a".into()]).unwrap();
        let blurred = Preprocess::GaussianBlur { sigma: 1.0 }
            .apply(&data)
            .unwrap();
        // Mass is kept away from the edges, and the peak spreads to its neighbours.
        let sum: f32 = blurred.images.iter().sum();
        assert!((sum - 1.0).abs() < 1e-4, "{sum}");
        assert!(blurred.images[27] < 0.3 && blurred.images[28] > 0.05);
        let squeezed = Preprocess::BitDepth { bits: 1 }
            .apply(&ImageDataset::new(vec![0.2; 64], vec![0], shape, vec!["a".into()]).unwrap())
            .unwrap();
        assert!(squeezed.images.iter().all(|&v| v == 0.0));
        let flat = ImageDataset::new(vec![0.5; 64], vec![0], shape, vec!["a".into()]).unwrap();
        let jpeg = Preprocess::Jpeg { quality: 75 }.apply(&flat).unwrap();
        assert!(
            jpeg.images.iter().all(|&v| (v - 0.5).abs() < 0.02),
            "{:?}",
            &jpeg.images[..8]
        );
        let rgb = ImageDataset::new(
            vec![0.25; 3 * 64],
            vec![0],
            ImageShape::new(3, 8, 8),
            vec!["a".into()],
        )
        .unwrap();
        let jpeg = Preprocess::Jpeg { quality: 90 }.apply(&rgb).unwrap();
        assert!(jpeg.images.iter().all(|&v| (v - 0.25).abs() < 0.02));
    }
}
