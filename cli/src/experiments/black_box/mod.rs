//! `veil experiment black-box`: the survey's black-box attacks (§6) against a model trained on
//! plaintext and one trained on flow-rotation ciphertexts, on any data source with its flows —
//! membership inference by the loss threshold, model extraction by querying
//! ([`veil::attacks::black_box`]) and model inversion ([`veil::attacks::model_inversion`]).
//!
//! Setting: the data is shuffled into the members (the models' training set), as many
//! non-members, and the attacker's own images (its queries). The victims are SmallCnns trained
//! long on the members without regularisation, as a factory that overfits would.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use veil::attacks::black_box::{agreement, membership, per_example_loss};
use veil::attacks::model_inversion::{
    Inversion, InversionOptions, class_means, invert, score_against_means,
};
use veil::burn::prelude::*;
use veil::data::ImageDataset;
use veil::nn::model::Classifier;
use veil::nn::model::{SmallCnn, SmallCnnConfig};
use veil::nn::train::{TrainOptions, argmax_rows, predict_logits};
use veil::schemes::flow_rotation::{EncryptionSettings, cover_permutation};

use super::flow_attacks::{encrypt_dataset, experiment_key};
use super::{baseline_failed, data_and_flows, fit_with, write_outputs};
use crate::datasets::{CommonArgs, SourceDefaults};

mod results;
pub use results::*;

/// Options of `veil experiment black-box`.
#[derive(clap::Args, Debug)]
pub struct BlackBoxArgs {
    /// Data, output, size and seed. The digits use the shipped digits flows; any other source
    /// needs `--flows` (image folders and the synthetic set default to 1×28×28).
    #[command(flatten)]
    pub common: CommonArgs,
    /// The flows that encrypt the second model's training set: a folder written by `veil flow
    /// train` on the same source.
    #[arg(long, value_name = "DIR")]
    pub flows: Option<PathBuf>,
    /// Members (the models' training set); as many non-members are drawn (default 400; 200 with
    /// --quick).
    #[arg(long)]
    pub members: Option<usize>,
    /// Epochs of every model (default 40; 15 with --quick).
    #[arg(long)]
    pub epochs: Option<usize>,
}

fn labels_of(model: &SmallCnn, data: &ImageDataset) -> Vec<u32> {
    argmax_rows(
        &predict_logits(model, data, &Device::flex()),
        data.num_classes(),
    )
}

fn accuracy_of(model: &SmallCnn, data: &ImageDataset) -> f64 {
    agreement(&labels_of(model, data), &data.labels)
}

/// The attacks on `victim`, trained on `members` and served `non_members` (in the same form);
/// the copies learn from `pool` (plain images) and are scored on `plain_test`.
#[allow(clippy::too_many_arguments)]
fn attack(
    victim: &SmallCnn,
    members: &ImageDataset,
    non_members: &ImageDataset,
    pool: &ImageDataset,
    plain_test: &ImageDataset,
    budgets: &[usize],
    options: TrainOptions,
    label: &str,
) -> Result<Victim> {
    let k = members.num_classes();
    let cpu = Device::flex();
    let losses =
        |d: &ImageDataset| per_example_loss(&predict_logits(victim, d, &cpu), &d.labels, k);
    let report = membership(&losses(members), &losses(non_members));
    let answers = labels_of(victim, pool);
    let served = labels_of(victim, non_members);
    // The attacker's relabelling: each answer read as the true class most often behind it on
    // its own labelled images. For a model trained on cover-class ciphertexts, plain images of
    // class j look like ciphertexts of class π⁻¹(j), so this recovers π.
    let relabel = {
        let mut counts = vec![vec![0usize; k]; k];
        for (&a, &y) in answers.iter().zip(&pool.labels) {
            counts[a as usize][y as usize] += 1;
        }
        counts
            .iter()
            .enumerate()
            .map(|(a, row)| {
                if row.iter().all(|&c| c == 0) {
                    a as u32
                } else {
                    (0..k).max_by_key(|&j| row[j]).unwrap_or(a) as u32
                }
            })
            .collect::<Vec<u32>>()
    };
    let relabelled = |labels: Vec<u32>| -> Vec<u32> {
        labels.into_iter().map(|a| relabel[a as usize]).collect()
    };
    let mut extraction = Vec::new();
    for &q in budgets {
        let idx: Vec<usize> = (0..q).collect();
        let queries = ImageDataset {
            labels: answers[..q].to_vec(),
            ..pool.subset(&idx)
        };
        let d = Device::flex().autodiff();
        d.seed(options.seed);
        let copy = fit_with(
            SmallCnnConfig::for_shape(members.shape, k).init(&d),
            options,
            &queries,
            &format!("{label}: copy from {q} queries"),
        )?;
        let on_plain = labels_of(&copy, plain_test);
        extraction.push(ExtractionRow {
            queries: q,
            agreement: agreement(&labels_of(&copy, non_members), &served),
            copy_accuracy_plain: agreement(&on_plain, &plain_test.labels),
            copy_accuracy_plain_relabelled: agreement(&relabelled(on_plain), &plain_test.labels),
        });
    }
    let test_accuracy = accuracy_of(victim, non_members);
    Ok(Victim {
        baseline_failed: baseline_failed(test_accuracy, k, non_members.len()),
        train_accuracy: accuracy_of(victim, members),
        test_accuracy,
        plain_accuracy_relabelled: agreement(
            &relabelled(labels_of(victim, plain_test)),
            &plain_test.labels,
        ),
        relabelling: relabel,
        unencryptable: 0,
        membership: report,
        extraction,
        inversion: None,
    })
}

/// Every class of `victim` inverted from `prior` (the mean of `held`, images the attacker holds in
/// the form the model takes), scored against `means` (the members' plain class means);
/// `cover[c]` is the class whose look class c's ciphertexts take.
fn invert_all(
    victim: &SmallCnn,
    held: &ImageDataset,
    prior_name: &str,
    means: &[Vec<f32>],
    cover: &[usize],
    seed: u64,
    label: &str,
) -> Result<(InversionSummary, Vec<Inversion>)> {
    let k = means.len();
    let shape = held.shape;
    let cpu = Device::flex();
    let prior: Vec<f32> = (0..shape.len())
        .map(|j| {
            held.images.iter().skip(j).step_by(shape.len()).sum::<f32>() / held.len().max(1) as f32
        })
        .collect();
    let options = InversionOptions {
        seed,
        ..InversionOptions::default()
    };
    let pb = super::bar((k * options.steps) as u64, &format!("{label}: inversion"));
    let mut rows = Vec::new();
    let mut images = Vec::new();
    for class in 0..k as u32 {
        let query = |x: &[f32]| -> Result<Vec<f32>, String> {
            let t = veil::data::images_tensor(x, shape, &cpu);
            Ok(victim.probabilities(t).into_data().iter::<f32>().collect())
        };
        let inv = invert(query, shape, k, class, Some(&prior), options, |_, _| {
            pb.inc(1);
            Ok(())
        })
        .with_context(|| format!("{label}: inverting class {class}"))?;
        let score = score_against_means(&inv, means, shape);
        rows.push(InvertedRow {
            class,
            confidence: inv.confidence,
            score,
        });
        images.push(inv);
    }
    pb.finish();
    let n = rows.len().max(1) as f64;
    let summary = InversionSummary {
        prior: prior_name.to_owned(),
        queries_per_class: options.queries(),
        identified: rows
            .iter()
            .filter(|r| r.score.nearest_class == r.class)
            .count(),
        shows_cover_class: rows
            .iter()
            .filter(|r| r.score.nearest_class as usize == cover[r.class as usize])
            .count(),
        psnr_mean: rows.iter().map(|r| r.score.psnr).sum::<f64>() / n,
        ssim_mean: rows.iter().map(|r| r.score.ssim).sum::<f64>() / n,
        domain_mean_psnr_mean: rows.iter().map(|r| r.score.domain_mean_psnr).sum::<f64>() / n,
        classes: rows,
    };
    Ok((summary, images))
}

pub fn run(args: BlackBoxArgs) -> Result<()> {
    let started = Instant::now();
    let quick = args.common.quick;
    let members_wanted = args.members.unwrap_or(if quick { 200 } else { 400 });
    let epochs = args.epochs.unwrap_or(if quick { 15 } else { 40 });
    if members_wanted == 0 || epochs == 0 {
        bail!("--members and --epochs must be at least 1");
    }
    let loaded = args.common.load(SourceDefaults {
        size: 28,
        channels: 1,
        classes: 10,
        per_class: (3 * members_wanted).div_ceil(10).max(30),
        seed: args.common.seed,
    })?;
    let (data, flows, flows_name) =
        data_and_flows(&args.common.data, loaded.data, args.flows.as_deref())?;
    let mut order: Vec<usize> = (0..data.len()).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(
        args.common.seed,
    ));
    let n = members_wanted.min(data.len() / 3);
    if n < 20 {
        bail!(
            "{} holds {} images: the attacks need at least 60 (members, non-members and the attacker's own)",
            args.common.data,
            data.len()
        );
    }
    let members = data.subset(&order[..n]);
    let non_members = data.subset(&order[n..2 * n]);
    let pool = data.subset(&order[2 * n..]);
    std::fs::create_dir_all(&args.common.out)
        .with_context(|| format!("creating {}", args.common.out.display()))?;
    let options = TrainOptions {
        epochs,
        batch_size: 32,
        learning_rate: 1e-3,
        seed: args.common.seed,
    };
    let budgets: Vec<usize> = [50usize, 100, 200, 400, 800]
        .into_iter()
        .filter(|&q| q < pool.len())
        .chain([pool.len()])
        .collect();
    let k = data.num_classes();
    let fit_victim = |train: &ImageDataset, label: &str| -> Result<SmallCnn> {
        let d = Device::flex().autodiff();
        d.seed(args.common.seed);
        fit_with(
            SmallCnnConfig::for_shape(data.shape, k).init(&d),
            options,
            train,
            label,
        )
    };

    let plain_model = fit_victim(&members, "plain victim")?;
    let mut plain = attack(
        &plain_model,
        &members,
        &non_members,
        &pool,
        &non_members,
        &budgets,
        options,
        "plain",
    )?;

    let key = experiment_key(args.common.seed, 0x23);
    let device = Device::flex();
    let settings = EncryptionSettings::VEIL;
    let (enc_members, _, lost_m) = encrypt_dataset(&flows, &key, settings, &members, &device);
    let (enc_non, plain_non, lost_n) =
        encrypt_dataset(&flows, &key, settings, &non_members, &device);
    let enc_model = fit_victim(&enc_members, "victim on ciphertexts")?;
    let mut flow_rotation = attack(
        &enc_model,
        &enc_members,
        &enc_non,
        &pool,
        &plain_non,
        &budgets,
        options,
        "flow rotation",
    )?;
    flow_rotation.unencryptable = lost_m + lost_n;
    let pi = cover_permutation(&key, k);

    // Model inversion, scored against the members' plain class means.
    let means = class_means(&members.images, &members.labels, data.shape, k);
    let identity: Vec<usize> = (0..k).collect();
    let (summary, plain_inv) = invert_all(
        &plain_model,
        &pool,
        "the mean of the attacker's own plain images",
        &means,
        &identity,
        args.common.seed,
        "plain",
    )?;
    plain.inversion = Some(summary);
    let (summary, enc_inv) = invert_all(
        &enc_model,
        &enc_non,
        "the mean of the non-members' ciphertexts (the factory's holdings)",
        &means,
        &pi,
        args.common.seed,
        "flow rotation",
    )?;
    flow_rotation.inversion = Some(summary);
    let grid = |pixels: Vec<f32>| {
        ImageDataset::new(
            pixels,
            (0..k as u32).collect(),
            data.shape,
            data.class_names.clone(),
        )
    };
    let rows = [
        grid(
            means
                .iter()
                .flat_map(|m| {
                    if m.is_empty() {
                        vec![0.0; data.shape.len()]
                    } else {
                        m.clone()
                    }
                })
                .collect(),
        )?,
        grid(plain_inv.into_iter().flat_map(|i| i.image).collect())?,
        grid(enc_inv.into_iter().flat_map(|i| i.image).collect())?,
    ];
    super::image_grid(
        &args.common.out.join("inversion.png"),
        &rows.iter().collect::<Vec<_>>(),
        &(0..k).collect::<Vec<_>>(),
    )?;

    let results = BlackBoxResults {
        command: command_line(&args),
        data: args.common.data.to_string(),
        shape: data.shape.to_string(),
        flows: flows_name,
        members: members.len(),
        non_members: non_members.len(),
        query_pool: pool.len(),
        epochs,
        quick,
        relabelling_matches_cover: pi
            .iter()
            .enumerate()
            .filter(|&(a, &j)| flow_rotation.relabelling[a] as usize == j)
            .count(),
        cover_permutation: pi,
        plain,
        flow_rotation,
        seconds: started.elapsed().as_secs_f64(),
    };
    write_outputs(&args.common.out, &results, report(&results), started)
}

fn command_line(args: &BlackBoxArgs) -> String {
    let mut line = args.common.command_line("black-box");
    if let Some(dir) = &args.flows {
        line += &format!(" --flows {}", dir.display());
    }
    if let Some(m) = args.members {
        line += &format!(" --members {m}");
    }
    if let Some(e) = args.epochs {
        line += &format!(" --epochs {e}");
    }
    line
}
