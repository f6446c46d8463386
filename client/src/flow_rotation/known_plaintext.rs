//! The attacker's side of flow rotation, run in the page against ciphertexts the page made:
//! known-plaintext key recovery ([`veil::attacks::known_plaintext`]). It uses what an attacker
//! has — the public flows, their manifest (τ, cover classes), `n` (image, ciphertext) pairs of
//! one class and other ciphertexts of that class — and never the key, which no function here
//! takes. The page shows the victims' decryptions appearing as `n` grows.

use veil::attacks::known_plaintext::{
    GRAM_PAIRS, RecoveredRotation, choose_decoder, decrypt_latents, plaintext_latent_rows,
};
use veil::burn::tensor::Device;
use veil::data::images_tensor;
use veil::flow::glow::{Glow, Preprocess};
use veil::schemes::flow_rotation::public_latents;

use super::flows::Flows;
use crate::device::check_batch;
use crate::error::ClientError;

/// What the attacker knows about the flows that encrypted one class (all of it public).
pub struct PublicFlows {
    /// The flow whose latents the rotation acts on: the class's own (route a) or the
    /// class-agnostic one (route b).
    own: Glow,
    /// The flows that may have decoded the rotated latents, with their names: the class's own
    /// without cover classes, every other class's with them (the cover permutation is a
    /// derangement, so never the class's own).
    candidates: Vec<(String, Glow)>,
    pre: Preprocess,
    /// τ, from the manifest.
    scale: f64,
}

impl Flows {
    /// The public flows an attacker uses against class `class`'s ciphertexts (`None`: route b's
    /// class-agnostic flow).
    pub fn public_view(&self, class: Option<u32>) -> Result<PublicFlows, ClientError> {
        let manifest = self.manifest();
        let set = self.set();
        let pre = manifest.preprocess;
        let scale = f64::from(manifest.encryption.temperature);
        match class {
            None => {
                let own = set.agnostic.clone().ok_or_else(|| {
                    ClientError::BadInput(
                        "these flows have no class-agnostic flow (route b) to attack".into(),
                    )
                })?;
                Ok(PublicFlows {
                    candidates: vec![("the class-agnostic flow".into(), own.clone())],
                    own,
                    pre,
                    scale,
                })
            }
            Some(c) => {
                let c = c as usize;
                let own = set.per_class.get(c).cloned().ok_or_else(|| {
                    ClientError::BadInput(format!(
                        "class {c} is not one of the flows' {} classes",
                        set.per_class.len()
                    ))
                })?;
                let candidates = (0..set.per_class.len())
                    .filter(|&j| (j == c) != manifest.encryption.cover_classes)
                    .map(|j| (manifest.classes[j].clone(), set.per_class[j].clone()))
                    .collect();
                Ok(PublicFlows {
                    own,
                    candidates,
                    pre,
                    scale,
                })
            }
        }
    }
}

/// One point of the attack: the victims decrypted with a rotation fitted to `known_pairs` pairs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct KnownPlaintextStep {
    /// Pairs the fit used.
    pub known_pairs: usize,
    /// The flow the attacker found had decoded the ciphertexts (with cover classes, one of the
    /// other classes').
    pub decoder: String,
    /// Dimensions of the rotation the pairs determine (`min(n, m)` in general position).
    pub rank: usize,
    /// The latent dimension `m`.
    pub dim: usize,
    /// Mean share of a victim's latent energy inside the recovered span (1: it decrypts exactly).
    pub captured_energy: f64,
    /// The victims' decryptions, `[V, C, H, W]` values in [0, 1] on the data's levels.
    pub decrypted: Vec<f32>,
}

/// Fits the rotation of one class to the known pairs (`plain` images and their `cipher`
/// ciphertexts, `[n, C, H, W]`) and decrypts `victims` (other ciphertexts of the class) with it.
/// `read` reads a lazy tensor back (asynchronously on WebGPU).
pub async fn recover(
    flows: PublicFlows,
    plain: &[f32],
    cipher: &[f32],
    victims: &[f32],
    shape: veil::data::ImageShape,
    device: &Device,
    backend: &'static str,
) -> Result<KnownPlaintextStep, ClientError> {
    let n = check_batch(plain, shape)?;
    if check_batch(cipher, shape)? != n {
        return Err(ClientError::BadInput(format!(
            "{n} known images but {} ciphertexts: the pairs do not match",
            cipher.len() / shape.len()
        )));
    }
    check_batch(victims, shape)?;
    let PublicFlows {
        own,
        candidates,
        pre,
        scale,
    } = flows;
    let read = |t| crate::device::read_vec::<2>(t, backend);
    let zp = read(plaintext_latent_rows(
        &own,
        pre,
        images_tensor(plain, shape, device),
    ))
    .await?;
    let dim = zp.len() / n;
    let known_ct = images_tensor(cipher, shape, device);
    // With one candidate there is nothing to choose; otherwise compare each candidate's Gram
    // matrix of the first pairs with the plaintext latents' (a rotation keeps inner products).
    let (best, zc) = if candidates.len() == 1 {
        (
            0,
            read(public_latents(&candidates[0].1, pre, known_ct)).await?,
        )
    } else {
        let k = n.min(GRAM_PAIRS);
        let head = known_ct.clone().narrow(0, 0, k);
        let mut latents = Vec::with_capacity(candidates.len());
        for (_, g) in &candidates {
            latents.push(read(public_latents(g, pre, head.clone())).await?);
        }
        let (best, _) = choose_decoder(&zp[..k * dim], &latents, dim, scale);
        let zc = if k == n {
            latents.swap_remove(best)
        } else {
            read(public_latents(&candidates[best].1, pre, known_ct)).await?
        };
        (best, zc)
    };
    let (decoder_name, decoder) = &candidates[best];
    let fit = RecoveredRotation::procrustes_trimmed(&zp, &zc, dim, scale).map_err(|e| {
        ClientError::BadInput(format!(
            "the pairs cannot be fitted with {decoder_name}'s flow: {e}"
        ))
    })?;
    let zv = read(public_latents(
        decoder,
        pre,
        images_tensor(victims, shape, device),
    ))
    .await?;
    if let Some(bad) = zv.iter().position(|v| !v.is_finite()) {
        return Err(ClientError::BadInput(format!(
            "victim {} is not a ciphertext of these flows: {decoder_name}'s flow overflows on it",
            bad / dim
        )));
    }
    let energy = fit.captured_energy(&zv);
    let decrypted =
        crate::device::read_vec(decrypt_latents(&fit, &own, pre, &zv, device), backend).await?;
    Ok(KnownPlaintextStep {
        known_pairs: n,
        decoder: decoder_name.clone(),
        rank: fit.rank(),
        dim,
        captured_energy: energy.iter().sum::<f64>() / energy.len().max(1) as f64,
        decrypted,
    })
}
