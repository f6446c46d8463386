//! Attacks on flow rotation's key, as experiments on any data source with flows trained on it:
//! `veil experiment known-plaintext` ([`known_plaintext`]) and `veil experiment ciphertext-only`
//! ([`ciphertext_only`]). Both encrypt each attacked class with its own key-derived rotation
//! (route a) under the paper's Algorithm 1 and under Veil's settings, and measure how well the
//! attacker decrypts ciphertexts it never saw in the clear.

pub mod ciphertext_only;
pub mod known_plaintext;

use veil::attacks::known_plaintext::{ciphertext_latents, plaintext_latents};
use veil::attacks::leakage::metrics::psnr;
use veil::burn::prelude::*;
use veil::crypto::keys::MasterKey;
use veil::data::ImageDataset;
use veil::flow::glow::{Glow, Preprocess};
use veil::schemes::flow_rotation::{EncryptionSettings, FlowEncryptor, FlowSet};

use super::flow::encrypt_all;

/// The settings both attacks run against: the paper's Algorithm 1 and Veil's.
pub const SETTINGS: [(&str, EncryptionSettings); 2] = [
    ("algorithm-1", EncryptionSettings::ALGORITHM_1),
    ("veil", EncryptionSettings::VEIL),
];

/// The owner's key of an attack experiment, from its seed (the run must be reproducible) and a
/// tag per experiment.
pub fn experiment_key(seed: u64, tag: u8) -> MasterKey {
    let mut kb = [0u8; 32];
    kb[..8].copy_from_slice(&seed.to_le_bytes());
    kb[8] = tag;
    MasterKey::from_bytes(kb)
}

/// What an attacker who knows nothing of the key decodes: the prior's mean (latent 0) through
/// class flow `glow`, `count` times.
pub fn prior_mean_images(glow: &Glow, pre: Preprocess, count: usize, device: &Device) -> Tensor<4> {
    let dim: usize = glow.latent_shapes().iter().map(|s| s.len()).sum();
    let flat = Tensor::<2>::zeros([count, dim], device);
    pre.quantise(pre.from_logit(glow.decode_eps(&glow.unflatten_latents(flat))))
}

/// Encryption batch size.
pub const BATCH: usize = 128;

/// Encrypts `data` with class `class`'s encryptor under `settings`, keeping the images that
/// round-trip (the owner never shares the others): the kept originals, their ciphertexts
/// (`[B, C, H, W]` on `device`), and how many were lost ([`crate::experiments::flow::encrypt_all`]
/// with one encryptor).
pub fn encrypt_class(
    flows: &FlowSet,
    key: &MasterKey,
    class: usize,
    settings: EncryptionSettings,
    data: &ImageDataset,
    device: &Device,
) -> (ImageDataset, Tensor<4>, usize) {
    let enc = class_encryptor(flows, key, class, settings, device);
    let out = encrypt_all(data, |_| enc.clone(), Some(class as u32));
    let ct = out.data.images_tensor(0..out.data.len(), device);
    (data.subset(&out.kept), ct, out.failures.len())
}

fn class_encryptor(
    flows: &FlowSet,
    key: &MasterKey,
    class: usize,
    settings: EncryptionSettings,
    device: &Device,
) -> FlowEncryptor {
    veil::schemes::flow_rotation::class_encryptor(
        &flows.per_class,
        class,
        flows.manifest.preprocess,
        key,
        settings,
        device,
    )
}

/// Plaintext latents of a whole set under `glow`, in batches.
pub fn latents_of(glow: &Glow, pre: Preprocess, data: &ImageDataset, device: &Device) -> Vec<f32> {
    (0..data.len())
        .step_by(BATCH)
        .flat_map(|s| {
            let e = (s + BATCH).min(data.len());
            plaintext_latents(glow, pre, data.images_tensor(s..e, device))
        })
        .collect()
}

/// Ciphertext latents of `c` under `glow`, in batches.
pub fn cipher_latents_of(glow: &Glow, pre: Preprocess, c: &Tensor<4>) -> Vec<f32> {
    let n = c.dims()[0];
    (0..n)
        .step_by(BATCH)
        .flat_map(|s| {
            let e = (s + BATCH).min(n);
            ciphertext_latents(glow, pre, c.clone().narrow(0, s, e - s))
        })
        .collect()
}

/// Per-victim PSNR and exactness of `decrypted` (`[B, C, H, W]`) against `victims` as
/// encryption read them (quantised to the data's levels: a folder's 8-bit pixels are already).
pub fn score(decrypted: Tensor<4>, victims: &ImageDataset, levels: usize) -> (Vec<f64>, usize) {
    let got: Vec<f32> = decrypted.into_data().iter::<f32>().collect();
    let per = victims.shape.len();
    let top = (levels - 1) as f32;
    let half_level = 0.5 / top;
    let mut psnrs = Vec::with_capacity(victims.len());
    let mut exact = 0;
    for (i, d) in got.chunks(per).enumerate() {
        let o: Vec<f32> = victims
            .image(i)
            .iter()
            .map(|v| (v * top).round_ties_even() / top)
            .collect();
        psnrs.push(psnr(d, &o));
        if d.iter().zip(&o).all(|(a, b)| (a - b).abs() < half_level) {
            exact += 1;
        }
    }
    (psnrs, exact)
}

/// A labelled set encrypted class by class (route a) under `settings`: the ciphertexts as a
/// dataset with the same labels, the originals that could be encrypted, and how many could not.
pub fn encrypt_dataset(
    flows: &FlowSet,
    key: &MasterKey,
    settings: EncryptionSettings,
    data: &ImageDataset,
    device: &Device,
) -> (ImageDataset, ImageDataset, usize) {
    let out = encrypt_all(
        data,
        |c| class_encryptor(flows, key, c as usize, settings, device),
        None,
    );
    // Class by class, as the owner encrypts them (one key and flow per class).
    let mut order: Vec<usize> = (0..out.kept.len()).collect();
    order.sort_by_key(|&i| out.data.labels[i]);
    let kept: Vec<usize> = order.iter().map(|&i| out.kept[i]).collect();
    (
        out.data.subset(&order),
        data.subset(&kept),
        out.failures.len(),
    )
}
