//! `veil experiment ciphertext-only`: the attacker of Theorem 1 — public flows, other images of
//! the domain, ciphertexts only — recovers the rotation by moment matching
//! ([`veil::attacks::ciphertext_only`]), measured against the flows' Gaussianity, for one or more
//! families of flows (an early checkpoint and a trained flow, say).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use veil::attacks::ciphertext_only::{decoder_by_norms, moment_matching, relative_error};
use veil::attacks::known_plaintext::{RecoveredRotation, decrypt_latents};
use veil::burn::prelude::*;
use veil::crypto::haar::HaarRotation;
use veil::crypto::keys::Scheme;
use veil::flow::gaussianity::probe;
use veil::schemes::flow_rotation::{FlowSet, cover_permutation};

use super::super::{bar, data_and_flows, write_outputs};
use super::{
    SETTINGS, cipher_latents_of, encrypt_class, experiment_key, latents_of, prior_mean_images,
    score,
};
use crate::datasets::{CommonArgs, SourceDefaults};

mod results;
pub use results::*;

/// Options of `veil experiment ciphertext-only`.
#[derive(clap::Args, Debug)]
pub struct CiphertextOnlyArgs {
    /// Data, output, size and seed. The digits use the shipped digits flows unless `--flows` is
    /// given; any other source needs `--flows` (image folders and the synthetic set default to
    /// 1×28×28).
    #[command(flatten)]
    pub common: CommonArgs,
    /// A folder of flows written by `veil flow train` on the same source; repeat it to compare
    /// flow qualities (an early checkpoint and a trained family).
    #[arg(long, value_name = "DIR")]
    pub flows: Vec<PathBuf>,
    /// How many classes to attack, from class 0 (default: all; 2 with --quick).
    #[arg(long)]
    pub classes: Option<usize>,
    /// The synthetic set: images per class, split evenly between the attacker's own images and
    /// the owner's encrypted ones (default 4·m, at most 4,000).
    #[arg(long)]
    pub per_class: Option<usize>,
}

/// Ciphertexts decrypted per class to measure PSNR.
const SCORED: usize = 64;

pub fn run(args: CiphertextOnlyArgs) -> Result<()> {
    let started = Instant::now();
    let quick = args.common.quick;
    let defaults = |per_class| SourceDefaults {
        size: 28,
        channels: 1,
        classes: 10,
        per_class,
        seed: args.common.seed,
    };
    let m_wanted = args.common.shape(defaults(0)).len();
    let per_class = args.per_class.unwrap_or((4 * m_wanted).min(4000));
    let loaded = args.common.load(defaults(per_class))?;
    let data = loaded.data;
    let families: Vec<Option<PathBuf>> = if args.flows.is_empty() {
        vec![None]
    } else {
        args.flows.iter().cloned().map(Some).collect()
    };
    let mut sets: Vec<(FlowSet, String)> = Vec::new();
    for dir in &families {
        let (_, flows, name) = data_and_flows(&args.common.data, data.clone(), dir.as_deref())?;
        sets.push((flows, name));
    }
    let m = data.shape.len();
    let k = data.num_classes();
    let classes: Vec<usize> =
        (0..args.classes.unwrap_or(if quick { 2 } else { k }).min(k)).collect();
    std::fs::create_dir_all(&args.common.out)
        .with_context(|| format!("creating {}", args.common.out.display()))?;
    let device = Device::flex();
    let key = experiment_key(args.common.seed, 0x22);
    let pi = cover_permutation(&key, k);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.common.seed);
    // Per class: the attacker's own images, then the owner's (encrypted).
    let split: Vec<(Vec<usize>, Vec<usize>)> = classes
        .iter()
        .map(|&c| {
            let mut idx = data.class_indices(c as u32);
            idx.shuffle(&mut rng);
            let half = idx.len() / 2;
            (idx[..half].to_vec(), idx[half..].to_vec())
        })
        .collect();
    let fewest = split.iter().map(|(a, _)| a.len()).min().unwrap_or(0);
    if fewest < 2 {
        bail!("the attacked classes need at least 4 images each");
    }
    eprintln!(
        "{} ({m} dimensions), classes {classes:?}: {fewest} of the attacker's images and as many ciphertexts per class",
        data.shape
    );
    let pb = bar(
        (sets.len() * SETTINGS.len() * classes.len()) as u64,
        "ciphertext-only",
    );
    let mut qualities = Vec::new();
    for (flows, name) in &sets {
        let pre = flows.manifest.preprocess;
        let (mut w1, mut floor, mut bpd, mut bpd_n) = (0.0, 0.0, 0.0, 0usize);
        let mut per_setting = Vec::new();
        // Per class, what the attacker holds whatever the owner's settings: its own images'
        // latents under the class's public flow, and their mean image (what knowing the domain
        // gives without any ciphertext).
        let mut own_data = Vec::with_capacity(classes.len());
        for (&c, (own_idx, _)) in classes.iter().zip(&split) {
            let attacker = data.subset(own_idx);
            let zd = latents_of(&flows.per_class[c], pre, &attacker, &device);
            let report = probe(&zd, m, 64, args.common.seed);
            w1 += report.sliced_wasserstein;
            floor += report.sliced_wasserstein_gaussian_floor;
            if let Some(b) = flows
                .manifest
                .flows
                .iter()
                .find(|f| f.name == format!("class-{c}"))
                .and_then(|f| f.held_out_bits_per_dim)
            {
                bpd += b;
                bpd_n += 1;
            }
            let mut avg = vec![0.0f32; m];
            for i in 0..attacker.len() {
                for (a, v) in avg.iter_mut().zip(attacker.image(i)) {
                    *a += v / attacker.len() as f32;
                }
            }
            own_data.push((zd, avg));
        }
        for (sname, setting) in SETTINGS {
            let tau = f64::from(setting.temperature);
            let mut acc = [0.0f64; 6];
            let mut found = 0usize;
            let mut lost = 0usize;
            let mut directions = 0.0;
            let mut domain = 0.0;
            for ((&c, (_, secret_idx)), (zd, avg)) in classes.iter().zip(&split).zip(&own_data) {
                pb.set_message(format!("{name}: {sname}, class {c}"));
                let own = &flows.per_class[c];
                let (secret, ct, unencryptable) =
                    encrypt_class(flows, &key, c, setting, &data.subset(secret_idx), &device);
                lost += unencryptable;
                if secret.is_empty() {
                    bail!("{name}: no image of class {c} could be encrypted");
                }
                // The decoding flow: the class's own, or with cover classes the candidate whose
                // ciphertext latents have the data's norms.
                let candidates: Vec<usize> = if setting.cover_classes {
                    (0..k).filter(|&j| j != c).collect()
                } else {
                    vec![c]
                };
                let latents: Vec<Vec<f32>> = candidates
                    .iter()
                    .map(|&j| cipher_latents_of(&flows.per_class[j], pre, &ct))
                    .collect();
                let (best, _) = decoder_by_norms(zd, &latents, m, tau);
                let decoder = candidates[best];
                let true_decoder = if setting.cover_classes { pi[c] } else { c };
                found += usize::from(decoder == true_decoder);
                let zc = &latents[best];
                let got = moment_matching(zd, zc, m, tau)
                    .with_context(|| format!("{name}: class {c}: moment matching"))?;
                let truth = HaarRotation::from_subkey(
                    &key.class_subkey(Scheme::FlowRotation, c as u32),
                    m,
                    setting.rotation,
                );
                let truth = truth.entries();
                let guess = random_rotation(m, args.common.seed ^ c as u64, tau);
                let scored = secret.len().min(SCORED);
                let originals = secret.subset(&(0..scored).collect::<Vec<_>>());
                let zc_scored = &zc[..scored * m];
                let (p_attack, _) = score(
                    decrypt_latents(&got.confident, own, pre, zc_scored, &device),
                    &originals,
                    pre.bins,
                );
                let (p_random, _) = score(
                    decrypt_latents(&guess, own, pre, zc_scored, &device),
                    &originals,
                    pre.bins,
                );
                let (p_mean, _) = score(
                    prior_mean_images(own, pre, scored, &device),
                    &originals,
                    pre.bins,
                );
                let avg_images =
                    veil::data::images_tensor(&avg.repeat(scored), data.shape, &device);
                let (p_domain, _) = score(avg_images, &originals, pre.bins);
                let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
                domain += mean(&p_domain);
                acc[0] += relative_error(&got.rotation.rotation().unwrap_or_default(), &truth);
                directions += got.confident.rank() as f64;
                acc[1] += relative_error(&guess.rotation().unwrap_or_default(), &truth);
                acc[2] += mean(&p_attack);
                acc[3] += mean(&p_mean);
                acc[4] += mean(&p_random);
                acc[5] += 1.0;
                pb.inc(1);
            }
            let n = acc[5].max(1.0);
            per_setting.push(SettingResult {
                name: sname.to_owned(),
                decoder_found: found as f64 / n,
                relative_error: acc[0] / n,
                confident_directions: directions / n,
                random_relative_error: acc[1] / n,
                psnr: acc[2] / n,
                psnr_prior_mean: acc[3] / n,
                psnr_random_rotation: acc[4] / n,
                psnr_domain_mean: domain / n,
                unencryptable: lost,
            });
        }
        let n = classes.len().max(1) as f64;
        qualities.push(FlowQuality {
            flows: name.clone(),
            bits_per_dim: (bpd_n > 0).then(|| bpd / bpd_n as f64),
            sliced_w1: w1 / n,
            sliced_w1_floor: floor / n,
            settings: per_setting,
        });
    }
    pb.finish();
    let results = CiphertextOnlyResults {
        command: command_line(&args),
        data: args.common.data.to_string(),
        shape: data.shape.to_string(),
        dim: m,
        classes,
        data_per_class: fewest,
        ciphertexts_per_class: split.iter().map(|(_, s)| s.len()).min().unwrap_or(0),
        quick,
        flows: qualities,
        seconds: started.elapsed().as_secs_f64(),
    };
    let report = report(&results);
    write_outputs(&args.common.out, &results, report, started)
}

/// A Haar rotation unrelated to the key: the attacker's blind guess.
fn random_rotation(m: usize, seed: u64, tau: f64) -> RecoveredRotation {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let a = HaarRotation::sample_householder(&mut rng, m);
    RecoveredRotation::from_matrix(&a.entries(), m, tau)
}

fn command_line(args: &CiphertextOnlyArgs) -> String {
    let mut line = args.common.command_line("ciphertext-only");
    for dir in &args.flows {
        line += &format!(" --flows {}", dir.display());
    }
    if let Some(c) = args.classes {
        line += &format!(" --classes {c}");
    }
    if let Some(p) = args.per_class {
        line += &format!(" --per-class {p}");
    }
    line
}
