//! Checkpoints of the flows `veil experiment flow` trains, so that a run killed or stopped
//! (Ctrl-C, a crash, a lost machine) during its long flow training resumes where it was: flows
//! already trained are loaded, and the flow in training continues from its last finished epoch.
//! A resumed run gives the same figures as an uninterrupted one (flow training takes the same
//! steps after a resume, see `veil::flow::train`).
//!
//! Checkpoints live in `<out>/checkpoints`, under a fingerprint of everything that decides the
//! flows (the data, the split, Glow's configuration, the training options): a folder made by
//! another run is refused, never mixed in. Each flow's files are named by its label and a hash of
//! what it is trained on and from ([`FlowInputs`]): a flow of the same name trained on other
//! images (Table 2's flows on the ciphertexts of another `--temperature`) or from another start
//! is trained anew, never read back stale.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use sha2::{Digest, Sha256};
use veil::burn;
use veil::data::ImageDataset;
use veil::flow::glow::{Glow, GlowConfig, Preprocess};
use veil::flow::train::{FlowCheckpoint, FlowTrainOptions};

/// The checkpoint folder of one run.
pub struct FlowCheckpoints {
    dir: PathBuf,
}

/// A digest of what one flow is trained on and from: its images and labels, its training
/// options, and the weights it starts from (none: a data-dependent initialisation).
pub struct FlowInputs([u8; 32]);

impl FlowInputs {
    pub fn of(data: &ImageDataset, options: FlowTrainOptions, init: Option<&Glow>) -> Result<Self> {
        let mut h = Sha256::new();
        h.update(format!("{options:?}|{}", data.shape));
        for p in &data.images {
            h.update(p.to_le_bytes());
        }
        for l in &data.labels {
            h.update(l.to_le_bytes());
        }
        if let Some(g) = init {
            h.update(g.to_bytes()?);
        }
        Ok(Self(h.finalize().into()))
    }
}

/// What a flow's checkpoint holds.
pub enum Saved {
    /// Trained to the end: the flow and its last training bits/dim.
    Done(Glow, f32),
    /// Stopped after an epoch: the flow and where training stood.
    Partial(Glow, FlowCheckpoint),
    /// Nothing yet.
    None,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct State {
    epoch: usize,
    global_step: usize,
    bits_per_dim: f32,
    done: bool,
}

impl FlowCheckpoints {
    /// Opens (or creates) `<out>/checkpoints` for a run whose flows are decided by `train`,
    /// `glow`, `pre` and `options`; refuses a folder that belongs to another run.
    pub fn open(
        out: &Path,
        train: &ImageDataset,
        glow: &GlowConfig,
        pre: Preprocess,
        options: FlowTrainOptions,
    ) -> Result<Self> {
        let dir = out.join("checkpoints");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut h = Sha256::new();
        // The preprocessing is written as it was before `levels` became `bins`, so that the
        // checkpoints of a run begun then are still found.
        let pre = format!(
            "Preprocess {{ levels: {}, alpha: {:?} }}",
            pre.bins, pre.alpha
        );
        h.update(format!("{glow:?}|{pre}|{options:?}|{}", train.shape));
        for p in &train.images {
            h.update(p.to_le_bytes());
        }
        for l in &train.labels {
            h.update(l.to_le_bytes());
        }
        let fingerprint = hex::encode(h.finalize());
        let run = dir.join("run.json");
        match std::fs::read_to_string(&run) {
            Ok(text) => {
                let kept: serde_json::Value = serde_json::from_str(&text)
                    .with_context(|| format!("{} is not a checkpoint record", run.display()))?;
                if kept["fingerprint"] != fingerprint.as_str() {
                    bail!(
                        "{} holds the flows of another run (other data, split or flow options): choose another --out, or delete that folder to start again",
                        dir.display()
                    );
                }
                eprintln!(
                    "resuming: flows trained earlier are read from {}",
                    dir.display()
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let record = serde_json::json!({ "fingerprint": fingerprint });
                veil_server::fsutil::write_atomic(&run, record.to_string().as_bytes())
                    .with_context(|| format!("writing {}", run.display()))?;
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", run.display())),
        }
        Ok(Self { dir })
    }

    fn paths(&self, label: &str, inputs: &FlowInputs) -> (PathBuf, PathBuf, PathBuf) {
        let slug = crate::experiments::slug(label);
        let mut h = Sha256::new();
        h.update(label.as_bytes());
        h.update(inputs.0);
        let h = hex::encode(&h.finalize()[..4]);
        let stem = format!("{slug}-{h}");
        (
            self.dir.join(format!("{stem}.bpk")),
            self.dir.join(format!("{stem}.optim")),
            self.dir.join(format!("{stem}.json")),
        )
    }

    /// What is saved for the flow `label`, loaded onto `device` (an autodiff device, to go on
    /// training).
    pub fn load(
        &self,
        label: &str,
        inputs: &FlowInputs,
        glow: &GlowConfig,
        device: &Device,
    ) -> Result<Saved> {
        let (weights, optim, state) = self.paths(label, inputs);
        let Ok(text) = std::fs::read_to_string(&state) else {
            return Ok(Saved::None);
        };
        let st: State = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a flow checkpoint", state.display()))?;
        let bytes =
            std::fs::read(&weights).with_context(|| format!("reading {}", weights.display()))?;
        let flow = glow
            .load(&bytes, device)
            .with_context(|| format!("loading the checkpoint {}", weights.display()))?;
        if st.done {
            return Ok(Saved::Done(flow, st.bits_per_dim));
        }
        let optimizer =
            std::fs::read(&optim).with_context(|| format!("reading {}", optim.display()))?;
        Ok(Saved::Partial(
            flow,
            FlowCheckpoint {
                epoch: st.epoch,
                global_step: st.global_step,
                optimizer,
                bits_per_dim: st.bits_per_dim,
            },
        ))
    }

    /// Saves the flow `label` after an epoch (`done`: after its last one).
    pub fn save(
        &self,
        label: &str,
        inputs: &FlowInputs,
        glow: &Glow,
        c: &FlowCheckpoint,
        done: bool,
    ) -> Result<()> {
        let (weights, optim, state) = self.paths(label, inputs);
        let write = |p: &Path, b: &[u8]| {
            veil_server::fsutil::write_atomic(p, b)
                .with_context(|| format!("writing {}", p.display()))
        };
        write(&weights, &glow.to_bytes()?)?;
        write(&optim, &c.optimizer)?;
        let st = State {
            epoch: c.epoch,
            global_step: c.global_step,
            bits_per_dim: c.bits_per_dim,
            done,
        };
        // The state goes last: it names a complete checkpoint.
        write(&state, &serde_json::to_vec(&st)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil::data::{ImageShape, SyntheticConfig, synthetic};

    /// A flow saved under one label is read back only for the same images, options and start:
    /// Table 2's flows on the ciphertexts of another `--temperature` train anew.
    #[test]
    fn a_checkpoint_is_found_only_for_the_same_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let shape = ImageShape::new(1, 8, 8);
        let data = |seed| {
            synthetic(SyntheticConfig {
                classes: 2,
                per_class: 4,
                shape,
                noise: 0.05,
                seed,
            })
            .unwrap()
        };
        let (a, b) = (data(1), data(2));
        let glow = GlowConfig::for_shape(shape).with_hidden(4).with_steps(1);
        let pre = Preprocess {
            bins: 256,
            alpha: 0.05,
        };
        let options = FlowTrainOptions {
            epochs: 1,
            batch_size: 4,
            learning_rate: 1e-3,
            warmup_steps: 1,
            max_grad_norm: 50.0,
            seed: 1,
        };
        let checkpoints = FlowCheckpoints::open(dir.path(), &a, &glow, pre, options).unwrap();
        let device = Device::flex();
        let flow = glow.init(&device);
        let state = FlowCheckpoint {
            epoch: 1,
            global_step: 2,
            bits_per_dim: 5.0,
            optimizer: Vec::new(),
        };
        let on_a = FlowInputs::of(&a, options, None).unwrap();
        checkpoints
            .save("flow on ciphertexts (a)", &on_a, &flow, &state, true)
            .unwrap();
        let found = |inputs: &FlowInputs| {
            matches!(
                checkpoints
                    .load("flow on ciphertexts (a)", inputs, &glow, &device)
                    .unwrap(),
                Saved::Done(_, bpd) if bpd == 5.0
            )
        };
        assert!(found(&FlowInputs::of(&a, options, None).unwrap()));
        assert!(!found(&FlowInputs::of(&b, options, None).unwrap()));
        let halved = FlowTrainOptions {
            learning_rate: 5e-4,
            ..options
        };
        assert!(!found(&FlowInputs::of(&a, halved, None).unwrap()));
        assert!(!found(&FlowInputs::of(&a, options, Some(&flow)).unwrap()));
    }
}
