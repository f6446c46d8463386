//! What the factory keeps: a SQLite database (datasets, jobs, models; schema versioned by
//! migrations) and blobs beside it, each written atomically (temporary file, fsync, rename).
//!
//! Layout of the data directory:
//!
//! ```text
//! veil.sqlite                 the database
//! datasets/<id>.safetensors   uploaded dataset containers (veil::data::container)
//! models/<id>.bpk             trained weights (burnpack)
//! checkpoints/<job>.ckpt      the last checkpoint of an unfinished job
//! tmp/                        partial uploads and writes (emptied at start)
//! ```
//!
//! Every id is generated here (`ds-`, `job-`, `mdl-` and 16 hex digits) and checked against that
//! form before it is used in a path, so no client string ever becomes a file name.
//!
//! Why this file is over 600 lines: the store's one type: each table's queries and the atomic blob
//! writes, with its migrations.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// Schema migrations, applied in order; `PRAGMA user_version` records how many have run.
/// Append only: never edit a migration that has shipped.
const MIGRATIONS: &[&str] = &[
    // 1: datasets, jobs, models.
    "CREATE TABLE datasets (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        scheme TEXT NOT NULL,
        key_fingerprint TEXT,
        description TEXT,
        pixel_type TEXT NOT NULL,
        count INTEGER NOT NULL,
        channels INTEGER NOT NULL,
        height INTEGER NOT NULL,
        width INTEGER NOT NULL,
        classes TEXT NOT NULL,
        class_counts TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        dataset_id TEXT NOT NULL,
        spec TEXT NOT NULL,
        state TEXT NOT NULL,
        epochs_done INTEGER NOT NULL DEFAULT 0,
        history TEXT NOT NULL DEFAULT '[]',
        error TEXT,
        model_id TEXT,
        resumes INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        started_at INTEGER,
        finished_at INTEGER
    );
    CREATE INDEX jobs_state ON jobs(state);
    CREATE TABLE models (
        id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL,
        dataset_id TEXT NOT NULL,
        dataset_name TEXT NOT NULL,
        arch TEXT NOT NULL,
        channels INTEGER NOT NULL,
        height INTEGER NOT NULL,
        width INTEGER NOT NULL,
        classes TEXT NOT NULL,
        scheme TEXT NOT NULL,
        key_fingerprint TEXT,
        train_accuracy REAL NOT NULL,
        val_accuracy REAL,
        created_at INTEGER NOT NULL
    );",
    // 2: the architecture's revision (see `inference::ARCH_REVISION`); models trained before it
    // existed are revision 1.
    "ALTER TABLE models ADD COLUMN arch_revision INTEGER NOT NULL DEFAULT 1;",
    // 3: owners (by the SHA-256 of their token; never the token) and who owns each dataset, job
    // and model. Objects without a row here (stored before owners existed) are the operator's.
    "CREATE TABLE owners (
        token_sha256 TEXT PRIMARY KEY,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE ownership (
        object_id TEXT PRIMARY KEY,
        owner TEXT NOT NULL
    );
    CREATE INDEX ownership_owner ON ownership(owner);",
];

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub use super::ids::{new_id, valid_id};

/// What [`Store::delete_dataset`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatasetDeletion {
    /// The row is gone.
    Deleted,
    /// There was no such dataset.
    NotFound,
    /// A queued or running job uses it.
    InUse {
        /// That job's id.
        job: String,
    },
}

/// A stored dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetRow {
    /// Id (`ds-…`).
    pub id: String,
    /// The uploader's name for it.
    pub name: String,
    /// `plain`, `flow-rotation`, …
    pub scheme: String,
    /// The fingerprint of the key that encrypted it.
    pub key_fingerprint: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// `u8` or `f32`.
    pub pixel_type: String,
    /// Images.
    pub count: usize,
    /// Image shape.
    pub shape: veil::data::ImageShape,
    /// Class names.
    pub classes: Vec<String>,
    /// Images per class.
    pub class_counts: Vec<usize>,
    /// Size of the container.
    pub bytes: u64,
    /// SHA-256 of the container.
    pub sha256: String,
    /// Upload time (Unix seconds).
    pub created_at: i64,
}

/// A job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for a worker (also: interrupted by a shutdown, to resume at the next start).
    Queued,
    /// A worker is training it.
    Running,
    /// Done; `model_id` names the model.
    Succeeded,
    /// Stopped by an error; `error` says why.
    Failed,
    /// Cancelled by a user.
    Cancelled,
}

impl JobState {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "succeeded" => JobState::Succeeded,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            other => bail!("unknown job state {other:?} in the database"),
        })
    }

    /// Whether the job will not change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

/// What a training job was asked to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The dataset's id.
    pub dataset: String,
    /// `small-cnn` or `small-resnet`.
    pub arch: String,
    /// Passes over the training part.
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Adam's learning rate.
    pub learning_rate: f64,
    /// Fraction of the dataset held out for validation (0 to 0.5).
    pub validation_split: f64,
    /// Seed of the split, the initialisation and the shuffles.
    pub seed: u64,
    /// The revision of `arch` the job trains (`inference::ARCH_REVISION` when it was submitted;
    /// 1 for jobs stored before revisions existed), so that a job resumed after an upgrade goes
    /// on with the architecture it started with.
    #[serde(default = "first_revision")]
    pub arch_revision: u32,
}

fn first_revision() -> u32 {
    1
}

/// One completed epoch of a job.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss.
    pub loss: f32,
    /// Training accuracy.
    pub accuracy: f32,
    /// Accuracy on the held-out validation part (absent without one).
    pub val_accuracy: Option<f32>,
}

/// A stored job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRow {
    /// Id (`job-…`).
    pub id: String,
    /// What was asked.
    pub spec: JobSpec,
    /// Where it stands.
    pub state: JobState,
    /// Epochs completed and checkpointed.
    pub epochs_done: usize,
    /// One record per completed epoch.
    pub history: Vec<EpochRecord>,
    /// Why it failed.
    pub error: Option<String>,
    /// The model it produced.
    pub model_id: Option<String>,
    /// How many times it was resumed after a restart.
    pub resumes: u32,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub started_at: Option<i64>,
    /// Unix seconds.
    pub finished_at: Option<i64>,
}

/// A trained model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRow {
    /// Id (`mdl-…`).
    pub id: String,
    /// The job that trained it.
    pub job_id: String,
    /// The dataset it was trained on (which may since have been deleted).
    pub dataset_id: String,
    /// That dataset's name.
    pub dataset_name: String,
    /// `small-cnn` or `small-resnet`.
    pub arch: String,
    /// Its revision (`inference::ARCH_REVISION` when it was trained).
    pub arch_revision: u32,
    /// Input shape.
    pub shape: veil::data::ImageShape,
    /// Class names, by output index.
    pub classes: Vec<String>,
    /// The scheme of its training data: it classifies images made the same way.
    pub scheme: String,
    /// The fingerprint of the key its training data was encrypted with.
    pub key_fingerprint: Option<String>,
    /// Training accuracy of the last epoch.
    pub train_accuracy: f32,
    /// Validation accuracy of the last epoch.
    pub val_accuracy: Option<f32>,
    /// Unix seconds.
    pub created_at: i64,
}

/// The database and the blob folders.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    db: Mutex<Connection>,
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, migrating the schema.
    pub fn open(dir: &Path) -> Result<Self> {
        for sub in ["datasets", "models", "checkpoints", "tmp"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        // Partial uploads and writes of a previous run are garbage.
        if let Ok(entries) = std::fs::read_dir(dir.join("tmp")) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let path = dir.join("veil.sqlite");
        let mut db = Connection::open(&path)
            .with_context(|| format!("opening the database {}", path.display()))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut db)?;
        Ok(Self {
            dir: dir.to_owned(),
            db: Mutex::new(db),
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn db(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (each call is one
        // statement or one transaction), so a poisoned lock is still usable.
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where dataset `id`'s container lives.
    pub fn dataset_path(&self, id: &str) -> PathBuf {
        self.dir.join("datasets").join(format!("{id}.safetensors"))
    }

    /// Where dataset `id`'s thumbnails (JSON, drawn once at upload) live.
    pub fn thumbnails_path(&self, id: &str) -> PathBuf {
        self.dir.join("datasets").join(format!("{id}.thumbs.json"))
    }

    /// Where model `id`'s weights live.
    pub fn model_path(&self, id: &str) -> PathBuf {
        self.dir.join("models").join(format!("{id}.bpk"))
    }

    /// Where job `id`'s checkpoint lives.
    pub fn checkpoint_path(&self, id: &str) -> PathBuf {
        self.dir.join("checkpoints").join(format!("{id}.ckpt"))
    }

    /// A fresh temporary path inside the data directory (same file system as the blobs, so a
    /// rename is atomic).
    pub fn temp_path(&self) -> PathBuf {
        self.dir.join("tmp").join(new_id("part"))
    }

    /// Writes `bytes` to `path` atomically, through this store's temporary folder (see
    /// [`crate::fsutil::write_atomic_via`]).
    pub fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        crate::fsutil::write_atomic_via(&self.temp_path(), path, bytes)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Records a new owner by the SHA-256 of its token (hex).
    pub fn insert_owner(&self, token_sha256: &str) -> Result<()> {
        self.db().execute(
            "INSERT INTO owners (token_sha256, created_at) VALUES (?1, ?2)",
            params![token_sha256, now()],
        )?;
        Ok(())
    }

    /// Whether an owner with this token hash exists.
    pub fn owner_exists(&self, token_sha256: &str) -> Result<bool> {
        Ok(self
            .db()
            .query_row(
                "SELECT 1 FROM owners WHERE token_sha256 = ?1",
                [token_sha256],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// The owner of a dataset, job or model (None: the operator's, or no such object).
    pub fn owner_of(&self, object_id: &str) -> Result<Option<String>> {
        Ok(self
            .db()
            .query_row(
                "SELECT owner FROM ownership WHERE object_id = ?1",
                [object_id],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The ids of everything `owner` owns.
    pub fn owned_by(&self, owner: &str) -> Result<std::collections::HashSet<String>> {
        let db = self.db();
        let mut st = db.prepare("SELECT object_id FROM ownership WHERE owner = ?1")?;
        let ids = st.query_map([owner], |r| r.get::<_, String>(0))?;
        Ok(ids.collect::<Result<_, _>>()?)
    }

    /// Records a dataset whose container is already at [`Store::dataset_path`], owned by `owner`
    /// (None: the operator).
    pub fn insert_dataset(&self, d: &DatasetRow, owner: Option<&str>) -> Result<()> {
        let mut db = self.db();
        let tx = db.transaction()?;
        set_owner(&tx, &d.id, owner)?;
        tx.execute(
            "INSERT INTO datasets (id, name, scheme, key_fingerprint, description, pixel_type,
                count, channels, height, width, classes, class_counts, bytes, sha256, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            params![
                d.id,
                d.name,
                d.scheme,
                d.key_fingerprint,
                d.description,
                d.pixel_type,
                d.count as i64,
                d.shape.channels as i64,
                d.shape.height as i64,
                d.shape.width as i64,
                serde_json::to_string(&d.classes)?,
                serde_json::to_string(&d.class_counts)?,
                d.bytes as i64,
                d.sha256,
                d.created_at,
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Every dataset, newest first.
    pub fn datasets(&self) -> Result<Vec<DatasetRow>> {
        let db = self.db();
        let mut st = db.prepare(&format!(
            "SELECT {DATASET_COLS} FROM datasets ORDER BY created_at DESC, id"
        ))?;
        let rows = st.query_map([], dataset_row)?;
        rows.map(|r| r?.into_row()).collect()
    }

    /// One dataset.
    pub fn dataset(&self, id: &str) -> Result<Option<DatasetRow>> {
        let db = self.db();
        let raw = db
            .query_row(
                &format!("SELECT {DATASET_COLS} FROM datasets WHERE id = ?1"),
                [id],
                dataset_row,
            )
            .optional()?;
        raw.map(RawDataset::into_row).transpose()
    }

    /// Deletes a dataset's row (the caller removes the blob). Refused while a queued or running
    /// job uses it.
    pub fn delete_dataset(&self, id: &str) -> Result<DatasetDeletion> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let busy: Option<String> = tx
            .query_row(
                "SELECT id FROM jobs WHERE state IN ('queued', 'running')
                   AND json_extract(spec, '$.dataset') = ?1 LIMIT 1",
                [id],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(job) = busy {
            return Ok(DatasetDeletion::InUse { job });
        }
        let n = tx.execute("DELETE FROM datasets WHERE id = ?1", [id])?;
        tx.execute("DELETE FROM ownership WHERE object_id = ?1", [id])?;
        tx.commit()?;
        Ok(if n > 0 {
            DatasetDeletion::Deleted
        } else {
            DatasetDeletion::NotFound
        })
    }

    /// Records a new queued job, owned by `owner` (None: the operator).
    pub fn insert_job(&self, id: &str, spec: &JobSpec, owner: Option<&str>) -> Result<()> {
        let mut db = self.db();
        let tx = db.transaction()?;
        set_owner(&tx, id, owner)?;
        tx.execute(
            "INSERT INTO jobs (id, dataset_id, spec, state, created_at) VALUES (?1, ?2, ?3, 'queued', ?4)",
            params![id, spec.dataset, serde_json::to_string(spec)?, now()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Every job, newest first.
    pub fn jobs(&self) -> Result<Vec<JobRow>> {
        let db = self.db();
        let mut st = db.prepare(&format!(
            "SELECT {JOB_COLS} FROM jobs ORDER BY created_at DESC, id"
        ))?;
        let rows = st.query_map([], job_row)?;
        rows.map(|r| r?.into_row()).collect()
    }

    /// Jobs in `state`, oldest first.
    pub fn jobs_in(&self, state: JobState) -> Result<Vec<JobRow>> {
        let db = self.db();
        let mut st = db.prepare(&format!(
            "SELECT {JOB_COLS} FROM jobs WHERE state = ?1 ORDER BY created_at, id"
        ))?;
        let rows = st.query_map([state.as_str()], job_row)?;
        rows.map(|r| r?.into_row()).collect()
    }

    /// One job.
    pub fn job(&self, id: &str) -> Result<Option<JobRow>> {
        let db = self.db();
        let raw = db
            .query_row(
                &format!("SELECT {JOB_COLS} FROM jobs WHERE id = ?1"),
                [id],
                job_row,
            )
            .optional()?;
        raw.map(RawJob::into_row).transpose()
    }

    /// Sets a job's state (and its error, for `Failed`); stamps start and finish times.
    pub fn set_job_state(&self, id: &str, state: JobState, error: Option<&str>) -> Result<()> {
        let now = now();
        self.db().execute(
            "UPDATE jobs SET state = ?2, error = ?3,
                started_at = CASE WHEN ?2 = 'running' AND started_at IS NULL THEN ?4 ELSE started_at END,
                finished_at = CASE WHEN ?2 IN ('succeeded', 'failed', 'cancelled') THEN ?4 ELSE NULL END
             WHERE id = ?1",
            params![id, state.as_str(), error, now],
        )?;
        Ok(())
    }

    /// Moves a queued job to cancelled, atomically; false if it was not queued.
    pub fn cancel_if_queued(&self, id: &str) -> Result<bool> {
        let n = self.db().execute(
            "UPDATE jobs SET state = 'cancelled', finished_at = ?2 WHERE id = ?1 AND state = 'queued'",
            params![id, now()],
        )?;
        Ok(n > 0)
    }

    /// Records a completed, checkpointed epoch.
    pub fn record_epoch(&self, id: &str, history: &[EpochRecord]) -> Result<()> {
        self.db().execute(
            "UPDATE jobs SET epochs_done = ?2, history = ?3 WHERE id = ?1",
            params![id, history.len() as i64, serde_json::to_string(history)?],
        )?;
        Ok(())
    }

    /// Counts a resume after a restart.
    pub fn count_resume(&self, id: &str) -> Result<()> {
        self.db()
            .execute("UPDATE jobs SET resumes = resumes + 1 WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Records the model a job produced and marks the job succeeded, in one transaction.
    pub fn finish_job(&self, job_id: &str, m: &ModelRow) -> Result<()> {
        let mut db = self.db();
        let tx = db.transaction()?;
        tx.execute(
            "INSERT INTO models (id, job_id, dataset_id, dataset_name, arch, channels, height, width,
                classes, scheme, key_fingerprint, train_accuracy, val_accuracy, created_at,
                arch_revision)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            params![
                m.id,
                m.job_id,
                m.dataset_id,
                m.dataset_name,
                m.arch,
                m.shape.channels as i64,
                m.shape.height as i64,
                m.shape.width as i64,
                serde_json::to_string(&m.classes)?,
                m.scheme,
                m.key_fingerprint,
                f64::from(m.train_accuracy),
                m.val_accuracy.map(f64::from),
                m.created_at,
                i64::from(m.arch_revision),
            ],
        )?;
        tx.execute(
            "UPDATE jobs SET state = 'succeeded', model_id = ?2, error = NULL, finished_at = ?3 WHERE id = ?1",
            params![job_id, m.id, now()],
        )?;
        // The model belongs to whoever owns the job.
        tx.execute(
            "INSERT INTO ownership (object_id, owner) SELECT ?1, owner FROM ownership WHERE object_id = ?2",
            params![m.id, job_id],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Every trained model, newest first.
    pub fn models(&self) -> Result<Vec<ModelRow>> {
        let db = self.db();
        let mut st = db.prepare(&format!(
            "SELECT {MODEL_COLS} FROM models ORDER BY created_at DESC, id"
        ))?;
        let rows = st.query_map([], model_row)?;
        rows.map(|r| r?.into_row()).collect()
    }

    /// One trained model.
    pub fn model(&self, id: &str) -> Result<Option<ModelRow>> {
        let db = self.db();
        let raw = db
            .query_row(
                &format!("SELECT {MODEL_COLS} FROM models WHERE id = ?1"),
                [id],
                model_row,
            )
            .optional()?;
        raw.map(RawModel::into_row).transpose()
    }

    /// Deletes a model's row (the caller removes the blob).
    pub fn delete_model(&self, id: &str) -> Result<bool> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let n = tx.execute("DELETE FROM models WHERE id = ?1", [id])?;
        tx.execute("DELETE FROM ownership WHERE object_id = ?1", [id])?;
        tx.commit()?;
        Ok(n > 0)
    }

    /// Jobs waiting or running.
    pub fn count_active_jobs(&self) -> Result<(usize, usize)> {
        let db = self.db();
        let count = |state: &str| -> Result<usize> {
            Ok(
                db.query_row("SELECT COUNT(*) FROM jobs WHERE state = ?1", [state], |r| {
                    r.get::<_, i64>(0)
                })? as usize,
            )
        };
        Ok((count("queued")?, count("running")?))
    }

    /// What `owner` keeps now: its datasets (count and bytes), the files of its trained models,
    /// and its jobs queued or running. The rates are counted elsewhere (in memory).
    pub fn usage(&self, owner: &str) -> Result<super::quotas::Usage> {
        let db = self.db();
        let (datasets, dataset_bytes): (i64, i64) = db.query_row(
            "SELECT COUNT(*), COALESCE(SUM(d.bytes), 0) FROM datasets d
             JOIN ownership o ON o.object_id = d.id WHERE o.owner = ?1",
            [owner],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let active_jobs: i64 = db.query_row(
            "SELECT COUNT(*) FROM jobs j JOIN ownership o ON o.object_id = j.id
             WHERE o.owner = ?1 AND j.state IN ('queued', 'running')",
            [owner],
            |r| r.get(0),
        )?;
        let mut st = db.prepare(
            "SELECT m.id FROM models m JOIN ownership o ON o.object_id = m.id WHERE o.owner = ?1",
        )?;
        let models: Vec<String> = st
            .query_map([owner], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let model_bytes: u64 = models
            .iter()
            .filter_map(|id| std::fs::metadata(self.model_path(id)).ok())
            .map(|m| m.len())
            .sum();
        Ok(super::quotas::Usage {
            stored_bytes: dataset_bytes as u64 + model_bytes,
            datasets: datasets as usize,
            active_jobs: active_jobs as usize,
            ..Default::default()
        })
    }

    /// Number of datasets and of trained models.
    pub fn counts(&self) -> Result<(usize, usize)> {
        let db = self.db();
        let datasets: i64 = db.query_row("SELECT COUNT(*) FROM datasets", [], |r| r.get(0))?;
        let models: i64 = db.query_row("SELECT COUNT(*) FROM models", [], |r| r.get(0))?;
        Ok((datasets as usize, models as usize))
    }
}

fn set_owner(tx: &rusqlite::Transaction<'_>, object_id: &str, owner: Option<&str>) -> Result<()> {
    if let Some(owner) = owner {
        tx.execute(
            "INSERT INTO ownership (object_id, owner) VALUES (?1, ?2)",
            params![object_id, owner],
        )?;
    }
    Ok(())
}

fn migrate(db: &mut Connection) -> Result<()> {
    let version: i64 = db.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        bail!(
            "the database has schema version {version}, newer than this Veil knows ({known}): \
             use a newer Veil or another --data-dir"
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = db.transaction()?;
        tx.execute_batch(sql)
            .with_context(|| format!("applying schema migration {}", i + 1))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

const DATASET_COLS: &str = "id, name, scheme, key_fingerprint, description, pixel_type, count, \
    channels, height, width, classes, class_counts, bytes, sha256, created_at";

struct RawDataset(DatasetRow, String, String);

impl RawDataset {
    fn into_row(self) -> Result<DatasetRow> {
        let RawDataset(mut row, classes, counts) = self;
        row.classes = serde_json::from_str(&classes).context("dataset classes in the database")?;
        row.class_counts =
            serde_json::from_str(&counts).context("dataset class counts in the database")?;
        Ok(row)
    }
}

fn dataset_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawDataset> {
    Ok(RawDataset(
        DatasetRow {
            id: r.get(0)?,
            name: r.get(1)?,
            scheme: r.get(2)?,
            key_fingerprint: r.get(3)?,
            description: r.get(4)?,
            pixel_type: r.get(5)?,
            count: r.get::<_, i64>(6)? as usize,
            shape: veil::data::ImageShape::new(
                r.get::<_, i64>(7)? as usize,
                r.get::<_, i64>(8)? as usize,
                r.get::<_, i64>(9)? as usize,
            ),
            classes: Vec::new(),
            class_counts: Vec::new(),
            bytes: r.get::<_, i64>(12)? as u64,
            sha256: r.get(13)?,
            created_at: r.get(14)?,
        },
        r.get(10)?,
        r.get(11)?,
    ))
}

const JOB_COLS: &str = "id, spec, state, epochs_done, history, error, model_id, resumes, \
    created_at, started_at, finished_at";

struct RawJob {
    id: String,
    spec: String,
    state: String,
    epochs_done: i64,
    history: String,
    error: Option<String>,
    model_id: Option<String>,
    resumes: i64,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
}

impl RawJob {
    fn into_row(self) -> Result<JobRow> {
        Ok(JobRow {
            spec: serde_json::from_str(&self.spec).context("job spec in the database")?,
            state: JobState::parse(&self.state)?,
            history: serde_json::from_str(&self.history).context("job history in the database")?,
            id: self.id,
            epochs_done: self.epochs_done as usize,
            error: self.error,
            model_id: self.model_id,
            resumes: self.resumes as u32,
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
        })
    }
}

fn job_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawJob> {
    Ok(RawJob {
        id: r.get(0)?,
        spec: r.get(1)?,
        state: r.get(2)?,
        epochs_done: r.get(3)?,
        history: r.get(4)?,
        error: r.get(5)?,
        model_id: r.get(6)?,
        resumes: r.get(7)?,
        created_at: r.get(8)?,
        started_at: r.get(9)?,
        finished_at: r.get(10)?,
    })
}

const MODEL_COLS: &str = "id, job_id, dataset_id, dataset_name, arch, channels, height, width, \
    classes, scheme, key_fingerprint, train_accuracy, val_accuracy, created_at, arch_revision";

struct RawModel(ModelRow, String);

impl RawModel {
    fn into_row(self) -> Result<ModelRow> {
        let RawModel(mut row, classes) = self;
        row.classes = serde_json::from_str(&classes).context("model classes in the database")?;
        Ok(row)
    }
}

fn model_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawModel> {
    Ok(RawModel(
        ModelRow {
            id: r.get(0)?,
            job_id: r.get(1)?,
            dataset_id: r.get(2)?,
            dataset_name: r.get(3)?,
            arch: r.get(4)?,
            arch_revision: r.get::<_, i64>(14)? as u32,
            shape: veil::data::ImageShape::new(
                r.get::<_, i64>(5)? as usize,
                r.get::<_, i64>(6)? as usize,
                r.get::<_, i64>(7)? as usize,
            ),
            classes: Vec::new(),
            scheme: r.get(9)?,
            key_fingerprint: r.get(10)?,
            train_accuracy: r.get::<_, f64>(11)? as f32,
            val_accuracy: r.get::<_, Option<f64>>(12)?.map(|v| v as f32),
            created_at: r.get(13)?,
        },
        r.get(8)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_before_they_become_paths() {
        let id = new_id("ds");
        assert!(valid_id(&id, "ds"));
        assert!(!valid_id(&id, "job"));
        assert!(!valid_id("ds-../../etc/passwd", "ds"));
        assert!(!valid_id("ds-0123456789abcdeg", "ds"));
        assert_ne!(new_id("ds"), new_id("ds"));
    }

    /// A factory upgraded from schema 1 keeps reading its models and jobs into the network they
    /// were trained in: both read as architecture revision 1.
    #[test]
    fn models_and_jobs_stored_before_revisions_read_as_revision_1() {
        let dir = tempfile::tempdir().unwrap();
        let db = Connection::open(dir.path().join("veil.sqlite")).unwrap();
        db.execute_batch(MIGRATIONS[0]).unwrap();
        db.pragma_update(None, "user_version", 1).unwrap();
        let old_spec = r#"{"dataset":"ds-0123456789abcdef","arch":"small-cnn","epochs":2,
            "batch_size":32,"learning_rate":0.001,"validation_split":0.1,"seed":1}"#;
        db.execute(
            "INSERT INTO jobs (id, dataset_id, spec, state, created_at)
             VALUES ('job-0123456789abcdef', 'ds-0123456789abcdef', ?1, 'queued', 1)",
            [old_spec],
        )
        .unwrap();
        db.execute(
            "INSERT INTO models (id, job_id, dataset_id, dataset_name, arch, channels, height,
                width, classes, scheme, train_accuracy, created_at)
             VALUES ('mdl-0123456789abcdef', 'job-0123456789abcdef', 'ds-0123456789abcdef', 'd',
                'small-cnn', 3, 32, 32, '[\"a\",\"b\"]', 'plain', 0.5, 1)",
            [],
        )
        .unwrap();
        drop(db);
        let s = Store::open(dir.path()).unwrap();
        let job = s.job("job-0123456789abcdef").unwrap().unwrap();
        assert_eq!(job.spec.arch_revision, 1);
        let model = s.model("mdl-0123456789abcdef").unwrap().unwrap();
        assert_eq!(model.arch_revision, 1);
        assert_eq!(model.classes, ["a", "b"]);
        // A model trained now keeps its revision.
        let new = ModelRow {
            id: "mdl-fedcba9876543210".into(),
            arch_revision: 2,
            ..model
        };
        s.finish_job("job-0123456789abcdef", &new).unwrap();
        assert_eq!(s.model(&new.id).unwrap().unwrap().arch_revision, 2);
    }

    #[test]
    fn migrations_run_once_and_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.counts().unwrap(), (0, 0));
        drop(s);
        let db = Connection::open(dir.path().join("veil.sqlite")).unwrap();
        db.pragma_update(None, "user_version", 99).unwrap();
        drop(db);
        let err = Store::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("newer"), "{err}");
    }
}
