//! The ML factory: the untrusted service that keeps the datasets it is given, trains classifiers
//! on them, and classifies what it is sent. It never needs a key: datasets arrive encrypted or
//! scrambled (or public, for demos) in the [`veil::data::container`] format, labelled with a key
//! *fingerprint* at most.
//!
//! - [`ids`]: typed ids, checked where they enter.
//! - [`store`]: the SQLite database and the blobs, written atomically.
//! - [`jobs`]: the training queue, its workers, checkpoints and resumption after a restart.
//! - [`inference`]: loaded models and the classify path.
//! - [`api`]: the HTTP routes.

pub mod api;
pub mod ids;
pub mod inference;
pub mod jobs;
pub mod owners;
pub mod quotas;
pub mod store;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;
use tokio::sync::{Semaphore, broadcast};

pub use store::{DatasetRow, EpochRecord, JobRow, JobSpec, JobState, ModelRow, Store};

/// Limits and sizes of a factory.
#[derive(Debug, Clone)]
pub struct FactoryConfig {
    /// The data directory (database and blobs).
    pub data_dir: PathBuf,
    /// Training jobs run at once (each on its own thread).
    pub concurrency: usize,
    /// Largest dataset upload, in bytes.
    pub max_upload_bytes: u64,
    /// Most images in one classification request.
    pub max_classify_batch: usize,
    /// Largest JSON classification body, in bytes.
    pub max_classify_json_bytes: usize,
    /// Largest binary (safetensors) classification body, in bytes.
    pub max_classify_binary_bytes: usize,
    /// Classifications computed at once; further requests wait for a slot.
    pub inference_concurrency: usize,
    /// Longest a classification may wait and run before the request fails with 503.
    pub inference_timeout: Duration,
    /// The SHA-256 (hex) of the operator's token, who sees and may delete everything (see
    /// [`owners::token_hash`]); None: no operator.
    pub operator_token_sha256: Option<String>,
    /// Each owner's limits.
    pub quotas: quotas::Quotas,
    /// Longest an upload may send nothing before it fails with 408.
    pub upload_idle_timeout: Duration,
    /// Slowest average rate an upload may keep after its first `upload_idle_timeout` (bytes a
    /// second): a client trickling bytes cannot hold a connection and a temporary file for ever.
    pub upload_min_bytes_per_s: u64,
}

impl FactoryConfig {
    /// Defaults for `data_dir`: one training job at a time (2 cores), 512 MiB uploads that may
    /// stall 30 s at most and must average 16 KiB/s, 1,024 images and 8 MiB (JSON) or 64 MiB
    /// (binary) a classification, two at once, 30 s; [`quotas::Quotas::default`].
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            concurrency: 1,
            max_upload_bytes: 512 << 20,
            max_classify_batch: 1024,
            max_classify_json_bytes: 8 << 20,
            max_classify_binary_bytes: 64 << 20,
            inference_concurrency: 2,
            inference_timeout: Duration::from_secs(30),
            operator_token_sha256: None,
            quotas: quotas::Quotas::default(),
            upload_idle_timeout: Duration::from_secs(30),
            upload_min_bytes_per_s: 16 << 10,
        }
    }
}

/// The default data directory: `$VEIL_DATA_DIR`, else `<user data dir>/veil`
/// (`~/.local/share/veil` on Linux), else `./veil-data`.
pub fn default_data_dir() -> PathBuf {
    dirs::data_dir()
        .map(|d| d.join("veil"))
        .unwrap_or_else(|| PathBuf::from("veil-data"))
}

/// Something that happened to a job, as sent over Server-Sent Events.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum JobEvent {
    /// A training step (at most a few a second are sent).
    Progress {
        /// The job.
        job: String,
        /// 1-based epoch.
        epoch: usize,
        /// Epochs in all.
        epochs: usize,
        /// Steps done in this epoch.
        step: usize,
        /// Steps per epoch.
        steps_per_epoch: usize,
        /// Mean loss so far in this epoch.
        loss: f32,
        /// Accuracy so far in this epoch.
        accuracy: f32,
    },
    /// An epoch completed and was checkpointed.
    Epoch {
        /// The job.
        job: String,
        /// The epoch's figures.
        #[serde(flatten)]
        record: EpochRecord,
    },
    /// The job changed state.
    State {
        /// The job.
        job: String,
        /// The new state.
        state: JobState,
        /// Why it failed.
        error: Option<String>,
        /// The model it produced.
        model_id: Option<String>,
    },
}

impl JobEvent {
    /// The job it is about.
    pub fn job(&self) -> &str {
        match self {
            JobEvent::Progress { job, .. }
            | JobEvent::Epoch { job, .. }
            | JobEvent::State { job, .. } => job,
        }
    }
}

/// Live, in-memory progress of a running job (the database holds epochs; this holds steps).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LiveProgress {
    /// 1-based epoch.
    pub epoch: usize,
    /// Steps done in this epoch.
    pub step: usize,
    /// Steps per epoch.
    pub steps_per_epoch: usize,
    /// Mean loss so far in this epoch.
    pub loss: f32,
    /// Accuracy so far in this epoch.
    pub accuracy: f32,
}

#[derive(Debug, Default)]
struct Queue {
    ids: std::collections::VecDeque<String>,
}

/// The factory: store, queue, workers, live progress, and the inference limits.
#[derive(Debug)]
pub struct Factory {
    config: FactoryConfig,
    store: Store,
    queue: Mutex<Queue>,
    wake: Condvar,
    shutting_down: AtomicBool,
    stop: tokio::sync::watch::Sender<bool>,
    cancels: Mutex<HashMap<String, Arc<AtomicBool>>>,
    live: Mutex<HashMap<String, LiveProgress>>,
    events: broadcast::Sender<JobEvent>,
    workers: Mutex<Vec<std::thread::JoinHandle<()>>>,
    models: inference::ModelCache,
    inference_slots: Arc<Semaphore>,
    rates: quotas::Rates,
    admission: Mutex<()>,
}

impl Factory {
    /// Opens the factory on `config.data_dir` and starts its workers. Jobs that were queued, or
    /// running when the previous process stopped, are queued again: a running one resumes from
    /// its last checkpoint (or fails with the reason if that cannot be read).
    pub fn start(config: FactoryConfig) -> Result<Arc<Self>> {
        let store = Store::open(&config.data_dir)?;
        let (events, _) = broadcast::channel(1024);
        let factory = Arc::new(Self {
            inference_slots: Arc::new(Semaphore::new(config.inference_concurrency.max(1))),
            rates: quotas::Rates::new(&config.quotas),
            admission: Mutex::default(),
            config,
            store,
            queue: Mutex::default(),
            wake: Condvar::new(),
            shutting_down: AtomicBool::new(false),
            stop: tokio::sync::watch::channel(false).0,
            cancels: Mutex::default(),
            live: Mutex::default(),
            events,
            workers: Mutex::default(),
            models: inference::ModelCache::default(),
        });
        let interrupted = factory.store.jobs_in(JobState::Running)?;
        for job in &interrupted {
            tracing::info!(job = %job.id, epochs_done = job.epochs_done, "resuming a job interrupted by a restart");
            factory.store.count_resume(&job.id)?;
            factory
                .store
                .set_job_state(&job.id, JobState::Queued, None)?;
        }
        {
            let mut q = factory.lock_queue();
            // Interrupted jobs first (they were running), then the waiting ones in order.
            for job in interrupted {
                q.ids.push_back(job.id);
            }
            for job in factory.store.jobs_in(JobState::Queued)? {
                if !q.ids.contains(&job.id) {
                    q.ids.push_back(job.id);
                }
            }
        }
        let mut workers = factory.workers.lock().unwrap_or_else(|p| p.into_inner());
        for i in 0..factory.config.concurrency.max(1) {
            let f = factory.clone();
            workers.push(
                std::thread::Builder::new()
                    .name(format!("veil-train-{i}"))
                    .spawn(move || jobs::worker(&f))?,
            );
        }
        drop(workers);
        Ok(factory)
    }

    /// The configuration.
    pub fn config(&self) -> &FactoryConfig {
        &self.config
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.store.dir()
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Jobs waiting for a worker.
    pub fn queue_depth(&self) -> usize {
        self.lock_queue().ids.len()
    }

    /// Records and queues a job.
    pub fn submit(&self, spec: &JobSpec, owner: Option<&str>) -> Result<String> {
        let id = store::new_id("job");
        self.store.insert_job(&id, spec, owner)?;
        self.lock_queue().ids.push_back(id.clone());
        self.wake.notify_one();
        self.emit(JobEvent::State {
            job: id.clone(),
            state: JobState::Queued,
            error: None,
            model_id: None,
        });
        Ok(id)
    }

    /// Cancels a job: a queued one at once, a running one at its next step. Returns false if it
    /// had already ended.
    pub fn cancel(&self, id: &str) -> Result<bool> {
        if self.store.cancel_if_queued(id)? {
            self.lock_queue().ids.retain(|j| j != id);
            let _ = std::fs::remove_file(self.store.checkpoint_path(id));
            self.emit(JobEvent::State {
                job: id.to_owned(),
                state: JobState::Cancelled,
                error: None,
                model_id: None,
            });
            return Ok(true);
        }
        let flag = self
            .cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned();
        match flag {
            Some(flag) => {
                flag.store(true, Ordering::SeqCst);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// A job's live step progress, while it runs.
    pub fn live(&self, id: &str) -> Option<LiveProgress> {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .copied()
    }

    /// Subscribes to every job's events.
    pub fn subscribe(&self) -> broadcast::Receiver<JobEvent> {
        self.events.subscribe()
    }

    fn emit(&self, event: JobEvent) {
        // No subscriber is not an error.
        let _ = self.events.send(event);
    }

    /// The loaded-model cache.
    pub fn models(&self) -> &inference::ModelCache {
        &self.models
    }

    /// The per-owner rate windows (classifications and attacks).
    pub fn rates(&self) -> &quotas::Rates {
        &self.rates
    }

    /// Runs `add` (which records a dataset or job for `owner`) if `admit` accepts the owner's
    /// current usage; one at a time, so two requests of one owner cannot both pass a quota that
    /// has room for one. The operator (`owner` None) has no quota.
    pub fn admit<T>(
        &self,
        owner: Option<&str>,
        admit: impl FnOnce(&quotas::Quotas, &quotas::Usage) -> Result<(), crate::AppError>,
        add: impl FnOnce() -> Result<T, crate::AppError>,
    ) -> Result<T, crate::AppError> {
        let _one = self.admission.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(owner) = owner {
            admit(&self.config.quotas, &self.store.usage(owner)?)?;
        }
        add()
    }

    /// The inference slots (a semaphore of `inference_concurrency` permits).
    pub fn inference_slots(&self) -> Arc<Semaphore> {
        self.inference_slots.clone()
    }

    /// Whether [`Factory::shutdown`] has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Starts shutting down without waiting: workers stop at their next step, and event streams
    /// end (so that a graceful HTTP shutdown is not held open by them).
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.stop.send_replace(true);
        self.wake.notify_all();
    }

    /// Resolves once [`Factory::begin_shutdown`] has been called.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + use<> {
        let mut rx = self.stop.subscribe();
        async move {
            let _ = rx.wait_for(|stopping| *stopping).await;
        }
    }

    /// Stops the workers: a running job writes a checkpoint at its current step and goes back to
    /// the queue, to resume at the next start. Blocks until the workers have stopped.
    pub fn shutdown(&self) {
        self.begin_shutdown();
        let workers: Vec<_> = self
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for w in workers {
            let _ = w.join();
        }
    }
}
