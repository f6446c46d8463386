//! `veil experiment owsd`: one-way scrambling by deconvolution (Savransky, Mateless, Katz)
//! measured on small data — the paper's Table 1 (IIN vs the cloud on unscrambled images where
//! labels match), Table 2 (fewer owner labels), use-case 3 (owner labels absent from the cloud),
//! use-case 5 (labelled images per class), Table 5 (agreement and entropy of the cloud's vectors
//! on scrambled vs original images), the ablation the paper never ran (the IIN on the embedding
//! alone and on the cloud vector alone), and the autoencoder attack (§5.3–5.4) as the number of
//! (scrambled, original) pairs grows.
//!
//! Setting, for owner data A and other data B (digits and the synthetic shapes, either way
//! round): A is split into the cloud's own labelled data and the owner's data (a labelled pool
//! and a test set). The owner's encoder is a small CNN trained on B (the stand-in for the paper's
//! ImageNet-pretrained encoders: generic features, never trained on the owner's task). The clouds
//! are small CNNs trained on A's cloud part (matching labels), on it plus B (more labels), and on
//! B alone (labels disjoint from the owner's). Use case 4's ensemble adds encoders trained on
//! further draws of B (`--encoders`), each encoding scrambled by its own generator.
//!
//! Why this file is over 600 lines: one experiment, the paper's tables and use cases computed in
//! order on shared models; the results struct and the report are in their own files.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::module::Module;
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::softmax;
use std::collections::BTreeMap;

use veil::attacks::leakage::metrics::psnr;
use veil::attacks::owsd_generator::{FitOptions, fit_generator};
use veil::attacks::owsd_inverter::inversion_attack;
use veil::burn;
use veil::crypto::keys::{MasterKey, Scheme};
use veil::data::{ImageDataset, ImageShape, SyntheticConfig, synthetic};

use crate::datasets::{CommonArgs, DataSource, SourceDefaults};
use veil::nn::model::{Classifier, SmallCnn, SmallCnnConfig};
use veil::nn::train::{
    Control, TrainOptions, accuracy, mean_entropy_bits, top1_top5, train_classifier,
};
use veil::schemes::owsd::{
    IinTrainOptions, InternalInferenceNetConfig, ScrambleConfig, ScrambleKey, cloud_features,
    generator_label, iin_rows, train_internal_net,
};

use veil_server::embedded::union_classes;

use super::bar;

mod results;
pub use results::*;

/// Options of `veil experiment owsd`.
#[derive(clap::Args, Debug)]
pub struct OwsdArgs {
    /// The owner's data, output, size and seed (the synthetic set and image folders default to
    /// 1×16×16). The encoder learns on synthetic shapes of the owner's image shape.
    #[command(flatten)]
    common: CommonArgs,
    /// Encoders of the ensemble (use case 4): each trained on its own draw of the other data.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=8))]
    encoders: u64,
    /// The owner's own encoders (safetensors with SmallCnn's architecture, burn's or PyTorch's
    /// layout; repeat for an ensemble) instead of training them: the first is Table 1's encoder.
    #[arg(long = "encoder", value_name = "FILE")]
    encoder_files: Vec<PathBuf>,
}

fn shapes(classes: usize, per_class: usize, shape: ImageShape, seed: u64) -> Result<ImageDataset> {
    Ok(synthetic(SyntheticConfig {
        classes,
        per_class,
        shape,
        noise: 0.05,
        seed,
    })?)
}

/// Indices of the first `n` images of each class.
fn first_per_class(d: &ImageDataset, n: usize) -> Vec<usize> {
    let mut seen = vec![0usize; d.num_classes()];
    (0..d.len())
        .filter(|&i| {
            let c = d.labels[i] as usize;
            seen[c] += 1;
            seen[c] <= n
        })
        .collect()
}

fn fit_cnn(data: &ImageDataset, epochs: usize, seed: u64, label: &str) -> Result<SmallCnn> {
    let device = Device::flex().autodiff();
    device.seed(seed);
    let model = SmallCnnConfig::for_shape(data.shape, data.num_classes()).init(&device);
    let options = TrainOptions {
        epochs,
        batch_size: 32,
        learning_rate: 2e-3,
        seed,
    };
    let pb = bar((epochs * data.len().div_ceil(32)) as u64, label);
    let model = train_classifier(model, data, options, &device, |_| {
        pb.inc(1);
        Control::Continue
    })?;
    pb.finish();
    Ok(model.valid())
}

/// Embeddings `[N, width]` of the owner's encoder (row-major).
fn embed(encoder: &SmallCnn, data: &ImageDataset) -> Vec<f32> {
    let device = Device::flex();
    let mut out = Vec::new();
    for s in (0..data.len()).step_by(256) {
        let r = s..(s + 256).min(data.len());
        out.extend(
            encoder
                .embed(data.images_tensor(r, &device))
                .into_data()
                .iter::<f32>(),
        );
    }
    out
}

fn scramble(key: &ScrambleKey, emb: &[f32], n: usize) -> Result<Vec<f32>> {
    let device = Device::flex();
    let d = emb.len() / n.max(1);
    let x = Tensor::<2>::from_data(TensorData::new(emb.to_vec(), [n, d]), &device);
    Ok(key.scramble(x)?.into_data().iter::<f32>().collect())
}

/// The cloud's probability vectors `[N, K]` for images `[N, 1, 8, 8]`.
fn cloud_vectors(cloud: &SmallCnn, images: &[f32], shape: ImageShape) -> Vec<f32> {
    let device = Device::flex();
    let p = shape.len();
    let n = images.len() / p;
    let mut out = Vec::new();
    for s in (0..n).step_by(256) {
        let e = (s + 256).min(n);
        let x = Tensor::<4>::from_data(
            TensorData::new(
                images[s * p..e * p].to_vec(),
                [e - s, shape.channels, shape.height, shape.width],
            ),
            &device,
        );
        out.extend(softmax(cloud.forward(x), 1).into_data().iter::<f32>());
    }
    out
}

/// The owner's features for one cloud: embeddings, and the cloud's vectors of the scrambled
/// images.
struct Features {
    emb: Vec<f32>,
    /// Width of an embedding row (64 per encoder).
    we: usize,
    cloud: Vec<f32>,
    k: usize,
    n: usize,
}

impl Features {
    /// The cloud's vectors enter the IIN as [`cloud_features`] (log-probabilities).
    fn new(
        emb: &[f32],
        we: usize,
        scrambled: &[f32],
        cloud: &SmallCnn,
        k: usize,
        shape: ImageShape,
    ) -> Self {
        let n = emb.len() / we;
        Self {
            emb: emb.to_vec(),
            we,
            cloud: cloud_features(&cloud_vectors(cloud, scrambled, shape)),
            k,
            n,
        }
    }

    /// Use case 4: several encodings side by side, rows `[emb₁ ‖ … ‖ emb_E]` and
    /// `[cloud₁ ‖ … ‖ cloud_E]`.
    fn join(parts: &[Features]) -> Self {
        let n = parts[0].n;
        let (mut emb, mut cloud) = (Vec::new(), Vec::new());
        for i in 0..n {
            for p in parts {
                emb.extend_from_slice(&p.emb[i * p.we..(i + 1) * p.we]);
            }
            for p in parts {
                cloud.extend_from_slice(&p.cloud[i * p.k..(i + 1) * p.k]);
            }
        }
        Self {
            emb,
            we: parts.iter().map(|p| p.we).sum(),
            cloud,
            k: parts.iter().map(|p| p.k).sum(),
            n,
        }
    }

    fn subset(&self, idx: &[usize]) -> Self {
        let pick = |v: &[f32], w: usize| -> Vec<f32> {
            idx.iter()
                .flat_map(|&i| v[i * w..(i + 1) * w].iter().copied())
                .collect()
        };
        Self {
            emb: pick(&self.emb, self.we),
            we: self.we,
            cloud: pick(&self.cloud, self.k),
            k: self.k,
            n: idx.len(),
        }
    }

    /// `which`: `both`, `embedding` or `cloud`.
    fn inputs(&self, which: &str) -> (Vec<f32>, usize, usize) {
        match which {
            "embedding" => (self.emb.clone(), self.we, 0),
            "cloud" => (self.cloud.clone(), 0, self.k),
            _ => (
                iin_rows(&self.emb, self.we, &self.cloud, self.k, self.n),
                self.we,
                self.k,
            ),
        }
    }
}

/// A Table 1 row: the IIN on `[embedding ‖ cloud]`, on the cloud's vector alone and, with
/// `with_embedding`, on the embedding alone (in that order: each call seeds the same way).
fn iin_row(
    train: &Features,
    train_labels: &[u32],
    test: &Features,
    test_labels: &[u32],
    classes: usize,
    seed: u64,
    with_embedding: bool,
) -> IinRow {
    let score = |which| {
        let (top1, top5) = iin(train, train_labels, test, test_labels, classes, which, seed);
        TopK { top1, top5 }
    };
    let both = score("both");
    let embedding = with_embedding.then(|| score("embedding"));
    IinRow {
        both,
        embedding,
        cloud: score("cloud"),
        cloud_labels: None,
        keys: None,
        encoders: None,
    }
}

/// Trains an IIN on `train` and scores `test`: (top-1, top-5).
fn iin(
    train: &Features,
    train_labels: &[u32],
    test: &Features,
    test_labels: &[u32],
    classes: usize,
    which: &str,
    seed: u64,
) -> (f64, f64) {
    let device = Device::flex().autodiff();
    device.seed(seed);
    let (x, we, wc) = train.inputs(which);
    let net = InternalInferenceNetConfig::new(we, wc, classes).init(&device);
    let options = IinTrainOptions {
        seed,
        ..IinTrainOptions::default()
    };
    let (net, _) = train_internal_net(net, &x, train_labels, options, &device);
    let (tx, _, _) = test.inputs(which);
    let cpu = Device::flex();
    let net = net.to_device(&cpu);
    let logits: Vec<f32> = net
        .forward(Tensor::from_data(
            TensorData::new(tx, [test.n, we + wc]),
            &cpu,
        ))
        .into_data()
        .iter::<f32>()
        .collect();
    top1_top5(&logits, classes, test_labels)
}

pub fn run(args: OwsdArgs) -> Result<()> {
    let started = Instant::now();
    let q = args.common.quick;
    let seed = args.common.seed;
    let per = if q { 20 } else { 60 };
    let loaded = args.common.load(SourceDefaults {
        size: 16,
        channels: 1,
        classes: 10,
        per_class: if q { 60 } else { 180 },
        seed,
    })?;
    let owner_all = loaded.data;
    let owner_shape = owner_all.shape;
    let digits_owner = args.common.data == DataSource::Digits;
    // The other data, draw `d` (each encoder of the ensemble learns on its own draw).
    let other_draw = |d: u64| -> Result<ImageDataset> {
        if digits_owner {
            // The digits' own 8×8; the encoder learns on 32 synthetic shapes at that size.
            shapes(32, per, owner_shape, seed + 1000 * d)
        } else {
            // Synthetic shapes of the owner's image shape, without the 10 classes the synthetic
            // owner set uses: the encoder learns on the other 22.
            let all = shapes(32, per, owner_shape, seed + 100 + 1000 * d)?;
            let idx: Vec<usize> = (0..all.len()).filter(|&i| all.labels[i] >= 10).collect();
            let mut other = all.subset(&idx);
            other.labels.iter_mut().for_each(|l| *l -= 10);
            other.class_names.drain(..10);
            Ok(other)
        }
    };
    let other = other_draw(0)?;
    let shape = owner_all.shape;
    std::fs::create_dir_all(&args.common.out)
        .with_context(|| format!("creating {}", args.common.out.display()))?;
    let classes = owner_all.num_classes();
    // Half the owner-type data is the cloud's own; the owner's half is a labelled pool and a test set.
    let (cloud_part, owner) = owner_all.split(0.5, seed);
    let (pool, test) = owner.split(0.4, seed + 1);
    let epochs = if q { 8 } else { 25 };
    eprintln!(
        "OWSD on {}: cloud's own data {}, owner's labelled pool {}, owner's test {}, other data {} images in {} classes",
        args.common.data,
        cloud_part.len(),
        pool.len(),
        test.len(),
        other.len(),
        other.num_classes()
    );

    let t = Instant::now();
    let mut encoders = Vec::new();
    for path in &args.encoder_files {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let (enc, info) =
            veil::schemes::owsd::encoder::import_encoder(&bytes, shape, &Device::flex())
                .with_context(|| format!("importing the encoder {}", path.display()))?;
        eprintln!(
            "encoder {}: {} filters, {}-value embeddings, {:?} layout",
            path.display(),
            info.config.base_filters,
            info.embedding,
            info.layout
        );
        encoders.push(enc);
    }
    let n_encoders = if encoders.is_empty() {
        args.encoders as usize
    } else {
        encoders.len()
    };
    if encoders.is_empty() {
        encoders.push(fit_cnn(&other, epochs, seed, "encoder (other data)")?);
    }
    let encoder = encoders[0].clone();
    let width = |e: &SmallCnn| e.embedding_width();
    let cloud_match = fit_cnn(&cloud_part, epochs, seed + 1, "cloud: matching labels")?;
    let more = union_classes(&cloud_part, &other, "other:");
    let cloud_more = fit_cnn(&more, epochs, seed + 2, "cloud: more labels")?;
    let cloud_disjoint = fit_cnn(&other, epochs, seed + 3, "cloud: disjoint labels")?;
    for e in encoders.len()..n_encoders {
        let e = e as u64;
        encoders.push(fit_cnn(
            &other_draw(e)?,
            epochs,
            seed + 10 * e,
            &format!("encoder {} of {n_encoders} (other data, draw {e})", e + 1),
        )?);
    }
    // The trained encoders, for the page's import (`/owsd.html`) or `--encoder`.
    if args.encoder_files.is_empty() {
        for (e, enc) in encoders.iter().enumerate() {
            let path = args
                .common
                .out
                .join(format!("encoder-{}.safetensors", e + 1));
            let bytes = veil::schemes::owsd::encoder::export_encoder(
                enc,
                veil::schemes::owsd::encoder::WeightLayout::Burn,
            )?;
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    let models_s = t.elapsed().as_secs_f64();
    let cpu = Device::flex();
    let cloud_plain_acc = accuracy(&cloud_match, &test, &cpu);

    // The owner's key and scrambling.
    let mut kb = [0u8; 32];
    kb[..8].copy_from_slice(&seed.to_le_bytes());
    kb[8] = 0x05;
    let key = MasterKey::from_bytes(kb);
    let scrambler = ScrambleConfig::new(width(&encoder), shape)
        .init(&key.subkey(Scheme::Owsd, "generator"), &cpu)?;
    let t = Instant::now();
    let (emb_pool, emb_test) = (embed(&encoder, &pool), embed(&encoder, &test));
    let (sc_pool, sc_test) = (
        scramble(&scrambler, &emb_pool, pool.len())?,
        scramble(&scrambler, &emb_test, test.len())?,
    );
    let scramble_ips = (pool.len() + test.len()) as f64 / t.elapsed().as_secs_f64();

    // Table 1 + ablation, for each cloud.
    let t = Instant::now();
    let mut table1 = BTreeMap::new();
    let clouds = [
        ("matching", &cloud_match, classes),
        ("more", &cloud_more, more.num_classes()),
        ("disjoint", &cloud_disjoint, other.num_classes()),
    ];
    let mut feats = Vec::new();
    for (name, cloud, k) in clouds {
        let we = width(&encoder);
        let ftr = Features::new(&emb_pool, we, &sc_pool, cloud, k, shape);
        let fte = Features::new(&emb_test, we, &sc_test, cloud, k, shape);
        let row = IinRow {
            cloud_labels: Some(k),
            ..iin_row(&ftr, &pool.labels, &fte, &test.labels, classes, seed, true)
        };
        eprintln!("  {name}: {row:?}");
        table1.insert(name.to_owned(), row);
        feats.push((name, ftr, fte, k));
    }
    // Beside use case 4, for contrast: one encoder and three scramble keys (generators), each
    // image scrambled by each; the cloud's vectors concatenated.
    let ensemble = {
        let keys: Vec<ScrambleKey> = (0..3)
            .map(|g| {
                ScrambleConfig::new(width(&encoder), shape)
                    .init(&key.subkey(Scheme::Owsd, &format!("generator/{g}")), &cpu)
            })
            .collect::<Result<_, _>>()?;
        let build = |emb: &[f32], n: usize| -> Result<Features> {
            let mut cloud = Vec::new();
            let parts = keys
                .iter()
                .map(|k| {
                    let sc = scramble(k, emb, n)?;
                    Ok(Features::new(
                        emb,
                        width(&encoder),
                        &sc,
                        &cloud_match,
                        classes,
                        shape,
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            for i in 0..n {
                for p in &parts {
                    cloud.extend_from_slice(&p.cloud[i * classes..(i + 1) * classes]);
                }
            }
            Ok(Features {
                emb: emb.to_vec(),
                we: width(&encoder),
                cloud,
                k: classes * keys.len(),
                n,
            })
        };
        let (ftr, fte) = (build(&emb_pool, pool.len())?, build(&emb_test, test.len())?);
        IinRow {
            keys: Some(keys.len()),
            ..iin_row(&ftr, &pool.labels, &fte, &test.labels, classes, seed, false)
        }
    };
    // Use case 4: an ensemble of encoders. Each encoding is scrambled by its own generator and
    // sent on its own; the IIN sees all embeddings and all the cloud's vectors.
    let encoder_ensemble = {
        let mut parts_train = Vec::new();
        let mut parts_test = Vec::new();
        for (e, enc) in encoders.iter().enumerate() {
            let gen_key = ScrambleConfig::new(width(enc), shape)
                .init(&key.subkey(Scheme::Owsd, &generator_label(0, e)), &cpu)?;
            for (data, parts) in [(&pool, &mut parts_train), (&test, &mut parts_test)] {
                let emb = embed(enc, data);
                let sc = scramble(&gen_key, &emb, data.len())?;
                parts.push(Features::new(
                    &emb,
                    width(enc),
                    &sc,
                    &cloud_match,
                    classes,
                    shape,
                ));
            }
        }
        let (ftr, fte) = (Features::join(&parts_train), Features::join(&parts_test));
        let row = IinRow {
            encoders: Some(encoders.len()),
            ..iin_row(&ftr, &pool.labels, &fte, &test.labels, classes, seed, true)
        };
        eprintln!("  matching, {} encoders: {row:?}", encoders.len());
        row
    };
    let (cloud_t1, cloud_t5) = {
        let v = cloud_vectors(&cloud_match, &test.images, shape);
        top1_top5(&v, classes, &test.labels)
    };

    // Table 2: fewer owner labels (the "more labels" cloud; the encoder stays).
    let mut table2 = Vec::new();
    for k in [10usize, 6, 4, 2].into_iter().filter(|&k| k <= classes) {
        let tr: Vec<usize> = (0..pool.len())
            .filter(|&i| (pool.labels[i] as usize) < k)
            .collect();
        let te: Vec<usize> = (0..test.len())
            .filter(|&i| (test.labels[i] as usize) < k)
            .collect();
        let (_, ftr, fte, _) = &feats[1];
        let (a, b) = (ftr.subset(&tr), fte.subset(&te));
        let (lt, le): (Vec<u32>, Vec<u32>) = (
            tr.iter().map(|&i| pool.labels[i]).collect(),
            te.iter().map(|&i| test.labels[i]).collect(),
        );
        let both = iin(&a, &lt, &b, &le, k, "both", seed).0;
        let cloud_only = iin(&a, &lt, &b, &le, k, "cloud", seed).0;
        let ratio = k as f64 / more.num_classes() as f64;
        table2.push(FewerLabelsRow {
            owner_labels: k,
            labels_ratio: ratio,
            iin: both,
            iin_cloud_only: cloud_only,
        });
    }

    // Use case 5: labelled images per class.
    let mut uc5 = Vec::new();
    for n in [5usize, 10, 20, 35, 50, usize::MAX] {
        let idx = first_per_class(&pool, n);
        let sub = pool.subset(&idx);
        let (_, ftr, fte, _) = &feats[1];
        let a = ftr.subset(&idx);
        let both = iin(&a, &sub.labels, fte, &test.labels, classes, "both", seed).0;
        let emb_only = iin(
            &a,
            &sub.labels,
            fte,
            &test.labels,
            classes,
            "embedding",
            seed,
        )
        .0;
        uc5.push(PerClassRow {
            per_class: if n == usize::MAX {
                PerClass::All("all".into())
            } else {
                PerClass::Count(n)
            },
            images: sub.len(),
            iin: both,
            iin_embedding_only: emb_only,
        });
        if sub.len() == pool.len() {
            break;
        }
    }
    let iin_s = t.elapsed().as_secs_f64();

    // Table 5: does the cloud see the same thing in the scrambled and the original image?
    let k = more.num_classes();
    let v_orig = cloud_vectors(&cloud_more, &test.images, shape);
    let v_scr = cloud_vectors(&cloud_more, &sc_test, shape);
    let top = |row: &[f32], m: usize| -> Vec<usize> {
        let mut o: Vec<usize> = (0..row.len()).collect();
        o.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        o.truncate(m);
        o
    };
    let (mut same1, mut inter5) = (0usize, 0usize);
    for (a, b) in v_orig.chunks_exact(k).zip(v_scr.chunks_exact(k)) {
        same1 += usize::from(top(a, 1) == top(b, 1));
        let ta = top(a, 5);
        inter5 += usize::from(top(b, 5).iter().any(|c| ta.contains(c)));
    }
    let table5 = CloudView {
        cloud_labels: k,
        top1_same: same1 as f64 / test.len() as f64,
        top5_intersect: inter5 as f64 / test.len() as f64,
        entropy_bits_original: mean_entropy_bits(&v_orig, k),
        entropy_bits_scrambled: mean_entropy_bits(&v_scr, k),
        entropy_bits_uniform: (k as f64).log2(),
    };

    // The attack: an inverter trained on N (scrambled, original) pairs the attacker collected
    // (the cloud's own images scrambled with the owner's key stand in for them).
    let t = Instant::now();
    let attack_pool = union_classes(&cloud_part, &pool, "other:");
    let emb_att = embed(&encoder, &attack_pool);
    let sc_att = scramble(&scrambler, &emb_att, attack_pool.len())?;
    let steps = if q { 500 } else { 3000 };
    let mut attack_rows = Vec::new();
    let sizes: Vec<usize> = [100usize, 300, 1000, 3000, 9000]
        .into_iter()
        .filter(|&n| n < attack_pool.len())
        .chain([attack_pool.len()])
        .collect();
    // What guessing the average image scores: the floor any reconstruction must beat.
    let dim = shape.len();
    let mean_image: Vec<f32> = (0..dim)
        .map(|j| {
            (0..attack_pool.len())
                .map(|i| attack_pool.images[i * dim + j])
                .sum::<f32>()
                / attack_pool.len() as f32
        })
        .collect();
    let mean_image_psnr = (0..test.len())
        .map(|i| psnr(&mean_image, test.image(i)))
        .sum::<f64>()
        / test.len() as f64;
    let pb = bar(sizes.len() as u64 * 2, "autoencoder attack");
    for &n in &sizes {
        let (p, m) = inversion_attack(
            &sc_att,
            &attack_pool.images,
            n,
            &sc_test,
            &test.images,
            shape.len(),
            (steps, seed),
        );
        pb.inc(1);
        let (pb_, mb) = inversion_attack(
            &attack_pool.images,
            &attack_pool.images,
            n,
            &test.images,
            &test.images,
            shape.len(),
            (steps, seed),
        );
        pb.inc(1);
        attack_rows.push(AttackRow {
            pairs: n,
            psnr: p,
            mse: m,
            baseline_original_psnr: pb_,
            baseline_original_mse: mb,
        });
    }
    pb.finish();

    // Key recovery: the attacker fits a generator of the public architecture to the same N
    // (embedding, scramble) pairs (the encoder is taken as public), then makes as many pairs as
    // it has images of its own with the copy and trains the inverter on those.
    let attacker_start = {
        let mut kb = [0u8; 32];
        kb[..8].copy_from_slice(&seed.to_le_bytes());
        kb[8] = 0x06;
        MasterKey::from_bytes(kb).subkey(Scheme::Owsd, "attacker")
    };
    let blind = ScrambleConfig::new(width(&encoder), shape).init(&attacker_start, &cpu)?;
    let scramble_psnr = |sc: &[f32]| -> f64 {
        (0..test.len())
            .map(|i| {
                psnr(
                    &sc[i * dim..(i + 1) * dim],
                    &sc_test[i * dim..(i + 1) * dim],
                )
            })
            .sum::<f64>()
            / test.len() as f64
    };
    let blind_scramble_psnr = scramble_psnr(&scramble(&blind, &emb_test, test.len())?);
    let emb_width = width(&encoder);
    let fit_steps = if q { 600 } else { 3000 };
    let pb = bar(sizes.len() as u64 * 2, "generator fit attack");
    let mut fit_rows = Vec::new();
    for &n in &sizes {
        let (copy, fit) = fit_generator(
            *scrambler.config(),
            &emb_att[..n * emb_width],
            &sc_att[..n * dim],
            &attacker_start,
            FitOptions {
                steps: fit_steps,
                seed,
                ..FitOptions::default()
            },
            &cpu,
        )?;
        pb.inc(1);
        let copied_test = scramble(&copy, &emb_test, test.len())?;
        let own_pairs = scramble(&copy, &emb_att, attack_pool.len())?;
        let (p, m) = inversion_attack(
            &own_pairs,
            &attack_pool.images,
            attack_pool.len(),
            &sc_test,
            &test.images,
            dim,
            (steps, seed),
        );
        pb.inc(1);
        fit_rows.push(GeneratorFitRow {
            pairs: n,
            train_logit_mse: fit.train_logit_mse,
            scramble_psnr: scramble_psnr(&copied_test),
            inverter_pairs: attack_pool.len(),
            psnr: p,
            mse: m,
        });
    }
    pb.finish();
    let attack_s = t.elapsed().as_secs_f64();

    // Figure: originals above their scrambled images.
    let picks: Vec<usize> = (0..classes.min(10) as u32)
        .filter_map(|c| (0..test.len()).find(|&i| test.labels[i] == c))
        .collect();
    let scrambled_ds = ImageDataset {
        images: sc_test.clone(),
        ..test.clone()
    };
    super::image_grid(
        &args.common.out.join("figure.png"),
        &[&test, &scrambled_ds],
        &picks,
    )?;

    let results = OwsdResults {
        setup: OwsdSetup {
            data: args.common.data.to_string(),
            quick: q,
            seed,
            owner_classes: classes,
            cloud_own_images: cloud_part.len(),
            owner_pool: pool.len(),
            owner_test: test.len(),
            other_images: other.len(),
            other_classes: other.num_classes(),
            encoder: if args.encoder_files.is_empty() {
                "small-cnn trained on the other data (64-d hidden layer)".to_string()
            } else {
                format!(
                    "imported: {}",
                    args.encoder_files
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
            encoders_in_ensemble: encoders.len(),
            scramble: *scrambler.config(),
            key_fingerprint: key.fingerprint().to_string(),
            classifier_epochs: epochs,
        },
        cloud_on_unscrambled: CloudOnPlain {
            top1: cloud_t1,
            top5: cloud_t5,
            accuracy: f64::from(cloud_plain_acc),
        },
        iin_over_cloud: table1["matching"].both.top1 / cloud_t1,
        iin_over_cloud_encoder_ensemble: encoder_ensemble.both.top1 / cloud_t1,
        table1,
        ensemble_matching_3_keys: ensemble,
        ensemble_matching_encoders: encoder_ensemble,
        table2_fewer_owner_labels: table2,
        use_case_5_per_class: uc5,
        table5,
        attack: attack_rows,
        attack_mean_image_psnr: mean_image_psnr,
        generator_fit: fit_rows,
        generator_fit_blind_scramble_psnr: blind_scramble_psnr,
        timing_s: OwsdTiming {
            models: models_s,
            iin: iin_s,
            attack: attack_s,
            total: started.elapsed().as_secs_f64(),
            scramble_images_per_s: scramble_ips,
        },
    };

    super::write_outputs(&args.common.out, &results, report(&results, &args), started)
}
