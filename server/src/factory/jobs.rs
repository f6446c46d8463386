//! Training jobs: the worker loop, checkpoints, and what happens on cancel, error and shutdown.
//!
//! A job's checkpoint is one file (`checkpoints/<job>.ckpt`, written atomically) holding the
//! training position, the model weights and Adam's state together, so a crash can never leave
//! the three from different steps. It is written after every epoch, and at the current step when
//! the server shuts down; a restarted server resumes from it, taking exactly the steps an
//! uninterrupted run would have taken (`veil::nn::train::train_classifier_resumable`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use veil::data::ImageDataset;
use veil::nn::train::{Control, TrainCheckpoint, TrainOptions, train_classifier_resumable};

use super::inference::{Arch, LoadedModel};
use super::store::{self, EpochRecord, JobRow, JobState, ModelRow};
use super::{Factory, JobEvent, LiveProgress};

const CHECKPOINT_MAGIC: &[u8; 10] = b"VEILCKPT1\n";

/// A job's checkpoint: position, weights, optimizer state.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// Where training stood (its `optimizer` field holds Adam's state).
    pub position: TrainCheckpoint,
    /// The model's weights (burnpack).
    pub weights: Vec<u8>,
    /// The epoch records so far.
    pub history: Vec<EpochRecord>,
}

impl Checkpoint {
    /// Serialises: magic, then three length-prefixed parts (JSON header, weights, optimizer).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let header = serde_json::to_vec(&(&self.position, &self.history))?;
        let mut out = CHECKPOINT_MAGIC.to_vec();
        for part in [&header, &self.weights, &self.position.optimizer] {
            out.extend((part.len() as u64).to_le_bytes());
            out.extend(part.iter());
        }
        Ok(out)
    }

    /// Parses [`Checkpoint::to_bytes`]' output, refusing anything truncated or foreign.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let rest = bytes
            .strip_prefix(CHECKPOINT_MAGIC.as_slice())
            .context("not a Veil checkpoint (bad magic)")?;
        let mut parts = Vec::new();
        let mut rest = rest;
        for name in ["header", "weights", "optimizer state"] {
            let (len, tail) = rest
                .split_first_chunk::<8>()
                .with_context(|| format!("the checkpoint is truncated before its {name}"))?;
            let len = usize::try_from(u64::from_le_bytes(*len))?;
            if tail.len() < len {
                bail!("the checkpoint is truncated inside its {name}");
            }
            parts.push(&tail[..len]);
            rest = &tail[len..];
        }
        if !rest.is_empty() {
            bail!("the checkpoint has {} trailing bytes", rest.len());
        }
        let (mut position, history): (TrainCheckpoint, Vec<EpochRecord>) =
            serde_json::from_slice(parts[0]).context("the checkpoint's header")?;
        position.optimizer = parts[2].to_vec();
        Ok(Self {
            position,
            weights: parts[1].to_vec(),
            history,
        })
    }
}

/// A worker thread: takes queued jobs until the factory shuts down.
pub(crate) fn worker(f: &Arc<Factory>) {
    loop {
        let id = {
            let mut q = f.lock_queue();
            loop {
                if f.is_shutting_down() {
                    return;
                }
                if let Some(id) = q.ids.pop_front() {
                    break id;
                }
                q = f.wake.wait(q).unwrap_or_else(|p| p.into_inner());
            }
        };
        let cancel = Arc::new(AtomicBool::new(false));
        f.cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), cancel.clone());
        let outcome = run(f, &id, &cancel);
        f.cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        f.live.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        let (state, error, model_id) = match outcome {
            Ok(Outcome::Done(model)) => (JobState::Succeeded, None, Some(model)),
            Ok(Outcome::Cancelled) => (JobState::Cancelled, None, None),
            Ok(Outcome::Interrupted) => (JobState::Queued, None, None),
            Ok(Outcome::Skipped) => continue,
            Err(e) => (JobState::Failed, Some(format!("{e:#}")), None),
        };
        match state {
            JobState::Succeeded => {}
            JobState::Failed => tracing::warn!(job = %id, error = ?error, "training job failed"),
            _ => tracing::info!(job = %id, state = state.as_str(), "training job stopped"),
        }
        if state != JobState::Succeeded
            && let Err(e) = f.store.set_job_state(&id, state, error.as_deref())
        {
            tracing::error!(job = %id, error = ?e, "cannot record the job's state");
        }
        if matches!(
            state,
            JobState::Cancelled | JobState::Failed | JobState::Succeeded
        ) {
            let _ = std::fs::remove_file(f.store.checkpoint_path(&id));
        }
        f.emit(JobEvent::State {
            job: id,
            state,
            error,
            model_id,
        });
    }
}

enum Outcome {
    Done(String),
    Cancelled,
    Interrupted,
    Skipped,
}

fn run(f: &Factory, id: &str, cancel: &AtomicBool) -> Result<Outcome> {
    let Some(job) = f.store.job(id)? else {
        return Ok(Outcome::Skipped);
    };
    if job.state != JobState::Queued {
        return Ok(Outcome::Skipped);
    }
    f.store.set_job_state(id, JobState::Running, None)?;
    f.emit(JobEvent::State {
        job: id.to_owned(),
        state: JobState::Running,
        error: None,
        model_id: None,
    });
    train(f, &job, cancel)
}

/// The training and validation parts of a job's dataset.
pub fn split(
    data: &ImageDataset,
    validation_split: f64,
    seed: u64,
) -> (ImageDataset, Option<ImageDataset>) {
    if validation_split <= 0.0 || data.len() < 10 {
        return (data.clone(), None);
    }
    let (train, val) = data.split(validation_split, seed);
    if val.is_empty() || train.is_empty() {
        (data.clone(), None)
    } else {
        (train, Some(val))
    }
}

fn train(f: &Factory, job: &JobRow, cancel: &AtomicBool) -> Result<Outcome> {
    let spec = &job.spec;
    let arch =
        Arch::parse(&spec.arch).with_context(|| format!("unknown architecture {:?}", spec.arch))?;
    let dataset = f
        .store
        .dataset(&spec.dataset)?
        .with_context(|| format!("the dataset {} was deleted", spec.dataset))?;
    let bytes = std::fs::read(f.store.dataset_path(&dataset.id))
        .with_context(|| format!("reading the dataset {}", dataset.id))?;
    let container = veil::data::container::decode(&bytes).context("the stored dataset")?;
    let data = container.dataset;
    let (train_part, val_part) = split(&data, spec.validation_split, spec.seed);
    let device = Device::flex().autodiff();
    let eval_device = Device::flex();
    let classes = data.num_classes();

    let ckpt_path = f.store.checkpoint_path(&job.id);
    let resume = if ckpt_path.exists() {
        let c = std::fs::read(&ckpt_path)
            .map_err(anyhow::Error::from)
            .and_then(|b| Checkpoint::from_bytes(&b))
            .context("the job's checkpoint cannot be read, so it cannot resume")?;
        Some(c)
    } else {
        None
    };
    device.seed(spec.seed);
    let model = match &resume {
        Some(c) => LoadedModel::load(
            arch,
            spec.arch_revision,
            data.shape,
            classes,
            &c.weights,
            &device,
        )
        .context("the checkpoint's weights")?,
        None => LoadedModel::init(arch, spec.arch_revision, data.shape, classes, &device),
    };
    let mut history = resume
        .as_ref()
        .map(|c| c.history.clone())
        .unwrap_or_default();
    let options = TrainOptions {
        epochs: spec.epochs,
        batch_size: spec.batch_size,
        learning_rate: spec.learning_rate,
        seed: spec.seed,
    };
    let mut last_emit = Instant::now() - Duration::from_secs(1);
    let stop_now = || cancel.load(Ordering::SeqCst) || f.is_shutting_down();
    let mut save_error: Option<anyhow::Error> = None;

    // One closure per architecture would duplicate this; a macro keeps one body.
    macro_rules! fit {
        ($model:expr, $wrap:path) => {{
            let trained = train_classifier_resumable(
                $model,
                &train_part,
                options,
                &device,
                resume.as_ref().map(|c| &c.position),
                |r| {
                    let live = LiveProgress {
                        epoch: r.epoch,
                        step: r.step,
                        steps_per_epoch: r.steps_per_epoch,
                        loss: r.loss,
                        accuracy: r.accuracy,
                    };
                    f.live
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(job.id.clone(), live);
                    if last_emit.elapsed() >= Duration::from_millis(200)
                        || r.step == r.steps_per_epoch
                    {
                        last_emit = Instant::now();
                        f.emit(JobEvent::Progress {
                            job: job.id.clone(),
                            epoch: r.epoch,
                            epochs: spec.epochs,
                            step: r.step,
                            steps_per_epoch: r.steps_per_epoch,
                            loss: r.loss,
                            accuracy: r.accuracy,
                        });
                    }
                    if stop_now() {
                        Control::Stop
                    } else {
                        Control::Continue
                    }
                },
                |end, model, position| {
                    let val_accuracy = val_part.as_ref().map(|v| {
                        let m = model.valid().to_device(&eval_device);
                        veil::nn::train::accuracy(&m, v, &eval_device)
                    });
                    let record = EpochRecord {
                        epoch: end.epoch,
                        loss: end.loss,
                        accuracy: end.accuracy,
                        val_accuracy,
                    };
                    history.push(record);
                    let saved = $wrap(model.clone())
                        .to_bytes()
                        .and_then(|weights| {
                            Checkpoint {
                                position: position.clone(),
                                weights,
                                history: history.clone(),
                            }
                            .to_bytes()
                        })
                        .and_then(|b| f.store.write_atomic(&ckpt_path, &b))
                        .and_then(|()| f.store.record_epoch(&job.id, &history));
                    if let Err(e) = saved {
                        save_error = Some(e.context("saving the epoch's checkpoint"));
                        return Control::Stop;
                    }
                    f.emit(JobEvent::Epoch {
                        job: job.id.clone(),
                        record,
                    });
                    if stop_now() {
                        Control::Stop
                    } else {
                        Control::Continue
                    }
                },
            )?;
            ($wrap(trained.model), trained.checkpoint, trained.finished)
        }};
    }
    let (model, position, finished) = match model {
        LoadedModel::Cnn(m) => fit!(m, LoadedModel::Cnn),
        LoadedModel::ResNet(m) => fit!(m, LoadedModel::ResNet),
    };
    if let Some(e) = save_error {
        return Err(e);
    }
    if finished {
        let model = match model {
            LoadedModel::Cnn(m) => LoadedModel::Cnn(m.valid()),
            LoadedModel::ResNet(m) => LoadedModel::ResNet(m.valid()),
        };
        let model_id = store::new_id("mdl");
        f.store
            .write_atomic(&f.store.model_path(&model_id), &model.to_bytes()?)?;
        let last = history.last().copied();
        let row = ModelRow {
            id: model_id.clone(),
            job_id: job.id.clone(),
            dataset_id: dataset.id.clone(),
            dataset_name: dataset.name.clone(),
            arch: arch.name().to_owned(),
            arch_revision: spec.arch_revision,
            shape: data.shape,
            classes: data.class_names.clone(),
            scheme: dataset.scheme.clone(),
            key_fingerprint: dataset.key_fingerprint.clone(),
            train_accuracy: last.map(|r| r.accuracy).unwrap_or(0.0),
            val_accuracy: last.and_then(|r| r.val_accuracy),
            created_at: store::now(),
        };
        f.store.finish_job(&job.id, &row)?;
        tracing::info!(job = %job.id, model = %model_id, "training job succeeded");
        return Ok(Outcome::Done(model_id));
    }
    if cancel.load(Ordering::SeqCst) {
        return Ok(Outcome::Cancelled);
    }
    // Shutting down: keep the exact position (mid-epoch) so the next start resumes from here.
    let ckpt = Checkpoint {
        position,
        weights: model.to_bytes()?,
        history,
    };
    f.store.write_atomic(&ckpt_path, &ckpt.to_bytes()?)?;
    Ok(Outcome::Interrupted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_round_trip_and_refuse_damage() {
        let c = Checkpoint {
            position: TrainCheckpoint {
                epochs_done: 2,
                step_in_epoch: 5,
                partial: (1.5, 3, 4),
                optimizer: vec![9, 8, 7],
            },
            weights: vec![1, 2, 3, 4],
            history: vec![EpochRecord {
                epoch: 1,
                loss: 0.5,
                accuracy: 0.75,
                val_accuracy: Some(0.7),
            }],
        };
        let bytes = c.to_bytes().unwrap();
        assert_eq!(Checkpoint::from_bytes(&bytes).unwrap(), c);
        for cut in [0, 5, 12, bytes.len() - 1] {
            assert!(
                Checkpoint::from_bytes(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(Checkpoint::from_bytes(&extra).is_err());
    }
}
