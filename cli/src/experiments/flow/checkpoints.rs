//! Checkpoints of the flows `veil experiment flow` trains, so that a run killed or stopped
//! (Ctrl-C, a crash, a lost machine) during its long flow training resumes where it was: flows
//! already trained are loaded, and the flow in training continues from its last finished epoch.
//! A resumed run gives the same figures as an uninterrupted one (flow training takes the same
//! steps after a resume, see `veil::flow::train`).
//!
//! Checkpoints live in `<out>/checkpoints`, under a fingerprint of everything that decides the
//! flows (the data, the split, Glow's configuration, the training options): a folder made by
//! another run is refused, never mixed in.

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

    fn paths(&self, label: &str) -> (PathBuf, PathBuf, PathBuf) {
        let slug = crate::experiments::slug(label);
        let h = hex::encode(&Sha256::digest(label.as_bytes())[..4]);
        let stem = format!("{slug}-{h}");
        (
            self.dir.join(format!("{stem}.bpk")),
            self.dir.join(format!("{stem}.optim")),
            self.dir.join(format!("{stem}.json")),
        )
    }

    /// What is saved for the flow `label`, loaded onto `device` (an autodiff device, to go on
    /// training).
    pub fn load(&self, label: &str, glow: &GlowConfig, device: &Device) -> Result<Saved> {
        let (weights, optim, state) = self.paths(label);
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
    pub fn save(&self, label: &str, glow: &Glow, c: &FlowCheckpoint, done: bool) -> Result<()> {
        let (weights, optim, state) = self.paths(label);
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
