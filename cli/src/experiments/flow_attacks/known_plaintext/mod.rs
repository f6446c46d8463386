//! `veil experiment known-plaintext`: how many known (image, ciphertext) pairs break a flow
//! rotation key ([`veil::attacks::known_plaintext`]), for the paper's Algorithm 1 and for Veil's
//! settings (τ and cover classes), on any data source with flows trained on it.
//!
//! Setting: the owner encrypts each attacked class with its own rotation (route a). The attacker
//! holds the public flows and manifest, `n` pairs of one class, and other ciphertexts of that
//! class (the victims, which it never saw in the clear). It fits the rotation and decrypts the
//! victims; the report gives their PSNR against the originals and how many decrypt exactly.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use veil::attacks::known_plaintext::{RecoveredRotation, decrypt_latents, find_decoder};
use veil::burn::prelude::*;
use veil::crypto::haar::HaarRotation;
use veil::crypto::keys::Scheme;
use veil::data::ImageDataset;
use veil::flow::glow::Glow;
use veil::schemes::flow_rotation::cover_permutation;

use super::super::{bar, data_and_flows, image_grid, write_outputs};
use super::{
    SETTINGS, cipher_latents_of, encrypt_class, experiment_key, latents_of, prior_mean_images,
    score,
};
use crate::datasets::{CommonArgs, SourceDefaults};

mod results;
pub use results::*;

/// Options of `veil experiment known-plaintext`.
#[derive(clap::Args, Debug)]
pub struct KnownPlaintextArgs {
    /// Data, output, size and seed. The digits use the shipped digits flows; any other source
    /// needs `--flows` (image folders and the synthetic set default to 1×28×28).
    #[command(flatten)]
    pub common: CommonArgs,
    /// The public flows: a folder written by `veil flow train --data <the same source> --out DIR`.
    #[arg(long, value_name = "DIR")]
    pub flows: Option<PathBuf>,
    /// How many classes to attack, from class 0 (default: all; 2 with --quick).
    #[arg(long)]
    pub classes: Option<usize>,
    /// Ciphertexts per class that the attacker does not know and tries to decrypt.
    #[arg(long, default_value_t = 32)]
    pub victims: usize,
    /// The synthetic set: images per class (default: enough for 2·m known pairs and the victims,
    /// m = C·H·W).
    #[arg(long)]
    pub per_class: Option<usize>,
    /// Measure pair counts up to this many only (from m on, each fit is a dense m × m
    /// factorisation: minutes at m = 3,072 on 2 cores).
    #[arg(long)]
    pub max_pairs: Option<usize>,
}

/// The pair counts measured for an `m`-dimensional rotation: 1, 4, 16, m/4, m/2, m and 2m.
pub fn pair_counts(m: usize) -> Vec<usize> {
    let mut n = vec![1, 4, 16, m / 4, m / 2, m, 2 * m];
    n.retain(|&v| v > 0);
    n.sort_unstable();
    n.dedup();
    n
}

/// One attacked class's images, encrypted under one setting.
struct ClassCase {
    /// Known pairs' images (the attacker's), then their ciphertexts.
    pool: ImageDataset,
    pool_ct: Tensor<4>,
    /// The victims' images (only to measure) and ciphertexts.
    victims: ImageDataset,
    victims_ct: Tensor<4>,
    unencryptable: usize,
}

/// What one class contributes to one point of the curve.
#[derive(Default)]
struct Tally {
    classes: usize,
    decoder_found: usize,
    rank: f64,
    energy: f64,
    max_error: Option<f64>,
    relative_error: Option<f64>,
    psnrs: Vec<f64>,
    exact: usize,
}

impl Tally {
    fn point(&self, n: usize) -> Point {
        let k = self.classes.max(1) as f64;
        let victims = self.psnrs.len().max(1) as f64;
        Point {
            known_pairs: n,
            decoder_found: self.decoder_found as f64 / k,
            rank: self.rank / k,
            captured_energy: self.energy / k,
            rotation_max_error: self.max_error,
            rotation_relative_error: self.relative_error,
            psnr_mean: self.psnrs.iter().sum::<f64>() / victims,
            psnr_min: self.psnrs.iter().copied().fold(f64::INFINITY, f64::min),
            exact: self.exact as f64 / victims,
        }
    }
}

pub fn run(args: KnownPlaintextArgs) -> Result<()> {
    let started = Instant::now();
    let quick = args.common.quick;
    let victims_wanted = if quick {
        args.victims.min(16)
    } else {
        args.victims
    };
    if victims_wanted == 0 {
        bail!("--victims must be at least 1: they are what the attack decrypts");
    }
    let shape = args.common.shape(SourceDefaults {
        size: 28,
        channels: 1,
        classes: 10,
        per_class: 0,
        seed: args.common.seed,
    });
    let per_class = args
        .per_class
        .unwrap_or(2 * shape.len() + victims_wanted + 8);
    let loaded = args.common.load(SourceDefaults {
        size: 28,
        channels: 1,
        classes: 10,
        per_class,
        seed: args.common.seed,
    })?;
    let (data, flows, flows_name) =
        data_and_flows(&args.common.data, loaded.data, args.flows.as_deref())?;
    let m = data.shape.len();
    let k = data.num_classes();
    let classes: Vec<usize> =
        (0..args.classes.unwrap_or(if quick { 2 } else { k }).min(k)).collect();
    std::fs::create_dir_all(&args.common.out)
        .with_context(|| format!("creating {}", args.common.out.display()))?;
    let device = Device::flex();
    let pre = flows.manifest.preprocess;
    // The owner's key, from the seed (the experiment must be reproducible).
    let key = experiment_key(args.common.seed, 0x21);
    let pi = cover_permutation(&key, k);
    let mut wanted = pair_counts(m);
    let capped: Vec<usize> = match args.max_pairs {
        Some(cap) => wanted.iter().copied().filter(|&n| n > cap).collect(),
        None => Vec::new(),
    };
    wanted.retain(|n| !capped.contains(n));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.common.seed);
    // Per class: the victims first, then the attacker's pool (as many as the largest n needs).
    let split: Vec<(Vec<usize>, Vec<usize>)> = classes
        .iter()
        .map(|&c| {
            let mut idx = data.class_indices(c as u32);
            idx.shuffle(&mut rng);
            let v = victims_wanted.min(idx.len() / 2);
            let pool_len = (idx.len() - v).min(*wanted.last().unwrap_or(&1));
            (idx[..v].to_vec(), idx[v..v + pool_len].to_vec())
        })
        .collect();
    let most = split.iter().map(|(_, p)| p.len()).min().unwrap_or(0);
    let measured: Vec<usize> = wanted.iter().copied().filter(|&n| n <= most).collect();
    let not_measured: Vec<usize> = wanted
        .iter()
        .copied()
        .filter(|&n| n > most)
        .chain(capped)
        .collect();
    if measured.is_empty() {
        bail!(
            "the attacked classes hold too few images for even one known pair beside the victims"
        );
    }
    eprintln!(
        "{} ({} dimensions), classes {classes:?}: up to {most} known pairs and {} victims per class",
        data.shape,
        m,
        split.iter().map(|(v, _)| v.len()).min().unwrap_or(0)
    );

    let settings = SETTINGS;
    let pb = bar(
        (settings.len() * classes.len() * (measured.len() + 1)) as u64,
        "known-plaintext",
    );
    let mut curves = Vec::new();
    // The first attacked class's victims, decrypted at each n: rows of the figure.
    let mut figure: Vec<(String, Vec<f32>)> = Vec::new();
    for (name, setting) in settings {
        let tau = f64::from(setting.temperature);
        let mut tallies: Vec<Tally> = measured.iter().map(|_| Tally::default()).collect();
        let mut floor = Tally::default();
        let mut unencryptable = 0;
        for (&c, (victim_idx, pool_idx)) in classes.iter().zip(&split) {
            pb.set_message(format!("{name}: class {c}, encrypting"));
            let (victims, victims_ct, lost_v) =
                encrypt_class(&flows, &key, c, setting, &data.subset(victim_idx), &device);
            let (pool, pool_ct, lost_p) =
                encrypt_class(&flows, &key, c, setting, &data.subset(pool_idx), &device);
            unencryptable += lost_v + lost_p;
            let case = ClassCase {
                pool,
                pool_ct,
                victims,
                victims_ct,
                unencryptable: lost_v + lost_p,
            };
            if c == classes[0] && figure.is_empty() {
                let shown = case.victims.len().min(FIGURE_IMAGES);
                figure.push((
                    "originals".into(),
                    (0..shown)
                        .flat_map(|i| case.victims.image(i).to_vec())
                        .collect(),
                ));
            }
            let own = &flows.per_class[c];
            // The key's rotation as a matrix, formed once per class (O(m³) for a Householder
            // one), only to score the attacker.
            let truth = HaarRotation::from_subkey(
                &key.class_subkey(Scheme::FlowRotation, c as u32),
                m,
                setting.rotation,
            )
            .entries()
            .into_owned();
            let true_decoder = if setting.cover_classes { pi[c] } else { c };
            // The attacker knows π is a derangement: class c's own flow is never the decoder.
            let candidates: Vec<usize> = if setting.cover_classes {
                (0..k).filter(|&j| j != c).collect()
            } else {
                vec![c]
            };
            let candidate_flows: Vec<Glow> = candidates
                .iter()
                .map(|&j| flows.per_class[j].clone())
                .collect();
            let zp = latents_of(own, pre, &case.pool, &device);
            // No pairs: the prior's mean decoded by the class's flow.
            let mean_image = prior_mean_images(own, pre, case.victims.len(), &device);
            let (p0, e0) = score(mean_image, &case.victims, pre.bins);
            floor.classes += 1;
            floor.decoder_found += usize::from(!setting.cover_classes);
            floor.psnrs.extend(p0);
            floor.exact += e0;
            pb.inc(1);
            let mut cache: HashMap<usize, (Vec<f32>, Vec<f32>)> = HashMap::new();
            for (t, &n) in measured.iter().enumerate() {
                pb.set_message(format!("{name}: class {c}, n = {n}"));
                let n = n.min(case.pool.len());
                let decoder = if candidates.len() == 1 {
                    candidates[0]
                } else {
                    let (best, _) = find_decoder(
                        &candidate_flows,
                        pre,
                        &zp[..n * m],
                        case.pool_ct.clone().narrow(0, 0, n),
                        tau,
                    );
                    candidates[best]
                };
                let (zc, zv) = cache.entry(decoder).or_insert_with(|| {
                    let g = &flows.per_class[decoder];
                    (
                        cipher_latents_of(g, pre, &case.pool_ct),
                        cipher_latents_of(g, pre, &case.victims_ct),
                    )
                });
                let fit = RecoveredRotation::procrustes_trimmed(&zp[..n * m], &zc[..n * m], m, tau)
                    .with_context(|| format!("fitting class {c}'s rotation to {n} pairs"))?;
                let energy = fit.captured_energy(zv);
                let decrypted = decrypt_latents(&fit, own, pre, zv, &device);
                if c == classes[0] {
                    let shown = case.victims.len().min(FIGURE_IMAGES);
                    figure.push((
                        format!("{name}, n = {n}"),
                        decrypted
                            .clone()
                            .narrow(0, 0, shown)
                            .into_data()
                            .iter::<f32>()
                            .collect(),
                    ));
                }
                let (psnrs, exact) = score(decrypted, &case.victims, pre.bins);
                let tally = &mut tallies[t];
                tally.classes += 1;
                tally.decoder_found += usize::from(decoder == true_decoder);
                tally.rank += fit.rank() as f64;
                tally.energy += energy.iter().sum::<f64>() / energy.len().max(1) as f64;
                if let Some(a) = fit.rotation() {
                    let diffs = a.iter().zip(&truth).map(|(x, y)| (x - y).abs());
                    let err = diffs.clone().fold(0.0, f64::max);
                    // ‖A‖_F = √m for a rotation.
                    let rel = diffs.map(|d| d * d).sum::<f64>().sqrt() / (m as f64).sqrt();
                    tally.max_error = Some(tally.max_error.map_or(err, |e: f64| e.max(err)));
                    tally.relative_error =
                        Some(tally.relative_error.map_or(rel, |e: f64| e.max(rel)));
                }
                tally.psnrs.extend(psnrs);
                tally.exact += exact;
                pb.inc(1);
            }
            if case.unencryptable > 0 {
                eprintln!(
                    "{name}: class {c}: {} images could not be encrypted and were left out",
                    case.unencryptable
                );
            }
        }
        curves.push(SettingCurve {
            name: name.to_owned(),
            temperature: setting.temperature,
            cover_classes: setting.cover_classes,
            unencryptable,
            no_pairs: floor.point(0),
            curve: measured
                .iter()
                .zip(&tallies)
                .map(|(&n, t)| t.point(n))
                .collect(),
        });
    }
    pb.finish();
    let results = KnownPlaintextResults {
        command: command_line(&args),
        data: args.common.data.to_string(),
        flows: flows_name,
        shape: data.shape.to_string(),
        dim: m,
        classes,
        victims_per_class: split.iter().map(|(v, _)| v.len()).min().unwrap_or(0),
        quick,
        settings: curves,
        not_measured,
        seconds: started.elapsed().as_secs_f64(),
    };
    let rows: Vec<ImageDataset> = figure
        .into_iter()
        .map(|(_, pixels)| {
            let count = pixels.len() / m;
            ImageDataset::new(pixels, vec![0; count], data.shape, vec!["victim".into()])
        })
        .collect::<Result<_, _>>()?;
    let row_refs: Vec<&ImageDataset> = rows.iter().collect();
    let picks: Vec<usize> = (0..rows.first().map_or(0, ImageDataset::len)).collect();
    image_grid(&args.common.out.join("figure.png"), &row_refs, &picks)?;
    let report = report(&results);
    write_outputs(&args.common.out, &results, report, started)
}

/// Victims shown per row of the figure.
const FIGURE_IMAGES: usize = 8;

fn command_line(args: &KnownPlaintextArgs) -> String {
    let mut line = args.common.command_line("known-plaintext");
    if let Some(dir) = &args.flows {
        line += &format!(" --flows {}", dir.display());
    }
    if let Some(c) = args.classes {
        line += &format!(" --classes {c}");
    }
    if args.victims != 32 {
        line += &format!(" --victims {}", args.victims);
    }
    if let Some(p) = args.per_class {
        line += &format!(" --per-class {p}");
    }
    if let Some(p) = args.max_pairs {
        line += &format!(" --max-pairs {p}");
    }
    line
}
